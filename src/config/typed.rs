//! The typed configuration every other module reads: validated once, never a raw string.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;

pub(crate) use crate::identity::selector::Selectors;

#[derive(Debug, Clone)]
pub struct Config {
    pub master: MasterConfig,
    pub tls: TlsSettings,
    pub listeners: Vec<ListenerConfig>,
    pub timeouts: Timeouts,
    pub max_connections: usize,
    pub admin: Option<AdminConfig>,
    pub log: LogConfig,
    /// `upstream_proxy` and `upstream_no_proxy`.
    pub egress: crate::egress::Egress,
    /// `upstream.*`: the pool of pre-connected sessions.
    pub preconnect: Preconnect,
    /// `identity.container_api`: the container runtime's API socket, when it is to be asked.
    pub container_api: Option<PathBuf>,
    /// The proxy's own file, when one was read (watched for changes).
    pub config_file: Option<PathBuf>,
    /// The imported agent.yaml, when one was read.
    pub agent_config: Option<PathBuf>,
    /// Every key's merged value (`listeners[0].alpn` → `"auto"`), to say what a reload changed.
    pub keys: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MasterConfig {
    pub host: String,
    pub port: u16,
    /// Where `port` came from, for messages.
    pub(crate) port_source: String,
}

impl MasterConfig {
    /// The master's own port when none is given: 8443 with TLS, 8080 without (what `DET_MASTER`
    /// without a port and an unset `master_port` both mean).
    pub(crate) fn default_port(tls: bool) -> u16 {
        if tls {
            8443
        } else {
            8080
        }
    }

    pub fn ip(&self) -> Option<IpAddr> {
        crate::host::parse_host_ip(&self.host)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    pub enabled: bool,
    pub skip_verify: bool,
    pub master_cert: Option<PathBuf>,
    pub master_cert_name: Option<String>,
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
    /// Fingerprints one certificate of the master's chain must have, in `trust`'s form
    /// (lower-case hex pairs joined by `:`). Empty: no pin.
    pub master_cert_sha256: Vec<String>,
    /// Certificate revocation lists checked against the master's chain.
    pub crl: Vec<PathBuf>,
    pub post_quantum: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ListenAddr {
    Tcp(SocketAddr),
    Unix(PathBuf),
    Systemd(String),
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenAddr::Tcp(a) => write!(f, "{a}"),
            ListenAddr::Unix(p) => write!(f, "unix:{}", p.display()),
            ListenAddr::Systemd(n) => write!(f, "systemd:{n}"),
        }
    }
}

impl ListenAddr {
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if let Some(path) = s.strip_prefix("unix:") {
            if path.is_empty() || !path.starts_with('/') {
                return Err(format!(
                    "{s:?}: a unix socket needs an absolute path (unix:/run/x.sock)"
                ));
            }
            return Ok(ListenAddr::Unix(PathBuf::from(path)));
        }
        if let Some(name) = s.strip_prefix("systemd:") {
            if name.is_empty() || name.contains(':') {
                return Err(format!(
                    "{s:?}: systemd:NAME needs the socket's FileDescriptorName"
                ));
            }
            return Ok(ListenAddr::Systemd(name.to_string()));
        }
        if let Ok(a) = s.parse::<SocketAddr>() {
            return Ok(ListenAddr::Tcp(a));
        }
        if let Some(port) = s.strip_prefix("localhost:") {
            if let Ok(p) = port.parse::<u16>() {
                return Ok(ListenAddr::Tcp(SocketAddr::new(
                    Ipv4Addr::LOCALHOST.into(),
                    p,
                )));
            }
        }
        Err(format!(
            "{s:?} is not a listen address: write HOST:PORT with an IP (127.0.0.1:8080, [::1]:8080), unix:/path or systemd:NAME"
        ))
    }

