//! The proxy as a log shipper's target. Fluent Bit's `http` output (as Determined configures
//! it: `URI /task-logs`, `Format json`, `Header_tag X-Fluent-Tag`) sends HTTP/1.1 POSTs with
//! a JSON array per batch, many on one keep-alive connection. Here a client sends exactly
//! that, in plaintext, through the proxy to a TLS HTTP server addressed by IP (master_host
//! 127.0.0.1) whose certificate holds only a DNS name: the case Fluent Bit itself cannot
//! verify, and which the proxy handles by taking the name from master_cert. Every record must
//! arrive intact, in order, on one upstream connection, and every response must come back.
//!
//! The master is tests/common's TLS server with its hyper HTTP/1.1 behaviour
//! (`Behavior::HttpRecord`); the certificate, the proxy process and its configuration come
//! from tests/common too.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};

use common::server::{HttpRequest, ServerState};
use common::{
    certs, field, q, tempdir, Behavior, Cfg, Leaf, Proxy, ServerBuilder, TlsServer, IO_TIMEOUT,
};

/// The master: a TLS HTTP/1.1 keep-alive server (common's `Behavior::HttpRecord`) with a
/// self-signed certificate for one DNS name and no IP address (as Determined's TLS docs make
/// one), written to `dir/master.crt`.
struct Master {
    server: TlsServer,
    cert_pem: PathBuf,
}

impl Master {
    fn start(dir: &Path, dns_name: &str) -> Master {
        let leaf = Leaf::self_signed(dns_name, &[dns_name]);
        let cert_pem = certs::write(dir, "master.crt", &leaf.pem());
        let server = ServerBuilder::new(vec![leaf.der()], leaf.key_der())
            .behavior(Behavior::HttpRecord)
            .start();
        Master { server, cert_pem }
    }

    /// Waits until `pred` holds of what the server has seen.
    fn wait(&self, what: &str, timeout: Duration, pred: impl Fn(&ServerState) -> bool) {
        self.server.wait(what, timeout, |st| pred(st).then_some(()));
    }
}

// === A client that writes what Fluent Bit's http output writes ===

/// One keep-alive connection, counting the bytes each way.
struct Shipper<S: Read + Write> {
    conn: BufReader<S>,
    host: String,
    sent: u64,
    received: u64,
}

impl<S: Read + Write> Shipper<S> {
    fn new(stream: S, host: &str) -> Self {
        Shipper {
            conn: BufReader::new(stream),
            host: host.to_string(),
            sent: 0,
            received: 0,
        }
    }

    /// POSTs `body` the way flb_http_client does (request line, Host, Content-Length,
    /// User-Agent, Content-Type, the configured headers) and returns the status and body
    /// of the response.
    fn post(&mut self, uri: &str, body: &[u8], extra: &[(&str, &str)]) -> (u16, Vec<u8>) {
        let mut req = format!(
            "POST {uri} HTTP/1.1\r\nHost: {}\r\nContent-Length: {}\r\nUser-Agent: Fluent-Bit\r\nContent-Type: application/json\r\n",
            self.host,
            body.len()
        );
        for (k, v) in extra {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        let mut bytes = req.into_bytes();
        bytes.extend_from_slice(body);
        self.conn
            .get_mut()
            .write_all(&bytes)
            .expect("write request to the proxy");
        self.sent += bytes.len() as u64;
        self.read_response()
    }

    fn read_line(&mut self) -> String {
        let mut line = Vec::new();
        let n = self
            .conn
            .read_until(b'\n', &mut line)
            .expect("read response from the proxy");
        assert!(n > 0, "the proxy closed the connection mid-response");
        self.received += n as u64;
        String::from_utf8(line)
            .expect("ASCII header")
            .trim_end()
            .to_string()
    }

    fn read_response(&mut self) -> (u16, Vec<u8>) {
        let status_line = self.read_line();
        let mut parts = status_line.splitn(3, ' ');
        assert_eq!(
            parts.next(),
            Some("HTTP/1.1"),
            "status line {status_line:?}"
        );
        let status: u16 = parts
            .next()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("status line {status_line:?}"));
        let mut length = None;
        loop {
            let line = self.read_line();
            if line.is_empty() {
                break;
            }
            let (k, v) = line
                .split_once(':')
                .unwrap_or_else(|| panic!("header {line:?}"));
            if k.eq_ignore_ascii_case("content-length") {
                length = Some(v.trim().parse::<usize>().unwrap());
            }
            assert!(
                !(k.eq_ignore_ascii_case("connection") && v.trim().eq_ignore_ascii_case("close")),
                "the master closed keep-alive"
            );
        }
        let mut body = vec![0u8; length.expect("Content-Length in the response")];
        self.conn.read_exact(&mut body).expect("read response body");
        self.received += body.len() as u64;
        (status, body)
    }

