//! Hostile input and security defaults: clients outside `allowed_clients` are closed at accept,
//! counted, and never reach the master; the defaults listen on loopback only and refuse
//! non-loopback listeners (and admin) without `allowed_clients` whichever layer asks; a
//! readable client key is warned about; no key material and no payload bytes reach the logs;
//! skip_verify is loud; a master certificate with odd dates is refused without a panic.

mod common;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use common::proxy::is_access;
use common::*;
use det_tls_proxy::config::{self, ListenAddr, PresentClientCert, Purpose};
use serde_json::Value;

// === Helpers ===

fn http_get(addr: &str, from: Option<&str>, path: &str) -> Option<String> {
    let target: SocketAddr = addr.parse().unwrap();
    let s = socket_from(from, target);
    let mut s = s?;
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).ok()?;
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    if out.is_empty() {
        None
    } else {
        Some(out)
    }
}

// === allowed_clients ===

#[test]
fn clients_outside_allowed_clients_closed_at_accept_counted_and_never_reach_master() {
    const DENIED: usize = 20;
    let dir = tempdir();
    let master = Master::start(dir.path(), Behavior::Echo);
    let proxy = master
        .cfg()
        .listeners(&[r#"{name: main, listen: "127.0.0.1:0", allowed_clients: ["127.0.0.2/32"]}"#])
        .extra(r#"admin: {listen: "127.0.0.1:0"}"#)
        .start(dir.path());
    let addr = proxy.tcp_addr("main");

    let mut slowest = Duration::ZERO;
    for i in 0..DENIED {
        let mut c = socket_from(Some("127.0.0.1"), addr).expect("connect");
        let t = Instant::now();
        // The kernel may already have refused the bytes; only the close matters.
        let _ = c.write_all(format!("let me in #{i}, with a payload").as_bytes());
        let got = read_until_closed(&mut c, Duration::from_secs(2));
        slowest = slowest.max(t.elapsed());
        assert!(got.is_empty(), "a denied client got {got:?}");
    }
    assert!(
        slowest < Duration::from_secs(1),
        "denied clients closed after up to {slowest:?}"
    );
    // Every denial is counted (their access lines are rate-limited: tests/denied_log.rs).
    let denied = || {
        metric(
            &scrape_text(&proxy.listener_addr("admin")),
            "det_tls_proxy_connections_total",
            &[("listener", "main"), ("result", "denied")],
        )
    };
    assert!(
        eventually(Duration::from_secs(5), || denied() == DENIED as f64),
        "{} denials counted, {DENIED} made",
        denied()
    );
    assert!(proxy
        .find(|v| is_access(v) && v["outcome"] == "denied")
        .is_some());
    assert_eq!(
        master.server.state().tcp_accepts,
        0,
        "the master was dialled for a denied client"
    );
    // Rate-limited: one warning for the whole burst, not one per client.
    let warns = proxy
        .json_lines()
        .iter()
        .filter(|v| v["message"] == "client not in allowed_clients: closed")
        .count();
    assert!(
        (1..=2).contains(&warns),
        "{warns} warnings for {DENIED} denials"
    );

    // A client from the allowed address is served by the same listener.
    let mut ok = socket_from(Some("127.0.0.2"), addr).expect("connect from 127.0.0.2");
    assert_eq!(roundtrip(&mut ok, b"allowed"), b"allowed");
    finish(&mut ok);
    assert_eq!(master.server.state().tcp_accepts, 1);
    figure(format!(
        "allowed_clients: {DENIED} denied clients closed within {slowest:?}, counted {DENIED} in connections_total{{result=\"denied\"}}, 0 reached the master, {warns} warning line(s)"
    ));
}

#[test]
fn admin_closes_scrapers_outside_its_allowed_clients() {
    let dir = tempdir();
    let master = Master::start(dir.path(), Behavior::Echo);
    let proxy = master
        .cfg()
        .extra(r#"admin: {listen: "127.0.0.1:0", allowed_clients: ["127.0.0.2/32"]}"#)
        .start(dir.path());
    let admin = proxy.listener_addr("admin");
    assert_eq!(
        http_get(&admin, Some("127.0.0.1"), "/metrics"),
        None,
        "admin answered a client outside admin.allowed_clients"
    );
    let m = http_get(&admin, Some("127.0.0.2"), "/metrics").expect("an allowed scraper");
    assert!(m.starts_with("HTTP/1.1 200"), "{m}");
    assert!(m.contains("det_tls_proxy_skip_verify"), "{m}");
}

// === Defaults ===

#[test]
fn defaults_listen_on_loopback_only_with_admin_off() {
    let loaded = config::assemble_str("master_host: det-master\n").unwrap();
    let c = config::validate(&loaded, Purpose::Show).unwrap();
    assert_eq!(c.listeners.len(), 1);
    let l = &c.listeners[0];
    assert_eq!(l.addr, ListenAddr::Tcp("127.0.0.1:8080".parse().unwrap()));
    assert_eq!(l.allowed_clients, None);
    assert_eq!(
        l.present_client_cert_for(None),
        Some(PresentClientCert::Always)
    );
    assert!(c.admin.is_none(), "admin is on by default: {:?}", c.admin);
    assert!(c.tls.enabled && !c.tls.skip_verify);
    assert_eq!(c.master.port, 8443);
}

/// A non-loopback listener or admin address without allowed_clients is refused whichever
/// layer sets it: the file (tests/config/invalid), the environment or a flag.
#[test]
fn non_loopback_without_allowed_clients_refused_from_env_and_flags() {
    let dir = tempdir();
    let base = ["--master-host", "det-master", "--security-tls-skip-verify"];
    // (what, environment, flags, the message wanted)
    type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, Vec<&'a str>, &'a str);
    let cases: Vec<Case> = vec![
        (
            "DET_TLS_PROXY_LISTEN",
            vec![("DET_TLS_PROXY_LISTEN", "127.0.0.1:0,0.0.0.0:0")],
            vec![],
            "0.0.0.0:0 is reachable from other hosts",
        ),
        (
            "--listen",
            vec![],
            vec!["--listen", "[::]:0"],
            "[::]:0 is reachable from other hosts",
        ),
        (
            "DET_TLS_PROXY_ADMIN_LISTEN",
            vec![("DET_TLS_PROXY_ADMIN_LISTEN", "0.0.0.0:0")],
            vec!["--listen", "127.0.0.1:0"],
            "admin.listen 0.0.0.0:0 is reachable from other hosts",
        ),
        (
            "--admin-listen",
            vec![],
            vec!["--listen", "127.0.0.1:0", "--admin-listen", "0.0.0.0:0"],
            "admin.listen 0.0.0.0:0 is reachable from other hosts",
        ),
    ];
    for (what, env, flags, want) in cases {
        let mut cmd = command();
        cmd.current_dir(dir.path())
            .arg("run")
            .args(base)
            .args(&flags);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = run_to_exit(cmd, Duration::from_secs(15));
        assert_eq!(out.code(), Some(2), "{what}: {out}");
        assert!(out.stderr.contains(want), "{what}: {out}");
        assert!(out.stderr.contains("allowed_clients"), "{what}: {out}");
        assert!(!out.stderr.contains("panicked"), "{what}: {out}");
    }
}

// === Key material and payload never logged ===

fn client_pair(dir: &Path, ca: &Ca, mode: u32) -> (std::path::PathBuf, std::path::PathBuf, Leaf) {
    let client = ca.client("det-agent");
    let cert = certs::write(dir, "agent.crt", &client.pem());
    let key = certs::write(dir, "agent.key", &client.key_pem());
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(mode)).unwrap();
    (cert, key, client)
}

fn key_warning(v: &Value) -> bool {
    v["level"] == "WARN" && field(v, "message").contains("client_key")
}

#[test]
fn client_key_readable_by_group_or_others_is_warned_at_start() {
    for (mode, warned) in [
        (0o644, true),
        (0o640, true),
        (0o604, true),
        (0o600, false),
        (0o400, false),
    ] {
        let dir = tempdir();
        let master = Master::start(dir.path(), Behavior::Echo);
        let (cert, key, _) = client_pair(dir.path(), &master.ca, mode);
        let proxy = master
            .cfg()
            .tls("client_cert", qp(&cert))
            .tls("client_key", qp(&key))
            .start(dir.path());
        let found = proxy.find(key_warning);
        match (warned, found) {
            (true, Some(v)) => {
                assert_eq!(field(&v, "mode"), format!("{mode:04o}"), "{v}");
                assert!(field(&v, "path").ends_with("agent.key"), "{v}");
            }
            (false, None) => {}
            (true, None) => panic!(
                "no client_key warning for mode {mode:04o}:\n{}",
                proxy.stderr()
            ),
            (false, Some(v)) => panic!("client_key warning for mode {mode:04o}: {v}"),
        }
    }
}

/// Every PEM body line of `pem`, and the hex of `der`: what a leak would look like.
fn secrets_of(pem: &str, der: &[u8]) -> Vec<String> {
    let mut v: Vec<String> = pem
        .lines()
        .filter(|l| !l.starts_with("-----") && l.len() >= 16)
        .map(|l| l[..16].to_string())
        .collect();
    let hex: String = der.iter().map(|b| format!("{b:02x}")).collect();
    v.extend(
        hex.as_bytes()
            .chunks(32)
            .map(|c| String::from_utf8_lossy(c).into_owned()),
    );
    v
}

#[test]
fn no_key_material_and_no_payload_bytes_in_any_log_line() {
    let dir = tempdir();
    let master = Master::start_with(dir.path(), |b| b.behavior(Behavior::Echo));
    let (cert, key, client) = client_pair(dir.path(), &master.ca, 0o600);
    let canary = format!(
        "CANARY-{:016x}-PAYLOAD",
        std::process::id() as u64 * 0x9e37_79b9
    );
    let cfg = master
        .cfg()
        .tls("client_cert", qp(&cert))
        .tls("client_key", qp(&key))
        .listeners(&[
            r#"{name: main, listen: "127.0.0.1:0"}"#,
            r#"{name: closed, listen: "127.0.0.1:0", allowed_clients: ["10.0.0.0/8"]}"#,
        ])
        .extra(r#"admin: {listen: "127.0.0.1:0"}"#);
    // The most verbose the configuration allows.
    let yaml = cfg.render().replace("level: debug", "level: trace");
    let path = dir.path().join("proxy.yaml");
    std::fs::write(&path, yaml).unwrap();
    let mut proxy = Proxy::start(&path);
    let main = proxy.tcp_addr("main");

    // Relayed both ways.
    let mut c = connect(main);
    assert_eq!(roundtrip(&mut c, canary.as_bytes()), canary.as_bytes());
    finish(&mut c);
    // Passed through (a ClientHello's headers), where the master then fails the handshake.
    let mut c = connect(main);
    let mut tlsish = vec![0x16, 0x03, 0x01, 0x00, 0x40, 0x01, 0x00, 0x00, 0x3c];
    tlsish.extend_from_slice(canary.as_bytes());
    let _ = c.write_all(&tlsish);
    let _ = c.shutdown(std::net::Shutdown::Write);
    let _ = read_until_closed(&mut c, Duration::from_secs(5));
    // An HTTP/2-looking start.
    let mut c = connect(main);
    let _ = c.write_all(format!("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n{canary}").as_bytes());
    let _ = c.shutdown(std::net::Shutdown::Write);
    let _ = read_until_closed(&mut c, Duration::from_secs(5));
    // Denied at accept.
    let mut c = connect(proxy.tcp_addr("closed"));
    let _ = c.write_all(canary.as_bytes());
    let _ = read_until_closed(&mut c, Duration::from_secs(5));
    // Scraped, then stopped: every line it will ever write is in.
    let _ = scrape_text(&proxy.listener_addr("admin"));
    proxy.wait_for_nth("four access lines", 4, Duration::from_secs(10), is_access);
    proxy.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(
        proxy.wait_exit(Duration::from_secs(15)).is_some(),
        "no exit after SIGTERM"
    );

    let mut secrets = secrets_of(&client.key_pem(), client.key.serialize_der().as_slice());
    secrets.push(canary.clone());
    secrets.push(
        canary
            .as_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect(),
    );
    secrets.push("PRIVATE KEY".into());
    let mut scanned = proxy.lines();
    for sub in ["config", "check"] {
        let mut cmd = command();
        cmd.arg(sub).arg("--config").arg(&path);
        let out = run_to_exit(cmd, Duration::from_secs(30));
        scanned.extend(out.stdout.lines().map(str::to_string));
        scanned.extend(out.stderr.lines().map(str::to_string));
    }
    assert!(
        scanned.len() > 10,
        "too little output to judge: {scanned:?}"
    );
    for line in &scanned {
        for s in &secrets {
            assert!(!line.contains(s.as_str()), "{s:?} leaked into: {line}");
        }
    }
    figure(format!(
        "no_secrets_in_logs: {} lines (run at level trace, config, check) scanned for the payload and the client key: none found",
        scanned.len()
    ));
}

// === skip_verify is loud ===

#[test]
fn skip_verify_is_warned_exposed_as_metric_and_reported_by_check() {
    let dir = tempdir();
    let master = Master::start(dir.path(), Behavior::Echo);
    let cfg = Cfg::new("127.0.0.1", master.server.port())
        .tls("skip_verify", "true")
        .extra(r#"admin: {listen: "127.0.0.1:0"}"#);
    let proxy = cfg.start(dir.path());
    let warn = proxy
        .find(|v| v["level"] == "WARN" && field(v, "message").contains("skip_verify"))
        .expect("a start-up warning about skip_verify");
    assert!(field(&warn, "message").contains("NOT verified"), "{warn}");
    let m = scrape_text(&proxy.listener_addr("admin"));
    assert_eq!(metric(&m, "det_tls_proxy_skip_verify", &[]), 1.0, "{m}");

    let mut cmd = command();
    cmd.arg("check")
        .arg("--config")
        .arg(dir.path().join("proxy.yaml"));
    let out = run_to_exit(cmd, Duration::from_secs(30));
    let all = format!("{}{}", out.stdout, out.stderr);
    assert!(
        all.contains("skip_verify") && all.to_lowercase().contains("nothing was verified"),
        "check did not say that nothing was verified:\n{out}"
    );
}

// === Certificates with dates outside 1970..9999 ===

/// A self-signed leaf valid from `from` to `to` (years), for det-master and 127.0.0.1.
fn dated_leaf(from: i32, to: i32) -> Leaf {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut p =
        rcgen::CertificateParams::new(vec!["det-master".to_string(), "127.0.0.1".to_string()])
            .unwrap();
    let mut dn = rcgen::DistinguishedName::new();
    dn.push(rcgen::DnType::CommonName, "det-master");
    p.distinguished_name = dn;
    p.not_before = rcgen::date_time_ymd(from, 1, 1);
    p.not_after = rcgen::date_time_ymd(to, 1, 1);
    let cert = p.self_signed(&key).unwrap();
    Leaf { cert, key }
}

/// Whoever answers on the master's address chooses the certificate the proxy describes when
/// verification fails; its dates must not be able to crash the description, in `run`, `check`
/// or `trust`.
#[test]
fn master_certificate_dated_before_1970_is_refused_without_panic() {
    let mut problems = Vec::new();
    for (from, to, trusted) in [(1960, 1965, false), (1960, 2090, false), (1960, 1965, true)] {
        let dir = tempdir();
        let leaf = dated_leaf(from, to);
        let server = ServerBuilder::new(vec![leaf.der()], leaf.key_der())
            .behavior(Behavior::Echo)
            .start();
        let trust_pem = if trusted {
            certs::write(dir.path(), "ca.pem", &leaf.pem())
        } else {
            certs::write(dir.path(), "ca.pem", &Ca::root("Some Other CA").pem())
        };
        let what = format!("certificate valid {from}..{to}, trusted: {trusted}");
        let cfg = dir.path().join("proxy.yaml");
        Cfg::new("127.0.0.1", server.port())
            .master_cert(&trust_pem)
            .write(dir.path());

        // `run`: the client is refused, the connection accounted for, the log stays JSON.
        let proxy = Proxy::start(&cfg);
        let mut c = connect(proxy.tcp_addr("main"));
        let local = c.local_addr().unwrap().to_string();
        let _ = c.write_all(b"GET / HTTP/1.1\r\n\r\n");
        let got = read_until_closed(&mut c, Duration::from_secs(5));
        if !got.is_empty() {
            problems.push(format!("{what}: run: relayed {got:?}"));
        }
        let access = try_wait_until(Duration::from_secs(5), || {
            proxy.find(|v| is_access(v) && v["client"] == local.as_str())
        });
        match access {
            Some(a) if a["outcome"] == "upstream_error" => {}
            Some(a) => problems.push(format!("{what}: run: access line {a}")),
            None => problems.push(format!("{what}: run: no access line for the client")),
        }
        let lines = proxy.lines();
        let not_json = lines
            .iter()
            .filter(|l| serde_json::from_str::<Value>(l).is_err())
            .count();
        if let Some(p) = lines.iter().position(|l| l.contains("panicked")) {
            let why = lines.get(p + 1).cloned().unwrap_or_default();
            problems.push(format!("{what}: run: {} / {why}", lines[p]));
        }
        if not_json > 0 {
            problems.push(format!("{what}: run: {not_json} stderr lines are not JSON"));
        }
        drop(proxy);

        // `check` describes the same certificate.
        let mut cmd = command();
        cmd.arg("check").arg("--config").arg(&cfg);
        let out = run_to_exit(cmd, Duration::from_secs(30));
        if out.code() != Some(1) || out.stderr.contains("panicked") {
            problems.push(format!(
                "{what}: check: exit {:?}: {}",
                out.code(),
                out.stderr
                    .lines()
                    .find(|l| l.contains("panicked"))
                    .unwrap_or("")
            ));
        }

        // `trust` shows it before anything is verified; a wrong fingerprint refuses it.
        let fetched = dir.path().join("fetched.pem");
        let mut cmd = command();
        cmd.arg("trust")
            .arg("--config")
            .arg(&cfg)
            .arg("--fingerprint")
            .arg(vec!["00"; 32].join(":"))
            .arg("--out")
            .arg(&fetched);
        let out = run_to_exit(cmd, Duration::from_secs(30));
        if !matches!(out.code(), Some(1) | Some(2)) || out.stderr.contains("panicked") {
            problems.push(format!(
                "{what}: trust: exit {:?}: {}",
                out.code(),
                out.stderr
                    .lines()
                    .find(|l| l.contains("panicked"))
                    .unwrap_or("")
            ));
        }
        if fetched.exists() {
            problems.push(format!(
                "{what}: trust wrote the chain despite a wrong fingerprint"
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
