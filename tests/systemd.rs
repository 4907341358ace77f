//! systemd integration, as an operator meets it: the shipped units pass `systemd-analyze
//! verify`; the proxy speaks the sd_notify protocol (READY=1 once every listener is bound,
//! WATCHDOG=1 at half of WATCHDOG_USEC, RELOADING=1/READY=1 around a reload, STOPPING=1,
//! STATUS= with the live connection count) on a NOTIFY_SOCKET the test owns; and a proxy
//! started by `systemd-socket-activate` relays through the socket it inherits.
//!
//! The notify-socket helpers are below; the master (common::Master), the proxy process
//! (common::Proxy) and its configuration (common::Cfg) come from tests/common.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use common::proxy::{clean, BIN};
use common::{certs, field, roundtrip, tempdir, Behavior, Ca, Cfg, Master, Proxy};

const UNITS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/systemd");
const EXAMPLES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/examples");

// === Helpers for the notify protocol ===

/// One datagram from the proxy, split into its `KEY=VALUE` lines.
#[derive(Debug, Clone)]
struct Notice {
    at: Instant,
    lines: Vec<String>,
}

impl Notice {
    fn has(&self, state: &str) -> bool {
        self.lines.iter().any(|l| l == state)
    }
    fn get(&self, key: &str) -> Option<&str> {
        self.lines
            .iter()
            .find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
    }
}

/// Receives datagrams until one holds `state` (for example `READY=1`); returns every
/// datagram received on the way, that one last.
fn recv_until(sock: &UnixDatagram, state: &str, timeout: Duration, proxy: &Proxy) -> Vec<Notice> {
    recv_until_match(sock, state, timeout, proxy, |n| n.has(state))
}

fn recv_until_match(
    sock: &UnixDatagram,
    what: &str,
    timeout: Duration,
    proxy: &Proxy,
    pred: impl Fn(&Notice) -> bool,
) -> Vec<Notice> {
    let deadline = Instant::now() + timeout;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    common::wait_until(&format!("{what} on NOTIFY_SOCKET"), timeout, || {
        // A look receives what arrives until a recv stays dry for a step, so each datagram's
        // time of arrival is its `at`.
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(format!("got {got:?}\nstderr:\n{}", proxy.stderr()));
            }
            sock.set_read_timeout(Some(left.min(common::READ_STEP)))
                .unwrap();
            match sock.recv(&mut buf) {
                Ok(n) => {
                    let text = String::from_utf8_lossy(&buf[..n]).to_string();
                    let notice = Notice {
                        at: Instant::now(),
                        lines: text
                            .lines()
                            .map(str::to_string)
                            .filter(|l| !l.is_empty())
                            .collect(),
                    };
                    let done = pred(&notice);
                    got.push(notice);
                    if done {
                        return Ok(());
                    }
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    return Err(format!("got {got:?}\nstderr:\n{}", proxy.stderr()))
                }
                Err(e) => panic!("recv on NOTIFY_SOCKET: {e}"),
            }
        }
    });
    got
}

fn connect(addr: &str) -> TcpStream {
    common::connect(
        addr.parse()
            .unwrap_or_else(|_| panic!("{addr:?} is not a socket address")),
    )
}

fn echo(s: &mut TcpStream, data: &[u8]) {
    assert_eq!(roundtrip(s, data), data, "echo through the proxy");
}

/// Reads to EOF: the proxy closes the client after the master's close.
fn finish(mut s: TcpStream) {
    common::finish(&mut s);
}

/// A proxy configuration (JSON logs) for a master on 127.0.0.1:`port` trusted through
/// `ca_pem`, with `listeners` (YAML flow mappings); written as `dir/proxy.yaml`.
fn proxy_config(dir: &Path, ca_pem: &Path, port: u16, listeners: &[&str]) -> PathBuf {
    Cfg::new("127.0.0.1", port)
        .master_cert(ca_pem)
        .listeners(listeners)
        .write(dir)
}

/// A CA file for a proxy that never dials (no master runs).
fn unused_ca(dir: &Path) -> PathBuf {
    certs::write(
        dir,
        "ca.pem",
        &Ca::root("det-tls-proxy systemd test CA").pem(),
    )
}

/// The address of the listener `name`, from its "listening" line.
fn listening(proxy: &Proxy, name: &str, timeout: Duration) -> String {
    let v = proxy.wait_for(&format!("the \"listening\" line of {name}"), timeout, |v| {
        field(v, "message") == "listening" && field(v, "listener") == name
    });
    field(&v, "addr").to_string()
}

