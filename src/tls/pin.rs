//! `security.tls.master_cert_sha256`: the pinned fingerprints, and which certificate of the
//! chain the master sent holds one.

use rustls::pki_types::CertificateDer;

use crate::diagnose::{fingerprint, CertSummary};

use super::failure::PinMismatch;

/// SHA-256 fingerprints in `trust`'s canonical form (lower-case hex pairs joined by `:`), as
/// validation leaves them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pins(Vec<String>);

impl Pins {
    pub fn new(pins: Vec<String>) -> Pins {
        Pins(pins)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn as_slice(&self) -> &[String] {
        &self.0
    }

    /// The index (leaf first) of the first certificate of `chain` that is pinned.
    pub fn matching(&self, chain: &[CertificateDer<'_>]) -> Option<usize> {
        chain
            .iter()
            .position(|c| self.0.contains(&fingerprint(c.as_ref())))
    }

    /// The pin `der` matches, if any.
    pub fn pin_of(&self, der: &[u8]) -> Option<&str> {
        let fp = fingerprint(der);
        self.0.iter().find(|p| **p == fp).map(|p| p.as_str())
    }

    /// What was sent and what is pinned, for the error.
    pub(crate) fn mismatch(&self, chain: &[CertificateDer<'_>]) -> PinMismatch {
        PinMismatch {
            sent: chain
                .iter()
                .map(|c| {
                    let subject = CertSummary::from_der(c)
                        .map(|s| s.subject)
                        .unwrap_or_else(|| "(unparsable certificate)".into());
                    (subject, fingerprint(c.as_ref()))
                })
                .collect(),
            pins: self.0.clone(),
        }
    }
}
