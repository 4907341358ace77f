//! A real container runtime for tests: podman on a private store (vfs driver, runc, cgroupfs,
//! file events, its own network configuration), an image made from nothing but the host's
//! `sleep` and the libraries it loads (no registry is needed), containers on bridge networks,
//! and `podman system service` serving the Docker-compatible API on a unix socket.
//! Everything is removed when the fixture is dropped. Needs root and podman + runc
//! (`apt-get install podman buildah runc`; tests/run.sh installs them): without them the
//! fixture fails, it never skips.

use std::net::IpAddr;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use super::eventually;

pub const IMAGE: &str = "localhost/dtp-sleep:test";

pub struct Podman {
    work: tempfile::TempDir,
    services: Vec<Child>,
    networks: Vec<String>,
}

impl Podman {
    /// A private store with the test image imported.
    pub fn new() -> Podman {
        assert!(
            nix::unistd::geteuid().is_root(),
            "the container runtime tests need root (rootful podman with runc and bridge networks)"
        );
        let found = Command::new("podman").arg("--version").output();
        assert!(
            found.is_ok_and(|o| o.status.success()),
            "podman not found: apt-get install podman buildah runc (bash tests/run.sh --deps-only does)"
        );
        // /var/tmp: the vfs driver copies the image for every container.
        let work = tempfile::Builder::new()
            .prefix("dtp-podman-")
            .tempdir_in("/var/tmp")
            .expect("work directory");
        let p = Podman {
            work,
            services: Vec::new(),
            networks: Vec::new(),
        };
        p.import_image();
        p
    }

    pub fn dir(&self) -> &Path {
        self.work.path()
    }

    /// `podman` with the private store's flags.
    pub fn cmd(&self) -> Command {
        let w = self.dir();
        let mut c = super::proxy::clean("podman");
        c.arg("--root").arg(w.join("storage"));
        c.arg("--runroot").arg(w.join("runroot"));
        c.arg("--tmpdir").arg(w.join("tmp"));
        c.arg("--network-config-dir").arg(w.join("networks"));
        // vfs: no overlay mounts; runc: crun refuses hybrid cgroups; cgroupfs and file
        // events: the host need not run systemd (as tests/real/container.sh).
        c.args(["--storage-driver", "vfs", "--runtime", "runc"]);
        c.args(["--cgroup-manager", "cgroupfs", "--events-backend", "file"]);
        c
    }

    /// Runs `podman ARGS`, panics with its stderr unless it succeeds; returns stdout, trimmed.
    pub fn run(&self, args: &[&str]) -> String {
        let out = self.output(args);
        assert!(
            out.status.success(),
            "podman {}: {}\n{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    pub fn output(&self, args: &[&str]) -> Output {
        self.cmd()
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("podman runs")
    }

    /// The image: `sleep` and its libraries (as `ldd` names them) on an empty root.
    fn import_image(&self) {
        let root = self.dir().join("rootfs");
        let sleep = PathBuf::from("/bin/sleep");
        copy_into(&root, &sleep);
        let ldd = Command::new("ldd").arg(&sleep).output().expect("ldd");
        for lib in String::from_utf8_lossy(&ldd.stdout)
            .split_whitespace()
            .filter(|w| w.starts_with('/'))
        {
            copy_into(&root, Path::new(lib));
        }
        let tar = self.dir().join("rootfs.tar");
        let made = Command::new("tar")
            .arg("-C")
            .arg(&root)
            .arg("-cf")
            .arg(&tar)
            .arg(".")
            .status()
            .expect("tar");
        assert!(made.success(), "tar of the image's root");
        self.run(&["import", tar.to_str().unwrap(), IMAGE]);
    }

    /// A bridge network of the test's own (IPv6 too with `ipv6`), removed with the fixture.
    pub fn network(&mut self, name: &str, ipv6: bool) {
        let mut args = vec!["network", "create"];
        if ipv6 {
            args.push("--ipv6");
        }
        args.push(name);
        self.run(&args);
        self.networks.push(name.to_string());
    }

    /// Starts a container that sleeps, on `network`, with `env`; returns its full id.
    pub fn start(&self, name: &str, network: &str, env: &[&str]) -> String {
        self.start_with(name, network, env, &[])
    }

    /// `start` with more `podman run` options (`-v /usr:/usr:ro`: the host's programs).
    pub fn start_with(&self, name: &str, network: &str, env: &[&str], options: &[&str]) -> String {
        let mut args = vec!["run", "-d", "--name", name, "--network", network];
        args.extend(options);
        // podman's default limits cannot be set without CAP_SYS_RESOURCE in every sandbox.
        args.extend([
            "--ulimit",
            "nofile=1024:1024",
            "--ulimit",
            "nproc=1024:1024",
        ]);
        for e in env {
            args.extend(["-e", e]);
        }
        args.extend([IMAGE, "/bin/sleep", "3600"]);
        self.run(&args)
    }

    /// The container's address on `network`, as `podman inspect` reports it (IPv6 with `v6`).
    pub fn address(&self, name: &str, network: &str, v6: bool) -> IpAddr {
        let field = if v6 { "GlobalIPv6Address" } else { "IPAddress" };
        let format = format!("{{{{(index .NetworkSettings.Networks \"{network}\").{field}}}}}");
        let text = self.run(&["inspect", "--format", &format, name]);
        text.parse()
            .unwrap_or_else(|_| panic!("{name} has no {field} on {network}: {text:?}"))
    }

    /// `podman system service` on `socket`, once it accepts connections.
    pub fn serve(&mut self, socket: &Path) {
        let child = self
            .cmd()
            .args(["system", "service", "--time=0"])
            .arg(format!("unix://{}", socket.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("podman system service");
        self.services.push(child);
        let up = eventually(Duration::from_secs(30), || {
            UnixStream::connect(socket).is_ok()
        });
        assert!(
            up,
            "podman system service did not listen on {}",
            socket.display()
        );
    }

    /// Stops every API service (the containers go on running).
    pub fn stop_serving(&mut self) {
        for mut s in self.services.drain(..) {
            let _ = s.kill();
            let _ = s.wait();
        }
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        self.stop_serving();
        let _ = self.output(&["rm", "-a", "-f", "-t", "0"]);
        for n in std::mem::take(&mut self.networks) {
            let _ = self.output(&["network", "rm", "-f", &n]);
        }
        let _ = self.output(&["rmi", "-a", "-f"]);
    }
}

/// Copies `file` (symlinks followed) to the same path under `root`.
fn copy_into(root: &Path, file: &Path) {
    let dest = root.join(file.strip_prefix("/").unwrap());
    std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
    std::fs::copy(file, &dest).unwrap_or_else(|e| panic!("copy {}: {e}", file.display()));
}
