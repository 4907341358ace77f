//! The verifiers: WebPKI wrapped to keep why a certificate failed (and to accept a CA or
//! issuer-less certificate found byte for byte in `master_cert`), with the CRLs and the
//! `master_cert_sha256` pins; the pin-anchored one (pins without `master_cert`); and
//! `skip_verify`'s, which still checks handshake signatures (and the pins, when set).

use std::sync::{Arc, Mutex};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, DigitallySignedStruct, OtherError, RootCertStore, SignatureScheme,
};
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::diagnose::CertSummary;

use super::crl::{find_revoked, status, CrlStatus, LoadedCrl};
use super::failure::{classify, CertFailure, FailureKind};
use super::pin::Pins;
use super::name::server_name_text;

/// Wraps the WebPKI verifier so a failure carries what the certificate holds; with pins, a
/// chain that verifies must also hold a pinned certificate.
#[derive(Debug)]
pub(crate) struct Diagnosing {
    /// WebPKI over the anchors: `None` when `master_cert` holds no certificate that can issue
    /// (a lone leaf, which is then only pinned).
    pub(crate) inner: Option<Arc<WebPkiServerVerifier>>,
    /// The certificates of `master_cert`. A master certificate that is exactly one of them is
    /// trusted as pinned where WebPKI refuses it for how it sits, not for what it says (see
    /// [`excused_when_pinned`]): a self-signed certificate made with `openssl req -x509` is
    /// marked CA:TRUE, which WebPKI will not accept as an end entity, while the agent (Go's
    /// crypto/x509) and curl do.
    pub(crate) pinned: Vec<CertificateDer<'static>>,
    /// `master_cert_sha256` and the CRLs, to check the pins and name a revoked certificate.
    pub(crate) checks: Checks,
    /// Handshake signatures are checked with this provider's algorithms.
    pub(crate) provider: Arc<CryptoProvider>,
}

/// What every verifier may have to add to the usual checks: the pins and the CRLs.
#[derive(Debug, Clone, Default)]
pub(crate) struct Checks {
    pub(crate) pins: Pins,
    pub(crate) crls: Arc<Vec<LoadedCrl>>,
}

impl Checks {
    /// A verification failure as rustls carries it, with what the certificate holds.
    fn fail(
        &self,
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
        let kind = classify(&cause);
        let revoked = (kind == FailureKind::Revoked)
            .then(|| find_revoked(&self.crls, &chain(end_entity, intermediates)))
            .flatten();
        let failure = CertFailure {
            kind,
            cause,
            expected,
            leaf,
            chain_end,
            pins: None,
            revoked,
        };
        reject(failure)
    }

    /// `Ok` when no pin is set or a certificate of the chain is pinned; otherwise the
    /// mismatch, listing both sides.
    fn require_pin(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
    ) -> Result<(), rustls::Error> {
        let chain = chain(end_entity, intermediates);
        if self.pins.is_empty() || self.pins.matching(&chain).is_some() {
            return Ok(());
        }
        let leaf = CertSummary::from_der(end_entity);
        Err(reject(CertFailure {
            kind: FailureKind::PinMismatch,
            cause: CertificateError::ApplicationVerificationFailure,
            expected: String::new(),
            chain_end: chain.last().and_then(|c| CertSummary::from_der(c)),
            leaf,
            pins: Some(self.pins.mismatch(&chain)),
            revoked: None,
        }))
    }
}

fn reject(failure: CertFailure) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(failure))))
}

/// The chain as the master sent it: leaf first.
fn chain<'a>(
    end_entity: &CertificateDer<'a>,
    intermediates: &[CertificateDer<'a>],
) -> Vec<CertificateDer<'a>> {
    std::iter::once(end_entity.clone())
        .chain(intermediates.iter().cloned())
        .collect()
}

