//! An in-process TLS server standing in for the Determined master. It runs on its own
//! tokio runtime, listens on 127.0.0.1:0 and records, per connection, what the proxy
//! presented: SNI, ALPN, client certificate, TLS version, resumption.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{HandshakeKind, RootCertStore, ServerConfig, SupportedProtocolVersion};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;

use super::http;
use super::probes::{wait_until, Later};
use super::Pattern;

pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// A server config that asks `resolver` for its certificate at every handshake and never
/// resumes a session, so each connection shows the certificate current at that moment (for
/// masters whose certificate a test switches mid-run).
pub fn switchable(resolver: Arc<dyn rustls::server::ResolvesServerCert>) -> Arc<ServerConfig> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Arc::new(config)
}

/// `leaf` (sent alone) with its key loaded, for a server whose certificate can change.
pub fn certified(leaf: &super::Leaf) -> Arc<rustls::sign::CertifiedKey> {
    let key = provider()
        .key_provider
        .load_private_key(leaf.key_der())
        .unwrap();
    Arc::new(rustls::sign::CertifiedKey::new(vec![leaf.der()], key))
}

/// The certificate a [`switchable`] server presents, swapped by the test between connections;
/// `label` names the one current (for a master that records which each connection got).
#[derive(Debug, Clone)]
pub struct CurrentCert(Arc<Mutex<(String, Arc<rustls::sign::CertifiedKey>)>>);

impl CurrentCert {
    pub fn new(label: &str, leaf: &super::Leaf) -> CurrentCert {
        CurrentCert(Arc::new(Mutex::new((label.to_string(), certified(leaf)))))
    }

    pub fn set(&self, label: &str, leaf: &super::Leaf) {
        *self.0.lock().unwrap() = (label.to_string(), certified(leaf));
    }

    pub fn label(&self) -> String {
        self.0.lock().unwrap().0.clone()
    }

    /// A server config presenting this certificate at every handshake, never resuming.
    pub fn server_config(&self) -> Arc<ServerConfig> {
        switchable(Arc::new(self.clone()))
    }
}

impl rustls::server::ResolvesServerCert for CurrentCert {
    fn resolve(
        &self,
        _: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.0.lock().unwrap().1.clone())
    }
}

/// What the server does with a connection once the handshake is done.
#[derive(Clone, Debug)]
pub enum Behavior {
    /// Echo every byte; on EOF, close (close_notify + FIN).
    Echo,
    /// As `Echo`, but a connection on which nothing arrives within this long is closed by the
    /// server (close_notify + FIN), as a master's idle timeout does; `Finished::error` then
    /// says "closed idle".
    CloseIdle(Duration),
    /// Read until EOF, then write this answer and close.
    AnswerAfterEof(Vec<u8>),
    /// Read until EOF, wait this long, then write this answer and close (a master still
    /// working after the client has finished sending).
    AnswerLateAfterEof(Duration, Vec<u8>),
    /// Write this greeting, close the write side (close_notify + FIN), then keep
    /// reading until EOF.
    GreetThenHalfClose(Vec<u8>),
    /// Read `expect` bytes, write `reply`, then drop the TCP socket without a TLS
    /// close_notify.
    ReplyThenDropWithoutCloseNotify { expect: usize, reply: Vec<u8> },
    /// Read until EOF hashing what arrives while sending `send` bytes of the pattern
    /// seeded with `seed`, then close.
    Hash { send: u64, seed: u64 },
    /// A tiny HTTP/1.1 and HTTP/2 responder; the body says which ALPN was negotiated.
    Http,
    /// Read until EOF, then keep the connection open without ever writing.
    Hold,
    /// An HTTP/1.1 keep-alive server (hyper), as a log shipper's target: every request is
    /// recorded in `ServerState::requests` and answered with 200 and `{"received": N}`, N
    /// counting the requests of its connection.
    HttpRecord,
}

