//! TLS to the master: the roots (system or `master_cert`), the `skip_verify` verifier, the name
//! verified and sent as SNI, client certificates, and the rustls `ClientConfig`s built from
//! them. A verification failure is turned into a [`CertFailure`] that says what the
//! certificate holds.

mod crl;
mod failure;
mod name;
mod pin;
mod session;
mod verify;

pub use crl::{status, LoadedCrl, Revocation};
pub(crate) use crl::{find_revoked, load_all};
pub(crate) use failure::FailureKind;
pub(crate) use failure::cert_failure;
pub(crate) use name::{NameChoice, NameReason};
pub(crate) use name::choose_name;
pub use pin::Pins;
pub(crate) use session::SessionStore;
pub(crate) use verify::{webpki, Checks, Diagnosing, NoVerify, PinAnchored};

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use rustls::client::danger::ServerCertVerifier;
use rustls::client::{ClientSessionStore, Resumption};
use rustls::pki_types::CertificateDer;
use rustls::crypto::{aws_lc_rs, CryptoProvider};
use rustls::{ClientConfig, NamedGroup, RootCertStore};

use crate::config::{Config, MasterConfig, TlsSettings};
use crate::diagnose::CertSummary;
use crate::pem::{load_certs, load_key, PemError};

#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    #[error("security.tls.master_cert: {0}")]
    MasterCert(PemError),
    #[error("security.tls.crl: {0}")]
    Crl(PemError),
    #[error("security.tls.client_cert: {0}")]
    ClientCert(PemError),
    #[error("security.tls.client_key: {0}")]
    ClientKey(PemError),
    #[error(
        "security.tls.master_cert: no certificate in {0} could be used as a trust anchor: {1}"
    )]
    BadAnchor(PathBuf, String),
    #[error(
        "security.tls.crl: {} revokes {} (serial {}), a trust anchor in {anchors}; WebPKI never \
         checks the revocation of an anchor, so an anchor cannot be revoked: remove that \
         certificate from {anchors} (or, if the revocation is a mistake, use a CRL without it)",
        .revoked.path.display(), .revoked.subject, .revoked.serial
    )]
    RevokedAnchor {
        revoked: Revocation,
        /// Where the anchor is: `security.tls.master_cert (PATH)` or the system's store.
        anchors: String,
    },
    #[error("no system root certificates found and security.tls.master_cert is not set; set it to the master's CA bundle")]
    NoSystemRoots,
    #[error(
        "security.tls.client_key does not match security.tls.client_cert, or is unsupported: {0}"
    )]
    ClientAuth(rustls::Error),
    #[error("TLS setup failed: {0}")]
    Tls(rustls::Error),
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
    /// `security.tls.master_cert_sha256`.
    pub pins: Pins,
    /// The CRLs of `security.tls.crl`, as read for this context.
    pub crls: Arc<Vec<LoadedCrl>>,
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
    pub(crate) fn for_config(config: &Config) -> Result<Option<TlsContext>, TrustError> {
        config.tls.enabled.then(|| Self::new(config)).transpose()
    }

    pub fn build(master: &MasterConfig, tls: &TlsSettings) -> Result<TlsContext, TrustError> {
        let provider = provider(tls.post_quantum);
        let bundle = match &tls.master_cert {
            Some(p) => Some(load_certs(p).map_err(TrustError::MasterCert)?),
            None => None,
        };
        let checks = Checks {
            pins: Pins::new(tls.master_cert_sha256.clone()),
            crls: Arc::new(load_all(&tls.crl).map_err(TrustError::Crl)?),
        };
        let verifier = verifier(tls, bundle.as_deref(), &provider, &checks)?;
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
            pins: checks.pins,
            crls: checks.crls,
        })
    }

    /// The configured CRLs past their nextUpdate at `now`: still applied, but stale.
    pub(crate) fn expired_crls(&self, now: i64) -> impl Iterator<Item = &LoadedCrl> {
        self.crls.iter().filter(move |c| c.expired(now))
    }

    pub(crate) fn has_client_cert(&self) -> bool {
        self.authenticated.is_some()
    }

    /// A client config offering `alpn`, presenting the client certificate when asked and
    /// configured, resuming from the shared store or not at all.
    pub fn client_config(&self, alpn: &[Vec<u8>], cert: Present, resume: Resume) -> Arc<ClientConfig> {
        let mut cfg = match (&self.authenticated, cert) {
            (Some(auth), Present::ClientCert) => auth.clone(),
            _ => self.anonymous.clone(),
        };
        cfg.alpn_protocols = alpn.to_vec();
        cfg.resumption = match resume {
            Resume::Shared => Resumption::store(self.sessions.clone()),
            Resume::Never => Resumption::disabled(),
        };
        Arc::new(cfg)
    }
}

