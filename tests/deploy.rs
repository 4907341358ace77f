//! The deployment files hold together: every example proxy config (deploy/examples/, and
//! the ones embedded in the Kubernetes ConfigMap) loads through the real loader
//! (`det-tls-proxy config`); the agent.yaml example points the agent at the listeners the
//! proxy opens; the Dockerfile, the manifests, compose.yaml and the Fluent Bit config agree
//! on paths and ports; and deploy/validate.sh passes (and catches a typo) when its tools
//! are installed.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use common::tempdir;
use figment::providers::{Format, Yaml};
use serde_json::Value;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// The examples that are proxy configs (tls-proxy.yaml), and those that are agent configs.
const PROXY_EXAMPLES: &[&str] = &["agent-host.yaml", "sidecar.yaml"];
const AGENT_EXAMPLES: &[&str] = &["agent.yaml", "agent.tls.yaml"];

/// Top-level keys of Determined's agent.yaml (agent/internal/options/options.go); the agent
/// rejects any other, so an example must use none.
const AGENT_KEYS: &[&str] = &[
    "config_file",
    "log",
    "master_host",
    "master_port",
    "agent_id",
    "label",
    "resource_pool",
    "container_master_host",
    "container_master_port",
    "slot_type",
    "visible_gpus",
    "security",
    "debug",
    "artificial_slots",
    "tls",
    "cert_file",
    "key_file",
    "api_enabled",
    "bind_ip",
    "bind_port",
    "http_proxy",
    "https_proxy",
    "ftp_proxy",
    "no_proxy",
    "fluent",
    "container_auto_remove_disabled",
    "agent_reconnect_attempts",
    "agent_reconnect_backoff",
    "hooks",
    "container_runtime",
    "singularity_options",
    "podman_options",
    "image_root",
];

fn path(rel: &str) -> PathBuf {
    Path::new(ROOT).join(rel)
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(path(rel)).unwrap_or_else(|e| panic!("read {rel}: {e}"))
}

fn yaml(p: &Path) -> Value {
    figment::Figment::from(Yaml::file_exact(p))
        .extract::<Value>()
        .unwrap_or_else(|e| panic!("{} is not the YAML expected: {e}", p.display()))
}

fn yaml_str(text: &str) -> Value {
    figment::Figment::from(Yaml::string(text))
        .extract::<Value>()
        .unwrap_or_else(|e| panic!("not valid YAML: {e}\n{text}"))
}

/// The proxy binary with none of the test's own DET_*/RUST_LOG/systemd/proxy variables.
fn proxy() -> Command {
    common::command()
}

