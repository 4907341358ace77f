//! Running the det-tls-proxy binary: a clean environment, stderr collected line by line
//! (JSON when the config says `log: {format: json}`), waits on log lines with deadlines,
//! and the child killed when the test ends.

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;

use super::probes::{try_wait_until, wait_until};

pub const BIN: &str = env!("CARGO_BIN_EXE_det-tls-proxy");

/// How long a proxy may take to bind its listeners and log "ready".
pub const READY_TIMEOUT: Duration = Duration::from_secs(15);

/// A command for the proxy binary with none of the variables it (or sd_notify, or a
/// proxy-aware client) reads inherited from the test's environment: each test states the
/// whole environment it depends on.
pub fn command() -> Command {
    clean(BIN)
}

/// Prefixes of inherited variables `clean` removes: the proxy's own settings and the
/// systemd socket-activation (LISTEN_*) and watchdog (WATCHDOG_*) protocols.
pub const SCRUBBED_PREFIXES: &[&str] = &["DET_", "LISTEN_", "WATCHDOG_"];

/// Inherited variables `clean` removes by name.
pub const SCRUBBED: &[&str] = &[
    "RUST_LOG",
    "NOTIFY_SOCKET",
    "HTTPS_PROXY",
    "https_proxy",
    "HTTP_PROXY",
    "http_proxy",
    "ALL_PROXY",
    "all_proxy",
    "NO_PROXY",
    "no_proxy",
    "CREDENTIALS_DIRECTORY",
];

/// `program` with no inherited variable from `SCRUBBED_PREFIXES`/`SCRUBBED` and stdin
/// from /dev/null.
pub fn clean(program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut cmd = Command::new(program);
    for (k, _) in std::env::vars_os() {
        if let Some(k) = k.to_str() {
            if SCRUBBED_PREFIXES.iter().any(|p| k.starts_with(p)) {
                cmd.env_remove(k);
            }
        }
    }
    for k in SCRUBBED {
        cmd.env_remove(k);
    }
    cmd.stdin(Stdio::null());
    cmd
}

/// The proxy's combined output and exit status, for commands that end by themselves.
pub struct Exited {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Exited {
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }
}

impl std::fmt::Display for Exited {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "status: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.status, self.stdout, self.stderr
        )
    }
}

/// Runs `cmd` to completion; kills it and panics if it is still running after `timeout`.
pub fn run_to_exit(mut cmd: Command, timeout: Duration) -> Exited {
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn det-tls-proxy");
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let t_out = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = out.read_to_end(&mut s);
        String::from_utf8_lossy(&s).into_owned()
    });
    let t_err = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = err.read_to_end(&mut s);
        String::from_utf8_lossy(&s).into_owned()
    });
    let Some(status) = try_wait_until(timeout, || child.try_wait().unwrap()) else {
        let _ = child.kill();
        let _ = child.wait();
        let stderr = t_err.join().unwrap();
        panic!("det-tls-proxy still running after {timeout:?}; stderr:\n{stderr}");
    };
    Exited {
        status,
        stdout: t_out.join().unwrap(),
        stderr: t_err.join().unwrap(),
    }
}

/// `det-tls-proxy run --config <path>` expected to fail at start: returns what it printed.
pub fn run_expecting_exit(config: &Path) -> Exited {
    let mut cmd = command();
    cmd.arg("run").arg("--config").arg(config);
    run_to_exit(cmd, Duration::from_secs(15))
}

#[derive(Default)]
struct LogState {
    lines: Vec<String>,
    stdout: Vec<String>,
    closed: bool,
}

type Log = Arc<Mutex<LogState>>;

/// A running proxy. Killed on drop; its stderr is printed if the test is failing.
pub struct Proxy {
    child: Child,
    log: Log,
    exit: Option<ExitStatus>,
}

