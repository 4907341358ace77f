//! `listeners[].max_connections`: one listener's own cap inside the global `max_connections`.
//! A listener at its cap stops accepting, so its extra clients wait in its own kernel backlog
//! and every other listener goes on serving; a waiting client comes in when one of its
//! listener's connections ends; a reload raises or lowers the cap without cutting anything.
//! And why the key exists: with only the global cap, one busy listener starves the others.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use nix::sys::signal::Signal;

/// The tasks listener's own cap in these tests.
const CAP: usize = 3;
/// Clients beyond it.
const EXTRA: usize = 5;
/// The global cap: above the tasks listener's own, below what its clients ask for.
const GLOBAL: usize = CAP + 2;
/// How long a client of a listener with room may take to be served.
const PROMPT: Duration = Duration::from_secs(2);

fn config(master: &Master, tasks_cap: Option<usize>, global: usize) -> Cfg {
    let cap = tasks_cap.map_or(String::new(), |n| format!(", max_connections: {n}"));
    master
        .cfg()
        .listeners(&[
            r#"{name: agent, listen: "127.0.0.1:0"}"#,
            &format!(r#"{{name: tasks, listen: "127.0.0.1:0"{cap}}}"#),
        ])
        .extra(&format!("max_connections: {global}"))
        .extra(r#"admin: {listen: "127.0.0.1:0"}"#)
}

fn active(proxy: &Proxy, listener: &str) -> f64 {
    metric(
        &scrape_text(&proxy.listener_addr("admin")),
        "det_tls_proxy_active_connections",
        &[("listener", listener)],
    )
}

fn wait_active(proxy: &Proxy, listener: &str, n: usize) {
    assert!(
        eventually(Duration::from_secs(10), || active(proxy, listener)
            == n as f64),
        "{listener}: {} connections in flight, expected {n}",
        active(proxy, listener)
    );
}

/// `det_tls_proxy_listener_max_connections{listener="tasks"}`, when the scrape has it (the
/// listener's cap, which the near-limit alert divides by).
fn cap_gauge(proxy: &Proxy) -> Option<f64> {
    let text = scrape_text(&proxy.listener_addr("admin"));
    let line = "det_tls_proxy_listener_max_connections{listener=\"tasks\"} ";
    text.lines()
        .find_map(|l| l.strip_prefix(line))
        .map(|v| v.trim().parse().unwrap())
}

/// `n` clients of `addr` that connect and say nothing (a container holding sockets open).
fn silent(addr: SocketAddr, n: usize) -> Vec<TcpStream> {
    (0..n).map(|_| connect(addr)).collect()
}

/// Whether `c` gets its `ping` echoed within `within` (it was accepted and relayed).
fn echoed(c: &mut TcpStream, within: Duration) -> bool {
    c.set_read_timeout(Some(within)).unwrap();
    let mut buf = [0u8; 4];
    let got = match c.read_exact(&mut buf) {
        Ok(()) => {
            assert_eq!(&buf, b"ping");
            true
        }
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => false,
        Err(e) => panic!("a waiting client's connection failed: {e}"),
    };
    c.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    got
}

/// An agent client relayed from start to end within `PROMPT`.
fn agent_served_promptly(addr: SocketAddr) {
    let t = Instant::now();
    relays(addr, b"agent");
    assert!(
        t.elapsed() < PROMPT,
        "the agent waited {:?} while the tasks listener was full",
        t.elapsed()
    );
}

fn reload(proxy: &Proxy, path: &Path, cfg: &Cfg) {
    let before = proxy.lines().len();
    replace(path, &cfg.render());
    proxy.signal(Signal::SIGHUP);
    assert!(
        eventually(Duration::from_secs(10), || proxy.lines()[before..]
            .iter()
            .any(|l| l.contains("configuration reloaded"))),
        "no reload line; stderr:\n{}",
        proxy.stderr()
    );
}

#[test]
fn a_full_listener_keeps_its_clients_waiting_and_the_others_serve() {
    let dir = tempdir();
    let master = Master::start(dir.path(), Behavior::Echo);
    let proxy = config(&master, Some(CAP), GLOBAL).start(dir.path());
    let (agent, tasks) = (proxy.tcp_addr("agent"), proxy.tcp_addr("tasks"));

    // More silent clients than the global cap, all on the tasks listener.
    let mut held = silent(tasks, CAP);
    wait_active(&proxy, "tasks", CAP);
    let mut waiting = silent(tasks, EXTRA);
    for c in &mut waiting {
        c.write_all(b"ping").unwrap();
    }
    // The agent is served at once, again and again, while they wait.
    for _ in 0..3 {
        agent_served_promptly(agent);
    }
    assert!(
        !echoed(&mut waiting[0], Duration::from_secs(1)),
        "a client beyond the tasks listener's cap was served"
    );
    assert_eq!(active(&proxy, "tasks"), CAP as f64);

    // One held connection ends: the first waiting client comes in, and only one.
    drop(held.remove(0));
    assert!(
        echoed(&mut waiting[0], Duration::from_secs(5)),
        "the first waiting client was not accepted when a place freed"
    );
    wait_active(&proxy, "tasks", CAP);
    assert!(!echoed(&mut waiting[1], Duration::from_millis(500)));
    agent_served_promptly(agent);
}

#[test]
fn a_reload_raises_and_lowers_a_listeners_cap_without_cutting_connections() {
    let dir = tempdir();
    let master = Master::start(dir.path(), Behavior::Echo);
    let cfg = |cap: usize| config(&master, Some(cap), 100);
    let path = cfg(CAP).write(dir.path());
    let proxy = Proxy::start(&path);
    let tasks = proxy.tcp_addr("tasks");

    assert_eq!(
        cap_gauge(&proxy),
        Some(CAP as f64),
        "the cap as /metrics shows it"
    );
    let mut open: Vec<TcpStream> = silent(tasks, CAP);
    wait_active(&proxy, "tasks", CAP);
    let mut waiting = silent(tasks, EXTRA);
    for c in &mut waiting {
        c.write_all(b"ping").unwrap();
    }
    assert!(!echoed(&mut waiting[0], Duration::from_secs(1)));

    // Raised: every waiting client comes in.
    reload(&proxy, &path, &cfg(CAP + EXTRA));
    for (i, c) in waiting.iter_mut().enumerate() {
        assert!(
            echoed(c, Duration::from_secs(5)),
            "waiting client {i} not let in by the raised cap"
        );
    }
    open.append(&mut waiting);
    wait_active(&proxy, "tasks", CAP + EXTRA);
    assert_eq!(
        cap_gauge(&proxy),
        Some((CAP + EXTRA) as f64),
        "the raised cap"
    );

    // Lowered to 1: every open connection goes on; a new client waits until the listener is
    // below the new cap, not merely below the old one.
    reload(&proxy, &path, &cfg(1));
    for c in &mut open {
        assert_eq!(
            roundtrip(c, b"still"),
            b"still",
            "a reload cut a connection"
        );
    }
    let mut late = connect(tasks);
    late.write_all(b"ping").unwrap();
    assert!(!echoed(&mut late, Duration::from_secs(1)));
    let last = open.pop().unwrap();
    open.clear();
    assert!(
        !echoed(&mut late, Duration::from_millis(500)),
        "served while the listener was still at its lowered cap"
    );
    drop(last);
    assert!(
        echoed(&mut late, Duration::from_secs(5)),
        "not served once the listener was below its lowered cap"
    );
}

/// Why the key exists: the same flood with only the global cap leaves the agent waiting.
#[test]
fn with_only_the_global_cap_one_listener_starves_the_others() {
    let dir = tempdir();
    let master = Master::start(dir.path(), Behavior::Echo);
    let proxy = config(&master, None, GLOBAL).start(dir.path());
    assert_eq!(cap_gauge(&proxy), None, "no cap of its own, no sample");
    let (agent, tasks) = (proxy.tcp_addr("agent"), proxy.tcp_addr("tasks"));
    let held = silent(tasks, CAP + EXTRA);
    wait_active(&proxy, "tasks", GLOBAL);
    let mut c = connect(agent);
    c.write_all(b"ping").unwrap();
    assert!(
        !echoed(&mut c, Duration::from_secs(1)),
        "the agent was served with the global cap full (the flood did not fill it?)"
    );
    drop(held);
    assert!(echoed(&mut c, Duration::from_secs(5)));
}
