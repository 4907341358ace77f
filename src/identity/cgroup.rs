//! cgroup v2: where the hierarchy is mounted, a process's path in it, the id → path index for
//! sockets (the kernel reports a socket's cgroup by id), and what a path says about its owner:
//! the systemd unit and the container id.

use std::collections::{HashMap, HashSet};
use std::os::unix::fs::{DirEntryExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// A walk of the hierarchy stops after this many directories (a bound on one refresh's cost).
const WALK_MAX_DIRS: usize = 100_000;
/// ... and below this depth.
const WALK_MAX_DEPTH: usize = 64;
/// Ids a walk could not find are remembered (ids are never reused), up to this many.
const MISSING_MAX: usize = 4096;

/// The cgroup v2 mount point in `/proc/self/mountinfo`: `/sys/fs/cgroup` on a unified host,
/// `/sys/fs/cgroup/unified` on a hybrid one. Only a mount of the hierarchy's root (field 4 is
/// `/`) maps ids to the paths processes see.
pub(crate) fn find_mount(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        let (before, after) = line.split_once(" - ")?;
        if after.split_whitespace().next()? != "cgroup2" {
            return None;
        }
        let mut f = before.split_whitespace();
        let root = f.nth(3)?;
        let point = f.next()?;
        (root == "/").then(|| PathBuf::from(unescape_mount(point)))
    })
}

/// mountinfo escapes space, tab, newline and backslash as octal (`\040`).
fn unescape_mount(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The cgroup v2 path in a `/proc/<pid>/cgroup` file: its `0::` line.
pub(crate) fn v2_path(proc_cgroup: &str) -> Option<&str> {
    proc_cgroup
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(str::trim_end)
        .filter(|p| p.starts_with('/'))
}

/// The systemd unit a cgroup path belongs to: its last `.service` or `.scope` component.
pub(crate) fn unit_of(path: &str) -> Option<&str> {
    path.rsplit('/')
        .find(|c| c.len() > 8 && (c.ends_with(".service") || c.ends_with(".scope")))
}

/// The container a cgroup path belongs to: the 64-hex-digit id in its last component that has
/// one, as the runtimes name them — `docker-<id>.scope`, `libpod-<id>.scope`,
/// `cri-containerd-<id>.scope`, `crio-<id>.scope` (systemd driver), or `<id>` alone under
/// `/docker/`, `/kubepods/…` (cgroupfs driver). Conmon's own scopes are not the container.
pub(crate) fn container_id_of(path: &str) -> Option<&str> {
    path.rsplit('/').find_map(|c| {
        let c = c.strip_suffix(".scope").unwrap_or(c);
        let id = match c.rfind('-') {
            Some(i) => {
                if c[..i].contains("conmon") {
                    return None;
                }
                &c[i + 1..]
            }
            None => c,
        };
        (id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit())).then_some(id)
    })
}

// === The id → path index ===

/// Socket cgroups come as ids; a cgroup's id is the inode number of its directory on cgroup2.
/// The index is one walk of the hierarchy, kept; a miss walks it again, so a cgroup created
/// since is found. Resolving by file handle (`open_by_handle_at`) would need
/// CAP_DAC_READ_SEARCH, which the proxy does not have. A walk costs one `readdir` per cgroup
/// (a few milliseconds for thousands); it runs at most once per new cgroup seen, concurrent
/// misses share it, and ids a walk did not find are remembered (ids are never reused), so a
/// socket whose cgroup is gone (or outside this mount) does not walk each time.
pub struct Index {
    mount: Option<PathBuf>,
    shared: Arc<Shared>,
}

/// What the walks share. A walk runs in a task of its own and stores what it found there, so a
/// lookup that stops waiting (its deadline passed) loses nothing: the next one finds it.
#[derive(Default)]
struct Shared {
    state: Mutex<Walked>,
    /// One walk at a time; lookups that missed meanwhile wait for it and use it.
    walking: tokio::sync::Mutex<()>,
}

#[derive(Default)]
struct Walked {
    by_id: HashMap<u64, Arc<str>>,
    /// When the last finished walk started.
    started: Option<Instant>,
    missing: HashSet<u64>,
}

