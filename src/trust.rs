//! Trust: the roots (system or `master_cert`), the `skip_verify` verifier, the name verified
//! and sent as SNI, client certificates, and the rustls `ClientConfig`s built from them. A
//! verification failure is turned into a [`CertFailure`] that says what the certificate holds.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{
    ClientSessionMemoryCache, ClientSessionStore, Resumption, Tls12ClientSessionValue,
    Tls13ClientSessionValue, WebPkiServerVerifier,
};
use rustls::crypto::{aws_lc_rs, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, NamedGroup, OtherError, RootCertStore,
    SignatureScheme,
};

use crate::config::{parse_host_ip, Config, MasterConfig, TlsSettings};
use crate::diagnose::CertSummary;

/// Servers whose kx hints and TLS 1.2 sessions are remembered (one master, a few names).
const SESSION_CACHE_SIZE: usize = 64;
/// TLS 1.3 tickets kept per server name. Each is used once; an agent host opening many
/// connections at once (a reconnect storm, a burst of task log shipments) needs many at hand,
/// more than rustls' own cache keeps (8), or most of the burst makes full handshakes.
const TICKETS_PER_SERVER: usize = 256;

// === Session store ===

/// The one session store behind every listener and ALPN choice: rustls' memory cache for kx
/// hints and TLS 1.2 sessions, and a deeper queue of single-use TLS 1.3 tickets.
#[derive(Debug)]
pub struct SessionStore {
    inner: ClientSessionMemoryCache,
    tickets: std::sync::Mutex<
        std::collections::HashMap<
            ServerName<'static>,
            std::collections::VecDeque<Tls13ClientSessionValue>,
        >,
    >,
}

impl SessionStore {
    pub fn new() -> SessionStore {
        SessionStore {
            inner: ClientSessionMemoryCache::new(SESSION_CACHE_SIZE),
            tickets: std::sync::Mutex::new(std::collections::HashMap::new()),
        }
    }

    /// TLS 1.3 tickets held for `name`.
    pub fn tickets(&self, name: &ServerName<'static>) -> usize {
        let map = self.tickets.lock().unwrap_or_else(|p| p.into_inner());
        map.get(name).map(|q| q.len()).unwrap_or(0)
    }
}

impl Default for SessionStore {
    fn default() -> Self {
        Self::new()
    }
}

impl ClientSessionStore for SessionStore {
    fn set_kx_hint(&self, server_name: ServerName<'static>, group: NamedGroup) {
        self.inner.set_kx_hint(server_name, group)
    }
    fn kx_hint(&self, server_name: &ServerName<'_>) -> Option<NamedGroup> {
        self.inner.kx_hint(server_name)
    }
    fn set_tls12_session(&self, server_name: ServerName<'static>, value: Tls12ClientSessionValue) {
        self.inner.set_tls12_session(server_name, value)
    }
    fn tls12_session(&self, server_name: &ServerName<'_>) -> Option<Tls12ClientSessionValue> {
        self.inner.tls12_session(server_name)
    }
    fn remove_tls12_session(&self, server_name: &ServerName<'static>) {
        self.inner.remove_tls12_session(server_name)
    }
    fn insert_tls13_ticket(
        &self,
        server_name: ServerName<'static>,
        value: Tls13ClientSessionValue,
    ) {
        let mut map = self.tickets.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= SESSION_CACHE_SIZE && !map.contains_key(&server_name) {
            map.clear();
        }
        let queue = map.entry(server_name).or_default();
        if queue.len() >= TICKETS_PER_SERVER {
            queue.pop_front();
        }
        queue.push_back(value);
    }
    fn take_tls13_ticket(
        &self,
        server_name: &ServerName<'static>,
    ) -> Option<Tls13ClientSessionValue> {
        // Newest first: the least likely to have expired.
        let mut map = self.tickets.lock().unwrap_or_else(|p| p.into_inner());
        map.get_mut(server_name).and_then(|q| q.pop_back())
    }
}

// === Errors ===

#[derive(Debug, thiserror::Error)]
pub enum PemError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is empty")]
    Empty { path: PathBuf },
    #[error("{path} holds no PEM certificate (expected -----BEGIN CERTIFICATE-----)")]
    NoCertificate { path: PathBuf },
    #[error(
        "{path} holds no PEM private key (expected -----BEGIN PRIVATE KEY----- or an RSA/EC key)"
    )]
    NoKey { path: PathBuf },
    #[error("{path} is not valid PEM: {detail}")]
    Malformed { path: PathBuf, detail: String },
}