impl Proxy {
    /// Spawns `cmd` without waiting for anything.
    pub fn spawn(mut cmd: Command) -> Proxy {
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn det-tls-proxy");
        let log: Log = Arc::default();
        let err = child.stderr.take().unwrap();
        let out = child.stdout.take().unwrap();
        let l = log.clone();
        std::thread::spawn(move || {
            let mut r = BufReader::new(err);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match r.read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        let line = String::from_utf8_lossy(&buf).trim_end().to_string();
                        l.lock().unwrap().lines.push(line);
                    }
                }
            }
            l.lock().unwrap().closed = true;
        });
        let l = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                match line {
                    Ok(line) => l.lock().unwrap().stdout.push(line),
                    Err(_) => break,
                }
            }
        });
        Proxy {
            child,
            log,
            exit: None,
        }
    }

    /// `det-tls-proxy run --config <config>`, waiting for "ready".
    pub fn start(config: &Path) -> Proxy {
        let mut cmd = command();
        cmd.arg("run").arg("--config").arg(config);
        Proxy::start_cmd(cmd)
    }

    /// Spawns `cmd` and waits for "ready".
    pub fn start_cmd(cmd: Command) -> Proxy {
        let p = Proxy::spawn(cmd);
        p.wait_ready();
        p
    }

    pub fn wait_ready(&self) {
        self.wait_for("the \"ready\" line", READY_TIMEOUT, |v| {
            v["message"] == "ready"
        });
    }

    pub fn pid(&self) -> nix::unistd::Pid {
        nix::unistd::Pid::from_raw(self.child.id() as i32)
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(self.pid(), sig).expect("signal proxy");
    }

    /// Every stderr line so far.
    pub fn lines(&self) -> Vec<String> {
        self.log.lock().unwrap().lines.clone()
    }

    pub fn stderr(&self) -> String {
        self.lines().join("\n")
    }

    /// Every stderr line that is a JSON object.
    pub fn json_lines(&self) -> Vec<Value> {
        self.lines().iter().filter_map(|l| json_object(l)).collect()
    }

    /// The first JSON line matching `pred`, if any yet.
    pub fn find(&self, pred: impl Fn(&Value) -> bool) -> Option<Value> {
        self.json_lines().into_iter().find(|v| pred(v))
    }

    /// Looks at the stderr lines after the first `from`: the first for which `pred` gives
    /// `Some`, else `Err` (and `from` moved past them) — or `Ok(None)` when stderr has closed,
    /// as nothing more will come.
    fn look<T>(
        &self,
        from: &mut usize,
        mut pred: impl FnMut(&str) -> Option<T>,
    ) -> Result<Option<T>, StderrSoFar<'_>> {
        let st = self.log.lock().unwrap();
        if let Some(t) = st.lines[*from..].iter().find_map(|l| pred(l)) {
            return Ok(Some(t));
        }
        *from = st.lines.len();
        if st.closed {
            return Ok(None);
        }
        Err(StderrSoFar(self))
    }

    /// Waits for a JSON line matching `pred`; panics with the whole log on timeout or if
    /// the proxy's stderr closes first.
    pub fn wait_for(&self, what: &str, timeout: Duration, pred: impl Fn(&Value) -> bool) -> Value {
        let mut from = 0;
        wait_until(what, timeout, || {
            self.look(&mut from, |l| json_object(l).filter(|v| pred(v)))
        })
        .unwrap_or_else(|| {
            panic!(
                "proxy exited before logging {what}; stderr:\n{}",
                self.stderr()
            )
        })
    }

    /// Waits until `n` JSON lines match `pred` and returns the `n`-th.
    pub fn wait_for_nth(
        &self,
        what: &str,
        n: usize,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        let (mut from, mut found) = (0, 0);
        wait_until(&format!("{what} #{n}"), timeout, || {
            self.look(&mut from, |l| {
                let v = json_object(l).filter(|v| pred(v))?;
                found += 1;
                (found == n).then_some(v)
            })
        })
        .unwrap_or_else(|| {
            panic!(
                "no {what} #{n} before the proxy exited; stderr:\n{}",
                self.stderr()
            )
        })
    }

    /// Waits for a raw stderr line for which `pred` gives `Some`; `None` on timeout or when
    /// stderr closes first (for a child that is not the proxy, or not yet).
    pub fn try_wait_line<T>(
        &self,
        timeout: Duration,
        pred: impl Fn(&str) -> Option<T>,
    ) -> Option<T> {
        let mut from = 0;
        try_wait_until(timeout, || self.look(&mut from, &pred).ok()).flatten()
    }

    /// Waits for a raw stderr line containing `needle` (for text-format logs).
    pub fn wait_for_text(&self, needle: &str, timeout: Duration) -> String {
        let mut from = 0;
        wait_until(
            &format!("a stderr line containing {needle:?}"),
            timeout,
            || self.look(&mut from, |l| l.contains(needle).then(|| l.to_string())),
        )
        .unwrap_or_else(|| {
            panic!(
                "no stderr line containing {needle:?}; stderr:\n{}",
                self.stderr()
            )
        })
    }

    /// The address a listener logged in its "listening" line, as logged.
    pub fn listener_addr(&self, name: &str) -> String {
        let v = self.wait_for(
            &format!("listener {name:?} to be listening"),
            READY_TIMEOUT,
            |v| v["message"] == "listening" && v["listener"] == name,
        );
        v["addr"]
            .as_str()
            .unwrap_or_else(|| panic!("listening line without addr: {v}"))
            .to_string()
    }

    /// A TCP address to dial for a listener (a wildcard address becomes loopback).
    pub fn tcp_addr(&self, name: &str) -> SocketAddr {
        let s = self.listener_addr(name);
        let mut a: SocketAddr = s
            .parse()
            .unwrap_or_else(|e| panic!("listener {name} addr {s:?}: {e}"));
        if a.ip().is_unspecified() {
            a.set_ip(if a.is_ipv4() {
                std::net::Ipv4Addr::LOCALHOST.into()
            } else {
                std::net::Ipv6Addr::LOCALHOST.into()
            });
        }
        a
    }

    /// The access-log line for the connection from `client`.
    pub fn access_line(&self, client: SocketAddr) -> Value {
        let c = client.to_string();
        self.wait_for(
            &format!("the access line of client {c}"),
            Duration::from_secs(15),
            |v| is_access(v) && v["client"] == c.as_str(),
        )
    }

    /// The `n`-th (1-based) access-log line of `listener`.
    pub fn nth_access_line(&self, listener: &str, n: usize) -> Value {
        self.wait_for_nth(
            &format!("access line of listener {listener}"),
            n,
            Duration::from_secs(15),
            |v| is_access(v) && v["listener"] == listener,
        )
    }

    /// The exit status, if the process has exited.
    pub fn try_exit(&mut self) -> Option<ExitStatus> {
        if self.exit.is_none() {
            self.exit = self.child.try_wait().unwrap();
        }
        self.exit
    }

    /// Waits up to `timeout` for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let status = try_wait_until(timeout, || self.try_exit())?;
        // Let the reader thread drain what is left of stderr.
        try_wait_until(Duration::from_secs(5), || {
            self.log.lock().unwrap().closed.then_some(())
        });
        Some(status)
    }
}