/// What a client config shows the master of the agent's identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Present {
    /// The client certificate, when one is configured.
    ClientCert,
    /// No certificate.
    Nothing,
}

impl Present {
    /// `ClientCert` when `present` holds.
    pub(crate) fn client_cert_if(present: bool) -> Present {
        if present {
            Present::ClientCert
        } else {
            Present::Nothing
        }
    }
}

/// Whether a client config resumes sessions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resume {
    /// From the one store every listener shares (the data path).
    Shared,
    /// Never: a dial that must show a full handshake (`check`, the readiness probe).
    Never,
}

/// The verifier a configuration asks for: `skip_verify`'s (with the pins, if any); pins alone
/// anchored at the pinned certificate; otherwise WebPKI over `master_cert` or the system roots,
/// with the CRLs, and the pins on top.
fn verifier(
    tls: &TlsSettings,
    bundle: Option<&[CertificateDer<'static>]>,
    provider: &Arc<CryptoProvider>,
    checks: &Checks,
) -> Result<Arc<dyn ServerCertVerifier>, TrustError> {
    if tls.skip_verify {
        return Ok(Arc::new(NoVerify::with_pins(
            provider.clone(),
            checks.pins.clone(),
        )));
    }
    if bundle.is_none() && !checks.pins.is_empty() {
        return Ok(Arc::new(PinAnchored::new(checks.clone(), provider.clone())));
    }
    let (anchors, from): (Vec<_>, _) = match bundle {
        Some(certs) => {
            let path = tls.master_cert.clone().unwrap_or_default();
            if !certs
                .iter()
                .any(|c| webpki::anchor_from_trusted_cert(c).is_ok())
            {
                return Err(TrustError::BadAnchor(
                    path,
                    "none of its certificates parsed".into(),
                ));
            }
            (
                certs.iter().filter(|c| can_anchor(c)).cloned().collect(),
                format!("security.tls.master_cert ({})", path.display()),
            )
        }
        None => (
            rustls_native_certs::load_native_certs().certs,
            "the system's root certificates".to_string(),
        ),
    };
    if let Some(revoked) = find_revoked(&checks.crls, &anchors) {
        return Err(TrustError::RevokedAnchor {
            revoked,
            anchors: from,
        });
    }
    let mut roots = RootCertStore::empty();
    roots.add_parsable_certificates(anchors);
    if bundle.is_none() && roots.is_empty() {
        return Err(TrustError::NoSystemRoots);
    }
    let inner = match roots.is_empty() {
        true => None,
        false => Some(webpki(roots, provider.clone(), &checks.crls).map_err(TrustError::Tls)?),
    };
    Ok(Arc::new(Diagnosing {
        inner,
        pinned: bundle.map(<[_]>::to_vec).unwrap_or_default(),
        checks: checks.clone(),
        provider: provider.clone(),
    }))
}

/// Whether a certificate of `master_cert` is made a trust anchor: one that can issue (a CA)
/// or is its own issuer. A plain leaf is only pinned (trusted as exactly itself): as an
/// anchor it would admit any certificate signed with its key, a revoked leaf's included, and
/// as an anchor its own revocation would never be checked.
fn can_anchor(der: &CertificateDer<'_>) -> bool {
    CertSummary::from_der(der).is_none_or(|c| c.is_ca || c.self_signed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::{PrivateKeyDer, ServerName};
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