#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    #[error("security.tls.master_cert: {0}")]
    MasterCert(PemError),
    #[error("security.tls.client_cert: {0}")]
    ClientCert(PemError),
    #[error("security.tls.client_key: {0}")]
    ClientKey(PemError),
    #[error(
        "security.tls.master_cert: no certificate in {0} could be used as a trust anchor: {1}"
    )]
    BadAnchor(PathBuf, String),
    #[error("no system root certificates found and security.tls.master_cert is not set; set it to the master's CA bundle")]
    NoSystemRoots,
    #[error(
        "security.tls.client_key does not match security.tls.client_cert, or is unsupported: {0}"
    )]
    ClientAuth(rustls::Error),
    #[error("TLS setup failed: {0}")]
    Tls(rustls::Error),
}

fn read_pem(path: &Path) -> Result<Vec<u8>, PemError> {
    let bytes = std::fs::read(path).map_err(|source| PemError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    if bytes.iter().all(|b| b.is_ascii_whitespace()) {
        return Err(PemError::Empty {
            path: path.to_path_buf(),
        });
    }
    Ok(bytes)
}

/// Every certificate in a PEM bundle, in order.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, PemError> {
    let bytes = read_pem(path)?;
    certs_from_pem(path, &bytes)
}

pub fn certs_from_pem(path: &Path, bytes: &[u8]) -> Result<Vec<CertificateDer<'static>>, PemError> {
    let mut certs = Vec::new();
    for item in CertificateDer::pem_slice_iter(bytes) {
        match item {
            Ok(c) => certs.push(c),
            Err(e) => {
                return Err(PemError::Malformed {
                    path: path.to_path_buf(),
                    detail: e.to_string(),
                })
            }
        }
    }
    if certs.is_empty() {
        return Err(PemError::NoCertificate {
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}

pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, PemError> {
    let bytes = read_pem(path)?;
    match PrivateKeyDer::from_pem_slice(&bytes) {
        Ok(k) => Ok(k),
        Err(rustls::pki_types::pem::Error::NoItemsFound) => Err(PemError::NoKey {
            path: path.to_path_buf(),
        }),
        Err(e) => Err(PemError::Malformed {
            path: path.to_path_buf(),
            detail: e.to_string(),
        }),
    }
}

// === Name choice ===

/// Why a name was chosen: the order of DESIGN.md's rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NameReason {
    /// `security.tls.master_cert_name` was set.
    Override,
    /// `master_host` is a DNS name.
    DnsHost,
    /// `master_host` is an IP; the first DNS name of the leaf in `master_cert` stands in.
    Substituted { from: PathBuf },
    /// `master_host` is an IP checked against the certificate's IP SANs; no SNI is sent.
    IpSan,
}

impl fmt::Display for NameReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NameReason::Override => write!(f, "security.tls.master_cert_name"),
            NameReason::DnsHost => write!(f, "master_host is a DNS name"),
            NameReason::Substituted { from } => {
                write!(
                    f,
                    "substituted: first DNS name of the certificate in {}",
                    from.display()
                )
            }
            NameReason::IpSan => write!(
                f,
                "master_host is an IP: checked against the certificate's IP SANs, no SNI"
            ),
        }
    }
}

/// The identity verified, and (separately) what is sent as SNI: rustls sends SNI only for DNS
/// names, so an IP identity goes out with none, as RFC 6066 requires.
#[derive(Debug, Clone)]
pub struct NameChoice {
    pub server_name: ServerName<'static>,
    pub reason: NameReason,
}

impl NameChoice {
    pub fn sni(&self) -> Option<String> {
        match &self.server_name {
            ServerName::DnsName(d) => Some(d.as_ref().to_string()),
            _ => None,
        }
    }
    pub fn name(&self) -> String {
        server_name_text(&self.server_name).unwrap_or_default()
    }
}

/// The DNS name or IP address a `ServerName` holds, as text.
fn server_name_text(name: &ServerName<'_>) -> Option<String> {
    match name {
        ServerName::DnsName(d) => Some(d.as_ref().to_string()),
        ServerName::IpAddress(ip) => Some(std::net::IpAddr::from(*ip).to_string()),
        _ => None,
    }
}