/// Waits for the process to exit by itself.
fn exited(proxy: &mut Proxy, timeout: Duration) -> ExitStatus {
    proxy.wait_exit(timeout).unwrap_or_else(|| {
        panic!(
            "still running {timeout:?} after being told to stop; stderr:\n{}",
            proxy.stderr()
        )
    })
}

fn have(tool: &str) -> bool {
    Command::new(tool)
        .arg("--version")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok()
}

// === The unit files ===

fn unit(name: &str) -> String {
    std::fs::read_to_string(Path::new(UNITS).join(name))
        .unwrap_or_else(|e| panic!("read systemd/{name}: {e}"))
}

/// Every `Key=value` of a unit file's section, in order (comments skipped).
fn directives(text: &str, section: &str) -> Vec<(String, String)> {
    let mut current = String::new();
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if line.starts_with('[') && line.ends_with(']') {
            current = line[1..line.len() - 1].to_string();
            continue;
        }
        if current == section {
            if let Some((k, v)) = line.split_once('=') {
                out.push((k.trim().to_string(), v.trim().to_string()));
            }
        }
    }
    out
}

fn values<'a>(d: &'a [(String, String)], key: &str) -> Vec<&'a str> {
    d.iter()
        .filter(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
        .collect()
}

#[test]
fn systemd_analyze_verify_accepts_both_units() {
    if !have("systemd-analyze") {
        eprintln!("note: systemd-analyze is not installed (Debian package systemd); skipping the verify half of this test");
        return;
    }
    let dir = tempdir();
    // verify insists ExecStart's binary exists: point the copy at the binary under test.
    let mut copies = Vec::new();
    for name in [
        "det-tls-proxy.service",
        "det-tls-proxy.socket",
        "det-tls-proxy-tasks.socket",
    ] {
        let text = unit(name).replace("/usr/local/bin/det-tls-proxy", BIN);
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        copies.push(p);
    }
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg("--man=no")
        .args(&copies)
        .current_dir(dir.path())
        .env("SYSTEMD_LOG_COLOR", "0")
        .output()
        .expect("run systemd-analyze verify");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // An unknown key is only a warning (exit 0): any line about our units is a failure.
    let ours: Vec<&str> = text
        .lines()
        .filter(|l| l.contains(&*dir.path().to_string_lossy()) || l.contains("det-tls-proxy"))
        .collect();
    assert!(
        out.status.success() && ours.is_empty(),
        "systemd-analyze verify ({}):\n{text}",
        out.status
    );
}