/// What a wait on a proxy's stderr saw: all of it, written out only if the wait fails.
struct StderrSoFar<'a>(&'a Proxy);

impl std::fmt::Display for StderrSoFar<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "stderr:\n{}", self.0.stderr())
    }
}

/// `line` parsed, when it is a JSON object.
fn json_object(line: &str) -> Option<Value> {
    serde_json::from_str::<Value>(line)
        .ok()
        .filter(|v| v.is_object())
}

pub fn is_access(v: &Value) -> bool {
    v["target"] == "access" && v["message"] == "connection"
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if self.try_exit().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            // A predicate that panicked while looking may have poisoned the lock.
            let st = self.log.lock().unwrap_or_else(|p| p.into_inner());
            eprintln!(
                "--- det-tls-proxy stderr ({} lines) ---\n{}",
                st.lines.len(),
                st.lines.join("\n")
            );
            if !st.stdout.is_empty() {
                eprintln!("--- det-tls-proxy stdout ---\n{}", st.stdout.join("\n"));
            }
        }
    }
}

/// A YAML string literal (JSON strings are YAML).
pub fn q(s: impl AsRef<str>) -> String {
    serde_json::to_string(s.as_ref()).unwrap()
}

/// A YAML string literal for a path.
pub fn qp(p: &Path) -> String {
    q(p.to_str().expect("utf-8 path"))
}

/// A proxy configuration file, built up by the tests. Always JSON logs at debug level.
pub struct Cfg {
    pub master_host: Option<String>,
    pub master_port: Option<u16>,
    pub tls: Vec<(String, String)>,
    pub listeners: Vec<String>,
    pub extra: Vec<String>,
}

