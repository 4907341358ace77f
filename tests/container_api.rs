//! The container directory (`identity::container_api`): who is behind an address on a
//! container bridge, named by the container runtime's API. Against podman's Docker-compatible
//! API with real containers on bridge networks (tests/common/podman.rs), and against a stand-in
//! API (tests/common/docker_api.rs) for what podman cannot be made to do on demand: hold an
//! event back, answer slowly, fail, break its event stream.
//!
//! The containers connect to nothing here: each lookup uses the address `podman inspect`
//! reports for the container, the source address its connections carry; real connections from
//! containers through the proxy are `tests/identity_container.rs`.

mod common;

use std::io::Write;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use common::docker_api::DockerApi;
use common::podman::{Podman, IMAGE};
use common::{eventually, tempdir, wait_until};
use det_tls_proxy::identity::container_api::{
    ContainerDirectory, ContainerInfo, LookupError, LOOKUP_BUDGET,
};

const SECRET: &str = "s3cret-session-token";
const TASK_ENV: [&str; 4] = [
    "DET_TASK_ID=trial-7-task",
    "DET_ALLOCATION_ID=trial-7-task.alloc-0",
    "DET_TASK_TYPE=TRIAL",
    "DET_SESSION_TOKEN=s3cret-session-token",
];
/// A lookup's budget plus what a loaded two-core machine may add to waking a timer.
const BUDGET_AND_SCHEDULING: Duration = LOOKUP_BUDGET.saturating_add(Duration::from_millis(100));
const SETTLE: Duration = Duration::from_secs(30);

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

// --- Every log line of this test binary, at every level ---

static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();

struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn capture_logs() {
    LOGS.get_or_init(|| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let b = buf.clone();
        tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(move || Capture(b.clone()))
            .init();
        buf
    });
}

fn logs() -> String {
    let buf = LOGS.get().expect("capture_logs first").lock().unwrap();
    String::from_utf8_lossy(&buf).into_owned()
}

/// Neither the directory nor anything logged holds the session token.
fn assert_no_secret(d: &ContainerDirectory) {
    let shown = format!("{d:?}");
    assert!(
        !shown.contains(SECRET),
        "the directory holds the token: {shown}"
    );
    assert!(!logs().contains(SECRET), "a log line holds the token");
}

type Found = Result<Option<Arc<ContainerInfo>>, LookupError>;

/// A lookup, timed.
fn lookup(rt: &tokio::runtime::Runtime, d: &ContainerDirectory, ip: IpAddr) -> (Found, Duration) {
    let started = Instant::now();
    let r = rt.block_on(d.lookup(ip));
    (r, started.elapsed())
}

fn synced(rt: &tokio::runtime::Runtime, d: &ContainerDirectory) {
    let any: IpAddr = "192.0.2.1".parse().unwrap();
    let ok = eventually(SETTLE, || rt.block_on(d.lookup(any)).is_ok());
    assert!(ok, "the directory never listed the containers: {d:?}");
}

// === Against podman ===

#[test]
fn names_podman_containers_on_bridges_from_their_addresses() {
    capture_logs();
    let mut pm = Podman::new();
    let rt = runtime();
    let _rt = rt.enter();
    let socket = pm.dir().join("podman.sock");
    let first = pm.start("dtp-first", "podman", &TASK_ENV);
    // The token is really in the container's environment, where the API shows it.
    let env = pm.run(&["inspect", "--format", "{{.Config.Env}}", "dtp-first"]);
    assert!(env.contains(SECRET), "{env}");
    pm.serve(&socket);
    let d = ContainerDirectory::start(socket.clone());
    synced(&rt, &d);

    let ip = pm.address("dtp-first", "podman", false);
    let (found, _) = lookup(&rt, &d, ip);
    let c = found
        .unwrap()
        .expect("the container running before the start");
    assert_eq!(c.id, first);
    assert_eq!((c.name.as_str(), c.image.as_str()), ("dtp-first", IMAGE));
    assert_eq!(c.task_id.as_deref(), Some("trial-7-task"));
    assert_eq!(c.allocation_id.as_deref(), Some("trial-7-task.alloc-0"));
    assert_eq!(c.task_type.as_deref(), Some("TRIAL"));
    // As a dual-stack listener sees an IPv4 client.
    let IpAddr::V4(v4) = ip else { panic!("{ip}") };
    let mapped = IpAddr::V6(v4.to_ipv6_mapped());
    assert_eq!(lookup(&rt, &d, mapped).0.unwrap().unwrap().id, first);

    found_from_events_and_forgotten_when_stopped(&mut pm, &d);
    unknown_address_is_none_within_the_budget(&rt, &d);
    follows_the_api_through_a_restart(&mut pm, &rt, &d, &socket);
    assert_no_secret(&d);
    d.stop();
}

