//! `loadgen`: the load generator of the benchmark harness.
//!
//! Speaks plaintext to a proxy under test (or, with `--tls --ca FILE --sni NAME`, TLS straight to
//! `tlssink` for the baseline) and runs one workload per invocation, printing one JSON object
//! on stdout. Every byte that crosses is checked against the shared pattern or the echo, so a
//! proxy that corrupts data fails the run instead of being measured.
//!
//! ```text
//! loadgen --addr 127.0.0.1:PORT up --bytes 2147483648        # one connection, client -> master
//! loadgen --addr 127.0.0.1:PORT down --bytes 2147483648      # one connection, master -> client
//! loadgen --addr 127.0.0.1:PORT multi --conns 32 --bytes 2147483648 [--dir mixed|up|down]
//! loadgen --addr 127.0.0.1:PORT connrate --duration 5 --concurrency 32 [--count N] [--size 100]
//! loadgen --addr 127.0.0.1:PORT latency --count 20000 [--warmup 1000] [--size 64]
//! loadgen --addr 127.0.0.1:PORT firstbyte --count 200 [--warmup 5] [--size 64] [--gap-ms 100]
//! loadgen --addr 127.0.0.1:PORT hold --conns 1000            # prints "HELD n", holds until stdin EOF
//! ```
//! Exit status 0 when the workload completed with every byte right, 1 otherwise (the JSON then
//! carries `"error"`).

mod common;

use std::io::{self, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand, ValueEnum};
use common::{Pattern, CMD_ECHO, CMD_SINK, CMD_SOURCE, MISMATCH_FLAG};
use rustls::crypto::aws_lc_rs as provider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

#[derive(Parser, Debug)]
#[command(about = "Load generator for the det-tls-proxy benchmark harness")]
struct Args {
    /// Where to connect: the proxy's listener, or tlssink itself with --tls. Loopback only.
    #[arg(long)]
    addr: SocketAddr,
    /// Speak TLS to the target (the direct-to-sink baseline).
    #[arg(long, requires = "ca")]
    tls: bool,
    /// PEM bundle of trusted roots for --tls.
    #[arg(long)]
    ca: Option<PathBuf>,
    /// Name sent as SNI and verified, for --tls.
    #[arg(long, default_value = "bench-master")]
    sni: String,
    /// Runtime worker threads.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Connect timeout, and the limit on any single read or write making no progress, seconds.
    #[arg(long, default_value_t = 10)]
    timeout: u64,
    /// Free-form label copied into the JSON output.
    #[arg(long)]
    label: Option<String>,
    #[command(subcommand)]
    workload: Workload,
}

#[derive(Subcommand, Debug)]
enum Workload {
    /// One connection sends --bytes to the sink, which counts and checks them.
    Up {
        #[arg(long)]
        bytes: u64,
    },
    /// One connection receives --bytes from the sink.
    Down {
        #[arg(long)]
        bytes: u64,
    },
    /// --conns concurrent connections moving --bytes in total.
    Multi {
        #[arg(long, default_value_t = 32)]
        conns: u64,
        #[arg(long)]
        bytes: u64,
        /// mixed: even connections upload, odd ones download.
        #[arg(long, value_enum, default_value_t = Dir::Mixed)]
        dir: Dir,
    },
    /// New connections: connect, send --size bytes, read the echo, close; for --duration
    /// seconds or --count connections, --concurrency at a time.
    Connrate {
        #[arg(long, default_value_t = 5.0)]
        duration: f64,
        #[arg(long)]
        count: Option<u64>,
        #[arg(long, default_value_t = 32)]
        concurrency: u64,
        #[arg(long, default_value_t = 100)]
        size: usize,
    },
    /// Request/response ping-pong of --size bytes over one connection.
    Latency {
        #[arg(long, default_value_t = 20_000)]
        count: u64,
        #[arg(long, default_value_t = 1_000)]
        warmup: u64,
        #[arg(long, default_value_t = 64)]
        size: usize,
    },
    /// New connections one after another, --gap-ms apart: connect, send --size bytes, time
    /// until the first byte of the echo arrives (connect to first response byte), read the
    /// rest, close. Reports p50/p99 in milliseconds.
    Firstbyte {
        #[arg(long, default_value_t = 200)]
        count: u64,
        #[arg(long, default_value_t = 5)]
        warmup: u64,
        #[arg(long, default_value_t = 64)]
        size: usize,
        #[arg(long, default_value_t = 100)]
        gap_ms: u64,
    },
    /// Open --conns connections, one echo round-trip each, print "HELD n", then keep them
    /// idle until stdin closes, SIGTERM/SIGINT, or --max-hold seconds.
    Hold {
        #[arg(long)]
        conns: u64,
        #[arg(long, default_value_t = 64)]
        concurrency: u64,
        #[arg(long, default_value_t = 64)]
        size: usize,
        #[arg(long, default_value_t = 900)]
        max_hold: u64,
    },
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq)]
enum Dir {
    Mixed,
    Up,
    Down,
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}
type Stream = Box<dyn Io>;

