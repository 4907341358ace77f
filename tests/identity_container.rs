//! A client on a container bridge, end to end: real podman containers on a bridge network,
//! clients connecting from them to the proxy's listener on the bridge's gateway address (one
//! run inside its container by `podman exec`, one run from the host in its container's network
//! namespace, as `nsenter -n` would), and the proxy (`identity.container_api` = podman's
//! Docker-compatible API) naming the container that owns the client's address. The access line
//! carries the container's name and its Determined task fields, the master sees the agent's
//! certificate for the container `present_client_cert` names and for no other, `allowed_peers`
//! closes the other container's client before anything is dialled, and the session token in
//! the containers' environment never reaches the proxy's log.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::peers::{must, run_client, CertMaster, ClientRun, ClientSpec, Target};
use common::podman::Podman;
use common::*;
use serde_json::Value;

const NETWORK: &str = "dtp-tasks";
const FIRST: &str = "dtp-trial-a";
const SECOND: &str = "dtp-trial-b";
const TOKEN: &str = "s3cret-e2e-session-token";

/// A Determined task's environment, as the agent gives it to a trial's container.
fn task_env(task: &str) -> Vec<String> {
    vec![
        format!("DET_TASK_ID={task}"),
        format!("DET_ALLOCATION_ID={task}.alloc-0"),
        "DET_TASK_TYPE=TRIAL".to_string(),
        format!("DET_SESSION_TOKEN={TOKEN}-{task}"),
    ]
}

/// Sends `GET <path>` from inside `container` (`podman exec`, bash's /dev/tcp), reads the
/// answer to its end and returns the master's status line, empty when the proxy closed the
/// connection without an answer.
fn exec_client(pm: &Podman, container: &str, to: SocketAddr, path: &str) -> String {
    let script = format!(
        "exec 3<>/dev/tcp/{}/{} || exit 1; \
         printf 'GET {path} HTTP/1.1\\r\\nHost: det-master\\r\\nConnection: close\\r\\n\\r\\n' >&3; \
         IFS= read -r line <&3; cat <&3 >/dev/null; printf '%s' \"$line\"",
        to.ip(),
        to.port()
    );
    let status = pm.run(&["exec", container, "/usr/bin/bash", "-c", &script]);
    status.trim_end_matches('\r').to_string()
}

/// The network namespace of a running container's process under a name `ip netns` knows
/// (`ip netns attach` binds `/proc/<pid>/ns/net`, the namespace `nsenter -t <pid> -n` enters),
/// so that `run_client` runs its client there. The name goes on drop; the namespace stays the
/// container's until the container is removed.
struct ContainerNetns {
    name: String,
}

impl ContainerNetns {
    fn of(pm: &Podman, container: &str) -> ContainerNetns {
        let pid = pm.run(&["inspect", "--format", "{{.State.Pid}}", container]);
        assert!(
            pid.parse::<u32>().is_ok_and(|p| p > 0),
            "{container} has no process: {pid:?}"
        );
        let name = format!("{container}-{}", std::process::id());
        must(
            Command::new("ip").args(["netns", "attach", &name, &pid]),
            "naming a container's network namespace (needs root and iproute2's `ip netns attach`)",
        );
        ContainerNetns { name }
    }

    fn client(&self) -> ClientSpec {
        ClientSpec {
            netns: Some(self.name.clone()),
            ..Default::default()
        }
    }
}

