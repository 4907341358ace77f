//! `det-tls-proxy check`: one dial through the data path's code, a readable report (or JSON),
//! exit 0 when the connection was made as configured, and on failure exactly one `FAILED:`
//! line in the words an operator searches for.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::proxy::Exited;
use common::*;
use rcgen::{CertificateParams, DnType, IsCa, KeyPair};
use serde_json::Value;

fn run(cmd: Command) -> Exited {
    run_to_exit(cmd, CHECK_TIMEOUT)
}

/// The single `FAILED:` line of a failed check; panics unless it exited 1 with exactly one.
fn failed_line(out: &Exited) -> String {
    assert_eq!(
        out.code(),
        Some(1),
        "check should fail with status 1:\n{out}"
    );
    let failed: Vec<&str> = out
        .stdout
        .lines()
        .filter(|l| l.starts_with("FAILED:"))
        .collect();
    assert_eq!(failed.len(), 1, "expected exactly one FAILED: line:\n{out}");
    assert!(
        !out.stdout.lines().any(|l| l.starts_with("OK")),
        "a failed check also says OK:\n{out}"
    );
    failed[0].to_string()
}

/// The first stdout line starting with `prefix` (after trimming leading spaces).
fn line<'a>(out: &'a Exited, prefix: &str) -> &'a str {
    out.stdout
        .lines()
        .find(|l| l.trim_start().starts_with(prefix))
        .unwrap_or_else(|| panic!("no line starting with {prefix:?}:\n{out}"))
}

/// A server for `leaf` (sent alone), and a config that trusts `trusted` for it at 127.0.0.1.
fn server_and_config(dir: &Path, leaf: &Leaf, trusted: &Ca) -> (TlsServer, std::path::PathBuf) {
    let server = ServerBuilder::new(vec![leaf.der()], leaf.key_der()).start();
    let ca_pem = certs::write(dir, "ca.pem", &trusted.pem());
    let cfg = Cfg::new("127.0.0.1", server.port())
        .master_cert(&ca_pem)
        .write(dir);
    (server, cfg)
}

#[test]
fn check_reports_tls13_chain_resumption_and_ok() {
    let dir = tempdir();
    let master = Master::start_with(dir.path(), |b| b.alpn(&["http/1.1"]));
    let out = check(&master.cfg().write(dir.path()));
    assert_eq!(out.code(), Some(0), "check failed:\n{out}");
    let port = master.server.port();

    // The TLS line: version, cipher suite, key exchange and ALPN as the server saw them.
    let hs = master.server.handshake(1);
    assert!(hs.version.contains("TLSv1_3"), "{}", hs.version);
    assert_eq!(
        hs.alpn.as_deref(),
        Some("http/1.1"),
        "check must offer http/1.1"
    );
    let tls = line(&out, "TLS ");
    assert!(tls.contains("TLSv1.3"), "{tls}");
    assert!(
        tls.contains("TLS13_AES") || tls.contains("TLS13_CHACHA"),
        "no cipher suite: {tls}"
    );
    assert!(
        tls.contains(&format!("key exchange {}", hs.kx)),
        "server saw kx {}: {tls}",
        hs.kx
    );
    assert!(tls.contains("ALPN http/1.1"), "{tls}");

    // The address tried and its outcome.
    let addr = line(&out, "address ");
    assert!(
        addr.contains(&format!("127.0.0.1:{port}")) && addr.contains("connected"),
        "{addr}"
    );
    assert!(addr.contains(" ms)"), "no timing: {addr}");

    // The chain: subject, issuer, SANs, validity with days left, fingerprint.
    assert!(line(&out, "[0] subject").contains("CN=det-master"), "{out}");
    assert!(
        line(&out, "issuer").contains("CN=Test Master Root CA"),
        "{out}"
    );
    assert_eq!(
        line(&out, "DNS ").split_whitespace().nth(1),
        Some("det-master")
    );
    assert_eq!(
        line(&out, "IP ").split_whitespace().nth(1),
        Some("127.0.0.1")
    );
    let valid = line(&out, "valid ");
    assert!(
        valid.contains("2020-01-01T00:00:00Z") && valid.contains("2098-12-31T00:00:00Z"),
        "{valid}"
    );
    let not_after = rcgen::date_time_ymd(2098, 12, 31).unix_timestamp();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let days: i64 = valid
        .split('(')
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|d| d.parse().ok())
        .unwrap_or_else(|| panic!("no days left in {valid:?}"));
    assert!(
        (days - (not_after - now) / 86_400).abs() <= 1,
        "days left {days} is wrong: {valid}"
    );
    let fp = line(&out, "SHA-256");
    assert_eq!(
        fp.split_whitespace().nth(1),
        Some(fingerprint(&master.leaf.der()).as_str()),
        "{out}"
    );

    // Resumption on the second dial, as the server saw it too.
    assert!(
        line(&out, "resumption").contains("second dial resumed the session"),
        "{out}"
    );
    assert!(
        master.server.handshake(2).resumed,
        "the server saw no resumption"
    );

    let ok = line(&out, "OK:");
    assert!(ok.contains(&format!("127.0.0.1:{port}")), "{ok}");
    assert!(!out.stdout.contains("FAILED"), "{out}");
}

