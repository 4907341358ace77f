//! Hitless upgrade. On SIGUSR2 the serving process starts the binary at the path it was
//! started from (the new version, once a package has replaced the file) with every listening
//! socket it holds passed across exec — listeners, sockets systemd passed (used or not) and
//! the admin endpoint — and a pipe. The new process adopts the sockets whose address its
//! configuration names, binds the rest, and writes to the pipe once it serves. Only then does
//! this process tell systemd the new main pid, stop accepting and drain. Clients in a
//! listening socket's backlog are never refused: the socket itself never closes.
//!
//! A new process that cannot start, exits (a bad binary, a bad configuration) or is not ready
//! within [`READY_TIMEOUT`] changes nothing: this process goes on serving and says why.

use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::Duration;

use nix::fcntl::{fcntl, FcntlArg, FdFlag};

use super::{notify, Server};
use crate::inherit::{admin_key, listener_key, systemd_key, UPGRADE_FDS_ENV, UPGRADE_READY_ENV};

/// How long the new process may take to serve.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// A copy of `fd` that survives exec (the original keeps its close-on-exec flag).
fn inheritable(fd: RawFd) -> std::io::Result<OwnedFd> {
    // SAFETY: `fd` is a socket this process holds open for the duration of this call.
    #[allow(unsafe_code)]
    let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    let copy = borrowed.try_clone_to_owned()?;
    fcntl(copy.as_raw_fd(), FcntlArg::F_SETFD(FdFlag::empty())).map_err(std::io::Error::from)?;
    Ok(copy)
}

/// The binary to start: the path this process was started from, read at start (after a
/// package replaced the file, `/proc/self/exe` names the deleted old one).
pub(crate) fn own_path() -> Option<PathBuf> {
    std::env::current_exe().ok()
}

impl Server {
    /// Every socket the new process may take over, with the key it is passed under.
    fn sockets_to_pass(&self) -> Vec<(String, RawFd)> {
        let mut v: Vec<(String, RawFd)> = self
            .listeners
            .iter()
            .map(|(key, r)| (listener_key(key), r.bound.raw_fd()))
            .chain(
                self.retired
                    .iter()
                    .map(|(key, b)| (listener_key(key), b.raw_fd())),
            )
            .collect();
        v.extend(
            self.inherited
                .systemd_fds()
                .into_iter()
                .map(|(name, fd)| (systemd_key(&name), fd)),
        );
        if let Some(a) = &self.admin {
            v.push((admin_key(a.listen), a.fd));
        }
        v
    }

    /// Starts the new process and waits until it serves. Returns its pid once it does; on
    /// any failure the new process is gone and this one serves on.
    pub(super) async fn upgrade(&mut self) -> Option<u32> {
        let Some(exe) = self.exe.clone() else {
            tracing::error!(
                "upgrade failed: this process does not know its own binary's path; still serving"
            );
            return None;
        };
        tracing::info!(binary = %exe.display(), "SIGUSR2: upgrading: starting the new process with the listening sockets");
        let (mut child, ready) = match self.spawn_successor(&exe) {
            Ok(x) => x,
            Err(e) => {
                tracing::error!(binary = %exe.display(), error = %e, "upgrade failed: cannot start the new process; still serving");
                return None;
            }
        };
        let pid = child.id();
        let read = tokio::task::spawn_blocking(move || {
            let mut pipe = std::fs::File::from(ready);
            let mut b = [0u8; 1];
            matches!(pipe.read(&mut b), Ok(1))
        });
        match tokio::time::timeout(READY_TIMEOUT, read).await {
            Ok(Ok(true)) => {
                notify(&[
                    sd_notify::NotifyState::MainPid(pid),
                    sd_notify::NotifyState::Ready,
                ]);
                tracing::info!(
                    new_pid = pid,
                    "upgrade: the new process serves; this one stops accepting and drains"
                );
                // Reaped by whoever inherits it when this process exits.
                std::mem::forget(child);
                Some(pid)
            }
            Ok(_) => {
                let status = tokio::task::spawn_blocking(move || child.wait())
                    .await
                    .ok()
                    .and_then(Result::ok);
                let status = status.map_or("an unknown status".to_string(), |s| s.to_string());
                tracing::error!(new_pid = pid, status = %status, "upgrade failed: the new process ended before it was ready ({status}; its own lines above say why); still serving");
                None
            }
            Err(_) => {
                let _ = child.kill();
                let _ = tokio::task::spawn_blocking(move || child.wait()).await;
                tracing::error!(new_pid = pid, timeout = ?READY_TIMEOUT, "upgrade failed: the new process was not ready in time and was stopped; still serving");
                None
            }
        }
    }

    /// Spawns `exe` with this process's arguments, the sockets and the ready pipe; returns the
    /// child and the pipe's read end.
    fn spawn_successor(&self, exe: &PathBuf) -> std::io::Result<(Child, OwnedFd)> {
        let mut lines = String::new();
        let mut copies = Vec::new();
        for (key, fd) in self.sockets_to_pass() {
            let copy = inheritable(fd)?;
            lines.push_str(&format!("{}={key}\n", copy.as_raw_fd()));
            copies.push(copy);
        }
        let (reader, writer) =
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(std::io::Error::from)?;
        let writer = inheritable(writer.as_raw_fd())?;
        let mut cmd = Command::new(exe);
        cmd.args(std::env::args_os().skip(1))
            .env(UPGRADE_FDS_ENV, lines)
            .env(UPGRADE_READY_ENV, writer.as_raw_fd().to_string())
            // The watchdog is the new process's once it is the main pid.
            .env_remove("WATCHDOG_PID")
            .stdin(Stdio::null());
        let child = cmd.spawn()?;
        // The child has its copies; ours close here, so the pipe reads EOF if it dies.
        drop(copies);
        drop(writer);
        Ok((child, reader))
    }

    /// After a successful upgrade: the sockets are the new process's (their files stay), and
    /// the admin endpoint is its too.
    pub(super) fn hand_over(&mut self) {
        for r in self.listeners.values() {
            r.bound.handed_over.store(true, Ordering::SeqCst);
        }
        for b in self.retired.values() {
            b.handed_over.store(true, Ordering::SeqCst);
        }
        if let Some(a) = self.admin.take() {
            a.stop.cancel();
        }
    }
}