    fn into_inner(self) -> S {
        self.conn.into_inner()
    }
}

/// A batch as Fluent Bit's json format writes it for Determined: an array of records with
/// `timestamp` (Json_date_key, iso8601) and the fields the agent's filters leave.
fn batch(n: usize, first: usize, pad: usize) -> Vec<u8> {
    let records: Vec<Value> = (first..first + n)
        .map(|i| {
            json!({
                "timestamp": format!("2024-05-01T12:00:{:02}.{:06}Z", i % 60, i),
                "log": format!("[rank=0] INFO: step {i} loss {:.4} {}\n", 1.0 / (i as f64 + 1.0), "x".repeat(pad)),
                "stdtype": "stdout",
                "container_id": "4f1c0e6b9a2d",
                "allocation_id": "exp-7-trial-12.alloc-1",
                "task_id": "exp-7-trial-12",
                "agent_id": "agent-1",
                "rank_id": 0,
                "level": "INFO",
            })
        })
        .collect();
    serde_json::to_vec(&records).unwrap()
}

/// The proxy's configuration: master_host 127.0.0.1 (an IP the certificate does not hold),
/// master_cert the master's own certificate, one listener `logs` listening on `listen`.
fn proxy_config(dir: &Path, master: &Master, listen: &str) -> PathBuf {
    Cfg::new("127.0.0.1", master.server.port())
        .master_cert(&master.cert_pem)
        .listeners(&[&format!("{{name: logs, listen: {}}}", q(listen))])
        .write(dir)
}

/// Sends `batches` over one connection and checks each response.
fn ship<S: Read + Write>(shipper: &mut Shipper<S>, batches: &[Vec<u8>], tag: &str) {
    for (i, body) in batches.iter().enumerate() {
        let (status, answer) = shipper.post("/task-logs", body, &[("X-Fluent-Tag", tag)]);
        assert_eq!(status, 200, "response to batch {i}");
        let answer: Value = serde_json::from_slice(&answer).expect("JSON response");
        assert_eq!(
            answer["received"],
            i + 1,
            "response {i} answers request {i}"
        );
    }
}

fn fluent_batches() -> Vec<Vec<u8>> {
    let mut batches = Vec::new();
    let mut first = 0;
    for i in 0..24 {
        // Mostly small flushes, one burst of about 2 MiB (a chatty trial), one empty array.
        let (n, pad) = match i {
            7 => (4000, 400),
            15 => (0, 0),
            _ => (1 + i * 3, 20),
        };
        batches.push(batch(n, first, pad));
        first += n;
    }
    batches
}