#[test]
fn check_reports_tls12_against_a_tls12_only_master() {
    let dir = tempdir();
    let master = Master::start_with(dir.path(), |b| b.tls12_only());
    let out = check(&master.cfg().write(dir.path()));
    assert_eq!(out.code(), Some(0), "check failed:\n{out}");
    let tls = line(&out, "TLS ");
    assert!(tls.contains("TLSv1.2") && !tls.contains("TLSv1.3"), "{tls}");
    assert!(tls.contains("TLS_ECDHE_"), "no TLS 1.2 cipher suite: {tls}");
    assert!(master.server.handshake(1).version.contains("TLSv1_2"));
    assert!(line(&out, "OK:").contains("verified"), "{out}");
}

#[test]
fn check_takes_the_agents_flags_without_a_config_file() {
    let dir = tempdir();
    let master = Master::start(dir.path(), Behavior::Echo);
    let mut cmd = command();
    cmd.args(["check", "--master-host", "127.0.0.1", "--master-port"])
        .arg(master.server.port().to_string())
        .arg("--security-tls-master-cert")
        .arg(&master.ca_pem);
    let out = run(cmd);
    assert_eq!(out.code(), Some(0), "check failed:\n{out}");
    assert!(line(&out, "TLS ").contains("TLSv1.3"), "{out}");
    assert!(
        line(&out, "master ").contains("--master-port"),
        "port source not named:\n{out}"
    );
    line(&out, "OK:");

    // Flags after the subcommand or before it: both are global.
    let mut cmd = command();
    cmd.args(["--master-host", "127.0.0.1", "--master-port"])
        .arg(master.server.port().to_string())
        .arg("--security-tls-master-cert")
        .arg(&master.ca_pem)
        .args(["check", "--json"]);
    let out = run(cmd);
    assert_eq!(out.code(), Some(0), "check failed:\n{out}");
}

#[test]
fn check_under_skip_verify_succeeds_but_says_nothing_was_verified() {
    let dir = tempdir();
    // A master no configured root could verify.
    let leaf = Leaf::self_signed("rogue", &["rogue.example"]);
    let server = ServerBuilder::new(vec![leaf.der()], leaf.key_der()).start();
    let cfg = Cfg::new("127.0.0.1", server.port())
        .tls("skip_verify", "true")
        .write(dir.path());
    let out = check(&cfg);
    assert_eq!(out.code(), Some(0), "check failed:\n{out}");
    assert!(
        out.stdout.contains("NOTHING WAS VERIFIED"),
        "no loud line:\n{out}"
    );
    let ok = line(&out, "OK");
    assert!(
        ok.contains("UNVERIFIED") && ok.contains("nothing was verified"),
        "{ok}"
    );
    assert!(!out.stdout.contains("FAILED"), "{out}");

    let out = check_json(&cfg);
    assert_eq!(out.code(), Some(0), "check --json failed:\n{out}");
    let v: Value = serde_json::from_str(&out.stdout).expect("JSON report");
    assert_eq!(v["ok"], true);
    assert_eq!(v["verified"], false, "{v}");
}

#[test]
fn check_expired_certificate() {
    let dir = tempdir();
    let ca = Ca::root("Expiry Test CA");
    let leaf = leaf_valid(
        &ca,
        &["det-master", "127.0.0.1"],
        (2019, 1, 1),
        (2021, 1, 1),
    );
    let (_server, cfg) = server_and_config(dir.path(), &leaf, &ca);
    let out = check(&cfg);
    let failed = failed_line(&out);
    assert!(failed.contains("expired"), "{failed}");
    assert!(
        failed.contains("2021-01-01"),
        "the expiry date is not named: {failed}"
    );
    // The chain that failed is still shown.
    assert!(line(&out, "valid ").contains("EXPIRED"), "{out}");
}

