//! PEM files: certificate bundles and private keys, read with rustls-pki-types. A leaf below
//! both the configuration (which checks the files exist and parse) and TLS (which uses them).

use std::path::{Path, PathBuf};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};

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
    #[error("{path} holds no certificate revocation list (expected -----BEGIN X509 CRL----- or a DER CRL): {detail}")]
    NoCrl { path: PathBuf, detail: String },
    #[error("{path} is not valid PEM: {detail}")]
    Malformed { path: PathBuf, detail: String },
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

/// The revocation lists in a file: PEM (one or more `X509 CRL` blocks) or one DER CRL. Each
/// is parsed here, so a file that is not a CRL is refused when the configuration is read.
pub(crate) fn load_crls(path: &Path) -> Result<Vec<CertificateRevocationListDer<'static>>, PemError> {
    let bytes = read_pem(path)?;
    let no_crl = |detail: String| PemError::NoCrl {
        path: path.to_path_buf(),
        detail,
    };
    let crls: Vec<CertificateRevocationListDer<'static>> = if bytes.first() == Some(&0x30) {
        vec![CertificateRevocationListDer::from(bytes)]
    } else {
        CertificateRevocationListDer::pem_slice_iter(&bytes)
            .collect::<Result<_, _>>()
            .map_err(|e| PemError::Malformed {
                path: path.to_path_buf(),
                detail: e.to_string(),
            })?
    };
    if crls.is_empty() {
        return Err(no_crl("none found".into()));
    }
    for crl in &crls {
        webpki::OwnedCertRevocationList::from_der(crl.as_ref())
            .map_err(|e| no_crl(crl_problem(crl.as_ref(), e)))?;
    }
    Ok(crls)
}

/// Why WebPKI refused a CRL, in words: it takes only version 2 CRLs with a CRL number and a
/// nextUpdate, which `openssl ca -gencrl` makes only when its configuration names a
/// `crlnumber` file.
fn crl_problem(der: &[u8], e: webpki::Error) -> String {
    const HOW: &str = "only version 2 CRLs with a CRL number and a nextUpdate are accepted (with `openssl ca -gencrl`, set crlnumber in the CA's configuration)";
    let Ok((_, crl)) = x509_parser::parse_x509_crl(der) else {
        return format!("{e:?}");
    };
    if crl.version().is_none_or(|v| v.0 != 1) {
        format!("it is a version 1 CRL; {HOW}")
    } else if crl.crl_number().is_none() {
        format!("it has no CRL number; {HOW}")
    } else if crl.next_update().is_none() {
        format!("it has no nextUpdate; {HOW}")
    } else {
        format!("{e:?}")
    }
}