enum Cached {
    Found(Arc<str>),
    Missing,
    Unknown,
}

impl Shared {
    fn cached(&self, id: u64) -> Cached {
        let st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        match st.by_id.get(&id) {
            Some(p) => Cached::Found(p.clone()),
            None if st.missing.contains(&id) => Cached::Missing,
            None => Cached::Unknown,
        }
    }

    /// Walks `mount` unless a walk that began after `since` already looked for `id`.
    async fn refresh(&self, mount: PathBuf, id: u64, since: Instant) -> Result<(), String> {
        let _one_walk = self.walking.lock().await;
        if !matches!(self.cached(id), Cached::Unknown) {
            return Ok(());
        }
        let fresh = {
            let st = self.state.lock().unwrap_or_else(|p| p.into_inner());
            st.started.is_some_and(|s| s >= since)
        };
        if !fresh {
            let started = Instant::now();
            let by_id = tokio::task::spawn_blocking(move || walk(&mount))
                .await
                .map_err(|e| format!("cgroup walk: {e}"))??;
            let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
            st.by_id = by_id;
            st.started = Some(started);
        }
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if !st.by_id.contains_key(&id) {
            // A walk that started after the socket existed did not see its cgroup: it is gone,
            // or outside this mount (another cgroup namespace). Either way it will not appear.
            if st.missing.len() >= MISSING_MAX {
                st.missing.clear();
            }
            st.missing.insert(id);
        }
        Ok(())
    }
}

impl Index {
    /// The index of this host's cgroup v2 mount (none when there is no v2 hierarchy).
    pub(crate) fn of_this_host() -> Index {
        let mount = std::fs::read_to_string("/proc/self/mountinfo")
            .ok()
            .and_then(|m| find_mount(&m));
        Index::at(mount)
    }

    pub fn at(mount: Option<PathBuf>) -> Index {
        Index {
            mount,
            shared: Arc::default(),
        }
    }

    /// The path of cgroup `id`, for a socket that existed at `since` (so did its cgroup).
    pub(crate) async fn path_of(&self, id: u64, since: Instant) -> Result<Arc<str>, String> {
        let not_found = || format!("cgroup id {id} is not under the cgroup2 mount");
        let Some(mount) = self.mount.clone() else {
            return Err("no cgroup2 hierarchy is mounted".into());
        };
        match self.shared.cached(id) {
            Cached::Found(p) => return Ok(p),
            Cached::Missing => return Err(not_found()),
            Cached::Unknown => {}
        }
        let shared = self.shared.clone();
        tokio::spawn(async move { shared.refresh(mount, id, since).await })
            .await
            .map_err(|e| format!("cgroup walk: {e}"))??;
        match self.shared.cached(id) {
            Cached::Found(p) => Ok(p),
            _ => Err(not_found()),
        }
    }
}