/// One request as the `HttpRecord` server parsed it.
#[derive(Clone, Debug)]
pub struct HttpRequest {
    /// The connection's index in `ServerState::handshakes`.
    pub connection: usize,
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpRequest {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

pub enum ClientAuth {
    None,
    /// Ask for a client certificate signed by this CA, accept clients without one.
    Optional(CertificateDer<'static>),
    /// Require a client certificate signed by this CA.
    Required(CertificateDer<'static>),
}

/// What the server saw of one successful handshake.
#[derive(Clone, Debug)]
pub struct Handshake {
    pub peer: SocketAddr,
    pub sni: Option<String>,
    pub alpn: Option<String>,
    pub client_cert: bool,
    pub version: String,
    pub resumed: bool,
    /// The key exchange group, e.g. "X25519MLKEM768" or "X25519".
    pub kx: String,
}

/// The end of one connection's behaviour.
#[derive(Clone, Debug, Default)]
pub struct Finished {
    pub received: u64,
    /// The first MiB of what was received.
    pub received_data: Vec<u8>,
    pub received_sha256: Vec<u8>,
    pub sent_sha256: Vec<u8>,
    pub error: Option<String>,
}

#[derive(Clone, Debug, Default)]
pub struct ServerState {
    pub tcp_accepts: usize,
    pub handshakes: Vec<Handshake>,
    pub handshake_errors: Vec<String>,
    pub finished: Vec<Finished>,
    /// What the `HttpRecord` behaviour received, in arrival order.
    pub requests: Vec<HttpRequest>,
}

type Shared = Arc<Mutex<ServerState>>;

pub struct ServerBuilder {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    versions: Vec<&'static SupportedProtocolVersion>,
    alpn: Vec<Vec<u8>>,
    client_auth: ClientAuth,
    behavior: Behavior,
    port: u16,
}

impl ServerBuilder {
    /// `chain` is what the server sends: leaf first, then any intermediates.
    pub fn new(chain: Vec<CertificateDer<'static>>, key: PrivateKeyDer<'static>) -> Self {
        ServerBuilder {
            chain,
            key,
            versions: vec![&rustls::version::TLS13, &rustls::version::TLS12],
            alpn: vec![],
            client_auth: ClientAuth::None,
            behavior: Behavior::Echo,
            port: 0,
        }
    }

    /// Listens on this port of 127.0.0.1 (a master restarted where it was), waiting up to
    /// 5 s for a stopped server's socket to be released.
    pub fn port(mut self, port: u16) -> Self {
        self.port = port;
        self
    }

    pub fn tls12_only(mut self) -> Self {
        self.versions = vec![&rustls::version::TLS12];
        self
    }

    pub fn tls13_only(mut self) -> Self {
        self.versions = vec![&rustls::version::TLS13];
        self
    }

    /// Protocols the server is willing to select, in its order of preference.
    pub fn alpn(mut self, protocols: &[&str]) -> Self {
        self.alpn = protocols.iter().map(|p| p.as_bytes().to_vec()).collect();
        self
    }

    pub fn client_auth(mut self, auth: ClientAuth) -> Self {
        self.client_auth = auth;
        self
    }

    pub fn behavior(mut self, behavior: Behavior) -> Self {
        self.behavior = behavior;
        self
    }

    pub fn start(self) -> TlsServer {
        let provider = provider();
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&self.versions)
            .expect("protocol versions");
        let verifier = |root: CertificateDer<'static>, optional: bool| {
            let mut roots = RootCertStore::empty();
            roots.add(root).expect("client CA");
            let b = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone());
            let b = if optional {
                b.allow_unauthenticated()
            } else {
                b
            };
            b.build().expect("client verifier")
        };
        let builder = match self.client_auth {
            ClientAuth::None => builder.with_no_client_auth(),
            ClientAuth::Optional(root) => builder.with_client_cert_verifier(verifier(root, true)),
            ClientAuth::Required(root) => builder.with_client_cert_verifier(verifier(root, false)),
        };
        let mut config = builder
            .with_single_cert(self.chain, self.key)
            .expect("server cert");
        config.alpn_protocols = self.alpn;
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));

        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        // A master restarted on its old port: the port may still be held for a moment.
        let std_listener = wait_until(
            &format!("port {} to be free for the server", self.port),
            Duration::from_secs(5),
            || match std::net::TcpListener::bind(("127.0.0.1", self.port)) {
                Ok(l) => Ok(l),
                Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => Err(e),
                Err(e) => panic!("bind server on port {}: {e}", self.port),
            },
        );
        std_listener.set_nonblocking(true).unwrap();
        let addr = std_listener.local_addr().unwrap();
        let shared: Shared = Arc::default();
        let behavior = self.behavior;
        let s = shared.clone();
        rt.spawn(async move {
            let listener = TcpListener::from_std(std_listener).expect("tokio listener");
            loop {
                let (tcp, peer) = match listener.accept().await {
                    Ok(x) => x,
                    Err(_) => continue,
                };
                update(&s, |st| st.tcp_accepts += 1);
                let acceptor = acceptor.clone();
                let behavior = behavior.clone();
                let s = s.clone();
                tokio::spawn(async move {
                    let tls =
                        match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp))
                            .await
                        {
                            Ok(Ok(tls)) => tls,
                            Ok(Err(e)) => {
                                update(&s, |st| st.handshake_errors.push(e.to_string()));
                                return;
                            }
                            Err(_) => {
                                update(&s, |st| st.handshake_errors.push("timeout".into()));
                                return;
                            }
                        };
                    let conn = tls.get_ref().1;
                    let hs = Handshake {
                        peer,
                        sni: conn.server_name().map(str::to_string),
                        alpn: conn
                            .alpn_protocol()
                            .map(|p| String::from_utf8_lossy(p).into_owned()),
                        client_cert: conn.peer_certificates().is_some_and(|c| !c.is_empty()),
                        version: format!("{:?}", conn.protocol_version()),
                        resumed: conn.handshake_kind() == Some(HandshakeKind::Resumed),
                        kx: conn
                            .negotiated_key_exchange_group()
                            .map(|g| format!("{:?}", g.name()))
                            .unwrap_or_default(),
                    };
                    let mut index = 0;
                    update(&s, |st| {
                        st.handshakes.push(hs.clone());
                        index = st.handshakes.len() - 1;
                    });
                    let fin = serve(tls, &hs, behavior, &s, index).await;
                    update(&s, |st| st.finished.push(fin));
                });
            }
        });
        TlsServer {
            addr,
            shared,
            rt: Some(rt),
        }
    }
}