/// A container started after the directory, on an IPv6 bridge, then connected to a second
/// network: each address is known from the event stream alone (`known` asks no API), and
/// forgotten once the container stops.
fn found_from_events_and_forgotten_when_stopped(pm: &mut Podman, d: &ContainerDirectory) {
    pm.network("dtp-v6", true);
    pm.network("dtp-second", false);
    let later = pm.start("dtp-later", "dtp-v6", &TASK_ENV);
    let v4 = pm.address("dtp-later", "dtp-v6", false);
    let v6 = pm.address("dtp-later", "dtp-v6", true);
    assert!(v6.is_ipv6());
    let ok = eventually(SETTLE, || {
        d.known(v4).is_some_and(|c| c.id == later) && d.known(v6).is_some_and(|c| c.id == later)
    });
    assert!(ok, "the start event did not add {v4} and {v6}: {d:?}");
    pm.run(&["network", "connect", "dtp-second", "dtp-later"]);
    let second = pm.address("dtp-later", "dtp-second", false);
    let ok = eventually(SETTLE, || d.known(second).is_some_and(|c| c.id == later));
    assert!(ok, "the network connect event did not add {second}: {d:?}");
    pm.run(&["stop", "-t", "0", "dtp-later"]);
    let ok = eventually(SETTLE, || {
        [v4, v6, second].iter().all(|ip| d.known(*ip).is_none())
    });
    assert!(ok, "the stopped container is still known: {d:?}");
}

fn unknown_address_is_none_within_the_budget(rt: &tokio::runtime::Runtime, d: &ContainerDirectory) {
    let (r, took) = lookup(rt, d, "10.88.255.254".parse().unwrap());
    assert_eq!(r, Ok(None));
    assert!(
        took <= BUDGET_AND_SCHEDULING,
        "an unknown address took {took:?}"
    );
}

/// The API goes away: lookups fail at once with the reason; a container started meanwhile is
/// found by the full listing made when the API is back.
fn follows_the_api_through_a_restart(
    pm: &mut Podman,
    rt: &tokio::runtime::Runtime,
    d: &ContainerDirectory,
    socket: &std::path::Path,
) {
    let first = pm.address("dtp-first", "podman", false);
    pm.stop_serving();
    let ok = eventually(SETTLE, || {
        matches!(
            rt.block_on(d.lookup(first)),
            Err(LookupError::Unavailable(_))
        )
    });
    assert!(ok, "lookups still answer with the API gone: {d:?}");
    let (r, took) = lookup(rt, d, first);
    assert!(matches!(r, Err(LookupError::Unavailable(_))), "{r:?}");
    assert!(
        took <= BUDGET_AND_SCHEDULING,
        "a lookup with the API gone took {took:?}"
    );
    let meanwhile = pm.start("dtp-meanwhile", "podman", &TASK_ENV);
    let ip = pm.address("dtp-meanwhile", "podman", false);
    pm.serve(socket);
    let ok = eventually(SETTLE, || d.known(ip).is_some_and(|c| c.id == meanwhile));
    assert!(ok, "the listing after the restart did not add {ip}: {d:?}");
    assert!(logs().contains("answers again"), "no recovery line logged");
}

