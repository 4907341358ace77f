//! `tlssink`: the stand-in master of the benchmark harness.
//!
//! A rustls TLS server that every proxy under test talks to, so they all meet the same peer:
//! TLS 1.3 and 1.2, one cipher suite (TLS13_AES_128_GCM_SHA256; for TLS 1.2
//! ECDHE-ECDSA-AES128-GCM-SHA256), one key exchange group: X25519, which every peer offers first,
//! so nobody pays for a HelloRetryRequest or a post-quantum key exchange the others do not make
//! (P-256 is accepted too, for socat 1.7.4, which offers nothing else; the counters say who
//! used which).
//! Session resumption (TLS 1.3 tickets, TLS 1.2 session IDs and tickets) is on for `--listen`
//! and off for `--listen-no-resume`; one process may serve both.
//!
//! Each connection's first plaintext byte selects echo, sink or source mode: see
//! `benches/common/mod.rs`. `--stats-listen` serves the counters as one JSON line per plaintext
//! connection and then resets them (read-and-clear), so the harness can see how many handshakes
//! each proxy resumed.
//!
//! ```text
//! tlssink --gen DIR --gen-only                       # write DIR/{ca,cert,key}.pem and exit
//! tlssink --cert DIR/cert.pem --key DIR/key.pem --listen 127.0.0.1:0 --listen-no-resume 127.0.0.1:0 --stats-listen 127.0.0.1:0
//! ```
//! Once listening it prints one JSON line on stdout with the bound addresses.

mod common;

