//! Access lines of denied clients, rate-limited per listener: a flood of clients outside
//! `allowed_clients` must not flood the log (or the disk behind journald). The first
//! [`LINES_PER_PERIOD`] denials of a listener in each [`PERIOD`] get their access line; the rest
//! are counted, and one summary line reports the count when the period is over.
//! `det_tls_proxy_connections_total{result="denied"}` still counts every one.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Denied clients' access lines written per listener per [`PERIOD`].
pub const LINES_PER_PERIOD: u64 = 10;
/// The period the denied lines are counted over; the summary comes at its end.
pub const PERIOD: Duration = Duration::from_secs(10);

/// One listener's current period.
struct Window {
    started: Instant,
    written: u64,
    suppressed: u64,
    /// A task will report `suppressed` at the end of this window.
    reporter: bool,
}

/// The windows of every listener that denied a client lately.
#[derive(Default)]
pub struct DeniedLog {
    windows: Arc<Mutex<HashMap<String, Window>>>,
}

impl DeniedLog {
    /// Whether the access line of a client `listener` just denied is written. When it is not,
    /// it is counted and reported at the end of the period. `summary` writes the summary line
    /// with the count of lines not written.
    pub(crate) fn admit(&self, listener: &str, summary: fn(&str, u64)) -> bool {
        self.admit_at(listener, Instant::now(), summary)
    }

    fn admit_at(&self, listener: &str, now: Instant, summary: fn(&str, u64)) -> bool {
        let mut map = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() > 1000 && !map.contains_key(listener) {
            // Listeners are few; a map this large is one a reload emptied of meaning.
            map.retain(|_, w| now.duration_since(w.started) < PERIOD);
        }
        let w = map.entry(listener.to_string()).or_insert(Window {
            started: now,
            written: 0,
            suppressed: 0,
            reporter: false,
        });
        if now.duration_since(w.started) >= PERIOD {
            // The window is over and its reporter has not run yet: report here, once.
            let missed = std::mem::take(&mut w.suppressed);
            *w = Window {
                started: now,
                written: 0,
                suppressed: 0,
                reporter: false,
            };
            if missed > 0 {
                summary(listener, missed);
            }
        }
        if w.written < LINES_PER_PERIOD {
            w.written += 1;
            return true;
        }
        w.suppressed += 1;
        if !w.reporter {
            w.reporter = true;
            self.report_at_end(listener, w.started, summary);
        }
        false
    }

    /// Reports the window's suppressed count when it ends, even if no client comes after it.
    fn report_at_end(&self, listener: &str, started: Instant, summary: fn(&str, u64)) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let windows = self.windows.clone();
        let listener = listener.to_string();
        rt.spawn(async move {
            tokio::time::sleep_until((started + PERIOD).into()).await;
            let missed = {
                let mut map = windows.lock().unwrap_or_else(|p| p.into_inner());
                match map.get_mut(&listener) {
                    Some(w) if w.started == started => std::mem::take(&mut w.suppressed),
                    _ => 0,
                }
            };
            if missed > 0 {
                summary(&listener, missed);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    static REPORTED: AtomicU64 = AtomicU64::new(0);

    fn count(_: &str, n: u64) {
        REPORTED.fetch_add(n, Ordering::SeqCst);
    }

    /// Outside a runtime no reporter task starts: the next denial after the period reports.
    #[test]
    fn a_burst_writes_a_few_lines_and_the_rest_are_reported_once() {
        let log = DeniedLog::default();
        let t0 = Instant::now();
        let written = (0..50).filter(|_| log.admit_at("tasks", t0, count)).count() as u64;
        assert_eq!(written, LINES_PER_PERIOD);
        assert!(log.admit_at("agent", t0, count), "another listener has its own window");
        assert_eq!(REPORTED.load(Ordering::SeqCst), 0);
        let later = t0 + PERIOD;
        assert!(log.admit_at("tasks", later, count), "a new period writes again");
        assert_eq!(REPORTED.load(Ordering::SeqCst), 50 - LINES_PER_PERIOD);
        assert!(log.admit_at("tasks", later + PERIOD, count));
        assert_eq!(
            REPORTED.load(Ordering::SeqCst),
            50 - LINES_PER_PERIOD,
            "reported once"
        );
    }
}
