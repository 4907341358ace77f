//! `security.tls.master_cert_sha256`: the master is accepted only when a certificate of the
//! chain it sends has a pinned fingerprint. Alone, the pinned certificate is the trust (a
//! pinned leaf: its dates and the name; a pinned intermediate: the only anchor of the path);
//! with `master_cert` both must hold; with `skip_verify`, the pin and the leaf's dates. A
//! mismatch names both sides and is counted as `cert_pin_mismatch`.

mod common;

use std::path::Path;
use std::time::Duration;

use common::probes::metric as sample;
use common::*;

const REFUSED_WITHIN: Duration = Duration::from_secs(10);

/// A YAML list of fingerprints.
fn pins(fps: &[&str]) -> String {
    format!("[{}]", fps.iter().map(q).collect::<Vec<_>>().join(", "))
}

#[test]
fn a_pinned_leaf_is_trusted_without_master_cert_or_system_roots() {
    let dir = tempdir();
    let master = Master::start(dir.path(), Behavior::Echo);
    // No master_cert: the system roots do not know the test CA; the pin alone is the trust.
    let cfg = Cfg::new("127.0.0.1", master.server.port()).tls(
        "master_cert_sha256",
        pins(&[&fingerprint(&master.leaf.der())]),
    );
    let proxy = cfg.start(dir.path());
    relays(proxy.tcp_addr("main"), b"pinned leaf\n");

    let ran = check(&cfg.write(dir.path()));
    let (code, out) = (ran.code(), ran.stdout);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains(&format!(
            "pin         [0] matches the pinned {}",
            fingerprint(&master.leaf.der())
        )),
        "{out}"
    );
}

#[test]
fn a_wrong_pin_is_refused_with_both_sides_named_and_counted() {
    let dir = tempdir();
    let master = Master::start(dir.path(), Behavior::Echo);
    let other = fingerprint(&Ca::root("Some Other Certificate").der());
    let cfg = Cfg::new("127.0.0.1", master.server.port())
        .tls("master_cert_sha256", pins(&[&other]))
        .extra(ADMIN);
    let proxy = cfg.start(dir.path());
    proxy.refuses(
        proxy.tcp_addr("main"),
        Refusal::UpstreamError,
        REFUSED_WITHIN,
    );

    let error = proxy.upstream_error(REFUSED_WITHIN);
    for needle in [
        "security.tls.master_cert_sha256",
        &fingerprint(&master.leaf.der()),
        &other,
        "renewed",
    ] {
        assert!(error.contains(needle), "{needle:?} missing from: {error}");
    }
    let admin = proxy.tcp_addr("admin").to_string();
    let counted = sample(
        &scrape_text(&admin),
        "det_tls_proxy_upstream_errors_total",
        &[("kind", "cert_pin_mismatch")],
    );
    assert_eq!(counted, 1.0);

    let ran = check(&cfg.write(dir.path()));
    let (code, out) = (ran.code(), ran.stdout);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("pin         MISMATCH"), "{out}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("FAILED: ") && l.contains("master_cert_sha256")),
        "{out}"
    );
}

#[test]
fn with_master_cert_both_the_chain_and_a_pin_must_hold() {
    let dir = tempdir();
    let master = Master::start(dir.path(), Behavior::Echo);
    let leaf_pin = fingerprint(&master.leaf.der());
    let wrong_pin = fingerprint(&Ca::root("Not The Master").der());
    let wrong_ca = certs::write(dir.path(), "wrong-ca.pem", &Ca::root("Wrong CA").pem());
    let run = |ca: &Path, pin: &str, sub: &str| {
        let d = dir.path().join(sub);
        std::fs::create_dir(&d).unwrap();
        Cfg::new("127.0.0.1", master.server.port())
            .master_cert(ca)
            .tls("master_cert_sha256", pins(&[pin]))
            .start(&d)
    };

    let right_ca_wrong_pin = run(&master.ca_pem, &wrong_pin, "a");
    right_ca_wrong_pin.refuses(
        right_ca_wrong_pin.tcp_addr("main"),
        Refusal::UpstreamError,
        REFUSED_WITHIN,
    );
    assert!(right_ca_wrong_pin
        .upstream_error(REFUSED_WITHIN)
        .contains("master_cert_sha256"));

    let wrong_ca_right_pin = run(&wrong_ca, &leaf_pin, "b");
    wrong_ca_right_pin.refuses(
        wrong_ca_right_pin.tcp_addr("main"),
        Refusal::UpstreamError,
        REFUSED_WITHIN,
    );
    assert!(wrong_ca_right_pin
        .upstream_error(REFUSED_WITHIN)
        .contains("unknown issuer"));

    let both = run(&master.ca_pem, &leaf_pin, "c");
    relays(both.tcp_addr("main"), b"both hold\n");
}

