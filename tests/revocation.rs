//! Revocation of the certificates `master_cert` itself lists, as `trust` writes it (leaf,
//! intermediate and root). A revoked leaf is refused at the handshake like any other; a
//! revoked trust anchor (a CA certificate of master_cert) cannot be checked by WebPKI, so the
//! CRL that revokes it is refused when the configuration is loaded, at start and on reload.
//! A certificate trusted because it is exactly one of master_cert's still has to pass every
//! check WebPKI did not make: revocation, dates, EKU, name. Meanwhile the certificates that
//! only an exact match admits (a self-signed one, a CA certificate as the master's own, a
//! leaf whose issuer is absent) still verify.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::pki::{Issued, OpensslCa};
use common::probes::metric as sample;
use common::proxy::run_expecting_exit;
use common::*;
use rcgen::{CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair};

const WITHIN: Duration = Duration::from_secs(10);

/// Root → intermediate → leaf (det-master, 127.0.0.1) by `openssl ca`; the master sends leaf
/// + intermediate and `bundle` holds all three, leaf first, as `trust` writes them.
struct Pki {
    dir: PathBuf,
    root: OpensslCa,
    inter: OpensslCa,
    leaf: Issued,
    server: TlsServer,
    bundle: PathBuf,
}

fn pki(dir: &Path) -> Pki {
    let root = OpensslCa::root(dir, "root", "Revocation Root CA");
    let inter = root.intermediate(dir, "inter", "Revocation Intermediate CA");
    let leaf = inter.server("leaf");
    let server = ServerBuilder::new(vec![leaf.der(), inter.der()], leaf.key_der()).start();
    let bundle = certs::write(
        dir,
        "master.crt",
        &certs::bundle(&[leaf.pem(), inter.pem(), root.pem()]),
    );
    Pki {
        dir: dir.to_path_buf(),
        root,
        inter,
        leaf,
        server,
        bundle,
    }
}

impl Pki {
    /// The full-chain bundle trusted, `crl` checked, written in its own folder `dir/name`.
    fn config(&self, name: &str, crl: &Path) -> PathBuf {
        Cfg::new("127.0.0.1", self.server.port())
            .master_cert(&self.bundle)
            .tls("crl", format!("[{}]", qp(crl)))
            .extra(ADMIN)
            .write(&sub(&self.dir, name))
    }
}