// === Against a stand-in API ===

#[test]
fn a_missing_socket_is_an_error_at_once() {
    let dir = tempdir();
    let rt = runtime();
    let _rt = rt.enter();
    let d = ContainerDirectory::start(dir.path().join("docker.sock"));
    let (r, took) = lookup(&rt, &d, "10.88.0.2".parse().unwrap());
    let Err(LookupError::Unavailable(reason)) = r else {
        panic!("{r:?}")
    };
    assert!(reason.contains("no socket at"), "{reason}");
    assert!(took <= BUDGET_AND_SCHEDULING, "took {took:?}");
}

#[test]
fn a_miss_lists_again_once_for_every_lookup_waiting() {
    let dir = tempdir();
    let api = DockerApi::start(dir.path());
    let rt = runtime();
    let _rt = rt.enter();
    let d = ContainerDirectory::start(api.socket().to_path_buf());
    synced(&rt, &d);
    // Started a moment ago: its event has not arrived (the stand-in sends none).
    api.add("c0ffee01", "fresh", "172.17.0.9", &TASK_ENV);
    let (r, took) = lookup(&rt, &d, "172.17.0.9".parse().unwrap());
    assert_eq!(r.unwrap().expect("found by the re-list").name, "fresh");
    assert!(took <= BUDGET_AND_SCHEDULING, "took {took:?}");
    // Sixteen misses while one re-list is under way (a slow API keeps it so): they share the
    // one that follows it, so two in all, however many lookups wait. The re-list under way is
    // a first miss's, seen arriving at the API before the sixteen come (the task may still be
    // finishing the re-list above, and a miss then would share the sixteen's).
    api.set_list_delay(Duration::from_millis(300));
    let before = api.count("/containers/json");
    let relists = || api.count("/containers/json") - before;
    let unknown: IpAddr = "172.17.0.77".parse().unwrap();
    let miss = || {
        let d = d.clone();
        tokio::spawn(async move { d.lookup(unknown).await })
    };
    let mut waiting = vec![miss()];
    wait_until("the first miss's re-list to reach the API", SETTLE, || {
        let n = relists();
        (n >= 1).then_some(()).ok_or(format!("{n} re-lists"))
    });
    waiting.extend((0..16).map(|_| miss()));
    for w in waiting {
        assert_eq!(rt.block_on(w).unwrap(), Ok(None));
    }
    let ok = eventually(SETTLE, || relists() >= 2);
    assert!(ok, "the misses' follow-up re-list never came");
    // Nothing is waiting any more: no third re-list may start. Time is the behaviour here: a
    // re-list nothing asked for would start within the window, and no event marks its absence.
    let settled = rt.block_on(async {
        tokio::time::sleep(Duration::from_millis(700)).await;
        relists()
    });
    assert_eq!(settled, 2, "16 misses at once made {settled} re-lists");
}

#[test]
fn a_slow_api_costs_a_lookup_at_most_the_budget() {
    let dir = tempdir();
    let api = DockerApi::start(dir.path());
    let rt = runtime();
    let _rt = rt.enter();
    let d = ContainerDirectory::start(api.socket().to_path_buf());
    synced(&rt, &d);
    api.set_list_delay(Duration::from_secs(2));
    api.add("c0ffee02", "slow", "172.17.0.10", &TASK_ENV);
    let (r, took) = lookup(&rt, &d, "172.17.0.10".parse().unwrap());
    assert_eq!(r, Ok(None), "not listed within the budget");
    assert!(
        took <= BUDGET_AND_SCHEDULING,
        "a slow API held a lookup {took:?}"
    );
    // The re-list goes on in the background and serves the next lookup.
    let ok = eventually(SETTLE, || d.known("172.17.0.10".parse().unwrap()).is_some());
    assert!(ok, "{d:?}");
}

