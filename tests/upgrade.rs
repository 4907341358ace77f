//! Hitless upgrade on SIGUSR2: the new process takes the listening sockets over and the old one
//! drains. Under constant load — new connections on TCP and on a unix socket, and long-lived
//! streams, every byte checked — ten upgrades in a row refuse or reset nothing, every stream
//! completes intact, each old process exits once drained, and descriptors and memory come back
//! to where they were. A new process that cannot start, or exits, changes nothing.

mod common;

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::proxy::clean;
use common::*;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;

/// A copy of the binary the test may replace, as a package upgrade replaces the installed one.
fn own_binary(dir: &Path) -> PathBuf {
    let path = dir.join("det-tls-proxy");
    std::fs::copy(common::proxy::BIN, &path).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// Replaces `path` the way a package manager does: a new file renamed over the old one.
fn replace_binary(path: &Path, contents: &[u8], mode: u32) {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, contents).unwrap();
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode)).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn start(bin: &Path, config: &Path) -> Proxy {
    let mut cmd = clean(bin);
    cmd.arg("run").arg("--config").arg(config);
    Proxy::start_cmd(cmd)
}

fn is_upgraded(v: &Value) -> bool {
    v["message"]
        .as_str()
        .is_some_and(|m| m.starts_with("upgrade: the new process serves"))
}

/// Sends SIGUSR2 to `pid` and waits for the `n`-th "the new process serves" line; returns the
/// new process's pid.
fn upgrade(proxy: &Proxy, pid: i32, n: usize) -> i32 {
    kill(Pid::from_raw(pid), Signal::SIGUSR2).unwrap();
    let line = proxy.wait_for_nth("an upgrade", n, Duration::from_secs(40), is_upgraded);
    line["new_pid"].as_i64().expect("new_pid") as i32
}

/// Gone, or a zombie waiting for its parent.
fn exited(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z')),
    }
}

/// Stops a process the test did not start itself (an upgrade's new process).
struct Reap(i32);

impl Drop for Reap {
    fn drop(&mut self) {
        let _ = kill(Pid::from_raw(self.0), Signal::SIGKILL);
    }
}

#[derive(Default)]
struct Tally {
    ok: AtomicUsize,
    failed: AtomicUsize,
    /// Streams whose connection is open (or was): the load is under way once all are.
    opened: AtomicUsize,
    streams: AtomicUsize,
}

/// New connections one after another, alternating TCP and the unix socket, each echoing 1 KiB.
fn churn(
    tcp: std::net::SocketAddr,
    unix: PathBuf,
    stop: Arc<AtomicBool>,
    t: Arc<Tally>,
) -> JoinHandle<Vec<String>> {
    std::thread::spawn(move || {
        let mut errors = Vec::new();
        let mut data = vec![0u8; 1024];
        let mut i = 0u64;
        while !stop.load(Ordering::SeqCst) {
            i += 1;
            Pattern::new(i).fill(&mut data);
            let result = if i % 2 == 0 {
                std::net::TcpStream::connect(tcp).and_then(|mut s| echo_once(&mut s, &data))
            } else {
                UnixStream::connect(&unix).and_then(|mut s| echo_once(&mut s, &data))
            };
            match result {
                Ok(()) => t.ok.fetch_add(1, Ordering::SeqCst),
                Err(e) => {
                    errors.push(format!("connection {i}: {e}"));
                    t.failed.fetch_add(1, Ordering::SeqCst)
                }
            };
        }
        errors
    })
}

fn echo_once<S: Read + Write>(s: &mut S, data: &[u8]) -> std::io::Result<()> {
    s.write_all(data)?;
    let mut back = vec![0u8; data.len()];
    s.read_exact(&mut back)?;
    if back != data {
        return Err(std::io::Error::other("the echo differs"));
    }
    Ok(())
}

