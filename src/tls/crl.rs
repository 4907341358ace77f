//! `security.tls.crl`: the revocation lists read once per configuration, what each says about
//! a certificate (for `check` and for naming a revoked certificate in an error), and which
//! have passed their nextUpdate. The enforcement itself is WebPKI's (`with_crls`).

use std::path::{Path, PathBuf};

use rustls::pki_types::{CertificateDer, CertificateRevocationListDer};
use x509_parser::num_bigint::BigUint;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::pem::{load_crls, PemError};
use crate::untrusted::Untrusted;

/// One CRL of a configured file, with what is needed to say which certificate it revokes.
#[derive(Debug, Clone)]
pub struct LoadedCrl {
    pub path: PathBuf,
    pub der: CertificateRevocationListDer<'static>,
    /// The issuer's name as DER, compared byte for byte with a certificate's issuer.
    issuer_raw: Vec<u8>,
    pub issuer: Untrusted,
    /// Seconds since the Unix epoch.
    pub next_update: Option<i64>,
    revoked: Vec<(BigUint, i64)>,
}

impl LoadedCrl {
    /// Past its nextUpdate: still applied (ExpirationPolicy::Ignore), but warned about.
    pub fn expired(&self, now: i64) -> bool {
        self.next_update.is_some_and(|n| now > n)
    }
}

/// Every CRL of every file, in the order configured.
pub(crate) fn load_all(paths: &[PathBuf]) -> Result<Vec<LoadedCrl>, PemError> {
    let mut out = Vec::new();
    for path in paths {
        for der in load_crls(path)? {
            out.push(parse(path, der)?);
        }
    }
    Ok(out)
}

fn parse(path: &Path, der: CertificateRevocationListDer<'static>) -> Result<LoadedCrl, PemError> {
    let (_, crl) =
        x509_parser::parse_x509_crl(der.as_ref()).map_err(|e| PemError::NoCrl {
            path: path.to_path_buf(),
            detail: e.to_string(),
        })?;
    let revoked = crl
        .iter_revoked_certificates()
        .map(|r| (r.user_certificate.clone(), r.revocation_date.timestamp()))
        .collect();
    Ok(LoadedCrl {
        path: path.to_path_buf(),
        issuer_raw: crl.issuer().as_raw().to_vec(),
        issuer: Untrusted::new(crl.issuer().to_string()),
        next_update: crl.next_update().map(|t| t.timestamp()),
        revoked,
        der,
    })
}

/// What the configured CRLs say about one certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CrlStatus {
    /// No configured CRL comes from its issuer: its status is unknown, and allowed.
    NoCrl,
    NotRevoked { path: PathBuf },
    Revoked { path: PathBuf, date: i64 },
}

impl std::fmt::Display for CrlStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CrlStatus::NoCrl => write!(f, "no CRL from its issuer"),
            CrlStatus::NotRevoked { path } => write!(f, "not revoked per {}", path.display()),
            CrlStatus::Revoked { path, date } => write!(
                f,
                "REVOKED per {} on {}",
                path.display(),
                crate::diagnose::rfc3339(*date)
            ),
        }
    }
}

/// The status of `cert` by the CRLs whose issuer is its issuer. A CRL is matched by name
/// only: WebPKI, which enforces them, also checks the CRL's signature.
pub fn status(crls: &[LoadedCrl], cert: &[u8]) -> CrlStatus {
    let Ok((_, c)) = X509Certificate::from_der(cert) else {
        return CrlStatus::NoCrl;
    };
    let issuer = c.issuer().as_raw();
    let serial = &c.tbs_certificate.serial;
    let mut status = CrlStatus::NoCrl;
    for crl in crls.iter().filter(|l| l.issuer_raw == issuer) {
        if let Some((_, date)) = crl.revoked.iter().find(|(s, _)| s == serial) {
            return CrlStatus::Revoked {
                path: crl.path.clone(),
                date: *date,
            };
        }
        if status == CrlStatus::NoCrl {
            status = CrlStatus::NotRevoked {
                path: crl.path.clone(),
            };
        }
    }
    status
}

