//! Configuration as the binary takes it: the flags (usage errors, --version, --help), the
//! environment (unknown DET_TLS_PROXY_* variables, bad values named by variable), a missing
//! --config file, the layers and their precedence as `config` reports them and as the proxy
//! behaves, the environment names, the agent.yaml import. The validation rules of the
//! file's contents are fixtures in tests/config/invalid/ (tests/invalid_configs.rs).

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::proxy::{run_expecting_exit, Exited};
use common::server::closed_port;
use common::*;
use serde_json::{json, Value};

// === The binary at start: flags, environment, the --config file ===
//
// Every rule about the file's contents is a fixture in tests/config/invalid/ (driven by
// tests/invalid_configs.rs); here only what is about the binary itself.

/// A configuration that starts: the tests below each break one thing in it from outside the
/// file (an environment variable).
fn valid(dir: &Path) -> Cfg {
    let ca = Ca::root("Config Test CA");
    let ca_pem = certs::write(dir, "ca.pem", &ca.pem());
    Cfg::new("127.0.0.1", closed_port()).master_cert(&ca_pem)
}

/// Exit status 2 before anything was bound, with every needle in stderr.
fn assert_rejected_output(out: &Exited, needles: &[&str]) {
    assert_eq!(out.code(), Some(2), "expected exit status 2\n{out}");
    for needle in needles {
        assert!(
            out.stderr.contains(needle),
            "stderr does not mention {needle:?}\n{out}"
        );
    }
    let bound = out.stderr.lines().any(|l| {
        serde_json::from_str::<Value>(l)
            .map(|v| v["message"] == "listening" || v["message"] == "ready")
            .unwrap_or(false)
    });
    assert!(!bound, "a listener was bound before the error\n{out}");
}

#[test]
fn valid_base_config_starts() {
    let dir = tempdir();
    let proxy = valid(dir.path()).start(dir.path());
    proxy.listener_addr("main");
}

#[test]
fn missing_config_file_rejected() {
    let dir = tempdir();
    let out = run_expecting_exit(&dir.path().join("nope.yaml"));
    assert_eq!(out.code(), Some(2), "{out}");
    assert!(out.stderr.contains("nope.yaml"), "{out}");
}

#[test]
fn unknown_det_tls_proxy_variable_rejected() {
    let dir = tempdir();
    let path = valid(dir.path()).write(dir.path());
    let mut cmd = command();
    cmd.arg("run").arg("--config").arg(&path);
    cmd.env("DET_TLS_PROXY_LISTNE", "127.0.0.1:0");
    let out = run_to_exit(cmd, Duration::from_secs(15));
    assert_rejected_output(&out, &["DET_TLS_PROXY_LISTNE"]);
}

#[test]
fn bad_env_value_names_the_variable() {
    let dir = tempdir();
    let path = valid(dir.path()).write(dir.path());
    let mut cmd = command();
    cmd.arg("run").arg("--config").arg(&path);
    cmd.env("DET_MASTER_PORT", "eighty");
    let out = run_to_exit(cmd, Duration::from_secs(15));
    assert_rejected_output(&out, &["DET_MASTER_PORT"]);
}

#[test]
fn unknown_flag_is_usage_error() {
    let mut cmd = command();
    cmd.args(["run", "--no-such-flag"]);
    let out = run_to_exit(cmd, Duration::from_secs(15));
    assert_eq!(out.code(), Some(2), "{out}");
}

#[test]
fn version_flag_exits_zero() {
    let mut cmd = command();
    cmd.arg("--version");
    let out = run_to_exit(cmd, Duration::from_secs(15));
    assert_eq!(out.code(), Some(0), "{out}");
    assert!(out.stdout.contains(env!("CARGO_PKG_VERSION")), "{out}");
}

#[test]
fn help_flag_exits_zero() {
    let mut cmd = command();
    cmd.arg("--help");
    let out = run_to_exit(cmd, Duration::from_secs(15));
    assert_eq!(out.code(), Some(0), "{out}");
    assert!(out.stdout.contains("--master-host"), "{out}");
}

// === `det-tls-proxy config`: effective values and their sources ===

type Effective = BTreeMap<String, (Value, String)>;

