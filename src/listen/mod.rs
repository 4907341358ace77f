//! Listening sockets: TCP (v4/v6, IP_FREEBIND) for the listeners and the admin endpoint alike,
//! unix sockets and sockets inherited from systemd, each a [`Bound`]; the client-address check.
//! `accept` holds the accept step both accept loops run, `stream` what they hand on.

mod accept;
mod stream;

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use ipnet::IpNet;
use socket2::{Domain, Socket, Type};
use tokio::net::{TcpListener, UnixListener};

use crate::config::{needs_allowed_clients, ListenAddr, ListenerConfig};

pub(crate) use accept::{accept_or_back_off, Accept, Backoff};
pub(crate) use stream::{ClientStream, Peer};

/// Clients the kernel queues on a listening socket before we accept them (capped by
/// `net.core.somaxconn`). Every limit here (`max_connections`, a listener's own, the admin
/// endpoint's) makes clients wait in this queue rather than be refused, so it is the same
/// generous size for every socket, the admin endpoint's included.
const BACKLOG: i32 = 1024;

#[derive(Debug, thiserror::Error)]
pub(crate) enum ListenError {
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
    pub(crate) fn is_config(&self) -> bool {
        matches!(
            self,
            ListenError::NoSystemdSocket { .. } | ListenError::SystemdNeedsAllowedClients { .. }
        )
    }
}

// === Bound listeners ===

#[derive(Debug)]
pub(crate) enum Socketish {
    Tcp(TcpListener),
    Unix(UnixListener),
}

/// A bound listener: the socket and the facts about it that no reload changes. Everything a
/// reload may change (allowed_clients, alpn, present_client_cert, …) is read from the live
/// state at each accept (`state::ListenerPolicy`), never copied here.
#[derive(Debug)]
pub(crate) struct Bound {
    pub(crate) socket: Socketish,
    /// The address actually bound, as logged ("127.0.0.1:41234", "unix:/run/x.sock").
    pub(crate) local: String,
    /// Reachable only from this host (loopback TCP or a unix socket): the default for
    /// `present_client_cert`, and no `allowed_clients` needed.
    pub(crate) host_only: bool,
    /// A unix socket file we created and remove at exit.
    pub(crate) unix_path: Option<PathBuf>,
    pub(crate) inherited: bool,
    /// Passed to the process that replaced this one: its socket file is that process's now.
    pub(crate) handed_over: AtomicBool,
}

/// Where a listening socket came from, which decides how it is named in logs and who owns its
/// file: ours (bound here, or passed on by the process this one replaced) or systemd's.
#[derive(Clone, Copy)]
enum Origin<'a> {
    Ours,
    Systemd(&'a str),
}

impl Bound {
    /// A TCP listener on `addr`, reachable from this host only when that is loopback.
    fn tcp(listener: TcpListener, addr: SocketAddr, origin: Origin<'_>) -> Bound {
        let local = match origin {
            Origin::Ours => addr.to_string(),
            Origin::Systemd(name) => format!("systemd:{name} ({addr})"),
        };
        Bound::new(
            Socketish::Tcp(listener),
            local,
            addr.ip().is_loopback(),
            None,
            origin,
        )
    }

    /// A unix listener on `path` (`None`: an unnamed socket). The file of one of ours is
    /// removed at exit; systemd's belongs to its socket unit.
    fn unix(listener: UnixListener, path: Option<PathBuf>, origin: Origin<'_>) -> Bound {
        let shown = path
            .as_ref()
            .map_or_else(|| "unnamed".into(), |p| p.display().to_string());
        let (local, unix_path) = match origin {
            Origin::Ours => (format!("unix:{shown}"), path),
            Origin::Systemd(name) => (format!("systemd:{name} (unix:{shown})"), None),
        };
        Bound::new(Socketish::Unix(listener), local, true, unix_path, origin)
    }

    fn new(
        socket: Socketish,
        local: String,
        host_only: bool,
        unix_path: Option<PathBuf>,
        origin: Origin<'_>,
    ) -> Bound {
        Bound {
            socket,
            local,
            host_only,
            unix_path,
            inherited: matches!(origin, Origin::Systemd(_)),
            handed_over: AtomicBool::new(false),
        }
    }

    /// The listening socket's descriptor (to pass it on in an upgrade).
    pub(crate) fn raw_fd(&self) -> RawFd {
        match &self.socket {
            Socketish::Tcp(l) => l.as_raw_fd(),
            Socketish::Unix(l) => l.as_raw_fd(),
        }
    }

