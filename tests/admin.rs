//! The admin endpoint: `/healthz`, `/readyz` (a probe of the master), `/metrics` (every
//! family, counters and gauges that move with the traffic and the configuration, including
//! reloads counted by result), and who may reach it. `/metrics` is parsed with Python's
//! prometheus_client, a real Prometheus text parser (tests/common/prometheus.rs). Reloads
//! themselves, by signal or from disk, are tests/reload.rs.

mod common;

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use common::prometheus::{get, get_from, parse, scrape, scrape_until, Scrape};
use common::*;
use nix::sys::signal::Signal;

// === Metric families ===

/// Every metric family (docs/interface.md), with the type a parser must see.
const FAMILIES: &[(&str, &str)] = &[
    ("det_tls_proxy_connections", "counter"),
    ("det_tls_proxy_active_connections", "gauge"),
    ("det_tls_proxy_bytes", "counter"),
    ("det_tls_proxy_connect_seconds", "histogram"),
    ("det_tls_proxy_handshake_seconds", "histogram"),
    ("det_tls_proxy_upstream_errors", "counter"),
    ("det_tls_proxy_tls_resumed", "counter"),
    (
        "det_tls_proxy_master_cert_expiry_timestamp_seconds",
        "gauge",
    ),
    ("det_tls_proxy_config_reloads", "counter"),
    ("det_tls_proxy_skip_verify", "gauge"),
    ("det_tls_proxy_preconnect", "counter"),
    ("det_tls_proxy_ready", "gauge"),
    ("det_tls_proxy_max_connections", "gauge"),
    ("det_tls_proxy_config_last_reload_successful", "gauge"),
];

fn assert_families(s: &Scrape) {
    for (name, kind) in FAMILIES {
        let f = s
            .family(name)
            .unwrap_or_else(|| panic!("metric family {name} missing: {s:#?}"));
        assert_eq!(&f.kind, kind, "{name}");
    }
}

// === Helpers ===

/// A leaf for det-master and 127.0.0.1 expiring on a date of our choosing.
fn leaf_expiring(ca: &Ca, y: i32, m: u8, d: u8) -> Leaf {
    leaf_valid(ca, &["det-master", "127.0.0.1"], (2020, 1, 1), (y, m, d))
}

// === /healthz and /readyz ===

