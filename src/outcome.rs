//! How a client connection ended. One label names it in the access log (`outcome=`) and in
//! `det_tls_proxy_connections_total{result=}` alike.

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// Both directions finished.
    Ok,
    /// No bytes either way for `timeouts.idle`.
    IdleTimeout,
    /// One side finished and the other went on past `timeouts.close`.
    CloseTimeout,
    /// A peer reset the connection or a write failed.
    Reset,
    /// The master could not be reached or verified.
    UpstreamError,
    /// The client left before sending anything (the master was never dialled).
    ClientClosedEarly,
    /// The client is not in the listener's `allowed_clients`.
    Denied,
    /// Cut when `timeouts.shutdown` passed during a drain.
    Shutdown,
}

impl Outcome {
    pub(crate) const ALL: [Outcome; 8] = [
        Outcome::Ok,
        Outcome::IdleTimeout,
        Outcome::CloseTimeout,
        Outcome::Reset,
        Outcome::UpstreamError,
        Outcome::ClientClosedEarly,
        Outcome::Denied,
        Outcome::Shutdown,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::IdleTimeout => "idle_timeout",
            Outcome::CloseTimeout => "close_timeout",
            Outcome::Reset => "reset",
            Outcome::UpstreamError => "upstream_error",
            Outcome::ClientClosedEarly => "client_closed_early",
            Outcome::Denied => "denied",
            Outcome::Shutdown => "shutdown",
        }
    }

    /// Its place in [`Outcome::ALL`] (per-listener counters are kept in that order).
    pub fn index(self) -> usize {
        self as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_lists_every_outcome_in_index_order_with_distinct_labels() {
        for (i, o) in Outcome::ALL.iter().enumerate() {
            assert_eq!(o.index(), i);
        }
        let labels: std::collections::HashSet<&str> =
            Outcome::ALL.iter().map(|o| o.label()).collect();
        assert_eq!(labels.len(), Outcome::ALL.len());
    }
}
