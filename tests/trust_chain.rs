//! What the proxy trusts and presents: every certificate of a master_cert bundle,
//! full chains, mutual TLS, which listeners present the client certificate, TLS 1.2,
//! session resumption.

mod common;

use std::io::Write;
use std::time::Duration;

use common::*;

/// Root → intermediate → leaf for `det-master`; the server sends leaf + intermediate.
struct Chain {
    root: Ca,
    server: TlsServer,
}

fn chain_server() -> Chain {
    let root = Ca::root("Chain Test Root CA");
    let inter = root.intermediate("Chain Test Intermediate CA");
    let leaf = inter.server("det-master", &["det-master"]);
    let server = ServerBuilder::new(vec![leaf.der(), inter.der()], leaf.key_der()).start();
    Chain { root, server }
}

#[test]
fn full_chain_bundle_leaf_intermediate_root() {
    let dir = tempdir();
    let root = Ca::root("Full Chain Root CA");
    let inter = root.intermediate("Full Chain Intermediate CA");
    let leaf = inter.server("det-master", &["det-master"]);
    let server = ServerBuilder::new(vec![leaf.der(), inter.der()], leaf.key_der()).start();
    // The bundle as `trust` writes it and as operators paste it: leaf first.
    // Trusting only the first certificate (the leaf) would fail: webpki needs an
    // anchor that issued the leaf.
    let bundle = certs::write(
        dir.path(),
        "master.crt",
        &certs::bundle(&[leaf.pem(), inter.pem(), root.pem()]),
    );
    let proxy = Cfg::new("127.0.0.1", server.port())
        .master_cert(&bundle)
        .tls("master_cert_name", "det-master")
        .start(dir.path());
    relays(proxy.tcp_addr("main"), b"ping\n");
    assert_eq!(server.handshake(1).sni.as_deref(), Some("det-master"));
}

#[test]
fn bundle_whose_root_is_not_the_first_certificate() {
    let dir = tempdir();
    let chain = chain_server();
    let other1 = Ca::root("Unrelated CA One");
    let other2 = Ca::root("Unrelated CA Two");
    let bundle = certs::write(
        dir.path(),
        "master.crt",
        &certs::bundle(&[other1.pem(), other2.pem(), chain.root.pem()]),
    );
    let proxy = Cfg::new("127.0.0.1", chain.server.port())
        .master_cert(&bundle)
        .tls("master_cert_name", "det-master")
        .start(dir.path());
    relays(proxy.tcp_addr("main"), b"ping\n");
}

#[test]
fn root_only_bundle_verifies_served_intermediate() {
    let dir = tempdir();
    let chain = chain_server();
    let bundle = certs::write(dir.path(), "root.pem", &chain.root.pem());
    let proxy = Cfg::new("127.0.0.1", chain.server.port())
        .master_cert(&bundle)
        .tls("master_cert_name", "det-master")
        .start(dir.path());
    relays(proxy.tcp_addr("main"), b"ping\n");
}

struct Mtls {
    dir: tempfile::TempDir,
    master: Master,
    client_cert: std::path::PathBuf,
    client_key: std::path::PathBuf,
}

fn mtls(required: bool) -> Mtls {
    let dir = tempdir();
    let client_ca = Ca::root("Agent Client CA");
    let agent = client_ca.client("det-agent");
    let client_cert = certs::write(dir.path(), "agent.crt", &agent.pem());
    let client_key = certs::write(dir.path(), "agent.key", &agent.key_pem());
    let auth = if required {
        ClientAuth::Required(client_ca.der())
    } else {
        ClientAuth::Optional(client_ca.der())
    };
    let master = Master::start_with(dir.path(), |b| b.client_auth(auth));
    Mtls {
        dir,
        master,
        client_cert,
        client_key,
    }
}

#[test]
fn mutual_tls_required_by_master() {
    let m = mtls(true);
    let proxy = m
        .master
        .cfg()
        .tls("client_cert", qp(&m.client_cert))
        .tls("client_key", qp(&m.client_key))
        .start(m.dir.path());
    relays(proxy.tcp_addr("main"), b"ping\n");
    assert!(m.master.server.handshake(1).client_cert);
}

#[test]
fn mutual_tls_required_and_no_client_cert_configured_fails() {
    let m = mtls(true);
    let proxy = m.master.cfg().start(m.dir.path());
    let mut c = connect(proxy.tcp_addr("main"));
    let _ = c.write_all(b"ping\n");
    let got = read_until_closed(&mut c, Duration::from_secs(5));
    assert!(
        got.is_empty(),
        "relayed without a client certificate: {got:?}"
    );
    m.master.server.handshake_error(1);
    assert!(m.master.server.state().handshakes.is_empty());
}

#[test]
fn client_cert_presented_on_loopback_listener_not_on_bridge_listener() {
    let m = mtls(false);
    let proxy = m
        .master
        .cfg()
        .tls("client_cert", qp(&m.client_cert))
        .tls("client_key", qp(&m.client_key))
        .listeners(&[
            r#"{name: agent, listen: "127.0.0.1:0"}"#,
            r#"{name: bridge, listen: "0.0.0.0:0", allowed_clients: ["127.0.0.0/8"]}"#,
        ])
        .start(m.dir.path());
    let server = &m.master.server;

    relays(proxy.tcp_addr("agent"), b"ping\n");
    assert!(
        server.handshake(1).client_cert,
        "agent listener: no client cert"
    );

    // After the agent's session exists: a bridge client must neither present the
    // certificate nor resume a session that was authenticated with it.
    relays(proxy.tcp_addr("bridge"), b"ping\n");
    let hs = server.handshake(2);
    assert!(
        !hs.client_cert,
        "bridge listener borrowed the agent's identity: {hs:?}"
    );

    relays(proxy.tcp_addr("agent"), b"ping\n");
    assert!(
        server.handshake(3).client_cert,
        "agent listener, second time"
    );

    relays(proxy.tcp_addr("bridge"), b"ping\n");
    let hs = server.handshake(4);
    assert!(!hs.client_cert, "bridge listener, second time: {hs:?}");
}