struct Target {
    addr: SocketAddr,
    tls: Option<(TlsConnector, ServerName<'static>)>,
    timeout: Duration,
    pattern: Pattern,
}

fn err(msg: impl Into<String>) -> io::Error {
    io::Error::other(msg.into())
}

async fn timed<T>(
    d: Duration,
    what: &str,
    f: impl std::future::Future<Output = io::Result<T>>,
) -> io::Result<T> {
    match tokio::time::timeout(d, f).await {
        Ok(r) => r,
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("{what}: no progress for {d:?}"),
        )),
    }
}

impl Target {
    async fn connect(&self) -> io::Result<Stream> {
        let tcp = timed(self.timeout, "connect", TcpStream::connect(self.addr)).await?;
        tcp.set_nodelay(true)?;
        match &self.tls {
            None => Ok(Box::new(tcp)),
            Some((c, name)) => {
                let s = timed(self.timeout, "TLS handshake", c.connect(name.clone(), tcp)).await?;
                Ok(Box::new(s))
            }
        }
    }

    async fn read(&self, s: &mut Stream, buf: &mut [u8]) -> io::Result<usize> {
        timed(self.timeout, "read", s.read(buf)).await
    }

    async fn read_exact(&self, s: &mut Stream, buf: &mut [u8]) -> io::Result<()> {
        timed(self.timeout, "read", s.read_exact(buf))
            .await
            .map(|_| ())
    }

    async fn write_all(&self, s: &mut Stream, buf: &[u8]) -> io::Result<()> {
        timed(self.timeout, "write", async {
            s.write_all(buf).await?;
            s.flush().await
        })
        .await
    }

    /// Client -> master: returns once the sink has confirmed every byte.
    async fn upload(&self, bytes: u64) -> io::Result<()> {
        let mut s = self.connect().await?;
        const CHUNK: usize = 64 * 1024;
        let mut first = Vec::with_capacity(1 + CHUNK);
        first.push(CMD_SINK);
        let n0 = (bytes as usize).min(CHUNK);
        first.extend_from_slice(self.pattern.window(0, n0));
        self.write_all(&mut s, &first).await?;
        let mut sent = n0 as u64;
        while sent < bytes {
            let n = ((bytes - sent) as usize).min(CHUNK);
            timed(
                self.timeout,
                "write",
                s.write_all(self.pattern.window(sent, n)),
            )
            .await?;
            sent += n as u64;
        }
        timed(self.timeout, "shutdown", s.shutdown()).await?;
        let mut reply = [0u8; 8];
        self.read_exact(&mut s, &mut reply)
            .await
            .map_err(|e| err(format!("waiting for the sink's count: {e}")))?;
        let r = u64::from_be_bytes(reply);
        if r & MISMATCH_FLAG != 0 {
            return Err(err(format!(
                "wrong bytes: the sink saw byte {} differ from what was sent",
                r & !MISMATCH_FLAG
            )));
        }
        if r != bytes {
            return Err(err(format!(
                "the sink counted {r} bytes, {bytes} were sent"
            )));
        }
        Ok(())
    }