/// A certificate of the master's chain that a configured CRL revokes.
#[derive(Debug, Clone)]
pub struct Revocation {
    pub subject: Untrusted,
    /// Hex pairs joined by `:`, as `openssl x509 -serial` shows it (lower case).
    pub serial: String,
    pub path: PathBuf,
    pub date: i64,
}

/// The first certificate of `chain` (leaf first) that a configured CRL revokes.
pub(crate) fn find_revoked(crls: &[LoadedCrl], chain: &[CertificateDer<'_>]) -> Option<Revocation> {
    if crls.is_empty() {
        return None;
    }
    chain.iter().find_map(|der| match status(crls, der) {
        CrlStatus::Revoked { path, date } => {
            let (_, c) = X509Certificate::from_der(der).ok()?;
            Some(Revocation {
                subject: Untrusted::new(c.subject().to_string()),
                serial: c.raw_serial_as_string(),
                path,
                date,
            })
        }
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{
        CertificateParams, CertificateRevocationListParams, DnType, IsCa, KeyIdMethod, KeyPair,
        RevokedCertParams, SerialNumber,
    };

    fn ca(cn: &str) -> (rcgen::Certificate, KeyPair) {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(DnType::CommonName, cn);
        p.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        (p.self_signed(&key).unwrap(), key)
    }

    fn leaf(issuer: &(rcgen::Certificate, KeyPair), serial: u64) -> CertificateDer<'static> {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(vec!["det-master".to_string()]).unwrap();
        p.distinguished_name.push(DnType::CommonName, "det-master");
        p.serial_number = Some(SerialNumber::from(serial));
        p.signed_by(&key, &issuer.0, &issuer.1).unwrap().der().clone()
    }

    fn crl_revoking(issuer: &(rcgen::Certificate, KeyPair), serial: u64) -> LoadedCrl {
        let crl = CertificateRevocationListParams {
            this_update: rcgen::date_time_ymd(2024, 1, 1),
            next_update: rcgen::date_time_ymd(2024, 2, 1),
            crl_number: SerialNumber::from(1u64),
            issuing_distribution_point: None,
            revoked_certs: vec![RevokedCertParams {
                serial_number: SerialNumber::from(serial),
                revocation_time: rcgen::date_time_ymd(2024, 1, 15),
                reason_code: None,
                invalidity_date: None,
            }],
            key_identifier_method: KeyIdMethod::Sha256,
        }
        .signed_by(&issuer.0, &issuer.1)
        .unwrap();
        parse(Path::new("/etc/ca.crl"), crl.der().clone()).unwrap()
    }

    #[test]
    fn a_certificate_is_judged_by_its_issuers_crls_only() {
        let (issuer, other) = (ca("Issuer CA"), ca("Other CA"));
        let crls = vec![crl_revoking(&issuer, 7)];
        let path = PathBuf::from("/etc/ca.crl");
        let revoked = leaf(&issuer, 7);
        assert!(matches!(status(&crls, &revoked), CrlStatus::Revoked { path: p, .. } if p == path));
        assert_eq!(
            status(&crls, &leaf(&issuer, 8)),
            CrlStatus::NotRevoked { path: path.clone() }
        );
        assert_eq!(status(&crls, &leaf(&other, 7)), CrlStatus::NoCrl);
        let r = find_revoked(&crls, &[leaf(&issuer, 8), revoked]).unwrap();
        assert_eq!((r.subject.raw().as_str(), r.serial.as_str()), ("CN=det-master", "07"));
        assert_eq!(crate::diagnose::rfc3339(r.date), "2024-01-15T00:00:00Z");
    }

    #[test]
    fn a_crl_past_its_next_update_is_expired() {
        let crl = crl_revoking(&ca("Issuer CA"), 1);
        let feb_2024 = crl.next_update.unwrap();
        assert!(!crl.expired(feb_2024 - 1));
        assert!(crl.expired(feb_2024 + 1));
    }
}
