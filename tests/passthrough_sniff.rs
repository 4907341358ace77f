//! Which clients are passed through untouched (`tls_passthrough: auto`): those whose first
//! bytes are a ClientHello's record and handshake headers. Real clients (openssl s_client,
//! curl, Python's ssl, Go's crypto/tls, rustls with a ClientHello too big for one record) reach
//! the master with their own handshake and verify it themselves; everything else, including
//! random bytes that open with 0x16 and clients that stop after it, goes over the proxy's own
//! TLS, never in the clear.

mod common;

use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use common::proxy::clean;
use common::server::{provider, TlsServer};
use common::*;
use rustls::pki_types::ServerName;

/// The name the clients ask for and verify; the proxy itself sends no SNI (it dials an IP).
const TASK_NAME: &str = "task.example";
const REQUEST: &str = "GET / HTTP/1.1\r\nHost: task.example\r\nConnection: close\r\n\r\n";

/// A master whose certificate also names `TASK_NAME`, and the proxy in front of it with the
/// default `tls_passthrough: auto`.
struct Setup {
    dir: tempfile::TempDir,
    ca: Ca,
    ca_pem: PathBuf,
    master: TlsServer,
    proxy: Proxy,
}

fn setup(behavior: Behavior) -> Setup {
    let dir = tempdir();
    let ca = Ca::root("Passthrough Sniff CA");
    let leaf = ca.server("det-master", &["det-master", "127.0.0.1", TASK_NAME]);
    let ca_pem = certs::write(dir.path(), "ca.pem", &ca.pem());
    let master = ServerBuilder::new(vec![leaf.der()], leaf.key_der())
        .alpn(&["http/1.1", "x-task"])
        .behavior(behavior)
        .start();
    let proxy = Cfg::new("127.0.0.1", master.port())
        .master_cert(&ca_pem)
        .start(dir.path());
    Setup {
        dir,
        ca,
        ca_pem,
        master,
        proxy,
    }
}

impl Setup {
    fn addr(&self) -> String {
        self.proxy.tcp_addr("main").to_string()
    }

    /// The `n`-th connection carried the client's own handshake to the master: its SNI,
    /// no handshake of the proxy's, no TLS of the proxy's in the access line.
    fn assert_passed_through(&self, n: usize) {
        let hs = self.master.handshake(n);
        assert_eq!(
            hs.sni.as_deref(),
            Some(TASK_NAME),
            "not the client's handshake"
        );
        let line = self.proxy.nth_access_line("main", n);
        assert_eq!(
            line["tls_version"], "",
            "wrapped in the proxy's TLS: {line}"
        );
        assert_eq!(
            self.master.state().handshakes.len(),
            n,
            "a second TLS layer"
        );
    }

    /// A rustls client verifying the master as `TASK_NAME`, records at most `fragment` long.
    fn rustls_client(
        &self,
        alpn: Vec<Vec<u8>>,
        fragment: Option<usize>,
    ) -> rustls::ClientConnection {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca.der()).unwrap();
        let mut config = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = alpn;
        config.max_fragment_size = fragment;
        let name = ServerName::try_from(TASK_NAME.to_string()).unwrap();
        rustls::ClientConnection::new(Arc::new(config), name).unwrap()
    }
}

/// Runs a client to its end and returns its stdout; it must succeed.
fn run_client(cmd: std::process::Command, what: &str) -> String {
    let out = run_to_exit(cmd, Duration::from_secs(120));
    assert_eq!(out.code(), Some(0), "{what} failed\n{out}");
    out.stdout
}

/// Ends a client's own TLS session (close_notify, FIN) and waits for the master's close.
fn close(mut tls: rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream>) {
    tls.conn.send_close_notify();
    tls.flush().unwrap();
    tls.sock.shutdown(std::net::Shutdown::Write).unwrap();
    read_until_closed(&mut tls.sock, IO_TIMEOUT);
}

// === Real clients pass through ===

