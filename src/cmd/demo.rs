//! `det-tls-proxy demo`: the whole path on loopback with no setup. A stand-in master with a
//! fresh CA and a certificate valid only for a DNS name, the proxy in front of it addressed by
//! IP (so the name is substituted from the bundle), and real HTTP/1.1, WebSocket and HTTP/2
//! exchanges through it. Everything lives in a temporary directory removed at exit.

use std::convert::Infallible;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use http_body_util::{BodyExt, Empty, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::config::{self, Overrides, Purpose};
use crate::server::{Server, Start};

/// The only name the stand-in master's certificate holds.
pub(crate) const DEMO_NAME: &str = "det-master.demo";
const WS_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

type DemoResult<T> = Result<T, String>;

fn e<E: std::fmt::Display>(context: &'static str) -> impl Fn(E) -> String {
    move |err| format!("{context}: {err}")
}

// === The stand-in master ===

struct MasterCerts {
    bundle_pem: String,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

fn make_certs() -> DemoResult<MasterCerts> {
    let ca_key = KeyPair::generate().map_err(e("CA key"))?;
    let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(e("CA params"))?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "det-tls-proxy demo CA");
    let ca_cert = ca.self_signed(&ca_key).map_err(e("CA certificate"))?;
    let leaf_key = KeyPair::generate().map_err(e("master key"))?;
    let mut leaf =
        CertificateParams::new(vec![DEMO_NAME.to_string()]).map_err(e("master params"))?;
    leaf.distinguished_name.push(DnType::CommonName, DEMO_NAME);
    let leaf_cert = leaf
        .signed_by(&leaf_key, &ca_cert, &ca_key)
        .map_err(e("master certificate"))?;
    Ok(MasterCerts {
        bundle_pem: format!("{}{}", leaf_cert.pem(), ca_cert.pem()),
        chain: vec![leaf_cert.der().clone(), ca_cert.der().clone()],
        key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der())),
    })
}

fn ws_accept(key: &str) -> String {
    let d = aws_lc_rs::digest::digest(
        &aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY,
        format!("{key}{WS_GUID}").as_bytes(),
    );
    crate::diagnose::base64(d.as_ref())
}

/// Reads one WebSocket frame: (opcode, unmasked payload). Frames are small in the demo.
async fn read_frame<S: AsyncRead + Unpin>(s: &mut S) -> std::io::Result<(u8, Vec<u8>)> {
    let mut h = [0u8; 2];
    s.read_exact(&mut h).await?;
    let opcode = h[0] & 0x0f;
    let masked = h[1] & 0x80 != 0;
    let mut len = u64::from(h[1] & 0x7f);
    if len == 126 {
        let mut b = [0u8; 2];
        s.read_exact(&mut b).await?;
        len = u64::from(u16::from_be_bytes(b));
    } else if len == 127 {
        let mut b = [0u8; 8];
        s.read_exact(&mut b).await?;
        len = u64::from_be_bytes(b);
    }
    if len > 1 << 20 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "frame too large for the demo",
        ));
    }
    let mut mask = [0u8; 4];
    if masked {
        s.read_exact(&mut mask).await?;
    }
    let mut payload = vec![0u8; len as usize];
    s.read_exact(&mut payload).await?;
    if masked {
        for (i, b) in payload.iter_mut().enumerate() {
            *b ^= mask[i % 4];
        }
    }
    Ok((opcode, payload))
}

async fn write_frame<S: AsyncWrite + Unpin>(
    s: &mut S,
    opcode: u8,
    payload: &[u8],
    mask: Option<[u8; 4]>,
) -> std::io::Result<()> {
    let mut f = vec![0x80 | opcode];
    let m = if mask.is_some() { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => f.push(m | n as u8),
        n if n <= 0xffff => {
            f.push(m | 126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            f.push(m | 127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    match mask {
        Some(k) => {
            f.extend_from_slice(&k);
            f.extend(payload.iter().enumerate().map(|(i, b)| b ^ k[i % 4]));
        }
        None => f.extend_from_slice(payload),
    }
    s.write_all(&f).await
}

async fn master_service(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let version = format!("{:?}", req.version());
    let wants_ws = req
        .headers()
        .get(hyper::header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    if wants_ws {
        let key = req
            .headers()
            .get("sec-websocket-key")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        tokio::spawn(async move {
            if let Ok(up) = hyper::upgrade::on(req).await {
                let mut io = TokioIo::new(up);
                while let Ok((op, payload)) = read_frame(&mut io).await {
                    if op == 8 {
                        let _ = write_frame(&mut io, 8, &payload, None).await;
                        break;
                    }
                    if write_frame(&mut io, op, &payload, None).await.is_err() {
                        break;
                    }
                }
            }
        });
        let mut r = Response::new(Full::new(Bytes::new()));
        *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let h = r.headers_mut();
        h.insert(
            hyper::header::UPGRADE,
            "websocket".parse().expect("static header"),
        );
        h.insert(
            hyper::header::CONNECTION,
            "Upgrade".parse().expect("static header"),
        );
        if let Ok(v) = ws_accept(&key).parse() {
            h.insert("sec-websocket-accept", v);
        }
        return Ok(r);
    }
    let body = format!(
        "{{\"cluster_name\":\"det-tls-proxy demo\",\"path\":\"{}\",\"protocol\":\"{}\"}}\n",
        req.uri().path(),
        version
    );
    let mut r = Response::new(Full::new(Bytes::from(body)));
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        "application/json".parse().expect("static header"),
    );
    Ok(r)
}

async fn start_master(certs: &MasterCerts) -> DemoResult<SocketAddr> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(e("TLS versions"))?
        .with_no_client_auth()
        .with_single_cert(certs.chain.clone(), certs.key.clone_key())
        .map_err(e("master TLS config"))?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(e("bind the stand-in master"))?;
    let addr = listener.local_addr().map_err(e("master address"))?;
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let _ = tcp.set_nodelay(true);
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                let _ = builder
                    .serve_connection_with_upgrades(
                        TokioIo::new(tls),
                        hyper::service::service_fn(master_service),
                    )
                    .await;
            });
        }
    });
    Ok(addr)
}