impl Drop for ContainerNetns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// The bridge's subnet and its gateway (the host's address on the bridge), as podman made them.
fn subnet_and_gateway(pm: &Podman, network: &str) -> (String, String) {
    let text = pm.run(&["network", "inspect", network]);
    let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    let s = &v[0]["subnets"][0];
    match (s["subnet"].as_str(), s["gateway"].as_str()) {
        (Some(net), Some(gw)) => (net.to_string(), gw.to_string()),
        _ => panic!("{network} has no IPv4 subnet with a gateway: {text}"),
    }
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

fn line_of(proxy: &Proxy, run: &ClientRun) -> Value {
    proxy.access_line(run.local.expect("a TCP client's address"))
}

/// Two task containers on a bridge of their own and podman's API serving them. Everything goes
/// on drop, on panic too: the namespace's name first, then containers, network, API service
/// and storage (`Podman`).
struct Tasks {
    second_ns: ContainerNetns,
    pm: Podman,
    socket: PathBuf,
    subnet: String,
    gateway: String,
}

impl Tasks {
    fn start() -> Tasks {
        let mut pm = Podman::new();
        pm.network(NETWORK, false);
        let first_env = task_env("trial-41-task");
        let second_env = task_env("trial-42-task");
        // The host's /usr, read-only: bash and its libraries for a client inside the container.
        pm.start_with(FIRST, NETWORK, &strs(&first_env), &["-v", "/usr:/usr:ro"]);
        pm.start(SECOND, NETWORK, &strs(&second_env));
        // The token is where the API shows it: a log free of it then means something.
        let env = pm.run(&["inspect", "--format", "{{.Config.Env}}", FIRST]);
        assert!(env.contains(TOKEN), "{env}");
        let socket = pm.dir().join("podman.sock");
        pm.serve(&socket);
        // The bridge exists once a container is on it.
        let (subnet, gateway) = subnet_and_gateway(&pm, NETWORK);
        Tasks {
            second_ns: ContainerNetns::of(&pm, SECOND),
            pm,
            socket,
            subnet,
            gateway,
        }
    }

    /// The proxy, asking podman's API, with two listeners on the bridge's gateway address:
    /// `tasks` gives the agent's certificate to the first container, `guarded` admits it alone.
    fn proxy(&self, cm: &CertMaster, dir: &Path) -> Proxy {
        let on_bridge = |name: &str, policy: &str| {
            format!(
                "{{name: {name}, listen: \"{}:0\", allowed_clients: [\"{}\"], {policy}}}",
                self.gateway, self.subnet
            )
        };
        let proxy = cm
            .cfg()
            .listeners(&[
                &on_bridge(
                    "tasks",
                    &format!("present_client_cert: [{{container: {FIRST}}}]"),
                ),
                &on_bridge(
                    "guarded",
                    &format!("allowed_peers: [{{container: {FIRST}}}]"),
                ),
            ])
            .extra(&format!(
                "identity: {{container_api: {}}}",
                qp(&self.socket)
            ))
            .start(dir);
        let listed = proxy.wait_for(
            "the first listing of the containers",
            Duration::from_secs(15),
            |v| {
                v["message"]
                    .as_str()
                    .is_some_and(|m| m.starts_with("container runtime API listed"))
            },
        );
        assert_eq!(listed["containers"], 2, "{listed}");
        proxy
    }
}

#[test]
fn bridge_clients_are_named_by_the_runtime_and_get_the_certificate_by_container() {
    let t = Tasks::start();
    let (pm, second_ns) = (&t.pm, &t.second_ns);
    let dir = tempdir();
    let cm = CertMaster::start(dir.path());
    let proxy = t.proxy(&cm, dir.path());
    let tasks = proxy.tcp_addr("tasks");
    let guarded = proxy.tcp_addr("guarded");

    // A client inside the first container: named, its task in the access line, given the
    // certificate.
    let status = exec_client(pm, FIRST, tasks, "/first");
    assert!(status.contains("200"), "{status:?}");
    let l = proxy.nth_access_line("tasks", 1);
    let client: SocketAddr = field(&l, "client").parse().expect("the client's address");
    assert_eq!(
        client.ip(),
        pm.address(FIRST, NETWORK, false),
        "the client did not connect from the container's address: {l}"
    );
    assert_eq!(l["outcome"], "ok", "{l}");
    assert_eq!(l["peer_container"], FIRST, "{l}");
    assert_eq!(l["task_id"], "trial-41-task", "{l}");
    assert_eq!(l["allocation_id"], "trial-41-task.alloc-0", "{l}");
    assert_eq!(l["task_type"], "TRIAL", "{l}");
    // Another namespace's socket: no uid, cgroup or unit.
    assert!(l.get("peer_uid").is_none(), "{l}");
    assert_eq!(l["peer_cgroup"], "", "{l}");
    assert!(
        cm.presented("/first"),
        "the container present_client_cert names was not given the certificate"
    );

    // The second: named too, and not given the certificate.
    let b = run_client(&second_ns.client(), &Target::Tcp(tasks), "/second");
    assert!(b.status.contains("200"), "{b:?}");
    let l = line_of(&proxy, &b);
    assert_eq!(l["peer_container"], SECOND, "{l}");
    assert_eq!(l["task_id"], "trial-42-task", "{l}");
    assert!(
        !cm.presented("/second"),
        "a container present_client_cert does not name was given the certificate"
    );

    // allowed_peers: the first passes, the second is closed before any dial.
    let status = exec_client(pm, FIRST, guarded, "/guarded-first");
    assert!(status.contains("200"), "{status:?}");
    let l = proxy.nth_access_line("guarded", 1);
    assert_eq!(
        (field(&l, "outcome"), field(&l, "peer_container")),
        ("ok", FIRST),
        "{l}"
    );
    let denied = run_client(
        &second_ns.client(),
        &Target::Tcp(guarded),
        "/guarded-second",
    );
    assert_eq!(
        denied.status, "",
        "allowed_peers let another container through: {denied:?}"
    );
    let l = line_of(&proxy, &denied);
    assert_eq!(l["outcome"], "denied", "{l}");
    assert_eq!(l["peer_container"], SECOND, "{l}");
    assert!(
        !cm.reached("/guarded-second"),
        "the master was dialled for a denied container"
    );

    let log = proxy.stderr();
    assert!(
        !log.contains(TOKEN),
        "the session token reached the proxy's log"
    );
}