#[test]
fn fluent_bit_batches_reach_a_master_addressed_by_ip_with_a_dns_only_certificate() {
    let dir = tempdir();
    let master = Master::start(dir.path(), "det-master");
    let cfg = proxy_config(dir.path(), &master, "127.0.0.1:0");
    let proxy = Proxy::start(&cfg);
    // The substitution Determined asks operators to do by hand (master_cert_name), done
    // from master_cert.
    proxy.wait_for("the name substitution line", Duration::from_secs(5), |v| {
        field(v, "message").contains("substituting") && field(v, "name") == "det-master"
    });
    let addr = proxy.listener_addr("logs");

    let stream = std::net::TcpStream::connect(&addr).expect("connect to the logs listener");
    stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    stream.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    let mut shipper = Shipper::new(stream, &addr);
    let batches = fluent_batches();
    ship(&mut shipper, &batches, "docker.4f1c0e6b9a2d");
    let (sent, received) = (shipper.sent, shipper.received);
    drop(shipper.into_inner());

    master.wait("the connection to end", Duration::from_secs(10), |s| {
        s.finished.len() == 1
    });
    let seen = master.server.state();
    let connections: Vec<Option<String>> = seen.handshakes.iter().map(|h| h.sni.clone()).collect();
    assert_eq!(
        connections,
        [Some("det-master".to_string())],
        "one TLS connection, SNI = the substituted name"
    );
    assert_eq!(seen.requests.len(), batches.len(), "every request arrived");
    let mut records = 0;
    for (i, (req, body)) in seen.requests.iter().zip(&batches).enumerate() {
        assert_eq!(
            req.connection, 0,
            "request {i} on the one keep-alive connection"
        );
        assert_eq!(
            (req.method.as_str(), req.path.as_str()),
            ("POST", "/task-logs"),
            "request {i}"
        );
        assert_eq!(
            req.header("content-type"),
            Some("application/json"),
            "request {i}"
        );
        assert_eq!(
            req.header("x-fluent-tag"),
            Some("docker.4f1c0e6b9a2d"),
            "request {i}"
        );
        assert_eq!(req.header("user-agent"), Some("Fluent-Bit"), "request {i}");
        assert_eq!(
            req.header("host"),
            Some(addr.as_str()),
            "request {i}: Host is relayed as the shipper wrote it"
        );
        assert!(
            &req.body == body,
            "request {i}: body differs ({} bytes sent, {} received)",
            body.len(),
            req.body.len()
        );
        records += serde_json::from_slice::<Vec<Value>>(&req.body)
            .expect("a JSON array")
            .len();
    }
    assert_eq!(
        records,
        batches
            .iter()
            .map(|b| serde_json::from_slice::<Vec<Value>>(b).unwrap().len())
            .sum::<usize>()
    );

    let access = proxy.wait_for("the access line", Duration::from_secs(10), |v| {
        field(v, "message") == "connection" && field(v, "listener") == "logs"
    });
    assert_eq!(field(&access, "outcome"), "ok", "{access}");
    assert_eq!(field(&access, "sni"), "det-master", "{access}");
    assert_eq!(access["bytes_up"], sent, "{access}");
    assert_eq!(access["bytes_down"], received, "{access}");
}

/// Shippers that speak HTTP over a unix socket use the `logs` listener of the agent-host
/// example; two of them at once get a master connection each.
#[test]
fn shippers_on_the_unix_logs_listener_each_get_their_own_master_connection() {
    let dir = tempdir();
    let master = Master::start(dir.path(), "det-master");
    let sock = dir.path().join("logs.sock");
    let cfg = proxy_config(dir.path(), &master, &format!("unix:{}", sock.display()));
    let proxy = Proxy::start(&cfg);
    assert_eq!(
        proxy.listener_addr("logs"),
        format!("unix:{}", sock.display())
    );

    let open = || {
        let s =
            std::os::unix::net::UnixStream::connect(&sock).expect("connect to the unix listener");
        s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        s.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
        Shipper::new(s, "localhost")
    };
    let mut a = open();
    let mut b = open();
    let batches_a: Vec<Vec<u8>> = (0..6).map(|i| batch(10, i * 10, 50)).collect();
    let batches_b: Vec<Vec<u8>> = (0..6).map(|i| batch(3, 1000 + i * 3, 10)).collect();
    // Interleaved, as two shippers flushing on their own timers would.
    for i in 0..6 {
        ship_one(&mut a, &batches_a[i], i, "shipper.a");
        ship_one(&mut b, &batches_b[i], i, "shipper.b");
    }
    drop(a.into_inner());
    drop(b.into_inner());

    master.wait("both connections to end", Duration::from_secs(10), |s| {
        s.finished.len() == 2
    });
    let seen = master.server.state();
    assert_eq!(seen.handshakes.len(), 2);
    for (tag, batches) in [("shipper.a", &batches_a), ("shipper.b", &batches_b)] {
        let got: Vec<&HttpRequest> = seen
            .requests
            .iter()
            .filter(|r| r.header("x-fluent-tag") == Some(tag))
            .collect();
        assert_eq!(got.len(), batches.len(), "{tag}: every request arrived");
        assert!(
            got.iter().all(|r| r.connection == got[0].connection),
            "{tag}: one connection"
        );
        for (r, body) in got.iter().zip(batches.iter()) {
            assert!(&r.body == body, "{tag}: body intact");
        }
    }
}

fn ship_one<S: Read + Write>(shipper: &mut Shipper<S>, body: &[u8], i: usize, tag: &str) {
    let (status, answer) = shipper.post("/task-logs", body, &[("X-Fluent-Tag", tag)]);
    assert_eq!(status, 200, "{tag}: response {i}");
    let answer: Value = serde_json::from_slice(&answer).unwrap();
    assert_eq!(
        answer["received"],
        i + 1,
        "{tag}: response {i} answers request {i}"
    );
}
