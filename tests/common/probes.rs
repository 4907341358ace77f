//! What the reliability tests (faults, load, hostile) read about the proxy child from /proc
//! and its admin /metrics, and how they report a measurement; and the one waiting loop every
//! test waits through (`wait_until`).

use std::fmt::Display;
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

// === Waiting ===
//
// The one waiting loop of the suite: every helper that waits for an event (a log line, a
// metric, a socket state, a process exit, the master stand-in's records) looks through
// `try_wait_until`, so a test waits for what it means and never for a length of time.

/// The first pause between two looks; it doubles up to `STEP_MAX`, so an event that comes at
/// once is seen at once and a slow one costs few looks.
const STEP_MIN: Duration = Duration::from_millis(2);
const STEP_MAX: Duration = Duration::from_millis(50);

/// Looks with `look` until it returns `Some`, for at most `within` (with one last look at the
/// deadline, so `Duration::ZERO` looks once), and returns what it found, or `None`. Looks start
/// at least a step apart, however long one takes. A look may stop the wait early by returning
/// `Some` of a "never" value (e.g. `Some(None)` when the process it waits on has exited).
pub fn try_wait_until<T>(within: Duration, mut look: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + within;
    let mut step = STEP_MIN;
    loop {
        let looked = Instant::now();
        if let Some(t) = look() {
            return Some(t);
        }
        let now = Instant::now();
        if now >= deadline {
            return None;
        }
        let next = (looked + step).min(deadline);
        std::thread::sleep(next.saturating_duration_since(now));
        step = (step * 2).min(STEP_MAX);
    }
}

/// Waits for the event `what`: `look` returns `Ok` with the event once it has happened, or
/// `Err` with what it saw instead. Panics after `within` with `what` and the last thing seen.
pub fn wait_until<T, O: Display>(
    what: &str,
    within: Duration,
    mut look: impl FnMut() -> Result<T, O>,
) -> T {
    let mut last = None;
    let found = try_wait_until(within, || match look() {
        Ok(t) => Some(t),
        Err(seen) => {
            last = Some(seen);
            None
        }
    });
    match (found, last) {
        (Some(t), _) => t,
        (None, Some(seen)) => panic!("timed out after {within:?} waiting for {what}; {seen}"),
        (None, None) => unreachable!("a wait that found nothing looked at least once"),
    }
}

/// `try_wait_until` for a condition: whether `f` held within `timeout`.
pub fn eventually(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    try_wait_until(timeout, || f().then_some(())).is_some()
}

/// An observation described only if the wait fails, so a look stays cheap: `Err(Later(||
/// format!("state: {:#?}", state())))`.
pub struct Later<F>(pub F);

impl<F: Fn() -> String> Display for Later<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&(self.0)())
    }
}

/// Waits until `value` has stayed the same for `quiet`: `Ok` with it, or `Err` with the last
/// value if it was still changing after `within`. For quantities whose end no event marks
/// (descriptors still closing, memory being returned, bytes that stop moving): the quiet
/// period is the criterion, so use it only where the proxy offers nothing to wait for.
pub fn steady<V: PartialEq>(
    within: Duration,
    quiet: Duration,
    mut value: impl FnMut() -> V,
) -> Result<V, V> {
    let mut last = value();
    let mut since = Instant::now();
    let held = try_wait_until(within, || {
        let now = value();
        if now != last {
            (last, since) = (now, Instant::now());
            return None;
        }
        (since.elapsed() >= quiet).then_some(())
    });
    match held {
        Some(()) => Ok(last),
        None => Err(last),
    }
}

/// Waits until connecting to `addr` is refused (its listener closed). A connection accepted
/// meanwhile (before the close, or queued) is left without a word, so a proxy never dials for it.
pub fn wait_refused(addr: SocketAddr, within: Duration) {
    wait_until(
        &format!("{addr} to refuse connections"),
        within,
        || match TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => Ok(()),
            Ok(s) => {
                drop(s);
                Err("it still accepts".to_string())
            }
            Err(e) => panic!("connect to {addr}: {e}"),
        },
    )
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

/// Waits until the admin endpoint at `admin` has counted at least `n` finished connections of
/// `listener` (whatever their result) and none is open: the proxy is done with every client it
/// has served, so the access line of each, if it writes one, is written.
pub fn wait_connections_over(admin: &str, listener: &str, n: f64, within: Duration) {
    let what = format!("the connections of listener {listener} to be over");
    wait_until(&what, within, || {
        let text = scrape_text(admin);
        let done = metric(
            &text,
            "det_tls_proxy_connections_total",
            &[("listener", listener)],
        );
        let open = metric(
            &text,
            "det_tls_proxy_active_connections",
            &[("listener", listener)],
        );
        (done >= n && open == 0.0)
            .then_some(())
            .ok_or_else(|| format!("{done} finished, {open} open"))
    })
}

/// One measured figure, as a `FIGURE` line on stderr (docs/reliability.md collects them).
pub fn figure(line: String) {
    eprintln!("FIGURE {line}");
}