/// A fresh sub-folder of `dir` for one configuration.
fn sub(dir: &Path, name: &str) -> PathBuf {
    let d = dir.join(name);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The `FAILED:` line of a `check` report.
fn failed_line(out: &common::proxy::Exited) -> String {
    out.stdout
        .lines()
        .find(|l| l.starts_with("FAILED: "))
        .unwrap_or_else(|| panic!("no FAILED line:\n{out}"))
        .to_string()
}

/// What a load that refuses a CRL revoking an anchor says: the key, the CRL, the certificate
/// and where it is an anchor, why, and what to do.
fn assert_names_the_revoked_anchor(text: &str, crl: &Path, subject: &str, bundle: &Path) {
    for needle in [
        format!("security.tls.crl: {} revokes {subject}", crl.display()),
        format!(
            "a trust anchor in security.tls.master_cert ({})",
            bundle.display()
        ),
        "an anchor cannot be revoked".to_string(),
        format!(
            "remove that certificate from security.tls.master_cert ({})",
            bundle.display()
        ),
    ] {
        assert!(text.contains(&needle), "{needle:?} missing from:\n{text}");
    }
}

#[test]
fn a_revoked_leaf_listed_in_master_cert_is_refused_by_check_and_run() {
    let dir = tempdir();
    let p = pki(dir.path());
    p.inter.revoke(&p.leaf.cert);
    let crl = p.inter.crl(&dir.path().join("inter.crl"));

    let out = check(&p.config("check", &crl));
    assert_eq!(out.code(), Some(1), "{out}");
    let failed = failed_line(&out);
    assert!(
        failed.contains("revoked") && failed.contains("CN=det-master"),
        "{failed}"
    );

    let proxy = Proxy::start(&p.config("run", &crl));
    proxy.refuses(proxy.tcp_addr("main"), Refusal::UpstreamError, WITHIN);
    assert!(proxy.upstream_error(WITHIN).contains("revoked"));
    let admin = proxy.tcp_addr("admin").to_string();
    let counted = sample(
        &scrape_text(&admin),
        "det_tls_proxy_upstream_errors_total",
        &[("kind", "cert_revoked")],
    );
    assert_eq!(counted, 1.0);
}

#[test]
fn an_intermediate_listed_in_master_cert_and_revoked_makes_run_and_check_refuse_the_crl() {
    let dir = tempdir();
    let p = pki(dir.path());
    p.root.revoke(&p.inter.cert);
    let crl = p.root.crl(&dir.path().join("root.crl"));
    let subject = "CN=Revocation Intermediate CA";

    let out = check(&p.config("check", &crl));
    assert_eq!(out.code(), Some(2), "{out}");
    assert_names_the_revoked_anchor(&failed_line(&out), &crl, subject, &p.bundle);

    let out = run_expecting_exit(&p.config("run", &crl));
    assert_eq!(out.code(), Some(2), "{out}");
    assert_names_the_revoked_anchor(&out.stderr, &crl, subject, &p.bundle);
    assert_eq!(
        p.server.state().handshakes.len(),
        0,
        "the master was dialled"
    );
}

/// A CA certificate used as the master's own, listed in master_cert and revoked by its
/// issuer: it is an anchor too (the "leaf" WebPKI never path-checks).
#[test]
fn a_ca_certificate_used_as_the_masters_own_and_revoked_is_refused_at_load() {
    let dir = tempdir();
    let root = OpensslCa::root(dir.path(), "root", "Revocation Root CA");
    let own = root.ca_server("own");
    let server = ServerBuilder::new(vec![own.der()], own.key_der()).start();
    let bundle = certs::write(
        dir.path(),
        "master.crt",
        &certs::bundle(&[own.pem(), root.pem()]),
    );
    root.revoke(&own.cert);
    let crl = root.crl(&dir.path().join("root.crl"));
    let config = Cfg::new("127.0.0.1", server.port())
        .master_cert(&bundle)
        .tls("crl", format!("[{}]", qp(&crl)))
        .write(dir.path());
    let out = check(&config);
    assert_eq!(out.code(), Some(2), "{out}");
    assert_names_the_revoked_anchor(&failed_line(&out), &crl, "CN=det-master", &bundle);
}

#[test]
fn a_reload_to_a_crl_revoking_an_anchor_is_refused_and_the_old_configuration_kept() {
    let dir = tempdir();
    let p = pki(dir.path());
    let crl = p.root.crl(&dir.path().join("root.crl"));
    let proxy = Proxy::start(&p.config("run", &crl));
    let main = proxy.tcp_addr("main");
    relays(main, b"before\n");

    p.root.revoke(&p.inter.cert);
    let fresh = p.root.crl(&dir.path().join("fresh.crl"));
    std::fs::rename(&fresh, &crl).unwrap();
    let refusal = proxy.wait_for("the reload refused", Duration::from_secs(15), |v| {
        field(v, "message") == "reload refused; keeping the previous configuration"
    });
    assert_names_the_revoked_anchor(
        field(&refusal, "error"),
        &crl,
        "CN=Revocation Intermediate CA",
        &p.bundle,
    );
    let admin = proxy.tcp_addr("admin").to_string();
    let refused_reloads = sample(
        &scrape_text(&admin),
        "det_tls_proxy_config_reloads_total",
        &[("result", "error")],
    );
    assert_eq!(refused_reloads, 1.0);
    relays(main, b"the previous configuration still serves\n");
}

/// Pins alone anchor the path at the pinned intermediate, whose own revocation WebPKI never
/// checks: the proxy looks it up in the CRLs itself.
#[test]
fn a_pinned_intermediate_revoked_by_the_roots_crl_is_refused() {
    let dir = tempdir();
    let p = pki(dir.path());
    p.root.revoke(&p.inter.cert);
    let crl = p.root.crl(&dir.path().join("root.crl"));
    let config = Cfg::new("127.0.0.1", p.server.port())
        .tls(
            "master_cert_sha256",
            format!("[{}]", q(fingerprint(&p.inter.der()))),
        )
        .tls("crl", format!("[{}]", qp(&crl)))
        .write(dir.path());
    let out = check(&config);
    assert_eq!(out.code(), Some(1), "{out}");
    let failed = failed_line(&out);
    assert!(
        failed.contains("revoked") && failed.contains("CN=Revocation Intermediate CA"),
        "{failed}"
    );
}

/// A master that sends its leaf alone, trusted as exactly that leaf: WebPKI finds no issuer
/// and so never reaches the CRL; the proxy consults it itself.
#[test]
fn a_lone_leaf_trusted_as_itself_and_revoked_is_refused() {
    let dir = tempdir();
    let root = OpensslCa::root(dir.path(), "root", "Unsent Root CA");
    let leaf = root.server("leaf");
    let server = ServerBuilder::new(vec![leaf.der()], leaf.key_der()).start();
    let bundle = certs::write(dir.path(), "master.crt", &leaf.pem());
    root.revoke(&leaf.cert);
    let crl = root.crl(&dir.path().join("root.crl"));
    let config = Cfg::new("127.0.0.1", server.port())
        .master_cert(&bundle)
        .tls("crl", format!("[{}]", qp(&crl)))
        .write(dir.path());
    let out = check(&config);
    assert_eq!(out.code(), Some(1), "{out}");
    assert!(failed_line(&out).contains("revoked"), "{out}");
}

/// A self-signed CA:TRUE certificate (as `openssl req -x509` makes) trusted as itself is still
/// a server certificate only if its extended key usage allows serverAuth.
#[test]
fn a_ca_certificate_trusted_as_itself_must_allow_server_auth() {
    let dir = tempdir();
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(vec!["det-master".to_string()]).unwrap();
    params
        .distinguished_name
        .push(DnType::CommonName, "det-master");
    params.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let own = Leaf {
        cert: params.self_signed(&key).unwrap(),
        key,
    };
    let server = ServerBuilder::new(vec![own.der()], own.key_der()).start();
    let bundle = certs::write(dir.path(), "master.crt", &own.pem());
    let config = Cfg::new("127.0.0.1", server.port())
        .master_cert(&bundle)
        .tls("master_cert_name", "det-master")
        .write(dir.path());
    let out = check(&config);
    assert_eq!(out.code(), Some(1), "{out}");
    assert!(failed_line(&out).contains("InvalidPurpose"), "{out}");
}

/// The leaf of master_cert is trusted as itself, never as an issuer: a certificate signed
/// with its key (as whoever stole the key of a revoked leaf could make) is refused.
#[test]
fn a_certificate_signed_with_a_listed_leafs_key_is_refused() {
    let dir = tempdir();
    let root = Ca::root("Minting Root CA");
    let inter = root.intermediate("Minting Intermediate CA");
    let leaf = inter.server("det-master", &["det-master", "127.0.0.1"]);
    let bundle = certs::write(
        dir.path(),
        "master.crt",
        &certs::bundle(&[leaf.pem(), inter.pem(), root.pem()]),
    );
    let key = KeyPair::generate().unwrap();
    let mut params =
        CertificateParams::new(vec!["det-master".to_string(), "127.0.0.1".to_string()]).unwrap();
    params
        .distinguished_name
        .push(DnType::CommonName, "det-master");
    params.is_ca = IsCa::ExplicitNoCa;
    let minted = Leaf {
        cert: params.signed_by(&key, &leaf.cert, &leaf.key).unwrap(),
        key,
    };
    let server = ServerBuilder::new(vec![minted.der()], minted.key_der()).start();
    let config = Cfg::new("127.0.0.1", server.port())
        .master_cert(&bundle)
        .write(dir.path());
    let out = check(&config);
    assert_eq!(out.code(), Some(1), "{out}");
    assert!(failed_line(&out).contains("unknown issuer"), "{out}");
}

/// What the exact-match rule exists for still verifies through `run`: a self-signed
/// certificate, a self-signed CA:TRUE one, a CA certificate issued by a root and used as the
/// master's own (with its root), and a leaf whose issuer the master does not send.
#[test]
fn certificates_only_an_exact_match_admits_still_verify() {
    let dir = tempdir();
    let self_signed = Leaf::self_signed("det-master", &["det-master", "127.0.0.1"]);
    let key = KeyPair::generate().unwrap();
    let mut params =
        CertificateParams::new(vec!["det-master".to_string(), "127.0.0.1".to_string()]).unwrap();
    params
        .distinguished_name
        .push(DnType::CommonName, "det-master");
    params.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let self_signed_ca = Leaf {
        cert: params.self_signed(&key).unwrap(),
        key,
    };
    let root = OpensslCa::root(dir.path(), "root", "Exact Match Root CA");
    let ca_as_own = root.ca_server("own");
    let lone = root.server("lone");

    let cases: [(&str, Vec<_>, _, Vec<String>); 4] = [
        (
            "self-signed",
            vec![self_signed.der()],
            self_signed.key_der(),
            vec![self_signed.pem()],
        ),
        (
            "self-signed CA",
            vec![self_signed_ca.der()],
            self_signed_ca.key_der(),
            vec![self_signed_ca.pem()],
        ),
        (
            "CA as its own",
            vec![ca_as_own.der()],
            ca_as_own.key_der(),
            vec![ca_as_own.pem(), root.pem()],
        ),
        (
            "lone leaf",
            vec![lone.der()],
            lone.key_der(),
            vec![lone.pem()],
        ),
    ];
    for (name, chain, key, pems) in cases {
        let server = ServerBuilder::new(chain, key).start();
        let case = sub(dir.path(), &name.replace(' ', "-"));
        let bundle = certs::write(&case, "master.crt", &certs::bundle(&pems));
        let proxy = Cfg::new("127.0.0.1", server.port())
            .master_cert(&bundle)
            .tls("master_cert_name", "det-master")
            .start(&case);
        relays(proxy.tcp_addr("main"), name.as_bytes());
    }
}