/// A WebPKI verifier over `roots`, enforcing `crls` on the whole chain. A certificate whose
/// issuer has no CRL here passes (unknown status allowed); an expired CRL is still applied
/// (rustls' default `ExpirationPolicy::Ignore`, kept on purpose: `run` warns about it).
pub(crate) fn webpki(
    roots: RootCertStore,
    provider: Arc<CryptoProvider>,
    crls: &[LoadedCrl],
) -> Result<Arc<WebPkiServerVerifier>, rustls::Error> {
    let mut builder = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider);
    if !crls.is_empty() {
        builder = builder
            .with_crls(crls.iter().map(|c| c.der.clone()))
            .allow_unknown_revocation_status();
    }
    builder
        .build()
        .map_err(|e| rustls::Error::General(e.to_string()))
}

/// Both verifiers check handshake signatures the same way, with their provider's algorithms,
/// whatever they decide about the certificate.
macro_rules! signatures_checked_by_provider {
    () => {
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
    };
}

/// Whether WebPKI's refusal of a certificate that is exactly one of `master_cert`'s says only
/// that WebPKI cannot build a path for it, which the operator's choice of that very
/// certificate replaces: a CA certificate as the master's own (`CaUsedAsEndEntity`, checked
/// before the EKU and any path), or a leaf whose issuer is neither sent nor trusted (`trust`
/// of a master that sends its leaf alone). Every other refusal (revoked, expired, EKU, name,
/// signature, encoding) is about the certificate itself and stands.
fn excused_when_pinned(cause: &CertificateError) -> bool {
    match cause {
        CertificateError::UnknownIssuer => true,
        CertificateError::Other(o) => matches!(
            o.0.downcast_ref::<webpki::Error>(),
            Some(webpki::Error::CaUsedAsEndEntity)
        ),
        _ => false,
    }
}

/// Verifies a pinned leaf where WebPKI did not: its validity dates, its extended key usage
/// (serverAuth, when it names any), the configured CRLs' word on it and the name. The CRLs
/// are matched by issuer name and serial: without the issuer, WebPKI cannot check their
/// signatures, and a configured list can only refuse here, never admit.
fn verify_pinned(
    end_entity: &CertificateDer<'_>,
    server_name: &ServerName<'_>,
    now: UnixTime,
    crls: &[LoadedCrl],
) -> Result<(), CertificateError> {
    verify_dates(end_entity, now)?;
    verify_server_auth(end_entity)?;
    if let CrlStatus::Revoked { .. } = status(crls, end_entity) {
        return Err(CertificateError::Revoked);
    }
    let ee =
        webpki::EndEntityCert::try_from(end_entity).map_err(|_| CertificateError::BadEncoding)?;
    ee.verify_is_valid_for_subject_name(server_name)
        .map_err(|_| CertificateError::NotValidForName)
}

/// As WebPKI judges a server certificate's extended key usage: absent, or naming serverAuth.
fn verify_server_auth(end_entity: &CertificateDer<'_>) -> Result<(), CertificateError> {
    let (_, cert) = X509Certificate::from_der(end_entity.as_ref())
        .map_err(|_| CertificateError::BadEncoding)?;
    match cert.extended_key_usage() {
        Ok(None) => Ok(()),
        Ok(Some(eku)) if eku.value.server_auth => Ok(()),
        Ok(Some(_)) => Err(CertificateError::InvalidPurpose),
        Err(_) => Err(CertificateError::BadEncoding),
    }
}

/// The leaf's validity dates against `now`.
fn verify_dates(end_entity: &CertificateDer<'_>, now: UnixTime) -> Result<(), CertificateError> {
    let summary = CertSummary::from_der(end_entity).ok_or(CertificateError::BadEncoding)?;
    let now = now.as_secs() as i64;
    if now > summary.not_after {
        return Err(CertificateError::Expired);
    }
    if now < summary.not_before {
        return Err(CertificateError::NotValidYet);
    }
    Ok(())
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
        let verdict = match &self.inner {
            Some(v) => {
                v.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
            }
            None => Err(rustls::Error::InvalidCertificate(
                CertificateError::UnknownIssuer,
            )),
        };
        match verdict {
            Ok(_) => {}
            Err(rustls::Error::InvalidCertificate(cause)) => {
                let pinned = excused_when_pinned(&cause)
                    && self
                        .pinned
                        .iter()
                        .any(|p| p.as_ref() == end_entity.as_ref());
                if !pinned {
                    return Err(self.checks.fail(cause, end_entity, intermediates, server_name));
                }
                verify_pinned(end_entity, server_name, now, &self.checks.crls)
                    .map_err(|e| self.checks.fail(e, end_entity, intermediates, server_name))?;
            }
            Err(e) => return Err(e),
        }
        self.checks.require_pin(end_entity, intermediates)?;
        Ok(ServerCertVerified::assertion())
    }

    signatures_checked_by_provider!();
}

