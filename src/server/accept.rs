//! The accept loop of one listener: wait for room under the listener's own
//! `listeners[].max_connections`, take a client, judge it by the policy of the state current at
//! that moment, wait for room under the global `max_connections`, and start its
//! `Connection` with that state, which it keeps for its life.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{ListenerConfig, ListenerKey};
use crate::connection::{Accepted, Permits};
use crate::limit::{Limit, Permit};
use crate::listen::{self, Backoff, Bound, ClientStream, Peer};
use crate::state::Shared;

pub(crate) struct AcceptLoop {
    pub key: ListenerKey,
    pub bound: Arc<Bound>,
    pub shared: Arc<Shared>,
    /// The global `max_connections`, shared by every listener.
    pub limit: Arc<Limit>,
    /// This listener's own `max_connections`; unbounded when it has none.
    pub own: Arc<Limit>,
    pub stop: CancellationToken,
    pub(crate) tracker: TaskTracker,
}

/// The size of a listener's own limit: its `max_connections`, or no cap of its own.
pub(super) fn own_cap(lc: &ListenerConfig) -> usize {
    lc.max_connections.unwrap_or(usize::MAX)
}

impl AcceptLoop {
    pub fn spawn(self) {
        tokio::spawn(self.run());
    }

    async fn run(self) {
        let mut backoff = Backoff::default();
        loop {
            let Some((stream, peer, own)) = self.next_client(&mut backoff).await else {
                return;
            };
            let Some(accepted) = self.judge(stream, peer) else {
                continue;
            };
            // Beyond the global max_connections this loop stops accepting until there is room,
            // so further clients wait in the kernel's backlog: at most one accepted client per
            // listener waits here. The global place is taken after accept, not before (unlike
            // the listener's own), so an idle listener never holds one that another listener's
            // client needs.
            let (accepted, global) = match self.limit.try_acquire() {
                Some(permit) => (accepted, permit),
                None => {
                    let permit = tokio::select! {
                        p = self.limit.acquire() => p,
                        _ = self.stop.cancelled() => return,
                    };
                    // A reload may have come while it waited: judge it by the state current now.
                    let (stream, peer) = accepted.into_client();
                    let Some(accepted) = self.judge(stream, peer) else {
                        continue;
                    };
                    (accepted, permit)
                }
            };
            let conn = accepted.open(self.shared.clone(), Permits { global, own });
            self.tracker.spawn(conn.serve());
        }
    }

    /// The next client, with its place under this listener's own limit; `None` once stopped.
    ///
    /// The own place is taken *before* accept (as mini-redis does): it concerns this listener
    /// alone, so while the listener is full its loop does not accept at all and its waiting
    /// clients stay in its own kernel backlog, holding no descriptor of ours and no global
    /// place, and no other listener notices. The one place an idle loop holds while it waits in
    /// accept is one its own next client would take anyway.
    async fn next_client(&self, backoff: &mut Backoff) -> Option<(ClientStream, Peer, Permit)> {
        let own = tokio::select! {
            p = self.own.acquire() => p,
            _ = self.stop.cancelled() => return None,
        };
        let shared = &self.shared;
        let (stream, peer) = listen::accept_or_back_off(
            &*self.bound,
            &self.bound.local,
            backoff,
            |key, log| shared.log_failure(key, log),
            &self.stop,
        )
        .await?;
        if !self.own.over() {
            return Some((stream, peer, own));
        }
        // A reload lowered the cap while this place waited in accept: the client waits for
        // room under the new cap, as one accepted beyond the global cap does.
        drop(own);
        let own = tokio::select! {
            p = self.own.acquire() => p,
            _ = self.stop.cancelled() => return None,
        };
        Some((stream, peer, own))
    }

    /// The client, judged by the policy of the live state: `None` when it is refused, or when
    /// the live configuration no longer has this listener (a reload is closing it).
    fn judge(&self, stream: ClientStream, peer: Peer) -> Option<Accepted> {
        let state = self.shared.current();
        let policy = state.listeners.get(&self.key)?.clone();
        Accepted::judge(stream, peer, state, policy, &self.shared)
    }
}
