//! Text the proxy did not write reaches the terminal and the log escaped: a master whose
//! certificate names hold a newline, a forged `leaf SHA-256 fingerprint:` line, `ESC[8m`, a
//! C1 CSI and DEL cannot add a line or drive the terminal through `check`, `check --json`,
//! `trust` or `run`'s text and JSON logs; nor can an egress proxy's status line or a
//! master answering in plaintext. The escaped form stays visible to the operator.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::proxy::Exited;
use common::*;
use rcgen::{CertificateParams, CustomExtension, DistinguishedName, DnType, KeyPair};
use serde_json::Value;

const TIMEOUT: Duration = Duration::from_secs(20);

/// The line a hostile certificate tries to add under the real fingerprint.
const FORGED: &str =
    "leaf SHA-256 fingerprint: 00:11:22:33:44:55:66:77:88:99:aa:bb:cc:dd:ee:ff:00:11:22:33:44:55:66:77:88:99:aa:bb:cc:dd:ee:ff";

/// What follows a name in the hostile certificate: a newline and the forged line, then
/// "hide what follows" as ESC and as the C1 CSI, then DEL.
fn payload() -> String {
    format!("\n{FORGED}\x1b[8m\u{9b}8m\x7f")
}

/// The same, as the proxy must show it.
fn escaped_payload() -> String {
    format!("\\n{FORGED}\\x1b[8m\\u{{9b}}8m\\x7f")
}

// === The hostile master ===

/// DER length octets.
fn der_len(n: usize) -> Vec<u8> {
    match n {
        0..=127 => vec![n as u8],
        128..=255 => vec![0x81, n as u8],
        _ => vec![0x82, (n >> 8) as u8, n as u8],
    }
}

/// A subjectAltName extension holding `name` as a dNSName, byte for byte: rcgen only writes
/// ASCII there, and a master is not so polite.
fn san_extension(name: &[u8]) -> CustomExtension {
    let mut general_name = vec![0x82];
    general_name.extend(der_len(name.len()));
    general_name.extend_from_slice(name);
    let mut seq = vec![0x30];
    seq.extend(der_len(general_name.len()));
    seq.extend(general_name);
    CustomExtension::from_oid_content(&[2, 5, 29, 17], seq)
}

/// A self-signed master certificate whose CN and SAN DNS name carry the payload.
fn hostile_leaf() -> Leaf {
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, format!("det-master{}", payload()));
    p.distinguished_name = dn;
    p.custom_extensions = vec![san_extension(
        format!("master.example{}", payload()).as_bytes(),
    )];
    p.not_before = rcgen::date_time_ymd(2020, 1, 1);
    p.not_after = rcgen::date_time_ymd(certs::NOT_AFTER_YEAR, 12, 31);
    let cert = p.self_signed(&key).unwrap();
    Leaf { cert, key }
}

struct Hostile {
    leaf: Leaf,
    server: TlsServer,
    /// An unrelated CA as `master_cert`: the master's certificate fails as an unknown issuer.
    other_ca: std::path::PathBuf,
}

fn hostile_master(dir: &Path) -> Hostile {
    let leaf = hostile_leaf();
    let server = ServerBuilder::new(vec![leaf.der()], leaf.key_der()).start();
    let other_ca = certs::write(dir, "other-ca.pem", &Ca::root("Unrelated CA").pem());
    Hostile {
        leaf,
        server,
        other_ca,
    }
}

// === What the output must (not) hold ===

/// No control character but the output's own line ends, and no line that starts with the
/// forged fingerprint.
fn assert_no_raw_control(what: &str, text: &str) {
    if let Some(c) = text.chars().find(|c| c.is_control() && *c != '\n') {
        panic!("{what}: raw control character {c:?} in:\n{text:?}");
    }
    if let Some(l) = text.lines().find(|l| {
        l.trim_start()
            .starts_with("leaf SHA-256 fingerprint: 00:11")
    }) {
        panic!("{what}: a forged line {l:?} in:\n{text}");
    }
}

