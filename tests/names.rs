//! Which name the proxy sends as SNI and verifies in the master's certificate
//! (docs/interface.md), and what it says when verification fails.

mod common;

use std::io::Write;
use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use serde_json::Value;

/// A client whose master cannot be verified: it gets no bytes and is closed promptly.
/// Returns the proxy's "upstream failed" line.
fn assert_refused(proxy: &Proxy, addr: SocketAddr) -> Value {
    let mut c = connect(addr);
    let local = c.local_addr().unwrap();
    let _ = c.write_all(b"GET / HTTP/1.1\r\nHost: det-master\r\n\r\n");
    let got = read_until_closed(&mut c, Duration::from_secs(5));
    assert!(got.is_empty(), "refused connection relayed bytes: {got:?}");
    let access = proxy.access_line(local);
    assert_eq!(access["outcome"], "upstream_error", "access line: {access}");
    proxy.wait_for(
        "an \"upstream failed\" warning",
        Duration::from_secs(5),
        |v| v["message"] == "upstream failed" && v["level"] == "WARN",
    )
}

fn error_text(warn: &Value) -> String {
    warn["error"]
        .as_str()
        .unwrap_or_else(|| panic!("\"upstream failed\" line has no error field: {warn}"))
        .to_string()
}

#[test]
fn override_name_is_sni_and_verified_name_for_dns_host() {
    let dir = tempdir();
    let ca = Ca::root("Override Test CA");
    let leaf = ca.server("det-master", &["det-master"]);
    let ca_pem = certs::write(dir.path(), "ca.pem", &ca.pem());
    let server = ServerBuilder::new(vec![leaf.der()], leaf.key_der()).start();
    // master_host is a DNS name the certificate does not hold: the override wins.
    let proxy = Cfg::new("localhost", server.port())
        .master_cert(&ca_pem)
        .tls("master_cert_name", "det-master")
        .start(dir.path());
    let client = relays(proxy.tcp_addr("main"), b"hello master\n");
    assert_eq!(server.handshake(1).sni.as_deref(), Some("det-master"));
    assert_eq!(proxy.access_line(client)["sni"], "det-master");
}

#[test]
fn override_name_is_sni_and_verified_name_for_ip_host() {
    let dir = tempdir();
    let ca = Ca::root("Override IP Test CA");
    let leaf = ca.server("det-master", &["det-master"]);
    let ca_pem = certs::write(dir.path(), "ca.pem", &ca.pem());
    let server = ServerBuilder::new(vec![leaf.der()], leaf.key_der()).start();
    let proxy = Cfg::new("127.0.0.1", server.port())
        .master_cert(&ca_pem)
        .tls("master_cert_name", "det-master")
        .start(dir.path());
    let client = relays(proxy.tcp_addr("main"), b"hello master\n");
    assert_eq!(server.handshake(1).sni.as_deref(), Some("det-master"));
    let access = proxy.access_line(client);
    assert_eq!(access["sni"], "det-master");
    assert_eq!(
        access["master"],
        format!("127.0.0.1:{}", server.port()).as_str()
    );
}

#[test]
fn dns_host_is_sni_and_verified_name() {
    let dir = tempdir();
    let ca = Ca::root("DNS Host Test CA");
    let leaf = ca.server("localhost", &["localhost"]);
    let ca_pem = certs::write(dir.path(), "ca.pem", &ca.pem());
    let server = ServerBuilder::new(vec![leaf.der()], leaf.key_der()).start();
    let proxy = Cfg::new("localhost", server.port())
        .master_cert(&ca_pem)
        .start(dir.path());
    let client = relays(proxy.tcp_addr("main"), b"hello master\n");
    assert_eq!(server.handshake(1).sni.as_deref(), Some("localhost"));
    assert_eq!(proxy.access_line(client)["sni"], "localhost");
}

