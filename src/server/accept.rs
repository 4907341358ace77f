//! The accept loop of one listener: take a client, judge it by the policy of the state current
//! at that moment, wait for room under `max_connections`, and hand it to `proxy::handle` with
//! that state, which it keeps for its life.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::ListenerKey;
use crate::limit::Limit;
use crate::listen::{self, Backoff, Bound, Peer};
use crate::proxy;
use crate::state::{ListenerPolicy, Shared, State};

pub(crate) struct AcceptLoop {
    pub key: ListenerKey,
    pub bound: Arc<Bound>,
    pub shared: Arc<Shared>,
    pub limit: Arc<Limit>,
    pub stop: CancellationToken,
    pub tracker: TaskTracker,
}

impl AcceptLoop {
    pub fn spawn(self) {
        tokio::spawn(self.run());
    }

    async fn run(self) {
        let mut backoff = Backoff::default();
        loop {
            let accepted = tokio::select! {
                r = self.bound.accept() => r,
                _ = self.stop.cancelled() => return,
            };
            let (stream, peer) = match accepted {
                Ok(x) => x,
                Err(e) if listen::is_resource_exhaustion(&e) => {
                    let delay = backoff.next_delay();
                    let local = self.bound.local.clone();
                    self.shared.log_failure(&format!("accept:{local}:{e}"), |n| {
                        tracing::warn!(addr = %local, error = %e, repeated = n, retry_in_ms = delay.as_millis() as u64, "cannot accept: out of resources; backing off");
                    });
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = self.stop.cancelled() => return,
                    }
                    continue;
                }
                Err(e) => {
                    tracing::debug!(addr = %self.bound.local, error = %e, "accept failed");
                    continue;
                }
            };
            backoff.reset();
            let Some(admitted) = self.admit(&peer) else {
                continue;
            };
            // Beyond max_connections this loop stops accepting until there is room, so further
            // clients wait in the kernel's backlog: at most one accepted client per listener
            // waits here. The place is taken after accept, not before, so an idle listener never
            // holds one that another listener's client needs.
            let (state, policy, permit) = match self.limit.try_acquire() {
                Some(permit) => (admitted.0, admitted.1, permit),
                None => {
                    let permit = tokio::select! {
                        p = self.limit.acquire() => p,
                        _ = self.stop.cancelled() => return,
                    };
                    // A reload may have come while it waited: judge it by the state current now.
                    let Some((state, policy)) = self.admit(&peer) else {
                        continue;
                    };
                    (state, policy, permit)
                }
            };
            let shared = self.shared.clone();
            self.tracker.spawn(async move {
                proxy::handle(stream, peer, state, policy, shared).await;
                drop(permit);
            });
        }
    }

    /// The live state and this listener's policy in it, if the client may connect. A client
    /// of a listener the live configuration no longer has (a reload is closing it) is dropped.
    fn admit(&self, peer: &Peer) -> Option<(Arc<State>, Arc<ListenerPolicy>)> {
        let state = self.shared.current();
        let policy = state.listeners.get(&self.key)?.clone();
        if !policy.allows(peer) {
            proxy::deny(&policy, peer, &self.shared);
            return None;
        }
        Some((state, policy))
    }
}