/// The end-entity certificate of a bundle: the first that is not a CA, else the first.
fn bundle_leaf(certs: &[CertificateDer<'static>]) -> Option<CertSummary> {
    let summaries: Vec<CertSummary> = certs
        .iter()
        .filter_map(|c| CertSummary::from_der(c))
        .collect();
    summaries
        .iter()
        .find(|s| !s.is_ca && !s.dns_names.is_empty())
        .or_else(|| summaries.iter().find(|s| !s.is_ca))
        // `openssl req -x509` marks a self-signed master certificate CA:TRUE.
        .or_else(|| {
            summaries
                .iter()
                .find(|s| s.self_signed && !s.dns_names.is_empty())
        })
        .cloned()
}

pub fn choose_name(
    master: &MasterConfig,
    tls: &TlsSettings,
    bundle: Option<&[CertificateDer<'static>]>,
) -> NameChoice {
    if let Some(name) = &tls.master_cert_name {
        if let Ok(sn) = ServerName::try_from(name.clone()) {
            return NameChoice {
                server_name: sn,
                reason: NameReason::Override,
            };
        }
    }
    match parse_host_ip(&master.host) {
        None => NameChoice {
            server_name: ServerName::try_from(master.host.clone())
                .unwrap_or_else(|_| ServerName::try_from("invalid.invalid").expect("static name")),
            reason: NameReason::DnsHost,
        },
        Some(ip) => {
            let substitute = bundle
                .and_then(bundle_leaf)
                .and_then(|leaf| leaf.dns_names.into_iter().find(|n| !n.starts_with("*.")))
                .and_then(|n| ServerName::try_from(n).ok());
            match (substitute, &tls.master_cert) {
                (Some(sn), Some(path)) => NameChoice {
                    server_name: sn,
                    reason: NameReason::Substituted { from: path.clone() },
                },
                _ => NameChoice {
                    server_name: ServerName::IpAddress(ip.into()),
                    reason: NameReason::IpSan,
                },
            }
        }
    }
}

// === Verification failures in an operator's terms ===

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    WrongName,
    UnknownIssuer,
    Expired,
    NotYetValid,
    /// The master presents a CA certificate as its own and it is not pinned in master_cert.
    CaAsLeaf,
    Other,
}

impl FailureKind {
    /// The `kind` label of `upstream_errors_total`.
    pub fn label(self) -> &'static str {
        match self {
            FailureKind::WrongName => "cert_name",
            FailureKind::UnknownIssuer => "cert_unknown_issuer",
            FailureKind::Expired => "cert_expired",
            FailureKind::NotYetValid => "cert_not_yet_valid",
            FailureKind::CaAsLeaf => "cert_ca_as_leaf",
            FailureKind::Other => "cert_invalid",
        }
    }
}

/// A certificate the master presented that did not verify, with what it holds.
#[derive(Debug)]
pub struct CertFailure {
    pub kind: FailureKind,
    pub cause: CertificateError,
    pub expected: String,
    pub leaf: Option<CertSummary>,
    /// The last certificate the master sent (where its chain ends).
    pub chain_end: Option<CertSummary>,
}