fn show(out: &Output) -> String {
    format!(
        "status {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `det-tls-proxy config` output: key -> (JSON value, source).
fn parse_config_output(stdout: &str) -> BTreeMap<String, (Value, String)> {
    let mut m = BTreeMap::new();
    for line in stdout.lines() {
        let Some((key, rest)) = line.split_once(" = ") else {
            continue;
        };
        let Some((value, source)) = rest.rsplit_once("  (") else {
            continue;
        };
        let value: Value =
            serde_json::from_str(value).unwrap_or_else(|e| panic!("value of {key}: {e}: {value}"));
        m.insert(
            key.to_string(),
            (value, source.trim_end_matches(')').to_string()),
        );
    }
    m
}

/// Copies `example` into `dir` with its agent_config pointed at a copy of `import` there,
/// since the loader requires the imported file to exist.
fn stage_example(dir: &Path, example: &str, import: &str) -> PathBuf {
    let imported = dir.join(import);
    std::fs::copy(path(&format!("deploy/examples/{import}")), &imported).unwrap();
    let text = read(&format!("deploy/examples/{example}")).replace(
        "/etc/determined/agent.tls.yaml",
        &imported.to_string_lossy(),
    );
    let p = dir.join(example);
    std::fs::write(&p, text).unwrap();
    p
}

fn load(config: &Path) -> BTreeMap<String, (Value, String)> {
    let out = proxy()
        .arg("config")
        .arg("--config")
        .arg(config)
        .output()
        .expect("run det-tls-proxy config");
    assert!(
        out.status.success(),
        "det-tls-proxy config --config {} failed:\n{}",
        config.display(),
        show(&out)
    );
    parse_config_output(&String::from_utf8_lossy(&out.stdout))
}

fn listeners(cfg: &BTreeMap<String, (Value, String)>) -> BTreeMap<String, Value> {
    cfg["listeners"]
        .0
        .as_array()
        .expect("listeners is a list")
        .iter()
        .map(|l| {
            (
                l["name"].as_str().expect("named listener").to_string(),
                l.clone(),
            )
        })
        .collect()
}

/// The address a listener's `listen` stands for: a `systemd:NAME` listener's is the
/// `ListenStream=` of the unit in systemd/ whose `FileDescriptorName=` is NAME.
fn address(listen: &str) -> String {
    let Some(name) = listen.strip_prefix("systemd:") else {
        return listen.to_string();
    };
    for e in std::fs::read_dir(path("systemd")).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_none_or(|x| x != "socket") {
            continue;
        }
        let text = std::fs::read_to_string(&p).unwrap();
        let value = |key: &str| {
            text.lines()
                .find_map(|l| l.trim().strip_prefix(key)?.strip_prefix('='))
                .map(str::trim)
        };
        if value("FileDescriptorName") == Some(name) {
            return value("ListenStream")
                .unwrap_or_else(|| panic!("{} has no ListenStream=", p.display()))
                .to_string();
        }
    }
    panic!("no socket unit in systemd/ has FileDescriptorName={name}")
}

fn s<'a>(v: &'a Value, key: &str) -> &'a str {
    v[key]
        .as_str()
        .unwrap_or_else(|| panic!("{key} is not a string in {v}"))
}

// === deploy/examples ===

