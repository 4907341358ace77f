//! Sockets a process is handed at start: by systemd (socket activation, `LISTEN_FDS` /
//! `LISTEN_FDNAMES`) or by the process it replaces in a hitless upgrade (`server::upgrade`),
//! which passes every listening socket it has under a key naming what the socket is for, and a
//! pipe to say "ready" on. Both are read, and removed from the environment, before any thread
//! starts; each descriptor is handed out once.

use std::collections::HashMap;
use std::io::Write;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

use crate::config::{ListenAddr, ListenerKey};

/// The upgrade's sockets: lines of `FD=KEY`.
pub(crate) const UPGRADE_FDS_ENV: &str = "DET_TLS_PROXY_UPGRADE_FDS";
/// The write end of the pipe the new process says "ready" on.
pub(crate) const UPGRADE_READY_ENV: &str = "DET_TLS_PROXY_UPGRADE_READY_FD";

/// What a passed socket is for, as both processes spell it.
pub(crate) fn listener_key(key: &ListenerKey) -> String {
    match key {
        ListenerKey::Addr(ListenAddr::Tcp(a)) => format!("tcp:{a}"),
        ListenerKey::Addr(ListenAddr::Unix(p)) => format!("unix:{}", p.display()),
        ListenerKey::Addr(ListenAddr::Systemd(n)) => systemd_key(n),
        ListenerKey::AnyPort(a, name) => format!("anyport:{a}:{name}"),
    }
}

pub(crate) fn systemd_key(name: &str) -> String {
    format!("systemd:{name}")
}

pub(crate) fn admin_key(addr: std::net::SocketAddr) -> String {
    format!("admin:{addr}")
}

/// A descriptor passed across exec arrives without close-on-exec; set it, so the next
/// upgrade passes only the copies it means to (not every socket a second time).
fn close_on_exec(fd: OwnedFd) -> OwnedFd {
    use std::os::fd::AsRawFd;
    set_close_on_exec(fd.as_raw_fd());
    fd
}

fn set_close_on_exec(fd: RawFd) {
    use nix::fcntl::{fcntl, FcntlArg, FdFlag};
    let _ = fcntl(fd, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC));
}

/// The handed-over descriptors not yet taken.
#[derive(Debug, Default)]
pub struct Inherited {
    /// systemd's sockets by `FileDescriptorName` (also those a replaced process passed on).
    fds: HashMap<String, Vec<RawFd>>,
    /// A replaced process's sockets by key.
    upgrade: HashMap<String, RawFd>,
    /// The pipe to the process that started this one, for "ready".
    ready: Option<RawFd>,
}

impl Inherited {
    /// Reads and clears the socket-activation and upgrade variables. Call before any thread
    /// starts.
    pub fn from_env() -> Inherited {
        let mut inherited = Inherited::default();
        if let Ok(iter) = sd_notify::listen_fds_with_names(true) {
            for (fd, name) in iter {
                inherited.fds.entry(name).or_default().push(fd);
            }
        }
        if let Some(text) = std::env::var_os(UPGRADE_FDS_ENV) {
            for line in text.to_string_lossy().lines() {
                let Some((fd, key)) = line.split_once('=') else {
                    continue;
                };
                let Ok(fd) = fd.parse::<RawFd>() else {
                    continue;
                };
                match key.strip_prefix("systemd:") {
                    Some(name) => inherited.fds.entry(name.to_string()).or_default().push(fd),
                    None => {
                        inherited.upgrade.insert(key.to_string(), fd);
                    }
                }
            }
        }
        // Nothing handed over leaks into a process this one starts unless passed on purpose.
        for &fd in inherited.fds.values().flatten().chain(inherited.upgrade.values()) {
            set_close_on_exec(fd);
        }
        inherited.ready = std::env::var(UPGRADE_READY_ENV)
            .ok()
            .and_then(|v| v.parse().ok());
        // Edition 2021, before any thread: nothing else reads the environment concurrently.
        std::env::remove_var(UPGRADE_FDS_ENV);
        std::env::remove_var(UPGRADE_READY_ENV);
        inherited
    }

    /// Whether this process was started by an upgrade.
    pub(crate) fn is_upgrade(&self) -> bool {
        self.ready.is_some()
    }

    /// systemd's socket names still untaken, for messages.
    pub fn names(&self) -> String {
        let mut v: Vec<&str> = self.fds.keys().map(|s| s.as_str()).collect();
        v.sort();
        if v.is_empty() {
            "nothing".into()
        } else {
            v.join(", ")
        }
    }

    /// The first fd systemd passed under `name`.
    pub(crate) fn take_systemd(&mut self, name: &str) -> Option<OwnedFd> {
        let list = self.fds.get_mut(name)?;
        if list.is_empty() {
            return None;
        }
        let fd = list.remove(0);
        // SAFETY: the descriptor was passed to this process (LISTEN_PID is ours, or the
        // replaced process passed it across exec), it is open, and it is handed out once.
        #[allow(unsafe_code)]
        Some(close_on_exec(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// The socket a replaced process passed under `key`.
    pub(crate) fn take_upgraded(&mut self, key: &str) -> Option<OwnedFd> {
        let fd = self.upgrade.remove(key)?;
        // SAFETY: as for `take_systemd`: passed across exec, open, handed out once.
        #[allow(unsafe_code)]
        Some(close_on_exec(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// systemd's sockets still untaken, with their names (passed on in an upgrade).
    pub(crate) fn systemd_fds(&self) -> Vec<(String, RawFd)> {
        self.fds
            .iter()
            .flat_map(|(n, fds)| fds.iter().map(move |fd| (n.clone(), *fd)))
            .collect()
    }

    /// Closes what a replaced process passed that this configuration does not use.
    pub(crate) fn close_unclaimed_upgrade(&mut self) {
        for (key, fd) in self.upgrade.drain() {
            tracing::info!(socket = %key, "the replaced process passed a socket this configuration does not use; closing it");
            // SAFETY: as for `take_upgraded`; dropped at once.
            #[allow(unsafe_code)]
            drop(unsafe { OwnedFd::from_raw_fd(fd) });
        }
    }

    /// Tells the process that started this one that it serves now (once).
    pub(crate) fn signal_ready(&mut self) {
        if let Some(fd) = self.ready.take() {
            // SAFETY: the pipe's write end was passed across exec for this one write.
            #[allow(unsafe_code)]
            let mut pipe = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) });
            let _ = pipe.write_all(b"R");
        }
    }
}
