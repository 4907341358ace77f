//! The proxy as a log shipper's target. Fluent Bit's `http` output (as Determined configures
//! it: `URI /task-logs`, `Format json`, `Header_tag X-Fluent-Tag`) sends HTTP/1.1 POSTs with
//! a JSON array per batch, many on one keep-alive connection. Here a client sends exactly
//! that, in plaintext, through the proxy to a TLS HTTP server addressed by IP (master_host
//! 127.0.0.1) whose certificate holds only a DNS name: the case Fluent Bit itself cannot
//! verify, and which the proxy handles by taking the name from master_cert. Every record must
//! arrive intact, in order, on one upstream connection, and every response must come back.
//!
//! The master (a hyper HTTP/1.1 server) lives in `support` below; the proxy process and the
//! rest come from tests/common.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::time::Duration;

use serde_json::{json, Value};

use common::{certs, field, tempdir, Proxy, IO_TIMEOUT};
use support::Master;

mod support {
    use std::net::{SocketAddr, TcpListener as StdListener};
    use std::path::{Path, PathBuf};
    use std::sync::{Arc, Condvar, Mutex};
    use std::time::{Duration, Instant};

    use http_body_util::{BodyExt, Full};
    use hyper::body::{Bytes, Incoming};
    use hyper::{Request, Response};
    use hyper_util::rt::TokioIo;
    use rcgen::{CertificateParams, DnType, IsCa, KeyPair};
    use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

    // === The master: a TLS HTTP/1.1 server ===

    /// One request as the master's HTTP server parsed it.
    #[derive(Debug, Clone)]
    pub struct Received {
        pub connection: usize,
        pub method: String,
        pub path: String,
        pub headers: Vec<(String, String)>,
        pub body: Vec<u8>,
    }

    impl Received {
        pub fn header(&self, name: &str) -> Option<&str> {
            self.headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
        }
    }

    #[derive(Default)]
    pub struct Seen {
        /// SNI of each TLS connection, in order of handshake.
        pub connections: Vec<Option<String>>,
        pub requests: Vec<Received>,
        /// Connections whose HTTP exchange has ended (client closed).
        pub closed: usize,
    }

    /// A TLS HTTP/1.1 server standing in for the master, with a self-signed certificate
    /// for one DNS name and no IP address (as Determined's TLS docs make one). Answers
    /// every request with 200 and `{"received": N}`, N counting the connection's requests.
    pub struct Master {
        pub addr: SocketAddr,
        pub cert_pem: PathBuf,
        pub seen: Arc<(Mutex<Seen>, Condvar)>,
        runtime: Option<tokio::runtime::Runtime>,
    }

