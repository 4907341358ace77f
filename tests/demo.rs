//! `det-tls-proxy demo`: the whole path on loopback with no setup, three real exchanges
//! printed with their timings, and no files left behind.

mod common;

use std::time::Duration;

use common::*;

/// The demo's line for `label`: `<label>  ok  <ms> ms  <detail>`; returns (ms, detail).
fn exchange<'a>(stdout: &'a str, label: &str) -> (f64, &'a str) {
    let line = stdout
        .lines()
        .find(|l| l.starts_with(label))
        .unwrap_or_else(|| panic!("no {label} line:\n{stdout}"));
    let rest = line[label.len()..].trim_start();
    let rest = rest
        .strip_prefix("ok")
        .unwrap_or_else(|| panic!("{label} did not succeed: {line:?}"));
    let mut words = rest.split_whitespace();
    let ms: f64 = words
        .next()
        .and_then(|w| w.parse().ok())
        .unwrap_or_else(|| panic!("no timing in {line:?}"));
    assert_eq!(words.next(), Some("ms"), "{line:?}");
    assert!(ms > 0.0 && ms < 20_000.0, "implausible timing in {line:?}");
    let detail = rest.split_once("ms").map(|x| x.1.trim()).unwrap_or("");
    (ms, detail)
}

#[test]
fn demo_runs_the_three_exchanges_and_leaves_nothing_behind() {
    let tmp = tempdir();
    let mut cmd = command();
    cmd.arg("demo").env("TMPDIR", tmp.path());
    let out = run_to_exit(cmd, Duration::from_secs(20));
    assert_eq!(out.code(), Some(0), "demo failed:\n{out}");

    let (_, http1) = exchange(&out.stdout, "HTTP/1.1");
    assert!(http1.starts_with("200"), "HTTP/1.1 exchange: {http1:?}");
    // The stand-in master's answer says which protocol reached it through the proxy.
    assert!(
        http1.contains(r#""protocol":"HTTP/1.1""#),
        "HTTP/1.1 exchange: {http1:?}"
    );
    let (_, ws) = exchange(&out.stdout, "WebSocket");
    assert!(
        ws.contains("101") && ws.contains("echoed"),
        "WebSocket exchange: {ws:?}"
    );
    let (_, h2) = exchange(&out.stdout, "HTTP/2");
    assert!(
        h2.starts_with("200") && h2.contains("HTTP/2"),
        "HTTP/2 exchange: {h2:?}"
    );
    assert!(
        h2.contains(r#""protocol":"HTTP/2.0""#),
        "the master did not get HTTP/2: {h2:?}"
    );
    assert!(!out.stdout.contains("FAIL"), "{out}");
    // The name the stand-in's certificate holds was substituted for the IP master.
    assert!(out.stdout.contains("substituted"), "{out}");

    let left: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert!(
        left.is_empty(),
        "demo left files behind in TMPDIR: {left:?}"
    );
}
