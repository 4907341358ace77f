//! The verifiers: WebPKI wrapped to keep why a certificate failed (and to accept a pinned
//! certificate found byte for byte in `master_cert`), and `skip_verify`'s, which still checks
//! handshake signatures.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, OtherError, SignatureScheme};

use crate::diagnose::CertSummary;

use super::failure::{classify, CertFailure};
use super::name::server_name_text;

/// Wraps the WebPKI verifier so a failure carries what the certificate holds.
#[derive(Debug)]
pub(crate) struct Diagnosing {
    pub(crate) inner: Arc<WebPkiServerVerifier>,
    /// The certificates of `master_cert`. A master certificate that is exactly one of them is
    /// trusted as pinned even where WebPKI path building refuses it: a self-signed certificate
    /// made with `openssl req -x509` is marked CA:TRUE, which WebPKI will not accept as an end
    /// entity, while the agent (Go's crypto/x509) and curl do.
    pub(crate) pinned: Vec<CertificateDer<'static>>,
    /// Handshake signatures are checked with this provider's algorithms.
    pub(crate) provider: Arc<CryptoProvider>,
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

    signatures_checked_by_provider!();
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

    signatures_checked_by_provider!();
}