/// Every string a JSON document holds, decoded, free of control characters.
fn assert_json_strings_clean(what: &str, v: &Value) {
    match v {
        Value::String(s) => assert!(
            !s.chars().any(char::is_control),
            "{what}: the JSON string decodes to a control character: {s:?}"
        ),
        Value::Array(a) => a.iter().for_each(|x| assert_json_strings_clean(what, x)),
        Value::Object(o) => o.values().for_each(|x| assert_json_strings_clean(what, x)),
        _ => {}
    }
}

fn assert_shows_escaped(what: &str, text: &str) {
    let want = escaped_payload();
    assert!(
        text.contains(&format!("det-master{want}")),
        "{what}: the CN is not shown escaped ({want:?}):\n{text}"
    );
}

fn run(cmd: Command) -> Exited {
    run_to_exit(cmd, TIMEOUT)
}

fn subcommand(config: &Path, args: &[&str]) -> Exited {
    let mut cmd = command();
    cmd.args(&args[..1])
        .arg("--config")
        .arg(config)
        .args(&args[1..]);
    run(cmd)
}

// === check ===

#[test]
fn check_shows_a_hostile_certificate_escaped() {
    let dir = tempdir();
    let m = hostile_master(dir.path());
    let cfg = Cfg::new("127.0.0.1", m.server.port())
        .master_cert(&m.other_ca)
        .write(dir.path());
    let out = subcommand(&cfg, &["check"]);
    assert_eq!(out.code(), Some(1), "{out}");
    assert_no_raw_control("check stdout", &out.stdout);
    assert_no_raw_control("check stderr", &out.stderr);
    assert_shows_escaped("check's chain", &out.stdout);
    let san = format!("master.example{}", escaped_payload());
    assert!(out.stdout.contains(&format!("DNS       {san}")), "{out}");
    let failed: Vec<&str> = out
        .stdout
        .lines()
        .filter(|l| l.starts_with("FAILED:"))
        .collect();
    assert_eq!(failed.len(), 1, "{out}");
    assert!(failed[0].contains("unknown issuer"), "{out}");
    assert_shows_escaped("check's FAILED line", failed[0]);
}

#[test]
fn check_json_holds_the_escaped_form() {
    let dir = tempdir();
    let m = hostile_master(dir.path());
    let cfg = Cfg::new("127.0.0.1", m.server.port())
        .master_cert(&m.other_ca)
        .write(dir.path());
    let out = subcommand(&cfg, &["check", "--json"]);
    assert_eq!(out.code(), Some(1), "{out}");
    assert_no_raw_control("check --json stdout", &out.stdout);
    let report: Value = serde_json::from_str(&out.stdout).expect("check --json is JSON");
    assert_json_strings_clean("check --json", &report);
    let leaf = &report["chain"][0];
    assert_eq!(
        leaf["subject"],
        format!("CN=det-master{}", escaped_payload()).as_str(),
        "{report:#}"
    );
    assert_eq!(leaf["subject"], leaf["issuer"], "{report:#}");
    assert_eq!(
        leaf["dns_names"][0],
        format!("master.example{}", escaped_payload()).as_str()
    );
    assert_eq!(leaf["sha256"], fingerprint(&m.leaf.der()).as_str());
    assert_shows_escaped("check --json error", field(&report, "error"));
}

// === trust ===

/// The chain `trust` shows, checked: one fingerprint line, the real one.
fn assert_trust_screen(out: &Exited, real: &str) {
    assert_no_raw_control("trust stdout", &out.stdout);
    assert_no_raw_control("trust stderr", &out.stderr);
    assert_shows_escaped("trust's chain", &out.stdout);
    let fingerprints: Vec<&str> = out
        .stdout
        .lines()
        .filter_map(|l| l.trim_start().strip_prefix("leaf SHA-256 fingerprint:"))
        .collect();
    assert_eq!(fingerprints, [format!(" {real}")], "{out}");
}

#[test]
fn trust_with_a_wrong_fingerprint_shows_the_chain_escaped_and_writes_nothing() {
    let dir = tempdir();
    let m = hostile_master(dir.path());
    let target = dir.path().join("master.pem");
    let cfg = Cfg::new("127.0.0.1", m.server.port())
        .master_cert(&target)
        .write(dir.path());
    let wrong = fingerprint(b"not the master's certificate");
    let out = subcommand(&cfg, &["trust", "--fingerprint", &wrong]);
    assert_eq!(out.code(), Some(1), "{out}");
    assert!(out.stderr.contains("fingerprint mismatch"), "{out}");
    assert_trust_screen(&out, &fingerprint(&m.leaf.der()));
    assert!(!target.exists());
}

