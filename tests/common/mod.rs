//! Shared fixtures for the integration tests: certificates (certs), the master stand-in
//! (server, http), the proxy process (proxy) and blocking plaintext clients (here); a real
//! container runtime (podman) and a stand-in for its API (docker_api).
#![allow(dead_code, unused_imports)]

pub mod certs;
pub mod docker_api;
pub mod egress;
pub mod http;
pub mod peers;
pub mod pki;
pub mod podman;
pub mod probes;
pub mod prometheus;
pub mod proxy;
pub mod server;

use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub use certs::{fingerprint, leaf_valid, Ca, Leaf};
pub use probes::{
    cpu_secs, cpu_ticks, eventually, fd_count, figure, metric, rss_kib, scrape_text, status_kib,
    steady, try_wait_until, wait_connections_over, wait_refused, wait_until, Later,
};
pub use proxy::{
    check, check_json, command, q, qp, run_to_exit, Cfg, Proxy, Refusal, ADMIN, CHECK_TIMEOUT,
};
pub use server::{certified, Behavior, ClientAuth, CurrentCert, ServerBuilder, TlsServer};

/// A generous per-read deadline for clients: a stuck test fails instead of hanging.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// A master stand-in with a fresh CA and a leaf valid for `det-master` and 127.0.0.1,
/// `ca.pem` written into `dir`.
pub struct Master {
    pub ca: Ca,
    pub leaf: Leaf,
    pub ca_pem: PathBuf,
    pub server: TlsServer,
}

impl Master {
    pub fn start(dir: &Path, behavior: Behavior) -> Master {
        Master::start_with(dir, |b| b.behavior(behavior))
    }

    /// Like `start`, with the server builder adjusted by `f`.
    pub fn start_with(dir: &Path, f: impl FnOnce(ServerBuilder) -> ServerBuilder) -> Master {
        let ca = Ca::root("Test Master Root CA");
        let leaf = ca.server("det-master", &["det-master", "127.0.0.1"]);
        let ca_pem = certs::write(dir, "ca.pem", &ca.pem());
        let server = f(ServerBuilder::new(vec![leaf.der()], leaf.key_der())).start();
        Master {
            ca,
            leaf,
            ca_pem,
            server,
        }
    }

    /// A config for this master: master_host 127.0.0.1 verified against its IP SAN.
    pub fn cfg(&self) -> Cfg {
        Cfg::new("127.0.0.1", self.server.port()).master_cert(&self.ca_pem)
    }
}

pub fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("dtp-")
        .tempdir()
        .expect("tempdir")
}

/// A plaintext client connection with read/write deadlines set.
pub fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect_timeout(&addr, IO_TIMEOUT)
        .unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    s.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    s.set_nodelay(true).unwrap();
    s
}

/// A TCP connection to `to`, from source address `from` when given (another loopback address
/// such as 127.0.0.2, or [`host_address`], stands for "another host").
pub fn socket_from(from: Option<&str>, to: SocketAddr) -> Option<TcpStream> {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::for_address(to), Type::STREAM, None).ok()?;
    if let Some(ip) = from {
        let ip: IpAddr = ip.parse().unwrap();
        s.bind(&SocketAddr::new(ip, 0).into()).ok()?;
    }
    s.connect_timeout(&to.into(), IO_TIMEOUT).ok()?;
    let s: TcpStream = s.into();
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    s.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    Some(s)
}

/// One of this host's own IPv4 addresses that is not loopback: a client bound to it reaches
/// the proxy's loopback sockets (the packets never leave the host) and is seen as coming from
/// another host. Read from the kernel's local routing table (`/proc/net/fib_trie`: an address
/// line followed by `/32 host LOCAL`). Panics when the host has none, rather than let a test
/// pass untried.
pub fn host_address() -> IpAddr {
    let trie = std::fs::read_to_string("/proc/net/fib_trie").expect("/proc/net/fib_trie");
    let lines: Vec<&str> = trie.lines().collect();
    lines
        .windows(2)
        .filter(|w| w[1].trim() == "/32 host LOCAL")
        .filter_map(|w| w[0].trim().strip_prefix("|-- ")?.parse::<IpAddr>().ok())
        .find(|ip| !ip.is_loopback())
        .expect("this host has no non-loopback IPv4 address to act as another host")
}