#[test]
fn service_unit_is_notify_with_watchdog_reload_and_hardening() {
    let text = unit("det-tls-proxy.service");
    let s = directives(&text, "Service");
    let one = |k: &str| -> String {
        let v = values(&s, k);
        assert_eq!(v.len(), 1, "[Service] {k}= should appear once, found {v:?}");
        v[0].to_string()
    };
    assert_eq!(one("Type"), "notify");
    assert_eq!(
        one("ExecStart"),
        "/usr/local/bin/det-tls-proxy run --config /etc/determined/tls-proxy.yaml"
    );
    // The shell's kill builtin: /bin/kill (procps) is absent on a minimal Debian (203/EXEC);
    // tests/real/systemd.sh runs `systemctl reload` under a real systemd.
    assert_eq!(one("ExecReload"), r#"/bin/sh -c 'kill -HUP "$MAINPID"'"#);
    assert_eq!(one("Restart"), "on-failure");
    let watchdog = one("WatchdogSec");
    assert!(
        humantime::parse_duration(&watchdog).is_ok_and(|d| d >= Duration::from_secs(1)),
        "WatchdogSec={watchdog}"
    );
    assert!(
        one("DynamicUser") == "yes" || !values(&s, "User").is_empty(),
        "DynamicUser=yes or a User="
    );
    for (k, v) in [
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("NoNewPrivileges", "yes"),
        ("CapabilityBoundingSet", ""),
        (
            "RestrictAddressFamilies",
            "AF_INET AF_INET6 AF_UNIX AF_NETLINK",
        ),
        ("MemoryDenyWriteExecute", "yes"),
        ("RuntimeDirectory", "det-tls-proxy"),
        ("LoadCredential", "client.key:/etc/determined/agent.key"),
        ("Environment", "DET_SECURITY_TLS_CLIENT_KEY=%d/client.key"),
    ] {
        assert_eq!(one(k), v, "[Service] {k}=");
    }
    assert!(
        values(&s, "SystemCallFilter").contains(&"@system-service"),
        "SystemCallFilter=@system-service"
    );
    let ro: Vec<&str> = values(&s, "ReadOnlyPaths")
        .into_iter()
        .chain(values(&s, "BindReadOnlyPaths"))
        .collect();
    assert!(
        ro.iter().any(|v| v
            .split_whitespace()
            .any(|p| p.trim_start_matches('-') == "/etc/determined")),
        "read-only /etc/determined: {ro:?}"
    );

    for (name, listen, fdname) in [
        ("det-tls-proxy.socket", "127.0.0.1:8080", "agent"),
        ("det-tls-proxy-tasks.socket", "172.17.0.1:8080", "tasks"),
    ] {
        let sock = unit(name);
        let k = directives(&sock, "Socket");
        assert_eq!(values(&k, "ListenStream"), [listen], "{name}");
        assert_eq!(values(&k, "FileDescriptorName"), [fdname], "{name}");
        assert_eq!(values(&k, "Service"), ["det-tls-proxy.service"], "{name}");
        // The bridge's address exists only once Docker has started.
        assert_eq!(values(&k, "FreeBind"), ["yes"], "{name}");
    }
    assert!(
        unit("det-tls-proxy.socket").contains("listen: systemd:agent"),
        "the socket unit shows the config snippet that adopts it"
    );
}

/// Every TCP listener of the agent-host example is a socket the units hold, so no local user
/// can bind its port while the proxy restarts: the service requires and is passed every
/// socket unit, and each `systemd:NAME` listener names one of them.
#[test]
fn the_units_hold_every_tcp_listener_of_the_agent_host_example() {
    let text = unit("det-tls-proxy.service");
    let sockets = ["det-tls-proxy.socket", "det-tls-proxy-tasks.socket"];
    let u = directives(&text, "Unit");
    let s = directives(&text, "Service");
    let i = directives(&text, "Install");
    for (section, key) in [
        (&u, "Requires"),
        (&u, "After"),
        (&s, "Sockets"),
        (&i, "Also"),
    ] {
        let listed: Vec<&str> = values(section, key)
            .iter()
            .flat_map(|v| v.split_whitespace())
            .collect();
        for sock in sockets {
            assert!(listed.contains(&sock), "{key}= lacks {sock}: {listed:?}");
        }
    }
    let names: Vec<String> = sockets
        .iter()
        .map(|n| values(&directives(&unit(n), "Socket"), "FileDescriptorName")[0].to_string())
        .collect();
    let example: serde_json::Value = serde_yaml::from_str(
        &std::fs::read_to_string(Path::new(EXAMPLES).join("agent-host.yaml")).unwrap(),
    )
    .unwrap();
    for l in example["listeners"].as_array().unwrap() {
        let listen = l["listen"].as_str().unwrap();
        if listen.starts_with("unix:") {
            // Its directory is the service's RuntimeDirectory: no local user can create it.
            continue;
        }
        let name = listen.strip_prefix("systemd:").unwrap_or_else(|| {
            panic!("listener {} binds {listen} itself: a local user could take it while the proxy restarts", l["name"])
        });
        assert!(
            names.iter().any(|n| n == name),
            "no socket unit named {name}: {names:?}"
        );
    }
}

/// The credential the unit hands over overrides security.tls.client_key from every file:
/// the agent-host example (which imports agent.tls.yaml, client_cert and client_key
/// included) then reads the key from the service's credential directory.
#[test]
fn unit_credential_overrides_the_imported_client_key() {
    let s = directives(&unit("det-tls-proxy.service"), "Service");
    let env = values(&s, "Environment");
    let (var, value) = env[0].split_once('=').expect("Environment=NAME=VALUE");
    let dir = tempdir();
    let creds = dir.path().join("credentials");
    let value = value.replace("%d", &creds.to_string_lossy());

    let agent_tls = dir.path().join("agent.tls.yaml");
    std::fs::copy(Path::new(EXAMPLES).join("agent.tls.yaml"), &agent_tls).unwrap();
    let host = std::fs::read_to_string(Path::new(EXAMPLES).join("agent-host.yaml"))
        .unwrap()
        .replace(
            "/etc/determined/agent.tls.yaml",
            &agent_tls.to_string_lossy(),
        );
    let cfg = certs::write(dir.path(), "tls-proxy.yaml", &host);

    let out = clean(BIN)
        .arg("config")
        .arg("--config")
        .arg(&cfg)
        .env(var, &value)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "config failed: {}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let line = stdout
        .lines()
        .find(|l| l.starts_with("security.tls.client_key ="))
        .unwrap_or_else(|| panic!("no client_key line:\n{stdout}"));
    assert_eq!(
        line,
        format!("security.tls.client_key = \"{value}\"  ({var})")
    );
    assert!(
        stdout.contains("security.tls.client_cert = \"/etc/determined/agent.crt\""),
        "{stdout}"
    );
}

// === sd_notify ===

#[test]
fn notify_ready_watchdog_status_reload_and_stopping() {
    let dir = tempdir();
    let master = Master::start(dir.path(), Behavior::Echo);
    let cfg = proxy_config(
        dir.path(),
        &master.ca_pem,
        master.server.port(),
        &[
            r#"{name: first, listen: "127.0.0.1:0"}"#,
            r#"{name: second, listen: "127.0.0.1:0"}"#,
        ],
    );
    let notify_path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&notify_path).expect("bind NOTIFY_SOCKET");

    // As systemd does: WATCHDOG_PID is the main process's pid. The shell's pid becomes
    // the proxy's with exec.
    let mut cmd = clean("/bin/sh");
    cmd.arg("-c")
        .arg("WATCHDOG_PID=$$; export WATCHDOG_PID; exec \"$0\" \"$@\"")
        .arg(BIN)
        .arg("run")
        .arg("--config")
        .arg(&cfg)
        .env("NOTIFY_SOCKET", &notify_path)
        .env("WATCHDOG_USEC", "500000");
    let mut proxy = Proxy::spawn(cmd);

    // READY=1 comes first, and only once every listener is bound.
    let first = recv_until(&sock, "READY=1", Duration::from_secs(15), &proxy);
    assert_eq!(
        first.len(),
        1,
        "READY=1 should be the first notification: {first:?}"
    );
    for name in ["first", "second"] {
        let addr = listening(&proxy, name, Duration::from_secs(5));
        drop(connect(&addr));
    }

    // Watchdog pings, often enough to keep a 500 ms WatchdogSec fed (half of it: 250 ms).
    let mut pings: Vec<Notice> = Vec::new();
    while pings.len() < 5 {
        let got = recv_until(&sock, "WATCHDOG=1", Duration::from_secs(5), &proxy);
        pings.push(got.last().unwrap().clone());
    }
    let span = pings.last().unwrap().at - pings[0].at;
    let mean = span / (pings.len() as u32 - 1);
    assert!(
        mean < Duration::from_millis(500),
        "mean watchdog interval {mean:?} is not under WATCHDOG_USEC=500ms"
    );
    assert!(
        pings.iter().any(|p| p.get("STATUS").is_some()),
        "STATUS= with the pings: {pings:?}"
    );

    let addr = listening(&proxy, "first", Duration::from_secs(1));
    let mut conn = connect(&addr);
    echo(&mut conn, b"before the reload");
    finish(conn);

    // SIGHUP: RELOADING=1, then READY=1 again.
    proxy.signal(Signal::SIGHUP);
    recv_until(&sock, "RELOADING=1", Duration::from_secs(10), &proxy);
    recv_until(&sock, "READY=1", Duration::from_secs(10), &proxy);
    proxy.wait_for("the reload line", Duration::from_secs(5), |v| {
        field(v, "message") == "configuration reloaded"
    });
    let mut conn = connect(&addr);
    echo(&mut conn, b"after the reload");
    finish(conn);

    // SIGTERM: STOPPING=1, and a clean exit.
    proxy.signal(Signal::SIGTERM);
    recv_until(&sock, "STOPPING=1", Duration::from_secs(10), &proxy);
    let status = exited(&mut proxy, Duration::from_secs(10));
    assert_eq!(
        status.code(),
        Some(0),
        "exit status after SIGTERM; stderr:\n{}",
        proxy.stderr()
    );
    assert_eq!(master.server.state().handshakes.len(), 2);
}

