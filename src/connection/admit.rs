//! Who may connect. The accept loop judges a client's address by `allowed_clients`
//! (`Accepted`); the connection's own task then identifies the client (`identity/`), when
//! the listener's selectors or the access log will read it, and judges it by
//! `allowed_peers` and `present_client_cert` (`Connection::admit`). Both refusals are
//! logged (rate-limited) here and accounted for by `finish`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::finish::{self, Account, Record, NOBODY};
use super::{Admitted, Connection, Permits};
use crate::identity::{PeerIdentity, Unknown};
use crate::listen::{ClientStream, Peer};
use crate::outcome::Outcome;
use crate::state::{ListenerPolicy, Shared, State};

/// A client the accept loop took, with the state and listener policy current when it was
/// judged: those it keeps for its life once opened.
pub(crate) struct Accepted {
    client: ClientStream,
    peer: Peer,
    state: Arc<State>,
    policy: Arc<ListenerPolicy>,
}

impl Accepted {
    /// Judges a client of `policy`'s listener by `allowed_clients`: `None` when it is
    /// refused, which closes it, logs it and accounts for it.
    pub(crate) fn judge(
        client: ClientStream,
        peer: Peer,
        state: Arc<State>,
        policy: Arc<ListenerPolicy>,
        shared: &Shared,
    ) -> Option<Accepted> {
        if policy.allows(&peer) {
            return Some(Accepted {
                client,
                peer,
                state,
                policy,
            });
        }
        let name = policy.config.name.as_str();
        // One key per listener, not per address: a flood from many addresses stays one line a
        // minute (the access lines name the clients).
        shared.log_failure(&format!("deny:{name}"), |n| {
            tracing::warn!(listener = %name, client = %peer, repeated = n, "client not in allowed_clients: closed");
        });
        let account = Account {
            shared,
            state: &state,
            policy: &policy,
            client: &peer,
        };
        finish::finish(account, &Record::default(), Duration::ZERO, Outcome::Denied);
        // Closed once counted and logged: a client that sees the close sees its refusal counted.
        drop(client);
        None
    }

    /// The client and its address, to be judged again under a newer state.
    pub(crate) fn into_client(self) -> (ClientStream, Peer) {
        (self.client, self.peer)
    }

    /// The admitted client as a connection holding its places; its time starts now, after
    /// any wait for a place.
    pub(crate) fn open(self, shared: Arc<Shared>, permits: Permits) -> Connection {
        Connection {
            client: self.client,
            peer: self.peer,
            state: self.state,
            policy: self.policy,
            shared,
            rec: Record::default(),
            started: Instant::now(),
            _permits: permits,
        }
    }
}

impl Connection {
    /// Identifies the client and judges it by `allowed_peers`; says whether it is given the
    /// agent's certificate.
    pub(super) async fn admit(&mut self) -> Result<Admitted, Outcome> {
        let found = self.identify().await;
        // Kept (and shared with the connection's `/connections` row) only when something is
        // known: an unidentified client costs its connection no identity at all.
        let found = (found != NOBODY).then(|| Arc::new(found));
        if let (Some(live), Some(who)) = (&self.rec.live, &found) {
            live.identity(who.clone());
        }
        self.rec.peer = found;
        let who: &PeerIdentity = self.rec.peer.as_deref().unwrap_or(&NOBODY);
        if !self.policy.admits(who) {
            self.refused(who);
            return Err(Outcome::Denied);
        }
        Ok(Admitted {
            present: self.policy.presents_to(who),
        })
    }

    /// Who the client is, as far as the kernel (and the container runtime) can tell; nothing
    /// when no selector and no access line will read it.
    async fn identify(&self) -> PeerIdentity {
        let (policy, shared, peer) = (&self.policy, &self.shared, &self.peer);
        if !policy.wants_identity(shared.access_log_on()) {
            return PeerIdentity::default();
        }
        let who = match (&self.client, peer) {
            (ClientStream::Unix(s), _) => shared.identity.unix(s),
            (ClientStream::Tcp(s), Peer::Ip(addr)) => match s.local_addr() {
                Ok(local) => shared.identity.tcp(*addr, local, self.started).await,
                Err(e) => PeerIdentity::unknown(Unknown::SockDiag(e.to_string())),
            },
            (ClientStream::Tcp(_), Peer::Unix) => PeerIdentity::default(),
        };
        policy.peers.count(policy.peer_kind(&who));
        let listener = policy.config.name.as_str();
        match &who.note {
            // A bridge client, or one that left: facts, not failures.
            Some(why) if why.expected() => {
                tracing::debug!(listener = %listener, client = %peer, peer = %who, reason = %why, "client not identified");
            }
            Some(why) => {
                shared.log_failure(&format!("identify:{listener}:{}", why.label()), |n| {
                    tracing::warn!(listener = %listener, client = %peer, peer = %who, error = %why, repeated = n, "cannot tell who the client is: what is unknown matches no peer selector");
                });
            }
            None => {}
        }
        who
    }

    /// Logs a client `allowed_peers` turns away, before anything is dialled.
    fn refused(&self, who: &PeerIdentity) {
        let listener = self.policy.config.name.as_str();
        let kind = self.policy.peer_kind(who);
        let peer = &self.peer;
        let key = format!("deny-peer:{listener}:{:?}:{:?}", who.uid, who.cgroup);
        self.shared.log_failure(&key, |n| {
            tracing::warn!(listener = %listener, client = %peer, peer = %who, kind = kind, repeated = n, "client matches no selector of allowed_peers: closed");
        });
    }
}
