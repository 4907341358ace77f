//! The admin endpoint (`/healthz`, `/readyz`, `/metrics`) and live reload from disk (issue 4).
//! `/metrics` is parsed with Python's prometheus_client, a real Prometheus text parser.
//! tests/reload.rs covers SIGHUP itself; here: reload without a signal (polling the files,
//! Kubernetes' symlink swap), certificate rotation to a new CA with a connection open, and a
//! broken file on disk.

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use nix::sys::signal::Signal;
use rustls::server::{ClientHello, NoServerSessionStorage, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use serde_json::Value;

const ADMIN: &str = r#"admin: {listen: "127.0.0.1:0"}"#;

// === A minimal HTTP/1.1 client ===

struct Resp {
    status: u16,
    content_type: String,
    body: String,
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    loop {
        let Some((size, rest)) = body.split_once("\r\n") else {
            return out;
        };
        let n = usize::from_str_radix(size.split(';').next().unwrap().trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            return out;
        }
        out.push_str(&rest[..n]);
        body = rest[n..].trim_start_matches("\r\n");
    }
}

/// `GET path` with `Connection: close`; the whole response.
fn get(addr: SocketAddr, path: &str, accept: Option<&str>) -> Resp {
    let mut s = connect(addr);
    let accept = accept
        .map(|a| format!("Accept: {a}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\n{accept}Connection: close\r\n\r\n"
    )
    .unwrap();
    let raw = read_until_closed(&mut s, IO_TIMEOUT);
    let raw = String::from_utf8(raw).expect("UTF-8 response");
    let (head, body) = raw
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no HTTP response: {raw:?}"));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status: {head:?}"));
    let header = |name: &str| {
        head.lines()
            .filter_map(|l| l.split_once(':'))
            .find(|(k, _)| k.trim().eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim().to_string())
            .unwrap_or_default()
    };
    let body = if header("transfer-encoding").eq_ignore_ascii_case("chunked") {
        dechunk(body)
    } else {
        body.to_string()
    };
    Resp {
        status,
        content_type: header("content-type"),
        body,
    }
}

// === /metrics through Python's parsers ===

const PARSE: &str = r#"
import json, sys
try:
    if sys.argv[1] == "openmetrics":
        from prometheus_client.openmetrics.parser import text_string_to_metric_families
    else:
        from prometheus_client.parser import text_string_to_metric_families
except ImportError as e:
    sys.exit("prometheus_client is missing (pip install prometheus-client): %s" % e)
out = []
for f in text_string_to_metric_families(sys.stdin.read()):
    out.append({"name": f.name, "type": f.type, "samples": [
        {"name": s.name, "labels": s.labels, "value": float(s.value)} for s in f.samples]})
print(json.dumps(out))
"#;

#[derive(Debug)]
struct Family {
    name: String,
    kind: String,
    samples: Vec<(String, BTreeMap<String, String>, f64)>,
}

#[derive(Debug)]
struct Scrape {
    families: Vec<Family>,
}

impl Scrape {
    fn family(&self, name: &str) -> Option<&Family> {
        self.families.iter().find(|f| f.name == name)
    }