fn openssl_s_client(s: &Setup, version: &str) {
    let request = s.dir.path().join("request");
    std::fs::write(&request, REQUEST).unwrap();
    let mut cmd = clean("openssl");
    cmd.args(["s_client", version, "-connect", &s.addr()])
        .args(["-servername", TASK_NAME, "-verify_hostname", TASK_NAME])
        .arg("-CAfile")
        .arg(&s.ca_pem)
        .args(["-verify_return_error", "-alpn", "http/1.1", "-ign_eof"])
        .stdin(std::fs::File::open(&request).unwrap());
    let out = run_client(cmd, &format!("openssl s_client {version}"));
    assert!(out.contains("Verify return code: 0 (ok)"), "{out}");
    assert!(
        out.contains("alpn=http/1.1"),
        "no answer from the master: {out}"
    );
}

#[test]
fn openssl_s_client_passes_through_and_verifies_the_master_itself() {
    let s = setup(Behavior::Http);
    openssl_s_client(&s, "-tls1_3");
    s.assert_passed_through(1);
    assert!(s.master.handshake(1).version.contains("TLSv1_3"));
    openssl_s_client(&s, "-tls1_2");
    s.assert_passed_through(2);
    assert!(s.master.handshake(2).version.contains("TLSv1_2"));
}

#[test]
fn curl_passes_through_and_verifies_the_master_itself() {
    let s = setup(Behavior::Http);
    let port = s.proxy.tcp_addr("main").port();
    let mut cmd = clean("curl");
    cmd.args(["-sS", "--noproxy", "*", "--max-time", "10", "--http1.1"])
        .arg("--cacert")
        .arg(&s.ca_pem)
        .args(["--resolve", &format!("{TASK_NAME}:{port}:127.0.0.1")])
        .arg(format!("https://{TASK_NAME}:{port}/"))
        .env_remove("CURL_HOME");
    assert_eq!(run_client(cmd, "curl"), "alpn=http/1.1");
    s.assert_passed_through(1);
}

#[test]
fn python_ssl_passes_through_and_verifies_the_master_itself() {
    let s = setup(Behavior::Http);
    let script = r#"
import socket, ssl, sys
host, port, cafile, name, request = sys.argv[1:]
ctx = ssl.create_default_context(cafile=cafile)
ctx.set_alpn_protocols(["http/1.1"])
with socket.create_connection((host, int(port)), timeout=10) as raw:
    with ctx.wrap_socket(raw, server_hostname=name) as tls:
        tls.sendall(request.encode())
        answer = b""
        while chunk := tls.recv(4096):
            answer += chunk
        print(tls.selected_alpn_protocol(), answer.decode())
"#;
    let addr = s.proxy.tcp_addr("main");
    let mut cmd = clean("python3");
    cmd.args(["-c", script, "127.0.0.1", &addr.port().to_string()])
        .arg(&s.ca_pem)
        .args([TASK_NAME, REQUEST]);
    let out = run_client(cmd, "python3 ssl");
    assert!(out.starts_with("http/1.1 HTTP/1.1 200"), "{out}");
    assert!(out.contains("alpn=http/1.1"), "{out}");
    s.assert_passed_through(1);
}

#[test]
fn go_crypto_tls_passes_through_and_verifies_the_master_itself() {
    // Debian's golang-go, installed by tests/run.sh: missing, this test fails.
    let found = std::process::Command::new("go").arg("version").output();
    assert!(
        found.is_ok_and(|o| o.status.success()),
        "`go` is not on PATH: install golang-go (bash tests/run.sh --deps-only does)"
    );
    let s = setup(Behavior::Http);
    let hello = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/real/hello.go");
    let go = s.dir.path().join("go");
    let mut cmd = clean("go");
    cmd.args(["run", hello, &s.addr()])
        .arg(&s.ca_pem)
        .arg(TASK_NAME)
        .env("GOCACHE", go.join("cache"))
        .env("GOPATH", go.join("path"))
        .env("GOPROXY", "off")
        .env("GOFLAGS", "")
        .env("GO111MODULE", "on");
    let out = run_client(cmd, "go run tests/real/hello.go");
    assert!(out.starts_with("verified=1 alpn=http/1.1\n"), "{out}");
    assert!(out.contains("alpn=http/1.1"), "{out}");
    s.assert_passed_through(1);
}

