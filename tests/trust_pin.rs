//! `det-tls-proxy trust --pin`: the confirmed leaf's SHA-256 fingerprint added to the proxy's
//! own file as `security.tls.master_cert_sha256`, the file's comments and layout kept, the
//! pins already there kept (rotation) and never duplicated, the result loaded as `run` loads
//! it before it replaces the file; layouts the editor cannot edit safely refused with the
//! lines to add by hand. (Relaying with pins alone is the verifier's to test.)

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::proxy::Exited;
use common::*;

const TIMEOUT: Duration = Duration::from_secs(20);
const KEY: &str = "security.tls.master_cert_sha256";

/// A master sending leaf + root; no certificate file on this host.
struct Setup {
    leaf: Leaf,
    server: TlsServer,
    dir: tempfile::TempDir,
}

impl Setup {
    fn new() -> Setup {
        let ca = Ca::root("Pin Test Root CA");
        let leaf = ca.server("det-master", &["det-master", "127.0.0.1"]);
        let server = ServerBuilder::new(vec![leaf.der(), ca.der()], leaf.key_der()).start();
        Setup {
            leaf,
            server,
            dir: tempdir(),
        }
    }

    fn fp(&self) -> String {
        fingerprint(&self.leaf.der())
    }

    /// `proxy.yaml` in the test's directory: `security_block` (may be empty) between the
    /// operator's commented top and the listeners.
    fn write_config(&self, security_block: &str) -> (PathBuf, String) {
        let text = format!(
            "# det-tls-proxy on this host (edited by hand)\n\
             master_host: \"127.0.0.1\"   # the master, by IP\n\
             master_port: {}\n\
             \n\
             log: {{format: json, level: debug}}\n\
             {security_block}\
             # one loopback listener for the agent\n\
             listeners:\n  - {{name: main, listen: \"127.0.0.1:0\"}}\n",
            self.server.port()
        );
        let path = self.dir.path().join("proxy.yaml");
        std::fs::write(&path, &text).unwrap();
        (path, text)
    }
}

fn run(cmd: Command) -> Exited {
    run_to_exit(cmd, TIMEOUT)
}

/// `det-tls-proxy trust --pin --config <config> <args>`.
fn pin(config: &Path, args: &[&str]) -> Exited {
    let mut cmd = command();
    cmd.arg("trust")
        .arg("--pin")
        .arg("--config")
        .arg(config)
        .args(args);
    run(cmd)
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn dir_names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// `det-tls-proxy config`'s row for the pins.
fn config_row(config: &Path) -> String {
    let mut cmd = command();
    cmd.arg("config").arg("--config").arg(config);
    let out = run(cmd);
    assert_eq!(out.code(), Some(0), "{out}");
    out.stdout
        .lines()
        .find(|l| l.starts_with(&format!("{KEY} =")))
        .unwrap_or_else(|| panic!("no {KEY} row:\n{out}"))
        .to_string()
}

#[test]
fn pin_is_added_to_the_file_with_its_comments_layout_and_mode_kept() {
    let s = Setup::new();
    let block =
        "security:\n  tls:\n    # trust settings\n    enabled: true   # TLS to the master\n";
    let (config, text) = s.write_config(block);
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o640)).unwrap();
    let fp = s.fp();
    let out = pin(&config, &["--fingerprint", &fp]);
    assert_eq!(out.code(), Some(0), "{out}");
    assert!(out.stdout.contains(&format!("pinned {fp} in")), "{out}");

    let expected = text.replace(
        "    enabled: true   # TLS to the master\n",
        &format!(
            "    enabled: true   # TLS to the master\n    master_cert_sha256:\n      - \"{fp}\"\n"
        ),
    );
    assert_eq!(std::fs::read_to_string(&config).unwrap(), expected);
    assert_eq!(mode(&config), 0o640, "the file's mode changed");
    assert_eq!(
        dir_names(s.dir.path()),
        ["proxy.yaml"],
        "leftovers, or a bundle written"
    );

    // The configuration loader reads the pin from the file.
    let row = config_row(&config);
    assert!(row.contains(&fp), "{row}");
    assert!(
        row.ends_with(&format!("({})", config.display())),
        "source: {row}"
    );
}

#[test]
fn a_file_without_a_security_section_gets_one() {
    let s = Setup::new();
    let (config, text) = s.write_config("");
    let out = pin(&config, &["--fingerprint", &s.fp()]);
    assert_eq!(out.code(), Some(0), "{out}");
    let new = std::fs::read_to_string(&config).unwrap();
    let added = format!(
        "security:\n  tls:\n    master_cert_sha256:\n      - \"{}\"\n",
        s.fp()
    );
    assert_eq!(new, format!("{text}{added}"));
    assert!(config_row(&config).contains(&s.fp()));
}

