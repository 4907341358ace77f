//! Configuration validation, one rule per fixture: every `tests/config/invalid/NAME.yaml` is
//! refused by `run` and by `check` with exit status 2, no panic, nothing bound (no
//! "listening" or "ready" line before the error), and the messages its `NAME.expect` lists;
//! and in process, as a typed error. A new validation rule gets a fixture here, not a test
//! that spawns the binary (tests/config.rs keeps what is about the binary itself: flags, the
//! environment, a missing --config file, the layers and their precedence).
//!
//! `NAME.expect`: one line per substring that must appear on stderr; a line starting with `!`
//! names a substring that must not; blank lines and `#` lines are ignored. The binary runs in
//! the fixture folder, so a fixture may point at its neighbours by relative path (a YAML file is
//! a handy "not a PEM file").

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{command, run_to_exit};
use det_tls_proxy::config::{self, Purpose};

fn folder() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/config/invalid")
}

fn fixtures() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(folder())
        .expect("tests/config/invalid")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    v.sort();
    v
}

struct Expect {
    present: Vec<String>,
    absent: Vec<String>,
}

fn expectations(yaml: &Path) -> Result<Expect, String> {
    let path = yaml.with_extension("expect");
    let text = std::fs::read_to_string(&path).map_err(|e| {
        format!(
            "{}: every fixture needs its .expect file: {e}",
            path.display()
        )
    })?;
    let mut x = Expect {
        present: vec![],
        absent: vec![],
    };
    for line in text.lines().map(str::trim_end) {
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        match line.strip_prefix('!') {
            Some(not) => x.absent.push(not.to_string()),
            None => x.present.push(line.to_string()),
        }
    }
    if x.present.is_empty() {
        return Err(format!("{}: no expected message", path.display()));
    }
    Ok(x)
}

/// Runs `det-tls-proxy SUBCOMMAND --config NAME.yaml` in the fixture folder; returns the
/// problems found (empty when the fixture behaved).
fn judge(yaml: &Path, subcommand: &str, x: &Expect) -> Vec<String> {
    let name = yaml.file_name().unwrap();
    let mut cmd = command();
    cmd.current_dir(folder())
        .arg(subcommand)
        .arg("--config")
        .arg(name);
    let out = run_to_exit(cmd, Duration::from_secs(20));
    let label = format!("{} ({subcommand})", name.to_string_lossy());
    let mut problems = Vec::new();
    if out.code() != Some(2) {
        problems.push(format!("{label}: exit status {:?}, want 2", out.code()));
    }
    if out.stderr.contains("panicked") || out.stderr.contains("RUST_BACKTRACE") {
        problems.push(format!("{label}: panicked"));
    }
    if let Some(line) = out.stderr.lines().find(|l| says_bound(l)) {
        problems.push(format!(
            "{label}: a listener was bound before the error: {line:?}"
        ));
    }
    if !out.stderr.contains("configuration error") {
        problems.push(format!("{label}: no \"configuration error\" on stderr"));
    }
    for want in &x.present {
        if !out.stderr.contains(want.as_str()) {
            problems.push(format!("{label}: missing {want:?}"));
        }
    }
    for not in &x.absent {
        if out.stderr.contains(not.as_str()) {
            problems.push(format!("{label}: must not say {not:?}"));
        }
    }
    if !problems.is_empty() {
        problems.push(format!("{label}: stderr was:\n{}", out.stderr.trim_end()));
    }
    problems
}

/// A log line saying a listener was bound or the proxy is ready, in either log format:
/// JSON (`"message":"listening"`) or text (`... INFO det_tls_proxy::server: listening ...`).
fn says_bound(line: &str) -> bool {
    let is_bound = |m: &str| {
        ["listening", "ready"]
            .iter()
            .any(|w| m == *w || m.starts_with(&format!("{w} ")))
    };
    if let Ok(v) = serde_json::from_str::<serde_json::Value>(line) {
        return v["message"].as_str().is_some_and(is_bound);
    }
    match line.split_once(" INFO ") {
        Some((_, rest)) => rest.split_once(": ").is_some_and(|(_, m)| is_bound(m)),
        None => false,
    }
}

/// The "nothing bound" check can fail: it recognises the lines of a proxy that did bind, in
/// the default (text) log format the fixtures run with, and in JSON.
#[test]
fn a_proxy_that_binds_is_recognised() {
    let dir = common::tempdir();
    let path = dir.path().join("valid.yaml");
    std::fs::write(
        &path,
        "master_host: det-master\nlisteners: [{name: main, listen: \"127.0.0.1:0\"}]\n",
    )
    .unwrap();
    let mut cmd = command();
    cmd.arg("run").arg("--config").arg(&path);
    let proxy = common::Proxy::spawn(cmd);
    let seen = proxy.try_wait_line(Duration::from_secs(15), |l| says_bound(l).then_some(()));
    assert!(
        seen.is_some(),
        "no \"listening\"/\"ready\" line recognised; stderr:\n{}",
        proxy.stderr()
    );
    assert!(says_bound(
        r#"{"level":"INFO","message":"listening","listener":"main"}"#
    ));
    assert!(!says_bound(
        r#"{"level":"ERROR","message":"address already in use"}"#
    ));
}

#[test]
fn every_invalid_config_is_refused_with_its_message_and_exit_2() {
    let all = fixtures();
    assert!(all.len() >= 40, "only {} fixtures found", all.len());
    let mut problems = Vec::new();
    for yaml in &all {
        let x = match expectations(yaml) {
            Ok(x) => x,
            Err(e) => {
                problems.push(e);
                continue;
            }
        };
        for sub in ["run", "check"] {
            problems.extend(judge(yaml, sub, &x));
        }
    }
    assert!(
        problems.is_empty(),
        "{} problem(s) in {} fixtures:\n{}",
        problems.len(),
        all.len(),
        problems.join("\n")
    );
}

/// The same files through the library: a typed error, never a panic and never a
/// configuration that validates. (Relative paths resolve elsewhere here, which only turns
/// "not PEM" into "cannot read": still an error.)
#[test]
fn every_invalid_config_is_a_typed_error_in_process() {
    for yaml in fixtures() {
        let text = std::fs::read_to_string(&yaml).unwrap();
        let result = config::assemble_str(&text).and_then(|l| config::validate(&l, Purpose::Serve));
        match result {
            Ok(c) => panic!("{} validated: {c:?}", yaml.display()),
            Err(e) => {
                assert!(!e.0.is_empty(), "{}: an empty error list", yaml.display());
                for one in &e.0 {
                    assert!(
                        !one.key.is_empty() && !one.message.is_empty(),
                        "{}: an error without key or message: {one:?}",
                        yaml.display()
                    );
                }
            }
        }
    }
}

/// Every .expect belongs to a fixture (a renamed fixture must not leave its expectations
/// behind, silently unchecked).
#[test]
fn no_orphan_expect_files() {
    for e in std::fs::read_dir(folder()).unwrap() {
        let p = e.unwrap().path();
        match p.extension().and_then(|x| x.to_str()) {
            Some("expect") => assert!(
                p.with_extension("yaml").exists(),
                "{} has no fixture",
                p.display()
            ),
            Some("yaml") => {}
            _ => panic!(
                "{}: only NAME.yaml and NAME.expect belong here",
                p.display()
            ),
        }
    }
}