#[test]
fn present_client_cert_overrides_listener_default() {
    let m = mtls(false);
    let proxy = m
        .master
        .cfg()
        .tls("client_cert", qp(&m.client_cert))
        .tls("client_key", qp(&m.client_key))
        .listeners(&[
            r#"{name: quiet, listen: "127.0.0.1:0", present_client_cert: false}"#,
            r#"{name: loud, listen: "0.0.0.0:0", allowed_clients: ["127.0.0.0/8"], present_client_cert: true}"#,
        ])
        .start(m.dir.path());
    let server = &m.master.server;
    relays(proxy.tcp_addr("quiet"), b"ping\n");
    assert!(
        !server.handshake(1).client_cert,
        "present_client_cert: false ignored"
    );
    relays(proxy.tcp_addr("loud"), b"ping\n");
    assert!(
        server.handshake(2).client_cert,
        "present_client_cert: true ignored"
    );
}

#[test]
fn tls12_only_master_works() {
    let dir = tempdir();
    let master = Master::start_with(dir.path(), |b| b.tls12_only());
    let proxy = master.cfg().start(dir.path());
    let client = relays(proxy.tcp_addr("main"), b"ping\n");
    assert_eq!(master.server.handshake(1).version, "Some(TLSv1_2)");
    assert_eq!(proxy.access_line(client)["tls_version"], "TLSv1.2");
}

#[test]
fn tls13_only_master_works() {
    let dir = tempdir();
    let master = Master::start_with(dir.path(), |b| b.tls13_only());
    let proxy = master.cfg().start(dir.path());
    let client = relays(proxy.tcp_addr("main"), b"ping\n");
    assert_eq!(master.server.handshake(1).version, "Some(TLSv1_3)");
    assert_eq!(proxy.access_line(client)["tls_version"], "TLSv1.3");
}

#[test]
fn second_connection_resumes_session() {
    let dir = tempdir();
    let master = Master::start(dir.path(), Behavior::Echo);
    let proxy = master.cfg().start(dir.path());
    let first = relays(proxy.tcp_addr("main"), b"ping\n");
    assert_eq!(proxy.access_line(first)["resumed"], false);
    let second = relays(proxy.tcp_addr("main"), b"ping\n");
    assert_eq!(proxy.access_line(second)["resumed"], true);
    assert!(master.server.handshake(2).resumed);
}

#[test]
fn tls12_second_connection_resumes_session() {
    let dir = tempdir();
    let master = Master::start_with(dir.path(), |b| b.tls12_only());
    let proxy = master.cfg().start(dir.path());
    relays(proxy.tcp_addr("main"), b"ping\n");
    let second = relays(proxy.tcp_addr("main"), b"ping\n");
    assert_eq!(proxy.access_line(second)["resumed"], true);
    assert!(master.server.handshake(2).resumed);
}

#[test]
fn session_cache_shared_by_listeners() {
    let dir = tempdir();
    let master = Master::start(dir.path(), Behavior::Echo);
    let proxy = master
        .cfg()
        .listeners(&[
            r#"{name: one, listen: "127.0.0.1:0"}"#,
            r#"{name: two, listen: "127.0.0.1:0"}"#,
        ])
        .start(dir.path());
    relays(proxy.tcp_addr("one"), b"ping\n");
    let second = relays(proxy.tcp_addr("two"), b"ping\n");
    assert_eq!(proxy.access_line(second)["resumed"], true);
    assert!(master.server.handshake(2).resumed);
}

#[test]
fn session_cache_shared_by_alpn_choices() {
    let dir = tempdir();
    let master = Master::start_with(dir.path(), |b| b.alpn(&["h2", "http/1.1"]));
    let proxy = master.cfg().start(dir.path());
    // First an HTTP/1.1 client (offered http/1.1), then an HTTP/2 one (offered h2).
    let mut c = connect(proxy.tcp_addr("main"));
    let req = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
    assert_eq!(roundtrip(&mut c, req), req);
    finish(&mut c);
    let mut c = connect(proxy.tcp_addr("main"));
    let second = c.local_addr().unwrap();
    let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    assert_eq!(roundtrip(&mut c, preface), preface);
    finish(&mut c);
    assert_eq!(master.server.handshake(2).alpn.as_deref(), Some("h2"));
    let access = proxy.access_line(second);
    assert_eq!(access["resumed"], true, "{access}");
}

#[test]
fn post_quantum_hybrid_offered_by_default() {
    let dir = tempdir();
    let master = Master::start_with(dir.path(), |b| b.tls13_only());
    let proxy = master.cfg().start(dir.path());
    relays(proxy.tcp_addr("main"), b"ping\n");
    assert_eq!(master.server.handshake(1).kx, "X25519MLKEM768");
}

#[test]
fn post_quantum_false_uses_classic_groups_only() {
    let dir = tempdir();
    let master = Master::start_with(dir.path(), |b| b.tls13_only());
    let proxy = master
        .cfg()
        .extra("tls: {post_quantum: false}")
        .start(dir.path());
    relays(proxy.tcp_addr("main"), b"ping\n");
    let kx = master.server.handshake(1).kx;
    assert!(
        !kx.contains("MLKEM"),
        "post_quantum: false still negotiated {kx}"
    );
}