/// Every cgroup directory under `mount` by inode number, paths relative to the mount.
fn walk(mount: &Path) -> Result<HashMap<u64, Arc<str>>, String> {
    let root_ino = std::fs::metadata(mount)
        .map_err(|e| format!("{}: {e}", mount.display()))?
        .ino();
    let mut by_id = HashMap::new();
    by_id.insert(root_ino, Arc::from("/"));
    let mut stack: Vec<(PathBuf, String, usize)> = vec![(mount.to_path_buf(), String::new(), 0)];
    while let Some((dir, rel, depth)) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            // Removed while we walked: nothing under it to find.
            continue;
        };
        for e in entries.flatten() {
            if !e.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            let name = e.file_name().to_string_lossy().into_owned();
            let path = format!("{rel}/{name}");
            by_id.insert(e.ino(), Arc::from(path.as_str()));
            if by_id.len() >= WALK_MAX_DIRS {
                return Ok(by_id);
            }
            if depth + 1 < WALK_MAX_DEPTH {
                stack.push((e.path(), path, depth + 1));
            }
        }
    }
    Ok(by_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "4f2a9c0d1e2b3a4f5c6d7e8f9a0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b";

    #[test]
    fn finds_the_v2_mount_on_unified_and_hybrid_hosts() {
        let hybrid = "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n\
            40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd\n\
            41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n";
        assert_eq!(find_mount(hybrid), Some(PathBuf::from("/sys/fs/cgroup/unified")));
        let unified = "29 22 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot\n";
        assert_eq!(find_mount(unified), Some(PathBuf::from("/sys/fs/cgroup")));
        // A bind mount of a subtree does not map ids to the paths processes see.
        let sub = "50 22 0:26 /system.slice /mnt/cg rw - cgroup2 cgroup2 rw\n";
        assert_eq!(find_mount(sub), None);
        assert_eq!(find_mount("1 0 0:1 / /odd\\040dir rw - cgroup2 cgroup2 rw\n"), Some(PathBuf::from("/odd dir")));
        assert_eq!(find_mount(""), None);
    }

    #[test]
    fn reads_the_v2_line_of_proc_pid_cgroup() {
        let hybrid = "9:name=systemd:/\n4:memory:/process_api/x\n0::/system.slice/determined-agent.service\n";
        assert_eq!(v2_path(hybrid), Some("/system.slice/determined-agent.service"));
        assert_eq!(v2_path("0::/\n"), Some("/"));
        assert_eq!(v2_path("1:cpu:/\n"), None);
    }

    #[test]
    fn units_are_the_last_service_or_scope() {
        let cases = [
            ("/system.slice/determined-agent.service", Some("determined-agent.service")),
            ("/user.slice/user-1000.slice/session-3.scope", Some("session-3.scope")),
            ("/system.slice/containerd.service/kubepods-besteffort-pod1.slice:cri-containerd:ab", Some("containerd.service")),
            ("/system.slice/docker-x.scope", Some("docker-x.scope")),
            ("/system.slice/determined-agent.service/init.scope", Some("init.scope")),
            ("/", None),
            ("/docker/abc", None),
            ("/x/.service", None),
        ];
        for (path, unit) in cases {
            assert_eq!(unit_of(path), unit, "{path}");
        }
    }

    #[test]
    fn container_ids_in_real_layouts() {
        let with = |p: &str| p.replace("ID", ID);
        let found = [
            "/system.slice/docker-ID.scope",
            "/machine.slice/libpod-ID.scope",
            "/machine.slice/libpod-ID.scope/container",
            "/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-ID.scope",
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod0a1b2c3d_4e5f_6789_abcd_ef0123456789.slice/cri-containerd-ID.scope",
            "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod0a1b.slice/crio-ID.scope",
            "/docker/ID",
            "/kubepods/burstable/pod0a1b2c3d-4e5f-6789-abcd-ef0123456789/ID",
            "/system.slice/docker-ID.scope/init.scope",
        ];
        for p in found {
            assert_eq!(container_id_of(&with(p)), Some(ID), "{p}");
        }
        let none = [
            "/system.slice/determined-agent.service",
            "/",
            "/machine.slice/libpod-conmon-ID.scope",
            "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod0a1b.slice/crio-conmon-ID.scope",
            "/system.slice/docker-4f2a.scope",
            "/docker/not-hex-not-hex-not-hex-not-hex-not-hex-not-hex-not-hex-not-",
        ];
        for p in none {
            assert_eq!(container_id_of(&with(p)), None, "{p}");
        }
    }

    #[tokio::test]
    async fn the_index_walks_a_tree_by_inode_and_walks_again_for_a_new_directory() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("system.slice/a.service")).unwrap();
        let ino = |p: &str| std::fs::metadata(dir.path().join(p)).unwrap().ino();
        let index = Index::at(Some(dir.path().to_path_buf()));
        let a = ino("system.slice/a.service");
        assert_eq!(&*index.path_of(a, Instant::now()).await.unwrap(), "/system.slice/a.service");
        assert_eq!(&*index.path_of(ino(""), Instant::now()).await.unwrap(), "/");
        std::fs::create_dir(dir.path().join("system.slice/b.service")).unwrap();
        let b = ino("system.slice/b.service");
        let since = Instant::now();
        assert_eq!(&*index.path_of(b, since).await.unwrap(), "/system.slice/b.service");
        // Not there after a walk that began after `since`: remembered as missing.
        assert!(index.path_of(u64::MAX, since).await.is_err());
        assert!(index.shared.state.lock().unwrap().missing.contains(&u64::MAX));
    }
}
