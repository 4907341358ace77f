//! Diagnostics in `run`: a handshake failure is logged once per distinct cause per
//! minute, not once per connection (an agent's reconnect loop must not flood the journal),
//! in the same words as `check`, and every failure is counted by kind in
//! `upstream_errors_total{kind}`.

mod common;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use rcgen::{CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair};
use serde_json::Value;

fn is_upstream_failed(v: &Value) -> bool {
    v["message"] == "upstream failed"
}

/// `n` clients at once, each sending a request and expecting the proxy to close on it
/// without relaying anything.
fn clients_refused(addr: SocketAddr, n: usize) {
    let threads: Vec<_> = (0..n)
        .map(|_| {
            std::thread::spawn(move || {
                let mut c = connect(addr);
                let _ = std::io::Write::write_all(
                    &mut c,
                    b"GET /api/v1/master HTTP/1.1\r\nHost: det-master\r\n\r\n",
                );
                read_until_closed(&mut c, Duration::from_secs(10))
            })
        })
        .collect();
    for t in threads {
        let got = t.join().expect("client thread");
        assert!(got.is_empty(), "relayed to an unverified master: {got:?}");
    }
}

/// The value of one exact sample line of /metrics (`name{labels}`), 0 when absent.
fn metric(admin: SocketAddr, sample: &str) -> f64 {
    let mut s = connect(admin);
    std::io::Write::write_all(
        &mut s,
        b"GET /metrics HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    let body = String::from_utf8(read_until_closed(&mut s, IO_TIMEOUT)).unwrap();
    body.lines()
        .find_map(|l| l.strip_prefix(sample)?.strip_prefix(' '))
        .map(|v| v.trim().parse().expect("sample value"))
        .unwrap_or(0.0)
}

/// `det-tls-proxy check --config <config>`: its `FAILED:` text (without the prefix).
fn check_failure(config: &Path) -> String {
    let mut cmd = command();
    cmd.arg("check").arg("--config").arg(config);
    let out = run_to_exit(cmd, Duration::from_secs(20));
    assert_eq!(out.code(), Some(1), "{out}");
    out.stdout
        .lines()
        .find_map(|l| l.strip_prefix("FAILED: "))
        .unwrap_or_else(|| panic!("no FAILED line:\n{out}"))
        .to_string()
}

#[test]
fn twenty_clients_against_a_wrong_name_master_log_one_line_and_count_twenty() {
    let dir = tempdir();
    let ca = Ca::root("Diagnostics CA");
    // Valid only for the DNS name; the master is addressed by IP and the bundle holds only
    // the CA, so no name is substituted and every handshake fails on the name.
    let leaf = ca.server("det-master", &["det-master"]);
    let server = ServerBuilder::new(vec![leaf.der()], leaf.key_der()).start();
    let ca_pem = certs::write(dir.path(), "ca.pem", &ca.pem());
    let cfg = Cfg::new("127.0.0.1", server.port())
        .master_cert(&ca_pem)
        .extra(ADMIN);
    let config = cfg.write(dir.path());
    let proxy = Proxy::start(&config);

    clients_refused(proxy.tcp_addr("main"), 20);
    proxy.wait_for_nth(
        "upstream_error access line",
        20,
        Duration::from_secs(15),
        |v| proxy::is_access(v) && v["outcome"] == "upstream_error",
    );

    let admin = proxy.tcp_addr("admin");
    assert_eq!(
        metric(
            admin,
            r#"det_tls_proxy_upstream_errors_total{kind="cert_name"}"#
        ),
        20.0
    );
    assert_eq!(
        metric(
            admin,
            r#"det_tls_proxy_connections_total{listener="main",result="upstream_error"}"#
        ),
        20.0
    );

    let warns: Vec<Value> = proxy
        .json_lines()
        .into_iter()
        .filter(is_upstream_failed)
        .collect();
    assert_eq!(
        warns.len(),
        1,
        "expected one line for one cause, got {}:\n{warns:#?}",
        warns.len()
    );
    let w = &warns[0];
    assert_eq!(w["level"], "WARN", "{w}");
    assert_eq!(w["kind"], "cert_name", "{w}");
    let error = field(w, "error");
    assert!(
        error.contains("set security.tls.master_cert_name: det-master"),
        "the log does not say which key to set: {w}"
    );
    // The same words as `check` for the same master.
    assert_eq!(
        error,
        check_failure(&config),
        "run and check word it differently"
    );
}

// === A master whose certificate changes between connections ===

/// A TLS server that only handshakes (every handshake here is expected to fail on the
/// proxy's side), presenting whatever certificate is current.
struct Switching {
    port: u16,
    current: CurrentCert,
}

impl Switching {
    fn start(leaf: &Leaf) -> Switching {
        let current = CurrentCert::new("", leaf);
        let config = current.server_config();
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for tcp in l.incoming().flatten() {
                let config = config.clone();
                std::thread::spawn(move || handshake_only(tcp, config));
            }
        });
        Switching { port, current }
    }

    fn switch(&self, leaf: &Leaf) {
        self.current.set("", leaf);
    }
}

