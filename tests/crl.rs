//! `security.tls.crl`: certificate revocation lists made by `openssl ca`. A revoked leaf or
//! intermediate is refused with the certificate and the CRL named; a certificate whose issuer
//! has no configured CRL passes; an expired CRL is applied with a warning, not an outage;
//! `check` shows each certificate's status and each CRL's next update; a CRL rewritten on
//! disk applies to new connections without a signal.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::pki::{Issued, OpensslCa};
use common::probes::metric as sample;
use common::*;
use nix::sys::signal::Signal;

const WITHIN: Duration = Duration::from_secs(10);

/// Root → intermediate → leaf (det-master, 127.0.0.1), all issued by `openssl ca`; the
/// master sends leaf + intermediate.
struct Pki {
    root: OpensslCa,
    inter: OpensslCa,
    leaf: Issued,
    server: TlsServer,
}

fn pki(dir: &Path) -> Pki {
    let root = OpensslCa::root(dir, "root", "CRL Test Root CA");
    let inter = root.intermediate(dir, "inter", "CRL Test Intermediate CA");
    let leaf = inter.server("leaf");
    let server = ServerBuilder::new(vec![leaf.der(), inter.der()], leaf.key_der()).start();
    Pki {
        root,
        inter,
        leaf,
        server,
    }
}

impl Pki {
    /// A config trusting the root and checking `crls`, in its own folder `dir/sub`.
    fn cfg(&self, crls: &[&Path]) -> Cfg {
        let list: Vec<String> = crls.iter().map(|p| qp(p)).collect();
        Cfg::new("127.0.0.1", self.server.port())
            .master_cert(&self.root.cert)
            .tls("crl", format!("[{}]", list.join(", ")))
    }
}