fn update(s: &Shared, f: impl FnOnce(&mut ServerState)) {
    f(&mut s.lock().unwrap());
}

/// Reads until EOF, waits `delay`, writes `answer` and closes.
async fn answer_after_eof<S>(
    tls: &mut tokio_rustls::server::TlsStream<S>,
    fin: &mut Finished,
    delay: Duration,
    answer: &[u8],
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    if let Err(e) = read_to_eof(tls, fin).await {
        fin.error = Some(e.to_string());
        return;
    }
    // Time is the behaviour here: a master still working after the client has finished.
    tokio::time::sleep(delay).await;
    if let Err(e) = tls.write_all(answer).await {
        fin.error = Some(e.to_string());
    }
    let _ = tls.shutdown().await;
}

/// Echoes every byte until EOF, then closes (close_notify + FIN).
async fn echo<S>(tls: &mut tokio_rustls::server::TlsStream<S>, fin: &mut Finished)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match tls.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => {
                record(fin, &buf[..n]);
                if let Err(e) = tls.write_all(&buf[..n]).await {
                    fin.error = Some(e.to_string());
                    return;
                }
                let _ = tls.flush().await;
            }
            Err(e) => {
                fin.error = Some(e.to_string());
                return;
            }
        }
    }
    let _ = tls.shutdown().await;
}