/// `trust` on a terminal (util-linux `script` gives it one), the question answered "n": the
/// screen the operator compares the fingerprint on holds no forged line.
#[test]
fn trust_on_a_terminal_answered_no_shows_the_chain_escaped() {
    let dir = tempdir();
    let m = hostile_master(dir.path());
    let target = dir.path().join("master.pem");
    let cfg = Cfg::new("127.0.0.1", m.server.port())
        .master_cert(&target)
        .write(dir.path());
    let line = format!(
        "{} trust --config {}",
        common::proxy::BIN,
        cfg.to_str().unwrap()
    );
    let mut cmd = common::proxy::clean("script");
    cmd.args(["--quiet", "--return", "--command", &line, "/dev/null"]);
    cmd.stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd
        .spawn()
        .expect("util-linux script (bsdutils) is needed for this test");
    let mut screen = Vec::new();
    let mut stdout = child.stdout.take().unwrap();
    // Answer once the question is on the screen, as a person would.
    let question = b"[y/N] ";
    let mut buf = [0u8; 4096];
    while !screen.windows(question.len()).any(|w| w == question) {
        let n = stdout.read(&mut buf).expect("read the terminal");
        assert!(
            n > 0,
            "trust ended before asking:\n{}",
            String::from_utf8_lossy(&screen)
        );
        screen.extend_from_slice(&buf[..n]);
    }
    child.stdin.as_mut().unwrap().write_all(b"n\n").unwrap();
    stdout.read_to_end(&mut screen).unwrap();
    let status = child.wait().unwrap();
    // A terminal ends lines with CR LF; the line ends are the output's own.
    let text = String::from_utf8_lossy(&screen).replace("\r\n", "\n");
    assert_eq!(status.code(), Some(1), "{text}");
    assert!(text.contains("not confirmed; nothing written"), "{text}");
    let out = Exited {
        status,
        stdout: text,
        stderr: String::new(),
    };
    assert_trust_screen(&out, &fingerprint(&m.leaf.der()));
    assert!(!target.exists());
}

// === run ===

/// A client the proxy closes (the master does not verify), and the "upstream failed" line.
fn connect_and_fail(proxy: &Proxy, addr: SocketAddr) {
    proxy.refuses(addr, Refusal::UpstreamError, Duration::from_secs(10));
    proxy.wait_for_text("upstream failed", Duration::from_secs(10));
}

#[test]
fn run_logs_the_verification_failure_escaped_in_json() {
    let dir = tempdir();
    let m = hostile_master(dir.path());
    let proxy = Cfg::new("127.0.0.1", m.server.port())
        .master_cert(&m.other_ca)
        .start(dir.path());
    connect_and_fail(&proxy, proxy.tcp_addr("main"));
    let stderr = proxy.stderr();
    assert_no_raw_control("run's JSON log", &stderr);
    for v in proxy.json_lines() {
        assert_json_strings_clean("run's JSON log", &v);
    }
    let failed = proxy
        .find(|v| v["message"] == "upstream failed")
        .expect("an upstream failed line");
    assert_eq!(failed["kind"], "cert_unknown_issuer", "{failed}");
    assert_shows_escaped("the logged error", field(&failed, "error"));
}

#[test]
fn run_logs_the_verification_failure_escaped_in_text() {
    let dir = tempdir();
    let m = hostile_master(dir.path());
    let cfg = Cfg::new("127.0.0.1", m.server.port())
        .master_cert(&m.other_ca)
        .write(dir.path());
    let mut cmd = command();
    cmd.arg("run").arg("--config").arg(&cfg);
    cmd.env("DET_TLS_PROXY_LOG_FORMAT", "text");
    let proxy = Proxy::spawn(cmd);
    let listening = proxy.wait_for_text("listening listener=main", common::proxy::READY_TIMEOUT);
    let addr: SocketAddr = listening
        .split_whitespace()
        .find_map(|w| w.strip_prefix("addr="))
        .unwrap_or_else(|| panic!("no addr= in {listening:?}"))
        .parse()
        .unwrap();
    connect_and_fail(&proxy, addr);
    let stderr = proxy.stderr();
    assert!(!stderr.starts_with('{'), "not a text log:\n{stderr}");
    assert_no_raw_control("run's text log", &stderr);
    let failed = proxy.wait_for_text("upstream failed", Duration::ZERO);
    assert_shows_escaped("the logged error", &failed);
}