fn handshake_only(mut tcp: TcpStream, config: Arc<rustls::ServerConfig>) {
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut conn = rustls::ServerConnection::new(config).unwrap();
    while conn.is_handshaking() {
        if conn.complete_io(&mut tcp).is_err() {
            return;
        }
    }
}

#[test]
fn each_distinct_cause_is_logged_once_in_checks_words() {
    let dir = tempdir();
    let ca = Ca::root("Causes CA");
    let wrong_name = ca.server("det-master", &["det-master"]);
    let expired = leaf_valid(
        &ca,
        &["det-master", "127.0.0.1"],
        (2019, 1, 1),
        (2021, 1, 1),
    );
    let stranger = Ca::root("Stranger CA").server("det-master", &["det-master", "127.0.0.1"]);
    let master = Switching::start(&wrong_name);
    let ca_pem = certs::write(dir.path(), "ca.pem", &ca.pem());
    let config = Cfg::new("127.0.0.1", master.port)
        .master_cert(&ca_pem)
        .extra(ADMIN)
        .write(dir.path());
    let proxy = Proxy::start(&config);
    let (main, admin) = (proxy.tcp_addr("main"), proxy.tcp_addr("admin"));

    let mut expected = Vec::new();
    for (i, (leaf, kind, words)) in [
        (
            &wrong_name,
            "cert_name",
            "set security.tls.master_cert_name: det-master",
        ),
        (&expired, "cert_expired", "expired"),
        (&stranger, "cert_unknown_issuer", "det-tls-proxy trust"),
    ]
    .into_iter()
    .enumerate()
    {
        master.switch(leaf);
        clients_refused(main, 8);
        proxy.wait_for_nth(
            "upstream_error access line",
            8 * (i + 1),
            Duration::from_secs(15),
            |v| proxy::is_access(v) && v["outcome"] == "upstream_error",
        );
        assert_eq!(
            metric(
                admin,
                &format!(r#"det_tls_proxy_upstream_errors_total{{kind="{kind}"}}"#)
            ),
            8.0,
            "{kind}"
        );
        let text = check_failure(&config);
        assert!(text.contains(words), "check for {kind}: {text}");
        expected.push((kind, text));
    }

    let warns: Vec<Value> = proxy
        .json_lines()
        .into_iter()
        .filter(is_upstream_failed)
        .collect();
    let got: Vec<(&str, String)> = warns
        .iter()
        .map(|w| (field(w, "kind"), field(w, "error").to_string()))
        .collect();
    assert_eq!(
        got, expected,
        "one line per cause, worded as check words it"
    );
}

#[test]
fn a_master_certificate_expiring_within_two_weeks_is_warned_about_once() {
    let dir = tempdir();
    let ca = Ca::root("Expiring CA");
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
    p.distinguished_name.push(DnType::CommonName, "det-master");
    p.is_ca = IsCa::ExplicitNoCa;
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    let epoch = rcgen::date_time_ymd(1970, 1, 1);
    p.not_before = epoch + (now - Duration::from_secs(86_400));
    p.not_after = epoch + (now + Duration::from_secs(5 * 86_400 + 3_600));
    let leaf = Leaf {
        cert: p.signed_by(&key, &ca.cert, &ca.key).unwrap(),
        key,
    };
    let server = ServerBuilder::new(vec![leaf.der()], leaf.key_der()).start();
    let ca_pem = certs::write(dir.path(), "ca.pem", &ca.pem());
    let config = Cfg::new("127.0.0.1", server.port())
        .master_cert(&ca_pem)
        .write(dir.path());
    let proxy = Proxy::start(&config);
    let main = proxy.tcp_addr("main");
    for i in 1..=3 {
        let mut c = connect(main);
        assert_eq!(roundtrip(&mut c, b"ping"), b"ping");
        finish(&mut c);
        proxy.nth_access_line("main", i);
    }
    let warns: Vec<Value> = proxy
        .json_lines()
        .into_iter()
        .filter(|v| v["level"] == "WARN" && field(v, "message").contains("expires"))
        .collect();
    assert_eq!(warns.len(), 1, "{warns:#?}");
    assert_eq!(warns[0]["days_left"], 5, "{}", warns[0]);

    // check says so too, and still succeeds.
    let mut cmd = command();
    cmd.arg("check").arg("--config").arg(&config);
    let out = run_to_exit(cmd, Duration::from_secs(20));
    assert_eq!(out.code(), Some(0), "{out}");
    assert!(
        out.stdout
            .lines()
            .any(|l| l.starts_with("WARNING:") && l.contains("expires in 5 days")),
        "{out}"
    );
}