// === The exchanges ===

async fn connect(proxy: SocketAddr) -> DemoResult<TokioIo<TcpStream>> {
    let tcp = TcpStream::connect(proxy)
        .await
        .map_err(e("connect to the proxy"))?;
    let _ = tcp.set_nodelay(true);
    Ok(TokioIo::new(tcp))
}

/// "200 OK HTTP/1.1 {body}" for a response, once its body has arrived.
async fn describe(resp: Response<Incoming>) -> DemoResult<String> {
    let status = resp.status();
    let version = resp.version();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(e("response body"))?
        .to_bytes();
    Ok(format!(
        "{status} {version:?} {}",
        String::from_utf8_lossy(&body).trim()
    ))
}

async fn http1(proxy: SocketAddr) -> DemoResult<String> {
    let (mut sender, conn) = hyper::client::conn::http1::handshake(connect(proxy).await?)
        .await
        .map_err(e("HTTP/1.1 handshake"))?;
    tokio::spawn(conn);
    let req = Request::get("/api/v1/master").header(hyper::header::HOST, DEMO_NAME);
    answered(sender.send_request(request(req)?).await, "HTTP/1.1 request").await
}

async fn http2(proxy: SocketAddr) -> DemoResult<String> {
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), connect(proxy).await?)
            .await
            .map_err(e("HTTP/2 handshake"))?;
    tokio::spawn(conn);
    let req = Request::get(format!("http://{DEMO_NAME}/api/v1/master"));
    answered(sender.send_request(request(req)?).await, "HTTP/2 request").await
}

fn request(b: hyper::http::request::Builder) -> DemoResult<Request<Empty<Bytes>>> {
    b.body(Empty::<Bytes>::new()).map_err(e("request"))
}

async fn answered(
    r: Result<Response<Incoming>, hyper::Error>,
    what: &'static str,
) -> DemoResult<String> {
    describe(r.map_err(e(what))?).await
}

async fn websocket(proxy: SocketAddr) -> DemoResult<String> {
    let mut s = TcpStream::connect(proxy)
        .await
        .map_err(e("connect to the proxy"))?;
    let key = "ZGV0LXRscy1wcm94eSBkZW1v";
    let req = format!(
        "GET /agents?id=demo HTTP/1.1\r\nHost: {DEMO_NAME}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    s.write_all(req.as_bytes())
        .await
        .map_err(e("upgrade request"))?;
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() > 8192 || s.read(&mut b).await.map_err(e("upgrade response"))? == 0 {
            return Err("the upgrade response ended early".into());
        }
        head.push(b[0]);
    }
    let head = String::from_utf8_lossy(&head).to_string();
    if !head.starts_with("HTTP/1.1 101") {
        return Err(format!("no upgrade: {}", head.lines().next().unwrap_or("")));
    }
    if !head
        .to_ascii_lowercase()
        .contains(&ws_accept(key).to_ascii_lowercase())
    {
        return Err("wrong Sec-WebSocket-Accept".into());
    }
    let mut echoed = Vec::new();
    for i in 1..=3 {
        let msg = format!("heartbeat {i}");
        write_frame(&mut s, 1, msg.as_bytes(), Some([7, 1, 9, 3]))
            .await
            .map_err(e("send frame"))?;
        let (op, payload) = read_frame(&mut s).await.map_err(e("read frame"))?;
        if op != 1 || payload != msg.as_bytes() {
            return Err(format!("frame {i} came back wrong"));
        }
        echoed.push(msg);
    }
    write_frame(&mut s, 8, &[3, 232], Some([1, 2, 3, 4]))
        .await
        .map_err(e("close frame"))?;
    let _ = read_frame(&mut s).await;
    Ok(format!(
        "101 Switching Protocols, {} frames echoed: {}",
        echoed.len(),
        echoed.join(", ")
    ))
}

