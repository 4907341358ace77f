//! A unix-socket client: the credentials the kernel recorded at `connect()` (`SO_PEERCRED`),
//! then its process's cgroup v2 path.
//!
//! A pid can be reused once its process has exited, so the path read from `/proc/<pid>` is
//! only believed when it is the connecting process's: a pidfd is opened on the pid before
//! reading, and the process must still be alive (the pidfd not readable) after the read — a
//! live process keeps its pid, so what was read was its own. The process's effective uid is
//! checked against `SO_PEERCRED`'s too, so a pid reused between `connect()` and the pidfd
//! (the first process exited, a descendant holding the socket) by another user's process is
//! never taken for the client. Kernels before 5.3 have no pidfds: the cgroup stays unknown.

use std::os::fd::AsFd;

use rustix::event::{poll, PollFd, PollFlags, Timespec};
use rustix::process::{pidfd_open, Pid, PidfdFlags};
use tokio::net::UnixStream;

use super::{cgroup, PeerIdentity, Unknown};

/// The peer of a unix-socket client.
pub(crate) fn identify(stream: &UnixStream) -> PeerIdentity {
    let cred = match stream.peer_cred() {
        Ok(c) => c,
        Err(e) => return PeerIdentity::unknown(Unknown::Credentials(e.to_string())),
    };
    let mut peer = PeerIdentity {
        uid: Some(cred.uid()),
        gid: Some(cred.gid()),
        pid: cred.pid().and_then(|p| u32::try_from(p).ok()).filter(|p| *p > 0),
        ..Default::default()
    };
    let Some(pid) = peer.pid else {
        // A socket from another pid namespace reports no pid: uid and gid are all there is.
        peer.note = Some(Unknown::OtherPidNamespace);
        return peer;
    };
    match cgroup_of(pid, cred.uid()) {
        Ok(path) => peer.set_cgroup(path),
        Err(u) => peer.note = Some(u),
    }
    peer
}

/// Process `pid`'s cgroup v2 path, if `pid` is still the process that connected as `uid`.
fn cgroup_of(pid: u32, uid: u32) -> Result<String, Unknown> {
    let proc_err = |what: &str, e: &dyn std::fmt::Display| {
        Unknown::Process(format!("pid {pid}: {what}: {e}"))
    };
    let raw = i32::try_from(pid).ok().and_then(Pid::from_raw);
    let raw = raw.ok_or_else(|| proc_err("pid", &"out of range"))?;
    let pidfd = match pidfd_open(raw, PidfdFlags::empty()) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::SRCH) => return Err(Unknown::Exited),
        Err(e) => return Err(proc_err("pidfd_open", &e)),
    };
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| proc_err("/proc status", &e))?;
    let file = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .map_err(|e| proc_err("/proc cgroup", &e))?;
    if !alive(&pidfd).map_err(|e| proc_err("pidfd poll", &e))? {
        return Err(Unknown::Exited);
    }
    if effective_uid(&status) != Some(uid) {
        return Err(Unknown::Process(format!(
            "pid {pid} now belongs to another user (the process that connected has exited)"
        )));
    }
    cgroup::v2_path(&file)
        .map(str::to_string)
        .ok_or_else(|| proc_err("/proc cgroup", &"no cgroup v2 (0::) line"))
}

/// A pidfd turns readable when its process exits.
fn alive(pidfd: &impl AsFd) -> rustix::io::Result<bool> {
    let mut fds = [PollFd::new(pidfd, PollFlags::IN)];
    let ready = poll(&mut fds, Some(&Timespec::default()))?;
    Ok(ready == 0)
}

/// The effective uid on the `Uid:` line of `/proc/<pid>/status` (real, effective, saved, fs).
fn effective_uid(status: &str) -> Option<u32> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_effective_uid_is_the_second_of_four() {
        assert_eq!(effective_uid("Name:\tx\nUid:\t1000\t0\t0\t0\nGid:\t5\t5\t5\t5\n"), Some(0));
        assert_eq!(effective_uid("Name:\tx\n"), None);
    }

    #[tokio::test]
    async fn a_connected_pair_names_this_process() {
        let (a, _b) = UnixStream::pair().unwrap();
        let p = identify(&a);
        assert_eq!(p.pid, Some(std::process::id()));
        assert_eq!(p.uid, Some(nix::unistd::geteuid().as_raw()));
        let own = std::fs::read_to_string("/proc/self/cgroup").unwrap();
        assert_eq!(p.cgroup.as_deref(), cgroup::v2_path(&own), "{p:?}");
        assert!(p.note.is_none(), "{p:?}");
    }
}
