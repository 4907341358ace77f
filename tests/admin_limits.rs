//! The admin endpoint's own limits: at most 32 scrapers at once (the rest wait in its
//! backlog), a request head within 5 s (also between keep-alive requests), and a connection's
//! whole life within 30 s, so a slow or flooding scraper cannot hold the descriptors the data
//! path needs. Silent connections are closed by the head timeout and `/metrics` is served once
//! they are; the data path serves all along.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::*;

/// The admin endpoint's cap, header and connection timeouts (README "Health and metrics").
const CAP: usize = 32;
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(30);
/// Scheduling slack on a shared 2-core machine.
const SLACK: Duration = Duration::from_secs(2);

fn start(dir: &std::path::Path, master: &Master) -> Proxy {
    master
        .cfg()
        .extra(r#"admin: {listen: "127.0.0.1:0"}"#)
        .start(dir)
}

/// The proxy's descriptor count once it holds still for 300 ms (a relay just finished may
/// still be closing its upstream).
fn settled_fd_count(pid: i32) -> usize {
    steady(Duration::from_secs(10), Duration::from_millis(300), || {
        fd_count(pid)
    })
    .unwrap_or_else(|n| panic!("the proxy's descriptor count still changing after 10 s: {n}"))
}

/// When the proxy closed `c`, measured from `since`; panics if it has not within `within`.
fn closed_after(c: &mut TcpStream, since: Instant, within: Duration) -> Duration {
    read_until_closed(c, within);
    since.elapsed()
}

#[test]
fn a_flood_of_silent_scrapers_holds_at_most_the_cap_and_metrics_is_served_after_them() {
    const FLOOD: usize = CAP + 16;
    let dir = tempdir();
    let master = Master::start(dir.path(), Behavior::Echo);
    let proxy = start(dir.path(), &master);
    let (admin, main) = (proxy.tcp_addr("admin"), proxy.tcp_addr("main"));
    let pid = proxy.pid().as_raw();
    relays(main, b"warm up");
    let base = settled_fd_count(pid);

    let flooded = Instant::now();
    let mut silent: Vec<TcpStream> = (0..FLOOD).map(|_| connect(admin)).collect();
    // The proxy takes the cap's worth and no more: the rest wait in the backlog.
    assert!(
        eventually(Duration::from_secs(3), || fd_count(pid) >= base + CAP),
        "the first {CAP} silent scrapers were not accepted: {} fds, {base} at rest",
        fd_count(pid)
    );
    let held = settled_fd_count(pid) - base;
    assert!(
        held <= CAP + 2,
        "{FLOOD} silent scrapers hold {held} of the proxy's descriptors (cap {CAP})"
    );
    // The data path does not notice.
    let t = Instant::now();
    relays(main, b"during the flood");
    assert!(
        t.elapsed() < SLACK,
        "the data path waited {:?}",
        t.elapsed()
    );

    // A scraper behind the flood is served once the head timeout has closed the first ones.
    let scraper = std::thread::spawn(move || {
        let r = common::prometheus::get(admin, "/metrics", None);
        (r, flooded.elapsed())
    });
    let first = closed_after(&mut silent[0], flooded, HEADER_TIMEOUT + SLACK);
    assert!(
        first >= HEADER_TIMEOUT - Duration::from_millis(500),
        "a silent scraper was closed after {first:?}"
    );
    let (r, served) = scraper.join().unwrap();
    assert_eq!(r.status, 200);
    assert!(r.body.contains("det_tls_proxy_connections_total"));
    assert!(
        served < 2 * HEADER_TIMEOUT + SLACK,
        "/metrics served {served:?} after the flood began"
    );
    figure(format!(
        "admin flood: {FLOOD} silent scrapers held {held} fds (cap {CAP}); /metrics served after {served:?}; silent ones closed after {first:?}"
    ));
}

#[test]
fn an_idle_keep_alive_connection_is_closed_after_the_head_timeout() {
    let dir = tempdir();
    let master = Master::start(dir.path(), Behavior::Echo);
    let proxy = start(dir.path(), &master);
    let mut c = connect(proxy.tcp_addr("admin"));
    c.write_all(b"GET /healthz HTTP/1.1\r\nHost: admin\r\n\r\n")
        .unwrap();
    let mut buf = [0u8; 512];
    let n = c.read(&mut buf).unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"), "{:?}", &buf[..n]);
    let idle = Instant::now();
    let after = closed_after(&mut c, idle, HEADER_TIMEOUT + SLACK);
    assert!(
        after >= HEADER_TIMEOUT - Duration::from_millis(500),
        "closed after {after:?} idle"
    );
}

#[test]
fn a_connection_lives_at_most_the_connection_timeout_however_busy() {
    let dir = tempdir();
    let master = Master::start(dir.path(), Behavior::Echo);
    let proxy = start(dir.path(), &master);
    let admin: SocketAddr = proxy.tcp_addr("admin");
    let mut c = connect(admin);
    let opened = Instant::now();
    let mut answered = 0;
    // A keep-alive request every 2 s: never idle for the head timeout.
    let closed = loop {
        assert!(
            opened.elapsed() < CONNECTION_TIMEOUT + SLACK,
            "still open after {:?} ({answered} answers)",
            opened.elapsed()
        );
        if c.write_all(b"GET /healthz HTTP/1.1\r\nHost: admin\r\n\r\n")
            .is_err()
        {
            break opened.elapsed();
        }
        let mut buf = [0u8; 512];
        match c.read(&mut buf) {
            Ok(0) => break opened.elapsed(),
            Ok(_) => answered += 1,
            Err(e) if e.kind() == ErrorKind::ConnectionReset => break opened.elapsed(),
            Err(e) => panic!("read: {e}"),
        }
        // Time is the behaviour here: a request every 2 s keeps it busy, never idle.
        std::thread::sleep(Duration::from_secs(2));
    };
    assert!(
        closed >= CONNECTION_TIMEOUT - Duration::from_secs(3),
        "closed after {closed:?} ({answered} answers)"
    );
    assert!(answered >= 10, "{answered} answers in {closed:?}");
}
