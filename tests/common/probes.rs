//! What the reliability tests (faults, load, hostile) read about the proxy child from /proc
//! and its admin /metrics, and how they report a measurement.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use super::IO_TIMEOUT;

/// The number of open descriptors of a process (0 if it cannot be read).
pub fn fd_count(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// A `VmRSS:`/`VmHWM:` line of /proc/PID/status, in KiB.
pub fn status_kib(pid: i32, key: &str) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

pub fn rss_kib(pid: i32) -> u64 {
    status_kib(pid, "VmRSS:")
}

/// Clock ticks per second in /proc/PID/stat (USER_HZ, 100 on Linux).
pub const USER_HZ: u64 = 100;

/// utime + stime of a process, in clock ticks (USER_HZ); 0 if it cannot be read.
pub fn cpu_ticks(pid: i32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = s.rsplit_once(") ").map(|x| x.1).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let n = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    n(11) + n(12)
}

/// utime + stime of a process, in seconds.
pub fn cpu_secs(pid: i32) -> f64 {
    cpu_ticks(pid) as f64 / USER_HZ as f64
}

/// Polls `f` every 20 ms until it returns true or `timeout` passes; returns whether it did.
pub fn eventually(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The body of one `GET /metrics` from the admin listener at `admin` (Prometheus text);
/// panics if no HTTP response arrives.
pub fn scrape_text(admin: &str) -> String {
    let addr: SocketAddr = admin
        .parse()
        .unwrap_or_else(|e| panic!("admin address {admin:?}: {e}"));
    let mut s = TcpStream::connect_timeout(&addr, IO_TIMEOUT)
        .unwrap_or_else(|e| panic!("connect to admin {admin}: {e}"));
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    s.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n")
        .expect("send the metrics request");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    match out.split_once("\r\n\r\n") {
        Some((_, body)) => body.to_string(),
        None => panic!("no HTTP response to GET /metrics from {admin}: {out:?}"),
    }
}

/// The sum of every sample of `name` carrying all of `labels`, in Prometheus text.
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' '))
        .filter(|(series, _)| {
            series.split('{').next() == Some(name)
                && labels
                    .iter()
                    .all(|(k, v)| series.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|(_, v)| v.trim().parse::<f64>().ok())
        .sum()
}

/// One measured figure, as a `FIGURE` line on stderr (docs/reliability.md collects them).
pub fn figure(line: String) {
    eprintln!("FIGURE {line}");
}