#[test]
fn ip_host_verified_against_ip_san_without_sni() {
    let dir = tempdir();
    let ca = Ca::root("IP SAN Test CA");
    let leaf = ca.server("det-master", &["127.0.0.1"]);
    // master_cert holds only the CA, so there is no end-entity name to substitute.
    let ca_pem = certs::write(dir.path(), "ca.pem", &ca.pem());
    let server = ServerBuilder::new(vec![leaf.der()], leaf.key_der()).start();
    let proxy = Cfg::new("127.0.0.1", server.port())
        .master_cert(&ca_pem)
        .start(dir.path());
    let client = relays(proxy.tcp_addr("main"), b"hello master\n");
    assert_eq!(
        server.handshake(1).sni,
        None,
        "an IP literal must never be sent as SNI (RFC 6066)"
    );
    assert_eq!(proxy.access_line(client)["sni"], "");
}

fn assert_substitution_logged(proxy: &Proxy, name: &str) {
    let line = proxy.wait_for("the name-substitution line", Duration::from_secs(5), |v| {
        field(v, "message").to_lowercase().contains("substitut")
    });
    assert_eq!(line["level"], "INFO", "substitution line: {line}");
    assert!(
        line.to_string().contains(name),
        "substitution line does not name {name}: {line}"
    );
    let count = proxy
        .json_lines()
        .iter()
        .filter(|v| field(v, "message").to_lowercase().contains("substitut"))
        .count();
    assert_eq!(count, 1, "substitution must be logged once, at start");
}

#[test]
fn ip_host_with_dns_only_self_signed_cert_substitutes_first_dns_name() {
    let dir = tempdir();
    // Determined's documented setup: a self-signed master certificate valid only for
    // a DNS name, the master reached by IP.
    let leaf = Leaf::self_signed("det-master", &["det-master.example", "second.example"]);
    let cert_pem = certs::write(dir.path(), "master.crt", &leaf.pem());
    let server = ServerBuilder::new(vec![leaf.der()], leaf.key_der()).start();
    let proxy = Cfg::new("127.0.0.1", server.port())
        .master_cert(&cert_pem)
        .start(dir.path());
    assert_substitution_logged(&proxy, "det-master.example");
    let client = relays(proxy.tcp_addr("main"), b"hello master\n");
    assert_eq!(
        server.handshake(1).sni.as_deref(),
        Some("det-master.example")
    );
    assert_eq!(proxy.access_line(client)["sni"], "det-master.example");
    // A second connection uses the same name (substitution is not re-logged).
    relays(proxy.tcp_addr("main"), b"hello master\n");
    assert_eq!(
        server.handshake(2).sni.as_deref(),
        Some("det-master.example")
    );
    assert_substitution_logged(&proxy, "det-master.example");
}

#[test]
fn ip_host_with_leaf_and_ca_bundle_substitutes_leaf_dns_name() {
    let dir = tempdir();
    let ca = Ca::root("Bundle Substitution CA");
    let leaf = ca.server("det-master", &["det-master.example"]);
    let bundle = certs::write(
        dir.path(),
        "master.crt",
        &certs::bundle(&[leaf.pem(), ca.pem()]),
    );
    let server = ServerBuilder::new(vec![leaf.der()], leaf.key_der()).start();
    let proxy = Cfg::new("127.0.0.1", server.port())
        .master_cert(&bundle)
        .start(dir.path());
    assert_substitution_logged(&proxy, "det-master.example");
    relays(proxy.tcp_addr("main"), b"hello master\n");
    assert_eq!(
        server.handshake(1).sni.as_deref(),
        Some("det-master.example")
    );
}

#[test]
fn wrong_name_refused_with_certificate_names_issuer_validity_and_key_in_log() {
    let dir = tempdir();
    let ca = Ca::root("Wrong Name Test CA");
    let leaf = ca.server("det-master", &["det-master.example", "10.9.8.7"]);
    let ca_pem = certs::write(dir.path(), "ca.pem", &ca.pem());
    let server = ServerBuilder::new(vec![leaf.der()], leaf.key_der()).start();
    // 127.0.0.1 is not among the certificate's IPs, and master_cert holds no
    // end-entity certificate to take a name from.
    let proxy = Cfg::new("127.0.0.1", server.port())
        .master_cert(&ca_pem)
        .start(dir.path());
    let warn = assert_refused(&proxy, proxy.tcp_addr("main"));
    let err = error_text(&warn);
    for needle in [
        "det-master.example",
        "10.9.8.7",
        "Wrong Name Test CA",
        &certs::NOT_AFTER_YEAR.to_string(),
        "security.tls.master_cert_name",
    ] {
        assert!(
            err.contains(needle),
            "error does not mention {needle:?}: {err}"
        );
    }
    assert!(
        server.state().handshakes.is_empty(),
        "the master must never see a completed handshake"
    );
}