// === The master's and the egress proxy's replies ===

fn any_ca(dir: &Path) -> std::path::PathBuf {
    certs::write(dir, "any-ca.pem", &Ca::root("Any CA").pem())
}

/// A server on the master's port that answers anything with `reply` and closes.
fn answering(reply: &'static [u8]) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for mut s in l.incoming().flatten() {
            s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
            let mut buf = [0u8; 4096];
            let mut head = Vec::new();
            // Up to the end of a request head (a CONNECT), or the first read (a ClientHello).
            while let Ok(n) = s.read(&mut buf) {
                head.extend_from_slice(&buf[..n]);
                if n == 0 || head.first() != Some(&b'C') || head.ends_with(b"\r\n\r\n") {
                    break;
                }
            }
            let _ = s.write_all(reply);
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    });
    addr
}

#[test]
fn a_master_answering_plaintext_control_characters_is_quoted_escaped() {
    let dir = tempdir();
    // Starts like an HTML page; the proxy keeps the first 8 bytes to say so.
    let addr = answering("<\x1b[8m\n\u{9b}".as_bytes());
    let cfg = Cfg::new("127.0.0.1", addr.port()).master_cert(&any_ca(dir.path()));
    let out = subcommand(&cfg.write(dir.path()), &["check"]);
    assert_eq!(out.code(), Some(1), "{out}");
    assert_no_raw_control("check stdout", &out.stdout);
    assert!(
        out.stdout
            .contains(r#"plaintext HTTP ("<\x1b[8m\n\u{9b}"...)"#),
        "{out}"
    );
    let proxy = cfg.start(dir.path());
    proxy.refuses(
        proxy.tcp_addr("main"),
        Refusal::UpstreamError,
        Duration::from_secs(10),
    );
    let failed = proxy.wait_for("the upstream failed line", TIMEOUT, |v| {
        v["message"] == "upstream failed"
    });
    assert_no_raw_control("run's JSON log", &proxy.stderr());
    assert_json_strings_clean("run's JSON log", &failed);
    assert!(
        field(&failed, "error").contains(r#"("<\x1b[8m\n\u{9b}"...)"#),
        "{failed}"
    );
}

#[test]
fn an_egress_proxys_status_line_is_shown_escaped() {
    let dir = tempdir();
    let egress = answering(
        "HTTP/1.1 403 Forbidden\x1b[8m\rleaf SHA-256 fingerprint: 00:11\u{9b}\x7f\r\nVia: x\r\n\r\n"
            .as_bytes(),
    );
    let url = format!("http://{egress}");
    let cfg = Cfg::new("det-master.test", 8443)
        .master_cert(&any_ca(dir.path()))
        .extra(&format!("upstream_proxy: {}", q(&url)));
    let shown = r"HTTP/1.1 403 Forbidden\x1b[8m\rleaf SHA-256 fingerprint: 00:11\u{9b}\x7f";
    let out = subcommand(&cfg.write(dir.path()), &["check"]);
    assert_eq!(out.code(), Some(1), "{out}");
    assert_no_raw_control("check stdout", &out.stdout);
    assert!(out.stdout.contains(shown), "{out}");
    let proxy = cfg.start(dir.path());
    proxy.refuses(
        proxy.tcp_addr("main"),
        Refusal::UpstreamError,
        Duration::from_secs(10),
    );
    let failed = proxy.wait_for("the upstream failed line", TIMEOUT, |v| {
        v["message"] == "upstream failed"
    });
    assert_eq!(failed["kind"], "proxy_forbidden", "{failed}");
    assert_no_raw_control("run's JSON log", &proxy.stderr());
    assert_json_strings_clean("run's JSON log", &failed);
    assert!(field(&failed, "error").contains(shown), "{failed}");
}
