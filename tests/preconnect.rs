//! `upstream.preconnect`: verified sessions to the master kept ready per ALPN choice. Seen
//! from the master's side: the handshakes made before a client arrives, the connection a
//! client's bytes arrive on, the pooled connections closed on reload and after
//! `preconnect_max_idle`; seen from the proxy's: `preconnect_total{result}` and the access
//! line's `preconnected`. Passthrough clients and TLS off never touch the pool; a master
//! that closes a pooled session gets it dropped; a master that is down is not hammered.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::prometheus::scrape;
use common::server::provider;
use common::*;
use rustls::pki_types::ServerName;

fn upstream(n: usize, max_idle: &str) -> String {
    format!("upstream: {{preconnect: {n}, preconnect_max_idle: {max_idle}}}")
}

fn preconnect_count(proxy: &Proxy, result: &str) -> f64 {
    scrape(proxy.tcp_addr("admin")).count("det_tls_proxy_preconnect_total", &[("result", result)])
}

fn handshakes(m: &Master) -> usize {
    m.server.state().handshakes.len()
}

/// The debug line of the pool learning an ALPN choice: logged by the client's own task, so
/// before that client's access line.
fn learned(v: &serde_json::Value) -> bool {
    v["message"] == "preconnect: new ALPN choice, filling its pool"
}

/// Waits until the master has seen exactly `n` handshakes, and that they stay `n` for a
/// moment (no more are made without a client).
fn settles_at(m: &Master, n: usize) {
    m.server
        .wait(&format!("{n} handshakes"), Duration::from_secs(10), |st| {
            (st.handshakes.len() >= n).then_some(())
        });
    // Time is the behaviour here: a pool that overfills dials again at once, and nothing marks
    // that it did not (the proxy has no gauge of its pool).
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(handshakes(m), n, "more handshakes than the pool's size");
}

/// One HTTP/1.1 request on a fresh client connection; returns the response and the client's
/// local address.
fn http_get(addr: SocketAddr, path: &str) -> (String, SocketAddr) {
    let mut c = connect(addr);
    let local = c.local_addr().unwrap();
    c.write_all(format!("GET {path} HTTP/1.1\r\nHost: det-master\r\n\r\n").as_bytes())
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !got.ends_with(b"}") {
        let n = c.read(&mut buf).expect("response");
        assert!(n > 0, "closed before the response: {got:?}");
        got.extend_from_slice(&buf[..n]);
    }
    (String::from_utf8_lossy(&got).into_owned(), local)
}

/// The master-side connection (index into `handshakes`) a request for `path` arrived on.
fn connection_of(m: &Master, path: &str) -> usize {
    m.server.wait(
        &format!("the request for {path}"),
        Duration::from_secs(10),
        |st| {
            st.requests
                .iter()
                .find(|r| r.path == path)
                .map(|r| r.connection)
        },
    )
}

#[test]
fn a_learned_choice_is_filled_and_the_next_client_is_served_on_a_pooled_session() {
    let dir = tempdir();
    let m = Master::start(dir.path(), Behavior::HttpRecord);
    let proxy = m
        .cfg()
        .extra(&upstream(2, "30s"))
        .extra(ADMIN)
        .start(dir.path());
    let main = proxy.tcp_addr("main");
    assert_eq!(handshakes(&m), 0, "nothing to learn from before a client");

    // The first client teaches the choice (http/1.1 under alpn auto) and dials fresh.
    let (first, local) = http_get(main, "/first");
    assert!(first.contains("\"received\":1"), "{first}");
    assert_eq!(proxy.access_line(local)["preconnected"], false);
    settles_at(&m, 3);

    // The next client's request arrives on a connection made before it came.
    let before = handshakes(&m);
    let (second, local) = http_get(main, "/second");
    assert!(second.contains("\"received\":1"), "{second}");
    // (The learning client and the first refill dial at the same time: either may finish
    // its handshake first.)
    let learner = connection_of(&m, "/first");
    let on = connection_of(&m, "/second");
    assert!(
        on < before && on != learner,
        "the request arrived on connection #{on}, not on one of the pooled (#0..#{} but #{learner})",
        before - 1
    );
    assert_eq!(proxy.access_line(local)["preconnected"], true);
    // Then the pool refills.
    settles_at(&m, 4);
    assert_eq!(preconnect_count(&proxy, "hit"), 1.0);
    assert_eq!(preconnect_count(&proxy, "miss"), 1.0);
    assert_eq!(preconnect_count(&proxy, "discard"), 0.0);
}