    /// Master -> client: returns once EOF arrived after exactly `bytes` right bytes.
    async fn download(&self, bytes: u64) -> io::Result<()> {
        let mut s = self.connect().await?;
        let mut req = [0u8; 9];
        req[0] = CMD_SOURCE;
        req[1..].copy_from_slice(&bytes.to_be_bytes());
        self.write_all(&mut s, &req).await?;
        let mut buf = vec![0u8; 64 * 1024];
        let mut got: u64 = 0;
        loop {
            let n = self.read(&mut s, &mut buf).await?;
            if n == 0 {
                break;
            }
            if let Some(off) = self.pattern.check(got, &buf[..n]) {
                return Err(err(format!(
                    "wrong bytes: byte {off} from the sink differs from what it sent"
                )));
            }
            got += n as u64;
            if got > bytes {
                return Err(err(format!("received more than the {bytes} bytes sent")));
            }
        }
        if got != bytes {
            return Err(err(format!("EOF after {got} of {bytes} bytes")));
        }
        let _ = timed(self.timeout, "shutdown", s.shutdown()).await;
        Ok(())
    }

    /// Connect, one echo round-trip of `size` bytes; returns the open stream.
    /// One new connection: nanoseconds from the start of connect to the first byte of the
    /// echo of a --size request; the whole echo is then read and checked.
    async fn first_byte(&self, size: usize, i: u64) -> io::Result<u64> {
        let t0 = Instant::now();
        let mut s = self.connect().await?;
        let mut msg = Vec::with_capacity(1 + size);
        msg.push(CMD_ECHO);
        msg.extend_from_slice(self.pattern.window(i * 13, size));
        self.write_all(&mut s, &msg).await?;
        let mut back = vec![0u8; size];
        let n = self.read(&mut s, &mut back).await?;
        let ns = t0.elapsed().as_nanos() as u64;
        if n == 0 {
            return Err(err("closed before the first byte of the answer"));
        }
        self.read_exact(&mut s, &mut back[n..]).await?;
        if back != msg[1..] {
            return Err(err("wrong bytes: the echo differs from the request"));
        }
        let _ = timed(self.timeout, "shutdown", s.shutdown()).await;
        Ok(ns)
    }

    async fn echo_once(&self, size: usize) -> io::Result<Stream> {
        let mut s = self.connect().await?;
        let mut msg = Vec::with_capacity(1 + size);
        msg.push(CMD_ECHO);
        msg.extend_from_slice(self.pattern.window(0, size));
        self.write_all(&mut s, &msg).await?;
        let mut back = vec![0u8; size];
        self.read_exact(&mut s, &mut back).await?;
        if back != msg[1..] {
            return Err(err("wrong bytes: the echo differs from the request"));
        }
        Ok(s)
    }
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[i.clamp(1, sorted.len()) - 1]
}

fn mbps(bytes: u64, secs: f64) -> f64 {
    bytes as f64 / secs / 1e6
}

fn round(x: f64, digits: i32) -> f64 {
    let m = 10f64.powi(digits);
    (x * m).round() / m
}

