//! What the reliability tests (faults, load, hostile) read about the proxy child from /proc,
//! and how they report a measurement.

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

/// One measured figure, as a `FIGURE` line on stderr (tests/RELIABILITY.md collects them).
pub fn figure(line: String) {
    eprintln!("FIGURE {line}");
}