#[test]
fn a_client_hello_too_big_for_one_record_passes_through() {
    let s = setup(Behavior::Echo);
    // Enough ALPN names to take the ClientHello past 2^14 bytes: rustls fills a first record
    // and sends the rest in a second.
    let mut alpn: Vec<Vec<u8>> = (0..400)
        .map(|i| format!("x-{i:044}").into_bytes())
        .collect();
    alpn.push(b"x-task".to_vec());
    let conn = s.rustls_client(alpn, None);
    let mut tls = rustls::StreamOwned::new(conn, connect(s.proxy.tcp_addr("main")));
    tls.write_all(b"big hello\n").unwrap();
    let mut back = [0u8; 10];
    tls.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"big hello\n");
    assert_eq!(tls.conn.alpn_protocol(), Some(&b"x-task"[..]));
    close(tls);
    s.assert_passed_through(1);
}

#[test]
fn a_client_hello_sent_in_pieces_passes_through() {
    let s = setup(Behavior::Echo);
    let mut conn = s.rustls_client(vec![b"x-task".to_vec()], None);
    let mut hello = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut hello).unwrap();
    }
    let mut tcp = connect(s.proxy.tcp_addr("main"));
    for piece in [&hello[..1], &hello[1..6], &hello[6..]] {
        tcp.write_all(piece).unwrap();
    }
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    tls.write_all(b"pieces\n").unwrap();
    let mut back = [0u8; 7];
    tls.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"pieces\n");
    close(tls);
    s.assert_passed_through(1);
}

// === Everything else goes over the proxy's TLS ===

/// Sends `payload`, closes the write side and returns everything that came back.
fn exchange(addr: std::net::SocketAddr, payload: &[u8]) -> Vec<u8> {
    let mut c = connect(addr);
    c.write_all(payload).unwrap();
    c.shutdown(std::net::Shutdown::Write).unwrap();
    read_until_closed(&mut c, IO_TIMEOUT)
}

/// Each payload goes through the proxy to an echoing master; returns a description of each
/// one that did not come back whole (sent in the clear, the master cannot read it).
fn not_echoed(s: &Setup, payloads: Vec<(String, Vec<u8>)>) -> Vec<String> {
    let addr = s.proxy.tcp_addr("main");
    let payloads = Arc::new(payloads);
    let workers: Vec<_> = (0..4)
        .map(|w| {
            let payloads = payloads.clone();
            std::thread::spawn(move || {
                let mut failed = Vec::new();
                for (what, p) in payloads.iter().skip(w).step_by(4) {
                    let back = exchange(addr, p);
                    if back != *p {
                        failed.push(format!("{what}: {} of {} bytes back", back.len(), p.len()));
                    }
                }
                failed
            })
        })
        .collect();
    workers
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect()
}

/// Every one of `payloads` reached the master decrypted from the proxy's TLS, and the master
/// saw no other handshake and no raw bytes.
fn assert_all_wrapped(s: &Setup, payloads: Vec<(String, Vec<u8>)>) {
    let total = payloads.len();
    let sent: Vec<Vec<u8>> = payloads.iter().map(|(_, p)| p.clone()).collect();
    let failed = not_echoed(s, payloads);
    assert!(
        failed.is_empty(),
        "{} of {total} connections were not relayed over the proxy's TLS:\n{}",
        failed.len(),
        failed.join("\n")
    );
    s.master.finished(total);
    let st = s.master.state();
    assert!(
        st.handshake_errors.is_empty(),
        "raw bytes reached the master: {:?}",
        st.handshake_errors
    );
    assert_eq!(st.handshakes.len(), total);
    assert!(
        st.handshakes.iter().all(|h| h.sni.is_none()),
        "a client's own handshake"
    );
    for p in &sent {
        assert!(
            st.finished.iter().any(|f| f.received_data == *p),
            "the master never received {:02x?}... inside TLS",
            &p[..p.len().min(9)]
        );
    }
}

fn random(seed: u64, len: usize) -> Vec<u8> {
    let mut p = vec![0u8; len];
    Pattern::new(seed).fill(&mut p);
    p
}

#[test]
fn random_payloads_are_never_passed_through_in_the_clear() {
    let s = setup(Behavior::Echo);
    let mut payloads = Vec::new();
    for seed in 0..200u64 {
        let mut p = random(seed, 2048);
        p[0] = 0x16;
        payloads.push((format!("0x16 then random, seed {seed}"), p));
    }
    for seed in 200..400u64 {
        payloads.push((format!("random 2 KiB, seed {seed}"), random(seed, 2048)));
    }
    assert_all_wrapped(&s, payloads);
}

