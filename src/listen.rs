//! Listeners: TCP (v4/v6, IP_FREEBIND), unix sockets and sockets inherited from systemd, bound
//! with socket2; the client-address check and the accept back-off the accept loop
//! (`server::accept`) uses.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::AtomicBool;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use ipnet::IpNet;
use socket2::{Domain, Socket, Type};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};

use crate::config::{needs_allowed_clients, ListenAddr, ListenerConfig};

const BACKLOG: i32 = 1024;

#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error("listener {name:?}: cannot bind {addr}: {source}")]
    Bind {
        name: String,
        addr: String,
        source: io::Error,
    },
    #[error("listener {name:?}: systemd passed no socket named {socket:?} (LISTEN_FDNAMES has: {available})")]
    NoSystemdSocket {
        name: String,
        socket: String,
        available: String,
    },
    #[error("listener {name:?}: the socket systemd passed for {socket:?} is on {addr}, reachable from other hosts; set allowed_clients for it")]
    SystemdNeedsAllowedClients {
        name: String,
        socket: String,
        addr: SocketAddr,
    },
    #[error("listener {name:?}: unix socket {path}: {detail}")]
    Unix {
        name: String,
        path: PathBuf,
        detail: String,
    },
}

impl ListenError {
    /// Configuration mistakes exit 2; a busy port or missing permission exits 1.
    pub fn is_config(&self) -> bool {
        matches!(
            self,
            ListenError::NoSystemdSocket { .. } | ListenError::SystemdNeedsAllowedClients { .. }
        )
    }
}

// === Client streams ===

/// A client connection, TCP or unix.
#[derive(Debug)]
pub enum ClientStream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl AsyncRead for ClientStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientStream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            ClientStream::Unix(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for ClientStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ClientStream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            ClientStream::Unix(s) => Pin::new(s).poll_write(cx, buf),
        }
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ClientStream::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            ClientStream::Unix(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }
    fn is_write_vectored(&self) -> bool {
        true
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientStream::Tcp(s) => Pin::new(s).poll_flush(cx),
            ClientStream::Unix(s) => Pin::new(s).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientStream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            ClientStream::Unix(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// Who connected: an IP client, or a local process on a unix socket.
#[derive(Debug, Clone)]
pub enum Peer {
    Ip(SocketAddr),
    Unix,
}

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Peer::Ip(a) => write!(f, "{a}"),
            Peer::Unix => write!(f, "unix"),
        }
    }
}

// === Bound listeners ===

#[derive(Debug)]
pub enum Socketish {
    Tcp(TcpListener),
    Unix(UnixListener),
}

/// A bound listener: the socket and the facts about it that no reload changes. Everything a
/// reload may change (allowed_clients, alpn, present_client_cert, …) is read from the live
/// state at each accept (`state::ListenerPolicy`), never copied here.
#[derive(Debug)]
pub struct Bound {
    pub socket: Socketish,
    /// The address actually bound, as logged ("127.0.0.1:41234", "unix:/run/x.sock").
    pub local: String,
    /// Reachable only from this host (loopback TCP or a unix socket): the default for
    /// `present_client_cert`, and no `allowed_clients` needed.
    pub host_only: bool,
    /// A unix socket file we created and remove at exit.
    pub unix_path: Option<PathBuf>,
    pub inherited: bool,
    /// Passed to the process that replaced this one: its socket file is that process's now.
    pub handed_over: AtomicBool,
}

impl Bound {
    /// The listening socket's descriptor (to pass it on in an upgrade).
    pub fn raw_fd(&self) -> RawFd {
        match &self.socket {
            Socketish::Tcp(l) => l.as_raw_fd(),
            Socketish::Unix(l) => l.as_raw_fd(),
        }
    }

    pub async fn accept(&self) -> io::Result<(ClientStream, Peer)> {
        match &self.socket {
            Socketish::Tcp(l) => {
                let (s, a) = l.accept().await?;
                let _ = s.set_nodelay(true);
                Ok((ClientStream::Tcp(s), Peer::Ip(a)))
            }
            Socketish::Unix(l) => {
                let (s, _) = l.accept().await?;
                Ok((ClientStream::Unix(s), Peer::Unix))
            }
        }
    }

    /// Applies a unix listener's `mode` and `group` to the socket file we created (a reload
    /// that keeps the path). Sockets systemd passed keep the unit's SocketMode/SocketGroup.
    pub fn set_unix_permissions(&self, lc: &ListenerConfig) -> Result<(), ListenError> {
        let Some(path) = &self.unix_path else {
            return Ok(());
        };
        unix_permissions(lc, path)
    }

    /// The mode and group the socket file has now (to undo a reload that fails later).
    pub fn unix_permissions_now(&self) -> Option<(u32, u32)> {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(self.unix_path.as_ref()?).ok()?;
        Some((m.mode() & 0o7777, m.gid()))
    }

