//! Real peers for the identity tests: clients run as other users (`setpriv`), inside cgroups
//! made under this machine's cgroup v2 mount, or inside a network namespace joined to the host
//! by a veth pair; and a master that records, per request, whether the proxy presented the
//! agent's client certificate. Everything made here is removed on drop, failing test or not.
//! A capability the machine lacks fails the test with a message naming it; nothing is skipped.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use super::{certs, Behavior, ClientAuth, Master};

/// The user tests run clients as: `nobody`.
pub const NOBODY: u32 = 65534;

static SEQ: AtomicUsize = AtomicUsize::new(0);

/// A name unique to this process and call.
fn unique(prefix: &str) -> String {
    format!(
        "{prefix}{}x{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    )
}

/// Runs a command that must succeed; panics with its output otherwise.
pub fn must(cmd: &mut Command, what: &str) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{what}: {cmd:?} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

// === cgroups ===

/// The cgroup v2 mount, from /proc/self/mountinfo (`/sys/fs/cgroup`, or
/// `/sys/fs/cgroup/unified` on a hybrid host). Panics when there is none.
pub fn cgroup2_mount() -> PathBuf {
    let info = std::fs::read_to_string("/proc/self/mountinfo").expect("/proc/self/mountinfo");
    for line in info.lines() {
        let Some((before, after)) = line.split_once(" - ") else {
            continue;
        };
        let f: Vec<&str> = before.split_whitespace().collect();
        if after.starts_with("cgroup2 ") && f.len() > 4 && f[3] == "/" {
            return PathBuf::from(f[4]);
        }
    }
    panic!("this machine has no cgroup v2 hierarchy mounted (no cgroup2 line in /proc/self/mountinfo): the identity tests need one");
}

/// A tree of cgroups made for one test under `/<unique>/` of the v2 mount, removed on drop.
pub struct Cgroups {
    mount: PathBuf,
    /// Relative to the mount: `/dtp-…`.
    top: String,
    made: Vec<PathBuf>,
}

impl Cgroups {
    pub fn new() -> Cgroups {
        let mount = cgroup2_mount();
        let top = format!("/{}", unique("dtp-id-"));
        let mut c = Cgroups {
            mount,
            top,
            made: Vec::new(),
        };
        c.make("");
        c
    }

    /// Makes `<top>/<sub>` (each missing level) and returns its cgroup path
    /// (`/dtp-…/system.slice/determined-agent.service`).
    pub fn make(&mut self, sub: &str) -> String {
        let path = format!(
            "{}{}{}",
            self.top,
            if sub.is_empty() { "" } else { "/" },
            sub
        );
        let mut dir = self.mount.clone();
        for part in path.trim_start_matches('/').split('/') {
            dir.push(part);
            if !dir.exists() {
                std::fs::create_dir(&dir).unwrap_or_else(|e| {
                    panic!("cannot make cgroup {} (the identity tests need to make cgroups as root): {e}", dir.display())
                });
                self.made.push(dir.clone());
            }
        }
        path
    }

    /// The `cgroup.procs` file of a cgroup path `make` returned.
    pub fn procs(&self, path: &str) -> PathBuf {
        self.mount
            .join(path.trim_start_matches('/'))
            .join("cgroup.procs")
    }
}

impl Drop for Cgroups {
    fn drop(&mut self) {
        for dir in self.made.iter().rev() {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

/// A 64-hex-digit container id, as Docker makes them.
pub fn container_id() -> String {
    let seed = format!(
        "{:016x}",
        std::process::id() as u64 * 0x9e37_79b9 + SEQ.fetch_add(1, Ordering::Relaxed) as u64
    );
    seed.repeat(4)
}

// === Clients ===

/// Where a client connects.
#[derive(Clone, Debug)]
pub enum Target {
    Tcp(std::net::SocketAddr),
    Unix(PathBuf),
}

/// A client process: who it runs as, where.
#[derive(Clone, Debug, Default)]
pub struct ClientSpec {
    /// `(uid, gid)`; `None`: this process's own.
    pub user: Option<(u32, u32)>,
    /// The cgroup.procs file to join before connecting.
    pub cgroup_procs: Option<PathBuf>,
    /// A network namespace (`ip netns`) to run in.
    pub netns: Option<String>,
}

/// What a client saw: its pid, its local address (TCP), the master's status line (empty when
/// the proxy closed the connection without an answer).
#[derive(Debug, Clone)]
pub struct ClientRun {
    pub pid: u32,
    pub local: Option<std::net::SocketAddr>,
    pub status: String,
}

/// Connects, sends `GET <path>` (HTTP/1.1, `Connection: close`), reads to the end.
const CLIENT: &str = r#"
import os, socket, sys
kind, addr, path = sys.argv[1], sys.argv[2], sys.argv[3]
if kind == "unix":
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(15)
    s.connect(addr)
    local = "-"
else:
    host, port = addr.rsplit(":", 1)
    s = socket.create_connection((host.strip("[]"), int(port)), timeout=15)
    h, p = s.getsockname()[:2]
    local = ("[%s]:%d" if ":" in h else "%s:%d") % (h, p)
print("pid", os.getpid(), "local", local, flush=True)
try:
    s.sendall(("GET %s HTTP/1.1\r\nHost: det-master\r\nConnection: close\r\n\r\n" % path).encode())
    got = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        got += chunk
except ConnectionResetError:
    got = b""
print("status", got.split(b"\r\n", 1)[0].decode(errors="replace"), flush=True)
"#;

/// Runs one client to its end.
pub fn run_client(spec: &ClientSpec, target: &Target, path: &str) -> ClientRun {
    let (kind, addr) = match target {
        Target::Tcp(a) => ("tcp", a.to_string()),
        Target::Unix(p) => ("unix", p.to_str().unwrap().to_string()),
    };
    // /usr/bin/python3: readable by every user, unlike an interpreter under root's home.
    let mut inner = String::new();
    if let Some(procs) = &spec.cgroup_procs {
        inner += &format!("echo $$ > {} && ", procs.display());
    }
    inner += "exec ";
    if let Some((uid, gid)) = spec.user {
        inner += &format!("setpriv --reuid={uid} --regid={gid} --clear-groups ");
    }
    inner += "/usr/bin/python3 -c \"$0\" \"$@\"";
    let mut cmd = match &spec.netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns, "sh", "-c"]);
            c
        }
        None => {
            let mut c = Command::new("sh");
            c.arg("-c");
            c
        }
    };
    cmd.arg(&inner).arg(CLIENT).args([kind, &addr, path]);
    cmd.stdin(Stdio::null());
    let out = must(&mut cmd, "identity test client");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut run = ClientRun {
        pid: 0,
        local: None,
        status: String::new(),
    };
    for line in text.lines() {
        let words: Vec<&str> = line.splitn(2, ' ').collect();
        match words.as_slice() {
            ["pid", rest] => {
                let f: Vec<&str> = rest.split_whitespace().collect();
                run.pid = f[0].parse().unwrap();
                run.local = f.get(2).and_then(|l| l.parse().ok());
            }
            ["status", rest] => run.status = rest.to_string(),
            ["status"] => {}
            _ => {}
        }
    }
    assert!(run.pid > 0, "client printed no pid: {text}");
    run
}

