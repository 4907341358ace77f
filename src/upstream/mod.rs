//! The way to the master: resolve afresh for every client, try each address within
//! `timeouts.connect`, then the TLS handshake within `timeouts.handshake`. Every failure
//! becomes an [`UpstreamError`] whose kind labels metrics and whose text an operator can act on.

use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::ServerName;
use rustls::ClientConfig;
use socket2::{SockRef, TcpKeepalive};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

mod sniffed;

pub(crate) use sniffed::Sniffed;

use crate::host::parse_host_ip;
use crate::egress::{authority, open_tunnel, Egress, ProxyUrl};
use crate::error_kind::UpstreamErrorKind;
use crate::tls::{cert_failure, FailureKind};
use crate::untrusted::Untrusted;

// === Resolution ===

pub type ResolveFuture = Pin<Box<dyn Future<Output = io::Result<Vec<SocketAddr>>> + Send>>;

/// Name resolution, a seam so tests can point a name somewhere else mid-run.
pub trait Resolve: Send + Sync + 'static {
    fn resolve(&self, host: &str, port: u16) -> ResolveFuture;
}

/// The system resolver (getaddrinfo), asked again for every connection.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct SystemResolver;

impl Resolve for SystemResolver {
    fn resolve(&self, host: &str, port: u16) -> ResolveFuture {
        if let Some(ip) = parse_host_ip(host) {
            return Box::pin(async move { Ok(vec![SocketAddr::new(ip, port)]) });
        }
        let host = host.to_string();
        Box::pin(async move {
            Ok(tokio::net::lookup_host((host.as_str(), port))
                .await?
                .collect())
        })
    }
}

// === Errors ===

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("no address for {host}: {source}")]
    Resolve { host: String, source: io::Error },
    #[error("no address for {host}: the name resolved to nothing")]
    NoAddress { host: String },
    #[error("cannot connect to the master: {}", describe_attempts(.attempts))]
    Connect { attempts: Vec<Attempt> },
    #[error("cannot connect to the proxy {proxy} (upstream_proxy from {source_name}): {}", describe_attempts(.attempts))]
    ProxyConnect {
        proxy: String,
        source_name: String,
        attempts: Vec<Attempt>,
    },
    #[error("the proxy {proxy} refused a tunnel to {target}: {status_line}; {hint}")]
    ProxyRefused {
        proxy: String,
        target: String,
        status_line: String,
        hint: String,
        kind: UpstreamErrorKind,
    },
    #[error(
        "TLS handshake with {addr} did not finish within {timeout:?} (is the port speaking TLS?)"
    )]
    HandshakeTimeout { addr: String, timeout: Duration },
    #[error("TLS handshake with {addr} failed: {detail}")]
    Handshake {
        addr: String,
        detail: String,
        kind: HandshakeFailure,
    },
}

/// Why a TLS handshake with the master failed, as counted in `upstream_errors_total{kind}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeFailure {
    /// The master's certificate did not verify.
    Cert(FailureKind),
    /// The master's port answered in plaintext HTTP.
    Plaintext,
    /// Bytes that are not TLS.
    Protocol,
    /// The master sent an alert.
    Alert,
    /// The master closed or reset the connection mid-handshake.
    Eof,
    Reset,
    Other,
}

impl HandshakeFailure {
    pub fn kind(self) -> UpstreamErrorKind {
        match self {
            HandshakeFailure::Cert(k) => k.kind(),
            HandshakeFailure::Plaintext => UpstreamErrorKind::Plaintext,
            HandshakeFailure::Protocol => UpstreamErrorKind::TlsProtocol,
            HandshakeFailure::Alert => UpstreamErrorKind::TlsAlert,
            HandshakeFailure::Eof => UpstreamErrorKind::TlsEof,
            HandshakeFailure::Reset => UpstreamErrorKind::TlsReset,
            HandshakeFailure::Other => UpstreamErrorKind::Tls,
        }
    }

    pub(crate) fn is_cert(self) -> bool {
        matches!(self, HandshakeFailure::Cert(_))
    }
}

/// One address tried, its outcome and how long it took.
#[derive(Debug, Clone)]
pub struct Attempt {
    pub addr: SocketAddr,
    pub elapsed: Duration,
    pub result: AttemptResult,
}