#[test]
fn check_not_yet_valid_certificate() {
    let dir = tempdir();
    let ca = Ca::root("Future Test CA");
    let leaf = leaf_valid(
        &ca,
        &["det-master", "127.0.0.1"],
        (2090, 1, 1),
        (2095, 1, 1),
    );
    let (_server, cfg) = server_and_config(dir.path(), &leaf, &ca);
    let out = check(&cfg);
    let failed = failed_line(&out);
    assert!(failed.contains("not yet valid"), "{failed}");
    assert!(
        failed.contains("2090-01-01"),
        "the start date is not named: {failed}"
    );
}

#[test]
fn check_wrong_name_with_ip_master_says_which_key_to_set() {
    let dir = tempdir();
    let ca = Ca::root("Name Test CA");
    // Only a DNS name; the master is addressed by IP and the bundle holds only the CA, so
    // no name is substituted.
    let leaf = ca.server("det-master", &["det-master"]);
    let (_server, cfg) = server_and_config(dir.path(), &leaf, &ca);
    let out = check(&cfg);
    let failed = failed_line(&out);
    assert!(
        failed.contains("set security.tls.master_cert_name: det-master"),
        "{failed}"
    );
    assert!(
        failed.contains("127.0.0.1"),
        "the name checked is not named: {failed}"
    );
    assert!(line(&out, "[0] subject").contains("CN=det-master"), "{out}");

    // Following the advice works.
    let ca_pem = dir.path().join("ca.pem");
    let mut cmd = command();
    cmd.arg("check")
        .arg("--config")
        .arg(&cfg)
        .args(["--security-tls-master-cert-name", "det-master"])
        .arg("--security-tls-master-cert")
        .arg(&ca_pem);
    let out = run(cmd);
    assert_eq!(
        out.code(),
        Some(0),
        "the suggested fix does not work:\n{out}"
    );
}

#[test]
fn check_unknown_issuer_suggests_trust() {
    let dir = tempdir();
    let real = Ca::root("Real Master CA");
    let other = Ca::root("Some Other CA");
    let leaf = real.server("det-master", &["det-master", "127.0.0.1"]);
    let (_server, cfg) = server_and_config(dir.path(), &leaf, &other);
    let out = check(&cfg);
    let failed = failed_line(&out);
    assert!(failed.contains("unknown issuer"), "{failed}");
    assert!(failed.contains("det-tls-proxy trust"), "{failed}");
    assert!(
        failed.contains("Real Master CA"),
        "the chain's end is not named: {failed}"
    );
}

/// A plain HTTP server: reads what arrives, answers 400 as an HTTP server does to a
/// ClientHello, and closes.
fn plaintext_http_server() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for mut s in l.incoming().flatten() {
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            let _ = s.write_all(
                b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\nContent-Length: 11\r\nConnection: close\r\n\r\nBad Request",
            );
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    });
    addr
}

#[test]
fn check_plaintext_http_on_the_port() {
    let dir = tempdir();
    let addr = plaintext_http_server();
    let ca_pem = certs::write(dir.path(), "ca.pem", &Ca::root("Any CA").pem());
    let cfg = Cfg::new("127.0.0.1", addr.port())
        .master_cert(&ca_pem)
        .write(dir.path());
    let failed = failed_line(&check(&cfg));
    assert!(failed.contains("looks like plaintext HTTP"), "{failed}");
}

#[test]
fn check_nothing_listening() {
    let dir = tempdir();
    let port = common::server::closed_port();
    let ca_pem = certs::write(dir.path(), "ca.pem", &Ca::root("Any CA").pem());
    let cfg = Cfg::new("127.0.0.1", port)
        .master_cert(&ca_pem)
        .write(dir.path());
    let out = check(&cfg);
    let failed = failed_line(&out);
    assert!(failed.contains("connection refused"), "{failed}");
    assert!(failed.contains(&format!("127.0.0.1:{port}")), "{failed}");
    let addr = line(&out, "address ");
    assert!(
        addr.contains("connection refused"),
        "the attempt is not listed: {out}"
    );

    let out = check_json(&cfg);
    assert_eq!(out.code(), Some(1), "{out}");
    let v: Value = serde_json::from_str(&out.stdout).expect("JSON report");
    assert_eq!(v["ok"], false);
    assert!(
        v["error"].as_str().unwrap().contains("connection refused"),
        "{v}"
    );
    assert_eq!(v["attempts"][0]["address"], format!("127.0.0.1:{port}"));
}

#[test]
fn check_dns_failure() {
    let dir = tempdir();
    let ca_pem = certs::write(dir.path(), "ca.pem", &Ca::root("Any CA").pem());
    let cfg = Cfg::new("no-such-host.invalid", 8443)
        .master_cert(&ca_pem)
        .write(dir.path());
    let failed = failed_line(&check(&cfg));
    assert!(failed.contains("no address"), "{failed}");
    assert!(failed.contains("no-such-host.invalid"), "{failed}");
}