/// STATUS= says how many client connections are open: none at first, one while a client
/// relays, none again once it has gone.
#[test]

fn notify_status_counts_live_connections() {
    let dir = tempdir();
    let master = Master::start(dir.path(), Behavior::Echo);
    let cfg = proxy_config(
        dir.path(),
        &master.ca_pem,
        master.server.port(),
        &[r#"{name: only, listen: "127.0.0.1:0"}"#],
    );
    let notify_path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&notify_path).expect("bind NOTIFY_SOCKET");
    let mut cmd = clean(BIN);
    cmd.arg("run")
        .arg("--config")
        .arg(&cfg)
        .env("NOTIFY_SOCKET", &notify_path)
        .env("WATCHDOG_USEC", "400000");
    let mut proxy = Proxy::spawn(cmd);
    recv_until(&sock, "READY=1", Duration::from_secs(15), &proxy);
    let status = |n: &Notice| n.get("STATUS").map(str::to_string);
    // The first tick after READY=1, with no client yet.
    let tick = recv_until_match(
        &sock,
        "a STATUS= tick",
        Duration::from_secs(5),
        &proxy,
        |n| !n.has("READY=1") && n.get("STATUS").is_some(),
    );
    assert_eq!(
        status(tick.last().unwrap()).as_deref(),
        Some("ready, 0 connections")
    );

    let addr = listening(&proxy, "only", Duration::from_secs(5));
    let mut conn = connect(&addr);
    echo(&mut conn, b"one connection, open");
    recv_until_match(
        &sock,
        "STATUS=ready, 1 connections",
        Duration::from_secs(5),
        &proxy,
        |n| n.get("STATUS") == Some("ready, 1 connections"),
    );
    finish(conn);
    recv_until_match(
        &sock,
        "STATUS=ready, 0 connections",
        Duration::from_secs(5),
        &proxy,
        |n| n.get("STATUS") == Some("ready, 0 connections"),
    );
    proxy.signal(Signal::SIGTERM);
    assert_eq!(exited(&mut proxy, Duration::from_secs(10)).code(), Some(0));
}

