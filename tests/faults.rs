//! Faults around the proxy, over real sockets: a master that is down (refusing connections,
//! or dropping SYNs until timeouts.connect), restarts, black-holes the handshake (until
//! timeouts.handshake), resets, speaks garbage, or half-closes at the TLS layer only; a
//! master name that stops resolving and comes back elsewhere; clients that reset
//! mid-transfer; file descriptors running out; slow peers on either side. Every dial
//! failure and dial timeout is tested here (tests/upstream.rs is what a working dial sends). Each test prints one `FIGURE` line with what it
//! measured (docs/reliability.md collects them).

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Shutdown, SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::server::{provider, BlackHole};
use common::*;
use rustls::ServerConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::TlsAcceptor;

use det_tls_proxy::config::{self, Purpose};
use det_tls_proxy::metrics::Metrics;
use det_tls_proxy::server::{Server, Start};
use det_tls_proxy::upstream::{Resolve, ResolveFuture};

// === Process probes (/proc of the proxy child) ===

/// The open descriptor numbers of a process.
fn fds(pid: i32) -> Vec<i64> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i64>().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// The RLIMIT_NOFILE that leaves exactly `free` descriptor numbers open to a process whose
/// descriptors are `open`: the limit bounds numbers, not counts (a high inherited fd is
/// outside it and does not matter).
fn limit_leaving(open: &[i64], free: usize) -> usize {
    (0..)
        .find(|&l| l - open.iter().filter(|&&f| f < l as i64).count() == free)
        .unwrap()
}

fn admin_yaml() -> &'static str {
    "admin: {listen: \"127.0.0.1:0\"}"
}

// === A master whose every connection follows a script ===

/// What a scripted master does with each connection.
#[derive(Clone, Debug)]
enum Script {
    /// TLS echo until EOF, then close_notify + FIN.
    Echo,
    /// The first `n` connections are accepted and never answered (a black hole at the TLS
    /// layer); the rest echo.
    SilentFirst(usize),
    /// After the handshake, stream the pattern (seed 7) and reset the TCP connection
    /// (SO_LINGER 0) once `after` bytes are written.
    ResetAfter(u64),
    /// No TLS at all: wait for the ClientHello, answer with these bytes, keep the socket open.
    Raw(Vec<u8>),
    /// Read `expect` bytes, write `reply`, send close_notify without closing TCP, then keep
    /// reading until EOF.
    CloseNotifyThenHold { expect: usize, reply: Vec<u8> },
    /// The first plaintext byte chooses: `D` streams the pattern (seed 9) as fast as the
    /// proxy takes it; `U` never reads again.
    Slow,
}

#[derive(Default, Debug)]
struct Seen {
    accepts: usize,
    handshakes: usize,
    /// Connections whose reading side has ended (EOF, error or reset).
    ended: usize,
    /// Bytes received after close_notify was sent (CloseNotifyThenHold).
    after_close_notify: Vec<u8>,
    /// Pattern bytes written by `D` connections (Slow).
    streamed: u64,
}

type Events = Arc<Mutex<Seen>>;

fn note(ev: &Events, f: impl FnOnce(&mut Seen)) {
    f(&mut ev.lock().unwrap());
}

struct Scripted {
    addr: SocketAddr,
    events: Events,
    rt: Option<tokio::runtime::Runtime>,
}

/// The certificate every scripted master serves: valid for det-master, master.test and
/// 127.0.0.1, signed by the CA written to `dir/ca.pem`.
struct MasterCert {
    ca_pem: std::path::PathBuf,
    acceptor: TlsAcceptor,
}

impl MasterCert {
    fn new(dir: &Path) -> MasterCert {
        let ca = Ca::root("Faults Test CA");
        let leaf = ca.server("det-master", &["det-master", "master.test", "127.0.0.1"]);
        let ca_pem = certs::write(dir, "ca.pem", &ca.pem());
        let config = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![leaf.der()], leaf.key_der())
            .unwrap();
        MasterCert {
            ca_pem,
            acceptor: TlsAcceptor::from(Arc::new(config)),
        }
    }
}

impl Scripted {
    fn start(cert: &MasterCert, script: Script) -> Scripted {
        Scripted::start_on("127.0.0.1:0".parse().unwrap(), cert, script)
    }

    /// Binds `addr` exactly (a restarted master comes back on its old port).
    fn start_on(addr: SocketAddr, cert: &MasterCert, script: Script) -> Scripted {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let std_l = std::net::TcpListener::bind(addr)
            .unwrap_or_else(|e| panic!("scripted master cannot bind {addr}: {e}"));
        std_l.set_nonblocking(true).unwrap();
        let addr = std_l.local_addr().unwrap();
        let events: Events = Arc::default();
        let ev = events.clone();
        let acceptor = cert.acceptor.clone();
        rt.spawn(async move {
            let l = tokio::net::TcpListener::from_std(std_l).unwrap();
            let mut n = 0usize;
            loop {
                let Ok((tcp, _)) = l.accept().await else {
                    continue;
                };
                n += 1;
                note(&ev, |s| s.accepts += 1);
                tokio::spawn(serve_script(
                    n,
                    tcp,
                    acceptor.clone(),
                    script.clone(),
                    ev.clone(),
                ));
            }
        });
        Scripted {
            addr,
            events,
            rt: Some(rt),
        }
    }