#[test]
fn headers_breaking_one_rule_go_over_the_proxys_tls() {
    let s = setup(Behavior::Echo);
    // A plausible ClientHello header but for one field: record version, record length,
    // handshake type, handshake length.
    let header = |v: [u8; 2], record: u16, kind: u8, body: u32| {
        let (r, b) = (record.to_be_bytes(), body.to_be_bytes());
        let mut p = vec![22, v[0], v[1], r[0], r[1], kind, b[1], b[2], b[3]];
        p.extend(random(u64::from(record) ^ u64::from(body), 2048));
        p
    };
    let cases = [
        ("record version 2.0", header([2, 0], 200, 1, 196)),
        ("record version 3.5", header([3, 5], 200, 1, 196)),
        ("empty record", header([3, 1], 0, 1, 196)),
        ("record over 2^14", header([3, 3], 16385, 1, 16381)),
        ("server_hello", header([3, 3], 200, 2, 196)),
        (
            "handshake shorter than its record",
            header([3, 3], 200, 1, 100),
        ),
        (
            "handshake longer than a record not full",
            header([3, 3], 200, 1, 400),
        ),
        (
            "handshake too short for a ClientHello",
            header([3, 3], 44, 1, 40),
        ),
    ];
    let payloads = cases.into_iter().map(|(w, p)| (w.to_string(), p)).collect();
    assert_all_wrapped(&s, payloads);
}

#[test]
fn a_client_hello_chopped_into_small_records_goes_over_the_proxys_tls() {
    // A sender splits a ClientHello only when it does not fit in one record; one split
    // into small records is not recognised, so it reaches the master inside the proxy's TLS.
    let s = setup(Behavior::Echo);
    let mut conn = s.rustls_client(vec![b"x-task".to_vec()], Some(128));
    let mut hello = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut hello).unwrap();
    }
    assert_eq!(&hello[..3], &[22, 3, 1][..], "not a ClientHello record");
    let back = exchange(s.proxy.tcp_addr("main"), &hello);
    assert!(
        back == hello,
        "{} of {} bytes back: not over the proxy's TLS",
        back.len(),
        hello.len()
    );
    assert!(
        s.master.finished(1).received_data == hello,
        "the master did not get it inside TLS"
    );
    assert!(
        s.master.handshake(1).sni.is_none(),
        "the client's own handshake"
    );
    assert_ne!(s.proxy.nth_access_line("main", 1)["tls_version"], "");
}

#[test]
fn a_client_closing_after_0x16_goes_over_the_proxys_tls() {
    let s = setup(Behavior::Echo);
    for (n, p) in [&[0x16u8][..], &[0x16, 0x03, 0x01, 0x02, 0x00][..]]
        .iter()
        .enumerate()
    {
        assert_eq!(exchange(s.proxy.tcp_addr("main"), p), *p);
        assert_eq!(s.master.finished(n + 1).received_data, *p);
        assert_ne!(s.proxy.nth_access_line("main", n + 1)["tls_version"], "");
    }
}

#[test]
fn a_client_stalling_after_0x16_goes_over_the_proxys_tls() {
    let s = setup(Behavior::Echo);
    let mut c = connect(s.proxy.tcp_addr("main"));
    let local = c.local_addr().unwrap();
    // The start of a ClientHello header, then nothing until the first-bytes wait (1 s) is
    // over: the proxy then dials the master with its own TLS.
    c.write_all(&[0x16, 0x03, 0x01]).unwrap();
    assert!(
        s.master.handshake(1).sni.is_none(),
        "not the proxy's handshake"
    );
    let rest = [0x02, 0x00, 0x01, 0x00, 0x01, 0xfc];
    let mut sent = vec![0x16, 0x03, 0x01];
    sent.extend_from_slice(&rest);
    c.write_all(&rest).unwrap();
    let mut back = vec![0u8; sent.len()];
    c.read_exact(&mut back).unwrap();
    assert_eq!(back, sent, "not relayed over the proxy's TLS");
    finish(&mut c);
    assert_ne!(s.proxy.access_line(local)["tls_version"], "");
}