/// A WATCHDOG_PID that is not the proxy's (the variable leaked from a parent) means the
/// watchdog is someone else's: READY=1 is still sent, pings are not.
#[test]
fn notify_without_watchdog_sends_ready_and_status_only() {
    let dir = tempdir();
    let ca_pem = unused_ca(dir.path());
    let cfg = proxy_config(
        dir.path(),
        &ca_pem,
        9,
        &[r#"{name: only, listen: "127.0.0.1:0"}"#],
    );
    let notify_path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&notify_path).expect("bind NOTIFY_SOCKET");
    let mut cmd = clean(BIN);
    cmd.arg("run")
        .arg("--config")
        .arg(&cfg)
        .env("NOTIFY_SOCKET", &notify_path)
        .env("WATCHDOG_USEC", "200000")
        .env("WATCHDOG_PID", "1");
    let mut proxy = Proxy::spawn(cmd);
    recv_until(&sock, "READY=1", Duration::from_secs(15), &proxy);
    // The status ticker's first tick follows READY=1 at once: STATUS= alone, where a
    // watchdog of ours would have WATCHDOG=1 beside it.
    let tick = recv_until_match(
        &sock,
        "the first STATUS= tick",
        Duration::from_secs(10),
        &proxy,
        |n| n.get("STATUS").is_some() && !n.has("READY=1"),
    );
    proxy.signal(Signal::SIGTERM);
    let rest = recv_until(&sock, "STOPPING=1", Duration::from_secs(10), &proxy);
    let seen: Vec<&Notice> = tick.iter().chain(rest.iter()).collect();
    assert!(
        !seen.iter().any(|n| n.has("WATCHDOG=1")),
        "watchdog pings for another pid: {seen:?}"
    );
    assert_eq!(exited(&mut proxy, Duration::from_secs(10)).code(), Some(0));
}

// === Socket activation ===

/// Starts `systemd-socket-activate -l 127.0.0.1:PORT --fdname=agent BIN run --config CFG`
/// (`cfg` writes the configuration for PORT) and waits until it listens. It picks a fixed
/// port, so retry if another test took it.
fn socket_activate(cfg: &dyn Fn(u16) -> PathBuf) -> (Proxy, u16) {
    for _ in 0..5 {
        let port = common::server::closed_port();
        let cfg = cfg(port);
        let mut cmd = clean("systemd-socket-activate");
        cmd.arg("-l")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--fdname=agent")
            .arg(BIN)
            .arg("run")
            .arg("--config")
            .arg(cfg);
        let p = Proxy::spawn(cmd);
        let listening = p.try_wait_line(Duration::from_secs(10), |l| {
            if l.contains("Listening on") {
                Some(true)
            } else if l.contains("ailed") {
                Some(false)
            } else {
                None
            }
        });
        if listening == Some(true) {
            return (p, port);
        }
    }
    panic!("systemd-socket-activate could not listen on a free port in 5 tries");
}