    /// Whether only this host can reach the address (loopback TCP and unix sockets); `None`
    /// for a socket systemd passes, whose reach only the socket itself tells.
    pub(crate) fn host_only(&self) -> Option<bool> {
        match self {
            ListenAddr::Tcp(a) => Some(a.ip().is_loopback()),
            ListenAddr::Unix(_) => Some(true),
            ListenAddr::Systemd(_) => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AlpnPolicy {
    /// HTTP/2 connection preface → `h2`, anything else → `http/1.1`.
    Auto,
    None,
    List(Vec<Vec<u8>>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerConfig {
    pub name: String,
    pub addr: ListenAddr,
    /// `None`: no restriction (only accepted for local addresses).
    pub allowed_clients: Option<Vec<IpNet>>,
    pub mode: u32,
    pub group: Option<u32>,
    pub alpn: AlpnPolicy,
    /// As configured; `None` when unset: `present_client_cert_for` decides by the socket's reach.
    pub present_client_cert: Option<PresentClientCert>,
    pub tls_passthrough: bool,
    /// This listener's own cap inside the global `max_connections`; `None`: only the global one.
    pub max_connections: Option<usize>,
    /// `None`: every client the address rules let in; otherwise only peers a selector matches.
    pub allowed_peers: Option<Selectors>,
}

/// `listeners[].present_client_cert`: to whom the agent's client certificate is presented.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PresentClientCert {
    Never,
    Always,
    /// Only to the peers a selector matches.
    Peers(Selectors),
}

impl PresentClientCert {
    /// The default when `present_client_cert` is unset: only a socket no other host can reach
    /// presents the agent's certificate.
    fn by_reach(host_only: bool) -> PresentClientCert {
        if host_only {
            PresentClientCert::Always
        } else {
            PresentClientCert::Never
        }
    }
}

/// Whether two TCP listening sockets would take the same clients, so the second cannot bind:
/// the same port (not 0) and the same address, or one a wildcard covering the other. `[::]` is
/// bound dual-stack (`listen::tcp_listener`), so it covers every IPv4 address too.
pub(crate) fn tcp_overlaps(a: SocketAddr, b: SocketAddr) -> bool {
    let covers = |w: SocketAddr, x: SocketAddr| {
        w.ip().is_unspecified() && (w.is_ipv6() || x.is_ipv4())
    };
    a.port() == b.port() && a.port() != 0 && (a.ip() == b.ip() || covers(a, b) || covers(b, a))
}

/// The one rule for who reaches a TCP socket: one other hosts can reach needs a non-empty
/// `allowed_clients`. Validation applies it to the configured addresses (listeners and admin),
/// `listen/` to a socket systemd passed (whose address only the socket knows).
pub(crate) fn needs_allowed_clients(addr: SocketAddr, allowed_clients: Option<&[IpNet]>) -> bool {
    !addr.ip().is_loopback() && allowed_clients.is_none_or(<[IpNet]>::is_empty)
}

impl fmt::Display for PresentClientCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PresentClientCert::Never => write!(f, "false"),
            PresentClientCert::Always => write!(f, "true"),
            PresentClientCert::Peers(s) => write!(f, "{s}"),
        }
    }
}

/// What identifies a listener across reloads: its address, so a reload that keeps the address
/// keeps the socket even under a new name. A TCP address with port 0 means "any free port"
/// and may appear more than once, so such a listener is identified by its name as well.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ListenerKey {
    Addr(ListenAddr),
    AnyPort(SocketAddr, String),
}

impl ListenerConfig {
    /// To whom the agent's certificate is presented: the one place the default is decided.
    /// The setting wins; unset, only a socket no other host can reach presents it. `reach`
    /// is what the bound socket says (`Bound::host_only`); without a socket, the address
    /// tells, except a systemd socket's (`None`: not known before systemd passes it).
    pub fn present_client_cert_for(&self, reach: Option<bool>) -> Option<PresentClientCert> {
        match &self.present_client_cert {
            Some(p) => Some(p.clone()),
            None => reach
                .or_else(|| self.addr.host_only())
                .map(PresentClientCert::by_reach),
        }
    }

    pub fn key(&self) -> ListenerKey {
        match &self.addr {
            ListenAddr::Tcp(a) if a.port() == 0 => ListenerKey::AnyPort(*a, self.name.clone()),
            a => ListenerKey::Addr(a.clone()),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    pub connect: Duration,
    pub handshake: Duration,
    pub idle: Duration,
    pub close: Duration,
    pub shutdown: Duration,
}

/// `upstream.preconnect` and `upstream.preconnect_max_idle`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Preconnect {
    /// Verified sessions kept ready per ALPN choice clients use; 0: none.
    pub size: usize,
    /// How long a ready session may wait for a client before it is replaced.
    pub max_idle: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminConfig {
    pub listen: SocketAddr,
    pub allowed_clients: Option<Vec<IpNet>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    pub format: LogFormat,
    pub level: String,
    pub access: bool,
}