use std::io::{self, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use common::{Pattern, CMD_ECHO, CMD_SINK, CMD_SOURCE, MISMATCH_FLAG};
use rustls::crypto::aws_lc_rs as provider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{NoServerSessionStorage, ServerSessionMemoryCache};
use rustls::{HandshakeKind, ProtocolVersion, ServerConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio_rustls::TlsAcceptor;

#[derive(Parser, Debug)]
#[command(about = "TLS echo/sink/source server for the det-tls-proxy benchmark harness")]
struct Args {
    /// Generate a CA and a leaf certificate for --name, write DIR/ca.pem, DIR/cert.pem and
    /// DIR/key.pem, and serve with them.
    #[arg(long, value_name = "DIR")]
    gen: Option<PathBuf>,
    /// With --gen: write the files and exit.
    #[arg(long, requires = "gen")]
    gen_only: bool,
    /// DNS name of the generated leaf certificate.
    #[arg(long, default_value = "bench-master")]
    name: String,
    /// PEM certificate chain (leaf first).
    #[arg(long, conflicts_with = "gen", requires = "key")]
    cert: Option<PathBuf>,
    /// PEM private key.
    #[arg(long, conflicts_with = "gen", requires = "cert")]
    key: Option<PathBuf>,
    /// TLS listener with session resumption (tickets and session IDs).
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// TLS listener with session resumption off.
    #[arg(long)]
    listen_no_resume: Option<SocketAddr>,
    /// Plaintext counters endpoint: one JSON line per connection, then the counters reset.
    #[arg(long)]
    stats_listen: Option<SocketAddr>,
    /// Runtime worker threads.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Handshake and per-read/write timeout in seconds (bounds every connection's life while
    /// it makes no progress, except idle echo connections, which wait for their client).
    #[arg(long, default_value_t = 10)]
    timeout: u64,
}

// === counters ===

const NAMES: &[&str] = &[
    "accepted",
    "handshakes",
    "handshake_errors",
    "full",
    "full_hrr",
    "resumed",
    "tls13",
    "tls12",
    "aes128gcm",
    "other_suite",
    "x25519",
    "p256",
    "other_group",
    "echo",
    "sink",
    "source",
    "bad_command",
    "mismatches",
    "eof_without_close_notify",
    "io_errors",
    "bytes_in",
    "bytes_out",
];

#[derive(Clone, Copy)]
#[repr(usize)]
enum C {
    Accepted,
    Handshakes,
    HandshakeErrors,
    Full,
    FullHrr,
    Resumed,
    Tls13,
    Tls12,
    Aes128Gcm,
    OtherSuite,
    X25519,
    P256,
    OtherGroup,
    Echo,
    Sink,
    Source,
    BadCommand,
    Mismatches,
    EofWithoutCloseNotify,
    IoErrors,
    BytesIn,
    BytesOut,
}

struct Counters {
    v: Vec<AtomicU64>,
    active: AtomicU64,
    errors_logged: AtomicU64,
}

impl Counters {
    fn new() -> Self {
        Counters {
            v: NAMES.iter().map(|_| AtomicU64::new(0)).collect(),
            active: AtomicU64::new(0),
            errors_logged: AtomicU64::new(0),
        }
    }
    fn add(&self, c: C, n: u64) {
        self.v[c as usize].fetch_add(n, Relaxed);
    }
    fn take_json(&self) -> serde_json::Value {
        let mut m = serde_json::Map::new();
        for (i, name) in NAMES.iter().enumerate() {
            m.insert((*name).into(), self.v[i].swap(0, Relaxed).into());
        }
        m.insert("active".into(), self.active.load(Relaxed).into());
        serde_json::Value::Object(m)
    }
    /// The first few errors go to stderr; the rest are only counted.
    fn log(&self, what: &str, e: &dyn std::fmt::Display) {
        if self.errors_logged.fetch_add(1, Relaxed) < 20 {
            eprintln!("tlssink: {what}: {e}");
        }
    }
}

// === certificates ===

fn generate(dir: &Path, name: &str) -> Result<(), String> {
    use rcgen::{
        BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose,
        IsCa, KeyPair, KeyUsagePurpose,
    };
    let e = |e: rcgen::Error| e.to_string();
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;

    let ca_key = KeyPair::generate().map_err(e)?;
    let mut p = CertificateParams::new(Vec::<String>::new()).map_err(e)?;
    p.distinguished_name = DistinguishedName::new();
    p.distinguished_name
        .push(DnType::CommonName, "det-tls-proxy bench CA");
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    p.not_before = rcgen::date_time_ymd(2020, 1, 1);
    p.not_after = rcgen::date_time_ymd(2099, 12, 31);
    let ca = p.self_signed(&ca_key).map_err(e)?;

    let key = KeyPair::generate().map_err(e)?;
    let mut p = CertificateParams::new(vec![name.to_string()]).map_err(e)?;
    p.distinguished_name = DistinguishedName::new();
    p.distinguished_name.push(DnType::CommonName, name);
    p.is_ca = IsCa::ExplicitNoCa;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    p.not_before = rcgen::date_time_ymd(2020, 1, 1);
    p.not_after = rcgen::date_time_ymd(2099, 12, 31);
    let leaf = p.signed_by(&key, &ca, &ca_key).map_err(e)?;

    let w = |f: &str, s: String| {
        let path = dir.join(f);
        std::fs::write(&path, s).map_err(|e| format!("{}: {e}", path.display()))
    };
    w("ca.pem", ca.pem())?;
    w("cert.pem", leaf.pem())?;
    w("key.pem", key.serialize_pem())?;
    Ok(())
}

fn server_config(cert: &Path, key: &Path, resume: bool) -> Result<Arc<ServerConfig>, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| format!("{}: {e}", cert.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: {e}", cert.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no certificate", cert.display()));
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| format!("{}: {e}", key.display()))?;

    let base = provider::default_provider();
    let provider = rustls::crypto::CryptoProvider {
        cipher_suites: vec![
            provider::cipher_suite::TLS13_AES_128_GCM_SHA256,
            provider::cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
            provider::cipher_suite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
        ],
        // X25519 first; P-256 only for clients offering nothing else (socat 1.7.4 pins its
        // client to P-256 through SSL_CTX_set_tmp_ecdh).
        kx_groups: vec![provider::kx_group::X25519, provider::kx_group::SECP256R1],
        ..base
    };
    let mut cfg = ServerConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| e.to_string())?;
    if resume {
        cfg.session_storage = ServerSessionMemoryCache::new(65_536);
        cfg.ticketer = provider::Ticketer::new().map_err(|e| e.to_string())?;
        cfg.send_tls13_tickets = 2;
    } else {
        cfg.session_storage = Arc::new(NoServerSessionStorage {});
        cfg.send_tls13_tickets = 0;
    }
    Ok(Arc::new(cfg))
}

// === connections ===

struct Shared {
    counters: Counters,
    pattern: Pattern,
    timeout: Duration,
}

async fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    common::require_loopback(&addr, "listen address")
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let s = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    s.set_reuseaddr(true)?;
    s.bind(addr)?;
    s.listen(4096)
}

