//! `det-tls-proxy status` and the admin endpoint's `/connections` behind it, against real
//! clients held open through a real proxy to a real master: each connection's listener, peer,
//! age, exact bytes each way and master session; newest first under a limit that counts what
//! it left out; the master's address, certificate expiry and last failures; the admin
//! endpoint's allowed_clients; no admin endpoint at all.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use common::proxy::Exited;
use common::*;
use serde_json::Value;

/// One client held open: what it sent and received, and when.
struct Held {
    /// Kept open until the test drops it.
    _stream: TcpStream,
    local: SocketAddr,
    sent: u64,
    received: u64,
    /// Before it connected, and once its answer was in: the proxy registered it in between.
    connecting: Instant,
    answered: Instant,
}

/// A client that sends one HTTP/1.1 request with a `body_len`-byte body through `addr`, reads
/// the whole answer, and stays connected (the master keeps the connection alive).
fn hold(addr: SocketAddr, body_len: usize) -> Held {
    let connecting = Instant::now();
    let mut stream = connect(addr);
    let local = stream.local_addr().unwrap();
    let req = format!(
        "POST /held HTTP/1.1\r\nHost: det-master\r\nContent-Length: {body_len}\r\n\r\n{}",
        "x".repeat(body_len)
    );
    stream.write_all(req.as_bytes()).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let complete = |got: &[u8]| {
        let text = String::from_utf8_lossy(got);
        let (head, body) = text.split_once("\r\n\r\n")?;
        let len: usize = head
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length:")
                    .map(|v| v.trim().to_string())
            })?
            .parse()
            .ok()?;
        (body.len() >= len).then_some(())
    };
    while complete(&got).is_none() {
        let n = stream.read(&mut buf).expect("the answer");
        assert!(n > 0, "closed before the answer: {got:?}");
        got.extend_from_slice(&buf[..n]);
    }
    Held {
        _stream: stream,
        local,
        sent: req.len() as u64,
        received: got.len() as u64,
        connecting,
        answered: Instant::now(),
    }
}

fn status(config: &Path, args: &[&str]) -> Exited {
    let mut cmd = command();
    cmd.arg("status").arg("--config").arg(config).args(args);
    run_to_exit(cmd, Duration::from_secs(20))
}

fn status_json(config: &Path, args: &[&str]) -> Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let out = status(config, &all);
    assert_eq!(out.code(), Some(0), "{out}");
    serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}: {out}"))
}

fn row(doc: &Value, peer: SocketAddr) -> &Value {
    doc["connections"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["peer"]["addr"] == peer.to_string())
        .unwrap_or_else(|| panic!("no row for {peer}: {doc:#}"))
}

/// This process's cgroup v2 path, as the kernel shows it (the `0::` line).
fn own_cgroup() -> String {
    let text = std::fs::read_to_string("/proc/self/cgroup").unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .expect("a cgroup v2 line in /proc/self/cgroup")
        .to_string()
}

/// A port nothing listens on now, for an admin address written into the file.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A master that keeps HTTP/1.1 connections alive and negotiates `http/1.1`.
fn http_master(dir: &Path) -> Master {
    Master::start_with(dir, |b| {
        b.behavior(Behavior::HttpRecord).alpn(&["http/1.1"])
    })
}