/// Writes `data` and reads back exactly as many bytes.
pub fn roundtrip(s: &mut TcpStream, data: &[u8]) -> Vec<u8> {
    s.write_all(data).expect("write to proxy");
    let mut back = vec![0u8; data.len()];
    s.read_exact(&mut back).expect("read echo from proxy");
    back
}

/// Reads until EOF (or reset) and returns what arrived; panics if the connection is
/// still open after `within`.
pub fn read_until_closed(s: &mut impl ReadTimeout, within: Duration) -> Vec<u8> {
    let deadline = Instant::now() + within;
    let mut got = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    wait_until("the connection to close", within, || {
        // A look reads whatever arrives until a read stays dry for `READ_STEP`: the close is
        // seen the moment it comes, and a stream still sending keeps being drained.
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let still_open = || format!("still open, {} bytes received", got.len());
            if left.is_zero() {
                return Err(still_open());
            }
            s.set_deadline(left.min(READ_STEP));
            match s.read(&mut buf) {
                Ok(0) => return Ok(()),
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == ErrorKind::ConnectionReset => return Ok(()),
                Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::TimedOut => {
                    return Err(still_open())
                }
                Err(e) => panic!("read error while waiting for close: {e}"),
            }
        }
    });
    got
}

/// How long one look of a blocking wait (a read, a recv) blocks before the wait loop looks
/// at its deadline again.
pub const READ_STEP: Duration = Duration::from_millis(50);

/// A readable stream whose read deadline can be set.
pub trait ReadTimeout: Read {
    fn set_deadline(&mut self, d: Duration);
}

impl ReadTimeout for TcpStream {
    fn set_deadline(&mut self, d: Duration) {
        self.set_read_timeout(Some(d.max(Duration::from_millis(1))))
            .unwrap();
    }
}

impl ReadTimeout for std::os::unix::net::UnixStream {
    fn set_deadline(&mut self, d: Duration) {
        self.set_read_timeout(Some(d.max(Duration::from_millis(1))))
            .unwrap();
    }
}

/// The ordinary end of an echo exchange: shut down our write side and expect EOF.
pub fn finish(s: &mut TcpStream) {
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let rest = read_until_closed(s, IO_TIMEOUT);
    assert!(rest.is_empty(), "unexpected bytes after FIN: {rest:?}");
}

/// One echo exchange through the proxy: `data` comes back whole and the connection then
/// ends cleanly. Returns the client's local address (to find its access line).
pub fn relays(addr: SocketAddr, data: &[u8]) -> SocketAddr {
    let mut c = connect(addr);
    let local = c.local_addr().unwrap();
    assert_eq!(roundtrip(&mut c, data), data);
    finish(&mut c);
    local
}

/// A client whose connection closes within `within` with nothing relayed, for whatever
/// reason: [`Proxy::refuses`] adds the check of why. Returns the client's local address.
fn closed_unrelayed(addr: SocketAddr, within: Duration) -> SocketAddr {
    let mut c = connect(addr);
    let local = c.local_addr().unwrap();
    let _ = c.write_all(b"ping");
    let got = read_until_closed(&mut c, within);
    assert!(
        got.is_empty(),
        "a refused connection relayed bytes: {got:?}"
    );
    local
}

/// The status of one HTTP/1.1 GET (the admin endpoint); `None` when the connection is refused
/// or closes without an answer.
pub fn http_status(addr: SocketAddr, path: &str) -> Option<u16> {
    let mut s = TcpStream::connect_timeout(&addr, IO_TIMEOUT).ok()?;
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .ok()?;
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out.split(' ').nth(1)?.parse().ok()
}

/// Replaces a file the way operators and tools do: write aside, rename over.
pub fn replace(path: &Path, contents: &str) {
    let tmp = path.with_extension("swap");
    std::fs::write(&tmp, contents).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// A deterministic byte stream (xorshift64), the same for the same seed however it is
/// chunked as long as chunks are multiples of 8 bytes.
pub struct Pattern(u64);

impl Pattern {
    pub fn new(seed: u64) -> Pattern {
        Pattern(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let mut x = self.0;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            self.0 = x;
            chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
        }
    }
}

pub fn sha256(data: &[u8]) -> Vec<u8> {
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data)
        .as_ref()
        .to_vec()
}

/// A string field of a JSON log line ("" when absent).
pub fn field<'a>(v: &'a serde_json::Value, key: &str) -> &'a str {
    v[key].as_str().unwrap_or("")
}