#[test]
fn a_listener_with_a_fixed_alpn_is_filled_before_any_client() {
    let dir = tempdir();
    let m = Master::start_with(dir.path(), |b| {
        b.behavior(Behavior::Echo).alpn(&["x-det", "http/1.1"])
    });
    let proxy = m
        .cfg()
        .listeners(&[r#"{name: main, listen: "127.0.0.1:0", alpn: [x-det]}"#])
        .extra(&upstream(3, "30s"))
        .extra(ADMIN)
        .start(dir.path());
    let main = proxy.tcp_addr("main");
    settles_at(&m, 3);
    for hs in m.server.state().handshakes {
        assert_eq!(hs.alpn.as_deref(), Some("x-det"), "{hs:?}");
    }
    let local = relays(main, b"ping");
    let line = proxy.access_line(local);
    assert_eq!(line["preconnected"], true, "{line}");
    assert_eq!(line["alpn"], "x-det", "{line}");
    settles_at(&m, 4);
    assert_eq!(preconnect_count(&proxy, "hit"), 1.0);
    assert_eq!(preconnect_count(&proxy, "miss"), 0.0);
}

#[test]
fn two_clients_never_share_a_session() {
    let dir = tempdir();
    let m = Master::start(dir.path(), Behavior::Echo);
    let proxy = m
        .cfg()
        .extra(&upstream(2, "30s"))
        .extra(ADMIN)
        .start(dir.path());
    let main = proxy.tcp_addr("main");
    relays(main, b"learn");
    settles_at(&m, 3);

    // Both at once, each with its own bytes, both taken from the pool.
    let payload = |seed: u64| {
        let mut v = vec![0u8; 256 * 1024];
        Pattern::new(seed).fill(&mut v);
        v
    };
    let clients: Vec<_> = [1u64, 2]
        .into_iter()
        .map(|seed| {
            std::thread::spawn(move || {
                let data = payload(seed);
                let mut c = connect(main);
                let local = c.local_addr().unwrap();
                let w = {
                    let mut c = c.try_clone().unwrap();
                    let data = data.clone();
                    std::thread::spawn(move || c.write_all(&data).unwrap())
                };
                let mut back = vec![0u8; data.len()];
                c.read_exact(&mut back).unwrap();
                w.join().unwrap();
                assert_eq!(sha256(&back), sha256(&data), "client {seed}: echo differs");
                finish(&mut c);
                local
            })
        })
        .collect();
    let locals: Vec<SocketAddr> = clients.into_iter().map(|t| t.join().unwrap()).collect();
    for local in &locals {
        assert_eq!(proxy.access_line(*local)["preconnected"], true);
    }
    assert_eq!(preconnect_count(&proxy, "hit"), 2.0);

    // On the master: each client's bytes, whole and alone, on a connection of its own.
    m.server.finished(3);
    let finished = m.server.state().finished;
    for seed in [1u64, 2] {
        let want = sha256(&payload(seed));
        let on: Vec<usize> = finished
            .iter()
            .enumerate()
            .filter(|(_, f)| sha256(&f.received_data) == want)
            .map(|(i, _)| i)
            .collect();
        assert_eq!(
            on.len(),
            1,
            "client {seed}'s stream on {on:?} of {finished:#?}"
        );
    }
}

#[test]
fn passthrough_clients_never_use_the_pool() {
    let dir = tempdir();
    let m = Master::start_with(dir.path(), |b| b.behavior(Behavior::Echo).alpn(&["x-task"]));
    let proxy = m
        .cfg()
        .extra(&upstream(2, "30s"))
        .extra(ADMIN)
        .start(dir.path());
    for _ in 0..2 {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(m.ca.der()).unwrap();
        let mut config = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"x-task".to_vec()];
        let name = ServerName::try_from("det-master".to_string()).unwrap();
        let conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
        let mut tls = rustls::StreamOwned::new(conn, connect(proxy.tcp_addr("main")));
        tls.write_all(b"own tls\n").unwrap();
        let mut back = [0u8; 8];
        tls.read_exact(&mut back).unwrap();
        assert_eq!(&back, b"own tls\n");
        tls.conn.send_close_notify();
        let _ = tls.flush();
    }
    // Both connections are over, and the pool learned no choice from them (it would have
    // said so before their access lines): nothing will be dialled ahead.
    proxy.nth_access_line("main", 2);
    assert!(
        proxy.find(learned).is_none(),
        "a passthrough client taught the pool"
    );
    let st = m.server.state();
    assert_eq!(
        st.tcp_accepts, 2,
        "only the clients' own connections: {st:#?}"
    );
    assert!(st
        .handshakes
        .iter()
        .all(|h| h.alpn.as_deref() == Some("x-task")));
    assert_eq!(preconnect_count(&proxy, "hit"), 0.0);
    assert_eq!(preconnect_count(&proxy, "miss"), 0.0);
}

/// A plaintext master that counts the connections it accepts.
fn counting_echo() -> (SocketAddr, Arc<AtomicUsize>) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let accepts = Arc::new(AtomicUsize::new(0));
    let a = accepts.clone();
    std::thread::spawn(move || {
        for mut s in l.incoming().flatten() {
            a.fetch_add(1, Ordering::SeqCst);
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = s.read(&mut buf) {
                    if n == 0 || s.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
    (addr, accepts)
}

#[test]
fn with_tls_off_nothing_is_preconnected() {
    let dir = tempdir();
    let (addr, accepts) = counting_echo();
    let proxy = Cfg::new("127.0.0.1", addr.port())
        .tls("enabled", "false")
        .listeners(&[r#"{name: main, listen: "127.0.0.1:0", alpn: none}"#])
        .extra(&upstream(2, "30s"))
        .extra(ADMIN)
        .start(dir.path());
    relays(proxy.tcp_addr("main"), b"plain");
    relays(proxy.tcp_addr("main"), b"plain");
    proxy.nth_access_line("main", 2);
    assert!(
        proxy.find(learned).is_none(),
        "a plaintext client taught the pool"
    );
    assert_eq!(
        accepts.load(Ordering::SeqCst),
        2,
        "one connection per client, none ahead"
    );
    assert_eq!(preconnect_count(&proxy, "miss"), 0.0);
}

#[test]
fn a_reload_closes_the_pooled_sessions_and_refills_with_the_new_configuration() {
    let dir = tempdir();
    let m = Master::start(dir.path(), Behavior::Echo);
    let cfg = |name: Option<&str>| {
        let c = m.cfg().extra(&upstream(2, "30s")).extra(ADMIN);
        match name {
            Some(n) => c.tls("master_cert_name", n),
            None => c,
        }
    };
    let path = cfg(None).write(dir.path());
    let proxy = Proxy::start(&path);
    relays(proxy.tcp_addr("main"), b"learn");
    settles_at(&m, 3);
    m.server.finished(1); // the learning client's own connection
                          // A client in flight across the reload keeps the old state (and so its pool) alive.
    let mut held = connect(proxy.tcp_addr("main"));
    assert_eq!(roundtrip(&mut held, b"held"), b"held");
    settles_at(&m, 4);
    assert!(m.server.state().handshakes.iter().all(|h| h.sni.is_none()));

    replace(&path, &cfg(Some("det-master")).render());
    proxy.signal(nix::sys::signal::Signal::SIGHUP);
    // The two pooled sessions are closed (cleanly) and two new ones made under the new name,
    // before any client comes.
    m.server.finished(3);
    let st = m.server.state();
    assert!(st.finished.iter().all(|f| f.error.is_none()), "{st:#?}");
    settles_at(&m, 6);
    let st = m.server.state();
    for hs in &st.handshakes[4..] {
        assert_eq!(hs.sni.as_deref(), Some("det-master"), "{hs:?}");
    }
    assert_eq!(preconnect_count(&proxy, "discard"), 2.0);
    assert_eq!(roundtrip(&mut held, b"still held"), b"still held");
    finish(&mut held);
    let local = relays(proxy.tcp_addr("main"), b"after");
    let line = proxy.access_line(local);
    assert_eq!(line["preconnected"], true, "{line}");
    assert_eq!(line["sni"], "det-master", "{line}");
}

#[test]
fn an_idle_pooled_session_is_replaced_after_max_idle() {
    let dir = tempdir();
    let m = Master::start(dir.path(), Behavior::Echo);
    let proxy = m
        .cfg()
        .extra(&upstream(1, "2s"))
        .extra(ADMIN)
        .start(dir.path());
    relays(proxy.tcp_addr("main"), b"learn");
    m.server.finished(1); // the learning client's own connection
    m.server.handshake(2);
    let made = Instant::now();
    // The pooled one (#2) is replaced (#3) a little before its 2 s are up (a tenth of it),
    // then closed; and so on.
    m.server.handshake(3);
    let replaced = made.elapsed();
    assert!(
        replaced >= Duration::from_millis(1500) && replaced < Duration::from_secs(6),
        "replaced after {replaced:?}, max_idle 2s"
    );
    assert_eq!(
        m.server.state().finished.len(),
        1,
        "the old session was closed before its replacement was made"
    );
    m.server.finished(2);
    let st = m.server.state();
    assert!(
        st.finished.iter().all(|f| f.error.is_none()),
        "closed with close_notify: {st:#?}"
    );
    assert!(preconnect_count(&proxy, "discard") >= 1.0);
    let local = relays(proxy.tcp_addr("main"), b"still");
    assert_eq!(proxy.access_line(local)["preconnected"], true);
}

#[test]
fn a_pooled_session_the_master_closes_is_dropped_and_the_next_client_works() {
    let dir = tempdir();
    // The master gives up on a silent connection after 700 ms; the pool would wait 30 s.
    let m = Master::start(dir.path(), Behavior::CloseIdle(Duration::from_millis(700)));
    let proxy = m
        .cfg()
        .extra(&upstream(1, "30s"))
        .extra(ADMIN)
        .start(dir.path());
    relays(proxy.tcp_addr("main"), b"learn");
    m.server.handshake(2);
    // The master closes #2; the proxy notices without sending a byte and replaces it.
    m.server.handshake(3);
    assert!(
        eventually(Duration::from_secs(5), || preconnect_count(
            &proxy, "discard"
        ) >= 1.0),
        "the closed session was not counted as discarded"
    );
    let st = m.server.state();
    let idle: Vec<_> = st
        .finished
        .iter()
        .filter(|f| f.error.as_deref() == Some("closed idle"))
        .collect();
    assert!(!idle.is_empty(), "{st:#?}");
    assert!(
        idle.iter().all(|f| f.received == 0),
        "the proxy sent data on a pooled session"
    );
    // Clients keep working, whenever they come relative to the master's closes.
    for i in 0..4 {
        // Time is the behaviour here: clients spread over the master's 700 ms close cycle.
        std::thread::sleep(Duration::from_millis(300));
        relays(proxy.tcp_addr("main"), format!("client {i}").as_bytes());
    }
}

#[test]
fn a_master_that_is_down_is_not_hammered() {
    let dir = tempdir();
    let m = Master::start(dir.path(), Behavior::Echo);
    // Accepts and drops every connection: every handshake fails.
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let accepts = Arc::new(AtomicUsize::new(0));
    let a = accepts.clone();
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            a.fetch_add(1, Ordering::SeqCst);
            drop(s);
        }
    });
    let proxy = Cfg::new("127.0.0.1", port)
        .master_cert(&m.ca_pem)
        .extra(&upstream(4, "30s"))
        .extra(ADMIN)
        .start(dir.path());
    let mut c = connect(proxy.tcp_addr("main"));
    let _ = c.write_all(b"learn");
    let _ = read_until_closed(&mut c, Duration::from_secs(10));
    let from = accepts.load(Ordering::SeqCst);
    // Time is the behaviour here: the number of tries in a window.
    std::thread::sleep(Duration::from_millis(3500));
    // Backing off 1 s, 2 s, ...: a handful of tries in 3.5 s, not hundreds.
    let tries = accepts.load(Ordering::SeqCst) - from;
    assert!((1..=4).contains(&tries), "{tries} refill attempts in 3.5 s");
    let _ = TcpStream::connect(("127.0.0.1", port));
}

#[test]
fn a_listener_without_the_client_certificate_never_gets_an_authenticated_session() {
    let dir = tempdir();
    let client_ca = Ca::root("Agent Client CA");
    let agent = client_ca.client("agent-1");
    let cert = certs::write(dir.path(), "client.pem", &agent.pem());
    let key = certs::write(dir.path(), "client.key", &agent.key_pem());
    let m = Master::start_with(dir.path(), |b| {
        b.behavior(Behavior::HttpRecord)
            .client_auth(ClientAuth::Optional(client_ca.der()))
    });
    let proxy = m
        .cfg()
        .tls("client_cert", qp(&cert))
        .tls("client_key", qp(&key))
        .listeners(&[
            r#"{name: agent, listen: "127.0.0.1:0"}"#,
            r#"{name: bridge, listen: "127.0.0.1:0", present_client_cert: false}"#,
        ])
        .extra(&upstream(1, "30s"))
        .extra(ADMIN)
        .start(dir.path());
    // Both choices learned (same ALPN, with and without the certificate): one session each.
    http_get(proxy.tcp_addr("agent"), "/agent-learn");
    http_get(proxy.tcp_addr("bridge"), "/bridge-learn");
    settles_at(&m, 4);
    for round in 0..2 {
        let (path_b, path_a) = (format!("/bridge-{round}"), format!("/agent-{round}"));
        let (_, local) = http_get(proxy.tcp_addr("bridge"), &path_b);
        assert_eq!(proxy.access_line(local)["preconnected"], true);
        let (_, local) = http_get(proxy.tcp_addr("agent"), &path_a);
        assert_eq!(proxy.access_line(local)["preconnected"], true);
        let st = m.server.state();
        let hs = |path: &str| st.handshakes[connection_of(&m, path)].client_cert;
        assert!(!hs(&path_b), "a bridge client got the agent's identity");
        assert!(hs(&path_a), "an agent client lost its certificate");
        // Both choices refill the session their client took.
        let refilled = 4 + 2 * (round + 1);
        m.server.wait(
            &format!("{refilled} handshakes"),
            Duration::from_secs(10),
            |st| (st.handshakes.len() >= refilled).then_some(()),
        );
    }
}

#[test]
fn a_drain_closes_the_pooled_sessions_and_makes_no_more() {
    let dir = tempdir();
    let m = Master::start(dir.path(), Behavior::Echo);
    let mut proxy = m.cfg().extra(&upstream(2, "30s")).start(dir.path());
    relays(proxy.tcp_addr("main"), b"learn");
    settles_at(&m, 3);
    m.server.finished(1);
    // A client still open when the drain starts: it takes a pooled session, and a refill follows.
    let mut held = connect(proxy.tcp_addr("main"));
    assert_eq!(roundtrip(&mut held, b"held"), b"held");
    settles_at(&m, 4);

    proxy.signal(nix::sys::signal::Signal::SIGTERM);
    // The two ready sessions are closed at once; nothing refills them.
    m.server.finished(3);
    // Time is the behaviour here: a refill would dial at once, and nothing marks that none did.
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        handshakes(&m),
        4,
        "a session was made after the drain began"
    );
    assert_eq!(roundtrip(&mut held, b"still held"), b"still held");
    finish(&mut held);
    assert!(
        proxy.wait_exit(Duration::from_secs(10)).is_some(),
        "the proxy did not exit once drained"
    );
}