impl Cfg {
    /// One listener named `main` on 127.0.0.1:0.
    pub fn new(master_host: &str, master_port: u16) -> Cfg {
        Cfg {
            master_host: Some(master_host.to_string()),
            master_port: Some(master_port),
            tls: vec![],
            listeners: vec![r#"{name: main, listen: "127.0.0.1:0"}"#.to_string()],
            extra: vec![],
        }
    }

    /// `security.tls.<key>: <yaml value>`.
    pub fn tls(mut self, key: &str, yaml_value: impl Into<String>) -> Cfg {
        self.tls.push((key.to_string(), yaml_value.into()));
        self
    }

    pub fn master_cert(self, path: &Path) -> Cfg {
        self.tls("master_cert", qp(path))
    }

    /// Replaces the listeners; each item is one YAML flow mapping.
    pub fn listeners(mut self, items: &[&str]) -> Cfg {
        self.listeners = items.iter().map(|s| s.to_string()).collect();
        self
    }

    /// Extra top-level YAML (e.g. "timeouts: {idle: 1s}").
    pub fn extra(mut self, yaml: &str) -> Cfg {
        self.extra.push(yaml.to_string());
        self
    }

    pub fn render(&self) -> String {
        let mut y = String::from("log: {format: json, level: debug}\n");
        if let Some(h) = &self.master_host {
            y += &format!("master_host: {}\n", q(h));
        }
        if let Some(p) = self.master_port {
            y += &format!("master_port: {p}\n");
        }
        if !self.tls.is_empty() {
            y += "security:\n  tls:\n";
            for (k, v) in &self.tls {
                y += &format!("    {k}: {v}\n");
            }
        }
        if !self.listeners.is_empty() {
            y += "listeners:\n";
            for l in &self.listeners {
                y += &format!("  - {l}\n");
            }
        }
        for e in &self.extra {
            y += e;
            y += "\n";
        }
        y
    }

    /// Writes the file as `dir/proxy.yaml`.
    pub fn write(&self, dir: &Path) -> PathBuf {
        let path = dir.join("proxy.yaml");
        std::fs::write(&path, self.render()).unwrap();
        path
    }

    /// Writes the file and starts the proxy on it.
    pub fn start(&self, dir: &Path) -> Proxy {
        Proxy::start(&self.write(dir))
    }
}

/// How long `check` may take: it dials the master, and again to test resumption.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(20);

/// `det-tls-proxy check --config <config>`, run to its end.
pub fn check(config: &Path) -> Exited {
    let mut cmd = command();
    cmd.arg("check").arg("--config").arg(config);
    run_to_exit(cmd, CHECK_TIMEOUT)
}

/// `det-tls-proxy check --json --config <config>`, run to its end.
pub fn check_json(config: &Path) -> Exited {
    let mut cmd = command();
    cmd.arg("check").arg("--json").arg("--config").arg(config);
    run_to_exit(cmd, CHECK_TIMEOUT)
}

/// The admin endpoint on any free loopback port, as a line of a proxy configuration.
pub const ADMIN: &str = r#"admin: {listen: "127.0.0.1:0"}"#;

impl Proxy {
    /// The error of the first `upstream failed` line, once it is logged (within `within`).
    pub fn upstream_error(&self, within: Duration) -> String {
        let line = self.wait_for("an upstream failed line", within, |v| {
            v["message"] == "upstream failed"
        });
        super::field(&line, "error").to_string()
    }
}

/// Why the proxy turns a client away, as the access line's `outcome` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// By the listener's policy (`allowed_clients`, `allowed_peers`).
    Denied,
    /// The master could not be reached or verified.
    UpstreamError,
    /// The master ended the session after the handshake (as a TLS 1.3 master refuses a
    /// missing client certificate: the client's side of the handshake is already done).
    Reset,
}

impl Refusal {
    pub fn outcome(self) -> &'static str {
        match self {
            Refusal::Denied => "denied",
            Refusal::UpstreamError => "upstream_error",
            Refusal::Reset => "reset",
        }
    }
}

impl Proxy {
    /// A client of `addr` this proxy turns away for `why`: its connection closes within
    /// `within` with nothing relayed, and its access line gives `why` as the outcome (a close
    /// for any other reason fails). Returns the client's local address.
    pub fn refuses(&self, addr: SocketAddr, why: Refusal, within: Duration) -> SocketAddr {
        let local = super::closed_unrelayed(addr, within);
        let client = local.to_string();
        let (outcome, line) = self
            .try_wait_line(Duration::from_secs(15), |l| {
                access_outcome(l, &client).map(|o| (o, l.to_string()))
            })
            .unwrap_or_else(|| {
                panic!(
                    "no access line for client {client} within 15 s; stderr:\n{}",
                    self.stderr()
                )
            });
        assert_eq!(
            outcome,
            why.outcome(),
            "client {local} was closed, but not as {why:?}: {line}"
        );
        local
    }
}

/// The outcome `line` gives when it is the access line of `client`, in JSON or text format.
fn access_outcome(line: &str, client: &str) -> Option<String> {
    if let Ok(v) = serde_json::from_str::<Value>(line) {
        return (is_access(&v) && v["client"] == client)
            .then(|| v["outcome"].as_str().unwrap_or_default().to_string());
    }
    if !line.contains(" access: connection ") || !line.contains(&format!(" client={client} ")) {
        return None;
    }
    let rest = line.split_once("outcome=\"")?.1;
    Some(rest.split('"').next()?.to_string())
}