/// Streams that each stay open for `life`, sending 16 KiB every 20 ms and checking the echo,
/// then half-close and check that everything came back: each spans an upgrade or two.
fn streams(
    tcp: std::net::SocketAddr,
    life: Duration,
    stop: Arc<AtomicBool>,
    t: Arc<Tally>,
) -> JoinHandle<Vec<String>> {
    std::thread::spawn(move || {
        let mut errors = Vec::new();
        let mut seed = 1000u64;
        while !stop.load(Ordering::SeqCst) {
            seed += 1;
            match one_stream(tcp, life, seed, &t.opened) {
                Ok(()) => t.streams.fetch_add(1, Ordering::SeqCst),
                Err(e) => {
                    errors.push(format!("stream {seed}: {e}"));
                    t.failed.fetch_add(1, Ordering::SeqCst)
                }
            };
        }
        errors
    })
}

fn one_stream(
    tcp: std::net::SocketAddr,
    life: Duration,
    seed: u64,
    opened: &AtomicUsize,
) -> std::io::Result<()> {
    let mut s = std::net::TcpStream::connect(tcp)?;
    opened.fetch_add(1, Ordering::SeqCst);
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    let started = Instant::now();
    let mut pattern = Pattern::new(seed);
    let (mut sent, mut got) = (Vec::new(), Vec::new());
    let mut chunk = vec![0u8; 16 * 1024];
    while started.elapsed() < life {
        pattern.fill(&mut chunk);
        s.write_all(&chunk)?;
        sent.extend_from_slice(&chunk);
        let mut back = vec![0u8; chunk.len()];
        s.read_exact(&mut back)?;
        got.extend_from_slice(&back);
        // Time is the behaviour here: a stream that lives across upgrades, paced.
        std::thread::sleep(Duration::from_millis(20));
    }
    s.shutdown(std::net::Shutdown::Write)?;
    s.read_to_end(&mut got)?;
    if sha256(&sent) != sha256(&got) {
        return Err(std::io::Error::other(format!(
            "{} bytes sent, {} came back different",
            sent.len(),
            got.len()
        )));
    }
    Ok(())
}

/// Waits until the load's tally satisfies `enough`.
fn load_reaches(tally: &Tally, what: &str, enough: impl Fn(&Tally) -> bool) {
    wait_until(what, Duration::from_secs(60), || {
        enough(tally).then_some(()).ok_or_else(|| {
            format!(
                "{} connections, {} failed, {} streams opened, {} done",
                tally.ok.load(Ordering::SeqCst),
                tally.failed.load(Ordering::SeqCst),
                tally.opened.load(Ordering::SeqCst),
                tally.streams.load(Ordering::SeqCst)
            )
        })
    })
}