    fn port(&self) -> u16 {
        self.addr.port()
    }

    fn seen<T>(&self, f: impl FnOnce(&Seen) -> T) -> T {
        f(&self.events.lock().unwrap())
    }

    fn wait(&self, what: &str, timeout: Duration, pred: impl Fn(&Seen) -> bool) {
        wait_until(&format!("the scripted master's {what}"), timeout, || {
            let st = self.events.lock().unwrap();
            pred(&st)
                .then_some(())
                .ok_or_else(|| format!("saw {:?}", *st))
        })
    }

    /// A crash: every socket closes at once, no close_notify.
    fn stop(mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_timeout(Duration::from_secs(2));
        }
    }
}

impl Drop for Scripted {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

async fn serve_script(
    n: usize,
    tcp: tokio::net::TcpStream,
    acceptor: TlsAcceptor,
    script: Script,
    ev: Events,
) {
    let _ = tcp.set_nodelay(true);
    let silent = matches!(script, Script::SilentFirst(k) if n <= k);
    if silent {
        return hold_tcp(tcp, &ev).await;
    }
    if let Script::Raw(bytes) = &script {
        let mut tcp = tcp;
        let mut buf = [0u8; 4096];
        let _ = tcp.read(&mut buf).await;
        let _ = tcp.write_all(bytes).await;
        return hold_tcp(tcp, &ev).await;
    }
    let Ok(Ok(mut tls)) = tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await
    else {
        note(&ev, |s| s.ended += 1);
        return;
    };
    note(&ev, |s| s.handshakes += 1);
    let mut buf = vec![0u8; 64 * 1024];
    match script {
        Script::Echo | Script::SilentFirst(_) => {
            loop {
                match tls.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(k) => {
                        if tls.write_all(&buf[..k]).await.is_err() {
                            break;
                        }
                    }
                }
            }
            let _ = tls.shutdown().await;
        }
        Script::ResetAfter(after) => {
            let mut p = Pattern::new(7);
            let mut sent = 0u64;
            while sent < after {
                let k = (after - sent).min(buf.len() as u64) as usize;
                p.fill(&mut buf[..k]);
                if tls.write_all(&buf[..k]).await.is_err() {
                    break;
                }
                sent += k as u64;
            }
            let _ = tls.flush().await;
            let (tcp, _) = tls.get_ref();
            let _ = socket2::SockRef::from(tcp).set_linger(Some(Duration::ZERO));
            drop(tls);
        }
        Script::CloseNotifyThenHold { expect, reply } => {
            let mut req = vec![0u8; expect];
            if tls.read_exact(&mut req).await.is_ok() {
                let _ = tls.write_all(&reply).await;
                tls.get_mut().1.send_close_notify();
                let _ = tls.flush().await;
                loop {
                    match tls.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(k) => note(&ev, |s| s.after_close_notify.extend_from_slice(&buf[..k])),
                    }
                }
            }
            // Still no FIN from us: the proxy must end the connection by itself.
            note(&ev, |s| s.ended += 1);
            std::future::pending::<()>().await;
        }
        Script::Slow => {
            let mut cmd = [0u8; 1];
            if tls.read_exact(&mut cmd).await.is_err() {
                note(&ev, |s| s.ended += 1);
                return;
            }
            if cmd[0] == b'D' {
                let mut p = Pattern::new(9);
                loop {
                    p.fill(&mut buf);
                    if tls.write_all(&buf).await.is_err() {
                        break;
                    }
                    note(&ev, |s| s.streamed += buf.len() as u64);
                }
            } else {
                std::future::pending::<()>().await;
            }
        }
        Script::Raw(_) => unreachable!(),
    }
    note(&ev, |s| s.ended += 1);
}

