//! Certificates made at test time with rcgen: roots, intermediates, server leaves with
//! chosen SANs, self-signed leaves and client certificates. Nothing here is checked in.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// Every certificate made here is valid until the end of this year, so a test can look
/// for it in the proxy's "validity" diagnostics.
pub const NOT_AFTER_YEAR: i32 = 2098;

fn params(cn: &str, sans: &[&str]) -> CertificateParams {
    let sans: Vec<String> = sans.iter().map(|s| s.to_string()).collect();
    let mut p = CertificateParams::new(sans).expect("SANs");
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    p.distinguished_name = dn;
    p.not_before = rcgen::date_time_ymd(2020, 1, 1);
    p.not_after = rcgen::date_time_ymd(NOT_AFTER_YEAR, 12, 31);
    p
}

/// A certificate authority (root or intermediate) that can sign others.
pub struct Ca {
    pub cert: Certificate,
    pub key: KeyPair,
    pub cn: String,
}

impl Ca {
    /// A self-signed root.
    pub fn root(cn: &str) -> Ca {
        let key = KeyPair::generate().expect("key");
        let cert = ca_params(cn).self_signed(&key).expect("self-signed root");
        Ca {
            cert,
            key,
            cn: cn.to_string(),
        }
    }

    /// An intermediate CA signed by `self`.
    pub fn intermediate(&self, cn: &str) -> Ca {
        let key = KeyPair::generate().expect("key");
        let cert = ca_params(cn)
            .signed_by(&key, &self.cert, &self.key)
            .expect("intermediate");
        Ca {
            cert,
            key,
            cn: cn.to_string(),
        }
    }

    /// A server leaf for `sans` (DNS names or IP literals), signed by `self`.
    pub fn server(&self, cn: &str, sans: &[&str]) -> Leaf {
        let key = KeyPair::generate().expect("key");
        let mut p = params(cn, sans);
        p.is_ca = IsCa::ExplicitNoCa;
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        p.use_authority_key_identifier_extension = true;
        let cert = p.signed_by(&key, &self.cert, &self.key).expect("leaf");
        Leaf { cert, key }
    }

    /// A client certificate signed by `self`.
    pub fn client(&self, cn: &str) -> Leaf {
        let key = KeyPair::generate().expect("key");
        let mut p = params(cn, &[]);
        p.is_ca = IsCa::ExplicitNoCa;
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        p.use_authority_key_identifier_extension = true;
        let cert = p.signed_by(&key, &self.cert, &self.key).expect("client");
        Leaf { cert, key }
    }

    pub fn pem(&self) -> String {
        self.cert.pem()
    }

    pub fn der(&self) -> CertificateDer<'static> {
        self.cert.der().clone()
    }
}

fn ca_params(cn: &str) -> CertificateParams {
    let mut p = params(cn, &[]);
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    p
}

/// An end-entity certificate and its key.
pub struct Leaf {
    pub cert: Certificate,
    pub key: KeyPair,
}

impl Leaf {
    /// A self-signed server certificate, as Determined's own docs make for a master
    /// (`openssl req -x509 ... -subj /CN=det-master -addext subjectAltName=DNS:det-master`).
    pub fn self_signed(cn: &str, sans: &[&str]) -> Leaf {
        let key = KeyPair::generate().expect("key");
        let mut p = params(cn, sans);
        p.is_ca = IsCa::NoCa;
        let cert = p.self_signed(&key).expect("self-signed leaf");
        Leaf { cert, key }
    }

    pub fn pem(&self) -> String {
        self.cert.pem()
    }

    pub fn der(&self) -> CertificateDer<'static> {
        self.cert.der().clone()
    }

    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    pub fn key_der(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key.serialize_der()))
    }
}

/// A server leaf for `det-master` signed by `ca`, for `sans`, valid from `from` until
/// `until` (year, month, day): how the expiry and not-yet-valid tests make theirs.
pub fn leaf_valid(ca: &Ca, sans: &[&str], from: (i32, u8, u8), until: (i32, u8, u8)) -> Leaf {
    let key = KeyPair::generate().expect("key");
    let mut p =
        CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
    p.distinguished_name.push(DnType::CommonName, "det-master");
    p.is_ca = IsCa::ExplicitNoCa;
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    p.not_before = rcgen::date_time_ymd(from.0, from.1, from.2);
    p.not_after = rcgen::date_time_ymd(until.0, until.1, until.2);
    let cert = p.signed_by(&key, &ca.cert, &ca.key).expect("leaf");
    Leaf { cert, key }
}

/// A server leaf for `det-master` signed by `ca`, for `sans`, valid since yesterday and
/// expiring `left` from now (a certificate about to expire).
pub fn leaf_expiring_in(ca: &Ca, sans: &[&str], left: std::time::Duration) -> Leaf {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    let epoch = rcgen::date_time_ymd(1970, 1, 1);
    let key = KeyPair::generate().expect("key");
    let mut p =
        CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
    p.distinguished_name.push(DnType::CommonName, "det-master");
    p.is_ca = IsCa::ExplicitNoCa;
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    p.not_before = epoch + (now - std::time::Duration::from_secs(86_400));
    p.not_after = epoch + (now + left);
    let cert = p.signed_by(&key, &ca.cert, &ca.key).expect("leaf");
    Leaf { cert, key }
}

/// SHA-256 of DER bytes as the proxy (and openssl) print it: lowercase hex pairs joined
/// by ':'.
pub fn fingerprint(der: &[u8]) -> String {
    super::sha256(der)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Writes `contents` to `dir/name` and returns the path.
pub fn write(dir: &Path, name: &str, contents: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, contents).expect("write file");
    path
}

/// Concatenates PEM blocks into one bundle.
pub fn bundle(pems: &[String]) -> String {
    pems.concat()
}