    /// Refuses a policy this socket cannot take: an inherited socket reachable from other
    /// hosts needs `allowed_clients` (the rule validation applies to configured addresses).
    pub fn check_policy(&self, lc: &ListenerConfig) -> Result<(), ListenError> {
        if let (Socketish::Tcp(l), ListenAddr::Systemd(socket)) = (&self.socket, &lc.addr) {
            let addr = l
                .local_addr()
                .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
            if needs_allowed_clients(addr, lc.allowed_clients.as_deref()) {
                return Err(ListenError::SystemdNeedsAllowedClients {
                    name: lc.name.clone(),
                    socket: socket.clone(),
                    addr,
                });
            }
        }
        Ok(())
    }
}

/// Whether `peer` may use a listener with these `allowed_clients`. Unix sockets are guarded by
/// their file mode; `None` means no restriction (only accepted for host-only addresses).
pub fn peer_allowed(allowed: Option<&[IpNet]>, peer: &Peer) -> bool {
    match (peer, allowed) {
        (Peer::Unix, _) | (_, None) => true,
        (Peer::Ip(a), Some(nets)) => client_allowed(nets, a.ip()),
    }
}

/// Whether a client address is in `allowed_clients`. An IPv4 client of a dual-stack socket
/// arrives as an IPv4-mapped IPv6 address and is judged as the IPv4 address it is.
pub fn client_allowed(nets: &[ipnet::IpNet], ip: std::net::IpAddr) -> bool {
    let ip = match ip {
        std::net::IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, std::net::IpAddr::V4),
        v4 => v4,
    };
    nets.iter().any(|n| n.contains(&ip))
}

impl Drop for Bound {
    fn drop(&mut self) {
        if self.handed_over.load(std::sync::atomic::Ordering::SeqCst) {
            return;
        }
        if let Some(p) = &self.unix_path {
            let _ = std::fs::remove_file(p);
        }
    }
}

pub use crate::inherit::Inherited;

fn bind_err(lc: &ListenerConfig, source: io::Error) -> ListenError {
    ListenError::Bind {
        name: lc.name.clone(),
        addr: lc.addr.to_string(),
        source,
    }
}

fn bind_tcp(lc: &ListenerConfig, addr: SocketAddr) -> Result<Bound, ListenError> {
    let domain = if addr.is_ipv6() {
        Domain::IPV6
    } else {
        Domain::IPV4
    };
    let socket = Socket::new(domain, Type::STREAM, None).map_err(|e| bind_err(lc, e))?;
    socket
        .set_reuse_address(true)
        .map_err(|e| bind_err(lc, e))?;
    if addr.is_ipv6() {
        socket.set_only_v6(true).map_err(|e| bind_err(lc, e))?;
        // The address may appear later (a bridge created after we start).
        let _ = socket.set_freebind_v6(true);
    } else {
        let _ = socket.set_freebind_v4(true);
    }
    socket.set_nonblocking(true).map_err(|e| bind_err(lc, e))?;
    socket.bind(&addr.into()).map_err(|e| bind_err(lc, e))?;
    socket.listen(BACKLOG).map_err(|e| bind_err(lc, e))?;
    let std_listener: std::net::TcpListener = socket.into();
    let listener = TcpListener::from_std(std_listener).map_err(|e| bind_err(lc, e))?;
    let local = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|_| addr.to_string());
    Ok(Bound {
        socket: Socketish::Tcp(listener),
        local,
        host_only: addr.ip().is_loopback(),
        unix_path: None,
        inherited: false,
        handed_over: AtomicBool::new(false),
    })
}

fn unix_err(lc: &ListenerConfig, path: &Path, detail: impl Into<String>) -> ListenError {
    ListenError::Unix {
        name: lc.name.clone(),
        path: path.to_path_buf(),
        detail: detail.into(),
    }
}

fn bind_unix(lc: &ListenerConfig, path: &Path) -> Result<Bound, ListenError> {
    use std::os::unix::fs::FileTypeExt;
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(unix_err(
                lc,
                path,
                "exists and is not a socket; refusing to replace it",
            ));
        }
        // A socket file someone still answers on is not stale.
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(unix_err(lc, path, "another process is listening on it"));
        }
        std::fs::remove_file(path)
            .map_err(|e| unix_err(lc, path, format!("cannot remove the stale socket: {e}")))?;
    }
    let listener = UnixListener::bind(path).map_err(|e| bind_err(lc, e))?;
    let bound = Bound {
        socket: Socketish::Unix(listener),
        local: format!("unix:{}", path.display()),
        host_only: true,
        unix_path: Some(path.to_path_buf()),
        inherited: false,
        handed_over: AtomicBool::new(false),
    };
    // On failure `bound` is dropped, which removes the socket file again.
    unix_permissions(lc, path)?;
    Ok(bound)
}

/// The socket file's `mode`, and its `group` (without one, the process's own group, which is
/// what a new socket file gets; so a reload that removes `group:` gives the file back).
fn unix_permissions(lc: &ListenerConfig, path: &Path) -> Result<(), ListenError> {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(lc.mode))
        .map_err(|e| unix_err(lc, path, format!("cannot set mode {:o}: {e}", lc.mode)))?;
    let gid = lc
        .group
        .unwrap_or_else(|| nix::unistd::getegid().as_raw());
    std::os::unix::fs::chown(path, None, Some(gid))
        .map_err(|e| unix_err(lc, path, format!("cannot set group {gid}: {e}")))?;
    Ok(())
}

