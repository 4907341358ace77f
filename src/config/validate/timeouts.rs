//! `timeouts.*` and `max_connections`.

use std::time::Duration;

use super::Check;
use crate::config::raw::{HumanDuration, RawTimeouts, DEFAULT_MAX_CONNECTIONS, DEFAULT_TIMEOUTS};
use crate::config::Timeouts;

pub(super) fn timeouts(c: &mut Check, tm: &RawTimeouts) -> Timeouts {
    let d = |v: Option<HumanDuration>, dflt: Duration| v.map_or(dflt, |h| h.0);
    let timeouts = Timeouts {
        connect: d(tm.connect, DEFAULT_TIMEOUTS.connect),
        handshake: d(tm.handshake, DEFAULT_TIMEOUTS.handshake),
        idle: d(tm.idle, DEFAULT_TIMEOUTS.idle),
        close: d(tm.close, DEFAULT_TIMEOUTS.close),
        shutdown: d(tm.shutdown, DEFAULT_TIMEOUTS.shutdown),
    };
    // A zero shutdown means "do not wait"; the others would refuse every connection.
    for (k, v) in [
        ("timeouts.connect", timeouts.connect),
        ("timeouts.handshake", timeouts.handshake),
        ("timeouts.idle", timeouts.idle),
        ("timeouts.close", timeouts.close),
    ] {
        if v.is_zero() {
            let source = c.src(k);
            c.fail(k, "must be longer than 0s", Some(source));
        }
    }
    timeouts
}

pub(super) fn max_connections(c: &mut Check, raw: Option<usize>) -> usize {
    let max = raw.unwrap_or(DEFAULT_MAX_CONNECTIONS);
    if max == 0 {
        let source = c.src("max_connections");
        c.fail("max_connections", "must be at least 1", Some(source));
    }
    max
}

#[cfg(test)]
mod tests {
    use crate::config::validate::testing::{has, mistakes, valid};
    use std::time::Duration;

    #[test]
    fn zero_timeouts_are_refused_but_a_zero_shutdown_is_not() {
        let m = mistakes("master_host: det\ntimeouts: {connect: 0s, idle: 0s, shutdown: 0s}\n");
        assert!(has(&m, "timeouts.connect", "longer than 0s"), "{m:?}");
        assert!(has(&m, "timeouts.idle", "longer than 0s"), "{m:?}");
        assert!(!m.iter().any(|(k, _)| k == "timeouts.shutdown"), "{m:?}");
    }

    #[test]
    fn defaults_and_humantime_values() {
        let c = valid("master_host: det\ntimeouts: {handshake: 1m 30s}\n");
        assert_eq!(c.timeouts.handshake, Duration::from_secs(90));
        assert_eq!(c.timeouts.connect, Duration::from_secs(10));
        assert_eq!(c.max_connections, 10_000);
        assert!(has(&mistakes("master_host: det\nmax_connections: 0\n"), "max_connections", "at least 1"));
    }
}