/// Reads and discards until EOF, never writing.
async fn hold_tcp(mut tcp: tokio::net::TcpStream, ev: &Events) {
    let mut buf = [0u8; 4096];
    loop {
        match tcp.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
    note(ev, |s| s.ended += 1);
}

// === Helpers ===

/// A proxy config for a scripted master on 127.0.0.1, JSON logs, admin on.
fn cfg_for(cert: &MasterCert, port: u16) -> Cfg {
    Cfg::new("127.0.0.1", port)
        .master_cert(&cert.ca_pem)
        .extra(admin_yaml())
}

/// Sends a request and waits for the connection to be closed; returns how long that took.
fn time_to_close(addr: SocketAddr, request: &[u8], within: Duration) -> Duration {
    close_after(addr, request, within).1
}

/// As `time_to_close`, with the client's local address (to find its log lines).
fn close_after(addr: SocketAddr, request: &[u8], within: Duration) -> (SocketAddr, Duration) {
    let mut c = connect(addr);
    let local = c.local_addr().unwrap();
    let _ = c.write_all(request);
    let t = Instant::now();
    let got = read_until_closed(&mut c, within);
    assert!(got.is_empty(), "a failing connection received {got:?}");
    (local, t.elapsed())
}

/// Checks a byte stream against the pattern with `seed`, however it is chunked.
struct PatternCheck {
    p: Pattern,
    want: Vec<u8>,
    pos: usize,
    total: u64,
}

impl PatternCheck {
    fn new(seed: u64) -> PatternCheck {
        PatternCheck {
            p: Pattern::new(seed),
            want: Vec::new(),
            pos: 0,
            total: 0,
        }
    }

    fn check(&mut self, mut got: &[u8]) -> bool {
        while !got.is_empty() {
            if self.pos == self.want.len() {
                self.want = vec![0u8; 64 * 1024];
                self.p.fill(&mut self.want);
                self.pos = 0;
            }
            let k = got.len().min(self.want.len() - self.pos);
            if got[..k] != self.want[self.pos..self.pos + k] {
                return false;
            }
            self.pos += k;
            self.total += k as u64;
            got = &got[k..];
        }
        true
    }
}

// === Master down at start ===

#[test]
fn master_down_at_start_clients_closed_within_connect_timeout_then_next_client_served() {
    let dir = tempdir();
    let cert = MasterCert::new(dir.path());
    // Down, first as a black hole (SYNs dropped), then as a closed port.
    let hole = BlackHole::new();
    let port = hole.addr.port();
    let proxy = cfg_for(&cert, port)
        .extra("timeouts: {connect: 1s, handshake: 2s}")
        .start(dir.path());
    let addr = proxy.tcp_addr("main");
    let admin = proxy.listener_addr("admin");

    let closed: Vec<(SocketAddr, Duration)> = (0..3)
        .map(|i| {
            std::thread::spawn(move || {
                close_after(
                    addr,
                    format!("hello {i}").as_bytes(),
                    Duration::from_secs(3),
                )
            })
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|t| t.join().unwrap())
        .collect();
    let waits: Vec<Duration> = closed.iter().map(|(_, w)| *w).collect();
    let slowest = *waits.iter().max().unwrap();
    assert!(
        waits.iter().all(|w| *w >= Duration::from_millis(900)),
        "closed before timeouts.connect: {waits:?}"
    );
    assert!(
        slowest <= Duration::from_secs(2),
        "not closed within timeouts.connect + 1 s: {waits:?}"
    );
    for (local, _) in &closed {
        assert_eq!(proxy.access_line(*local)["outcome"], "upstream_error");
    }

    // Refused: the client is closed at once, with one WARN line naming the failure.
    drop(hole);
    let (local, refused) = close_after(addr, b"hello refused", Duration::from_secs(2));
    assert!(refused < Duration::from_secs(1), "refused took {refused:?}");
    let warn = proxy.wait_for(
        "the refused client's \"upstream failed\" line",
        Duration::from_secs(5),
        |v| v["message"] == "upstream failed" && v["client"] == local.to_string().as_str(),
    );
    assert_eq!(warn["level"], "WARN", "{warn}");
    assert_eq!(warn["listener"], "main", "{warn}");
    assert!(!field(&warn, "kind").is_empty(), "no kind: {warn}");
    assert!(!field(&warn, "error").is_empty(), "no error: {warn}");
    assert_eq!(proxy.access_line(local)["outcome"], "upstream_error");

    let m = scrape_text(&admin);
    assert_eq!(
        metric(
            &m,
            "det_tls_proxy_upstream_errors_total",
            &[("kind", "connect_timeout")]
        ),
        3.0,
        "{m}"
    );
    assert_eq!(
        metric(
            &m,
            "det_tls_proxy_upstream_errors_total",
            &[("kind", "connect_refused")]
        ),
        1.0,
        "{m}"
    );
    assert_eq!(
        metric(
            &m,
            "det_tls_proxy_connections_total",
            &[("listener", "main"), ("result", "upstream_error")]
        ),
        4.0,
        "{m}"
    );

    // The master comes up on its port: the very next client is served, no restart.
    let master = Scripted::start_on(
        SocketAddr::new(Ipv4Addr::LOCALHOST.into(), port),
        &cert,
        Script::Echo,
    );
    relays(addr, b"the master is up");
    assert_eq!(master.seen(|s| s.handshakes), 1);
    figure(format!(
        "master_down_at_start: timeouts.connect=1s black-hole close after {:?}..{:?}; refused close after {refused:?}; next client after master up: served at first try",
        waits.iter().min().unwrap(),
        slowest
    ));
}

// === Master restarts mid-stream ===

#[test]
fn master_restart_mid_stream_ends_clients_cleanly_and_new_clients_work() {
    let dir = tempdir();
    let cert = MasterCert::new(dir.path());
    let master = Scripted::start(&cert, Script::Echo);
    let port = master.port();
    let proxy = cfg_for(&cert, port).start(dir.path());
    let addr = proxy.tcp_addr("main");

    // An idle client, and one in the middle of a transfer.
    let mut idle = connect(addr);
    let idle_local = idle.local_addr().unwrap();
    assert_eq!(roundtrip(&mut idle, b"before restart"), b"before restart");

    let busy = connect(addr);
    let busy_local = busy.local_addr().unwrap();
    let mut w = busy.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        let mut p = Pattern::new(3);
        let mut buf = vec![0u8; 16 * 1024];
        let mut sent = 0u64;
        loop {
            p.fill(&mut buf);
            if w.write_all(&buf).is_err() {
                return sent;
            }
            sent += buf.len() as u64;
        }
    });
    let mut r = busy;
    let mut check = PatternCheck::new(3);
    let mut buf = vec![0u8; 64 * 1024];
    while check.total < (1 << 20) {
        let k = r.read(&mut buf).expect("echo before restart");
        assert!(k > 0, "EOF before the restart");
        assert!(check.check(&buf[..k]), "echo corrupted before restart");
    }

    let stopped = Instant::now();
    master.stop();

    // The busy client: whatever arrives is an intact prefix, then the connection ends.
    r.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let busy_closed = loop {
        match r.read(&mut buf) {
            Ok(0) => break stopped.elapsed(),
            Ok(k) => assert!(check.check(&buf[..k]), "echo corrupted around the restart"),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => break stopped.elapsed(),
            Err(e) => panic!("busy client not closed after the master stopped: {e}"),
        }
    };
    let _ = writer.join().unwrap();

    // The idle client sees an ordinary EOF (no close_notify from a crashed master is fine),
    // then finishes normally.
    let got = read_until_closed(&mut idle, Duration::from_secs(3));
    let idle_closed = stopped.elapsed();
    assert!(got.is_empty(), "idle client got {got:?}");
    drop(idle);
    let a = proxy.access_line(idle_local);
    assert_eq!(a["outcome"], "ok", "idle client: {a}");
    let b = proxy.access_line(busy_local);
    assert!(
        ["ok", "reset"].contains(&field(&b, "outcome")),
        "busy client: {b}"
    );

    // Back on the same port: new clients work, no restart of the proxy.
    let master = Scripted::start_on(
        SocketAddr::new(Ipv4Addr::LOCALHOST.into(), port),
        &cert,
        Script::Echo,
    );
    relays(addr, b"after restart");
    assert_eq!(master.seen(|s| s.handshakes), 1);
    figure(format!(
        "master_restart: idle client EOF after {idle_closed:?}, busy client closed after {busy_closed:?} ({} MiB intact before), new client served after restart",
        check.total >> 20
    ));
}