async fn serve_tls(listener: TcpListener, acceptor: TlsAcceptor, shared: Arc<Shared>) {
    loop {
        match listener.accept().await {
            Ok((tcp, _)) => {
                let acceptor = acceptor.clone();
                let shared = shared.clone();
                tokio::spawn(async move {
                    shared.counters.add(C::Accepted, 1);
                    shared.counters.active.fetch_add(1, Relaxed);
                    if let Err(e) = connection(tcp, acceptor, &shared).await {
                        shared.counters.add(C::IoErrors, 1);
                        shared.counters.log("connection", &e);
                    }
                    shared.counters.active.fetch_sub(1, Relaxed);
                });
            }
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                shared.counters.log("accept", &e);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

async fn with_timeout<T>(
    d: Duration,
    f: impl std::future::Future<Output = io::Result<T>>,
) -> io::Result<T> {
    match tokio::time::timeout(d, f).await {
        Ok(r) => r,
        Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "timed out")),
    }
}

/// Reads, treating a TCP EOF without close_notify as an ordinary EOF (counted): some proxies
/// half-close with a bare FIN.
async fn read_eofok<R: tokio::io::AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut [u8],
    shared: &Shared,
) -> io::Result<usize> {
    match r.read(buf).await {
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
            shared.counters.add(C::EofWithoutCloseNotify, 1);
            Ok(0)
        }
        r => r,
    }
}

async fn connection(tcp: TcpStream, acceptor: TlsAcceptor, shared: &Shared) -> io::Result<()> {
    let c = &shared.counters;
    tcp.set_nodelay(true)?;
    let mut tls = match with_timeout(shared.timeout, acceptor.accept(tcp)).await {
        Ok(t) => t,
        Err(e) => {
            c.add(C::HandshakeErrors, 1);
            c.log("handshake", &e);
            return Ok(());
        }
    };
    {
        let (_, conn) = tls.get_ref();
        c.add(C::Handshakes, 1);
        match conn.handshake_kind() {
            Some(HandshakeKind::Resumed) => c.add(C::Resumed, 1),
            Some(HandshakeKind::FullWithHelloRetryRequest) => c.add(C::FullHrr, 1),
            _ => c.add(C::Full, 1),
        }
        match conn.protocol_version() {
            Some(ProtocolVersion::TLSv1_3) => c.add(C::Tls13, 1),
            _ => c.add(C::Tls12, 1),
        }
        match conn.negotiated_cipher_suite().map(|s| s.suite()) {
            Some(rustls::CipherSuite::TLS13_AES_128_GCM_SHA256) => c.add(C::Aes128Gcm, 1),
            _ => c.add(C::OtherSuite, 1),
        }
        match conn.negotiated_key_exchange_group().map(|g| g.name()) {
            Some(rustls::NamedGroup::X25519) => c.add(C::X25519, 1),
            Some(rustls::NamedGroup::secp256r1) => c.add(C::P256, 1),
            _ => c.add(C::OtherGroup, 1),
        }
    }

    let mut cmd = [0u8; 1];
    // An echo client may open and wait; everything else has a deadline.
    if read_eofok(&mut tls, &mut cmd, shared).await? == 0 {
        return Ok(());
    }
    let mut buf = vec![0u8; 64 * 1024];
    match cmd[0] {
        CMD_ECHO => {
            c.add(C::Echo, 1);
            loop {
                // Idle echo connections (the memory workload) wait for their client, however long.
                let n = read_eofok(&mut tls, &mut buf, shared).await?;
                if n == 0 {
                    break;
                }
                c.add(C::BytesIn, n as u64);
                with_timeout(shared.timeout, async {
                    tls.write_all(&buf[..n]).await?;
                    tls.flush().await
                })
                .await?;
                c.add(C::BytesOut, n as u64);
            }
            with_timeout(shared.timeout, tls.shutdown()).await?;
        }
        CMD_SINK => {
            c.add(C::Sink, 1);
            let mut count: u64 = 0;
            let mut mismatch: Option<u64> = None;
            loop {
                let n =
                    with_timeout(shared.timeout, read_eofok(&mut tls, &mut buf, shared)).await?;
                if n == 0 {
                    break;
                }
                if mismatch.is_none() {
                    mismatch = shared.pattern.check(count, &buf[..n]);
                }
                count += n as u64;
                c.add(C::BytesIn, n as u64);
            }
            let reply = match mismatch {
                Some(off) => {
                    c.add(C::Mismatches, 1);
                    eprintln!("tlssink: sink: byte {off} differs from the pattern ({count} bytes received)");
                    MISMATCH_FLAG | off
                }
                None => count,
            };
            with_timeout(shared.timeout, async {
                tls.write_all(&reply.to_be_bytes()).await?;
                tls.flush().await?;
                tls.shutdown().await
            })
            .await?;
        }
        CMD_SOURCE => {
            c.add(C::Source, 1);
            let mut n8 = [0u8; 8];
            with_timeout(shared.timeout, tls.read_exact(&mut n8)).await?;
            let total = u64::from_be_bytes(n8);
            let mut sent: u64 = 0;
            const CHUNK: usize = 64 * 1024;
            while sent < total {
                let n = ((total - sent) as usize).min(CHUNK);
                let data = shared.pattern.window(sent, n);
                with_timeout(shared.timeout, tls.write_all(data)).await?;
                sent += n as u64;
                c.add(C::BytesOut, n as u64);
            }
            with_timeout(shared.timeout, async {
                tls.flush().await?;
                tls.shutdown().await
            })
            .await?;
            // Wait for the client's EOF, so unread bytes never turn our close into a reset.
            loop {
                let n =
                    with_timeout(shared.timeout, read_eofok(&mut tls, &mut buf, shared)).await?;
                if n == 0 {
                    break;
                }
            }
        }
        other => {
            c.add(C::BadCommand, 1);
            c.log("command", &format!("unknown command byte {other:#04x}"));
        }
    }
    Ok(())
}