async fn run(args: &Args, target: Arc<Target>) -> Result<Value, (Value, String)> {
    match args.workload {
        Workload::Up { bytes } | Workload::Down { bytes } => {
            let up = matches!(args.workload, Workload::Up { .. });
            let t0 = Instant::now();
            let r = if up {
                target.upload(bytes).await
            } else {
                target.download(bytes).await
            };
            let secs = t0.elapsed().as_secs_f64();
            let mut v = json!({"workload": if up {"up"} else {"down"}, "bytes": bytes, "secs": round(secs, 4),
                               "mb_per_s": round(mbps(bytes, secs), 1)});
            match r {
                Ok(()) => Ok(v),
                Err(e) => {
                    v["mb_per_s"] = Value::Null;
                    Err((v, e.to_string()))
                }
            }
        }
        Workload::Multi { conns, bytes, dir } => {
            let conns = conns.max(1);
            let t0 = Instant::now();
            let mut tasks = Vec::new();
            let (mut ups, mut downs) = (0, 0);
            for i in 0..conns {
                let share = bytes / conns + if i < bytes % conns { 1 } else { 0 };
                let up = match dir {
                    Dir::Up => true,
                    Dir::Down => false,
                    Dir::Mixed => i % 2 == 0,
                };
                if up {
                    ups += 1
                } else {
                    downs += 1
                }
                let t = target.clone();
                tasks.push(tokio::spawn(async move {
                    if up {
                        t.upload(share).await
                    } else {
                        t.download(share).await
                    }
                }));
            }
            let mut first_err = None;
            let mut failed = 0u64;
            for t in tasks {
                let r = t.await.unwrap_or_else(|e| Err(err(e.to_string())));
                if let Err(e) = r {
                    failed += 1;
                    first_err.get_or_insert(e.to_string());
                }
            }
            let secs = t0.elapsed().as_secs_f64();
            let v = json!({"workload": "multi", "conns": conns, "up_conns": ups, "down_conns": downs,
                           "bytes": bytes, "secs": round(secs, 4), "failed": failed,
                           "mb_per_s": if failed == 0 { json!(round(mbps(bytes, secs), 1)) } else { Value::Null }});
            match first_err {
                None => Ok(v),
                Some(e) => Err((v, e)),
            }
        }
        Workload::Connrate {
            duration,
            count,
            concurrency,
            size,
        } => {
            let deadline = Instant::now() + Duration::from_secs_f64(duration);
            let claimed = Arc::new(AtomicU64::new(0));
            let ok = Arc::new(AtomicU64::new(0));
            let errors = Arc::new(AtomicU64::new(0));
            let first_err: Arc<Mutex<Option<String>>> = Arc::new(Mutex::new(None));
            let t0 = Instant::now();
            let mut tasks = Vec::new();
            for _ in 0..concurrency.max(1) {
                let (t, claimed, ok, errors, first_err) = (
                    target.clone(),
                    claimed.clone(),
                    ok.clone(),
                    errors.clone(),
                    first_err.clone(),
                );
                tasks.push(tokio::spawn(async move {
                    let mut lat = Vec::new();
                    loop {
                        match count {
                            Some(n) => {
                                if claimed.fetch_add(1, Relaxed) >= n {
                                    break;
                                }
                            }
                            None => {
                                if Instant::now() >= deadline {
                                    break;
                                }
                            }
                        }
                        let s0 = Instant::now();
                        match t.echo_once(size).await {
                            Ok(mut s) => {
                                let _ = tokio::time::timeout(t.timeout, s.shutdown()).await;
                                drop(s);
                                ok.fetch_add(1, Relaxed);
                                lat.push(s0.elapsed().as_micros() as u64);
                            }
                            Err(e) => {
                                errors.fetch_add(1, Relaxed);
                                first_err.lock().unwrap().get_or_insert(e.to_string());
                                // A refused or reset connection returns at once: do not spin.
                                tokio::time::sleep(Duration::from_millis(10)).await;
                            }
                        }
                        // Bounded in count and time whatever the mode.
                        if s0.duration_since(t0)
                            > Duration::from_secs_f64(duration.max(1.0) * 20.0 + 60.0)
                        {
                            break;
                        }
                    }
                    lat
                }));
            }
            let mut lat = Vec::new();
            for t in tasks {
                lat.extend(t.await.unwrap_or_default());
            }
            let secs = t0.elapsed().as_secs_f64();
            lat.sort_unstable();
            let ok = ok.load(Relaxed);
            let errors = errors.load(Relaxed);
            let v = json!({"workload": "connrate", "concurrency": concurrency, "size": size,
                           "ok": ok, "errors": errors, "secs": round(secs, 4),
                           "conns_per_s": round(ok as f64 / secs, 1),
                           "conn_p50_us": percentile(&lat, 50.0), "conn_p99_us": percentile(&lat, 99.0)});
            let first = first_err.lock().unwrap().take();
            match first {
                Some(e) if errors > 0 => {
                    Err((v, format!("{errors} connections failed, first: {e}")))
                }
                _ => Ok(v),
            }
        }
        Workload::Firstbyte {
            count,
            warmup,
            size,
            gap_ms,
        } => {
            let mut times = Vec::with_capacity(count as usize);
            for i in 0..warmup + count {
                let ns = target.first_byte(size, i).await.map_err(|e| {
                    (
                        json!({"workload": "firstbyte"}),
                        format!("connection {i}: {e}"),
                    )
                })?;
                if i >= warmup {
                    times.push(ns);
                }
                tokio::time::sleep(Duration::from_millis(gap_ms)).await;
            }
            times.sort_unstable();
            let ms = |ns: u64| round(ns as f64 / 1e6, 2);
            let mean = times.iter().sum::<u64>() as f64 / times.len().max(1) as f64;
            Ok(
                json!({"workload": "firstbyte", "count": count, "size": size, "gap_ms": gap_ms,
                      "p50_ms": ms(percentile(&times, 50.0)), "p90_ms": ms(percentile(&times, 90.0)),
                      "p99_ms": ms(percentile(&times, 99.0)), "min_ms": ms(*times.first().unwrap_or(&0)),
                      "max_ms": ms(*times.last().unwrap_or(&0)), "mean_ms": round(mean / 1e6, 2)}),
            )
        }
        Workload::Latency {
            count,
            warmup,
            size,
        } => {
            let r: io::Result<(Vec<u64>, f64)> = async {
                let mut s = target.echo_once(size).await?;
                let mut back = vec![0u8; size];
                let mut lat = Vec::with_capacity(count as usize);
                let t0 = Instant::now();
                for i in 0..warmup + count {
                    let msg = target.pattern.window(i * 7, size);
                    let s0 = Instant::now();
                    target.write_all(&mut s, msg).await?;
                    target.read_exact(&mut s, &mut back).await?;
                    let us = s0.elapsed().as_nanos() as u64;
                    if back != msg {
                        return Err(err(format!(
                            "wrong bytes: echo {i} differs from the request"
                        )));
                    }
                    if i >= warmup {
                        lat.push(us);
                    }
                }
                let secs = t0.elapsed().as_secs_f64();
                let _ = timed(target.timeout, "shutdown", s.shutdown()).await;
                Ok((lat, secs))
            }
            .await;
            match r {
                Ok((mut lat, secs)) => {
                    lat.sort_unstable();
                    let mean = lat.iter().sum::<u64>() as f64 / lat.len().max(1) as f64;
                    let us = |ns: u64| round(ns as f64 / 1000.0, 1);
                    Ok(
                        json!({"workload": "latency", "count": count, "size": size, "secs": round(secs, 4),
                              "p50_us": us(percentile(&lat, 50.0)), "p90_us": us(percentile(&lat, 90.0)),
                              "p99_us": us(percentile(&lat, 99.0)), "p999_us": us(percentile(&lat, 99.9)),
                              "max_us": us(*lat.last().unwrap_or(&0)), "mean_us": round(mean / 1000.0, 1)}),
                    )
                }
                Err(e) => Err((
                    json!({"workload": "latency", "count": count}),
                    e.to_string(),
                )),
            }
        }
        Workload::Hold {
            conns,
            concurrency,
            size,
            max_hold,
        } => {
            let t0 = Instant::now();
            let held: Arc<Mutex<Vec<Stream>>> =
                Arc::new(Mutex::new(Vec::with_capacity(conns as usize)));
            let claimed = Arc::new(AtomicU64::new(0));
            let errors = Arc::new(AtomicU64::new(0));
            let first_err: Arc<Mutex<Option<String>>> = Arc::new(Mutex::new(None));
            let mut tasks = Vec::new();
            for _ in 0..concurrency.clamp(1, conns.max(1)) {
                let (t, held, claimed, errors, first_err) = (
                    target.clone(),
                    held.clone(),
                    claimed.clone(),
                    errors.clone(),
                    first_err.clone(),
                );
                tasks.push(tokio::spawn(async move {
                    while claimed.fetch_add(1, Relaxed) < conns {
                        match t.echo_once(size).await {
                            Ok(s) => held.lock().unwrap().push(s),
                            Err(e) => {
                                errors.fetch_add(1, Relaxed);
                                first_err.lock().unwrap().get_or_insert(e.to_string());
                            }
                        }
                    }
                }));
            }
            for t in tasks {
                let _ = t.await;
            }
            let setup = t0.elapsed().as_secs_f64();
            let n = held.lock().unwrap().len();
            let errors = errors.load(Relaxed);
            {
                let mut out = io::stdout().lock();
                let _ = writeln!(out, "HELD {n}");
                let _ = out.flush();
            }
            // Hold until told to let go (stdin EOF or a signal), at most max_hold seconds.
            let why = tokio::select! {
                _ = async {
                    // A plain thread watches stdin (tokio's io-std is not among the crate's features).
                    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
                    std::thread::spawn(move || {
                        use std::io::Read;
                        let mut b = [0u8; 256];
                        let mut stdin = io::stdin();
                        while let Ok(n) = stdin.read(&mut b) { if n == 0 { break } }
                        let _ = tx.send(());
                    });
                    let _ = rx.await;
                } => "stdin closed",
                _ = async {
                    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                        Ok(mut s) => { s.recv().await; }
                        Err(_) => std::future::pending::<()>().await,
                    }
                } => "SIGTERM",
                _ = tokio::signal::ctrl_c() => "SIGINT",
                _ = tokio::time::sleep(Duration::from_secs(max_hold)) => "max-hold reached",
            };
            let held_for = t0.elapsed().as_secs_f64() - setup;
            held.lock().unwrap().clear();
            let v = json!({"workload": "hold", "conns": conns, "held": n, "errors": errors,
                           "setup_secs": round(setup, 3), "held_secs": round(held_for, 3), "released_by": why});
            let first = first_err.lock().unwrap().take();
            match first {
                Some(e) if errors > 0 => {
                    Err((v, format!("{errors} connections failed, first: {e}")))
                }
                _ => Ok(v),
            }
        }
    }
}

