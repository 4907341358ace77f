//! A client's identity in the data path: identified (`identity`) in the connection's own task
//! before anything is dialled, when the listener's selectors or the access log will read it;
//! counted by kind; a lookup that failed, or a peer `allowed_peers` turns away, logged
//! (rate-limited).

use std::time::Instant;

use crate::identity::{PeerIdentity, Unknown};
use crate::listen::{ClientStream, Peer};
use crate::state::{ListenerPolicy, Shared};

/// Who `client` is, as far as the kernel (and the container runtime) can tell.
pub async fn identify(
    client: &ClientStream,
    peer: &Peer,
    policy: &ListenerPolicy,
    shared: &Shared,
    accepted: Instant,
) -> PeerIdentity {
    if !policy.wants_identity(shared.access_log_on()) {
        return PeerIdentity::default();
    }
    let who = match (client, peer) {
        (ClientStream::Unix(s), _) => shared.identity.unix(s),
        (ClientStream::Tcp(s), Peer::Ip(addr)) => match s.local_addr() {
            Ok(local) => shared.identity.tcp(*addr, local, accepted).await,
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

/// A client `allowed_peers` turns away, before anything is dialled.
pub fn refused(policy: &ListenerPolicy, peer: &Peer, who: &PeerIdentity, shared: &Shared) {
    let listener = policy.config.name.as_str();
    let kind = policy.peer_kind(who);
    let key = format!("deny-peer:{listener}:{:?}:{:?}", who.uid, who.cgroup);
    shared.log_failure(&key, |n| {
        tracing::warn!(listener = %listener, client = %peer, peer = %who, kind = kind, repeated = n, "client matches no selector of allowed_peers: closed");
    });
}