// === Black hole ===

#[test]
fn black_hole_master_closes_client_at_handshake_timeout_others_unaffected() {
    const HOLES: usize = 3;
    let dir = tempdir();
    let cert = MasterCert::new(dir.path());
    let master = Scripted::start(&cert, Script::SilentFirst(HOLES));
    let proxy = cfg_for(&cert, master.port())
        .extra("timeouts: {connect: 1s, handshake: 2s}")
        .start(dir.path());
    let addr = proxy.tcp_addr("main");
    let admin = proxy.listener_addr("admin");

    let stuck: Vec<_> = (0..HOLES)
        .map(|i| {
            let mut c = connect(addr);
            c.write_all(format!("stuck {i}").as_bytes()).unwrap();
            (c, Instant::now())
        })
        .collect();
    master.wait("the black-holed connections", Duration::from_secs(5), |s| {
        s.accepts >= HOLES
    });

    // While those wait for a ServerHello that never comes, others are served at once.
    let mut others = Vec::new();
    for i in 0..5 {
        let t = Instant::now();
        relays(addr, format!("other {i}").as_bytes());
        others.push(t.elapsed());
    }
    let others_max = *others.iter().max().unwrap();
    assert!(
        others_max < Duration::from_millis(1500),
        "clients next to a black hole were slowed: {others:?}"
    );

    let mut waited = Vec::new();
    for (mut c, t) in stuck {
        let local = c.local_addr().unwrap();
        let got = read_until_closed(&mut c, Duration::from_secs(4));
        assert!(got.is_empty());
        waited.push(t.elapsed());
        assert_eq!(proxy.access_line(local)["outcome"], "upstream_error");
    }
    for w in &waited {
        assert!(
            *w >= Duration::from_millis(1900) && *w <= Duration::from_secs(3),
            "black-holed client closed after {w:?} (timeouts.handshake 2s): {waited:?}"
        );
    }
    // One dial per client: a handshake that timed out is not retried.
    assert_eq!(
        master.seen(|s| s.accepts),
        HOLES + others.len(),
        "the master was dialled more than once per client"
    );
    let m = scrape_text(&admin);
    assert_eq!(
        metric(
            &m,
            "det_tls_proxy_upstream_errors_total",
            &[("kind", "handshake_timeout")]
        ),
        HOLES as f64,
        "{m}"
    );
    // The proxy gave up on the held sockets: the master sees them end.
    master.wait(
        "the black-holed sockets closed",
        Duration::from_secs(3),
        |s| s.ended >= HOLES,
    );
    figure(format!(
        "black_hole: timeouts.handshake=2s, held clients closed after {:?}..{:?}; 5 other clients meanwhile served in at most {others_max:?}",
        waited.iter().min().unwrap(),
        waited.iter().max().unwrap()
    ));
}

// === Master resets mid-transfer ===