#[test]
fn healthz_and_readyz_with_master_up() {
    let dir = tempdir();
    let ca = Ca::root("Admin Test CA");
    let leaf = leaf_expiring(&ca, 2031, 5, 17);
    let server = ServerBuilder::new(vec![leaf.der()], leaf.key_der()).start();
    let ca_pem = certs::write(dir.path(), "ca.pem", &ca.pem());
    let proxy = Cfg::new("127.0.0.1", server.port())
        .master_cert(&ca_pem)
        .extra(ADMIN)
        .start(dir.path());
    let admin = proxy.tcp_addr("admin");

    let r = get(admin, "/healthz", None);
    assert_eq!(r.status, 200, "{}", r.body);
    let r = get(admin, "/readyz", None);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(get(admin, "/nothing-here", None).status, 404);
    let mut c = connect(admin);
    c.write_all(
        b"POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    let raw = String::from_utf8(read_until_closed(&mut c, IO_TIMEOUT)).unwrap();
    assert!(raw.starts_with("HTTP/1.1 405"), "POST /healthz: {raw:?}");

    // The probe is a full handshake with the master, and sets the expiry gauge from its leaf.
    let hs = server.handshake(1);
    assert!(!hs.resumed);
    let s = scrape(admin);
    let expiry = rcgen::date_time_ymd(2031, 5, 17).unix_timestamp() as f64;
    assert_eq!(
        s.value("det_tls_proxy_master_cert_expiry_timestamp_seconds", &[]),
        Some(expiry)
    );
}

#[test]
fn readyz_is_503_when_the_master_is_down() {
    let dir = tempdir();
    let ca_pem = certs::write(dir.path(), "ca.pem", &Ca::root("Any CA").pem());
    let port = common::server::closed_port();
    let proxy = Cfg::new("127.0.0.1", port)
        .master_cert(&ca_pem)
        .extra(ADMIN)
        .start(dir.path());
    let admin = proxy.tcp_addr("admin");
    assert_eq!(get(admin, "/healthz", None).status, 200);
    let r = get(admin, "/readyz", None);
    assert_eq!(r.status, 503, "{}", r.body);
    assert!(r.body.contains("refused"), "no reason given: {:?}", r.body);
}

/// `/readyz` tells a scraper from another host ready or not and nothing else: its reason
/// names the master's address and what its certificate holds, which is this host's business.
#[test]
fn readyz_tells_a_scraper_from_another_host_only_ready_or_not() {
    let dir = tempdir();
    let ca_pem = certs::write(dir.path(), "ca.pem", &Ca::root("Any CA").pem());
    let port = common::server::closed_port();
    let other = host_address().to_string();
    let proxy = Cfg::new("127.0.0.1", port)
        .master_cert(&ca_pem)
        .extra(&format!(
            r#"admin: {{listen: "0.0.0.0:0", allowed_clients: ["127.0.0.0/8", "{other}/32"]}}"#
        ))
        .start(dir.path());
    let admin = proxy.tcp_addr("admin");
    let local = get(admin, "/readyz", None);
    assert_eq!(local.status, 503, "{}", local.body);
    assert!(
        local.body.contains(&format!("127.0.0.1:{port}")),
        "a loopback scraper is told why: {:?}",
        local.body
    );
    let remote = get_from(Some(&other), admin, "/readyz", None);
    assert_eq!(remote.status, 503, "{}", remote.body);
    assert_eq!(
        remote.body, "not ready\n",
        "told a scraper at {other} more than 503"
    );
    assert_eq!(get_from(Some(&other), admin, "/healthz", None).status, 200);
}

// === /metrics ===

#[test]
fn metrics_parse_as_prometheus_text_for_a_classic_scraper() {
    // A scraper that asks only for the classic Prometheus text format (0.0.4), parsed with
    // prometheus_client's classic parser: every family present, counters with their samples.
    let dir = tempdir();
    let master = Master::start(dir.path(), Behavior::Echo);
    let proxy = master.cfg().extra(ADMIN).start(dir.path());
    let admin = proxy.tcp_addr("admin");
    relays(proxy.tcp_addr("main"), b"hello");
    proxy.nth_access_line("main", 1);
    let r = get(admin, "/metrics", Some("text/plain;version=0.0.4"));
    assert_eq!(r.status, 200);
    let s = parse(&r.body, "text");
    assert_families(&s);
    let conns = s.family("det_tls_proxy_connections").unwrap();
    assert!(
        conns
            .samples
            .iter()
            .any(|(n, l, v)| n == "det_tls_proxy_connections_total"
                && l.get("result").map(String::as_str) == Some("ok")
                && *v == 1.0),
        "the classic parser finds no samples in the connections counter (content-type {:?}): {conns:#?}",
        r.content_type
    );
}

#[test]
fn metrics_have_every_family_and_counters_move() {
    let dir = tempdir();
    let ca = Ca::root("Metrics Test CA");
    let leaf = leaf_expiring(&ca, 2033, 3, 9);
    let server = ServerBuilder::new(vec![leaf.der()], leaf.key_der()).start();
    let ca_pem = certs::write(dir.path(), "ca.pem", &ca.pem());
    let proxy = Cfg::new("127.0.0.1", server.port())
        .master_cert(&ca_pem)
        .extra(ADMIN)
        .start(dir.path());
    let admin = proxy.tcp_addr("admin");
    let main = proxy.tcp_addr("main");
    let ok = [("listener", "main"), ("result", "ok")];
    let up = [("listener", "main"), ("direction", "up")];
    let down = [("listener", "main"), ("direction", "down")];

    let s = scrape(admin);
    assert_families(&s);
    assert_eq!(s.value("det_tls_proxy_skip_verify", &[]), Some(0.0));
    assert_eq!(s.count("det_tls_proxy_connections_total", &ok), 0.0);
    assert_eq!(s.value("det_tls_proxy_tls_resumed_total", &[]), Some(0.0));

    // Two connections relay 1000 + 300 bytes each way.
    relays(main, &[b'a'; 1000]);
    relays(main, &[b'b'; 300]);
    let lines = [
        proxy.nth_access_line("main", 1),
        proxy.nth_access_line("main", 2),
    ];
    let resumed = lines.iter().filter(|l| l["resumed"] == true).count() as f64;
    let s = scrape(admin);
    assert_eq!(s.count("det_tls_proxy_connections_total", &ok), 2.0);
    assert_eq!(s.count("det_tls_proxy_bytes_total", &up), 1300.0);
    assert_eq!(s.count("det_tls_proxy_bytes_total", &down), 1300.0);
    assert_eq!(
        s.value("det_tls_proxy_connect_seconds_count", &[]),
        Some(2.0)
    );
    assert_eq!(
        s.value("det_tls_proxy_handshake_seconds_count", &[]),
        Some(2.0)
    );
    assert_eq!(
        s.value("det_tls_proxy_tls_resumed_total", &[]),
        Some(resumed)
    );
    assert_eq!(
        s.value("det_tls_proxy_master_cert_expiry_timestamp_seconds", &[]),
        Some(rcgen::date_time_ymd(2033, 3, 9).unix_timestamp() as f64),
        "the expiry gauge is not the leaf's not_after"
    );
    // The gauge drops as the connection's task ends, just after its access line.
    scrape_until(
        admin,
        "no active connection",
        Duration::from_secs(10),
        |s| s.value("det_tls_proxy_active_connections", &[("listener", "main")]) == Some(0.0),
    );

    // A connection open now is active.
    let mut c = connect(main);
    assert_eq!(roundtrip(&mut c, b"open"), b"open");
    let s = scrape(admin);
    assert_eq!(
        s.value("det_tls_proxy_active_connections", &[("listener", "main")]),
        Some(1.0)
    );
    finish(&mut c);
    proxy.nth_access_line("main", 3);

    // The master goes away: the next client fails upstream and is counted by kind.
    let port = server.port();
    drop(server);
    assert!(
        eventually(Duration::from_secs(10), || TcpStream::connect((
            "127.0.0.1",
            port
        ))
        .is_err()),
        "the test master is still listening"
    );
    proxy.refuses(main, Refusal::UpstreamError, Duration::from_secs(10));
    let s = scrape(admin);
    assert_eq!(
        s.count(
            "det_tls_proxy_connections_total",
            &[("listener", "main"), ("result", "upstream_error")]
        ),
        1.0
    );
    assert_eq!(
        s.count(
            "det_tls_proxy_upstream_errors_total",
            &[("kind", "connect_refused")]
        ),
        1.0
    );
    assert_eq!(s.count("det_tls_proxy_connections_total", &ok), 3.0);
    assert_eq!(s.count("det_tls_proxy_bytes_total", &up), 1304.0);
}

#[test]
fn skip_verify_gauge_follows_the_configuration() {
    let dir = tempdir();
    let master = Master::start(dir.path(), Behavior::Echo);
    let cfg = Cfg::new("127.0.0.1", master.server.port())
        .tls("skip_verify", "true")
        .extra(ADMIN);
    let path = cfg.write(dir.path());
    let proxy = Proxy::start(&path);
    let admin = proxy.tcp_addr("admin");
    assert_eq!(
        scrape(admin).value("det_tls_proxy_skip_verify", &[]),
        Some(1.0)
    );

    // Reloaded into a verifying configuration, the gauge drops to 0.
    replace(&path, &master.cfg().extra(ADMIN).render());
    proxy.signal(Signal::SIGHUP);
    let s = scrape_until(admin, "a successful reload", Duration::from_secs(10), |s| {
        s.count(
            "det_tls_proxy_config_reloads_total",
            &[("result", "success")],
        ) >= 1.0
    });
    assert_eq!(s.value("det_tls_proxy_skip_verify", &[]), Some(0.0));
}

#[test]
fn config_reloads_are_counted_by_result() {
    let dir = tempdir();
    let master = Master::start(dir.path(), Behavior::Echo);
    let cfg = master.cfg().extra(ADMIN);
    let path = cfg.write(dir.path());
    let proxy = Proxy::start(&path);
    let admin = proxy.tcp_addr("admin");
    let success = [("result", "success")];
    let error = [("result", "error")];

    proxy.signal(Signal::SIGHUP);
    let s = scrape_until(admin, "a successful reload", Duration::from_secs(10), |s| {
        s.count("det_tls_proxy_config_reloads_total", &success) == 1.0
    });
    assert_eq!(s.count("det_tls_proxy_config_reloads_total", &error), 0.0);
    let last_ok = |s: &Scrape| s.value("det_tls_proxy_config_last_reload_successful", &[]);
    assert_eq!(last_ok(&s), Some(1.0));

    // A broken configuration: refused, counted, and the proxy keeps serving. (The file
    // watcher may count the same change once more.)
    replace(&path, &(cfg.render() + "master_hots: typo\n"));
    proxy.signal(Signal::SIGHUP);
    let s = scrape_until(admin, "a refused reload", Duration::from_secs(10), |s| {
        s.count("det_tls_proxy_config_reloads_total", &error) >= 1.0
    });
    assert_eq!(s.count("det_tls_proxy_config_reloads_total", &success), 1.0);
    assert_eq!(last_ok(&s), Some(0.0));
    relays(proxy.tcp_addr("main"), b"still serving");

    // Fixed: the next reload succeeds and the gauge is 1 again.
    replace(&path, &cfg.render());
    proxy.signal(Signal::SIGHUP);
    let s = scrape_until(
        admin,
        "a second successful reload",
        Duration::from_secs(10),
        |s| s.count("det_tls_proxy_config_reloads_total", &success) >= 2.0,
    );
    assert_eq!(last_ok(&s), Some(1.0));
}

/// `det_tls_proxy_ready` is the last readiness probe's result: no sample before one ran, and a
/// plain scrape never dials the master. A scrape with `probe=1` starts one (its result shows
/// at the next scrape); a `/readyz` that failed shows as 0. `max_connections` is the cap.
#[test]
fn ready_gauge_follows_the_probe_a_scrape_or_readyz_asks_for() {
    let dir = tempdir();
    let master = Master::start(dir.path(), Behavior::Echo);
    let proxy = master
        .cfg()
        .extra(ADMIN)
        .extra("max_connections: 321")
        .start(dir.path());
    let admin = proxy.tcp_addr("admin");
    let s = scrape(admin);
    assert_eq!(s.value("det_tls_proxy_ready", &[]), None);
    assert_eq!(s.value("det_tls_proxy_max_connections", &[]), Some(321.0));
    assert_eq!(
        master.server.state().tcp_accepts,
        0,
        "a plain scrape dialled the master"
    );
    let probed = |s: &Scrape| s.value("det_tls_proxy_ready", &[]);
    let mut ready = None;
    eventually(Duration::from_secs(10), || {
        ready = probed(&parse(&get(admin, "/metrics?probe=1", None).body, "text"));
        ready.is_some()
    });
    assert_eq!(
        ready,
        Some(1.0),
        "no probe result after scrapes with probe=1"
    );
    // One probe, however many scrapes asked while its result was fresh.
    assert_eq!(master.server.state().handshakes.len(), 1);

    let down = dir.path().join("down");
    std::fs::create_dir(&down).unwrap();
    let proxy = Cfg::new("127.0.0.1", common::server::closed_port())
        .master_cert(&master.ca_pem)
        .extra(ADMIN)
        .start(&down);
    let admin = proxy.tcp_addr("admin");
    assert_eq!(get(admin, "/readyz", None).status, 503);
    assert_eq!(scrape(admin).value("det_tls_proxy_ready", &[]), Some(0.0));
}

/// Without allowed_clients a non-loopback admin address is refused at start: the fixture
/// tests/config/invalid/admin-any-without-allowed-clients.yaml. With them it serves them,
/// and only them.
#[test]
fn admin_on_a_non_loopback_address_serves_only_allowed_clients() {
    let dir = tempdir();
    let master = Master::start(dir.path(), Behavior::Echo);
    let proxy = master
        .cfg()
        .extra(r#"admin: {listen: "0.0.0.0:0", allowed_clients: ["127.0.0.0/8"]}"#)
        .start(dir.path());
    assert_eq!(get(proxy.tcp_addr("admin"), "/healthz", None).status, 200);
    drop(proxy);
    let proxy = master
        .cfg()
        .extra(r#"admin: {listen: "0.0.0.0:0", allowed_clients: ["10.0.0.0/8"]}"#)
        .start(dir.path());
    let mut s = connect(proxy.tcp_addr("admin"));
    let _ = s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let got = read_until_closed(&mut s, Duration::from_secs(10));
    assert!(
        got.is_empty(),
        "answered a client outside allowed_clients: {got:?}"
    );
}

#[test]
fn a_dual_stack_admin_address_judges_ipv4_clients_as_ipv4() {
    let dir = tempdir();
    let master = Master::start(dir.path(), Behavior::Echo);
    let proxy = master
        .cfg()
        .extra(r#"admin: {listen: "[::]:0", allowed_clients: ["127.0.0.0/8"]}"#)
        .start(dir.path());
    // An IPv4 client of the [::] socket arrives as ::ffff:127.0.0.1.
    let port = proxy.tcp_addr("admin").port();
    let v4 = SocketAddr::from(([127, 0, 0, 1], port));
    assert_eq!(get(v4, "/healthz", None).status, 200);
}