async fn serve<S>(
    mut tls: tokio_rustls::server::TlsStream<S>,
    hs: &Handshake,
    b: Behavior,
    shared: &Shared,
    index: usize,
) -> Finished
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut fin = Finished::default();
    match b {
        Behavior::CloseIdle(after) => {
            let mut buf = vec![0u8; 64 * 1024];
            match tokio::time::timeout(after, tls.read(&mut buf)).await {
                Err(_) => {
                    let _ = tls.shutdown().await;
                    fin.error = Some("closed idle".into());
                    return fin;
                }
                Ok(Ok(0)) => return fin,
                Ok(Ok(n)) => {
                    record(&mut fin, &buf[..n]);
                    if tls.write_all(&buf[..n]).await.is_err() {
                        return fin;
                    }
                }
                Ok(Err(e)) => {
                    fin.error = Some(e.to_string());
                    return fin;
                }
            }
            echo(&mut tls, &mut fin).await;
        }
        Behavior::Echo => echo(&mut tls, &mut fin).await,
        Behavior::AnswerAfterEof(answer) => {
            answer_after_eof(&mut tls, &mut fin, Duration::ZERO, &answer).await
        }
        Behavior::AnswerLateAfterEof(delay, answer) => {
            answer_after_eof(&mut tls, &mut fin, delay, &answer).await
        }
        Behavior::GreetThenHalfClose(greeting) => {
            if let Err(e) = tls.write_all(&greeting).await {
                fin.error = Some(e.to_string());
                return fin;
            }
            let _ = tls.shutdown().await;
            if let Err(e) = read_to_eof(&mut tls, &mut fin).await {
                fin.error = Some(e.to_string());
            }
        }
        Behavior::ReplyThenDropWithoutCloseNotify { expect, reply } => {
            let mut buf = vec![0u8; expect];
            if let Err(e) = tls.read_exact(&mut buf).await {
                fin.error = Some(e.to_string());
                return fin;
            }
            record(&mut fin, &buf);
            let _ = tls.write_all(&reply).await;
            let _ = tls.flush().await;
            let (tcp, _conn) = tls.into_inner();
            drop(tcp);
        }
        Behavior::Hash { send, seed } => {
            let (mut r, mut w) = tokio::io::split(tls);
            let reader = async {
                let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
                let mut buf = vec![0u8; 64 * 1024];
                let mut n_total = 0u64;
                loop {
                    match r.read(&mut buf).await {
                        Ok(0) => break Ok((n_total, ctx.finish().as_ref().to_vec())),
                        Ok(n) => {
                            ctx.update(&buf[..n]);
                            n_total += n as u64;
                        }
                        Err(e) => break Err(e),
                    }
                }
            };
            let writer = async {
                let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
                let mut pattern = Pattern::new(seed);
                let mut buf = vec![0u8; 64 * 1024];
                let mut left = send;
                while left > 0 {
                    let n = left.min(buf.len() as u64) as usize;
                    pattern.fill(&mut buf[..n]);
                    ctx.update(&buf[..n]);
                    w.write_all(&buf[..n]).await?;
                    left -= n as u64;
                }
                w.shutdown().await?;
                Ok::<_, std::io::Error>(ctx.finish().as_ref().to_vec())
            };
            let (rr, wr) = tokio::join!(reader, writer);
            match rr {
                Ok((n, sha)) => {
                    fin.received = n;
                    fin.received_sha256 = sha;
                }
                Err(e) => fin.error = Some(format!("read: {e}")),
            }
            match wr {
                Ok(sha) => fin.sent_sha256 = sha,
                Err(e) => fin.error = Some(format!("write: {e}")),
            }
        }
        Behavior::Http => {
            let result = if hs.alpn.as_deref() == Some("h2") {
                http::serve_h2(&mut tls, "alpn=h2").await
            } else {
                let alpn = hs.alpn.clone().unwrap_or_default();
                http::serve_http1(&mut tls, &format!("alpn={alpn}")).await
            };
            if let Err(e) = result {
                fin.error = Some(e.to_string());
            }
            let _ = tls.shutdown().await;
        }
        Behavior::HttpRecord => {
            if let Err(e) = serve_recorded_http(tls, shared.clone(), index).await {
                fin.error = Some(e.to_string());
            }
        }
        Behavior::Hold => {
            if let Err(e) = read_to_eof(&mut tls, &mut fin).await {
                fin.error = Some(e.to_string());
                return fin;
            }
            std::future::pending::<()>().await;
        }
    }
    fin
}

/// `Behavior::HttpRecord` on one connection: hyper's HTTP/1.1 server with keep-alive until
/// the client closes.
async fn serve_recorded_http<S>(
    tls: tokio_rustls::server::TlsStream<S>,
    shared: Shared,
    connection: usize,
) -> Result<(), hyper::Error>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    use http_body_util::{BodyExt, Full};
    use hyper::body::{Bytes, Incoming};
    use hyper::{Request, Response};

    let count = Arc::new(Mutex::new(0usize));
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let shared = shared.clone();
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
            update(&shared, |st| {
                st.requests.push(HttpRequest {
                    connection,
                    method: parts.method.to_string(),
                    path: parts.uri.to_string(),
                    headers,
                    body,
                })
            });
            Ok::<_, hyper::Error>(
                Response::builder()
                    .status(200)
                    .header("content-type", "application/json")
                    .body(Full::new(Bytes::from(format!("{{\"received\":{n}}}"))))
                    .unwrap(),
            )
        }
    });
    hyper::server::conn::http1::Builder::new()
        .keep_alive(true)
        .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
        .await
}

fn record(fin: &mut Finished, data: &[u8]) {
    fin.received += data.len() as u64;
    let room = (1usize << 20).saturating_sub(fin.received_data.len());
    fin.received_data
        .extend_from_slice(&data[..data.len().min(room)]);
}