#[test]
fn existing_pins_are_kept_for_the_change_over_and_never_duplicated() {
    let s = Setup::new();
    let old = fingerprint(b"the master's previous certificate").to_uppercase();
    let block =
        format!("security:\n  tls:\n    master_cert_sha256: [\"{old}\"]  # before the renewal\n");
    let (config, text) = s.write_config(&block);
    let fp = s.fp();
    let out = pin(&config, &["--fingerprint", &fp]);
    assert_eq!(out.code(), Some(0), "{out}");
    let new = std::fs::read_to_string(&config).unwrap();
    assert_eq!(
        new,
        text.replace(&format!("[\"{old}\"]"), &format!("[\"{old}\", \"{fp}\"]"))
    );
    assert!(
        out.stdout.contains("kept the pin(s) already in")
            && out.stdout.contains(&old)
            && out.stdout.contains("remove it"),
        "the rotation is not explained:\n{out}"
    );
    let row = config_row(&config);
    assert!(row.contains(&fp) && row.contains(&old), "{row}");

    // Again, with the fingerprint in another spelling: already there, the file untouched.
    let out = pin(
        &config,
        &["--fingerprint", &fp.to_uppercase().replace(':', "")],
    );
    assert_eq!(out.code(), Some(0), "{out}");
    assert!(out.stdout.contains("already pins"), "{out}");
    assert_eq!(std::fs::read_to_string(&config).unwrap(), new);
}

#[test]
fn no_configuration_file_or_out_with_pin_is_a_usage_error() {
    let s = Setup::new();
    let mut cmd = command();
    cmd.arg("trust")
        .arg("--pin")
        .args(["--master-host", "127.0.0.1"])
        .args(["--master-port", &s.server.port().to_string()])
        .args(["--fingerprint", &s.fp()]);
    let out = run(cmd);
    assert_eq!(out.code(), Some(2), "{out}");
    assert!(out.stderr.contains("pass --config FILE"), "{out}");

    let (config, text) = s.write_config("");
    let elsewhere = s.dir.path().join("x.pem");
    let out = pin(
        &config,
        &[
            "--fingerprint",
            &s.fp(),
            "--out",
            elsewhere.to_str().unwrap(),
        ],
    );
    assert_eq!(out.code(), Some(2), "{out}");
    assert!(out.stderr.contains("--out"), "{out}");
    assert_eq!(std::fs::read_to_string(&config).unwrap(), text);
    assert!(!elsewhere.exists());
}

#[test]
fn a_flow_mapping_is_refused_with_the_lines_to_add_by_hand() {
    let s = Setup::new();
    let (config, text) = s.write_config("security: {tls: {enabled: true}}\n");
    let fp = s.fp();
    let out = pin(&config, &["--fingerprint", &fp]);
    assert_eq!(out.code(), Some(1), "{out}");
    assert!(
        out.stderr.contains("cannot edit") && out.stderr.contains("nothing written"),
        "{out}"
    );
    let lines = format!("security:\n  tls:\n    master_cert_sha256:\n      - \"{fp}\"\n");
    assert!(
        out.stderr.contains(&lines),
        "the lines to add are not printed:\n{out}"
    );
    assert_eq!(std::fs::read_to_string(&config).unwrap(), text);
    assert_eq!(dir_names(s.dir.path()), ["proxy.yaml"]);
}

#[test]
fn a_file_that_would_not_load_as_run_loads_it_is_not_replaced() {
    let s = Setup::new();
    // `run` needs master_cert to exist; the pin would be written into a file `run` refuses.
    let missing = s.dir.path().join("missing.crt");
    let block = format!("security:\n  tls:\n    master_cert: {}\n", qp(&missing));
    let (config, text) = s.write_config(&block);
    let out = pin(&config, &["--fingerprint", &s.fp()]);
    assert_eq!(out.code(), Some(1), "{out}");
    assert!(
        out.stderr.contains("does not validate as `run`")
            && out.stderr.contains("security.tls.master_cert")
            && out.stderr.contains(&config.display().to_string()),
        "{out}"
    );
    assert_eq!(std::fs::read_to_string(&config).unwrap(), text);
    assert_eq!(dir_names(s.dir.path()), ["proxy.yaml"]);
}

#[test]
fn a_variable_overriding_the_files_pins_is_named() {
    let s = Setup::new();
    let (config, _) = s.write_config("");
    let other = fingerprint(b"some other certificate");
    let mut cmd = command();
    cmd.env("DET_SECURITY_TLS_MASTER_CERT_SHA256", &other)
        .arg("trust")
        .arg("--pin")
        .arg("--config")
        .arg(&config)
        .args(["--fingerprint", &s.fp()]);
    let out = run(cmd);
    assert_eq!(out.code(), Some(0), "{out}");
    assert!(
        out.stdout.contains(
            "DET_SECURITY_TLS_MASTER_CERT_SHA256 sets security.tls.master_cert_sha256 above the file"
        ) && out.stdout.contains("will not take effect"),
        "{out}"
    );
    assert!(std::fs::read_to_string(&config).unwrap().contains(&s.fp()));
}

#[test]
fn pin_from_the_cli_store_takes_the_stored_leaf() {
    let s = Setup::new();
    let (config, _) = s.write_config("");
    let store = s.dir.path().join("certs.json");
    let json = serde_json::json!({
        format!("https://127.0.0.1:{}", s.server.port()): s.leaf.pem(),
    });
    std::fs::write(&store, json.to_string()).unwrap();
    let out = pin(
        &config,
        &[
            &format!("--from-cli-store={}", store.display()),
            "--fingerprint",
            &s.fp(),
        ],
    );
    assert_eq!(out.code(), Some(0), "{out}");
    assert!(config_row(&config).contains(&s.fp()));
}
