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
    pub(crate) fn pin_of(&self, der: &[u8]) -> Option<&str> {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(cn: &str) -> CertificateDer<'static> {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(vec![cn.to_string()]).unwrap();
        p.distinguished_name.push(rcgen::DnType::CommonName, cn);
        p.self_signed(&key).unwrap().der().clone()
    }

    #[test]
    fn the_first_pinned_certificate_of_the_chain_is_found_and_a_mismatch_lists_both_sides() {
        let (leaf, inter, other) = (cert("leaf"), cert("inter"), cert("other"));
        let chain = [leaf.clone(), inter.clone()];
        let pins = Pins::new(vec![fingerprint(&inter), fingerprint(&other)]);
        assert_eq!(pins.matching(&chain), Some(1));
        assert_eq!(pins.pin_of(&inter), Some(fingerprint(&inter).as_str()));
        let both = Pins::new(vec![fingerprint(&inter), fingerprint(&leaf)]);
        assert_eq!(both.matching(&chain), Some(0), "the leaf is looked at first");

        let none = Pins::new(vec![fingerprint(&other)]);
        assert_eq!(none.matching(&chain), None);
        let m = none.mismatch(&chain);
        assert_eq!(
            m.sent,
            [
                ("CN=leaf".into(), fingerprint(&leaf)),
                ("CN=inter".into(), fingerprint(&inter))
            ]
        );
        assert_eq!(m.pins, [fingerprint(&other)]);
    }
}
