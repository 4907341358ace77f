//! SIGHUP: re-read the configuration and certificates, refuse a bad new configuration and
//! keep the old one, never cut connections in flight, start a fresh session cache.
//!
//! The reload lines are matched loosely (a message mentioning "reload"): DESIGN.md fixes
//! the behaviour, not the wording.

mod common;

use std::time::Duration;

use common::*;
use nix::sys::signal::Signal;
use serde_json::Value;

fn is_reload(v: &Value) -> bool {
    field(v, "message").to_lowercase().contains("reload")
}

fn is_reload_ok(v: &Value) -> bool {
    is_reload(v) && v["level"] == "INFO"
}

fn is_reload_refused(v: &Value) -> bool {
    is_reload(v) && (v["level"] == "ERROR" || v["level"] == "WARN")
}

#[test]
fn sighup_reloads_master_cert() {
    let dir = tempdir();
    let master = Master::start(dir.path(), Behavior::Echo);
    // Start trusting the wrong CA.
    let ca_pem = certs::write(dir.path(), "trust.pem", &Ca::root("Old CA").pem());
    let proxy = Cfg::new("127.0.0.1", master.server.port())
        .master_cert(&ca_pem)
        .start(dir.path());
    let addr = proxy.tcp_addr("main");
    refused(addr, Duration::from_secs(5));

    replace(&ca_pem, &master.ca.pem());
    proxy.signal(Signal::SIGHUP);
    proxy.wait_for("a reload line", Duration::from_secs(10), is_reload_ok);
    relays(addr, b"ping");
}

#[test]
fn sighup_with_bad_config_keeps_previous_one() {
    let dir = tempdir();
    let master = Master::start(dir.path(), Behavior::Echo);
    let cfg = master.cfg();
    let path = cfg.write(dir.path());
    let proxy = Proxy::start(&path);
    let addr = proxy.tcp_addr("main");
    relays(addr, b"ping");

    replace(&path, &(cfg.render() + "master_hots: typo\n"));
    proxy.signal(Signal::SIGHUP);
    let line = proxy.wait_for(
        "a refused-reload line",
        Duration::from_secs(10),
        is_reload_refused,
    );
    assert!(
        line.to_string().contains("master_hots"),
        "the refusal does not say what is wrong: {line}"
    );
    relays(addr, b"ping");
}

#[test]
fn sighup_keeps_connections_in_flight() {
    let dir = tempdir();
    let master = Master::start(dir.path(), Behavior::Echo);
    let cfg = master.cfg();
    let path = cfg.write(dir.path());
    let proxy = Proxy::start(&path);
    let mut c = connect(proxy.tcp_addr("main"));
    let local = c.local_addr().unwrap();
    assert_eq!(roundtrip(&mut c, b"before"), b"before");

    replace(&path, &cfg.extra("timeouts: {idle: 30m}").render());
    proxy.signal(Signal::SIGHUP);
    proxy.wait_for("a reload line", Duration::from_secs(10), is_reload_ok);

    assert_eq!(roundtrip(&mut c, b"after reload"), b"after reload");
    finish(&mut c);
    assert_eq!(proxy.access_line(local)["outcome"], "ok");
}

#[test]
fn sighup_starts_fresh_session_cache() {
    let dir = tempdir();
    let master = Master::start(dir.path(), Behavior::Echo);
    let proxy = master.cfg().start(dir.path());
    let addr = proxy.tcp_addr("main");
    relays(addr, b"ping");
    let second = relays(addr, b"ping");
    assert_eq!(proxy.access_line(second)["resumed"], true);

    proxy.signal(Signal::SIGHUP);
    proxy.wait_for("a reload line", Duration::from_secs(10), is_reload_ok);
    let third = relays(addr, b"ping");
    assert_eq!(
        proxy.access_line(third)["resumed"],
        false,
        "a session from before the reload was resumed"
    );
}

#[test]
fn sighup_removing_ca_refuses_new_connections_despite_cached_session() {
    let dir = tempdir();
    let master = Master::start(dir.path(), Behavior::Echo);
    let proxy = master.cfg().start(dir.path());
    let addr = proxy.tcp_addr("main");
    relays(addr, b"ping"); // a session is now cached

    replace(&master.ca_pem, &Ca::root("Replacement CA").pem());
    proxy.signal(Signal::SIGHUP);
    proxy.wait_for("a reload line", Duration::from_secs(10), is_reload_ok);
    refused(addr, Duration::from_secs(5));
}