    /// The value of the one sample named `sample` whose labels include `labels`.
    fn value(&self, sample: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let found: Vec<f64> = self
            .families
            .iter()
            .flat_map(|f| f.samples.iter())
            .filter(|(n, l, _)| {
                n == sample
                    && labels
                        .iter()
                        .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|(_, _, v)| *v)
            .collect();
        assert!(
            found.len() <= 1,
            "{sample} {labels:?} matches {} samples",
            found.len()
        );
        found.first().copied()
    }

    /// Like `value`, 0 when the labelled child does not exist yet.
    fn count(&self, sample: &str, labels: &[(&str, &str)]) -> f64 {
        self.value(sample, labels).unwrap_or(0.0)
    }
}

/// Parses Prometheus text with prometheus_client's `openmetrics` or classic `text` parser.
fn parse(text: &str, parser: &str) -> Scrape {
    let mut child = Command::new("python3")
        .arg("-c")
        .arg(PARSE)
        .arg(parser)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the {parser} parser rejected /metrics: {}\n--- /metrics ---\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let families = v
        .as_array()
        .unwrap()
        .iter()
        .map(|f| Family {
            name: f["name"].as_str().unwrap().to_string(),
            kind: f["type"].as_str().unwrap().to_string(),
            samples: f["samples"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| {
                    let labels = s["labels"]
                        .as_object()
                        .unwrap()
                        .iter()
                        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
                        .collect();
                    (
                        s["name"].as_str().unwrap().to_string(),
                        labels,
                        s["value"].as_f64().unwrap(),
                    )
                })
                .collect(),
        })
        .collect();
    Scrape { families }
}

/// What Prometheus sends: OpenMetrics preferred, classic text accepted.
const PROMETHEUS_ACCEPT: &str =
    "application/openmetrics-text;version=1.0.0;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";

/// Scrapes /metrics as Prometheus does: the parser follows the response's content type.
fn scrape(admin: SocketAddr) -> Scrape {
    let r = get(admin, "/metrics", Some(PROMETHEUS_ACCEPT));
    assert_eq!(r.status, 200, "{}", r.body);
    let parser = if r.content_type.starts_with("application/openmetrics-text") {
        "openmetrics"
    } else {
        "text"
    };
    parse(&r.body, parser)
}

/// Scrapes until `pred` holds; panics with the last scrape after `timeout`.
fn scrape_until(
    admin: SocketAddr,
    what: &str,
    timeout: Duration,
    pred: impl Fn(&Scrape) -> bool,
) -> Scrape {
    let deadline = Instant::now() + timeout;
    loop {
        let s = scrape(admin);
        if pred(&s) {
            return s;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}; last scrape: {s:#?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Every family of DESIGN.md, with the type a parser must see.
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

fn is_reloaded(v: &Value) -> bool {
    v["message"] == "configuration reloaded"
}

fn is_reload_refused(v: &Value) -> bool {
    field(v, "message").contains("reload refused")
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
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_ok() {
        assert!(
            Instant::now() < deadline,
            "the test master is still listening"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let client = refused(main, Duration::from_secs(10));
    assert_eq!(proxy.access_line(client)["outcome"], "upstream_error");
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

    // A broken configuration: refused, counted, and the proxy keeps serving. (The file
    // watcher may count the same change once more.)
    replace(&path, &(cfg.render() + "master_hots: typo\n"));
    proxy.signal(Signal::SIGHUP);
    let s = scrape_until(admin, "a refused reload", Duration::from_secs(10), |s| {
        s.count("det_tls_proxy_config_reloads_total", &error) >= 1.0
    });
    assert_eq!(s.count("det_tls_proxy_config_reloads_total", &success), 1.0);
    relays(proxy.tcp_addr("main"), b"still serving");
}

#[test]
fn admin_on_a_non_loopback_address_needs_allowed_clients() {
    let dir = tempdir();
    let master = Master::start(dir.path(), Behavior::Echo);
    let path = master
        .cfg()
        .extra(r#"admin: {listen: "0.0.0.0:0"}"#)
        .write(dir.path());
    let out = common::proxy::run_expecting_exit(&path);
    assert_eq!(out.code(), Some(2), "{out}");
    assert!(out.stderr.contains("admin.allowed_clients"), "{out}");

    // With allowed_clients it serves them, and only them.
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

// === Live reload from disk ===

/// An echo master whose certificate can be changed between connections; it records which
/// certificate each connection got and whether its handshake finished. No resumption, so
/// every handshake is verified.
struct Rotating {
    addr: SocketAddr,
    current: Arc<Mutex<(String, Arc<CertifiedKey>)>>,
    /// (certificate label, handshake finished) per connection, in accept order.
    seen: Arc<Mutex<Vec<(String, bool)>>>,
}

#[derive(Debug)]
struct Current(Arc<Mutex<(String, Arc<CertifiedKey>)>>);

impl ResolvesServerCert for Current {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.lock().unwrap().1.clone())
    }
}

impl Rotating {
    fn start(label: &str, leaf: &Leaf) -> Rotating {
        let current = Arc::new(Mutex::new((label.to_string(), certified(leaf))));
        let mut config = rustls::ServerConfig::builder_with_provider(common::server::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(Current(current.clone())));
        config.session_storage = Arc::new(NoServerSessionStorage {});
        config.send_tls13_tickets = 0;
        let config = Arc::new(config);
        let seen = Arc::new(Mutex::new(Vec::new()));
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let (cur, seen2) = (current.clone(), seen.clone());
        std::thread::spawn(move || {
            for tcp in l.incoming().flatten() {
                let label = cur.lock().unwrap().0.clone();
                let (config, seen) = (config.clone(), seen2.clone());
                std::thread::spawn(move || echo(tcp, config, label, seen));
            }
        });
        Rotating {
            addr,
            current,
            seen,
        }
    }

    fn switch(&self, label: &str, leaf: &Leaf) {
        *self.current.lock().unwrap() = (label.to_string(), certified(leaf));
    }

    fn seen(&self) -> Vec<(String, bool)> {
        self.seen.lock().unwrap().clone()
    }
}

fn echo(
    mut tcp: TcpStream,
    config: Arc<rustls::ServerConfig>,
    label: String,
    seen: Arc<Mutex<Vec<(String, bool)>>>,
) {
    tcp.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut conn = rustls::ServerConnection::new(config).unwrap();
    let mut ok = true;
    while conn.is_handshaking() {
        if conn.complete_io(&mut tcp).is_err() {
            ok = false;
            break;
        }
    }
    seen.lock().unwrap().push((label, ok));
    if !ok {
        return;
    }
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    let mut buf = [0u8; 16 * 1024];
    loop {
        match tls.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if tls.write_all(&buf[..n]).and_then(|_| tls.flush()).is_err() {
                    return;
                }
            }
        }
    }
    tls.conn.send_close_notify();
    let _ = tls.flush();
}

/// How long a change on disk may take to be noticed (issue 4: at most 10 s late).
const RELOAD_LATENCY: Duration = Duration::from_secs(10);

#[test]
fn rotating_master_cert_to_a_new_ca_on_disk_keeps_open_connections() {
    let dir = tempdir();
    let (ca1, ca2) = (Ca::root("Rotation Old CA"), Ca::root("Rotation New CA"));
    let master = Rotating::start(
        "old",
        &ca1.server("det-master", &["det-master", "127.0.0.1"]),
    );
    let ca_pem = certs::write(dir.path(), "ca.pem", &ca1.pem());
    let proxy = Cfg::new("127.0.0.1", master.addr.port())
        .master_cert(&ca_pem)
        .extra(ADMIN)
        .start(dir.path());
    let main = proxy.tcp_addr("main");

    // A connection open across the rotation.
    let mut open = connect(main);
    let open_local = open.local_addr().unwrap();
    assert_eq!(roundtrip(&mut open, b"before"), b"before");

    // The master moves to a certificate from the new CA: the old trust refuses it.
    master.switch(
        "new",
        &ca2.server("det-master", &["det-master", "127.0.0.1"]),
    );
    refused(main, Duration::from_secs(10));

    // The new CA lands on disk; no signal.
    replace(&ca_pem, &ca2.pem());
    let changed = Instant::now();
    let line = proxy.wait_for("a reload from disk", RELOAD_LATENCY, is_reloaded);
    assert_eq!(line["trigger"], "file change", "{line}");
    eprintln!("reload noticed after {:?}", changed.elapsed());

    assert_eq!(
        roundtrip(&mut open, b"after"),
        b"after",
        "the open connection broke"
    );
    relays(main, b"new connection");
    finish(&mut open);
    assert_eq!(proxy.access_line(open_local)["outcome"], "ok");
    assert_eq!(
        master.seen(),
        [
            ("old".to_string(), true),
            ("new".to_string(), false),
            ("new".to_string(), true)
        ]
    );
    let s = scrape(proxy.tcp_addr("admin"));
    assert_eq!(
        s.count(
            "det_tls_proxy_config_reloads_total",
            &[("result", "success")]
        ),
        1.0
    );
}

/// A Kubernetes Secret volume: `..data` links to a timestamped directory and each key is a
/// link through `..data`. An update writes a new directory and swaps `..data` atomically.
struct SecretVolume {
    dir: PathBuf,
    generation: u32,
}

impl SecretVolume {
    fn new(dir: PathBuf, key: &str, contents: &str) -> SecretVolume {
        std::fs::create_dir_all(&dir).unwrap();
        let mut v = SecretVolume { dir, generation: 0 };
        v.update(key, contents);
        std::os::unix::fs::symlink(format!("..data/{key}"), v.dir.join(key)).unwrap();
        v
    }

    fn update(&mut self, key: &str, contents: &str) {
        self.generation += 1;
        let ts = format!(
            "..2024_06_0{}_12_00_00.00000000{}",
            self.generation, self.generation
        );
        std::fs::create_dir(self.dir.join(&ts)).unwrap();
        std::fs::write(self.dir.join(&ts).join(key), contents).unwrap();
        let tmp = self.dir.join("..data_tmp");
        std::os::unix::fs::symlink(&ts, &tmp).unwrap();
        let old = std::fs::read_link(self.dir.join("..data")).ok();
        std::fs::rename(&tmp, self.dir.join("..data")).unwrap();
        if let Some(old) = old {
            std::fs::remove_dir_all(self.dir.join(old)).unwrap();
        }
    }
}

#[test]
fn kubernetes_secret_symlink_swap_is_picked_up_without_a_signal() {
    let dir = tempdir();
    let (ca1, ca2) = (Ca::root("Secret Old CA"), Ca::root("Secret New CA"));
    let master = Rotating::start(
        "old",
        &ca1.server("det-master", &["det-master", "127.0.0.1"]),
    );
    let mut secret = SecretVolume::new(dir.path().join("secret"), "ca.crt", &ca1.pem());
    let cert_path = dir.path().join("secret").join("ca.crt");
    let proxy = Cfg::new("127.0.0.1", master.addr.port())
        .master_cert(&cert_path)
        .start(dir.path());
    let main = proxy.tcp_addr("main");
    relays(main, b"old CA");

    master.switch(
        "new",
        &ca2.server("det-master", &["det-master", "127.0.0.1"]),
    );
    secret.update("ca.crt", &ca2.pem());
    let line = proxy.wait_for(
        "a reload after the ..data swap",
        RELOAD_LATENCY,
        is_reloaded,
    );
    assert_eq!(line["trigger"], "file change", "{line}");
    relays(main, b"new CA");
    assert_eq!(
        master.seen(),
        [("old".to_string(), true), ("new".to_string(), true)]
    );
}

#[test]
fn broken_certificate_on_disk_is_refused_and_the_proxy_keeps_serving() {
    let dir = tempdir();
    let master = Master::start(dir.path(), Behavior::Echo);
    let proxy = master.cfg().extra(ADMIN).start(dir.path());
    let main = proxy.tcp_addr("main");
    relays(main, b"before");

    replace(&master.ca_pem, "this is not a certificate\n");
    let line = proxy.wait_for("a refused reload", RELOAD_LATENCY, is_reload_refused);
    assert!(
        line.to_string().contains("master_cert"),
        "the refusal does not name the key: {line}"
    );
    relays(main, b"after");
    let s = scrape(proxy.tcp_addr("admin"));
    assert_eq!(
        s.count("det_tls_proxy_config_reloads_total", &[("result", "error")]),
        1.0
    );
    assert_eq!(
        s.count(
            "det_tls_proxy_config_reloads_total",
            &[("result", "success")]
        ),
        0.0
    );
}

#[test]
fn a_certificate_file_named_by_a_reloaded_config_is_watched_too() {
    let dir = tempdir();
    let (ca1, ca2) = (Ca::root("Watch Old CA"), Ca::root("Watch New CA"));
    let master = Rotating::start(
        "old",
        &ca1.server("det-master", &["det-master", "127.0.0.1"]),
    );
    let first = certs::write(dir.path(), "first.pem", &ca1.pem());
    let second = certs::write(dir.path(), "second.pem", &ca1.pem());
    let cfg = |cert: &Path| Cfg::new("127.0.0.1", master.addr.port()).master_cert(cert);
    let path = cfg(&first).write(dir.path());
    let proxy = Proxy::start(&path);
    let main = proxy.tcp_addr("main");
    relays(main, b"first");

    // The configuration now names another file (picked up from disk).
    replace(&path, &cfg(&second).render());
    proxy.wait_for("the reload naming second.pem", RELOAD_LATENCY, is_reloaded);
    relays(main, b"second");

    // That file changes: it must be noticed like the first one would have been.
    master.switch(
        "new",
        &ca2.server("det-master", &["det-master", "127.0.0.1"]),
    );
    replace(&second, &ca2.pem());
    proxy.wait_for_nth(
        "a reload after second.pem changed",
        2,
        RELOAD_LATENCY,
        is_reloaded,
    );
    relays(main, b"new CA");
}