    impl Master {
        pub fn start(dir: &Path, dns_name: &str) -> Master {
            let key = KeyPair::generate().expect("key");
            let mut params = CertificateParams::new(vec![dns_name.to_string()]).expect("params");
            params.distinguished_name.push(DnType::CommonName, dns_name);
            params.is_ca = IsCa::NoCa;
            let cert = params
                .self_signed(&key)
                .expect("self-signed master certificate");
            let cert_pem = dir.join("master.crt");
            std::fs::write(&cert_pem, cert.pem()).unwrap();

            let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
            let config = rustls::ServerConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(
                    vec![cert.der().clone()],
                    PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
                )
                .expect("server config");
            let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            let std_listener = StdListener::bind("127.0.0.1:0").unwrap();
            std_listener.set_nonblocking(true).unwrap();
            let addr = std_listener.local_addr().unwrap();
            let seen: Arc<(Mutex<Seen>, Condvar)> = Arc::default();
            let state = seen.clone();
            runtime.spawn(async move {
                let listener = tokio::net::TcpListener::from_std(std_listener).unwrap();
                loop {
                    let Ok((tcp, _)) = listener.accept().await else {
                        continue;
                    };
                    let acceptor = acceptor.clone();
                    let state = state.clone();
                    tokio::spawn(async move {
                        let Ok(tls) = acceptor.accept(tcp).await else {
                            return;
                        };
                        let sni = tls.get_ref().1.server_name().map(str::to_string);
                        let id = {
                            let mut s = state.0.lock().unwrap();
                            s.connections.push(sni);
                            s.connections.len() - 1
                        };
                        let count = Arc::new(Mutex::new(0usize));
                        let st = state.clone();
                        let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                            let st = st.clone();
                            let count = count.clone();
                            async move {
                                let (parts, body) = req.into_parts();
                                let body = body.collect().await?.to_bytes().to_vec();
                                let n = {
                                    let mut c = count.lock().unwrap();
                                    *c += 1;
                                    *c
                                };
                                let headers = parts
                                    .headers
                                    .iter()
                                    .map(|(k, v)| {
                                        (
                                            k.as_str().to_string(),
                                            String::from_utf8_lossy(v.as_bytes()).into_owned(),
                                        )
                                    })
                                    .collect();
                                st.0.lock().unwrap().requests.push(Received {
                                    connection: id,
                                    method: parts.method.to_string(),
                                    path: parts.uri.to_string(),
                                    headers,
                                    body,
                                });
                                st.1.notify_all();
                                Ok::<_, hyper::Error>(
                                    Response::builder()
                                        .status(200)
                                        .header("content-type", "application/json")
                                        .body(Full::new(Bytes::from(format!(
                                            "{{\"received\":{n}}}"
                                        ))))
                                        .unwrap(),
                                )
                            }
                        });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .keep_alive(true)
                            .serve_connection(TokioIo::new(tls), service)
                            .await;
                        state.0.lock().unwrap().closed += 1;
                        state.1.notify_all();
                    });
                }
            });
            Master {
                addr,
                cert_pem,
                seen,
                runtime: Some(runtime),
            }
        }

        /// Waits until `pred` holds of what the server has seen.
        pub fn wait(&self, what: &str, timeout: Duration, pred: impl Fn(&Seen) -> bool) {
            let deadline = Instant::now() + timeout;
            let mut s = self.seen.0.lock().unwrap();
            while !pred(&s) {
                let now = Instant::now();
                if now >= deadline {
                    panic!(
                        "master: timed out after {timeout:?} waiting for {what} ({} connections, {} requests, {} closed)",
                        s.connections.len(),
                        s.requests.len(),
                        s.closed
                    );
                }
                s = self.seen.1.wait_timeout(s, deadline - now).unwrap().0;
            }
        }
    }

    impl Drop for Master {
        fn drop(&mut self) {
            if let Some(rt) = self.runtime.take() {
                rt.shutdown_background();
            }
        }
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

fn proxy_config(dir: &std::path::Path, master: &Master, listeners: &str) -> std::path::PathBuf {
    certs::write(
        dir,
        "proxy.yaml",
        &format!(
            "master_host: 127.0.0.1\nmaster_port: {}\nsecurity:\n  tls:\n    master_cert: {}\nlisteners:\n{listeners}log:\n  format: json\n",
            master.addr.port(),
            master.cert_pem.display()
        ),
    )
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
    let cfg = proxy_config(
        dir.path(),
        &master,
        "  - name: logs\n    listen: 127.0.0.1:0\n",
    );
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
        s.closed == 1
    });
    let seen = master.seen.0.lock().unwrap();
    assert_eq!(
        seen.connections,
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
    drop(seen);
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
    let cfg = proxy_config(
        dir.path(),
        &master,
        &format!("  - name: logs\n    listen: unix:{}\n", sock.display()),
    );
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
        s.closed == 2
    });
    let seen = master.seen.0.lock().unwrap();
    assert_eq!(seen.connections.len(), 2);
    for (tag, batches) in [("shipper.a", &batches_a), ("shipper.b", &batches_b)] {
        let got: Vec<&support::Received> = seen
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