/// Parses `<dotted.key> = <json>  (<source>)` lines.
fn parse_effective(stdout: &str) -> Effective {
    let mut m = BTreeMap::new();
    for line in stdout.lines() {
        let Some((key, rest)) = line.split_once(" = ") else {
            continue;
        };
        let Some((value, source)) = rest.rsplit_once("  (") else {
            continue;
        };
        let Some(source) = source.strip_suffix(')') else {
            continue;
        };
        let value: Value = serde_json::from_str(value.trim())
            .unwrap_or_else(|e| panic!("value of {key} is not JSON ({e}): {line}"));
        m.insert(key.trim().to_string(), (value, source.to_string()));
    }
    m
}

/// Runs `det-tls-proxy <args>` (args include `config`), adjusting the command with
/// `f`; expects exit 0 and returns the parsed output.
fn effective(args: &[&str], f: impl FnOnce(&mut Command)) -> Effective {
    let mut cmd = command();
    cmd.args(args);
    f(&mut cmd);
    let out = run_to_exit(cmd, Duration::from_secs(15));
    assert_eq!(out.code(), Some(0), "{out}");
    let m = parse_effective(&out.stdout);
    assert!(!m.is_empty(), "no `key = value  (source)` lines\n{out}");
    m
}

#[track_caller]
fn assert_key(m: &Effective, key: &str, value: Value, source: &str) {
    let got = m
        .get(key)
        .unwrap_or_else(|| panic!("`config` printed no {key}; it printed {m:#?}"));
    assert_eq!(got.0, value, "value of {key}");
    // The source may carry a parenthesised note after it ("default (the master's TLS
    // port)"); what it names must be exactly the expected layer.
    let named = got.1.split_once(" (").map_or(got.1.as_str(), |(s, _)| s);
    assert_eq!(named, source, "source of {key} (printed: {:?})", got.1);
}

