//! `upstream.*`: the pool of pre-connected TLS sessions (`preconnect`, `preconnect_max_idle`).

use std::time::Duration;

use super::Check;
use crate::config::raw::{RawUpstream, DEFAULT_PRECONNECT_MAX_IDLE};
use crate::config::Preconnect;

/// More ready sessions than this per ALPN choice only load the master: a burst larger than
/// the pool dials fresh, as without one.
pub(crate) const MAX_PRECONNECT: usize = 64;
/// A session this young would be replaced over and over; masters idle out far later.
const MIN_MAX_IDLE: Duration = Duration::from_secs(1);

pub(super) fn preconnect(c: &mut Check, raw: &RawUpstream) -> Preconnect {
    let p = Preconnect {
        size: raw.preconnect.unwrap_or(0),
        max_idle: raw
            .preconnect_max_idle
            .map_or(DEFAULT_PRECONNECT_MAX_IDLE, |h| h.0),
    };
    if p.size > MAX_PRECONNECT {
        let source = c.src("upstream.preconnect");
        c.fail(
            "upstream.preconnect",
            format!(
                "{} is more than {MAX_PRECONNECT} sessions per ALPN choice; a few (1 to 4) cover an agent host's new connections",
                p.size
            ),
            Some(source),
        );
    }
    if p.max_idle < MIN_MAX_IDLE {
        let source = c.src("upstream.preconnect_max_idle");
        c.fail(
            "upstream.preconnect_max_idle",
            format!(
                "{:?} is too short: must be at least 1s, and shorter than the master's idle timeout (the default 30s usually is)",
                p.max_idle
            ),
            Some(source),
        );
    }
    p
}

#[cfg(test)]
mod tests {
    use crate::config::validate::testing::{has, mistakes, valid};
    use std::time::Duration;

    #[test]
    fn defaults_off_with_thirty_seconds() {
        let c = valid("master_host: det\n");
        assert_eq!(c.preconnect.size, 0);
        assert_eq!(c.preconnect.max_idle, Duration::from_secs(30));
        let c = valid("master_host: det\nupstream: {preconnect: 2, preconnect_max_idle: 1m}\n");
        assert_eq!(c.preconnect.size, 2);
        assert_eq!(c.preconnect.max_idle, Duration::from_secs(60));
    }

    #[test]
    fn too_many_or_too_short_is_refused() {
        let m = mistakes("master_host: det\nupstream: {preconnect: 65, preconnect_max_idle: 500ms}\n");
        assert!(has(&m, "upstream.preconnect", "more than 64"), "{m:?}");
        assert!(has(&m, "upstream.preconnect_max_idle", "at least 1s"), "{m:?}");
        let m = mistakes("master_host: det\nupstream: {preconnect: -1}\n");
        assert!(!m.is_empty());
    }
}