/// A fresh sub-folder of `dir` for one proxy's configuration.
fn sub(dir: &Path, name: &str) -> PathBuf {
    let d = dir.join(name);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn a_leaf_revoked_by_its_issuers_crl_is_refused_naming_it_and_the_crl() {
    let dir = tempdir();
    let p = pki(dir.path());
    p.inter.revoke(&p.leaf.cert);
    let crl = p.inter.crl(&dir.path().join("inter.crl"));
    let proxy = p.cfg(&[&crl]).extra(ADMIN).start(dir.path());
    proxy.refuses(proxy.tcp_addr("main"), Refusal::UpstreamError, WITHIN);

    let error = proxy.upstream_error(WITHIN);
    for needle in [
        "revoked",
        "CN=det-master",
        "serial 10:00",
        &crl.display().to_string(),
    ] {
        assert!(error.contains(needle), "{needle:?} missing from: {error}");
    }
    let admin = proxy.tcp_addr("admin").to_string();
    let counted = sample(
        &scrape_text(&admin),
        "det_tls_proxy_upstream_errors_total",
        &[("kind", "cert_revoked")],
    );
    assert_eq!(counted, 1.0);
}

#[test]
fn an_intermediate_revoked_by_the_roots_crl_is_refused() {
    let dir = tempdir();
    let p = pki(dir.path());
    p.root.revoke(&p.inter.cert);
    let root_crl = p.root.crl(&dir.path().join("root.crl"));
    let inter_crl = p.inter.crl(&dir.path().join("inter.crl"));
    let proxy = p.cfg(&[&inter_crl, &root_crl]).start(dir.path());
    proxy.refuses(proxy.tcp_addr("main"), Refusal::UpstreamError, WITHIN);
    let error = proxy.upstream_error(WITHIN);
    assert!(
        error.contains("CN=CRL Test Intermediate CA") && error.contains("root.crl"),
        "{error}"
    );
}

#[test]
fn a_crl_of_an_unrelated_ca_leaves_the_status_unknown_and_relays() {
    let dir = tempdir();
    let p = pki(dir.path());
    let other = OpensslCa::root(dir.path(), "other", "Unrelated CA");
    let revoked = other.server("revoked");
    other.revoke(&revoked.cert);
    let crl = other.crl(&dir.path().join("other.crl"));
    let cfg = p.cfg(&[&crl]);
    let proxy = cfg.start(&sub(dir.path(), "run"));
    relays(proxy.tcp_addr("main"), b"unknown status allowed\n");

    let ran = check(&cfg.write(&sub(dir.path(), "check")));
    let (code, out) = (ran.code(), ran.stdout);
    assert_eq!(code, Some(0), "{out}");
    let unknown = out
        .lines()
        .filter(|l| l.trim() == "CRL       no CRL from its issuer")
        .count();
    assert_eq!(unknown, 2, "leaf and intermediate:\n{out}");
}

#[test]
fn an_expired_crl_is_applied_with_a_warning_at_start_and_reload() {
    let dir = tempdir();
    let p = pki(dir.path());
    let crl = p.inter.expired_crl(&dir.path().join("stale.crl"));
    let proxy = p.cfg(&[&crl]).start(dir.path());
    relays(proxy.tcp_addr("main"), b"stale but applied\n");
    let warned = |v: &serde_json::Value| {
        v["level"] == "WARN"
            && field(v, "message").contains("expired")
            && field(v, "path") == crl.to_str().unwrap()
            && field(v, "next_update").starts_with("2020-02-01")
    };
    proxy.wait_for("the expired-CRL warning", WITHIN, warned);
    proxy.signal(Signal::SIGHUP);
    proxy.wait_for_nth("the warning again after a reload", 2, WITHIN, warned);
}

#[test]
fn an_expired_crl_still_revokes() {
    let dir = tempdir();
    let p = pki(dir.path());
    p.inter.revoke(&p.leaf.cert);
    let crl = p.inter.expired_crl(&dir.path().join("stale.crl"));
    let proxy = p.cfg(&[&crl]).start(dir.path());
    proxy.refuses(proxy.tcp_addr("main"), Refusal::UpstreamError, WITHIN);
    assert!(proxy.upstream_error(WITHIN).contains("revoked"));
}

#[test]
fn check_shows_each_certificates_crl_status_and_each_crls_next_update() {
    let dir = tempdir();
    let p = pki(dir.path());
    let root_crl = p.root.crl(&dir.path().join("root.crl"));
    let stale = p.inter.expired_crl(&dir.path().join("stale.crl"));

    let ran = check(&p.cfg(&[&root_crl, &stale]).write(&sub(dir.path(), "a")));
    let (code, out) = (ran.code(), ran.stdout);
    assert_eq!(code, Some(0), "{out}");
    for needle in [
        format!("CRL       not revoked per {}", stale.display()),
        format!("CRL       not revoked per {}", root_crl.display()),
        format!(
            "CRL         {}  (CN=CRL Test Root CA; next update 20",
            root_crl.display()
        ),
        format!(
            "CRL         {}  (CN=CRL Test Intermediate CA; EXPIRED: next update was due 2020-02-01",
            stale.display()
        ),
    ] {
        assert!(out.contains(&needle), "{needle:?} missing:\n{out}");
    }

    let out = check(&p.cfg(&[&root_crl]).write(&sub(dir.path(), "b"))).stdout;
    assert!(out.contains("CRL       no CRL from its issuer"), "{out}");

    p.inter.revoke(&p.leaf.cert);
    let revoking = p.inter.crl(&dir.path().join("inter.crl"));
    let ran = check(&p.cfg(&[&revoking]).write(&sub(dir.path(), "c")));
    let (code, out) = (ran.code(), ran.stdout);
    assert_eq!(code, Some(1), "{out}");
    let revoked = format!("CRL       REVOKED per {} on 20", revoking.display());
    assert!(out.contains(&revoked), "{out}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("FAILED: ") && l.contains("revoked")),
        "{out}"
    );
}

#[test]
fn a_crl_rewritten_on_disk_refuses_new_connections_without_a_signal() {
    let dir = tempdir();
    let p = pki(dir.path());
    let crl = p.inter.crl(&dir.path().join("inter.crl"));
    let proxy = p.cfg(&[&crl]).start(dir.path());
    let main = proxy.tcp_addr("main");
    relays(main, b"before\n");
    relays(main, b"a session is cached\n");

    p.inter.revoke(&p.leaf.cert);
    let fresh = p.inter.crl(&dir.path().join("fresh.crl"));
    std::fs::rename(&fresh, &crl).unwrap();
    proxy.wait_for(
        "a reload by the file watcher",
        Duration::from_secs(15),
        |v| field(v, "message") == "configuration reloaded" && field(v, "trigger") == "file change",
    );
    proxy.refuses(main, Refusal::UpstreamError, WITHIN);
    assert!(proxy.upstream_error(WITHIN).contains("revoked"));
}
