//! One client connection, as one value moving through typed stages:
//!
//! ```text
//! accept ─▶ Accepted ─judge─▶ (global place) ─open─▶ Connection
//!   admit ─▶ Admitted ─sniff─▶ Sniffed ─route─▶ Master ─relay─▶ Outcome ─▶ finish
//! ```
//!
//! - `Accepted` (`admit.rs`): a client the accept loop took, judged by `allowed_clients` under
//!   the state current at that moment; a refused one goes straight to `finish`.
//! - `admit` (`admit.rs`): who the client is (`identity/`), judged by `allowed_peers`, and
//!   whether it is given the client certificate.
//! - `sniff`: its first bytes (`sniff.rs`), read before anything is dialled.
//! - `route` (`route.rs`): passthrough, plain TCP, or TLS with the ALPN its bytes call for,
//!   over a session `upstream.preconnect` had ready or one dialled now (directly or through
//!   the egress proxy).
//! - `relay` (`relay.rs`): both directions until done.
//! - `finish` (`finish.rs`): the one place that writes the access line and counts the
//!   connection in the metrics, for refused clients too.
//!
//! Every stage that ends the connection early returns its `Outcome` as the error of a
//! `Result`, so the pipeline reads as the list of stages.

mod admit;
mod finish;
mod route;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use crate::config::AlpnPolicy;
use crate::connections::Live;
use crate::limit::Permit;
use crate::listen::{ClientStream, Peer};
use crate::outcome::Outcome;
use crate::relay::{Relay, RelayResult, RelayTimeouts};
use crate::sniff::{self, First, Want};
use crate::state::{ListenerPolicy, Shared, State};

pub(crate) use admit::Accepted;
use finish::Record;
use route::Master;

/// A connection's places under `max_connections`: the global one and its listener's own,
/// given back when the connection's task ends. Held, never read: dropping one frees its place.
#[allow(dead_code)]
pub(crate) struct Permits {
    pub global: Permit,
    pub own: Permit,
}

/// One admitted client, from its first byte to its access line. It owns the client's stream
/// and everything the stages read: the state and listener policy current at its accept (a
/// reload while it is open changes nothing for it), its places, and the record `finish`
/// writes.
pub(crate) struct Connection {
    client: ClientStream,
    peer: Peer,
    state: Arc<State>,
    policy: Arc<ListenerPolicy>,
    shared: Arc<Shared>,
    rec: Record,
    started: Instant,
    _permits: Permits,
}

/// `admit`'s verdict: the client may go on, with or without the agent's certificate.
struct Admitted {
    present: bool,
}

/// `sniff`'s: the bytes already read, and what they are.
struct Sniffed {
    first: First,
    present: bool,
}

/// Counts the connection among the listener's active ones for as long as it lives.
struct ActiveGuard(prometheus_client::metrics::gauge::Gauge);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl Connection {
    /// Serves the client to its end: the stages, cut short by a drain's deadline, then
    /// `finish`. Not an `async fn`: one taking `self` by value would keep the connection
    /// twice in its future (the argument, and the local it is moved to), for the
    /// connection's whole life.
    pub(crate) fn serve(self) -> impl std::future::Future<Output = ()> + Send {
        let mut conn = self;
        async move {
            let shared = conn.shared.clone();
            let policy = conn.policy.clone();
            policy.metrics.active.inc();
            let _active = ActiveGuard(policy.metrics.active.clone());
            let listed = shared.connections.register(policy.name.clone(), &conn.peer);
            conn.rec.live = Some(listed.live());
            let outcome = tokio::select! {
                r = conn.stages() => r.unwrap_or_else(|early| early),
                _ = shared.force_close.cancelled() => Outcome::Shutdown,
            };
            let account = finish::Account {
                shared: &shared,
                state: &conn.state,
                policy: &policy,
                client: &conn.peer,
            };
            finish::finish(account, &conn.rec, conn.started.elapsed(), outcome);
        }
    }

    /// admit → sniff → route → relay; an early end is the `Err`.
    async fn stages(&mut self) -> Result<Outcome, Outcome> {
        let admitted = self.admit().await?;
        let sniffed = self.sniff(admitted).await?;
        // The master's stream stays here and the relay borrows it: moved into the relay's
        // future, it would be kept twice for the connection's life. Routing (the dial and the
        // handshake) runs boxed, so its larger state is given back once the session is up
        // instead of sizing every connection's future for good.
        let mut master = Box::pin(self.route(&sniffed)).await?;
        Ok(self.relay(&mut master, sniffed.first.bytes()).await)
    }

    /// Reads the client's first bytes: enough to see a TLS ClientHello (with passthrough on)
    /// or the HTTP/2 preface (with ALPN `auto`). A client that leaves without a word never
    /// causes a dial.
    async fn sniff(&mut self, admitted: Admitted) -> Result<Sniffed, Outcome> {
        let policy = &self.policy;
        let want = Want {
            client_hello: policy.config.tls_passthrough && policy.tls.is_some(),
            h2: matches!(policy.config.alpn, AlpnPolicy::Auto) && policy.tls.is_some(),
        };
        match sniff::read_first(&mut self.client, want, sniff::FIRST_BYTES_WAIT).await {
            Ok(Some(first)) => Ok(Sniffed {
                first,
                present: admitted.present,
            }),
            Ok(None) => Err(Outcome::ClientClosedEarly),
            Err(_) => Err(Outcome::Reset),
        }
    }

    /// Relays over the master's stream, TLS or not. One await in `stages` (not one per kind),
    /// so the stream is live at one suspension point there and shares its place in the
    /// future with the earlier stages' state.
    async fn relay(&mut self, master: &mut Master, first: &[u8]) -> Outcome {
        match master {
            Master::Tls(stream) => self.relay_on(stream, first).await,
            Master::Plain(stream) => self.relay_on(stream, first).await,
        }
    }

    /// Sends the bytes already read, then relays both ways until the connection ends.
    async fn relay_on<S>(&mut self, master: &mut S, first: &[u8]) -> Outcome
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        if !first.is_empty() && master.write_all(first).await.is_err() {
            return Outcome::Reset;
        }
        let live = self.rec.show_session(first.len());
        let timeouts = RelayTimeouts {
            idle: self.state.config.timeouts.idle,
            close: self.state.config.timeouts.close,
        };
        let RelayResult { up, down, outcome } =
            Relay::new(&mut self.client, master, timeouts)
                .counting(live.as_deref().map(|l| &l.bytes))
                .await;
        self.rec.up = up + first.len() as u64;
        self.rec.down = down;
        outcome
    }
}

impl Record {
    /// Shows the master session, and the first bytes sent, in the connection's
    /// `/connections` row (whose byte counts the relay keeps from then on). The session
    /// record is made once and shared by the row and the access line.
    fn show_session(&mut self, first: usize) -> Option<Arc<Live>> {
        let session = Arc::new(std::mem::take(&mut self.session));
        self.shown = Some(session.clone());
        let live = self.live.clone()?;
        live.session(session);
        live.bytes.up.fetch_add(first as u64, Ordering::Relaxed);
        Some(live)
    }
}