async fn read_to_eof<R: AsyncRead + Unpin>(r: &mut R, fin: &mut Finished) -> std::io::Result<()> {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = r.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        record(fin, &buf[..n]);
    }
}

pub struct TlsServer {
    pub addr: SocketAddr,
    shared: Shared,
    rt: Option<tokio::runtime::Runtime>,
}

impl TlsServer {
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn state(&self) -> ServerState {
        self.shared.lock().unwrap().clone()
    }

    /// Waits until `f` returns Some, or panics after `timeout` with the state seen.
    pub fn wait<T>(
        &self,
        what: &str,
        timeout: Duration,
        mut f: impl FnMut(&ServerState) -> Option<T>,
    ) -> T {
        wait_until(&format!("the test server's {what}"), timeout, || {
            f(&self.shared.lock().unwrap()).ok_or(Later(|| {
                format!("state: {:#?}", *self.shared.lock().unwrap())
            }))
        })
    }

    /// Waits for the `n`-th (1-based) successful handshake and returns it.
    pub fn handshake(&self, n: usize) -> Handshake {
        self.wait(&format!("handshake #{n}"), Duration::from_secs(10), |st| {
            st.handshakes.get(n - 1).cloned()
        })
    }

    /// Waits for the `n`-th (1-based) connection to finish its behaviour.
    pub fn finished(&self, n: usize) -> Finished {
        self.wait(
            &format!("connection #{n} to finish"),
            Duration::from_secs(20),
            |st| st.finished.get(n - 1).cloned(),
        )
    }

    /// Waits for the `n`-th failed handshake and returns its error.
    pub fn handshake_error(&self, n: usize) -> String {
        self.wait(
            &format!("handshake error #{n}"),
            Duration::from_secs(10),
            |st| st.handshake_errors.get(n - 1).cloned(),
        )
    }
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

/// A TCP port on 127.0.0.1 on which nothing listens (connections are refused).
pub fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// A listener whose accept queue is full and that never accepts: further SYNs are
/// dropped, so connecting to it hangs until the connector's own timeout.
pub struct BlackHole {
    pub addr: SocketAddr,
    _listener: socket2::Socket,
    _fillers: Vec<std::net::TcpStream>,
}

impl BlackHole {
    pub fn new() -> BlackHole {
        use socket2::{Domain, Socket, Type};
        let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        s.bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
            .unwrap();
        s.listen(0).unwrap();
        let addr = s.local_addr().unwrap().as_socket().unwrap();
        let mut fillers = Vec::new();
        // Fill the accept queue until a connect attempt goes unanswered: that proves
        // the next SYN (the proxy's) is dropped too.
        for _ in 0..16 {
            match std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(300)) {
                Ok(c) => fillers.push(c),
                Err(_) => {
                    return BlackHole {
                        addr,
                        _listener: s,
                        _fillers: fillers,
                    }
                }
            }
        }
        panic!("could not fill the accept queue of a backlog-0 listener");
    }
}

/// A plain TCP server that accepts and reads but never says anything (a master that
/// never answers the TLS handshake). Counts accepts.
pub struct SilentServer {
    pub addr: SocketAddr,
    accepts: Arc<Mutex<usize>>,
}

impl SilentServer {
    pub fn new() -> SilentServer {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let accepts = Arc::new(Mutex::new(0usize));
        let a = accepts.clone();
        std::thread::spawn(move || {
            let mut held = Vec::new();
            for s in l.incoming().flatten() {
                held.push(s);
                *a.lock().unwrap() += 1;
            }
        });
        SilentServer { addr, accepts }
    }

    pub fn accepts(&self) -> usize {
        *self.accepts.lock().unwrap()
    }
}

/// A plain TCP echo server (a master with TLS disabled). Counts accepts.
pub struct PlainEcho {
    pub addr: SocketAddr,
}

impl PlainEcho {
    pub fn new() -> PlainEcho {
        use std::io::{Read, Write};
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        std::thread::spawn(move || {
            for mut s in l.incoming().flatten() {
                std::thread::spawn(move || {
                    let mut buf = [0u8; 16 * 1024];
                    loop {
                        match s.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                if s.write_all(&buf[..n]).is_err() {
                                    break;
                                }
                            }
                        }
                    }
                    let _ = s.shutdown(std::net::Shutdown::Write);
                });
            }
        });
        PlainEcho { addr }
    }
}
