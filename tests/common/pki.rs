//! A certificate authority run by the `openssl` command, for the revocation tests: a CA
//! directory (index.txt, serial, crlnumber) where `openssl ca` issues certificates, revokes
//! them and makes CRLs, so each CRL's issuer is exactly the CA that issued the certificates.

use std::path::{Path, PathBuf};
use std::process::Command;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

const CNF: &str = r#"[ca]
default_ca = ca_default
[ca_default]
dir = DIR
database = $dir/index.txt
new_certs_dir = $dir/newcerts
serial = $dir/serial
crlnumber = $dir/crlnumber
certificate = $dir/ca.pem
private_key = $dir/ca.key
default_md = sha256
policy = policy_any
unique_subject = no
[policy_any]
commonName = supplied
[req]
distinguished_name = dn
[dn]
[v3_ca]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign,digitalSignature
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
"#;

const CA_EXT: &str = "basicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign,digitalSignature\nsubjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n";

/// Runs `openssl` with `args` in `dir`; panics with its stderr when it fails.
fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("run openssl (install it: tests/run.sh)");
    assert!(
        out.status.success(),
        "openssl {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// One CA: its directory, certificate (`ca.pem`) and key.
pub struct OpensslCa {
    pub dir: PathBuf,
    pub cert: PathBuf,
}

/// A certificate issued by an [`OpensslCa`], as files.
pub struct Issued {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Issued {
    pub fn der(&self) -> CertificateDer<'static> {
        CertificateDer::from_pem_file(&self.cert).expect("issued certificate")
    }

    pub fn key_der(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::from_pem_file(&self.key).expect("issued key")
    }

    pub fn pem(&self) -> String {
        std::fs::read_to_string(&self.cert).unwrap()
    }
}

impl OpensslCa {
    /// An empty CA directory `parent/name` with its configuration.
    fn directory(parent: &Path, name: &str) -> OpensslCa {
        let dir = parent.join(name);
        std::fs::create_dir_all(dir.join("newcerts")).unwrap();
        std::fs::write(dir.join("index.txt"), "").unwrap();
        std::fs::write(dir.join("serial"), "1000\n").unwrap();
        std::fs::write(dir.join("crlnumber"), "1000\n").unwrap();
        let cnf = CNF.replace("DIR", dir.to_str().unwrap());
        std::fs::write(dir.join("ca.cnf"), cnf).unwrap();
        OpensslCa {
            cert: dir.join("ca.pem"),
            dir,
        }
    }

    /// A self-signed root in `parent/name`.
    pub fn root(parent: &Path, name: &str, cn: &str) -> OpensslCa {
        let ca = Self::directory(parent, name);
        let subj = format!("/CN={cn}");
        openssl(
            &ca.dir,
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
                "-days",
                "3650",
                "-config",
                "ca.cnf",
                "-extensions",
                "v3_ca",
                "-subj",
                &subj,
            ],
        );
        ca
    }

    /// Issues a certificate for `cn` with the extensions `ext`, its key and certificate at
    /// `out_dir/stem.{key,pem}`.
    fn issue(&self, out_dir: &Path, stem: &str, cn: &str, ext: &str) -> Issued {
        let key = out_dir.join(format!("{stem}.key"));
        let csr = out_dir.join(format!("{stem}.csr"));
        let cert = out_dir.join(format!("{stem}.pem"));
        let extfile = out_dir.join(format!("{stem}.ext"));
        std::fs::write(&extfile, ext).unwrap();
        let s = |p: &Path| p.to_str().unwrap().to_string();
        let subj = format!("/CN={cn}");
        openssl(
            &self.dir,
            &[
                "req",
                "-new",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-config",
                "ca.cnf",
                "-subj",
                &subj,
                "-keyout",
                &s(&key),
                "-out",
                &s(&csr),
            ],
        );
        openssl(
            &self.dir,
            &[
                "ca",
                "-batch",
                "-notext",
                "-config",
                "ca.cnf",
                "-days",
                "365",
                "-in",
                &s(&csr),
                "-out",
                &s(&cert),
                "-extfile",
                &s(&extfile),
            ],
        );
        Issued { cert, key }
    }

    /// An intermediate CA signed by `self`, with its own CA directory `parent/name`.
    pub fn intermediate(&self, parent: &Path, name: &str, cn: &str) -> OpensslCa {
        let ca = Self::directory(parent, name);
        let issued = self.issue(&ca.dir, "issued", cn, CA_EXT);
        std::fs::copy(&issued.cert, ca.dir.join("ca.pem")).unwrap();
        std::fs::copy(&issued.key, ca.dir.join("ca.key")).unwrap();
        ca
    }

    /// A server certificate for `det-master` and 127.0.0.1, in this CA's directory.
    pub fn server(&self, stem: &str) -> Issued {
        let ext = "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\nsubjectAltName=DNS:det-master,IP:127.0.0.1\nauthorityKeyIdentifier=keyid\n";
        self.issue(&self.dir.clone(), stem, "det-master", ext)
    }

    /// A CA certificate (CA:TRUE) for `det-master` and 127.0.0.1, used as a master's own, in
    /// this CA's directory.
    pub fn ca_server(&self, stem: &str) -> Issued {
        let ext = format!("{CA_EXT}subjectAltName=DNS:det-master,IP:127.0.0.1\n");
        self.issue(&self.dir.clone(), stem, "det-master", &ext)
    }

    /// Marks `cert` revoked in this CA's database (takes effect in the next CRL).
    pub fn revoke(&self, cert: &Path) {
        openssl(
            &self.dir,
            &["ca", "-config", "ca.cnf", "-revoke", cert.to_str().unwrap()],
        );
    }

    /// A CRL of everything revoked so far, valid for a day, written to `out`.
    pub fn crl(&self, out: &Path) -> PathBuf {
        let o = out.to_str().unwrap();
        openssl(
            &self.dir,
            &[
                "ca",
                "-config",
                "ca.cnf",
                "-gencrl",
                "-crlhours",
                "24",
                "-out",
                o,
            ],
        );
        out.to_path_buf()
    }

    /// A CRL whose nextUpdate has passed (January 2020), written to `out`.
    pub fn expired_crl(&self, out: &Path) -> PathBuf {
        let o = out.to_str().unwrap();
        openssl(
            &self.dir,
            &[
                "ca",
                "-config",
                "ca.cnf",
                "-gencrl",
                "-crl_lastupdate",
                "20200101000000Z",
                "-crl_nextupdate",
                "20200201000000Z",
                "-out",
                o,
            ],
        );
        out.to_path_buf()
    }

    pub fn der(&self) -> CertificateDer<'static> {
        CertificateDer::from_pem_file(&self.cert).expect("CA certificate")
    }

    pub fn pem(&self) -> String {
        std::fs::read_to_string(&self.cert).unwrap()
    }
}