#[test]
fn master_reset_mid_transfer_closes_client_promptly() {
    const AFTER: u64 = 4 << 20;
    let dir = tempdir();
    let cert = MasterCert::new(dir.path());
    let master = Scripted::start(&cert, Script::ResetAfter(AFTER));
    let proxy = cfg_for(&cert, master.port()).start(dir.path());
    let addr = proxy.tcp_addr("main");

    let mut c = connect(addr);
    let local = c.local_addr().unwrap();
    c.write_all(b"download please").unwrap();
    let mut check = PatternCheck::new(7);
    let mut buf = vec![0u8; 64 * 1024];
    let mut last_byte = Instant::now();
    let closed_after = loop {
        match c.read(&mut buf) {
            Ok(0) => break last_byte.elapsed(),
            Ok(k) => {
                assert!(check.check(&buf[..k]), "corrupted before the reset");
                last_byte = Instant::now();
            }
            Err(e) if e.kind() == ErrorKind::ConnectionReset => break last_byte.elapsed(),
            Err(e) => panic!("client not closed after the master's reset: {e}"),
        }
    };
    assert!(check.total <= AFTER, "more bytes than the master sent");
    assert!(
        closed_after < Duration::from_secs(1),
        "closed {closed_after:?} after the last byte"
    );
    let a = proxy.access_line(local);
    assert_eq!(a["outcome"], "reset", "{a}");
    figure(format!(
        "master_reset: client closed {closed_after:?} after the last byte; {} of {} KiB arrived intact",
        check.total >> 10,
        AFTER >> 10
    ));
}

// === Garbage instead of TLS ===

#[test]
fn master_speaking_garbage_fails_handshake_within_timeout() {
    let dir = tempdir();
    let cert = MasterCert::new(dir.path());
    let mut noise = vec![0u8; 4096];
    Pattern::new(11).fill(&mut noise);
    noise[0] = 0x00; // not a TLS content type
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("random bytes", noise, "tls_protocol"),
        (
            "plaintext HTTP",
            b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n".to_vec(),
            "plaintext",
        ),
        // A TLS record header announcing 16 KiB that never comes.
        (
            "truncated record",
            vec![0x16, 0x03, 0x03, 0x40, 0x00, 0x02],
            "",
        ),
    ];
    let mut figures = Vec::new();
    for (what, bytes, kind) in cases {
        let master = Scripted::start(&cert, Script::Raw(bytes));
        let proxy = cfg_for(&cert, master.port())
            .extra("timeouts: {handshake: 2s}")
            .start(dir.path());
        let addr = proxy.tcp_addr("main");
        let took = time_to_close(addr, b"GET / HTTP/1.1\r\n\r\n", Duration::from_secs(4));
        assert!(
            took <= Duration::from_secs(3),
            "{what}: closed after {took:?}"
        );
        let m = scrape_text(&proxy.listener_addr("admin"));
        let expect_kind = if kind.is_empty() {
            "handshake_timeout"
        } else {
            kind
        };
        assert_eq!(
            metric(
                &m,
                "det_tls_proxy_upstream_errors_total",
                &[("kind", expect_kind)]
            ),
            1.0,
            "{what}: {m}"
        );
        figures.push(format!("{what} → {expect_kind} after {took:?}"));
        proxy.wait_for("an \"upstream failed\" line", Duration::from_secs(5), |v| {
            v["message"] == "upstream failed"
        });
    }
    figure(format!("garbage_master: {}", figures.join("; ")));
}

// === close_notify, then the socket held open ===

#[test]
fn master_close_notify_then_holding_socket_is_an_ordinary_end() {
    let dir = tempdir();
    let cert = MasterCert::new(dir.path());
    let master = Scripted::start(
        &cert,
        Script::CloseNotifyThenHold {
            expect: 5,
            reply: b"bye!".to_vec(),
        },
    );
    let proxy = cfg_for(&cert, master.port())
        .extra("timeouts: {close: 2s}")
        .start(dir.path());
    let addr = proxy.tcp_addr("main");

    // A client that finishes its side: everything ends normally and at once.
    let mut c = connect(addr);
    let local = c.local_addr().unwrap();
    c.write_all(b"hello").unwrap();
    let t = Instant::now();
    let got = read_until_closed(&mut c, Duration::from_secs(2));
    let eof_after = t.elapsed();
    assert_eq!(got, b"bye!");
    // The client may still talk after the master's close_notify; then it finishes.
    c.write_all(b" and one more thing").unwrap();
    c.shutdown(Shutdown::Write).unwrap();
    master.wait(
        "the late bytes and the proxy's close",
        Duration::from_secs(3),
        |s| s.ended >= 1,
    );
    assert_eq!(
        master.seen(|s| s.after_close_notify.clone()),
        b" and one more thing"
    );
    let a = proxy.access_line(local);
    assert_eq!(a["outcome"], "ok", "{a}");

    // A client that never finishes: the proxy closes both sides at timeouts.close.
    let mut c = connect(addr);
    let local = c.local_addr().unwrap();
    c.write_all(b"hello").unwrap();
    let t = Instant::now();
    let got = read_until_closed(&mut c, Duration::from_secs(2));
    assert_eq!(got, b"bye!");
    master.wait(
        "the proxy to close the held socket",
        Duration::from_secs(5),
        |s| s.ended >= 2,
    );
    let held_for = t.elapsed();
    let a = proxy.access_line(local);
    assert_eq!(a["outcome"], "close_timeout", "{a}");
    assert!(
        held_for >= Duration::from_millis(1900) && held_for < Duration::from_secs(4),
        "upstream closed after {held_for:?} (timeouts.close 2s)"
    );
    figure(format!(
        "close_notify_then_hold: client EOF {eof_after:?} after its request; with a silent client the upstream socket closed after {held_for:?} (timeouts.close=2s)"
    ));
}

// === The master's name changes address (resolver seam, in process) ===

