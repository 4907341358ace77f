//! What the proxy sends to the master, and when: a client that leaves before saying anything
//! is never dialled for, a client that speaks TLS itself is passed through end to end (and
//! with tls_passthrough off its bytes are wrapped like any others), and with TLS disabled
//! plain TCP is forwarded. A dial that fails (refused, timeouts.connect, timeouts.handshake,
//! garbage) is tests/faults.rs.

mod common;

use std::io::{Read, Write};
use std::sync::Arc;

use common::server::{provider, PlainEcho};
use common::*;
use rustls::pki_types::ServerName;

fn assert_never_dialled(listener_yaml: &str) {
    let dir = tempdir();
    let master = Master::start(dir.path(), Behavior::Echo);
    let proxy = master.cfg().listeners(&[listener_yaml]).start(dir.path());
    let c = connect(proxy.tcp_addr("main"));
    let local = c.local_addr().unwrap();
    drop(c);
    let access = proxy.access_line(local);
    assert_eq!(access["outcome"], "client_closed_early", "{access}");
    assert_eq!(access["master"], "", "{access}");
    // The access line is written when the connection is over: any dial came before it.
    assert_eq!(
        master.server.state().tcp_accepts,
        0,
        "the master was dialled for a client that sent nothing"
    );
}

#[test]
fn client_closing_before_sending_is_never_dialled() {
    assert_never_dialled(r#"{name: main, listen: "127.0.0.1:0"}"#);
}

#[test]
fn client_closing_before_sending_is_never_dialled_with_alpn_none() {
    assert_never_dialled(r#"{name: main, listen: "127.0.0.1:0", alpn: none}"#);
}

#[test]
fn tls_passthrough_client_speaking_tls_reaches_master_end_to_end() {
    let dir = tempdir();
    let ca = Ca::root("Passthrough CA");
    let leaf = ca.server("det-master", &["det-master", "127.0.0.1", "task.example"]);
    let ca_pem = certs::write(dir.path(), "ca.pem", &ca.pem());
    let server = ServerBuilder::new(vec![leaf.der()], leaf.key_der())
        .alpn(&["x-task-alpn", "http/1.1"])
        .start();
    let proxy = Cfg::new("127.0.0.1", server.port())
        .master_cert(&ca_pem)
        .tls("master_cert_name", "det-master")
        .start(dir.path());

    // The task builds https://<proxy>/ itself and verifies the master with its own name.
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.der()).unwrap();
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"x-task-alpn".to_vec()];
    let name = ServerName::try_from("task.example".to_string()).unwrap();
    let conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let tcp = connect(proxy.tcp_addr("main"));
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    tls.write_all(b"end to end\n").unwrap();
    let mut back = [0u8; 11];
    tls.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"end to end\n");
    assert_eq!(
        tls.conn.alpn_protocol(),
        Some(&b"x-task-alpn"[..]),
        "the client's own handshake must reach the master"
    );

    let hs = server.handshake(1);
    assert_eq!(
        hs.sni.as_deref(),
        Some("task.example"),
        "the client's SNI, not the proxy's"
    );
    assert_eq!(hs.alpn.as_deref(), Some("x-task-alpn"));
    tls.conn.send_close_notify();
    let _ = tls.flush();
    assert_eq!(
        server.state().handshakes.len(),
        1,
        "only one handshake: no second layer"
    );
}

#[test]
fn tls_passthrough_off_wraps_client_bytes() {
    let dir = tempdir();
    let master = Master::start(dir.path(), Behavior::Echo);
    let proxy = master
        .cfg()
        .tls("master_cert_name", "det-master")
        .listeners(&[r#"{name: main, listen: "127.0.0.1:0", tls_passthrough: off}"#])
        .start(dir.path());
    let mut c = connect(proxy.tcp_addr("main"));
    // Looks like the start of a TLS record; with passthrough off it is just payload.
    let bytes = b"\x16\x03\x01\x00\x05hello";
    assert_eq!(roundtrip(&mut c, bytes), bytes);
    assert_eq!(
        master.server.handshake(1).sni.as_deref(),
        Some("det-master")
    );
    finish(&mut c);
}

#[test]
fn tls_disabled_forwards_plain_tcp_and_warns_at_start() {
    let dir = tempdir();
    let plain = PlainEcho::new();
    let proxy = Cfg::new("127.0.0.1", plain.addr.port())
        .tls("enabled", "false")
        .start(dir.path());
    assert!(
        proxy.find(|v| v["level"] == "WARN").is_some(),
        "no warning at start about plain forwarding; stderr:\n{}",
        proxy.stderr()
    );
    let mut c = connect(proxy.tcp_addr("main"));
    let local = c.local_addr().unwrap();
    assert_eq!(roundtrip(&mut c, b"in the clear"), b"in the clear");
    finish(&mut c);
    let access = proxy.access_line(local);
    assert_eq!(access["tls_version"], "", "{access}");
    assert_eq!(access["outcome"], "ok", "{access}");
}