#[test]
fn a_failing_api_fails_lookups_at_once_and_is_logged_once() {
    capture_logs();
    let dir = tempdir();
    let api = DockerApi::start(dir.path());
    api.fail_with(Some(500));
    let rt = runtime();
    let _rt = rt.enter();
    let d = ContainerDirectory::start(api.socket().to_path_buf());
    // Several attempts, each refused the same way.
    let ok = eventually(SETTLE, || api.count("/events") >= 3);
    assert!(ok, "the directory did not retry");
    let (r, took) = lookup(&rt, &d, "172.17.0.2".parse().unwrap());
    let Err(LookupError::Unavailable(reason)) = r else {
        panic!("{r:?}")
    };
    assert!(
        reason.contains("500") && reason.contains("stand-in failure"),
        "{reason}"
    );
    assert!(took <= BUDGET_AND_SCHEDULING, "took {took:?}");
    let socket = api.socket().display().to_string();
    let warned = logs()
        .lines()
        .filter(|l| l.contains(" WARN ") && l.contains(&socket))
        .count();
    assert_eq!(
        warned,
        1,
        "the same reason warned {warned} times:\n{}",
        logs()
    );
    api.fail_with(None);
    synced(&rt, &d);
}

#[test]
fn a_broken_event_stream_is_followed_by_a_full_listing() {
    let dir = tempdir();
    let api = DockerApi::start(dir.path());
    let rt = runtime();
    let _rt = rt.enter();
    let d = ContainerDirectory::start(api.socket().to_path_buf());
    synced(&rt, &d);
    assert_eq!(api.count("/events"), 1);
    // Started while nothing reports it; then the daemon restarts.
    api.add("c0ffee03", "unreported", "172.17.0.11", &TASK_ENV);
    api.break_streams();
    let ip: IpAddr = "172.17.0.11".parse().unwrap();
    let ok = eventually(SETTLE, || d.known(ip).is_some());
    assert!(ok, "not listed after the reconnect: {d:?}");
    assert_eq!(api.count("/events"), 2, "one new subscription");
    // Events on the new stream are followed.
    api.add("c0ffee04", "reported", "172.17.0.12", &[]);
    api.event(r#"{"Type": "container", "Action": "start", "Actor": {"ID": "c0ffee04"}}"#);
    let ok = eventually(SETTLE, || d.known("172.17.0.12".parse().unwrap()).is_some());
    assert!(
        ok,
        "the start event on the new stream was not followed: {d:?}"
    );
}

#[test]
fn a_token_in_a_malformed_answer_never_leaves_the_parser() {
    capture_logs();
    let dir = tempdir();
    let api = DockerApi::start(dir.path());
    // The environment as one string instead of a list: serde's own message would quote it.
    api.add_raw(
        "c0ffee05",
        &format!(
            r#"{{"Id": "c0ffee05", "State": {{"Running": true}}, "Config": {{"Env": "PATH=/bin DET_SESSION_TOKEN={SECRET}"}}}}"#
        ),
    );
    let rt = runtime();
    let _rt = rt.enter();
    let d = ContainerDirectory::start(api.socket().to_path_buf());
    let socket = api.socket().display().to_string();
    let ok = eventually(SETTLE, || {
        logs()
            .lines()
            .any(|l| l.contains(" WARN ") && l.contains(&socket))
    });
    assert!(ok, "the malformed answer was not logged");
    let line = logs()
        .lines()
        .find(|l| l.contains(&socket))
        .unwrap_or_default()
        .to_string();
    assert!(line.contains("malformed"), "{line}");
    let (r, _) = lookup(&rt, &d, "172.17.0.2".parse().unwrap());
    let e = r.unwrap_err().to_string();
    assert!(e.contains("malformed") && !e.contains(SECRET), "{e}");
    assert_no_secret(&d);
}