// === The demo ===

/// The proxy in front of the stand-in master, started as `run` starts it (from a config file),
/// with its address.
fn start_proxy(
    dir: &std::path::Path,
    master_port: u16,
    bundle: &std::path::Path,
) -> DemoResult<(Server, SocketAddr)> {
    let cfg_path = dir.join("tls-proxy.yaml");
    let yaml = format!(
        "master_host: 127.0.0.1\nmaster_port: {master_port}\nsecurity:\n  tls:\n    master_cert: {}\nlisteners:\n  - name: demo\n    listen: 127.0.0.1:0\ntimeouts:\n  shutdown: 1s\nlog:\n  access: false\n",
        bundle.display()
    );
    std::fs::write(&cfg_path, yaml).map_err(e("write the config"))?;
    let flags = Overrides {
        config: Some(cfg_path),
        ..Default::default()
    };
    let vars: Vec<(String, String)> = Vec::new();
    let loaded = config::assemble(&vars, &flags).map_err(|e| e.to_string())?;
    let config = config::validate(&loaded, Purpose::Serve).map_err(|e| e.to_string())?;
    let start = Start {
        flags,
        ..Start::new(config)
    };
    let server = Server::start(start).map_err(|e| e.to_string())?;
    let proxy: SocketAddr = server
        .addresses()
        .first()
        .and_then(|(_, a)| a.parse().ok())
        .ok_or("the proxy did not bind")?;
    Ok((server, proxy))
}

/// HTTP/1.1, WebSocket and HTTP/2 through the proxy, each printed with its time; returns how
/// many failed.
async fn exchanges(proxy: SocketAddr, out: &mut dyn Write) -> usize {
    let mut failures = 0;
    for (label, fut) in [
        (
            "HTTP/1.1 ",
            Box::pin(http1(proxy))
                as std::pin::Pin<Box<dyn std::future::Future<Output = DemoResult<String>> + Send>>,
        ),
        ("WebSocket", Box::pin(websocket(proxy))),
        ("HTTP/2   ", Box::pin(http2(proxy))),
    ] {
        let started = Instant::now();
        let result = fut.await;
        let ms = started.elapsed().as_secs_f64() * 1000.0;
        match result {
            Ok(s) => {
                let _ = writeln!(out, "{label}  ok    {ms:7.1} ms  {s}");
            }
            Err(err) => {
                failures += 1;
                let _ = writeln!(out, "{label}  FAIL  {ms:7.1} ms  {err}");
            }
        }
    }
    failures
}

pub async fn demo(hold: bool, out: &mut dyn Write) -> DemoResult<()> {
    let dir = tempfile::tempdir().map_err(e("temporary directory"))?;
    let certs = make_certs()?;
    let bundle = dir.path().join("master.crt");
    std::fs::write(&bundle, &certs.bundle_pem).map_err(e("write the bundle"))?;
    let master = start_master(&certs).await?;
    let _ = writeln!(
        out,
        "stand-in master  https://{master}  certificate valid only for DNS name {DEMO_NAME} (fresh CA)"
    );

    let (server, proxy) = start_proxy(dir.path(), master.port(), &bundle)?;
    let state = server.shared().current();
    let name = state
        .tls
        .as_ref()
        .map(|t| (t.name.name(), t.name.reason.to_string()))
        .unwrap_or_default();
    let _ = writeln!(
        out,
        "proxy            http://{proxy}  → master_host 127.0.0.1:{}",
        master.port()
    );
    let _ = writeln!(out, "name verified    {} ({})", name.0, name.1);
    let _ = writeln!(out);

    let failures = exchanges(proxy, out).await;
    if failures > 0 {
        return Err(format!("{failures} exchange(s) failed"));
    }
    let _ = writeln!(out);
    let _ = writeln!(out, "every exchange went plaintext → proxy → verified TLS (name substituted from the bundle) → master");
    if hold {
        let _ = writeln!(out, "\nserving until Ctrl-C; try:");
        let _ = writeln!(out, "  curl -s http://{proxy}/api/v1/master");
        let _ = writeln!(
            out,
            "  curl -s --http2-prior-knowledge http://{proxy}/api/v1/master"
        );
        let _ = writeln!(
            out,
            "  det-tls-proxy check --master-host 127.0.0.1 --master-port {} --security-tls-master-cert {}",
            master.port(),
            bundle.display()
        );
        let _ = out.flush();
        let _ = tokio::signal::ctrl_c().await;
    }
    server.stop();
    drop(dir);
    Ok(())
}

/// `det-tls-proxy demo [--hold]`: exit 0 when every exchange went through, 1 otherwise.
pub fn main(hold: bool) -> i32 {
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return crate::exit::RUNTIME;
        }
    };
    let mut out = std::io::stdout();
    match rt.block_on(demo(hold, &mut out)) {
        Ok(()) => crate::exit::OK,
        Err(m) => {
            eprintln!("error: {m}");
            crate::exit::RUNTIME
        }
    }
}
