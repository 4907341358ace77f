//! SIGTERM / SIGINT: stop accepting, let connections in flight finish, exit 0 when the
//! last one ends and at the latest after timeouts.shutdown.

mod common;

use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;
use nix::sys::signal::Signal;

#[test]
fn sigterm_drains_in_flight_connection_then_exits_zero() {
    let dir = tempdir();
    let master = Master::start(dir.path(), Behavior::Echo);
    let mut proxy = master.cfg().start(dir.path());
    let addr = proxy.tcp_addr("main");
    let mut c = connect(addr);
    let local = c.local_addr().unwrap();
    assert_eq!(roundtrip(&mut c, b"before"), b"before");

    proxy.signal(Signal::SIGTERM);
    wait_refused(addr, Duration::from_secs(5));

    // The connection in flight keeps relaying both ways during the drain.
    assert_eq!(roundtrip(&mut c, b"during drain"), b"during drain");
    assert!(
        proxy.try_exit().is_none(),
        "exited with a connection still in flight"
    );

    finish(&mut c);
    let status = proxy
        .wait_exit(Duration::from_secs(5))
        .expect("still running after its last connection ended");
    assert_eq!(status.code(), Some(0), "exit status {status}");
    assert_eq!(proxy.access_line(local)["outcome"], "ok");
}

#[test]
fn sigterm_drain_bounded_by_shutdown_timeout() {
    let dir = tempdir();
    let master = Master::start(dir.path(), Behavior::Echo);
    let mut proxy = master
        .cfg()
        .extra("timeouts: {shutdown: 1s}")
        .start(dir.path());
    let mut c = connect(proxy.tcp_addr("main"));
    let local = c.local_addr().unwrap();
    assert_eq!(roundtrip(&mut c, b"stay"), b"stay");

    let signalled = Instant::now();
    proxy.signal(Signal::SIGTERM);
    let status = proxy
        .wait_exit(Duration::from_secs(6))
        .expect("still running well after timeouts.shutdown");
    let took = signalled.elapsed();
    assert_eq!(status.code(), Some(0), "exit status {status}");
    assert!(
        took >= Duration::from_millis(900),
        "exited after {took:?}, without draining for timeouts.shutdown"
    );
    let rest = read_until_closed(&mut c, Duration::from_secs(2));
    assert!(rest.is_empty());
    assert_eq!(proxy.access_line(local)["outcome"], "shutdown");
}

#[test]
fn sigterm_without_connections_exits_zero_promptly() {
    let dir = tempdir();
    let master = Master::start(dir.path(), Behavior::Echo);
    let mut proxy = master.cfg().start(dir.path());
    proxy.signal(Signal::SIGTERM);
    let status = proxy
        .wait_exit(Duration::from_secs(3))
        .expect("idle proxy did not exit promptly on SIGTERM");
    assert_eq!(status.code(), Some(0), "exit status {status}");
}

#[test]
fn sigint_without_connections_exits_zero_promptly() {
    let dir = tempdir();
    let master = Master::start(dir.path(), Behavior::Echo);
    let mut proxy = master.cfg().start(dir.path());
    proxy.signal(Signal::SIGINT);
    let status = proxy
        .wait_exit(Duration::from_secs(3))
        .expect("idle proxy did not exit promptly on SIGINT");
    assert_eq!(status.code(), Some(0), "exit status {status}");
}

#[test]
fn drain_is_visible_readyz_503_healthz_200_until_exit() {
    let dir = tempdir();
    let master = Master::start(dir.path(), Behavior::Echo);
    let mut proxy = master
        .cfg()
        .extra(r#"admin: {listen: "127.0.0.1:0"}"#)
        .extra("timeouts: {shutdown: 30s}")
        .start(dir.path());
    let addr = proxy.tcp_addr("main");
    let admin = proxy.tcp_addr("admin");
    assert_eq!(http_status(admin, "/readyz"), Some(200));
    // A connection keeps the proxy draining.
    let mut c = connect(addr);
    assert_eq!(roundtrip(&mut c, b"before"), b"before");

    proxy.signal(Signal::SIGTERM);
    proxy.wait_for("the draining line", Duration::from_secs(10), |v| {
        v["message"] == "draining"
    });
    assert_eq!(
        http_status(admin, "/readyz"),
        Some(503),
        "readyz while draining"
    );
    assert_eq!(
        http_status(admin, "/healthz"),
        Some(200),
        "healthz while draining"
    );
    wait_refused(addr, Duration::from_secs(5));
    assert_eq!(roundtrip(&mut c, b"during"), b"during");
    finish(&mut c);

    let status = proxy
        .wait_exit(Duration::from_secs(10))
        .expect("exit once drained");
    assert_eq!(status.code(), Some(0));
    // The admin endpoint stopped with the server.
    assert!(TcpStream::connect_timeout(&admin, Duration::from_secs(1)).is_err());
}

#[test]
fn a_second_sigterm_while_draining_closes_what_is_left() {
    let dir = tempdir();
    let master = Master::start(dir.path(), Behavior::Echo);
    let mut proxy = master
        .cfg()
        .extra("timeouts: {shutdown: 1h}")
        .start(dir.path());
    let mut c = connect(proxy.tcp_addr("main"));
    assert_eq!(roundtrip(&mut c, b"held"), b"held");
    proxy.signal(Signal::SIGTERM);
    proxy.wait_for("the draining line", Duration::from_secs(10), |v| {
        v["message"] == "draining"
    });
    assert!(
        proxy.wait_exit(Duration::from_millis(500)).is_none(),
        "did not wait for the open connection"
    );
    proxy.signal(Signal::SIGTERM);
    let status = proxy
        .wait_exit(Duration::from_secs(10))
        .expect("a second SIGTERM ends the drain");
    assert_eq!(status.code(), Some(0));
    let rest = read_until_closed(&mut c, Duration::from_secs(5));
    assert!(rest.is_empty());
}
