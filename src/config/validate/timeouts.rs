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