fn client_config(ca: &PathBuf) -> Result<Arc<rustls::ClientConfig>, String> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).map_err(|e| format!("{}: {e}", ca.display()))? {
        roots
            .add(c.map_err(|e| format!("{}: {e}", ca.display()))?)
            .map_err(|e| e.to_string())?;
    }
    // X25519 only, as the OpenSSL-based peers offer it: the baseline pays what they pay.
    let provider = rustls::crypto::CryptoProvider {
        kx_groups: vec![provider::kx_group::X25519],
        ..provider::default_provider()
    };
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(cfg))
}

fn main() {
    let args = Args::parse();
    let fail = |msg: String| -> ! {
        eprintln!("loadgen: {msg}");
        println!("{}", json!({"error": msg}));
        std::process::exit(1);
    };
    if let Err(e) = common::require_loopback(&args.addr, "--addr") {
        fail(e);
    }
    let tls = if args.tls {
        let ca = args.ca.as_ref().expect("clap: --tls requires --ca");
        let cfg = client_config(ca).unwrap_or_else(|e| fail(e));
        let name =
            ServerName::try_from(args.sni.clone()).unwrap_or_else(|e| fail(format!("--sni: {e}")));
        Some((TlsConnector::from(cfg), name))
    } else {
        None
    };
    let target = Arc::new(Target {
        addr: args.addr,
        tls,
        timeout: Duration::from_secs(args.timeout),
        pattern: Pattern::new(),
    });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads.max(1))
        .enable_all()
        .build()
        .unwrap_or_else(|e| fail(e.to_string()));
    let r = rt.block_on(run(&args, target));
    let (mut v, e) = match r {
        Ok(v) => (v, None),
        Err((v, e)) => (v, Some(e)),
    };
    v["target"] = json!(args.addr.to_string());
    v["tls"] = json!(args.tls);
    if let Some(l) = &args.label {
        v["label"] = json!(l);
    }
    if let Some(e) = &e {
        v["error"] = json!(e);
        eprintln!("loadgen: {e}");
    }
    println!("{v}");
    // Held connections and the stdin reader must not delay the exit.
    rt.shutdown_timeout(Duration::from_millis(100));
    std::process::exit(if e.is_some() { 1 } else { 0 });
}