#[test]
fn a_pinned_intermediate_anchors_the_path_and_the_name_is_still_checked() {
    let dir = tempdir();
    let root = Ca::root("Pinning Root CA");
    let inter = root.intermediate("Pinning Intermediate CA");
    let good = inter.server("det-master", &["det-master", "127.0.0.1"]);
    let wrong_name = inter.server("elsewhere", &["elsewhere.example"]);
    let pin = pins(&[&fingerprint(&inter.der())]);
    let serve =
        |leaf: &Leaf| ServerBuilder::new(vec![leaf.der(), inter.der()], leaf.key_der()).start();
    let (good_master, wrong_master) = (serve(&good), serve(&wrong_name));

    let proxy = Cfg::new("127.0.0.1", good_master.port())
        .tls("master_cert_sha256", pin.clone())
        .start(dir.path());
    relays(proxy.tcp_addr("main"), b"through the intermediate\n");

    let d = dir.path().join("wrong-name");
    std::fs::create_dir(&d).unwrap();
    let proxy = Cfg::new("127.0.0.1", wrong_master.port())
        .tls("master_cert_sha256", pin)
        .start(&d);
    proxy.refuses(
        proxy.tcp_addr("main"),
        Refusal::UpstreamError,
        REFUSED_WITHIN,
    );
    assert!(proxy
        .upstream_error(REFUSED_WITHIN)
        .contains("not valid for 127.0.0.1"));
}

#[test]
fn a_list_of_pins_accepts_the_old_and_the_new_certificate() {
    let dir = tempdir();
    let ca = Ca::root("Rotation CA");
    let (old, new, unpinned) = (
        ca.server("det-master", &["127.0.0.1"]),
        ca.server("det-master", &["127.0.0.1"]),
        ca.server("det-master", &["127.0.0.1"]),
    );
    let list = pins(&[&fingerprint(&old.der()), &fingerprint(&new.der())]);
    for (i, (leaf, works)) in [(&old, true), (&new, true), (&unpinned, false)]
        .into_iter()
        .enumerate()
    {
        let server = ServerBuilder::new(vec![leaf.der()], leaf.key_der()).start();
        let d = dir.path().join(i.to_string());
        std::fs::create_dir(&d).unwrap();
        let proxy = Cfg::new("127.0.0.1", server.port())
            .tls("master_cert_sha256", list.clone())
            .start(&d);
        if works {
            relays(proxy.tcp_addr("main"), b"rotation\n");
        } else {
            proxy.refuses(
                proxy.tcp_addr("main"),
                Refusal::UpstreamError,
                REFUSED_WITHIN,
            );
        }
    }
}

#[test]
fn with_skip_verify_a_pinned_but_expired_leaf_is_refused() {
    let dir = tempdir();
    let ca = Ca::root("Expired Pin CA");
    let leaf = leaf_valid(&ca, &["127.0.0.1"], (2020, 1, 1), (2021, 1, 1));
    let server = ServerBuilder::new(vec![leaf.der()], leaf.key_der()).start();
    let proxy = Cfg::new("127.0.0.1", server.port())
        .tls("skip_verify", "true")
        .tls("master_cert_sha256", pins(&[&fingerprint(&leaf.der())]))
        .start(dir.path());
    proxy.refuses(
        proxy.tcp_addr("main"),
        Refusal::UpstreamError,
        REFUSED_WITHIN,
    );
    assert!(proxy.upstream_error(REFUSED_WITHIN).contains("expired"));
}

#[test]
fn with_skip_verify_the_pin_decides_and_the_name_is_not_checked() {
    let dir = tempdir();
    let ca = Ca::root("Skip Verify Pin CA");
    // Valid only for a name the proxy does not dial.
    let leaf = ca.server("elsewhere", &["elsewhere.example"]);
    let server = ServerBuilder::new(vec![leaf.der()], leaf.key_der()).start();
    let with = |pin: &str, sub: &str| {
        let d = dir.path().join(sub);
        std::fs::create_dir(&d).unwrap();
        Cfg::new("127.0.0.1", server.port())
            .tls("skip_verify", "true")
            .tls("master_cert_sha256", pins(&[pin]))
            .start(&d)
    };
    let pinned = with(&fingerprint(&leaf.der()), "right");
    relays(pinned.tcp_addr("main"), b"name not checked\n");

    let wrong = with(&fingerprint(&ca.der()), "wrong");
    wrong.refuses(
        wrong.tcp_addr("main"),
        Refusal::UpstreamError,
        REFUSED_WITHIN,
    );
    assert!(wrong
        .upstream_error(REFUSED_WITHIN)
        .contains("master_cert_sha256"));
}