async fn serve_stats(listener: TcpListener, by_listener: Vec<(&'static str, Arc<Shared>)>) {
    loop {
        let Ok((mut s, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        let mut m = serde_json::Map::new();
        for (name, shared) in &by_listener {
            m.insert((*name).into(), shared.counters.take_json());
        }
        let line = format!("{}\n", serde_json::Value::Object(m));
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            let _ = s.write_all(line.as_bytes()).await;
            let _ = s.shutdown().await;
        })
        .await;
    }
}

fn main() {
    let args = Args::parse();
    if let Err(e) = run(args) {
        eprintln!("tlssink: {e}");
        std::process::exit(1);
    }
}

fn run(args: Args) -> Result<(), String> {
    let (cert, key) = if let Some(dir) = &args.gen {
        generate(dir, &args.name)?;
        if args.gen_only {
            return Ok(());
        }
        (dir.join("cert.pem"), dir.join("key.pem"))
    } else {
        match (&args.cert, &args.key) {
            (Some(c), Some(k)) => (c.clone(), k.clone()),
            _ => return Err("give --cert and --key, or --gen DIR".into()),
        }
    };
    if args.listen.is_none() && args.listen_no_resume.is_none() {
        return Err("nothing to serve: give --listen and/or --listen-no-resume".into());
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads.max(1))
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(async move {
        let mut ready = serde_json::Map::new();
        let mut by_listener = Vec::new();
        for (name, addr, resume) in [
            ("listen", args.listen, true),
            ("listen_no_resume", args.listen_no_resume, false),
        ] {
            let Some(addr) = addr else { continue };
            let acceptor = TlsAcceptor::from(server_config(&cert, &key, resume)?);
            let l = bind(addr).await.map_err(|e| format!("{addr}: {e}"))?;
            ready.insert(
                name.into(),
                l.local_addr()
                    .map_err(|e| e.to_string())?
                    .to_string()
                    .into(),
            );
            let shared = Arc::new(Shared {
                counters: Counters::new(),
                pattern: Pattern::new(),
                timeout: Duration::from_secs(args.timeout),
            });
            by_listener.push((if resume { "resume" } else { "no_resume" }, shared.clone()));
            tokio::spawn(serve_tls(l, acceptor, shared));
        }
        if let Some(addr) = args.stats_listen {
            let l = bind(addr).await.map_err(|e| format!("{addr}: {e}"))?;
            ready.insert(
                "stats".into(),
                l.local_addr()
                    .map_err(|e| e.to_string())?
                    .to_string()
                    .into(),
            );
            tokio::spawn(serve_stats(l, by_listener));
        }
        {
            let mut out = io::stdout().lock();
            let _ = writeln!(out, "{}", serde_json::Value::Object(ready));
            let _ = out.flush();
        }
        // Serve until killed (SIGTERM/SIGINT end the process with the default disposition).
        std::future::pending::<Result<(), String>>().await
    })
}
