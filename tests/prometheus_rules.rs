//! deploy/prometheus as Prometheus's own tool reads it: `promtool check rules` and `check
//! config` accept the files, `promtool test rules` passes every case in
//! deploy/prometheus/tests/ (each alert firing, and quiet on a healthy series), every alert
//! carries a severity, a summary, a description and a runbook link, and each link's anchor is
//! a heading of the README. A missing promtool fails: install Debian's prometheus
//! (tests/run.sh).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_yaml::Value as Yaml;

const DEPLOY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/prometheus");
const README: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/README.md");

fn promtool(args: &[&str], cwd: &Path) -> String {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(cwd)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run promtool ({e}): install Debian's prometheus (tests/run.sh)")
        });
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?} failed:\n{text}");
    text
}

fn alerts() -> Vec<Yaml> {
    let text = std::fs::read_to_string(Path::new(DEPLOY).join("alerts.yaml")).unwrap();
    let doc: Yaml = serde_yaml::from_str(&text).unwrap();
    doc["groups"]
        .as_sequence()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_sequence().unwrap().clone())
        .collect()
}

fn test_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(Path::new(DEPLOY).join("tests"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    files
}

#[test]
fn rule_files_and_the_example_config_pass_promtool_check() {
    let out = promtool(
        &["check", "rules", "rules.yaml", "alerts.yaml"],
        Path::new(DEPLOY),
    );
    assert!(out.contains("SUCCESS"), "{out}");
    promtool(&["check", "config", "prometheus.yml"], Path::new(DEPLOY));
}

#[test]
fn every_rule_unit_test_passes() {
    let files = test_files();
    assert!(!files.is_empty(), "no tests in {DEPLOY}/tests");
    for f in &files {
        let out = promtool(&["test", "rules", f.to_str().unwrap()], Path::new(DEPLOY));
        assert!(out.contains("SUCCESS"), "{}: {out}", f.display());
    }
}

#[test]
fn every_alert_fires_in_a_unit_test_and_stays_quiet_in_another() {
    // Which alerts each test expects to fire, and which it expects quiet (`exp_alerts: []`).
    let (mut firing, mut quiet) = (BTreeSet::new(), BTreeSet::new());
    for f in test_files() {
        let doc: Yaml = serde_yaml::from_str(&std::fs::read_to_string(&f).unwrap()).unwrap();
        for case in doc["tests"].as_sequence().unwrap() {
            for t in case["alert_rule_test"].as_sequence().into_iter().flatten() {
                let name = t["alertname"].as_str().unwrap().to_string();
                let fires = t["exp_alerts"].as_sequence().is_some_and(|a| !a.is_empty());
                if fires {
                    firing.insert(name);
                } else {
                    quiet.insert(name);
                }
            }
        }
    }
    for rule in alerts() {
        let name = rule["alert"].as_str().unwrap();
        assert!(firing.contains(name), "no unit test makes {name} fire");
        assert!(quiet.contains(name), "no unit test keeps {name} quiet");
    }
}

/// GitHub's anchor for a heading: lower case, spaces to '-', punctuation other than '-' and
/// '_' dropped.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

#[test]
fn every_alert_has_severity_summary_description_and_a_readme_runbook() {
    let readme = std::fs::read_to_string(README).unwrap();
    let anchors: BTreeSet<String> = readme
        .lines()
        .filter(|l| l.starts_with('#'))
        .map(|l| slug(l.trim_start_matches('#')))
        .collect();
    let all = alerts();
    assert!(all.len() >= 10, "{} alerts", all.len());
    for rule in all {
        let name = rule["alert"].as_str().unwrap();
        let severity = rule["labels"]["severity"].as_str().unwrap_or_default();
        assert!(
            ["warning", "critical"].contains(&severity),
            "{name}: severity {severity:?}"
        );
        for key in ["summary", "description", "runbook_url"] {
            assert!(
                rule["annotations"][key]
                    .as_str()
                    .is_some_and(|s| !s.is_empty()),
                "{name}: no {key}"
            );
        }
        let url = rule["annotations"]["runbook_url"].as_str().unwrap();
        let (page, anchor) = url.split_once('#').unwrap_or((url, ""));
        assert!(page.ends_with("/README.md"), "{name}: {url}");
        assert!(
            anchors.contains(anchor),
            "{name}: the README has no heading for #{anchor}"
        );
    }
}