/// How one address answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttemptResult {
    Connected,
    /// Nothing listening: the master is down or the port is wrong.
    Refused,
    /// No answer within `timeouts.connect`.
    TimedOut(Duration),
    /// Any other error, in its own words.
    Failed(String),
}

impl fmt::Display for AttemptResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AttemptResult::Connected => f.write_str("connected"),
            AttemptResult::Refused => f.write_str("connection refused (nothing listening)"),
            AttemptResult::TimedOut(t) => write!(f, "no answer within {t:?} (timeouts.connect)"),
            AttemptResult::Failed(e) => f.write_str(e),
        }
    }
}

fn describe_attempts(attempts: &[Attempt]) -> String {
    attempts
        .iter()
        .map(|a| format!("{}: {}", a.addr, a.result))
        .collect::<Vec<_>>()
        .join("; ")
}

impl UpstreamError {
    /// The `kind` of `upstream_errors_total`.
    pub fn kind(&self) -> UpstreamErrorKind {
        match self {
            UpstreamError::Resolve { .. } | UpstreamError::NoAddress { .. } => {
                UpstreamErrorKind::Resolve
            }
            UpstreamError::Connect { attempts } => {
                if attempts.iter().all(|a| a.result == AttemptResult::Refused) {
                    UpstreamErrorKind::ConnectRefused
                } else if attempts
                    .iter()
                    .all(|a| matches!(a.result, AttemptResult::TimedOut(_)))
                {
                    UpstreamErrorKind::ConnectTimeout
                } else {
                    UpstreamErrorKind::Connect
                }
            }
            UpstreamError::ProxyConnect { .. } => UpstreamErrorKind::ProxyConnect,
            UpstreamError::ProxyRefused { kind, .. } => *kind,
            UpstreamError::HandshakeTimeout { .. } => UpstreamErrorKind::HandshakeTimeout,
            UpstreamError::Handshake { kind, .. } => kind.kind(),
        }
    }
}

/// Describes a failed handshake; a certificate problem says what the certificate holds, and
/// a master port that answered in plaintext says so.
pub fn handshake_error(addr: String, e: io::Error, first: Untrusted<&[u8]>) -> UpstreamError {
    if first.raw().starts_with(b"HTTP/") || first.raw().starts_with(b"<") {
        return UpstreamError::Handshake {
            addr,
            detail: format!(
                "the master's port answered in plaintext: it looks like plaintext HTTP ({first:?}...), not TLS; set master_port to the master's TLS port, or security.tls.enabled: false if the master has no TLS"
            ),
            kind: HandshakeFailure::Plaintext,
        };
    }
    if let Some(f) = cert_failure(&e) {
        return UpstreamError::Handshake {
            addr,
            detail: f.to_string(),
            kind: HandshakeFailure::Cert(f.kind),
        };
    }
    let inner = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>());
    let (kind, detail) = match inner {
        Some(rustls::Error::InvalidMessage(_)) => (
            HandshakeFailure::Protocol,
            format!("{e}: the master's port did not answer with TLS; check master_port"),
        ),
        Some(rustls::Error::AlertReceived(alert)) => (
            HandshakeFailure::Alert,
            format!(
                "the master refused the handshake with alert {alert:?}{}",
                match alert {
                    rustls::AlertDescription::CertificateRequired | rustls::AlertDescription::BadCertificate | rustls::AlertDescription::UnknownCA =>
                        " (it may require a client certificate: set security.tls.client_cert and client_key)",
                    _ => "",
                }
            ),
        ),
        Some(rustls::Error::InvalidCertificate(c)) => (HandshakeFailure::Cert(FailureKind::Other), format!("certificate rejected: {c:?}")),
        Some(other) => (HandshakeFailure::Other, other.to_string()),
        None => match e.kind() {
            io::ErrorKind::UnexpectedEof => (HandshakeFailure::Eof, "the master closed the connection during the handshake".to_string()),
            io::ErrorKind::ConnectionReset => (HandshakeFailure::Reset, "the master reset the connection during the handshake".to_string()),
            _ => (HandshakeFailure::Other, e.to_string()),
        },
    };
    UpstreamError::Handshake { addr, detail, kind }
}

// === Dialling ===

