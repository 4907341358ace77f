//! ALPN towards the master: `auto` (HTTP/2 preface → h2, anything else or silence →
//! http/1.1), `none`, an explicit list, and real curl through the proxy.

mod common;

use std::io::Write;
use std::process::Command;
use std::time::Duration;

use common::*;

/// A master that selects h2 or http/1.1, whichever the proxy offers.
fn alpn_master(dir: &std::path::Path) -> Master {
    Master::start_with(dir, |b| b.alpn(&["h2", "http/1.1"]))
}

const H2_START: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";

#[test]
fn auto_alpn_offers_h2_for_http2_preface() {
    let dir = tempdir();
    let master = alpn_master(dir.path());
    let proxy = master.cfg().start(dir.path());
    let mut c = connect(proxy.tcp_addr("main"));
    let local = c.local_addr().unwrap();
    assert_eq!(
        roundtrip(&mut c, H2_START),
        H2_START,
        "the peeked bytes are relayed"
    );
    assert_eq!(master.server.handshake(1).alpn.as_deref(), Some("h2"));
    finish(&mut c);
    assert_eq!(proxy.access_line(local)["alpn"], "h2");
}

#[test]
fn auto_alpn_offers_http11_for_http1_request() {
    let dir = tempdir();
    let master = alpn_master(dir.path());
    let proxy = master.cfg().start(dir.path());
    let mut c = connect(proxy.tcp_addr("main"));
    let local = c.local_addr().unwrap();
    let req = b"GET /agents HTTP/1.1\r\nHost: det-master\r\nUpgrade: websocket\r\n\r\n";
    assert_eq!(roundtrip(&mut c, req), req);
    assert_eq!(master.server.handshake(1).alpn.as_deref(), Some("http/1.1"));
    finish(&mut c);
    assert_eq!(proxy.access_line(local)["alpn"], "http/1.1");
}

#[test]
fn auto_alpn_offers_http11_when_client_is_silent() {
    let dir = tempdir();
    let master = alpn_master(dir.path());
    let proxy = master.cfg().start(dir.path());
    let c = connect(proxy.tcp_addr("main"));
    // After at most 1 s of silence the proxy dials anyway, offering http/1.1.
    let hs = master.server.handshake(1);
    assert_eq!(hs.alpn.as_deref(), Some("http/1.1"));
    drop(c);
}

#[test]
fn auto_alpn_with_h2_preface_split_across_writes() {
    let dir = tempdir();
    let master = alpn_master(dir.path());
    let proxy = master.cfg().start(dir.path());
    let mut c = connect(proxy.tcp_addr("main"));
    // The preface arrives in two segments; the proxy must not decide on the first alone.
    c.write_all(&H2_START[..6]).unwrap();
    // Time is the behaviour here: two TCP segments, not one.
    std::thread::sleep(Duration::from_millis(50));
    c.write_all(&H2_START[6..]).unwrap();
    let mut back = vec![0u8; H2_START.len()];
    std::io::Read::read_exact(&mut c, &mut back).unwrap();
    assert_eq!(back, H2_START);
    assert_eq!(master.server.handshake(1).alpn.as_deref(), Some("h2"));
}

#[test]
fn alpn_none_offers_nothing() {
    let dir = tempdir();
    let master = alpn_master(dir.path());
    let proxy = master
        .cfg()
        .listeners(&[r#"{name: main, listen: "127.0.0.1:0", alpn: none}"#])
        .start(dir.path());
    let mut c = connect(proxy.tcp_addr("main"));
    let local = c.local_addr().unwrap();
    assert_eq!(roundtrip(&mut c, H2_START), H2_START);
    assert_eq!(master.server.handshake(1).alpn, None);
    finish(&mut c);
    assert_eq!(proxy.access_line(local)["alpn"], "");
}

#[test]
fn explicit_alpn_list_is_offered_as_is() {
    let dir = tempdir();
    let master = alpn_master(dir.path());
    let proxy = master
        .cfg()
        .listeners(&[r#"{name: main, listen: "127.0.0.1:0", alpn: [h2]}"#])
        .start(dir.path());
    let mut c = connect(proxy.tcp_addr("main"));
    // An HTTP/1.1 request, but the listener offers only h2.
    let req = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
    assert_eq!(roundtrip(&mut c, req), req);
    assert_eq!(master.server.handshake(1).alpn.as_deref(), Some("h2"));
    finish(&mut c);
}

#[test]
fn explicit_alpn_list_may_name_any_protocol() {
    let dir = tempdir();
    // The only protocol both sides know is a custom one: it must be offered verbatim.
    let master = Master::start_with(dir.path(), |b| b.alpn(&["x-det-test", "http/1.1"]));
    let proxy = master
        .cfg()
        .listeners(&[r#"{name: main, listen: "127.0.0.1:0", alpn: ["x-det-test", "h2"]}"#])
        .start(dir.path());
    let mut c = connect(proxy.tcp_addr("main"));
    assert_eq!(roundtrip(&mut c, b"hi"), b"hi");
    assert_eq!(
        master.server.handshake(1).alpn.as_deref(),
        Some("x-det-test")
    );
    finish(&mut c);
}

fn curl(args: &[&str]) -> (String, String) {
    let out = Command::new("/usr/bin/curl")
        .args(["-sS", "--noproxy", "*", "--max-time", "10"])
        .args(["-w", "\n%{http_version}"])
        .args(args)
        .env_remove("CURL_HOME")
        .output()
        .expect("run /usr/bin/curl");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "curl failed: {}\nstdout: {stdout}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let (body, version) = stdout.rsplit_once('\n').expect("curl -w output");
    (body.to_string(), version.to_string())
}

#[test]
fn curl_http11_through_proxy() {
    let dir = tempdir();
    let master = Master::start_with(dir.path(), |b| {
        b.alpn(&["h2", "http/1.1"]).behavior(Behavior::Http)
    });
    let proxy = master.cfg().start(dir.path());
    let url = format!("http://{}/api/v1/master", proxy.tcp_addr("main"));
    let (body, version) = curl(&["--http1.1", &url]);
    assert_eq!(body, "alpn=http/1.1");
    assert_eq!(version, "1.1");
}

#[test]
fn curl_http2_prior_knowledge_through_proxy() {
    let dir = tempdir();
    let master = Master::start_with(dir.path(), |b| {
        b.alpn(&["h2", "http/1.1"]).behavior(Behavior::Http)
    });
    let proxy = master.cfg().start(dir.path());
    let url = format!("http://{}/api/v1/master", proxy.tcp_addr("main"));
    let (body, version) = curl(&["--http2-prior-knowledge", &url]);
    assert_eq!(body, "alpn=h2");
    assert_eq!(version, "2");
    assert_eq!(master.server.handshake(1).alpn.as_deref(), Some("h2"));
}