#[test]
fn ten_upgrades_under_load_refuse_nothing_and_cut_nothing() {
    let dir = tempdir();
    let bin = own_binary(dir.path());
    let m = Master::start(dir.path(), Behavior::Echo);
    let sock = dir.path().join("proxy.sock");
    let cfg = m
        .cfg()
        .listeners(&[
            r#"{name: main, listen: "127.0.0.1:0"}"#,
            &format!("{{name: local, listen: \"unix:{}\"}}", sock.display()),
        ])
        .extra("timeouts: {shutdown: 2m}")
        .extra("admin: {listen: \"127.0.0.1:0\"}");
    let mut proxy = start(&bin, &cfg.write(dir.path()));
    let first = proxy.pid().as_raw();
    let tcp = proxy.tcp_addr("main");

    // Baselines after a little traffic, so lazily built state is in both figures.
    for i in 0..20u8 {
        relays(tcp, &[i; 64]);
    }
    let (fds0, rss0) = (fd_count(first), rss_kib(first));

    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let mut load = vec![churn(tcp, sock.clone(), stop.clone(), tally.clone())];
    for _ in 0..3 {
        load.push(streams(
            tcp,
            Duration::from_millis(1500),
            stop.clone(),
            tally.clone(),
        ));
    }
    load_reaches(&tally, "every stream open and the churn under way", |t| {
        t.opened.load(Ordering::SeqCst) >= 3 && t.ok.load(Ordering::SeqCst) >= 10
    });

    let mut pids = vec![first];
    let mut reap = Vec::new();
    for n in 1..=10 {
        let new = upgrade(&proxy, *pids.last().unwrap(), n);
        assert!(!pids.contains(&new), "upgrade {n} reused pid {new}");
        reap.push(Reap(new));
        pids.push(new);
        let served = tally.ok.load(Ordering::SeqCst);
        load_reaches(&tally, "20 more connections after the upgrade", |t| {
            t.ok.load(Ordering::SeqCst) >= served + 20
        });
    }
    load_reaches(&tally, "enough load to prove something", |t| {
        t.ok.load(Ordering::SeqCst) > 100 && t.streams.load(Ordering::SeqCst) > 10
    });
    stop.store(true, Ordering::SeqCst);
    let errors: Vec<String> = load.into_iter().flat_map(|h| h.join().unwrap()).collect();
    assert!(
        errors.is_empty(),
        "refused, reset or corrupted under upgrades: {errors:?}"
    );
    assert_eq!(tally.failed.load(Ordering::SeqCst), 0);
    let (ok, streams) = (
        tally.ok.load(Ordering::SeqCst),
        tally.streams.load(Ordering::SeqCst),
    );
    assert!(
        ok > 100 && streams > 10,
        "too little load to prove anything: {ok} connections, {streams} streams"
    );

    // Every replaced process exits once its connections are done.
    let current = *pids.last().unwrap();
    let _ = proxy.wait_exit(Duration::from_secs(30));
    for &pid in &pids[..pids.len() - 1] {
        assert!(
            eventually(Duration::from_secs(30), || exited(pid)),
            "replaced process {pid} still runs"
        );
    }
    assert!(!exited(current), "the newest process is gone");
    assert!(
        sock.exists(),
        "a replaced process removed the unix socket file"
    );

    let settled = eventually(Duration::from_secs(10), || fd_count(current) <= fds0);
    assert!(
        settled,
        "descriptors: {} now, {fds0} before",
        fd_count(current)
    );
    let rss = rss_kib(current);
    assert!(
        rss < rss0 + 16 * 1024,
        "memory: {rss} KiB now, {rss0} KiB before"
    );
    relays(tcp, b"still there");
    let admin: std::net::SocketAddr = proxy.listener_addr("admin").parse().unwrap();
    assert_eq!(http_status(admin, "/readyz"), Some(200));
}

#[test]
fn a_failed_upgrade_changes_nothing() {
    let dir = tempdir();
    let bin = own_binary(dir.path());
    let m = Master::start(dir.path(), Behavior::Echo);
    let config = m.cfg().write(dir.path());
    let proxy = start(&bin, &config);
    let pid = proxy.pid().as_raw();
    let tcp = proxy.tcp_addr("main");
    let original = std::fs::read(&bin).unwrap();
    let failed = |n: usize, words: &str| {
        kill(Pid::from_raw(pid), Signal::SIGUSR2).unwrap();
        let line = proxy.wait_for_nth("a failed upgrade", n, Duration::from_secs(40), |v| {
            v["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("upgrade failed"))
        });
        assert!(line["message"].as_str().unwrap().contains(words), "{line}");
        assert_eq!(line["level"], "ERROR", "{line}");
        assert!(!exited(pid));
        relays(tcp, format!("still served after failure {n}").as_bytes());
    };

    // A build that exits 2, as a new version refusing this configuration would.
    replace_binary(&bin, b"#!/bin/sh\necho 'broken build' >&2\nexit 2\n", 0o755);
    failed(1, "ended before it was ready (exit status: 2");
    // Not executable at all.
    replace_binary(&bin, b"not a program", 0o644);
    failed(2, "cannot start the new process");
    // The real binary again, but a configuration it refuses.
    replace_binary(&bin, &original, 0o755);
    std::fs::write(&config, "master_host: \"\"\nlog: {format: json}\n").unwrap();
    failed(3, "ended before it was ready (exit status: 2");
    assert!(
        proxy.find(is_upgraded).is_none(),
        "no upgrade may have happened"
    );
}
