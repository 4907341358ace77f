//! Who is on the other end of a local connection, as far as the kernel (and, when configured,
//! the container runtime) can tell, found before anything is dialled: unix clients by
//! `SO_PEERCRED` and their process's cgroup, TCP clients of this network namespace in the
//! kernel's socket tables, TCP clients of other namespaces through the container runtime.
//!
//! A leaf: nothing here reads the configuration; selectors (`selector.rs`) are matched against
//! the [`PeerIdentity`] this module finds.

pub mod cgroup;
pub mod container_api;
pub mod selector;
mod sockdiag;
mod unix;

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long one identification may take before the peer is left unknown ("timed out"). The
/// socket-table lookup never waits (the kernel answers within the `send()`); what may take
/// time is a refresh of the cgroup index (a walk of the hierarchy when a new cgroup is seen)
/// and the container runtime's answer, on a loaded host.
pub(crate) const DEADLINE: Duration = Duration::from_millis(50);

/// What is known about a client. Every field is `None` when the kernel could not say; `note`
/// then says why.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerIdentity {
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub pid: Option<u32>,
    /// The cgroup v2 path, as `/proc/<pid>/cgroup` shows it (`/system.slice/x.service`).
    pub cgroup: Option<String>,
    /// The systemd unit: the last `.service` or `.scope` component of `cgroup`.
    pub unit: Option<String>,
    pub container: Option<ContainerRef>,
    /// Why something is missing.
    pub note: Option<Unknown>,
}

/// A container, from its cgroup path (the id alone) or the runtime's API (the rest as well).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContainerRef {
    pub id: String,
    /// Empty when only the cgroup path named the container.
    pub name: String,
    pub image: String,
    /// The Determined task the container runs (`DET_TASK_ID`, …), when the runtime says.
    pub task_id: Option<String>,
    pub allocation_id: Option<String>,
    pub task_type: Option<String>,
}

/// Why a peer (or part of it) is unknown.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unknown {
    #[error("not in this network namespace (a container on a bridge, or another host)")]
    OtherNamespace,
    #[error("identification timed out after {} ms", DEADLINE.as_millis())]
    Timeout,
    #[error("the client's process has exited")]
    Exited,
    #[error("the client's socket closed before it was looked up")]
    Closed,
    #[error("the client is in another pid namespace: no pid, so no cgroup")]
    OtherPidNamespace,
    #[error("SO_PEERCRED: {0}")]
    Credentials(String),
    #[error("socket tables: {0}")]
    SockDiag(String),
    #[error("{0}")]
    Process(String),
    #[error("cgroup: {0}")]
    Cgroup(String),
    #[error("container runtime: {0}")]
    ContainerApi(String),
}

impl Unknown {
    /// A short name of the cause, to rate-limit its log lines by.
    pub fn label(&self) -> &'static str {
        match self {
            Unknown::OtherNamespace => "other_namespace",
            Unknown::Timeout => "timeout",
            Unknown::Exited => "exited",
            Unknown::Closed => "closed",
            Unknown::OtherPidNamespace => "other_pid_namespace",
            Unknown::Credentials(_) => "credentials",
            Unknown::SockDiag(_) => "sock_diag",
            Unknown::Process(_) => "process",
            Unknown::Cgroup(_) => "cgroup",
            Unknown::ContainerApi(_) => "container_api",
        }
    }

    /// Whether this is an ordinary fact of the network (a bridge client) rather than a
    /// failure worth a warning.
    pub fn expected(&self) -> bool {
        matches!(
            self,
            Unknown::OtherNamespace | Unknown::Closed | Unknown::Exited | Unknown::OtherPidNamespace
        )
    }
}

impl PeerIdentity {
    pub fn unknown(why: Unknown) -> PeerIdentity {
        PeerIdentity {
            note: Some(why),
            ..Default::default()
        }
    }

    /// Whether anything at all is known.
    pub(crate) fn is_known(&self) -> bool {
        self.uid.is_some() || self.container.is_some()
    }

    /// Sets the cgroup path and what it says: the unit and, in a runtime's layout, the
    /// container id.
    pub(crate) fn set_cgroup(&mut self, path: String) {
        self.unit = cgroup::unit_of(&path).map(str::to_string);
        if self.container.is_none() {
            self.container = cgroup::container_id_of(&path).map(|id| ContainerRef {
                id: id.to_string(),
                ..Default::default()
            });
        }
        self.cgroup = Some(path);
    }
}

impl std::fmt::Display for PeerIdentity {
    /// `uid=0 gid=0 pid=7 unit=x.service cgroup=/system.slice/x.service`, or `unknown (why)`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut parts = Vec::new();
        let mut id = |k: &str, v: Option<u32>| {
            if let Some(v) = v {
                parts.push(format!("{k}={v}"));
            }
        };
        id("uid", self.uid);
        id("gid", self.gid);
        id("pid", self.pid);
        if let Some(u) = &self.unit {
            parts.push(format!("unit={u}"));
        }
        if let Some(c) = &self.cgroup {
            parts.push(format!("cgroup={c}"));
        }
        if let Some(c) = &self.container {
            parts.push(format!("container={}", c.label()));
        }
        match (&self.note, parts.is_empty()) {
            (Some(why), true) => write!(f, "unknown ({why})"),
            (None, true) => write!(f, "unknown"),
            (_, false) => write!(f, "{}", parts.join(" ")),
        }
    }
}

impl ContainerRef {
    /// The name when the runtime gave one, else the id.
    pub fn label(&self) -> &str {
        if self.name.is_empty() {
            &self.id
        } else {
            self.name.trim_start_matches('/')
        }
    }
}