#[derive(Clone)]
enum Answer {
    Ips(Vec<IpAddr>),
    Fail(&'static str),
}

/// A resolver the test points where it likes, counting lookups.
struct Switch {
    answer: Mutex<Answer>,
    lookups: AtomicUsize,
}

impl Switch {
    fn set(&self, a: Answer) {
        *self.answer.lock().unwrap() = a;
    }
}

impl Resolve for Switch {
    fn resolve(&self, host: &str, port: u16) -> ResolveFuture {
        assert_eq!(host, "master.test");
        self.lookups.fetch_add(1, Ordering::SeqCst);
        let a = self.answer.lock().unwrap().clone();
        Box::pin(async move {
            match a {
                Answer::Ips(ips) => Ok(ips
                    .into_iter()
                    .map(|ip| SocketAddr::new(ip, port))
                    .collect()),
                Answer::Fail(m) => Err(std::io::Error::new(ErrorKind::NotFound, m)),
            }
        })
    }
}

/// The proxy started in this process as `run` starts it (`Server::start`, the real accept
/// loop and connection path), with the resolver swapped. Its accept loop runs on the test's
/// runtime; dropping the `Server` handle stops nothing.
async fn serve_in_process(yaml: &str, resolver: Arc<dyn Resolve>) -> (SocketAddr, Arc<Metrics>) {
    let loaded = config::assemble_str(yaml).expect("config");
    let cfg = config::validate(&loaded, Purpose::Serve).expect("valid config");
    let start = Start {
        resolver,
        ..Start::new(cfg)
    };
    let metrics = start.metrics.clone();
    let server = Server::start(start).expect("server starts");
    let addr = server.addresses()[0].1.parse().expect("a TCP listener");
    (addr, metrics)
}

/// Sends `msg`, finishes, and returns what came back before the proxy closed.
fn echo_all(addr: SocketAddr, msg: &[u8]) -> Vec<u8> {
    let mut c = connect(addr);
    let _ = c.write_all(msg);
    let _ = c.shutdown(Shutdown::Write);
    read_until_closed(&mut c, IO_TIMEOUT)
}

#[test]
fn master_name_stops_resolving_then_resolves_to_new_address() {
    let dir = tempdir();
    let cert = MasterCert::new(dir.path());
    let a = Scripted::start(&cert, Script::Echo);
    let port = a.port();
    let b_ip: IpAddr = Ipv4Addr::new(127, 0, 0, 2).into();
    let b = Scripted::start_on(SocketAddr::new(b_ip, port), &cert, Script::Echo);
    let switch = Arc::new(Switch {
        answer: Mutex::new(Answer::Ips(vec![a.addr.ip()])),
        lookups: AtomicUsize::new(0),
    });
    let yaml = format!(
        "master_host: master.test\nmaster_port: {port}\nsecurity: {{tls: {{master_cert: {}}}}}\nlisteners: [{{name: main, listen: \"127.0.0.1:0\"}}]\ntimeouts: {{connect: 1s, handshake: 2s}}\n",
        qp(&cert.ca_pem)
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (addr, metrics) = rt.block_on(serve_in_process(&yaml, switch.clone()));

    assert_eq!(echo_all(addr, b"to A"), b"to A");
    assert_eq!(a.seen(|s| s.handshakes), 1);

    // The name stops resolving: clients are closed at once, nothing cached.
    switch.set(Answer::Fail("Name or service not known"));
    let t = Instant::now();
    assert_eq!(echo_all(addr, b"nowhere"), b"");
    let fail_close = t.elapsed();
    switch.set(Answer::Ips(vec![]));
    assert_eq!(echo_all(addr, b"nothing"), b"");

    // It comes back on a new address (the old one is gone): the proxy follows at once.
    a.stop();
    switch.set(Answer::Ips(vec![b_ip]));
    assert_eq!(echo_all(addr, b"to B"), b"to B");
    assert_eq!(b.seen(|s| s.handshakes), 1);

    // Several addresses: a dead one first, then B; each is tried in turn.
    switch.set(Answer::Ips(vec![Ipv4Addr::new(127, 0, 0, 3).into(), b_ip]));
    assert_eq!(echo_all(addr, b"any"), b"any");
    assert_eq!(b.seen(|s| s.handshakes), 2);

    let m = metrics.encode();
    assert_eq!(
        metric(
            &m,
            "det_tls_proxy_upstream_errors_total",
            &[("kind", "resolve")]
        ),
        2.0,
        "{m}"
    );
    // Every client was a fresh lookup.
    assert_eq!(switch.lookups.load(Ordering::SeqCst), 5);
    figure(format!(
        "dns_change: unresolvable name → client closed after {fail_close:?}; new address used by the next client; 5 clients = 5 lookups"
    ));
}

// === Clients reset mid-transfer ===

#[test]
fn client_resets_mid_transfer_1000_times_leak_nothing() {
    const N: usize = 1000;
    const THREADS: usize = 8;
    let dir = tempdir();
    let master = Master::start(dir.path(), Behavior::Echo);
    let proxy = master.cfg().extra(admin_yaml()).start(dir.path());
    let addr = proxy.tcp_addr("main");
    let admin = proxy.listener_addr("admin");
    let pid = proxy.pid().as_raw();

    relays(addr, b"warm up");
    master.server.finished(1);
    let _ = scrape_text(&admin);
    // Settle: the admin connection and the warm-up are over (no event marks the moment
    // their descriptors are closed).
    let fds_before = steady(Duration::from_secs(5), Duration::from_millis(100), || {
        fd_count(pid)
    })
    .unwrap_or_else(|n| panic!("the idle proxy's descriptor count still changing: {n}"));
    let rss_before = rss_kib(pid);

    let started = Instant::now();
    let workers: Vec<_> = (0..THREADS)
        .map(|t| {
            std::thread::spawn(move || {
                let chunk = vec![0x5au8; 16 * 1024];
                for _ in 0..N / THREADS {
                    let mut c = connect(addr);
                    c.write_all(&chunk).unwrap();
                    let mut one = [0u8; 1];
                    c.read_exact(&mut one).unwrap();
                    // More in flight in both directions, then a reset.
                    let _ = c.write_all(&chunk);
                    socket2::SockRef::from(&c)
                        .set_linger(Some(Duration::ZERO))
                        .unwrap();
                    drop(c);
                }
                t
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    let resets_done = started.elapsed();
    let t = Instant::now();
    master.server.wait(
        "every upstream to be closed",
        Duration::from_secs(20),
        |s| (s.finished.len() > N).then_some(()),
    );
    let upstreams_closed = t.elapsed();
    let settled = eventually(Duration::from_secs(10), || fd_count(pid) <= fds_before);
    let fds_after = fd_count(pid);
    assert!(
        settled,
        "proxy fds: {fds_before} before, {fds_after} after {N} client resets"
    );
    let m = scrape_text(&admin);
    assert_eq!(
        metric(
            &m,
            "det_tls_proxy_active_connections",
            &[("listener", "main")]
        ),
        0.0,
        "{m}"
    );
    let rss_after = rss_kib(pid);
    figure(format!(
        "client_reset_x{N}: {N} resets in {resets_done:?}; all upstreams closed {upstreams_closed:?} after the last; fds {fds_before} → {fds_after}; RSS {} → {} KiB",
        rss_before, rss_after
    ));
}

// === File descriptors exhausted ===

#[test]
fn fd_exhaustion_backs_off_without_spinning_and_recovers() {
    const HELD: usize = 6;
    let dir = tempdir();
    let master = Master::start(dir.path(), Behavior::Echo);
    let proxy = master.cfg().start(dir.path());
    let addr = proxy.tcp_addr("main");
    let pid = proxy.pid().as_raw();
    relays(addr, b"warm up");
    master.server.finished(1);
    // The warm-up's descriptors closed (no event marks the moment).
    steady(Duration::from_secs(5), Duration::from_millis(200), || {
        fd_count(pid)
    })
    .unwrap_or_else(|n| panic!("the idle proxy's descriptor count still changing: {n}"));

    // Lower the running proxy's RLIMIT_NOFILE so that HELD relayed connections (two fds
    // each) use every descriptor left.
    let open = fds(pid);
    let base = open.len();
    let limit = limit_leaving(&open, 2 * HELD);
    let out = Command::new("prlimit")
        .arg("--pid")
        .arg(pid.to_string())
        .arg(format!("--nofile={limit}:{limit}"))
        .output()
        .expect("prlimit (util-linux) is needed for this test");
    assert!(out.status.success(), "prlimit: {out:?}");

    let mut held = Vec::new();
    for i in 0..HELD {
        let mut c = connect(addr);
        let msg = format!("held {i}");
        assert_eq!(roundtrip(&mut c, msg.as_bytes()), msg.as_bytes());
        held.push(c);
    }
    let below = |l: usize| fds(pid).iter().filter(|&&f| f < l as i64).count();
    let full = eventually(Duration::from_secs(2), || below(limit) == limit);
    assert!(
        full,
        "every descriptor below {limit} should be in use now: {:?}",
        fds(pid)
    );

    // One more client: the proxy cannot accept it and must back off, not spin.
    let mut waiting = connect(addr);
    waiting.write_all(b"waiting").unwrap();
    proxy.wait_for("the accept back-off warning", Duration::from_secs(5), |v| {
        v["message"] == "cannot accept: out of resources; backing off"
    });
    let cpu0 = cpu_ticks(pid);
    let t0 = Instant::now();
    // Time is the behaviour here: the CPU used over a window while no descriptor is free.
    std::thread::sleep(Duration::from_secs(3));
    let cpu = cpu_ticks(pid) - cpu0;
    let window = t0.elapsed();
    assert!(
        cpu <= 30,
        "the proxy used {cpu} ticks of CPU in {window:?} while out of fds: spinning"
    );
    waiting
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let mut buf = [0u8; 7];
    assert!(
        matches!(waiting.read(&mut buf), Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::TimedOut),
        "the waiting client was served while no fd was free"
    );

    // Free one connection: the waiting client is served within the back-off.
    let freed = Instant::now();
    let mut first = held.remove(0);
    finish(&mut first);
    drop(first);
    waiting.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    waiting.read_exact(&mut buf).unwrap();
    let resumed_after = freed.elapsed();
    assert_eq!(&buf, b"waiting");
    assert!(
        resumed_after < Duration::from_secs(3),
        "served {resumed_after:?} after an fd was freed"
    );
    finish(&mut waiting);
    for mut c in held {
        finish(&mut c);
    }
    relays(addr, b"after");
    figure(format!(
        "fd_exhaustion: RLIMIT_NOFILE={limit} ({base} at rest + {HELD} relays); CPU while exhausted {cpu} ticks ({} ms) in {window:?}; waiting client served {resumed_after:?} after one relay ended",
        cpu * 10
    ));
}

// === Slow peers ===

#[test]
fn slow_client_and_slow_master_keep_memory_bounded() {
    const EACH: usize = 40;
    let dir = tempdir();
    let cert = MasterCert::new(dir.path());
    let master = Scripted::start(&cert, Script::Slow);
    let proxy = cfg_for(&cert, master.port()).start(dir.path());
    let addr = proxy.tcp_addr("main");
    let pid = proxy.pid().as_raw();

    // Warm up the TLS path so one-off allocations are not counted.
    let warm_up = {
        let mut c = connect(addr);
        c.write_all(b"D").unwrap();
        let mut buf = vec![0u8; 1 << 20];
        c.read_exact(&mut buf).unwrap();
        c.local_addr().unwrap()
    };
    proxy.access_line(warm_up);
    let rss_before = rss_kib(pid);

    // Slow clients: the master streams as fast as it can, the clients never read.
    let downs: Vec<TcpStream> = (0..EACH)
        .map(|_| {
            let mut c = connect(addr);
            c.write_all(b"D").unwrap();
            c
        })
        .collect();
    // Slow master: the clients write as fast as they can, the master never reads.
    let ups: Vec<_> = (0..EACH)
        .map(|_| {
            let mut c = connect(addr);
            c.write_all(b"U").unwrap();
            let written = Arc::new(AtomicU64::new(0));
            let w = written.clone();
            let mut cw = c.try_clone().unwrap();
            cw.set_write_timeout(Some(Duration::from_secs(30))).unwrap();
            let t = std::thread::spawn(move || {
                let buf = vec![0xa5u8; 64 * 1024];
                while let Ok(k) = cw.write(&buf) {
                    w.fetch_add(k as u64, Ordering::Relaxed);
                }
            });
            (c, written, t)
        })
        .collect();

    // Wait until both directions have stalled (nothing moves for a second).
    let progress = || {
        master.seen(|s| s.streamed)
            + ups
                .iter()
                .map(|(_, w, _)| w.load(Ordering::Relaxed))
                .sum::<u64>()
    };
    let stalled = steady(Duration::from_secs(20), Duration::from_secs(1), progress).is_ok();
    assert!(stalled, "data kept flowing to peers that do not read");
    let rss_stalled = rss_kib(pid);
    let streamed = master.seen(|s| s.streamed);
    let uploaded: u64 = ups.iter().map(|(_, w, _)| w.load(Ordering::Relaxed)).sum();
    let growth = rss_stalled.saturating_sub(rss_before);
    let per_conn = growth / (2 * EACH as u64);
    assert!(
        per_conn <= 512,
        "RSS grew {growth} KiB for {} stalled connections ({per_conn} KiB each)",
        2 * EACH
    );

    // The stalled data is intact once a slow client reads again.
    let mut first = downs.into_iter().next().unwrap();
    let mut check = PatternCheck::new(9);
    let mut buf = vec![0u8; 64 * 1024];
    while check.total < (8 << 20) {
        let k = first.read(&mut buf).unwrap();
        assert!(k > 0);
        assert!(check.check(&buf[..k]), "slow client's data corrupted");
    }
    drop(first);
    for (c, _, t) in ups {
        let _ = c.shutdown(Shutdown::Both);
        drop(c);
        let _ = t.join();
    }
    figure(format!(
        "slow_peers: {EACH} slow clients + {EACH} slow master connections stalled with {} MiB pushed by the master and {} MiB by clients; proxy RSS {} → {} KiB (+{per_conn} KiB per connection)",
        streamed >> 20,
        uploaded >> 20,
        rss_before,
        rss_stalled
    ));
}

// === The connection limit ===

/// `max_connections` counts connections in flight. A listener waiting for its next client
/// must not hold a slot meanwhile, or one listener with no clients starves another.
#[test]
fn max_connections_counts_connections_not_idle_listeners() {
    let dir = tempdir();
    let master = Master::start(dir.path(), Behavior::Echo);
    let mut problems = Vec::new();
    for (max, first, second) in [
        (1, "agent", "tasks"),
        (1, "tasks", "agent"),
        (2, "agent", "tasks"),
    ] {
        let proxy = master
            .cfg()
            .listeners(&[
                &format!(r#"{{name: {first}, listen: "127.0.0.1:0"}}"#),
                &format!(r#"{{name: {second}, listen: "127.0.0.1:0"}}"#),
            ])
            .extra(&format!("max_connections: {max}"))
            .start(dir.path());
        // `max` clients, all on the second listener, while the first has none.
        let mut held = Vec::new();
        for i in 0..max {
            let mut c = connect(proxy.tcp_addr(second));
            c.write_all(b"ping").unwrap();
            c.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
            let mut buf = [0u8; 4];
            match c.read_exact(&mut buf) {
                Ok(()) => held.push(c),
                Err(e) => problems.push(format!(
                    "max_connections: {max}, listeners [{first}, {second}]: client {} of {max} on {second} not served within 3 s ({e}) with {} in flight",
                    i + 1,
                    held.len()
                )),
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