fn path_str(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A proxy file with master_host file.example, master_port 9443 and a master_cert_name.
fn file_cfg(dir: &Path) -> PathBuf {
    let ca = Ca::root("Config Test CA");
    let ca_pem = certs::write(dir, "ca.pem", &ca.pem());
    Cfg::new("file.example", 9443)
        .master_cert(&ca_pem)
        .tls("master_cert_name", "file-name")
        .write(dir)
}

#[test]
fn config_shows_file_values_with_file_as_source() {
    let dir = tempdir();
    let path = file_cfg(dir.path());
    let m = effective(&["config", "--config", path_str(&path)], |_| {});
    assert_key(&m, "master_host", json!("file.example"), path_str(&path));
    assert_key(&m, "master_port", json!(9443), path_str(&path));
    assert_key(
        &m,
        "security.tls.master_cert_name",
        json!("file-name"),
        path_str(&path),
    );
    assert_key(&m, "security.tls.enabled", json!(true), "default");
}

#[test]
fn env_overrides_file() {
    let dir = tempdir();
    let path = file_cfg(dir.path());
    let m = effective(&["config", "--config", path_str(&path)], |c| {
        c.env("DET_MASTER_HOST", "10.0.0.5")
            .env("DET_MASTER_PORT", "7443")
            .env("DET_SECURITY_TLS_MASTER_CERT_NAME", "det-master");
    });
    assert_key(&m, "master_host", json!("10.0.0.5"), "DET_MASTER_HOST");
    assert_key(&m, "master_port", json!(7443), "DET_MASTER_PORT");
    assert_key(
        &m,
        "security.tls.master_cert_name",
        json!("det-master"),
        "DET_SECURITY_TLS_MASTER_CERT_NAME",
    );
}

#[test]
fn det_master_sets_host_port_and_tls_below_the_file_and_the_det_variables() {
    let alone = effective(&["config"], |c| {
        c.env("DET_MASTER", "http://m.example");
    });
    assert_key(&alone, "master_host", json!("m.example"), "DET_MASTER");
    assert_key(&alone, "master_port", json!(8080), "DET_MASTER");
    assert_key(&alone, "security.tls.enabled", json!(false), "DET_MASTER");

    let dir = tempdir();
    let path = file_cfg(dir.path());
    let m = effective(&["config", "--config", path_str(&path)], |c| {
        c.env("DET_MASTER", "https://url.example:1443")
            .env("DET_MASTER_PORT", "7443");
    });
    assert_key(&m, "master_host", json!("file.example"), path_str(&path));
    assert_key(&m, "master_port", json!(7443), "DET_MASTER_PORT");
    assert_key(&m, "security.tls.enabled", json!(true), "DET_MASTER");
}

#[test]
fn list_keys_come_from_comma_separated_variables_and_repeated_flags() {
    let (a, b) = ("ab".repeat(32), "CD:".repeat(31) + "CD");
    let m = effective(
        &[
            "config",
            "--security-tls-crl",
            "/a.crl",
            "--security-tls-crl=/b.crl,/c.crl",
        ],
        |c| {
            c.env("DET_MASTER_HOST", "det")
                .env("DET_SECURITY_TLS_MASTER_CERT_SHA256", format!("{a}, {b}"))
                .env("NO_PROXY", "ignored.example")
                .env("DET_TLS_PROXY_UPSTREAM_NO_PROXY", ".lab,10.0.0.0/8")
                .env("https_proxy", "http://u:secret@proxy.example:3128");
        },
    );
    assert_key(
        &m,
        "security.tls.master_cert_sha256",
        json!([a, b]),
        "DET_SECURITY_TLS_MASTER_CERT_SHA256",
    );
    assert_key(
        &m,
        "security.tls.crl",
        json!(["/a.crl", "/b.crl", "/c.crl"]),
        "--security-tls-crl",
    );
    assert_key(
        &m,
        "upstream_no_proxy",
        json!([".lab", "10.0.0.0/8"]),
        "DET_TLS_PROXY_UPSTREAM_NO_PROXY",
    );
    assert_key(
        &m,
        "upstream_proxy",
        json!("http://u:***@proxy.example:3128"),
        "https_proxy",
    );
}

#[test]
fn flag_overrides_env_and_file() {
    let dir = tempdir();
    let path = file_cfg(dir.path());
    let m = effective(
        &[
            "config",
            "--config",
            path_str(&path),
            "--master-host",
            "flag.example",
            "--security-tls-master-cert-name",
            "det-master",
        ],
        |c| {
            c.env("DET_MASTER_HOST", "10.0.0.5")
                .env("DET_SECURITY_TLS_MASTER_CERT_NAME", "env-name");
        },
    );
    assert_key(&m, "master_host", json!("flag.example"), "--master-host");
    assert_key(
        &m,
        "security.tls.master_cert_name",
        json!("det-master"),
        "--security-tls-master-cert-name",
    );
}

#[test]
fn flags_are_global_before_or_after_subcommand() {
    let dir = tempdir();
    let path = file_cfg(dir.path());
    let before = effective(
        &[
            "--master-host",
            "before.example",
            "--config",
            path_str(&path),
            "config",
        ],
        |_| {},
    );
    assert_key(
        &before,
        "master_host",
        json!("before.example"),
        "--master-host",
    );
    let after = effective(
        &[
            "config",
            "--master-host",
            "after.example",
            "--config",
            path_str(&path),
        ],
        |_| {},
    );
    assert_key(
        &after,
        "master_host",
        json!("after.example"),
        "--master-host",
    );
}

#[test]
fn boolean_flags_take_no_value_or_equals_false() {
    let dir = tempdir();
    // No master_cert in this file, so skip_verify is allowed.
    let path = Cfg::new("10.0.0.5", 8443).write(dir.path());
    let on = effective(
        &[
            "config",
            "--config",
            path_str(&path),
            "--security-tls-skip-verify",
        ],
        |_| {},
    );
    assert_key(
        &on,
        "security.tls.skip_verify",
        json!(true),
        "--security-tls-skip-verify",
    );
    let off = effective(
        &[
            "config",
            "--config",
            path_str(&path),
            "--security-tls-skip-verify=false",
        ],
        |c| {
            c.env("DET_SECURITY_TLS_SKIP_VERIFY", "true");
        },
    );
    assert_key(
        &off,
        "security.tls.skip_verify",
        json!(false),
        "--security-tls-skip-verify",
    );
}

#[test]
fn every_agent_env_name_maps_to_its_key() {
    let dir = tempdir();
    let path = Cfg::new("file.example", 9443).write(dir.path());
    let cert = certs::write(dir.path(), "m.crt", &Ca::root("Env CA").pem());
    let client = Ca::root("Client CA").client("agent");
    let ccert = certs::write(dir.path(), "c.crt", &client.pem());
    let ckey = certs::write(dir.path(), "c.key", &client.key_pem());
    let m = effective(&["config", "--config", path_str(&path)], |c| {
        c.env("DET_MASTER_HOST", "env.example")
            .env("DET_MASTER_PORT", "1234")
            .env("DET_SECURITY_TLS_ENABLED", "true")
            .env("DET_SECURITY_TLS_SKIP_VERIFY", "false")
            .env("DET_SECURITY_TLS_MASTER_CERT", &cert)
            .env("DET_SECURITY_TLS_MASTER_CERT_NAME", "det-master")
            .env("DET_SECURITY_TLS_CLIENT_CERT", &ccert)
            .env("DET_SECURITY_TLS_CLIENT_KEY", &ckey)
            .env("DET_TLS_PROXY_LOG_LEVEL", "warn")
            .env("DET_TLS_PROXY_ADMIN_LISTEN", "127.0.0.1:0");
    });
    assert_key(&m, "master_host", json!("env.example"), "DET_MASTER_HOST");
    assert_key(&m, "master_port", json!(1234), "DET_MASTER_PORT");
    assert_key(
        &m,
        "security.tls.enabled",
        json!(true),
        "DET_SECURITY_TLS_ENABLED",
    );
    assert_key(
        &m,
        "security.tls.skip_verify",
        json!(false),
        "DET_SECURITY_TLS_SKIP_VERIFY",
    );
    assert_key(
        &m,
        "security.tls.master_cert",
        json!(path_str(&cert)),
        "DET_SECURITY_TLS_MASTER_CERT",
    );
    assert_key(
        &m,
        "security.tls.master_cert_name",
        json!("det-master"),
        "DET_SECURITY_TLS_MASTER_CERT_NAME",
    );
    assert_key(
        &m,
        "security.tls.client_cert",
        json!(path_str(&ccert)),
        "DET_SECURITY_TLS_CLIENT_CERT",
    );
    assert_key(
        &m,
        "security.tls.client_key",
        json!(path_str(&ckey)),
        "DET_SECURITY_TLS_CLIENT_KEY",
    );
    assert_key(&m, "log.level", json!("warn"), "DET_TLS_PROXY_LOG_LEVEL");
    assert_key(
        &m,
        "admin.listen",
        json!("127.0.0.1:0"),
        "DET_TLS_PROXY_ADMIN_LISTEN",
    );
}

#[test]
fn config_file_from_det_tls_proxy_config() {
    let dir = tempdir();
    let path = file_cfg(dir.path());
    let m = effective(&["config"], |c| {
        c.env("DET_TLS_PROXY_CONFIG", &path);
    });
    assert_key(&m, "master_host", json!("file.example"), path_str(&path));
}

#[test]
fn master_port_defaults_8443_with_tls_and_8080_without() {
    let dir = tempdir();
    let path = certs::write(
        dir.path(),
        "proxy.yaml",
        "master_host: 10.0.0.5\nsecurity: {tls: {skip_verify: true}}\n",
    );
    let with_tls = effective(&["config", "--config", path_str(&path)], |_| {});
    assert_key(&with_tls, "master_port", json!(8443), "default");
    let without = effective(&["config", "--config", path_str(&path)], |c| {
        c.env("DET_SECURITY_TLS_ENABLED", "false");
    });
    assert_key(
        &without,
        "security.tls.enabled",
        json!(false),
        "DET_SECURITY_TLS_ENABLED",
    );
    assert_key(&without, "master_port", json!(8080), "default");
    let flag = effective(
        &[
            "config",
            "--config",
            path_str(&path),
            "--security-tls-enabled=false",
        ],
        |_| {},
    );
    assert_key(&flag, "master_port", json!(8080), "default");
}

#[test]
fn default_listener_is_loopback_8080() {
    let dir = tempdir();
    let path = certs::write(dir.path(), "proxy.yaml", "master_host: 10.0.0.5\n");
    let m = effective(&["config", "--config", path_str(&path)], |_| {});
    let (value, source) = m.get("listeners").expect("listeners line");
    assert_eq!(source, "default");
    assert!(
        value.to_string().contains("127.0.0.1:8080"),
        "default listeners: {value}"
    );
}

#[test]
fn det_tls_proxy_listen_replaces_file_listeners() {
    let dir = tempdir();
    let path = file_cfg(dir.path());
    let m = effective(&["config", "--config", path_str(&path)], |c| {
        c.env(
            "DET_TLS_PROXY_LISTEN",
            "127.0.0.1:18080,unix:/tmp/dtp-x.sock",
        );
    });
    let (value, source) = m.get("listeners").expect("listeners line");
    assert_eq!(source, "DET_TLS_PROXY_LISTEN");
    let text = value.to_string();
    assert!(text.contains("127.0.0.1:18080"), "{text}");
    assert!(text.contains("unix:/tmp/dtp-x.sock"), "{text}");
    assert!(!text.contains("\"main\""), "file listener kept: {text}");
}

#[test]
fn det_tls_proxy_listen_replaces_file_listeners_when_running() {
    let dir = tempdir();
    let master = Master::start(dir.path(), Behavior::Echo);
    let path = master.cfg().write(dir.path());
    let mut cmd = command();
    cmd.arg("run").arg("--config").arg(&path);
    cmd.env("DET_TLS_PROXY_LISTEN", "127.0.0.1:0");
    let proxy = Proxy::start_cmd(cmd);
    // Named after its address.
    let addr: std::net::SocketAddr = proxy.listener_addr("127.0.0.1:0").parse().unwrap();
    assert!(
        proxy
            .find(|v| v["message"] == "listening" && v["listener"] == "main")
            .is_none(),
        "the file's listener was bound too"
    );
    let mut c = connect(addr);
    assert_eq!(roundtrip(&mut c, b"env listener"), b"env listener");
    finish(&mut c);
}

#[test]
fn listen_flag_is_repeatable_and_replaces_file_listeners() {
    let dir = tempdir();
    let path = file_cfg(dir.path());
    let m = effective(
        &[
            "config",
            "--config",
            path_str(&path),
            "--listen",
            "127.0.0.1:18081",
            "--listen",
            "127.0.0.1:18082",
        ],
        |_| {},
    );
    let (value, source) = m.get("listeners").expect("listeners line");
    assert_eq!(source, "--listen");
    let text = value.to_string();
    assert!(
        text.contains("127.0.0.1:18081") && text.contains("127.0.0.1:18082"),
        "{text}"
    );
}

#[test]
fn log_format_from_env() {
    let dir = tempdir();
    let master = Master::start(dir.path(), Behavior::Echo);
    // No log section in the file: JSON comes from the environment alone.
    let yaml = master
        .cfg()
        .render()
        .replace("log: {format: json, level: debug}\n", "");
    let path = certs::write(dir.path(), "proxy.yaml", &yaml);
    let mut cmd = command();
    cmd.arg("run").arg("--config").arg(&path);
    cmd.env("DET_TLS_PROXY_LOG_FORMAT", "json");
    let proxy = Proxy::start_cmd(cmd);
    proxy.listener_addr("main");
    for line in proxy.lines() {
        assert!(
            serde_json::from_str::<Value>(&line).is_ok_and(|v| v.is_object()),
            "not a JSON line: {line}"
        );
    }
}

#[test]
fn unrelated_det_variables_ignored() {
    let dir = tempdir();
    let master = Master::start(dir.path(), Behavior::Echo);
    let path = master.cfg().write(dir.path());
    let agent_env = |c: &mut Command| {
        c.env("DET_AGENT_ID", "agent-7")
            .env("DET_RESOURCE_POOL", "gpu")
            .env("DET_CONTAINER_MASTER_HOST", "172.17.0.1")
            .env("DET_FLUENT_IMAGE", "fluent/fluent-bit:1.6")
            .env("DET_USE_TLS", "true")
            .env("DET_MASTER_CERT_FILE", "/run/determined/master.crt");
    };
    let m = effective(&["config", "--config", path_str(&path)], agent_env);
    assert!(
        m.values().all(|(_, src)| !src.starts_with("DET_")),
        "an unrelated DET_* variable was taken: {m:#?}"
    );
    let mut cmd = command();
    cmd.arg("run").arg("--config").arg(&path);
    agent_env(&mut cmd);
    let proxy = Proxy::start_cmd(cmd);
    let mut c = connect(proxy.tcp_addr("main"));
    assert_eq!(roundtrip(&mut c, b"still fine"), b"still fine");
    finish(&mut c);
}

// === agent.yaml import ===

fn agent_yaml(dir: &Path, tls_enabled: bool, master_port: Option<u16>) -> PathBuf {
    let ca_pem = certs::write(dir, "agent-ca.pem", &Ca::root("Agent Import CA").pem());
    let mut y = String::from(
        "# a Determined agent.yaml\n\
         master_host: 10.20.30.40\n\
         agent_id: gpu-node-1\n\
         resource_pool: gpu-pool\n\
         container_runtime: runc\n\
         fluent:\n  image: fluent/fluent-bit:1.6\n  port: 24224\n  container_name: det-fluent\n\
         debug: false\n",
    );
    if let Some(p) = master_port {
        y += &format!("master_port: {p}\n");
    }
    y += &format!(
        "security:\n  tls:\n    enabled: {tls_enabled}\n    master_cert: {}\n    master_cert_name: agent-name\n",
        qp(&ca_pem)
    );
    certs::write(dir, "agent.yaml", &y)
}

#[test]
fn agent_config_import_with_unrelated_keys_and_no_master_port() {
    let dir = tempdir();
    let agent = agent_yaml(dir.path(), true, None);
    let path = certs::write(
        dir.path(),
        "proxy.yaml",
        &format!("agent_config: {}\nlog: {{format: json}}\n", qp(&agent)),
    );
    let m = effective(&["config", "--config", path_str(&path)], |_| {});
    let agent_src = path_str(&agent);
    assert_key(&m, "master_host", json!("10.20.30.40"), agent_src);
    assert_key(&m, "master_port", json!(443), agent_src);
    assert_key(
        &m,
        "security.tls.master_cert_name",
        json!("agent-name"),
        agent_src,
    );
    assert!(!m.contains_key("resource_pool"), "{m:#?}");
}

#[test]
fn agent_config_import_without_tls_and_master_port_means_80() {
    let dir = tempdir();
    let agent = agent_yaml(dir.path(), false, None);
    let path = certs::write(
        dir.path(),
        "proxy.yaml",
        &format!("agent_config: {}\n", qp(&agent)),
    );
    let m = effective(&["config", "--config", path_str(&path)], |_| {});
    assert_key(&m, "master_port", json!(80), path_str(&agent));
}

#[test]
fn proxy_file_overrides_agent_config() {
    let dir = tempdir();
    let agent = agent_yaml(dir.path(), true, Some(8443));
    let path = certs::write(
        dir.path(),
        "proxy.yaml",
        &format!(
            "agent_config: {}\nmaster_host: proxy-file.example\n",
            qp(&agent)
        ),
    );
    let m = effective(&["config", "--config", path_str(&path)], |c| {
        c.env("DET_MASTER_PORT", "9000");
    });
    assert_key(
        &m,
        "master_host",
        json!("proxy-file.example"),
        path_str(&path),
    );
    assert_key(&m, "master_port", json!(9000), "DET_MASTER_PORT");
    assert_key(
        &m,
        "security.tls.master_cert_name",
        json!("agent-name"),
        path_str(&agent),
    );
}

// === precedence by behaviour ===

#[test]
fn env_master_port_beats_file_when_dialling() {
    let dir = tempdir();
    let master = Master::start(dir.path(), Behavior::Echo);
    let mut cfg = master.cfg();
    cfg.master_port = Some(closed_port());
    let path = cfg.write(dir.path());
    let mut cmd = command();
    cmd.arg("run").arg("--config").arg(&path);
    cmd.env("DET_MASTER_PORT", master.server.port().to_string());
    let proxy = Proxy::start_cmd(cmd);
    let mut c = connect(proxy.tcp_addr("main"));
    assert_eq!(roundtrip(&mut c, b"env wins"), b"env wins");
    finish(&mut c);
}

#[test]
fn flag_master_port_beats_env_when_dialling() {
    let dir = tempdir();
    let master = Master::start(dir.path(), Behavior::Echo);
    let mut cfg = master.cfg();
    cfg.master_port = Some(closed_port());
    let path = cfg.write(dir.path());
    let mut cmd = command();
    cmd.arg("run").arg("--config").arg(&path);
    cmd.arg("--master-port")
        .arg(master.server.port().to_string());
    cmd.env("DET_MASTER_PORT", closed_port().to_string());
    let proxy = Proxy::start_cmd(cmd);
    let mut c = connect(proxy.tcp_addr("main"));
    assert_eq!(roundtrip(&mut c, b"flag wins"), b"flag wins");
    finish(&mut c);
}

#[test]
fn env_master_cert_name_is_the_verified_name() {
    let dir = tempdir();
    let ca = Ca::root("Env Name CA");
    let leaf = ca.server("det-master", &["det-master"]);
    let ca_pem = certs::write(dir.path(), "ca.pem", &ca.pem());
    let server = ServerBuilder::new(vec![leaf.der()], leaf.key_der()).start();
    let path = Cfg::new("127.0.0.1", server.port())
        .master_cert(&ca_pem)
        .write(dir.path());
    let mut cmd = command();
    cmd.arg("run").arg("--config").arg(&path);
    cmd.env("DET_SECURITY_TLS_MASTER_CERT_NAME", "det-master");
    let proxy = Proxy::start_cmd(cmd);
    let mut c = connect(proxy.tcp_addr("main"));
    assert_eq!(roundtrip(&mut c, b"named"), b"named");
    assert_eq!(server.handshake(1).sni.as_deref(), Some("det-master"));
    finish(&mut c);
}
