//! Policy from identity: `allowed_peers` closes a client no selector matches before anything
//! is dialled (outcome `denied`, the peer named); `present_client_cert` selectors choose who
//! gets the agent's certificate; both reload live; `peers_total` counts clients by the names
//! selectors give; `run` and `check` warn when a TCP listener lends the certificate to every
//! local process, and `check` and `config` show each listener's peer policy.

mod common;

use std::time::Duration;

use common::peers::{run_client, CertMaster, ClientSpec, Target, NOBODY};
use common::*;
use nix::sys::signal::Signal;

fn me() -> u32 {
    nix::unistd::geteuid().as_raw()
}

fn as_nobody() -> ClientSpec {
    ClientSpec {
        user: Some((NOBODY, NOBODY)),
        ..Default::default()
    }
}

#[test]
fn allowed_peers_closes_a_client_no_selector_matches_before_any_dial() {
    let dir = tempdir();
    let cm = CertMaster::start(dir.path());
    let proxy = cm
        .cfg()
        .listeners(&[&format!(
            "{{name: main, listen: \"127.0.0.1:0\", allowed_peers: [{{name: shipper, uid: {NOBODY}}}]}}"
        )])
        .extra(ADMIN)
        .start(dir.path());
    let target = Target::Tcp(proxy.tcp_addr("main"));

    let ok = run_client(&as_nobody(), &target, "/shipper");
    assert!(ok.status.contains("200"), "{ok:?}");

    let denied = run_client(&ClientSpec::default(), &target, "/intruder");
    assert_eq!(
        denied.status, "",
        "a peer no selector matches was relayed: {denied:?}"
    );
    let line = proxy.access_line(denied.local.unwrap());
    assert_eq!(line["outcome"], "denied", "{line}");
    assert_eq!(
        line["peer_uid"],
        me(),
        "the access line does not name the peer: {line}"
    );
    assert!(
        !cm.reached("/intruder"),
        "the master was dialled for a denied client"
    );
    let warn = proxy.wait_for("the denial's warning", Duration::from_secs(5), |v| {
        v["message"] == "client matches no selector of allowed_peers: closed"
    });
    assert!(
        warn["peer"]
            .as_str()
            .unwrap_or("")
            .contains(&format!("uid={}", me())),
        "{warn}"
    );

    let text = scrape_text(&proxy.tcp_addr("admin").to_string());
    let count = |peer: &str, result: &str| {
        (
            metric(
                &text,
                "det_tls_proxy_peers_total",
                &[("listener", "main"), ("peer", peer)],
            ),
            metric(
                &text,
                "det_tls_proxy_connections_total",
                &[("listener", "main"), ("result", result)],
            ),
        )
    };
    assert_eq!(count("shipper", "ok"), (1.0, 1.0), "{text}");
    assert_eq!(count("known", "denied"), (1.0, 1.0), "{text}");
    assert_eq!(
        metric(
            &text,
            "det_tls_proxy_peers_total",
            &[("listener", "main"), ("peer", "unknown")]
        ),
        0.0
    );
}

/// Both keys change live on SIGHUP, observed from outside: the master sees the certificate
/// appear for the selected peer, and a client the new `allowed_peers` excludes is closed.
#[test]
fn present_client_cert_and_allowed_peers_reload_live() {
    let dir = tempdir();
    let cm = CertMaster::start(dir.path());
    let write = |listener: &str| cm.cfg().listeners(&[listener]).write(dir.path());
    let path = write(r#"{name: main, listen: "127.0.0.1:0", present_client_cert: false}"#);
    let proxy = Proxy::start(&path);
    let target = Target::Tcp(proxy.tcp_addr("main"));
    let me_client = ClientSpec::default();
    run_client(&me_client, &target, "/before");
    assert!(!cm.presented("/before"));

    let reload = |listener: &str, n: usize| {
        replace(&path, &cm.cfg().listeners(&[listener]).render());
        proxy.signal(Signal::SIGHUP);
        proxy.wait_for_nth("a reload", n, Duration::from_secs(15), |v| {
            v["message"]
                .as_str()
                .unwrap_or("")
                .contains("configuration reloaded")
        });
    };
    reload(
        &format!(
            "{{name: main, listen: \"127.0.0.1:0\", present_client_cert: [{{uid: {}}}]}}",
            me()
        ),
        1,
    );
    run_client(&me_client, &target, "/selected");
    assert!(
        cm.presented("/selected"),
        "the reloaded selector did not give the certificate"
    );
    run_client(&as_nobody(), &target, "/not-selected");
    assert!(
        !cm.presented("/not-selected"),
        "a peer the selector excludes got the certificate"
    );

    reload(
        &format!("{{name: main, listen: \"127.0.0.1:0\", allowed_peers: [{{uid: {NOBODY}}}]}}"),
        2,
    );
    let denied = run_client(&me_client, &target, "/excluded");
    assert_eq!(denied.status, "", "{denied:?}");
    assert_eq!(
        proxy.access_line(denied.local.unwrap())["outcome"],
        "denied"
    );
    let allowed = run_client(&as_nobody(), &target, "/allowed");
    assert!(allowed.status.contains("200"), "{allowed:?}");
}

#[test]
fn run_and_check_warn_when_a_tcp_listener_lends_the_certificate_to_every_local_process() {
    let dir = tempdir();
    let cm = CertMaster::start(dir.path());
    let sock = dir.path().join("s.sock");
    let cfg = cm.cfg().listeners(&[
        r#"{name: open, listen: "127.0.0.1:0"}"#,
        r#"{name: agent, listen: "127.0.0.1:0", present_client_cert: [{unit: determined-agent.service}], allowed_peers: [{uid: 0}, {container: fluent-bit}]}"#,
        &format!("{{name: logs, listen: {}}}", q(format!("unix:{}", sock.display()))),
    ]);
    let path = cfg.write(dir.path());
    let proxy = Proxy::start(&path);
    let warned: Vec<_> = proxy
        .json_lines()
        .into_iter()
        .filter(|v| {
            v["level"] == "WARN"
                && v["message"]
                    .as_str()
                    .unwrap_or("")
                    .contains("client certificate")
        })
        .collect();
    assert_eq!(
        warned.len(),
        1,
        "one warning, for the loopback listener alone: {warned:?}"
    );
    let w = warned[0]["message"].as_str().unwrap();
    assert!(
        w.contains("listener \"open\"")
            && w.contains("present_client_cert: [{unit: determined-agent.service}]"),
        "{w}"
    );
    drop(proxy);

    let mut cmd = command();
    cmd.arg("check").arg("--config").arg(&path);
    let out = run_to_exit(cmd, Duration::from_secs(20));
    assert_eq!(out.code(), Some(0), "{out}");
    assert!(out.stdout.contains("WARNING: listener \"open\""), "{out}");
    assert!(
        out.stdout.contains("client certificate to [{unit: determined-agent.service}]; peers allowed: [{uid: 0}, {container: fluent-bit}]"),
        "check does not show the agent listener's policy:\n{out}"
    );

    let mut cmd = command();
    cmd.arg("config").arg("--config").arg(&path);
    let out = run_to_exit(cmd, Duration::from_secs(20));
    assert!(
        out.stdout
            .contains("\"allowed_peers\":[{\"uid\":0},{\"container\":\"fluent-bit\"}]"),
        "{out}"
    );
    assert!(
        out.stdout
            .contains("\"present_client_cert\":[{\"unit\":\"determined-agent.service\"}]"),
        "{out}"
    );
}