/// How the master is reached: its address, the resolver and the time limits.
#[derive(Clone)]
pub struct Upstream {
    pub host: String,
    pub port: u16,
    pub connect_timeout: Duration,
    pub handshake_timeout: Duration,
    pub resolver: Arc<dyn Resolve>,
    /// The HTTP proxy to tunnel through, and the hosts that bypass it.
    pub egress: Egress,
}

/// A verified TLS session with the master, over its socket as rustls sees it.
pub(crate) type MasterTls = TlsStream<Sniffed<TcpStream>>;

/// A TCP connection to the master (direct, or a tunnel through the proxy) and what it took
/// to get there.
pub struct Dialed {
    pub stream: TcpStream,
    /// The address connected to: the master's, or the proxy's for a tunnel.
    pub addr: SocketAddr,
    /// The proxy tunnelled through (its URL without the password).
    pub via: Option<String>,
    pub attempts: Vec<Attempt>,
    pub(crate) connect_time: Duration,
}

impl Dialed {
    /// The master as logs name it: its address, or its configured name and the proxy.
    pub fn peer(&self, host: &str, port: u16) -> String {
        match &self.via {
            None => self.addr.to_string(),
            Some(via) => format!("{} via {via}", crate::egress::authority(host, port)),
        }
    }
}

impl Upstream {
    /// The master of `config`, reached through `resolver`.
    pub(crate) fn for_config(config: &crate::config::Config, resolver: Arc<dyn Resolve>) -> Upstream {
        Upstream {
            host: config.master.host.clone(),
            port: config.master.port,
            connect_timeout: config.timeouts.connect,
            handshake_timeout: config.timeouts.handshake,
            resolver,
            egress: config.egress.clone(),
        }
    }