impl fmt::Display for CertFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let leaf = self.leaf.as_ref();
        match self.kind {
            FailureKind::WrongName => {
                write!(
                    f,
                    "the master's certificate is not valid for {}",
                    self.expected
                )?;
                if let Some(l) = leaf {
                    write!(
                        f,
                        ": it holds {} (issuer {}, {})",
                        l.names(),
                        l.issuer,
                        l.validity()
                    )?;
                    match l.dns_names.first() {
                        Some(n) => write!(f, "; set security.tls.master_cert_name: {n}")?,
                        None => write!(
                            f,
                            "; set master_host to one of its IP addresses, or reissue the certificate with a name for security.tls.master_cert_name"
                        )?,
                    }
                }
                Ok(())
            }
            FailureKind::UnknownIssuer => {
                let end = self.chain_end.as_ref().or(leaf);
                write!(f, "unknown issuer: ")?;
                if let Some(e) = end {
                    write!(
                        f,
                        "the chain ends at {} (issued by {})",
                        e.subject, e.issuer
                    )?;
                } else {
                    write!(f, "the master's certificate chain is not trusted")?;
                }
                if let Some(l) = leaf {
                    write!(f, "; the certificate holds {}", l.names())?;
                }
                write!(
                    f,
                    "; put its root in security.tls.master_cert or run `det-tls-proxy trust`"
                )
            }
            FailureKind::Expired => {
                write!(f, "the master's certificate expired")?;
                if let Some(l) = leaf {
                    write!(
                        f,
                        " on {} ({}; subject {}, issuer {}, holds {})",
                        crate::diagnose::rfc3339(l.not_after),
                        l.validity(),
                        l.subject,
                        l.issuer,
                        l.names()
                    )?;
                }
                write!(f, "; renew it on the master (or check this host's clock)")
            }
            FailureKind::NotYetValid => {
                write!(f, "the master's certificate is not yet valid")?;
                if let Some(l) = leaf {
                    write!(
                        f,
                        " until {} ({}; subject {}, issuer {})",
                        crate::diagnose::rfc3339(l.not_before),
                        l.validity(),
                        l.subject,
                        l.issuer
                    )?;
                }
                write!(f, "; check this host's clock")
            }
            FailureKind::CaAsLeaf => {
                write!(
                    f,
                    "the master presents a CA certificate (CA:TRUE) as its own certificate"
                )?;
                if let Some(l) = leaf {
                    write!(f, " (subject {}, holds {})", l.subject, l.names())?;
                }
                write!(
                    f,
                    "; put exactly that certificate in security.tls.master_cert (run `det-tls-proxy trust`) to pin it, or reissue it as a leaf signed by a CA"
                )
            }
            FailureKind::Other => {
                write!(f, "the master's certificate was rejected: {:?}", self.cause)?;
                if let Some(l) = leaf {
                    write!(f, " ({l})")?;
                }
                Ok(())
            }
        }
    }
}

impl std::error::Error for CertFailure {}

fn classify(e: &CertificateError) -> FailureKind {
    match e {
        CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
            FailureKind::WrongName
        }
        CertificateError::UnknownIssuer => FailureKind::UnknownIssuer,
        CertificateError::Expired | CertificateError::ExpiredContext { .. } => FailureKind::Expired,
        CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
            FailureKind::NotYetValid
        }
        CertificateError::Other(o) if o.0.to_string().contains("CaUsedAsEndEntity") => {
            FailureKind::CaAsLeaf
        }
        _ => FailureKind::Other,
    }
}

/// Finds the [`CertFailure`] inside an error returned by a handshake, if there is one.
pub fn cert_failure<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a CertFailure> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(f) = err.downcast_ref::<CertFailure>() {
            return Some(f);
        }
        if let Some(rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(inner)))) =
            err.downcast_ref::<rustls::Error>()
        {
            if let Some(f) = inner.downcast_ref::<CertFailure>() {
                return Some(f);
            }
        }
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            if let Some(inner) = io.get_ref() {
                cur = Some(inner as &(dyn std::error::Error + 'static));
                continue;
            }
        }
        cur = err.source();
    }
    None
}

/// Wraps the WebPKI verifier so a failure carries what the certificate holds.
#[derive(Debug)]
struct Diagnosing {
    inner: Arc<WebPkiServerVerifier>,
    /// The certificates of `master_cert`. A master certificate that is exactly one of them is
    /// trusted as pinned even where WebPKI path building refuses it: a self-signed certificate
    /// made with `openssl req -x509` is marked CA:TRUE, which WebPKI will not accept as an end
    /// entity, while the agent (Go's crypto/x509) and curl do.
    pinned: Vec<CertificateDer<'static>>,
}

impl Diagnosing {
    fn failure(
        cause: CertificateError,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
    ) -> rustls::Error {
        let leaf = CertSummary::from_der(end_entity);
        let chain_end = intermediates
            .last()
            .and_then(|c| CertSummary::from_der(c))
            .or_else(|| leaf.clone());
        let expected = server_name_text(server_name).unwrap_or_else(|| "the master".into());
        let failure = CertFailure {
            kind: classify(&cause),
            cause,
            expected,
            leaf,
            chain_end,
        };
        rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(failure))))
    }

    /// Verifies a pinned certificate: its validity dates and the name, nothing else to do.
    fn verify_pinned(
        end_entity: &CertificateDer<'_>,
        server_name: &ServerName<'_>,
        now: UnixTime,
    ) -> Result<(), CertificateError> {
        let summary = CertSummary::from_der(end_entity).ok_or(CertificateError::BadEncoding)?;
        let now = now.as_secs() as i64;
        if now > summary.not_after {
            return Err(CertificateError::Expired);
        }
        if now < summary.not_before {
            return Err(CertificateError::NotValidYet);
        }
        let ee = webpki::EndEntityCert::try_from(end_entity)
            .map_err(|_| CertificateError::BadEncoding)?;
        ee.verify_is_valid_for_subject_name(server_name)
            .map_err(|_| CertificateError::NotValidForName)
    }
}