#[test]
fn socket_activation_relays_through_the_inherited_socket() {
    if !have("systemd-socket-activate") {
        eprintln!(
            "note: systemd-socket-activate is not installed (Debian package systemd); skipping"
        );
        return;
    }
    let dir = tempdir();
    let master = Master::start(dir.path(), Behavior::Echo);
    let cfg = proxy_config(
        dir.path(),
        &master.ca_pem,
        master.server.port(),
        &["{name: agent, listen: \"systemd:agent\"}"],
    );
    let (mut proxy, port) = socket_activate(&|_| cfg.clone());
    let addr = format!("127.0.0.1:{port}");

    // systemd-socket-activate starts the proxy only when the first client connects; the
    // connection waits in the socket's backlog meanwhile, as it does under systemd.
    let queued: &[u8] = b"first, queued before the proxy ran";
    let mut first = connect(&addr);
    first.write_all(queued).unwrap();
    let adopted = listening(&proxy, "agent", Duration::from_secs(15));
    assert_eq!(
        adopted,
        format!("systemd:agent ({addr})"),
        "the listener adopted the inherited socket"
    );
    let mut back = vec![0u8; queued.len()];
    first
        .read_exact(&mut back)
        .expect("read echo through the proxy");
    assert_eq!(back, queued);
    finish(first);

    let mut second = connect(&addr);
    echo(&mut second, b"second connection");
    finish(second);

    // A reload keeps the inherited socket serving.
    proxy.signal(Signal::SIGHUP);
    proxy.wait_for("the reload line", Duration::from_secs(10), |v| {
        field(v, "message") == "configuration reloaded"
    });
    let mut third = connect(&addr);
    echo(&mut third, b"after the reload");
    finish(third);

    proxy.signal(Signal::SIGTERM);
    assert_eq!(
        exited(&mut proxy, Duration::from_secs(10)).code(),
        Some(0),
        "exit status after SIGTERM"
    );
    assert_eq!(master.server.state().handshakes.len(), 3);
}

/// The classic migration mistake (importing the agent.yaml already pointed at the proxy)
/// with the agent listener on a systemd socket: validation cannot see that socket's address,
/// so `run` refuses the master once the socket is adopted, exit 2, and never dials itself.
#[test]
fn a_master_at_an_adopted_systemd_socket_is_refused() {
    assert!(
        have("systemd-socket-activate"),
        "systemd-socket-activate is needed (Debian package systemd)"
    );
    let dir = tempdir();
    let ca_pem = unused_ca(dir.path());
    let (mut proxy, port) = socket_activate(&|port| {
        proxy_config(
            dir.path(),
            &ca_pem,
            port,
            &["{name: agent, listen: \"systemd:agent\"}"],
        )
    });
    // The first client starts the proxy.
    let _first = connect(&format!("127.0.0.1:{port}"));
    let status = exited(&mut proxy, Duration::from_secs(15));
    let stderr = proxy.stderr();
    assert_eq!(status.code(), Some(2), "exit status; stderr:\n{stderr}");
    assert!(
        stderr.contains("this proxy's own listener") && stderr.contains("systemd socket agent"),
        "stderr:\n{stderr}"
    );
    assert!(!stderr.contains("\"ready\""), "it served: {stderr}");
}

/// The service started without its socket (the .socket unit disabled) is a configuration
/// error, named as such: exit 2, not a restart loop.
#[test]
fn systemd_listener_without_an_inherited_socket_exits_2() {
    let dir = tempdir();
    let ca_pem = unused_ca(dir.path());
    let cfg = proxy_config(
        dir.path(),
        &ca_pem,
        9,
        &["{name: agent, listen: \"systemd:agent\"}"],
    );
    let mut proxy = Proxy::spawn({
        let mut c = clean(BIN);
        c.arg("run").arg("--config").arg(&cfg);
        c
    });
    let status = exited(&mut proxy, Duration::from_secs(15));
    let stderr = proxy.stderr();
    assert_eq!(status.code(), Some(2), "exit status; stderr:\n{stderr}");
    assert!(
        stderr.contains("systemd passed no socket named"),
        "stderr:\n{stderr}"
    );
    assert!(
        stderr.contains("agent"),
        "names the socket; stderr:\n{stderr}"
    );
}
