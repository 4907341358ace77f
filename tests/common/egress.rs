//! Real HTTP CONNECT proxies for the egress tests: Debian's squid and tinyproxy, each started
//! on its own port with its own files, and each resolving `det-master` to 127.0.0.1 where this
//! host cannot resolve it at all (squid through its `hosts_file`, tinyproxy in a mount
//! namespace of its own with a bind-mounted /etc/hosts). A tunnel that works therefore proves
//! the proxy, not the proxy host, resolved the master's name.

use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::probes::wait_until;

/// A name only the egress proxies resolve (to 127.0.0.1); the test masters' certificates
/// hold it.
pub const MASTER_NAME: &str = "det-master";

/// A running CONNECT proxy; killed on drop.
pub struct EgressProxy {
    child: Child,
    pub port: u16,
    /// The file it logs requests to.
    pub log: PathBuf,
    dir: PathBuf,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A folder every user can enter (squid's workers drop root), with the hosts file in it.
fn folder(parent: &Path, name: &str) -> PathBuf {
    let dir = parent.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    for d in [parent, dir.as_path()] {
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o777)).unwrap();
    }
    std::fs::write(
        dir.join("hosts"),
        format!("127.0.0.1 localhost\n127.0.0.1 {MASTER_NAME}\n"),
    )
    .unwrap();
    dir
}

/// Where an egress proxy's own complaints go, to be quoted if it exits early.
fn stderr_file(dir: &Path) -> std::fs::File {
    std::fs::File::create(dir.join("stderr.log")).expect("create stderr.log")
}

impl EgressProxy {
    /// squid, asking for `auth` (user, password) when given and refusing CONNECT to
    /// `forbidden_port` (403) when given.
    pub fn squid(parent: &Path, auth: Option<(&str, &str)>, forbidden_port: Option<u16>) -> Self {
        let dir = folder(parent, "squid");
        let port = free_port();
        let d = dir.display();
        let mut conf = format!(
            "http_port 127.0.0.1:{port}\npid_filename {d}/squid.pid\ncache deny all\n\
             access_log stdio:{d}/access.log\ncache_log {d}/cache.log\ncache_store_log none\n\
             hosts_file {d}/hosts\ndns_nameservers 127.0.0.1\nshutdown_lifetime 0 seconds\n"
        );
        if let Some(p) = forbidden_port {
            conf += &format!("acl forbidden port {p}\nhttp_access deny CONNECT forbidden\n");
        }
        match auth {
            Some((user, password)) => {
                let hash = Command::new("openssl")
                    .args(["passwd", "-apr1", password])
                    .output()
                    .expect("openssl passwd");
                let line = format!("{user}:{}", String::from_utf8_lossy(&hash.stdout));
                std::fs::write(dir.join("passwd"), line).unwrap();
                conf += &format!(
                    "auth_param basic program /usr/lib/squid/basic_ncsa_auth {d}/passwd\n\
                     acl authed proxy_auth REQUIRED\nhttp_access allow authed\n"
                );
            }
            None => conf += "http_access allow localhost\n",
        }
        conf += "http_access deny all\n";
        std::fs::write(dir.join("squid.conf"), conf).unwrap();
        // A service name of its own: two squids never share a shared-memory segment name.
        let child = Command::new("/usr/sbin/squid")
            .args(["-N", "-n", &format!("det{port}"), "-f"])
            .arg(dir.join("squid.conf"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr_file(&dir))
            .spawn()
            .expect("start squid (apt-get install squid)");
        EgressProxy::ready(child, port, dir.join("access.log"), dir)
    }

    /// tinyproxy, asking for `auth` when given and allowing CONNECT only to `connect_ports`
    /// when any are given (others get 403).
    pub fn tinyproxy(parent: &Path, auth: Option<(&str, &str)>, connect_ports: &[u16]) -> Self {
        let dir = folder(parent, "tinyproxy");
        let port = free_port();
        let mut conf = format!(
            "Port {port}\nListen 127.0.0.1\nTimeout 60\nLogLevel Connect\nMaxClients 100\nAllow 127.0.0.1\nLogFile \"{}/tinyproxy.log\"\n",
            dir.display()
        );
        for p in connect_ports {
            conf += &format!("ConnectPort {p}\n");
        }
        if let Some((user, password)) = auth {
            conf += &format!("BasicAuth {user} {password}\n");
        }
        std::fs::write(dir.join("tinyproxy.conf"), conf).unwrap();
        let script = format!(
            "mount --bind {d}/hosts /etc/hosts && exec /usr/bin/tinyproxy -d -c {d}/tinyproxy.conf",
            d = dir.display()
        );
        let child = Command::new("unshare")
            .args(["--mount", "sh", "-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr_file(&dir))
            .spawn()
            .expect("start tinyproxy (apt-get install tinyproxy)");
        EgressProxy::ready(child, port, dir.join("tinyproxy.log"), dir)
    }

    fn ready(mut child: Child, port: u16, log: PathBuf, dir: PathBuf) -> Self {
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let what = format!("the egress proxy in {} to listen on {port}", dir.display());
        wait_until(&what, Duration::from_secs(20), || {
            if let Ok(Some(status)) = child.try_wait() {
                let said = |name: &str| std::fs::read_to_string(dir.join(name)).unwrap_or_default();
                panic!(
                    "the egress proxy in {} exited: {status}\nits stderr:\n{}\nits cache.log:\n{}",
                    dir.display(),
                    said("stderr.log"),
                    said("cache.log")
                );
            }
            TcpStream::connect_timeout(&addr, Duration::from_millis(200))
                .map(drop)
                .map_err(|e| format!("connect: {e}"))
        });
        EgressProxy {
            child,
            port,
            log,
            dir,
        }
    }

    /// `http://[user:password@]127.0.0.1:PORT`, the password percent-encoded.
    pub fn url(&self, auth: Option<(&str, &str)>) -> String {
        match auth {
            Some((u, p)) => format!("http://{u}:{}@127.0.0.1:{}", encode(p), self.port),
            None => format!("http://127.0.0.1:{}", self.port),
        }
    }

    /// What it logged so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until its log holds `needle` (squid writes its access log after a tunnel ends).
    pub fn wait_log(&self, needle: &str, within: Duration) -> String {
        let what = format!("{} to log {needle:?}", self.dir.display());
        wait_until(&what, within, || {
            let text = self.log_text();
            if text.contains(needle) {
                Ok(text)
            } else {
                Err(format!("it has:\n{text}"))
            }
        })
    }
}

impl Drop for EgressProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Percent-encodes everything but unreserved characters (for a password in a URL).
pub fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