    /// Applies a unix listener's `mode` and `group` to the socket file we created (a reload
    /// that keeps the path). Sockets systemd passed keep the unit's SocketMode/SocketGroup.
    pub(crate) fn set_unix_permissions(&self, lc: &ListenerConfig) -> Result<(), ListenError> {
        let Some(path) = &self.unix_path else {
            return Ok(());
        };
        unix_permissions(lc, path)
    }

    /// The mode and group the socket file has now (to undo a reload that fails later).
    pub(crate) fn unix_permissions_now(&self) -> Option<(u32, u32)> {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(self.unix_path.as_ref()?).ok()?;
        Some((m.mode() & 0o7777, m.gid()))
    }

    /// Refuses a policy this socket cannot take: an inherited socket reachable from other
    /// hosts needs `allowed_clients` (the rule validation applies to configured addresses).
    pub(crate) fn check_policy(&self, lc: &ListenerConfig) -> Result<(), ListenError> {
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
pub(crate) fn peer_allowed(allowed: Option<&[IpNet]>, peer: &Peer) -> bool {
    match (peer, allowed) {
        (Peer::Unix, _) | (_, None) => true,
        (Peer::Ip(a), Some(nets)) => client_allowed(nets, a.ip()),
    }
}

/// Whether a client address is in `allowed_clients`. An IPv4 client of a dual-stack socket
/// arrives as an IPv4-mapped IPv6 address and is judged as the IPv4 address it is.
pub(crate) fn client_allowed(nets: &[ipnet::IpNet], ip: std::net::IpAddr) -> bool {
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

/// Binds a listening TCP socket: every one is made here, the listeners' and the admin
/// endpoint's, with the same options.
/// - SO_REUSEADDR: a restarted proxy binds while its predecessor's connections linger.
/// - IPv6 sockets are dual-stack (IPV6_V6ONLY off): `[::]` takes IPv4 clients too, as
///   IPv4-mapped addresses that [`client_allowed`] judges as the IPv4 addresses they are. A
///   socket systemd passes is dual-stack by default as well, so bound and adopted sockets
///   behave alike. For any other IPv6 address the option changes nothing.
/// - IP_FREEBIND (best effort): the address may appear later (a bridge created after we start).
/// - Non-blocking, for tokio, with [`BACKLOG`]. Must run inside the tokio runtime.
pub(crate) fn tcp_listener(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(false)?;
        let _ = socket.set_freebind_v6(true);
    } else {
        let _ = socket.set_freebind_v4(true);
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    TcpListener::from_std(socket.into())
}

fn bind_tcp(lc: &ListenerConfig, addr: SocketAddr) -> Result<Bound, ListenError> {
    let listener = tcp_listener(addr).map_err(|e| bind_err(lc, e))?;
    let local = listener.local_addr().unwrap_or(addr);
    Ok(Bound::tcp(listener, local, Origin::Ours))
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
    let bound = Bound::unix(listener, Some(path.to_path_buf()), Origin::Ours);
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
    let origin = Origin::Systemd(socket_name);
    let bound = match adopt(lc, owned)? {
        Adopted::Tcp(listener, addr) => Bound::tcp(listener, addr, origin),
        Adopted::Unix(listener, path) => Bound::unix(listener, path, origin),
    };
    bound.check_policy(lc)?;
    Ok(bound)
}

/// Takes over the socket a replaced process passed for this listener: same address, and the
/// clients waiting in its backlog with it. A unix socket's file is this process's to keep (and
/// to remove at exit) from now on.
fn adopt_upgraded(lc: &ListenerConfig, owned: OwnedFd) -> Result<Bound, ListenError> {
    match adopt(lc, owned)? {
        Adopted::Tcp(listener, addr) => Ok(Bound::tcp(listener, addr, Origin::Ours)),
        Adopted::Unix(listener, path) => {
            let path =
                path.ok_or_else(|| unix_err(lc, Path::new(""), "the passed socket has no path"))?;
            // On failure `bound` is dropped, which removes the socket file, as for one we bind.
            let bound = Bound::unix(listener, Some(path.clone()), Origin::Ours);
            unix_permissions(lc, &path)?;
            Ok(bound)
        }
    }
}

/// Binds (or adopts) one listener. Must run inside the tokio runtime.
pub(crate) fn bind(lc: &ListenerConfig, inherited: &mut Inherited) -> Result<Bound, ListenError> {
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

impl Accept for Bound {
    type Client = (ClientStream, Peer);

    async fn accept(&self) -> io::Result<(ClientStream, Peer)> {
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
}