/// Pins without `master_cert`: the system roots are not used; the pinned certificate of the
/// chain is the trust. A pinned leaf is checked as [`verify_pinned`] does; a pinned
/// intermediate is the only anchor of a WebPKI path validation of the leaf (dates, name,
/// signatures, CRLs), and, since WebPKI never checks an anchor's own revocation, is looked up
/// in the CRLs here.
#[derive(Debug)]
pub(crate) struct PinAnchored {
    pub(crate) checks: Checks,
    pub(crate) provider: Arc<CryptoProvider>,
    /// WebPKI verifiers built for a pinned intermediate, by its DER (a handful at most: one
    /// per pin).
    anchored: Mutex<Vec<(Vec<u8>, Arc<WebPkiServerVerifier>)>>,
}

impl PinAnchored {
    pub(crate) fn new(checks: Checks, provider: Arc<CryptoProvider>) -> Self {
        PinAnchored {
            checks,
            provider,
            anchored: Mutex::new(Vec::new()),
        }
    }

    /// The WebPKI verifier whose only anchor is `pinned`.
    fn anchored_at(
        &self,
        pinned: &CertificateDer<'_>,
    ) -> Result<Arc<WebPkiServerVerifier>, CertificateError> {
        let mut cache = self.anchored.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, v)) = cache.iter().find(|(d, _)| d == pinned.as_ref()) {
            return Ok(v.clone());
        }
        let mut roots = RootCertStore::empty();
        roots
            .add(pinned.clone().into_owned())
            .map_err(|_| CertificateError::BadEncoding)?;
        let v = webpki(roots, self.provider.clone(), &self.checks.crls)
            .map_err(|_| CertificateError::BadEncoding)?;
        cache.truncate(15);
        cache.push((pinned.to_vec(), v.clone()));
        Ok(v)
    }
}

impl ServerCertVerifier for PinAnchored {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.checks.require_pin(end_entity, intermediates)?;
        let chain = chain(end_entity, intermediates);
        let fail = |e| self.checks.fail(e, end_entity, intermediates, server_name);
        match self.checks.pins.matching(&chain) {
            Some(0) | None => {
                verify_pinned(end_entity, server_name, now, &self.checks.crls).map_err(fail)?
            }
            Some(i) => {
                if let CrlStatus::Revoked { .. } = status(&self.checks.crls, &chain[i]) {
                    return Err(fail(CertificateError::Revoked));
                }
                let v = self.anchored_at(&chain[i]).map_err(fail)?;
                match v.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
                {
                    Err(rustls::Error::InvalidCertificate(e)) => return Err(fail(e)),
                    other => {
                        other?;
                    }
                }
            }
        }
        Ok(ServerCertVerified::assertion())
    }

    signatures_checked_by_provider!();
}

/// `skip_verify`: accepts any certificate but still checks that the handshake was signed by
/// its key, so the connection is encrypted to whoever holds that key. With pins, a
/// certificate of the chain must be pinned and the leaf within its dates; the name is not
/// checked.
#[derive(Debug)]
pub(crate) struct NoVerify {
    provider: Arc<CryptoProvider>,
    checks: Checks,
}

impl NoVerify {
    pub(crate) fn with_pins(provider: Arc<CryptoProvider>, pins: Pins) -> Self {
        NoVerify {
            provider,
            checks: Checks {
                pins,
                ..Checks::default()
            },
        }
    }
}

impl ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if !self.checks.pins.is_empty() {
            self.checks.require_pin(end_entity, intermediates)?;
            verify_dates(end_entity, now)
                .map_err(|e| self.checks.fail(e, end_entity, intermediates, server_name))?;
        }
        Ok(ServerCertVerified::assertion())
    }

    signatures_checked_by_provider!();
}
