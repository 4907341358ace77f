//! Unix-socket clients are identified by the credentials the kernel recorded at connect
//! (uid, gid, pid) and their process's cgroup v2 path, which names the systemd unit and, in a
//! runtime's layout, the container: real processes under another uid, moved into real cgroups
//! (`…/determined-agent.service`, `…/docker-<id>.scope`) before they connect. The agent's
//! certificate goes to the agent's unit alone.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use common::peers::{
    container_id, run_client, CertMaster, Cgroups, ClientRun, ClientSpec, Target, NOBODY,
};
use common::proxy::is_access;
use common::*;
use serde_json::Value;

/// The access line of the client with pid `pid`.
fn line_of(proxy: &Proxy, run: &ClientRun) -> Value {
    let pid = run.pid;
    proxy.wait_for(
        &format!("the access line of pid {pid}"),
        Duration::from_secs(15),
        |v| is_access(v) && v["peer_pid"] == pid,
    )
}

#[test]
fn unix_clients_are_named_by_uid_gid_pid_cgroup_unit_and_container() {
    let dir = tempdir();
    // Other users must reach the socket inside the test's directory.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let cm = CertMaster::start(dir.path());
    let sock = dir.path().join("logs.sock");
    let proxy = cm
        .cfg()
        .listeners(&[&format!(
            "{{name: logs, listen: {}, mode: \"0666\", present_client_cert: [{{unit: determined-agent.service}}]}}",
            q(format!("unix:{}", sock.display()))
        )])
        .start(dir.path());
    let mut cg = Cgroups::new();
    let agent = cg.make("system.slice/determined-agent.service");
    let id = container_id();
    let docker = cg.make(&format!("system.slice/docker-{id}.scope"));
    let target = Target::Unix(sock);

    // The agent's unit, as another user.
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
    assert_eq!(l["peer_gid"], NOBODY, "{l}");
    assert_eq!(l["peer_cgroup"], agent.as_str(), "{l}");
    assert_eq!(l["peer_unit"], "determined-agent.service", "{l}");
    assert_eq!(l["peer_container"], "", "{l}");
    assert_eq!(l["outcome"], "ok", "{l}");
    assert!(
        cm.presented("/agent"),
        "the agent's unit was not given the certificate"
    );

    // A Docker container's scope, as this process's user.
    let me = nix::unistd::geteuid().as_raw();
    let c = run_client(
        &ClientSpec {
            cgroup_procs: Some(cg.procs(&docker)),
            ..Default::default()
        },
        &target,
        "/container",
    );
    assert!(c.status.contains("200"), "{c:?}");
    let l = line_of(&proxy, &c);
    assert_eq!(l["peer_uid"], me, "{l}");
    assert_eq!(l["peer_cgroup"], docker.as_str(), "{l}");
    assert_eq!(l["peer_unit"], format!("docker-{id}.scope"), "{l}");
    assert_eq!(l["peer_container"], id.as_str(), "{l}");
    assert!(
        !cm.presented("/container"),
        "a container was given the agent's certificate"
    );

    // Another unit of the same machine, same user as the agent client.
    let other = cg.make("system.slice/fluent-bit.service");
    let f = run_client(
        &ClientSpec {
            user: Some((NOBODY, NOBODY)),
            cgroup_procs: Some(cg.procs(&other)),
            ..Default::default()
        },
        &target,
        "/fluent-bit",
    );
    assert_eq!(line_of(&proxy, &f)["peer_unit"], "fluent-bit.service");
    assert!(
        !cm.presented("/fluent-bit"),
        "another unit was given the agent's certificate"
    );
}

#[test]
fn text_access_lines_carry_the_peer_too() {
    let dir = tempdir();
    let cm = CertMaster::start(dir.path());
    let sock = dir.path().join("t.sock");
    let cfg = cm
        .cfg()
        .listeners(&[&format!(
            "{{name: t, listen: {}}}",
            q(format!("unix:{}", sock.display()))
        )])
        .write(dir.path());
    // The same file, text format.
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("format: json", "format: text");
    std::fs::write(&cfg, text).unwrap();
    let mut cmd = command();
    cmd.arg("run").arg("--config").arg(&cfg);
    let proxy = Proxy::spawn(cmd);
    proxy.wait_for_text("ready", Duration::from_secs(15));
    let mut cg = Cgroups::new();
    let unit = cg.make("system.slice/determined-agent.service");
    let run = run_client(
        &ClientSpec {
            cgroup_procs: Some(cg.procs(&unit)),
            ..Default::default()
        },
        &Target::Unix(sock),
        "/text",
    );
    let line = proxy.wait_for_text(&format!("peer_pid={}", run.pid), Duration::from_secs(15));
    for want in [
        format!("peer_uid={}", nix::unistd::geteuid().as_raw()),
        // Quoted: a cgroup name may hold any character but '/'.
        format!("peer_cgroup=\"{unit}\""),
        "peer_unit=\"determined-agent.service\"".to_string(),
        "peer_container=\"\"".to_string(),
    ] {
        assert!(line.contains(&want), "{want:?} missing from {line}");
    }
}