#[test]
fn wrong_override_name_refused() {
    let dir = tempdir();
    let ca = Ca::root("Wrong Override Test CA");
    let leaf = ca.server("det-master", &["det-master.example"]);
    let ca_pem = certs::write(dir.path(), "ca.pem", &ca.pem());
    let server = ServerBuilder::new(vec![leaf.der()], leaf.key_der()).start();
    let proxy = Cfg::new("127.0.0.1", server.port())
        .master_cert(&ca_pem)
        .tls("master_cert_name", "not-the-master.example")
        .start(dir.path());
    let warn = assert_refused(&proxy, proxy.tcp_addr("main"));
    let err = error_text(&warn);
    assert!(err.contains("det-master.example"), "error: {err}");
    assert!(
        err.contains("security.tls.master_cert_name"),
        "error: {err}"
    );
    // The master saw the proxy give up on the handshake.
    server.handshake_error(1);
    assert!(server.state().handshakes.is_empty());
}

#[test]
fn unknown_ca_refused() {
    let dir = tempdir();
    let issuer = Ca::root("Unknown Issuer Test CA");
    let trusted = Ca::root("Trusted But Unrelated CA");
    let leaf = issuer.server("det-master", &["det-master", "127.0.0.1"]);
    let trusted_pem = certs::write(dir.path(), "ca.pem", &trusted.pem());
    let server = ServerBuilder::new(vec![leaf.der()], leaf.key_der()).start();
    let proxy = Cfg::new("127.0.0.1", server.port())
        .master_cert(&trusted_pem)
        .start(dir.path());
    let warn = assert_refused(&proxy, proxy.tcp_addr("main"));
    let err = error_text(&warn);
    assert!(
        err.contains("Unknown Issuer Test CA"),
        "error does not name the certificate's issuer: {err}"
    );
    assert!(server.state().handshakes.is_empty());
}

#[test]
fn private_ca_refused_without_master_cert() {
    let dir = tempdir();
    let ca = Ca::root("Not In System Roots CA");
    let leaf = ca.server("localhost", &["localhost"]);
    let server = ServerBuilder::new(vec![leaf.der()], leaf.key_der()).start();
    // No master_cert: the system roots apply, and they do not hold a test CA.
    let proxy = Cfg::new("localhost", server.port()).start(dir.path());
    assert_refused(&proxy, proxy.tcp_addr("main"));
    assert!(server.state().handshakes.is_empty());
}

#[test]
fn skip_verify_accepts_unverifiable_master_and_warns_at_start() {
    let dir = tempdir();
    let ca = Ca::root("Skip Verify Test CA");
    let leaf = ca.server("nothing-to-see", &["nothing-to-see.example"]);
    let server = ServerBuilder::new(vec![leaf.der()], leaf.key_der()).start();
    let proxy = Cfg::new("127.0.0.1", server.port())
        .tls("skip_verify", "true")
        .start(dir.path());
    let warn = proxy
        .json_lines()
        .into_iter()
        .find(|v| v["level"] == "WARN" && v.to_string().contains("skip_verify"));
    assert!(
        warn.is_some(),
        "no WARN line mentioning skip_verify before ready; stderr:\n{}",
        proxy.stderr()
    );
    // With log.format json, start-up warnings are JSON too.
    for line in proxy.lines() {
        assert!(
            serde_json::from_str::<Value>(&line).is_ok_and(|v| v.is_object()),
            "not a JSON line: {line}"
        );
    }
    relays(proxy.tcp_addr("main"), b"hello master\n");
    // Still TLS: the master completed a handshake.
    assert!(server.handshake(1).version.contains("TLS"));
}
