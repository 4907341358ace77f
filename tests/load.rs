//! Load, bounded for CI and on loopback only: thousands of concurrent relayed connections
//! with every byte hash-checked at both ends, and a churn of short connections after which
//! the proxy's descriptors and memory are back where they started. The counts can be scaled
//! with DTP_LOAD_CONCURRENT and DTP_LOAD_CHURN (the soak script in tests/soak/ is the long run).
//! Each test prints one `FIGURE` line (docs/reliability.md collects them).

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_lc_rs::digest::{Context, SHA256};
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream as AsyncTcp;

/// The load tests measure the proxy; running them side by side would measure each other.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn count_from_env(var: &str, default: usize) -> usize {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

// === Process probes ===

/// Raises this process's RLIMIT_NOFILE soft limit to the hard limit (children started
/// afterwards, the proxy among them, inherit it); returns the new limit.
fn raise_nofile() -> u64 {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit");
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard).expect("setrlimit");
    }
    hard
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Starts the proxy on `cfg` logging at info without access lines: thousands of debug and
/// access lines would measure the log pipe, not the proxy.
fn start_quiet(cfg: Cfg, dir: &std::path::Path) -> Proxy {
    let yaml = cfg.render().replace(
        "log: {format: json, level: debug}",
        "log: {format: json, level: info, access: false}",
    );
    assert!(
        yaml.contains("access: false"),
        "Cfg no longer renders its log line as expected"
    );
    let path = dir.join("proxy.yaml");
    std::fs::write(&path, yaml).unwrap();
    Proxy::start(&path)
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

// === 5,000 concurrent connections ===

/// Bytes each client sends, and the master sends back on each connection.
const EACH_WAY: u64 = 32 * 1024;
const MASTER_SEED: u64 = 77;
/// The first bytes a client sends before waiting for everyone else.
const OPENING: usize = 1024;

fn pattern_bytes(seed: u64, len: u64) -> Vec<u8> {
    let mut v = vec![0u8; len as usize];
    Pattern::new(seed).fill(&mut v);
    v
}

/// One client: open, prove the relay is up, wait for `go`, then move the rest both ways.
/// Returns the SHA-256 of what it sent.
async fn one_client(
    addr: SocketAddr,
    i: u64,
    opened: Arc<AtomicUsize>,
    mut go: tokio::sync::watch::Receiver<bool>,
    connect_slots: Arc<tokio::sync::Semaphore>,
    want_down: Arc<Vec<u8>>,
) -> Result<Vec<u8>, String> {
    let mut data = pattern_bytes(1000 + i, EACH_WAY);
    // A ClientHello's headers would be passed through untouched (tls_passthrough: auto);
    // a first byte other than 0x16 rules them out for these plaintext clients.
    data[0] = b'P';
    let io = |what: &'static str| move |e: std::io::Error| format!("client {i}: {what}: {e}");
    let permit = connect_slots.acquire().await.unwrap();
    let mut s = AsyncTcp::connect(addr).await.map_err(io("connect"))?;
    s.set_nodelay(true).ok();
    s.write_all(&data[..OPENING])
        .await
        .map_err(io("first write"))?;
    let mut down = Context::new(&SHA256);
    let mut got = 0u64;
    let mut buf = vec![0u8; 16 * 1024];
    let n = tokio::time::timeout(Duration::from_secs(60), s.read(&mut buf))
        .await
        .map_err(|_| format!("client {i}: no first byte from the master in 60 s"))?
        .map_err(io("first read"))?;
    if n == 0 {
        return Err(format!("client {i}: closed before the first byte"));
    }
    down.update(&buf[..n]);
    got += n as u64;
    drop(permit);
    opened.fetch_add(1, Ordering::SeqCst);
    // Everyone is connected before anyone goes on: the connections are truly concurrent.
    go.wait_for(|g| *g).await.map_err(|e| e.to_string())?;

    let (mut r, mut w) = s.split();
    let writer = async {
        w.write_all(&data[OPENING..]).await?;
        w.shutdown().await
    };
    let reader = async {
        loop {
            let n = r.read(&mut buf).await?;
            if n == 0 {
                return Ok::<_, std::io::Error>(());
            }
            down.update(&buf[..n]);
            got += n as u64;
        }
    };
    let both = async { tokio::try_join!(writer, reader) };
    tokio::time::timeout(Duration::from_secs(120), both)
        .await
        .map_err(|_| format!("client {i}: transfer not done in 120 s"))?
        .map_err(io("transfer"))?;
    if got != EACH_WAY || down.finish().as_ref() != want_down.as_slice() {
        return Err(format!(
            "client {i}: received {got} bytes not matching the master's"
        ));
    }
    Ok(sha256(&data))
}

#[test]
fn five_thousand_concurrent_connections_hash_checked_at_both_ends() {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let hard = raise_nofile();
    let mut n = count_from_env("DTP_LOAD_CONCURRENT", 5000);
    // Two descriptors per connection here (client, master side) and two in the proxy.
    let fits = (hard as usize).saturating_sub(200) / 2;
    if n > fits {
        eprintln!(
            "RLIMIT_NOFILE hard limit {hard} allows {fits} connections; running {fits}, not {n}"
        );
        n = fits;
    }

    let dir = tempdir();
    let master = Master::start(
        dir.path(),
        Behavior::Hash {
            send: EACH_WAY,
            seed: MASTER_SEED,
        },
    );
    let proxy = start_quiet(
        master.cfg().extra(&format!("max_connections: {}", n + 100)),
        dir.path(),
    );
    let addr = proxy.tcp_addr("main");
    let pid = proxy.pid().as_raw();
    let rss_idle = rss_kib(pid);
    let want_down = Arc::new(sha256(&pattern_bytes(MASTER_SEED, EACH_WAY)));

    let rt = runtime();
    let opened = Arc::new(AtomicUsize::new(0));
    let (go_tx, go_rx) = tokio::sync::watch::channel(false);
    let slots = Arc::new(tokio::sync::Semaphore::new(256));
    let started = Instant::now();
    let tasks: Vec<_> = (0..n as u64)
        .map(|i| {
            rt.spawn(one_client(
                addr,
                i,
                opened.clone(),
                go_rx.clone(),
                slots.clone(),
                want_down.clone(),
            ))
        })
        .collect();

    let all_open = eventually(Duration::from_secs(150), || {
        opened.load(Ordering::SeqCst) == n || tasks.iter().any(|t| t.is_finished())
    });
    let open_time = started.elapsed();
    let now_open = opened.load(Ordering::SeqCst);
    let proxy_fds = fd_count(pid);
    let rss_open = rss_kib(pid);
    assert!(
        all_open && now_open == n,
        "only {now_open} of {n} connections open after {open_time:?}"
    );
    assert!(
        proxy_fds >= 2 * n,
        "the proxy holds {proxy_fds} fds for {n} relays"
    );

    let go = Instant::now();
    go_tx.send(true).unwrap();
    let results: Vec<Result<Vec<u8>, String>> = rt.block_on(async {
        let mut v = Vec::with_capacity(tasks.len());
        for t in tasks {
            v.push(t.await.unwrap_or_else(|e| Err(e.to_string())));
        }
        v
    });
    let transfer_time = go.elapsed();
    let failures: Vec<&String> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(
        failures.is_empty(),
        "{} of {n} connections failed, first: {:?}",
        failures.len(),
        failures.first()
    );

    // The master's side of the same connections: every upload arrived whole.
    master
        .server
        .wait("every connection to finish", Duration::from_secs(60), |s| {
            (s.finished.len() >= n).then_some(())
        });
    let st = master.server.state();
    let mut sent: HashMap<Vec<u8>, usize> = HashMap::new();
    for r in results.into_iter().flatten() {
        *sent.entry(r).or_default() += 1;
    }
    for f in &st.finished {
        assert_eq!(f.error, None, "master side: {f:?}");
        assert_eq!(f.received, EACH_WAY, "master side: {f:?}");
        let left = sent
            .get_mut(&f.received_sha256)
            .expect("the master received bytes no client sent");
        *left -= 1;
    }
    assert!(
        sent.values().all(|v| *v == 0),
        "uploads missing at the master"
    );
    let hwm = status_kib(pid, "VmHWM:");
    figure(format!(
        "concurrent_{n}: all {n} open in {open_time:?} (proxy fds {proxy_fds}), {} KiB each way per connection hash-checked in {transfer_time:?}; proxy RSS idle {}, with {n} open {} ({:.1} KiB per connection), peak {}; proxy CPU {:.1} s",
        EACH_WAY / 1024,
        mib(rss_idle),
        mib(rss_open),
        rss_open.saturating_sub(rss_idle) as f64 / n as f64,
        mib(hwm),
        cpu_secs(pid)
    ));
}

// === Churn ===

/// Connections in flight during the churn: enough to keep both cores busy (with fewer, the
/// run waits on round trips rather than on the proxy).
const CHURN_CONCURRENCY: usize = 32;

/// `count` short connections, `concurrency` at a time: connect, 64 bytes each way, close.
fn churn(addr: SocketAddr, count: usize, concurrency: usize) {
    let rt = runtime();
    let next = Arc::new(AtomicUsize::new(0));
    rt.block_on(async {
        let workers: Vec<_> = (0..concurrency)
            .map(|_| {
                let next = next.clone();
                tokio::spawn(async move {
                    let msg = [0x42u8; 64];
                    let mut back = [0u8; 64];
                    while next.fetch_add(1, Ordering::Relaxed) < count {
                        let mut s = AsyncTcp::connect(addr).await.expect("connect");
                        s.set_nodelay(true).ok();
                        s.write_all(&msg).await.expect("write");
                        tokio::time::timeout(IO_TIMEOUT, s.read_exact(&mut back))
                            .await
                            .expect("echo within 10 s")
                            .expect("echo");
                        assert_eq!(back, msg);
                        s.shutdown().await.expect("shutdown");
                        let mut rest = Vec::new();
                        tokio::time::timeout(IO_TIMEOUT, s.read_to_end(&mut rest))
                            .await
                            .expect("EOF within 10 s")
                            .expect("EOF");
                        assert!(rest.is_empty());
                    }
                })
            })
            .collect();
        for w in workers {
            w.await.expect("churn worker");
        }
    });
}

#[test]
fn churn_of_short_connections_returns_fds_and_memory() {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    raise_nofile();
    let n = count_from_env("DTP_LOAD_CHURN", 20_000);
    let warmup = (n / 20).max(100);
    let dir = tempdir();
    let master = Master::start(dir.path(), Behavior::Echo);
    let proxy = start_quiet(master.cfg(), dir.path());
    let addr = proxy.tcp_addr("main");
    let pid = proxy.pid().as_raw();

    // Warm up: the session cache, the allocator's arenas and the runtime reach their size.
    churn(addr, warmup, 8);
    // The warm-up's last descriptors closed (no event marks the moment).
    let fds_start = steady(Duration::from_secs(10), Duration::from_millis(300), || {
        fd_count(pid)
    })
    .unwrap_or_else(|n| panic!("the idle proxy's descriptor count still changing: {n}"));
    let rss_start = rss_kib(pid);
    let cpu_start = cpu_secs(pid);

    let t = Instant::now();
    churn(addr, n, CHURN_CONCURRENCY);
    let took = t.elapsed();
    let settled = eventually(Duration::from_secs(10), || fd_count(pid) <= fds_start);
    let fds_end = fd_count(pid);
    assert!(
        settled,
        "proxy fds: {fds_start} before, {fds_end} after {n} connections"
    );
    // Memory freed with the last connections is returned (no event marks the moment).
    let rss_end = steady(Duration::from_secs(10), Duration::from_millis(300), || {
        rss_kib(pid)
    })
    .unwrap_or_else(|kib| panic!("the idle proxy's RSS still changing: {kib} KiB"));
    // The allocator may keep a little; a leak of even 1 KiB per connection would be 20 MiB.
    assert!(
        rss_end <= rss_start + 8 * 1024,
        "proxy RSS {} before, {} after {n} connections",
        mib(rss_start),
        mib(rss_end)
    );
    let hwm = status_kib(pid, "VmHWM:");
    figure(format!(
        "churn_{n}: {n} connections ({CHURN_CONCURRENCY} at a time) in {took:?} ({:.0}/s, proxy CPU {:.1} s); fds {fds_start} → {fds_end}; RSS {} → {} (peak {})",
        n as f64 / took.as_secs_f64(),
        cpu_secs(pid) - cpu_start,
        mib(rss_start),
        mib(rss_end),
        mib(hwm)
    ));
}