// === Network namespaces ===

/// A network namespace joined to the host by a veth pair on a private /30: the host side has
/// `.1`, the namespace `.2`. Deleted on drop.
pub struct Netns {
    pub name: String,
    host_if: String,
    pub host_ip: std::net::Ipv4Addr,
    pub net: String,
}

impl Netns {
    pub fn new() -> Netns {
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let idx = (std::process::id() as usize * 8 + n) % 16384;
        let base = [10u8, 213, (idx / 64) as u8, ((idx % 64) * 4) as u8];
        let host_ip = std::net::Ipv4Addr::new(base[0], base[1], base[2], base[3] + 1);
        let peer_ip = std::net::Ipv4Addr::new(base[0], base[1], base[2], base[3] + 2);
        let ns = Netns {
            name: unique("dtp-ns-"),
            host_if: format!("dtv{}", idx),
            host_ip,
            net: format!("{}.{}.{}.{}/30", base[0], base[1], base[2], base[3]),
        };
        let peer_if = format!("dtw{}", idx);
        let ip = |args: &[&str]| {
            must(
                Command::new("ip").args(args),
                "setting up a network namespace (the identity tests need `ip netns` as root)",
            );
        };
        ip(&["netns", "add", &ns.name]);
        ip(&[
            "link",
            "add",
            &ns.host_if,
            "type",
            "veth",
            "peer",
            "name",
            &peer_if,
        ]);
        ip(&["link", "set", &peer_if, "netns", &ns.name]);
        ip(&["addr", "add", &format!("{host_ip}/30"), "dev", &ns.host_if]);
        ip(&["link", "set", &ns.host_if, "up"]);
        ip(&[
            "-n",
            &ns.name,
            "addr",
            "add",
            &format!("{peer_ip}/30"),
            "dev",
            &peer_if,
        ]);
        ip(&["-n", &ns.name, "link", "set", &peer_if, "up"]);
        ip(&["-n", &ns.name, "link", "set", "lo", "up"]);
        ns
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_if])
            .output();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

// === A master that records the client certificate per request ===

/// A master answering HTTP, asking for (not requiring) a client certificate from its CA; and
/// the agent's certificate and key from that CA, written into `dir`.
pub struct CertMaster {
    pub master: Master,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl CertMaster {
    pub fn start(dir: &Path) -> CertMaster {
        let agents = super::Ca::root("Agents CA");
        let master = Master::start_with(dir, |b| {
            b.behavior(Behavior::HttpRecord)
                .client_auth(ClientAuth::Optional(agents.der()))
        });
        let agent = agents.client("agent");
        CertMaster {
            cert: certs::write(dir, "agent.crt", &agent.pem()),
            key: certs::write(dir, "agent.key", &agent.key_pem()),
            master,
        }
    }

    /// `security.tls` lines with the agent's certificate and key.
    pub fn cfg(&self) -> super::Cfg {
        self.master
            .cfg()
            .tls("client_cert", super::qp(&self.cert))
            .tls("client_key", super::qp(&self.key))
    }

    /// Whether the request for `path` came over a connection that presented the certificate.
    pub fn presented(&self, path: &str) -> bool {
        let server = &self.master.server;
        server.wait(
            &format!("the request for {path}"),
            Duration::from_secs(10),
            |st| {
                let r = st.requests.iter().find(|r| r.path == path)?;
                Some(st.handshakes[r.connection].client_cert)
            },
        )
    }

    /// Whether any request for `path` reached the master.
    pub fn reached(&self, path: &str) -> bool {
        self.master
            .server
            .state()
            .requests
            .iter()
            .any(|r| r.path == path)
    }
}