impl ServerCertVerifier for Diagnosing {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            Ok(v) => Ok(v),
            Err(rustls::Error::InvalidCertificate(cause)) => {
                let pinned = self
                    .pinned
                    .iter()
                    .any(|p| p.as_ref() == end_entity.as_ref());
                let cause = if pinned {
                    match Self::verify_pinned(end_entity, server_name, now) {
                        Ok(()) => return Ok(ServerCertVerified::assertion()),
                        Err(e) => e,
                    }
                } else {
                    cause
                };
                Err(Self::failure(cause, end_entity, intermediates, server_name))
            }
            Err(e) => Err(e),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// `skip_verify`: accepts any certificate but still checks that the handshake was signed by
/// its key, so the connection is encrypted to whoever holds that key.
#[derive(Debug)]
pub struct NoVerify {
    provider: Arc<CryptoProvider>,
}

impl NoVerify {
    pub fn new(provider: Arc<CryptoProvider>) -> Self {
        NoVerify { provider }
    }
}

impl ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

// === The TLS context ===

/// The aws-lc-rs provider, with or without the post-quantum hybrid group.
pub fn provider(post_quantum: bool) -> Arc<CryptoProvider> {
    let mut p = aws_lc_rs::default_provider();
    if !post_quantum {
        p.kx_groups
            .retain(|g| g.name() != NamedGroup::X25519MLKEM768);
    }
    Arc::new(p)
}

/// Everything needed to open TLS to the master, built once per configuration (and again on
/// reload, which also gives a fresh session cache).
pub struct TlsContext {
    pub name: NameChoice,
    pub skip_verify: bool,
    /// Base configs, cloned per listener and ALPN choice. rustls resumes a stored session only
    /// for a config with the same verifier and client-cert resolver objects, and clones share
    /// them, so one store serves every listener and ALPN choice. Anonymous and authenticated
    /// configs keep separate resolvers on purpose: a bridge client can never resume the
    /// agent's authenticated session.
    anonymous: ClientConfig,
    authenticated: Option<ClientConfig>,
    sessions: Arc<dyn ClientSessionStore>,
    /// How many certificates `master_cert` holds (0 when the system roots are used).
    pub anchors: usize,
}

impl fmt::Debug for TlsContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsContext")
            .field("name", &self.name)
            .field("skip_verify", &self.skip_verify)
            .field("client_auth", &self.authenticated.is_some())
            .field("anchors", &self.anchors)
            .finish()
    }
}

impl TlsContext {
    pub fn new(config: &Config) -> Result<TlsContext, TrustError> {
        Self::build(&config.master, &config.tls)
    }

    /// The context `run` serves with: `None` when `security.tls.enabled` is false.
    pub fn for_config(config: &Config) -> Result<Option<TlsContext>, TrustError> {
        config.tls.enabled.then(|| Self::new(config)).transpose()
    }