#[test]
fn every_example_is_classified() {
    let mut found: Vec<String> = std::fs::read_dir(path("deploy/examples"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml") || n.ends_with(".yml"))
        .collect();
    found.sort();
    let mut known: Vec<String> = PROXY_EXAMPLES
        .iter()
        .chain(AGENT_EXAMPLES)
        .map(|s| s.to_string())
        .collect();
    known.sort();
    assert_eq!(
        found, known,
        "deploy/examples/*.yaml: add a new example to PROXY_EXAMPLES or AGENT_EXAMPLES"
    );
}

#[test]
fn proxy_examples_load_through_the_real_loader() {
    for example in PROXY_EXAMPLES {
        let dir = tempdir();
        let cfg = stage_example(dir.path(), example, "agent.tls.yaml");
        let loaded = load(&cfg);
        assert!(loaded.contains_key("master_host"), "{example}: {loaded:?}");
        assert_eq!(
            loaded["log.format"].0, "json",
            "{example}: JSON logs for journald and kubectl logs"
        );
        assert_eq!(
            loaded["admin.listen"].0, "127.0.0.1:9090",
            "{example}: admin on loopback"
        );
    }
}

#[test]
fn agent_host_example_takes_the_master_from_the_saved_agent_yaml() {
    let dir = tempdir();
    let cfg = stage_example(dir.path(), "agent-host.yaml", "agent.tls.yaml");
    let loaded = load(&cfg);
    let original = yaml(&path("deploy/examples/agent.tls.yaml"));
    assert_eq!(loaded["master_host"].0, original["master_host"]);
    assert_eq!(loaded["master_port"].0, original["master_port"]);
    for key in [
        "enabled",
        "skip_verify",
        "master_cert",
        "master_cert_name",
        "client_cert",
        "client_key",
    ] {
        assert_eq!(
            loaded[&format!("security.tls.{key}")].0,
            original["security"]["tls"][key],
            "security.tls.{key}"
        );
    }

    let l = listeners(&loaded);
    assert_eq!(l.keys().collect::<Vec<_>>(), ["agent", "logs", "tasks"]);
    assert_eq!(address(s(&l["agent"], "listen")), "127.0.0.1:8080");
    assert_eq!(address(s(&l["tasks"], "listen")), "172.17.0.1:8080");
    assert_eq!(
        l["tasks"]["allowed_clients"],
        serde_json::json!(["172.17.0.0/16"])
    );
    assert_eq!(
        l["tasks"]["present_client_cert"], false,
        "containers must not borrow the agent's identity"
    );
    assert_eq!(s(&l["logs"], "listen"), "unix:/run/det-tls-proxy/logs.sock");
    // The unix socket lives in the service's RuntimeDirectory.
    assert!(read("systemd/det-tls-proxy.service").contains("RuntimeDirectory=det-tls-proxy"));
}

/// `config` names the imported file as the source of what came from it.
#[test]

fn agent_host_example_names_the_imported_file_as_the_source() {
    let dir = tempdir();
    let cfg = stage_example(dir.path(), "agent-host.yaml", "agent.tls.yaml");
    let loaded = load(&cfg);
    let imported = dir
        .path()
        .join("agent.tls.yaml")
        .to_string_lossy()
        .into_owned();
    for key in [
        "master_host",
        "security.tls.master_cert",
        "security.tls.master_cert_name",
    ] {
        assert!(
            loaded[key].1.starts_with(&imported),
            "{key} from {:?}, expected {imported}",
            loaded[key].1
        );
    }
}

#[test]
fn agent_yaml_points_the_agent_and_its_tasks_at_the_proxy() {
    let agent = yaml(&path("deploy/examples/agent.yaml"));
    let dir = tempdir();
    let l = listeners(&load(&stage_example(
        dir.path(),
        "agent-host.yaml",
        "agent.tls.yaml",
    )));
    let addr = |host: &str, port: &str| {
        format!("{}:{}", s(&agent, host), agent[port].as_u64().expect(port))
    };
    assert_eq!(
        addr("master_host", "master_port"),
        address(s(&l["agent"], "listen")),
        "the agent talks to the agent listener"
    );
    assert_eq!(
        addr("container_master_host", "container_master_port"),
        address(s(&l["tasks"], "listen")),
        "tasks (DET_MASTER) and Fluent Bit talk to the tasks listener"
    );
    assert_eq!(
        agent["security"]["tls"]["enabled"], false,
        "the agent speaks plaintext to the proxy"
    );
    for key in ["master_cert", "skip_verify", "client_cert", "client_key"] {
        assert!(
            agent["security"]["tls"].get(key).is_none(),
            "agent.yaml keeps no security.tls.{key}"
        );
    }
    // Tasks that open TLS themselves through the tasks listener check the master's name,
    // which the agent hands them as DET_MASTER_CERT_NAME.
    let original = yaml(&path("deploy/examples/agent.tls.yaml"));
    assert_eq!(
        agent["security"]["tls"]["master_cert_name"],
        original["security"]["tls"]["master_cert_name"]
    );
    for example in AGENT_EXAMPLES {
        let doc = yaml(&path(&format!("deploy/examples/{example}")));
        for key in doc.as_object().unwrap().keys() {
            assert!(
                AGENT_KEYS.contains(&key.as_str()),
                "{example}: the agent rejects the unknown key {key:?}"
            );
        }
    }
}

/// The classic migration mistake: importing the agent.yaml already pointed at the proxy.
/// The loader refuses a master that is one of the proxy's own listeners, here the example
/// with its listeners written as addresses (as without systemd; with its `systemd:` sockets
/// `run` refuses it once adopted: tests/systemd.rs).
#[test]
fn importing_the_proxied_agent_yaml_is_refused() {
    let dir = tempdir();
    let imported = dir.path().join("agent.yaml");
    std::fs::copy(path("deploy/examples/agent.yaml"), &imported).unwrap();
    let text = read("deploy/examples/agent-host.yaml")
        .replace(
            "/etc/determined/agent.tls.yaml",
            &imported.to_string_lossy(),
        )
        .replace("listen: systemd:agent", "listen: 127.0.0.1:8080");
    let cfg = dir.path().join("tls-proxy.yaml");
    std::fs::write(&cfg, text).unwrap();
    let out = proxy()
        .arg("config")
        .arg("--config")
        .arg(&cfg)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
    assert!(
        stderr.contains("master_host") && stderr.contains("own listener"),
        "{}",
        show(&out)
    );
}

// === Kubernetes ===

fn manifest(name: &str) -> Value {
    yaml(&path(&format!("deploy/kubernetes/{name}")))
}

/// The ConfigMap's embedded proxy configs load through the real loader.
#[test]
fn kubernetes_configmap_configs_load_through_the_real_loader() {
    let cm = manifest("configmap.yaml");
    let data = cm["data"].as_object().expect("ConfigMap data");
    assert!(
        data.contains_key("tls-proxy.yaml") && data.contains_key("sidecar.yaml"),
        "keys: {:?}",
        data.keys()
    );
    let dir = tempdir();
    for (key, text) in data {
        let p = dir.path().join(key);
        std::fs::write(&p, text.as_str().expect("text")).unwrap();
        let loaded = load(&p);
        assert_eq!(
            loaded["security.tls.master_cert"].0, "/etc/determined/master.crt",
            "{key}"
        );
    }
}

fn admin_port(config_text: &str) -> u64 {
    let cfg = yaml_str(config_text);
    let addr = s(&cfg["admin"], "listen");
    addr.rsplit_once(':').unwrap().1.parse().unwrap()
}

/// Probes, mounts and paths in the DaemonSet and the sidecar pod agree with the configs.
#[test]
fn kubernetes_probes_and_mounts_match_the_configs() {
    let cm = manifest("configmap.yaml");
    let secret = manifest("secret.yaml");
    let secret_name = s(&secret["metadata"], "name");
    let cm_name = s(&cm["metadata"], "name");

    let check = |what: &str, pod: &Value, container: &Value, key: &str| {
        let config_text = cm["data"][key].as_str().unwrap();
        let port = admin_port(config_text);
        let resolve = |p: &Value| -> u64 {
            p.as_u64().unwrap_or_else(|| {
                let name = p.as_str().unwrap();
                container["ports"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|x| x["name"] == name)
                    .expect("named port")["containerPort"]
                    .as_u64()
                    .unwrap()
            })
        };
        let ready = &container["readinessProbe"]["httpGet"];
        let live = &container["livenessProbe"]["httpGet"];
        assert_eq!(s(ready, "path"), "/readyz", "{what}");
        assert_eq!(s(live, "path"), "/healthz", "{what}");
        assert_eq!(
            resolve(&ready["port"]),
            port,
            "{what}: readiness probe port = admin.listen port"
        );
        assert_eq!(
            resolve(&live["port"]),
            port,
            "{what}: liveness probe port = admin.listen port"
        );
        assert_eq!(
            container["args"],
            serde_json::json!(["run", "--config", "/etc/determined/tls-proxy.yaml"]),
            "{what}"
        );
        let sc = &container["securityContext"];
        assert_eq!(sc["readOnlyRootFilesystem"], true, "{what}");
        assert_eq!(sc["allowPrivilegeEscalation"], false, "{what}");
        let non_root = sc["runAsNonRoot"] == true || pod["securityContext"]["runAsNonRoot"] == true;
        assert!(non_root, "{what}: runAsNonRoot");
        assert!(
            container["resources"]["requests"].is_object()
                && container["resources"]["limits"].is_object(),
            "{what}: resources"
        );

        // /etc/determined is one projected volume: the config key as tls-proxy.yaml and
        // the Secret's master.crt, read-only, no subPath (subPath mounts never update).
        let mounts = container["volumeMounts"].as_array().unwrap();
        let mount = mounts
            .iter()
            .find(|m| m["mountPath"] == "/etc/determined")
            .expect("mount at /etc/determined");
        assert_eq!(mount["readOnly"], true, "{what}");
        assert!(mount.get("subPath").is_none(), "{what}: no subPath");
        let volume = pod["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == mount["name"])
            .expect("volume");
        let sources = volume["projected"]["sources"]
            .as_array()
            .expect("projected volume");
        let projected: Vec<(String, String, String)> = sources
            .iter()
            .flat_map(|src| {
                let (kind, body) = if src.get("configMap").is_some() {
                    ("configMap", &src["configMap"])
                } else {
                    ("secret", &src["secret"])
                };
                let name = s(body, "name").to_string();
                body["items"].as_array().unwrap().iter().map(move |i| {
                    (
                        format!("{kind}/{name}"),
                        s(i, "key").to_string(),
                        s(i, "path").to_string(),
                    )
                })
            })
            .collect();
        assert!(
            projected.contains(&(
                format!("configMap/{cm_name}"),
                key.into(),
                "tls-proxy.yaml".into()
            )),
            "{what}: {projected:?}"
        );
        assert!(
            projected.contains(&(
                format!("secret/{secret_name}"),
                "master.crt".into(),
                "master.crt".into()
            )),
            "{what}: {projected:?}"
        );
        assert!(
            secret["stringData"]["master.crt"].is_string(),
            "the Secret holds master.crt"
        );
    };

    let ds = manifest("daemonset.yaml");
    let pod = &ds["spec"]["template"]["spec"];
    assert_eq!(pod["hostNetwork"], true);
    let c = &pod["containers"][0];
    check("daemonset", pod, c, "tls-proxy.yaml");
    // Host network: the kubelet probes the node's loopback, where admin listens.
    assert_eq!(c["readinessProbe"]["httpGet"]["host"], "127.0.0.1");
    assert_eq!(c["livenessProbe"]["httpGet"]["host"], "127.0.0.1");
    assert_eq!(
        s(
            &yaml_str(cm["data"]["tls-proxy.yaml"].as_str().unwrap())["admin"],
            "listen"
        ),
        "127.0.0.1:9090"
    );

    let sidecar = manifest("sidecar-pod.yaml");
    let pod = &sidecar["spec"];
    let c = pod["initContainers"]
        .as_array()
        .and_then(|v| v.iter().find(|c| c["name"] == "det-tls-proxy"))
        .or_else(|| {
            pod["containers"]
                .as_array()
                .and_then(|v| v.iter().find(|c| c["name"] == "det-tls-proxy"))
        })
        .expect("a det-tls-proxy container");
    check("sidecar pod", pod, c, "sidecar.yaml");
    let task = &pod["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] != "det-tls-proxy")
        .expect("a task container");
    let det_master = task["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "DET_MASTER")
        .expect("DET_MASTER");
    let sidecar_cfg = yaml_str(cm["data"]["sidecar.yaml"].as_str().unwrap());
    assert_eq!(
        s(det_master, "value"),
        format!("http://{}", s(&sidecar_cfg["listeners"][0], "listen"))
    );
}

/// The Secret's placeholder cannot be mistaken for a certificate: `run` refuses it.
#[test]
fn secret_placeholder_is_refused_at_start() {
    let secret = manifest("secret.yaml");
    let pem = s(&secret["stringData"], "master.crt");
    assert!(
        pem.contains("PLACEHOLDER"),
        "the placeholder says what it is"
    );
    let dir = tempdir();
    let cert = dir.path().join("master.crt");
    std::fs::write(&cert, pem).unwrap();
    let cfg = dir.path().join("tls-proxy.yaml");
    std::fs::write(
        &cfg,
        format!("master_host: det-master.example.com\nsecurity:\n  tls:\n    master_cert: {}\nlisteners:\n  - listen: 127.0.0.1:0\n", cert.display()),
    )
    .unwrap();
    let out = proxy()
        .arg("run")
        .arg("--config")
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("master_cert"),
        "{}",
        show(&out)
    );
}

// === Dockerfile, compose, Fluent Bit ===

#[test]
fn dockerfile_builds_locked_and_runs_as_non_root() {
    let text = read("deploy/Dockerfile");
    // Instructions, with continuation lines joined.
    let joined = text.replace("\\\n", " ");
    let lines: Vec<&str> = joined
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    let froms: Vec<usize> = lines
        .iter()
        .enumerate()
        .filter(|(_, l)| l.starts_with("FROM "))
        .map(|(i, _)| i)
        .collect();
    assert!(froms.len() >= 2, "multi-stage: {froms:?}");
    let build = lines[froms[0]..froms[froms.len() - 1]].join("\n");
    assert!(
        build.contains("cargo build --release --locked"),
        "the builder runs cargo build --release --locked"
    );
    let runtime = &lines[froms[froms.len() - 1]..];
    let from = runtime[0];
    // FROM scratch with the binary's own libraries (deploy/rootfs.sh); tests/real/container.sh
    // builds and runs it.
    assert!(from == "FROM scratch", "{from}");
    let user = runtime
        .iter()
        .rev()
        .find_map(|l| l.strip_prefix("USER "))
        .expect("the runtime stage sets USER");
    let user = user.split(':').next().unwrap();
    assert!(!["root", "0"].contains(&user), "runs as {user}");
    assert!(
        runtime
            .iter()
            .any(|l| l.starts_with("ENTRYPOINT") && l.contains("det-tls-proxy")),
        "ENTRYPOINT"
    );
    assert!(
        runtime
            .iter()
            .any(|l| l.starts_with("EXPOSE") && l.contains("8080") && l.contains("9090")),
        "EXPOSE"
    );
    assert!(
        runtime
            .iter()
            .any(|l| l.contains("/etc/determined/tls-proxy.yaml")),
        "config at /etc/determined/tls-proxy.yaml"
    );

    // Every COPY from the build context exists (the context is the repository root) and
    // is let through by the Dockerfile's .dockerignore.
    let ignore = read("deploy/Dockerfile.dockerignore");
    for l in &lines {
        let Some(rest) = l.strip_prefix("COPY ") else {
            continue;
        };
        if rest.starts_with("--from") {
            continue;
        }
        let parts: Vec<&str> = rest
            .split_whitespace()
            .filter(|p| !p.starts_with("--"))
            .collect();
        for src in &parts[..parts.len() - 1] {
            assert!(path(src).exists(), "COPY {src}: not in the repository");
            let name = src.trim_end_matches('/');
            assert!(
                ignore
                    .lines()
                    .any(|i| i.trim() == format!("!{name}") || i.trim() == format!("!{name}/")),
                "COPY {src}: excluded by Dockerfile.dockerignore"
            );
        }
    }
}

#[test]
fn compose_runs_the_task_in_the_proxys_network_namespace() {
    let doc = yaml(&path("deploy/compose.yaml"));
    let services = doc["services"].as_object().expect("services");
    let (proxy_name, proxy) = services
        .iter()
        .find(|(_, s)| {
            s["image"]
                .as_str()
                .is_some_and(|i| i.contains("det-tls-proxy"))
        })
        .expect("a det-tls-proxy service");
    let task = services
        .values()
        .find(|s| s["network_mode"] == format!("service:{proxy_name}"))
        .expect("a service in the proxy's network namespace (network_mode: service:...)");
    assert_eq!(proxy["build"]["dockerfile"], "deploy/Dockerfile");
    assert!(
        path("deploy")
            .join(s(&proxy["build"], "context"))
            .join("Cargo.toml")
            .exists(),
        "build context is the repository root"
    );
    let volumes = proxy["volumes"].as_array().expect("volumes");
    let config = volumes
        .iter()
        .find(|v| v["target"] == "/etc/determined/tls-proxy.yaml")
        .expect("config mount");
    assert_eq!(config["read_only"], true);
    let source = path("deploy").join(s(config, "source"));
    assert!(source.exists(), "{} does not exist", source.display());
    let cfg = yaml(&source);
    let listen = s(&cfg["listeners"][0], "listen");
    let env = &task["environment"];
    assert_eq!(
        s(env, "DET_MASTER"),
        format!("http://{listen}"),
        "the task reaches the proxy on the shared loopback"
    );
}

/// The [OUTPUT] section of fluent-bit.conf, keys lower-cased.
fn fluent_output(text: &str) -> BTreeMap<String, String> {
    let mut section = String::new();
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if line.starts_with('[') {
            section = line.to_ascii_uppercase();
            continue;
        }
        if section == "[OUTPUT]" {
            let (k, v) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
            out.insert(k.to_ascii_lowercase(), v.trim().to_string());
        }
    }
    out
}

#[test]
fn fluent_bit_output_sends_plaintext_to_a_proxy_listener() {
    let out = fluent_output(&read("deploy/fluent-bit/fluent-bit.conf"));
    assert_eq!(out["name"], "http");
    assert!(
        out["tls"].eq_ignore_ascii_case("off"),
        "plaintext to the proxy: tls Off"
    );
    assert!(
        !out.keys().any(|k| k.starts_with("tls.")),
        "no tls.* settings: verification is the proxy's job"
    );
    assert_eq!(out["uri"], "/task-logs");
    assert_eq!(out["format"], "json");
    assert_eq!(out["header_tag"], "X-Fluent-Tag");
    let dir = tempdir();
    let l = listeners(&load(&stage_example(
        dir.path(),
        "agent-host.yaml",
        "agent.tls.yaml",
    )));
    let target = format!("{}:{}", out["host"], out["port"]);
    assert!(
        l.values().any(|x| address(s(x, "listen")) == target),
        "{target} is none of the agent-host listeners: {:?}",
        l.values()
            .map(|x| address(s(x, "listen")))
            .collect::<Vec<_>>()
    );
}

// === deploy/validate.sh ===

fn have(cmd: &str, args: &[&str]) -> bool {
    Command::new(cmd)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn validate_tools() -> bool {
    let missing: Vec<&str> = [
        ("systemd-analyze", have("systemd-analyze", &["--version"])),
        (
            "kubernetes-validate",
            have("kubernetes-validate", &["--version"]),
        ),
        (
            "python3 with PyYAML",
            have("python3", &["-c", "import yaml"]),
        ),
    ]
    .into_iter()
    .filter(|(_, ok)| !ok)
    .map(|(n, _)| n)
    .collect();
    if !missing.is_empty() {
        eprintln!(
            "note: skipping deploy/validate.sh: missing {}",
            missing.join(", ")
        );
    }
    missing.is_empty()
}

#[test]
fn validate_sh_passes() {
    if !validate_tools() {
        return;
    }
    let out = Command::new("bash")
        .arg("deploy/validate.sh")
        .current_dir(ROOT)
        .output()
        .unwrap();
    assert!(out.status.success(), "deploy/validate.sh:\n{}", show(&out));
}

/// Typos fail the build: a misspelt unit key (which `systemd-analyze verify` only warns
/// about), a misspelt Kubernetes field, and broken YAML in compose.yaml.
#[test]
fn validate_sh_catches_typos() {
    if !validate_tools() {
        return;
    }
    let cases: &[(&str, &str, &str, &str)] = &[
        (
            "systemd",
            "det-tls-proxy.service",
            "ProtectHome=yes",
            "ProtectHme=yes",
        ),
        (
            "deploy/kubernetes",
            "daemonset.yaml",
            "hostNetwork:",
            "hostNetwrok:",
        ),
        ("deploy", "compose.yaml", "services:", "services: [\n"),
    ];
    for (dir_rel, file, from, to) in cases {
        let dir = tempdir();
        copy_tree(&path("systemd"), &dir.path().join("systemd"));
        copy_tree(&path("deploy"), &dir.path().join("deploy"));
        let target = dir.path().join(dir_rel).join(file);
        let text = std::fs::read_to_string(&target).unwrap();
        assert!(text.contains(from), "{file} has no {from:?}");
        std::fs::write(&target, text.replacen(from, to, 1)).unwrap();
        let out = Command::new("bash")
            .arg(dir.path().join("deploy/validate.sh"))
            .current_dir(dir.path())
            .output()
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(1),
            "validate.sh accepted {file} with {to:?}:\n{}",
            show(&out)
        );
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("FAIL"),
            "{}",
            show(&out)
        );
    }
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dest = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_tree(&e.path(), &dest);
        } else {
            std::fs::copy(e.path(), &dest).unwrap();
        }
    }
}