/// A listening socket handed to this process (by systemd or by the process it replaces), as a
/// tokio listener: TCP with its address, or unix with its path when it has one.
enum Adopted {
    Tcp(TcpListener, SocketAddr),
    Unix(UnixListener, Option<PathBuf>),
}

fn adopt(lc: &ListenerConfig, owned: OwnedFd) -> Result<Adopted, ListenError> {
    let socket = Socket::from(owned);
    socket.set_nonblocking(true).map_err(|e| bind_err(lc, e))?;
    let local = socket.local_addr().map_err(|e| bind_err(lc, e))?;
    if let Some(addr) = local.as_socket() {
        let std_listener: std::net::TcpListener = socket.into();
        let listener = TcpListener::from_std(std_listener).map_err(|e| bind_err(lc, e))?;
        return Ok(Adopted::Tcp(listener, addr));
    }
    let path = local.as_pathname().map(Path::to_path_buf);
    let std_listener: std::os::unix::net::UnixListener = socket.into();
    let listener = UnixListener::from_std(std_listener).map_err(|e| bind_err(lc, e))?;
    Ok(Adopted::Unix(listener, path))
}

fn adopt_systemd(
    lc: &ListenerConfig,
    socket_name: &str,
    inherited: &mut Inherited,
) -> Result<Bound, ListenError> {
    let owned = inherited
        .take_systemd(socket_name)
        .ok_or_else(|| ListenError::NoSystemdSocket {
            name: lc.name.clone(),
            socket: socket_name.to_string(),
            available: inherited.names(),
        })?;
    let bound = match adopt(lc, owned)? {
        Adopted::Tcp(listener, addr) => Bound {
            socket: Socketish::Tcp(listener),
            local: format!("systemd:{socket_name} ({addr})"),
            host_only: addr.ip().is_loopback(),
            unix_path: None,
            inherited: true,
            handed_over: AtomicBool::new(false),
        },
        Adopted::Unix(listener, path) => Bound {
            socket: Socketish::Unix(listener),
            local: format!(
                "systemd:{socket_name} (unix:{})",
                path.map_or_else(|| "unnamed".into(), |p| p.display().to_string())
            ),
            host_only: true,
            unix_path: None,
            inherited: true,
            handed_over: AtomicBool::new(false),
        },
    };
    bound.check_policy(lc)?;
    Ok(bound)
}

/// Takes over the socket a replaced process passed for this listener: same address, and the
/// clients waiting in its backlog with it. A unix socket's file is this process's to keep (and
/// to remove at exit) from now on.
fn adopt_upgraded(lc: &ListenerConfig, owned: OwnedFd) -> Result<Bound, ListenError> {
    match adopt(lc, owned)? {
        Adopted::Tcp(listener, addr) => Ok(Bound {
            socket: Socketish::Tcp(listener),
            local: addr.to_string(),
            host_only: addr.ip().is_loopback(),
            unix_path: None,
            inherited: false,
            handed_over: AtomicBool::new(false),
        }),
        Adopted::Unix(listener, path) => {
            let path =
                path.ok_or_else(|| unix_err(lc, Path::new(""), "the passed socket has no path"))?;
            let bound = Bound {
                socket: Socketish::Unix(listener),
                local: format!("unix:{}", path.display()),
                host_only: true,
                unix_path: Some(path.clone()),
                inherited: false,
                handed_over: AtomicBool::new(false),
            };
            unix_permissions(lc, &path)?;
            Ok(bound)
        }
    }
}

/// Binds (or adopts) one listener. Must run inside the tokio runtime.
pub fn bind(lc: &ListenerConfig, inherited: &mut Inherited) -> Result<Bound, ListenError> {
    if !matches!(lc.addr, ListenAddr::Systemd(_)) {
        if let Some(fd) = inherited.take_upgraded(&crate::inherit::listener_key(&lc.key())) {
            return adopt_upgraded(lc, fd);
        }
    }
    match &lc.addr {
        ListenAddr::Tcp(a) => bind_tcp(lc, *a),
        ListenAddr::Unix(p) => bind_unix(lc, p),
        ListenAddr::Systemd(n) => adopt_systemd(lc, n, inherited),
    }
}

/// Errors that mean "out of something": wait before accepting again instead of spinning.
pub fn is_resource_exhaustion(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(nix::libc::EMFILE)
            | Some(nix::libc::ENFILE)
            | Some(nix::libc::ENOBUFS)
            | Some(nix::libc::ENOMEM)
    )
}

/// Back-off after an accept error: 10 ms doubling to 1 s, reset on success.
#[derive(Debug)]
pub struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            next: Duration::from_millis(10),
        }
    }
}

impl Backoff {
    pub fn reset(&mut self) {
        self.next = Duration::from_millis(10);
    }
    pub fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(Duration::from_secs(1));
        d
    }
}
