//! TCP clients are identified through the kernel's socket tables: a loopback client (as a
//! host-network container would be) by its socket's owner and the cgroup that made the socket;
//! a client in another network namespace, joined by a veth pair, is not in this namespace's
//! tables, stays unknown, and fails closed: no selector matches it.

mod common;

use std::time::Duration;

use common::peers::{
    container_id, run_client, CertMaster, Cgroups, ClientRun, ClientSpec, Netns, Target, NOBODY,
};
use common::*;
use serde_json::Value;

fn line_of(proxy: &Proxy, run: &ClientRun) -> Value {
    proxy.access_line(run.local.expect("a TCP client's address"))
}

#[test]
fn loopback_clients_are_named_by_socket_owner_cgroup_unit_and_container() {
    let dir = tempdir();
    let cm = CertMaster::start(dir.path());
    let proxy = cm
        .cfg()
        .listeners(&[r#"{name: agent, listen: "127.0.0.1:0", present_client_cert: [{unit: determined-agent.service}]}"#])
        .start(dir.path());
    let target = Target::Tcp(proxy.tcp_addr("agent"));
    // Made after the proxy started: finding them takes a fresh walk of the hierarchy.
    let mut cg = Cgroups::new();
    let agent = cg.make("system.slice/determined-agent.service");
    let id = container_id();
    let docker = cg.make(&format!("system.slice/docker-{id}.scope"));

    let a = run_client(
        &ClientSpec {
            user: Some((NOBODY, NOBODY)),
            cgroup_procs: Some(cg.procs(&agent)),
            ..Default::default()
        },
        &target,
        "/agent",
    );
    assert!(a.status.contains("200"), "{a:?}");
    let l = line_of(&proxy, &a);
    assert_eq!(l["peer_uid"], NOBODY, "{l}");
    assert_eq!(l["peer_cgroup"], agent.as_str(), "{l}");
    assert_eq!(l["peer_unit"], "determined-agent.service", "{l}");
    assert_eq!(l["peer_container"], "", "{l}");
    // The socket tables know no gid and no pid.
    assert!(
        l.get("peer_pid").is_none() && l.get("peer_gid").is_none(),
        "{l}"
    );
    assert!(
        cm.presented("/agent"),
        "the agent's unit was not given the certificate"
    );

    let c = run_client(
        &ClientSpec {
            cgroup_procs: Some(cg.procs(&docker)),
            ..Default::default()
        },
        &target,
        "/container",
    );
    let l = line_of(&proxy, &c);
    assert_eq!(l["peer_uid"], nix::unistd::geteuid().as_raw(), "{l}");
    assert_eq!(l["peer_cgroup"], docker.as_str(), "{l}");
    assert_eq!(l["peer_container"], id.as_str(), "{l}");
    assert!(
        !cm.presented("/container"),
        "a host-network container was given the agent's certificate"
    );
}

/// A client in a network namespace of its own (as a container on a bridge) reaches a listener
/// on the host end of its veth pair. Its socket is not in the proxy's tables: the peer is
/// unknown, so no selector matches it, whatever the selector.
#[test]
fn a_client_from_another_network_namespace_is_unknown_and_matches_no_selector() {
    let dir = tempdir();
    let cm = CertMaster::start(dir.path());
    let ns = Netns::new();
    let bridge = |name: &str, extra: &str| {
        format!(
            "{{name: {name}, listen: \"{}:0\", allowed_clients: [{}]{extra}}}",
            ns.host_ip, ns.net
        )
    };
    let proxy = cm
        .cfg()
        .listeners(&[
            // A selector every identified local process matches ...
            r#"{name: local, listen: "127.0.0.1:0", present_client_cert: [{cgroup: "/**"}]}"#,
            &bridge("tasks", ", present_client_cert: [{cgroup: \"/**\"}]"),
            &bridge("guarded", ", allowed_peers: [{cgroup: \"/**\"}]"),
        ])
        .start(dir.path());
    let in_ns = ClientSpec {
        netns: Some(ns.name.clone()),
        ..Default::default()
    };

    // ... and does: a local client gets the certificate.
    let local = run_client(
        &ClientSpec::default(),
        &Target::Tcp(proxy.tcp_addr("local")),
        "/local",
    );
    assert!(local.status.contains("200"), "{local:?}");
    assert!(
        cm.presented("/local"),
        "the control client was not given the certificate"
    );

    let t = run_client(&in_ns, &Target::Tcp(proxy.tcp_addr("tasks")), "/from-netns");
    assert!(
        t.status.contains("200"),
        "the namespace's client was not relayed: {t:?}"
    );
    let l = line_of(&proxy, &t);
    assert!(l.get("peer_uid").is_none(), "{l}");
    assert_eq!(
        (
            l["peer_cgroup"].as_str(),
            l["peer_unit"].as_str(),
            l["peer_container"].as_str()
        ),
        (Some(""), Some(""), Some("")),
        "{l}"
    );
    assert!(
        !cm.presented("/from-netns"),
        "an unknown peer was given the agent's certificate"
    );
    let why = proxy.wait_for("why the client is unknown", Duration::from_secs(5), |v| {
        v["message"] == "client not identified" && v["listener"] == "tasks"
    });
    assert!(
        why["reason"]
            .as_str()
            .unwrap_or("")
            .contains("not in this network namespace"),
        "{why}"
    );

    let g = run_client(&in_ns, &Target::Tcp(proxy.tcp_addr("guarded")), "/guarded");
    assert_eq!(
        g.status, "",
        "allowed_peers let an unknown peer through: {g:?}"
    );
    let l = line_of(&proxy, &g);
    assert_eq!(l["outcome"], "denied", "{l}");
    assert!(
        !cm.reached("/guarded"),
        "the master was dialled for a denied peer"
    );
}
