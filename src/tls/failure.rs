//! Verification failures in an operator's terms: what the certificate holds, why it failed,
//! and which key to set.

use std::fmt;

use rustls::{CertificateError, OtherError};

use crate::diagnose::CertSummary;
use crate::error_kind::UpstreamErrorKind;
use crate::untrusted::Untrusted;

use super::crl::Revocation;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    WrongName,
    UnknownIssuer,
    Expired,
    NotYetValid,
    /// The master presents a CA certificate as its own and it is not pinned in master_cert.
    CaAsLeaf,
    /// No certificate of the chain has a fingerprint of `security.tls.master_cert_sha256`.
    PinMismatch,
    /// A configured CRL revokes a certificate of the chain.
    Revoked,
    Other,
}

impl FailureKind {
    /// The `kind` of `upstream_errors_total`.
    pub fn kind(self) -> UpstreamErrorKind {
        match self {
            FailureKind::WrongName => UpstreamErrorKind::CertName,
            FailureKind::UnknownIssuer => UpstreamErrorKind::CertUnknownIssuer,
            FailureKind::Expired => UpstreamErrorKind::CertExpired,
            FailureKind::NotYetValid => UpstreamErrorKind::CertNotYetValid,
            FailureKind::CaAsLeaf => UpstreamErrorKind::CertCaAsLeaf,
            FailureKind::PinMismatch => UpstreamErrorKind::CertPinMismatch,
            FailureKind::Revoked => UpstreamErrorKind::CertRevoked,
            FailureKind::Other => UpstreamErrorKind::CertInvalid,
        }
    }
}

/// A certificate the master presented that did not verify, with what it holds.
#[derive(Debug)]
pub(crate) struct CertFailure {
    pub kind: FailureKind,
    pub cause: CertificateError,
    pub expected: String,
    pub leaf: Option<CertSummary>,
    /// The last certificate the master sent (where its chain ends).
    pub(crate) chain_end: Option<CertSummary>,
    /// For [`FailureKind::PinMismatch`]: what was sent and what is pinned.
    pub pins: Option<PinMismatch>,
    /// For [`FailureKind::Revoked`]: which certificate, by which CRL (when it was found).
    pub revoked: Option<Revocation>,
}

/// The fingerprints of the chain the master sent, and the pins none of them matched.
#[derive(Debug, Clone)]
pub(crate) struct PinMismatch {
    /// (subject, SHA-256) of each certificate sent, leaf first.
    pub sent: Vec<(Untrusted, String)>,
    pub pins: Vec<String>,
}

impl fmt::Display for CertFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            FailureKind::WrongName => self.fmt_wrong_name(f),
            FailureKind::UnknownIssuer => self.fmt_unknown_issuer(f),
            FailureKind::Expired => self.fmt_expired(f),
            FailureKind::NotYetValid => self.fmt_not_yet_valid(f),
            FailureKind::CaAsLeaf => self.fmt_ca_as_leaf(f),
            FailureKind::PinMismatch => self.fmt_pin_mismatch(f),
            FailureKind::Revoked => self.fmt_revoked(f),
            FailureKind::Other => self.fmt_other(f),
        }
    }
}

/// One wording per kind: what the certificate holds and what to change.
impl CertFailure {
    fn fmt_wrong_name(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let leaf = self.leaf.as_ref();
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

    fn fmt_unknown_issuer(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let leaf = self.leaf.as_ref();
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

    fn fmt_expired(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let leaf = self.leaf.as_ref();
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

    fn fmt_not_yet_valid(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let leaf = self.leaf.as_ref();
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

    fn fmt_ca_as_leaf(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let leaf = self.leaf.as_ref();
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

    fn fmt_pin_mismatch(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "no certificate the master sent matches security.tls.master_cert_sha256"
        )?;
        if let Some(p) = &self.pins {
            let sent: Vec<String> = p
                .sent
                .iter()
                .enumerate()
                .map(|(i, (subject, fp))| format!("[{i}] {subject} SHA-256 {fp}"))
                .collect();
            write!(
                f,
                ": the master sent {}; pinned: {}",
                sent.join(", "),
                p.pins.join(", ")
            )?;
        }
        write!(
            f,
            "; if the master's certificate was renewed, confirm the new one is the master's (`det-tls-proxy check` prints each certificate's SHA-256) and add its fingerprint to security.tls.master_cert_sha256 (`det-tls-proxy trust --pin --fingerprint SHA256` does both)"
        )
    }

    fn fmt_revoked(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.revoked {
            Some(r) => write!(
                f,
                "the master's certificate chain holds a revoked certificate: {} (serial {}) was revoked on {} by the CRL in {} (security.tls.crl)",
                r.subject,
                r.serial,
                crate::diagnose::rfc3339(r.date),
                r.path.display()
            )?,
            None => write!(
                f,
                "a certificate of the master's chain is revoked by a CRL of security.tls.crl"
            )?,
        }
        write!(
            f,
            "; the master needs a certificate that is not revoked (or, if the revocation is a mistake, a new CRL without it)"
        )
    }

    fn fmt_other(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let leaf = self.leaf.as_ref();
        write!(f, "the master's certificate was rejected: {:?}", self.cause)?;
        if let Some(l) = leaf {
            write!(f, " ({l})")?;
        }
        Ok(())
    }
}

impl std::error::Error for CertFailure {}

pub(crate) fn classify(e: &CertificateError) -> FailureKind {
    match e {
        CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
            FailureKind::WrongName
        }
        CertificateError::UnknownIssuer => FailureKind::UnknownIssuer,
        CertificateError::Revoked => FailureKind::Revoked,
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
pub(crate) fn cert_failure<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a CertFailure> {
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