    pub fn build(master: &MasterConfig, tls: &TlsSettings) -> Result<TlsContext, TrustError> {
        let provider = provider(tls.post_quantum);
        let bundle = match &tls.master_cert {
            Some(p) => Some(load_certs(p).map_err(TrustError::MasterCert)?),
            None => None,
        };
        let verifier: Arc<dyn ServerCertVerifier> = if tls.skip_verify {
            Arc::new(NoVerify::new(provider.clone()))
        } else {
            let mut roots = RootCertStore::empty();
            match &bundle {
                Some(certs) => {
                    // Every certificate of the bundle is an anchor: a leaf-only bundle (a
                    // self-signed master) works as well as leaf + intermediates + root.
                    let (added, _ignored) = roots.add_parsable_certificates(certs.iter().cloned());
                    if added == 0 {
                        return Err(TrustError::BadAnchor(
                            tls.master_cert.clone().unwrap_or_default(),
                            "none of its certificates parsed".into(),
                        ));
                    }
                }
                None => {
                    let native = rustls_native_certs::load_native_certs();
                    roots.add_parsable_certificates(native.certs);
                    if roots.is_empty() {
                        return Err(TrustError::NoSystemRoots);
                    }
                }
            }
            let inner =
                WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                    .build()
                    .map_err(|e| TrustError::Tls(rustls::Error::General(e.to_string())))?;
            Arc::new(Diagnosing {
                inner,
                pinned: bundle.clone().unwrap_or_default(),
            })
        };
        let builder = || -> Result<_, TrustError> {
            Ok(ClientConfig::builder_with_provider(provider.clone())
                .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
                .map_err(TrustError::Tls)?
                .dangerous()
                .with_custom_certificate_verifier(verifier.clone()))
        };
        let anonymous = builder()?.with_no_client_auth();
        let authenticated = match (&tls.client_cert, &tls.client_key) {
            (Some(c), Some(k)) => {
                let chain = load_certs(c).map_err(TrustError::ClientCert)?;
                let key = load_key(k).map_err(TrustError::ClientKey)?;
                // Fails now, not at the first handshake, when the pair does not match.
                Some(
                    builder()?
                        .with_client_auth_cert(chain, key)
                        .map_err(TrustError::ClientAuth)?,
                )
            }
            _ => None,
        };
        let name = choose_name(master, tls, bundle.as_deref());
        Ok(TlsContext {
            name,
            skip_verify: tls.skip_verify,
            anonymous,
            authenticated,
            sessions: Arc::new(SessionStore::new()),
            anchors: bundle.as_ref().map(|b| b.len()).unwrap_or(0),
        })
    }

    pub fn has_client_cert(&self) -> bool {
        self.authenticated.is_some()
    }

    /// A client config offering `alpn`, presenting the client certificate when asked and
    /// configured, resuming from the shared store unless `resume` is false.
    pub fn client_config(
        &self,
        alpn: &[Vec<u8>],
        present_client_cert: bool,
        resume: bool,
    ) -> Arc<ClientConfig> {
        let mut cfg = match (&self.authenticated, present_client_cert) {
            (Some(auth), true) => auth.clone(),
            _ => self.anonymous.clone(),
        };
        cfg.alpn_protocols = alpn.to_vec();
        cfg.resumption = if resume {
            Resumption::store(self.sessions.clone())
        } else {
            Resumption::disabled()
        };
        Arc::new(cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::{ServerConfig, ServerConnection};

    /// Runs one TLS 1.3 handshake in memory and lets the client read the server's tickets.
    fn handshake_in_memory(client_cfg: Arc<ClientConfig>, server_cfg: Arc<ServerConfig>) {
        let name = ServerName::try_from("det-master").unwrap();
        let mut client = rustls::ClientConnection::new(client_cfg, name).unwrap();
        let mut server = ServerConnection::new(server_cfg).unwrap();
        for _ in 0..10 {
            let mut buf = Vec::new();
            while client.wants_write() {
                client.write_tls(&mut buf).unwrap();
            }
            server.read_tls(&mut buf.as_slice()).unwrap();
            server.process_new_packets().unwrap();
            let mut buf = Vec::new();
            while server.wants_write() {
                server.write_tls(&mut buf).unwrap();
            }
            client.read_tls(&mut buf.as_slice()).unwrap();
            client.process_new_packets().unwrap();
        }
        assert!(!client.is_handshaking());
    }

    #[test]
    fn session_store_keeps_a_burst_worth_of_tickets() {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["det-master".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let der = cert.der().clone();
        let provider = provider(false);
        let mut server = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![der.clone()],
                PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            )
            .unwrap();
        server.send_tls13_tickets = 40;
        let mut roots = RootCertStore::empty();
        roots.add(der).unwrap();
        let store = Arc::new(SessionStore::new());
        let mut client = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        client.resumption = Resumption::store(store.clone());
        handshake_in_memory(Arc::new(client), Arc::new(server));
        let name = ServerName::try_from("det-master").unwrap();
        // rustls' own cache would hold 8; a reconnect storm needs more at hand.
        assert_eq!(store.tickets(&name), 40);
        for _ in 0..40 {
            assert!(store.take_tls13_ticket(&name).is_some());
        }
        assert!(
            store.take_tls13_ticket(&name).is_none(),
            "each ticket is used once"
        );
    }
}