#[test]
fn status_lists_each_open_connection_with_its_exact_bytes_newest_first() {
    let dir = tempdir();
    let master = http_master(dir.path());
    let admin = format!("127.0.0.1:{}", free_port());
    // The admin address comes from the file, as `run` reads it.
    let config = master
        .cfg()
        .listeners(&[
            r#"{name: agent, listen: "127.0.0.1:0"}"#,
            r#"{name: tasks, listen: "127.0.0.1:0"}"#,
        ])
        .extra(&format!("admin: {{listen: {}}}", q(&admin)))
        .write(dir.path());
    let proxy = Proxy::start(&config);
    let (agent, tasks) = (proxy.tcp_addr("agent"), proxy.tcp_addr("tasks"));

    let mut held = vec![
        hold(agent, 10),
        hold(tasks, 300),
        hold(agent, 2000),
        hold(tasks, 45),
    ];
    let listeners = ["agent", "tasks", "agent", "tasks"];
    let before: Vec<Duration> = held.iter().map(|h| h.answered.elapsed()).collect();
    let doc = status_json(&config, &[]);
    let after: Vec<Duration> = held.iter().map(|h| h.connecting.elapsed()).collect();

    assert_eq!(doc["total"], 4, "{doc:#}");
    assert_eq!(doc["omitted"], 0);
    let order: Vec<String> = doc["connections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["peer"]["addr"].as_str().unwrap().to_string())
        .collect();
    let newest_first: Vec<String> = held.iter().rev().map(|h| h.local.to_string()).collect();
    assert_eq!(order, newest_first, "newest first");
    let resumed = master
        .server
        .state()
        .handshakes
        .iter()
        .filter(|h| h.resumed)
        .count();
    let mut resumed_rows = 0;
    for (i, h) in held.iter().enumerate() {
        let r = row(&doc, h.local);
        assert_eq!(r["listener"], listeners[i], "{r}");
        assert_eq!(r["bytes_up"], h.sent, "{r}");
        assert_eq!(r["bytes_down"], h.received, "{r}");
        let age = r["age_ms"].as_u64().unwrap() as u128;
        assert!(
            before[i].as_millis() <= age && age <= after[i].as_millis(),
            "age {age} ms outside {before:?}..{after:?}"
        );
        // The clients are this test's own sockets: the kernel names this process's user, and
        // its cgroup (the one /proc/self/cgroup shows), as the row's peer.
        assert_eq!(r["peer"]["uid"], nix::unistd::getuid().as_raw(), "{r}");
        assert_eq!(r["peer"]["cgroup"], own_cgroup(), "{r}");
        let s = &r["session"];
        assert_eq!(s["tls_version"], "TLSv1.3", "{r}");
        assert_eq!(s["alpn"], "http/1.1", "{r}");
        assert_eq!(s["preconnected"], false, "{r}");
        assert_eq!(
            s["master"],
            format!("127.0.0.1:{}", master.server.port()),
            "{r}"
        );
        resumed_rows += usize::from(s["resumed"] == true);
    }
    assert_eq!(
        resumed_rows, resumed,
        "rows resumed vs the master's resumed handshakes"
    );
    assert_eq!(
        doc["master"]["address"],
        format!("127.0.0.1:{}", master.server.port())
    );
    assert!(doc["master"]["cert_expiry"].is_string(), "{doc:#}");

    // The same for people: one line per connection with the same figures.
    let out = status(&config, &[]);
    assert_eq!(out.code(), Some(0), "{out}");
    for (i, h) in held.iter().enumerate() {
        let line = out
            .stdout
            .lines()
            .find(|l| l.contains(&format!(" {} ", h.local)))
            .unwrap_or_else(|| panic!("no line for {}:\n{out}", h.local));
        let cols: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(cols[0], listeners[i], "{line}");
        let uid = format!("uid={}", nix::unistd::getuid().as_raw());
        assert!(cols[2].split(',').any(|w| w == uid), "{line}");
        assert_eq!(cols[4], h.sent.to_string(), "{line}");
        assert_eq!(cols[5], h.received.to_string(), "{line}");
        assert_eq!(&cols[7..], ["TLSv1.3", "http/1.1"], "{line}");
    }
    assert!(out.stdout.contains("4 open connection(s)\n"), "{out}");
    assert!(
        out.stdout.contains(&format!(
            "master: 127.0.0.1:{}; certificate expires",
            master.server.port()
        )),
        "{out}"
    );
    assert!(
        out.stdout
            .contains("no failure to reach or verify the master"),
        "{out}"
    );

    // A client that leaves is off the list.
    let gone = held[1].local;
    drop(held.remove(1));
    assert!(
        eventually(Duration::from_secs(10), || {
            let doc = status_json(&config, &[]);
            doc["total"] == 3
                && doc["connections"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .all(|c| c["peer"]["addr"] != gone.to_string())
        }),
        "{gone} still listed after it closed"
    );
}

#[test]
fn a_limit_shows_the_newest_and_counts_the_rest() {
    let dir = tempdir();
    let master = http_master(dir.path());
    let config = master
        .cfg()
        .extra(r#"admin: {listen: "127.0.0.1:0"}"#)
        .write(dir.path());
    let proxy = Proxy::start(&config);
    let admin = proxy.tcp_addr("admin").to_string();
    let main = proxy.tcp_addr("main");
    let held: Vec<Held> = (0..5).map(|i| hold(main, i)).collect();

    let doc = status_json(&config, &["--admin-listen", &admin, "--limit", "2"]);
    assert_eq!(
        (
            doc["total"].as_u64(),
            doc["shown"].as_u64(),
            doc["omitted"].as_u64()
        ),
        (Some(5), Some(2), Some(3)),
        "{doc:#}"
    );
    let shown: Vec<&str> = doc["connections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["peer"]["addr"].as_str().unwrap())
        .collect();
    assert_eq!(
        shown,
        [held[4].local.to_string(), held[3].local.to_string()],
        "the two newest"
    );
    let out = status(&config, &["--admin-listen", &admin, "--limit", "2"]);
    assert!(
        out.stdout
            .contains("5 open connection(s); the 2 newest shown, 3 more not shown (--limit)"),
        "{out}"
    );

    // The endpoint refuses a limit outside 1..=10000, and so does the command line.
    let admin: SocketAddr = admin.parse().unwrap();
    let r = common::prometheus::get(admin, "/connections?limit=10001", None);
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(
        r.body.contains("limit must be a number from 1 to 10000"),
        "{}",
        r.body
    );
    let out = status(
        &config,
        &["--admin-listen", &admin.to_string(), "--limit", "0"],
    );
    assert_eq!(out.code(), Some(2), "{out}");
}

#[test]
fn status_names_the_master_and_the_last_failures_by_kind() {
    let dir = tempdir();
    let ca_pem = certs::write(dir.path(), "ca.pem", &Ca::root("Status CA").pem());
    let port = common::server::closed_port();
    let config = Cfg::new("127.0.0.1", port)
        .master_cert(&ca_pem)
        .extra(r#"admin: {listen: "127.0.0.1:0"}"#)
        .write(dir.path());
    let proxy = Proxy::start(&config);
    let admin = proxy.tcp_addr("admin").to_string();
    proxy.refuses(
        proxy.tcp_addr("main"),
        Refusal::UpstreamError,
        Duration::from_secs(10),
    );
    proxy.refuses(
        proxy.tcp_addr("main"),
        Refusal::UpstreamError,
        Duration::from_secs(10),
    );

    let doc = status_json(&config, &["--admin-listen", &admin]);
    assert_eq!(doc["total"], 0, "{doc:#}");
    assert_eq!(doc["master"]["address"], format!("127.0.0.1:{port}"));
    assert!(doc["master"]["cert_expiry"].is_null(), "{doc:#}");
    let e = &doc["errors"][0];
    assert_eq!(
        (e["kind"].as_str(), e["count"].as_u64()),
        (Some("connect_refused"), Some(2)),
        "{doc:#}"
    );
    assert!(
        e["error"].as_str().unwrap().contains("connection refused"),
        "{e}"
    );

    let out = status(&config, &["--admin-listen", &admin]);
    assert!(out.stdout.contains("0 open connection(s)"), "{out}");
    assert!(
        out.stdout.contains("certificate expires (not seen yet"),
        "{out}"
    );
    let line = out
        .stdout
        .lines()
        .find(|l| l.trim_start().starts_with("connect_refused"))
        .unwrap_or_else(|| panic!("no connect_refused line:\n{out}"));
    assert_eq!(line.split_whitespace().nth(1), Some("2"), "{line}");
}

#[test]
fn a_client_outside_admin_allowed_clients_is_refused() {
    let dir = tempdir();
    let master = http_master(dir.path());
    let config = master
        .cfg()
        .extra(r#"admin: {listen: "127.0.0.1:0", allowed_clients: ["127.0.0.2/32"]}"#)
        .write(dir.path());
    let proxy = Proxy::start(&config);
    let admin = proxy.tcp_addr("admin");
    let _held = hold(proxy.tcp_addr("main"), 1);

    // status runs from 127.0.0.1: closed without an answer.
    let out = status(&config, &["--admin-listen", &admin.to_string()]);
    assert_eq!(out.code(), Some(1), "{out}");
    assert!(out.stderr.contains("admin.allowed_clients"), "{out}");
    assert!(out.stdout.is_empty(), "{out}");

    // The allowed address gets the list.
    let mut s = socket_from(Some("127.0.0.2"), admin).expect("connect from 127.0.0.2");
    s.write_all(b"GET /connections HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n")
        .unwrap();
    let answer = String::from_utf8(read_until_closed(&mut s, IO_TIMEOUT)).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("\"total\":1"), "{answer}");
}

#[test]
fn without_an_admin_endpoint_status_says_so_and_exits_2() {
    let dir = tempdir();
    let master = http_master(dir.path());
    let config = master.cfg().write(dir.path());
    let out = status(&config, &[]);
    assert_eq!(out.code(), Some(2), "{out}");
    assert!(out.stderr.contains("admin.listen is not set"), "{out}");
}