    async fn resolve(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, UpstreamError> {
        let addrs = self
            .resolver
            .resolve(host, port)
            .await
            .map_err(|source| UpstreamError::Resolve {
                host: host.to_string(),
                source,
            })?;
        if addrs.is_empty() {
            return Err(UpstreamError::NoAddress {
                host: host.to_string(),
            });
        }
        Ok(addrs)
    }

    /// The master's address as logs name it, for a connection `dialed` made.
    pub fn peer(&self, dialed: &Dialed) -> String {
        dialed.peer(&self.host, self.port)
    }

    /// A TCP connection to the master: direct, or through the proxy when `upstream_proxy`
    /// applies to it.
    pub async fn connect(&self) -> Result<Dialed, UpstreamError> {
        match self.egress.route(&self.host, self.port) {
            None => self.connect_to(&self.host, self.port).await,
            // Boxed: the tunnel's state (its answer buffer among it) would otherwise enlarge
            // every connection's task, tunnelled or not, for the connection's whole life.
            Some(proxy) => Box::pin(self.connect_via(proxy)).await,
        }
    }

    /// Connects to the proxy, then asks it for a tunnel to the master by the master's name
    /// as configured (the proxy resolves it), each step within `connect_timeout`.
    async fn connect_via(&self, proxy: &ProxyUrl) -> Result<Dialed, UpstreamError> {
        let shown = proxy.to_string();
        let mut dialed = match self.connect_to(&proxy.host, proxy.port).await {
            Ok(d) => d,
            Err(UpstreamError::Connect { attempts }) => {
                return Err(UpstreamError::ProxyConnect {
                    proxy: shown,
                    source_name: self.egress.source.clone(),
                    attempts,
                })
            }
            Err(e) => return Err(e),
        };
        let started = Instant::now();
        let target = authority(&self.host, self.port);
        let asked = open_tunnel(&mut dialed.stream, proxy, &self.host, self.port);
        let refused = |status_line: String, hint: String, kind| UpstreamError::ProxyRefused {
            proxy: shown.clone(),
            target: target.clone(),
            status_line,
            hint,
            kind,
        };
        match tokio::time::timeout(self.connect_timeout, asked).await {
            Ok(Ok(())) => {}
            Ok(Err(r)) => {
                let hint = r.hint(proxy, &target);
                return Err(refused(r.status_line.clone(), hint, r.kind()));
            }
            Err(_) => {
                return Err(refused(
                    format!(
                        "no answer to CONNECT within {:?} (timeouts.connect)",
                        self.connect_timeout
                    ),
                    "the proxy may be slow to reach the master, or not an HTTP proxy".into(),
                    UpstreamErrorKind::ProxyTimeout,
                ))
            }
        }
        dialed.connect_time += started.elapsed();
        dialed.via = Some(shown);
        Ok(dialed)
    }

    /// Tries every address of `host` in turn, each within `connect_timeout`.
    async fn connect_to(&self, host: &str, port: u16) -> Result<Dialed, UpstreamError> {
        let addrs = self.resolve(host, port).await?;
        let mut attempts = Vec::new();
        for addr in addrs {
            let started = Instant::now();
            let result = tokio::time::timeout(self.connect_timeout, TcpStream::connect(addr)).await;
            let elapsed = started.elapsed();
            match result {
                Ok(Ok(stream)) => {
                    tune(&stream);
                    attempts.push(Attempt {
                        addr,
                        elapsed,
                        result: AttemptResult::Connected,
                    });
                    return Ok(Dialed {
                        stream,
                        addr,
                        via: None,
                        attempts,
                        connect_time: elapsed,
                    });
                }
                Ok(Err(e)) => attempts.push(Attempt {
                    addr,
                    elapsed,
                    result: if e.kind() == io::ErrorKind::ConnectionRefused {
                        AttemptResult::Refused
                    } else {
                        AttemptResult::Failed(e.to_string())
                    },
                }),
                Err(_) => attempts.push(Attempt {
                    addr,
                    elapsed,
                    result: AttemptResult::TimedOut(self.connect_timeout),
                }),
            }
        }
        Err(UpstreamError::Connect { attempts })
    }

    /// Connects and runs the TLS handshake, as the data path does (the admin probe, `check`
    /// and `trust` dial this way).
    pub(crate) async fn dial_tls(
        &self,
        config: Arc<ClientConfig>,
        name: ServerName<'static>,
    ) -> Result<MasterTls, UpstreamError> {
        Ok(self.dial_tls_peer(config, name).await?.0)
    }

    /// As [`Upstream::dial_tls`], with the master as logs name it (the preconnect pool).
    pub(crate) async fn dial_tls_peer(
        &self,
        config: Arc<ClientConfig>,
        name: ServerName<'static>,
    ) -> Result<(MasterTls, String), UpstreamError> {
        let dialed = self.connect().await?;
        let peer = self.peer(&dialed);
        Ok((self.handshake(dialed, config, name).await?, peer))
    }

    /// The TLS handshake on a connection `connect` made. Through a tunnel, a write shutdown
    /// toward the master is its close_notify alone: an egress proxy would take a TCP FIN as
    /// the end of the whole tunnel (squid does) and cut the master's answer still coming.
    pub async fn handshake(
        &self,
        dialed: Dialed,
        config: Arc<ClientConfig>,
        name: ServerName<'static>,
    ) -> Result<MasterTls, UpstreamError> {
        let peer = self.peer(&dialed);
        let mut io = Sniffed::new(dialed.stream);
        io.hold_fin = dialed.via.is_some();
        let connector = TlsConnector::from(config);
        let connect = connector.connect(name, io).into_fallible();
        match tokio::time::timeout(self.handshake_timeout, connect).await {
            Ok(Ok(mut tls)) => {
                // Room for one relay read's worth of records, so a read becomes one write.
                tls.get_mut().1.set_buffer_limit(Some(crate::relay::CHUNK));
                Ok(tls)
            }
            Ok(Err((e, io))) => Err(handshake_error(peer.to_string(), e, io.first())),
            Err(_) => Err(UpstreamError::HandshakeTimeout {
                addr: peer.to_string(),
                timeout: self.handshake_timeout,
            }),
        }
    }
}

/// TCP_NODELAY (each TLS record goes out at once) and keepalive (a dead master is noticed on
/// long-idle agent connections).
pub(crate) fn tune(stream: &TcpStream) {
    let _ = stream.set_nodelay(true);
    let ka = TcpKeepalive::new()
        .with_time(Duration::from_secs(60))
        .with_interval(Duration::from_secs(15))
        .with_retries(4);
    let _ = SockRef::from(stream).set_tcp_keepalive(&ka);
}

/// `TLSv1.3` / `TLSv1.2`, as operators search for them.
pub(crate) fn version_name(v: Option<rustls::ProtocolVersion>) -> &'static str {
    match v {
        Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3",
        Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2",
        Some(_) => "TLS",
        None => "",
    }
}