#[test]
fn check_json_report() {
    let dir = tempdir();
    let master = Master::start(dir.path(), Behavior::Echo);
    let out = check_json(&master.cfg().write(dir.path()));
    assert_eq!(out.code(), Some(0), "check --json failed:\n{out}");
    let v: Value = serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("stdout is not one JSON document ({e}):\n{out}"));
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["verified"], true, "{v}");
    assert!(v["error"].is_null(), "{v}");
    assert_eq!(v["tls_version"], "TLSv1.3", "{v}");
    assert!(
        v["cipher_suite"].as_str().is_some_and(|s| !s.is_empty()),
        "{v}"
    );
    let chain = v["chain"].as_array().expect("chain array");
    assert_eq!(chain.len(), 1, "{v}");
    assert_eq!(chain[0]["sha256"], fingerprint(&master.leaf.der()), "{v}");
    let attempts = v["attempts"].as_array().expect("attempts array");
    assert_eq!(attempts.len(), 1, "{v}");
    assert_eq!(
        attempts[0]["address"],
        format!("127.0.0.1:{}", master.server.port()),
        "{v}"
    );
    assert_eq!(attempts[0]["outcome"], "connected", "{v}");
    assert_eq!(v["resumed_on_second_dial"], true, "{v}");

    // A failure in JSON: the same words, and status 1.
    let ca = Ca::root("Expiry Test CA");
    let leaf = leaf_valid(&ca, &["127.0.0.1"], (2019, 1, 1), (2021, 1, 1));
    let dir2 = tempdir();
    let (_server, cfg) = server_and_config(dir2.path(), &leaf, &ca);
    let out = check_json(&cfg);
    assert_eq!(out.code(), Some(1), "{out}");
    let v: Value = serde_json::from_str(&out.stdout).expect("JSON report");
    assert_eq!(v["ok"], false);
    assert!(v["error"].as_str().unwrap().contains("expired"), "{v}");
    assert_eq!(v["error_kind"], "cert_expired", "{v}");
    assert_eq!(v["chain"][0]["sha256"], fingerprint(&leaf.der()), "{v}");
}

/// A self-signed master certificate marked `CA:TRUE`, as `openssl req -x509` makes by default
/// (and as Determined operators make theirs), with only a DNS name.
fn ca_marked_self_signed(dir: &Path) -> (TlsServer, std::path::PathBuf) {
    let key = KeyPair::generate().expect("key");
    let mut p = CertificateParams::new(vec!["det-master".to_string()]).unwrap();
    p.distinguished_name.push(DnType::CommonName, "det-master");
    p.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let cert = p.self_signed(&key).expect("self-signed");
    let leaf = Leaf { cert, key };
    let server = ServerBuilder::new(vec![leaf.der()], leaf.key_der()).start();
    let bundle = certs::write(dir, "master.crt", &leaf.pem());
    (server, bundle)
}

/// Trusting that very certificate in master_cert: Go's crypto/x509 (the agent) and OpenSSL
/// (the CLI) accept a trusted certificate as its own anchor whatever its CA flag; `check`
/// (and `run`, same verifier) must too.
#[test]
fn check_accepts_a_trusted_self_signed_certificate_marked_ca() {
    let dir = tempdir();
    let (server, bundle) = ca_marked_self_signed(dir.path());
    let cfg = Cfg::new("127.0.0.1", server.port())
        .master_cert(&bundle)
        .tls("master_cert_name", "det-master")
        .write(dir.path());
    let out = check(&cfg);
    assert_eq!(
        out.code(),
        Some(0),
        "a trusted self-signed CA:TRUE master certificate is refused:\n{out}"
    );
}

/// The name rules: an IP master_host with a master_cert holding a certificate with DNS names
/// verifies the first of them. A self-signed master certificate is that certificate even
/// when openssl marked it CA:TRUE.
#[test]
fn check_substitutes_the_dns_name_of_a_ca_marked_self_signed_master_certificate() {
    let dir = tempdir();
    let (server, bundle) = ca_marked_self_signed(dir.path());
    let cfg = Cfg::new("127.0.0.1", server.port())
        .master_cert(&bundle)
        .write(dir.path());
    let out = check(&cfg);
    let name = line(&out, "name ");
    assert!(
        name.contains("det-master") && name.contains("substituted"),
        "no name substituted from the bundle: {name}\n{out}"
    );
}