// === The container runtime seam ===

/// The future a [`ContainerSource`] answers with.
pub(crate) type ContainerLookup<'a> =
    Pin<Box<dyn Future<Output = Result<Option<ContainerRef>, String>> + Send + 'a>>;

/// A directory of containers by address (the container runtime's API): asked about TCP clients
/// the socket tables do not have, i.e. containers in network namespaces of their own. The
/// runtime's `ContainerDirectory` implements it, answering with a
/// [`ContainerRef`]; `Identifier::set_containers` plugs it in (and out, on reload).
pub(crate) trait ContainerSource: Send + Sync {
    fn lookup(&self, ip: IpAddr) -> ContainerLookup<'_>;
}

// === Identification ===

/// Identifies clients; one per process, its caches outliving reloads.
pub struct Identifier {
    cgroups: cgroup::Index,
    diag: sockdiag::Diag,
    containers: std::sync::RwLock<Option<Arc<dyn ContainerSource>>>,
}

impl Default for Identifier {
    fn default() -> Self {
        Identifier::new()
    }
}

impl Identifier {
    pub fn new() -> Identifier {
        Identifier {
            cgroups: cgroup::Index::of_this_host(),
            diag: sockdiag::Diag::default(),
            containers: std::sync::RwLock::new(None),
        }
    }

    /// Sets (or with `None` removes) the directory asked about clients of other namespaces.
    pub(crate) fn set_containers(&self, source: Option<Arc<dyn ContainerSource>>) {
        *self.containers.write().unwrap_or_else(|p| p.into_inner()) = source;
    }

    /// A unix-socket client. Synchronous: a `getsockopt` and two reads of procfs, which the
    /// kernel answers from memory in microseconds.
    pub fn unix(&self, stream: &tokio::net::UnixStream) -> PeerIdentity {
        unix::identify(stream)
    }

    /// A TCP client at `client`, connected to our address `local`, accepted at `accepted`;
    /// unknown (saying why) when it takes longer than [`DEADLINE`].
    pub async fn tcp(&self, client: SocketAddr, local: SocketAddr, accepted: Instant) -> PeerIdentity {
        tokio::time::timeout(DEADLINE, self.tcp_inner(client, local, accepted))
            .await
            .unwrap_or_else(|_| PeerIdentity::unknown(Unknown::Timeout))
    }

    async fn tcp_inner(&self, client: SocketAddr, local: SocketAddr, accepted: Instant) -> PeerIdentity {
        let info = match self.diag.lookup(client, local) {
            Ok(info) => info,
            Err(sockdiag::DiagError::NotFound) => return self.other_namespace(client.ip()).await,
            Err(sockdiag::DiagError::Closed) => return PeerIdentity::unknown(Unknown::Closed),
            Err(e) => return PeerIdentity::unknown(Unknown::SockDiag(e.to_string())),
        };
        let mut peer = PeerIdentity {
            uid: Some(info.uid),
            ..Default::default()
        };
        match info.cgroup_id {
            None => {
                peer.note = Some(Unknown::Cgroup(
                    "the kernel reports no socket cgroups (Linux 5.7 or later does)".into(),
                ))
            }
            Some(id) => match self.cgroups.path_of(id, accepted).await {
                Ok(path) => peer.set_cgroup(path.to_string()),
                Err(e) => peer.note = Some(Unknown::Cgroup(e)),
            },
        }
        peer
    }

    /// A client whose socket is not in this namespace's tables: the container runtime may
    /// know its address.
    async fn other_namespace(&self, ip: IpAddr) -> PeerIdentity {
        let source = self
            .containers
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let Some(source) = source else {
            return PeerIdentity::unknown(Unknown::OtherNamespace);
        };
        match source.lookup(ip).await {
            Ok(Some(c)) => PeerIdentity {
                container: Some(c),
                ..Default::default()
            },
            Ok(None) => PeerIdentity::unknown(Unknown::OtherNamespace),
            Err(e) => PeerIdentity::unknown(Unknown::ContainerApi(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixed(Option<ContainerRef>);

    impl ContainerSource for Fixed {
        fn lookup(&self, _ip: IpAddr) -> ContainerLookup<'_> {
            Box::pin(async move { Ok(self.0.clone()) })
        }
    }

    #[tokio::test]
    async fn a_client_of_another_namespace_is_unknown_unless_the_runtime_knows_it() {
        let id = Identifier::new();
        // A pair no socket of this namespace has.
        let (c, l) = ("192.0.2.7:40000".parse().unwrap(), "192.0.2.1:8080".parse().unwrap());
        let p = id.tcp(c, l, Instant::now()).await;
        assert_eq!(p.note, Some(Unknown::OtherNamespace));
        assert!(!p.is_known());
        let task = ContainerRef {
            id: "ab".repeat(32),
            name: "trial-1".into(),
            task_id: Some("t-1".into()),
            ..Default::default()
        };
        id.set_containers(Some(Arc::new(Fixed(Some(task.clone())))));
        let p = id.tcp(c, l, Instant::now()).await;
        assert_eq!(p.container, Some(task));
        assert!(p.is_known());
    }

    #[test]
    fn a_cgroup_path_names_unit_and_container() {
        let mut p = PeerIdentity::default();
        p.set_cgroup(format!("/system.slice/docker-{}.scope", "0f".repeat(32)));
        assert_eq!(p.unit.as_deref(), Some(&*format!("docker-{}.scope", "0f".repeat(32))));
        assert_eq!(p.container.map(|c| c.id), Some("0f".repeat(32)));
    }
}
