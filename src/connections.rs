//! The connections open now, for `/connections` and `det-tls-proxy status`: each one registers
//! as `proxy::handle` starts and leaves when its guard drops, and the relay keeps its byte
//! counts current. Also the last upstream failure of each kind, as clients met them.
//!
//! One mutex over a map: an accept takes it once to insert and once to remove, which costs a
//! hash insert, far below the dial and handshake each connection pays anyway.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use serde_json::{json, Value};

use crate::diagnose::{now_secs, rfc3339};
use crate::identity::PeerIdentity;
use crate::error_kind::UpstreamErrorKind;
use crate::listen::Peer;
use crate::relay::LiveBytes;

/// `/connections?limit=` when none is given, and the most it may ask for.
pub(crate) const DEFAULT_LIMIT: usize = 1000;
pub(crate) const MAX_LIMIT: usize = 10_000;

/// The master session a connection relays over, once it has one: made once and shared by the
/// connection's row here and its access line.
#[derive(Debug, Default)]
pub struct Session {
    /// The master's address as dialled (or the egress proxy's route).
    pub master: String,
    /// `TLSv1.3`, `TLSv1.2`, or empty for passthrough and plain TCP.
    pub tls_version: &'static str,
    /// As the master chose it: escaped wherever it is shown.
    pub alpn: crate::untrusted::Untrusted<Vec<u8>>,
    pub resumed: bool,
    pub preconnected: bool,
}

/// One open connection.
#[derive(Debug)]
pub struct Live {
    id: u64,
    /// The listener's name, shared by its connections.
    listener: Arc<str>,
    peer: Peer,
    started: Instant,
    started_unix: i64,
    /// Kept current by the relay.
    pub bytes: LiveBytes,
    session: OnceLock<Arc<Session>>,
    /// Who the client is, once identified (`identity/`).
    identity: OnceLock<Arc<PeerIdentity>>,
}

impl Live {
    /// Records the master session once it is up (the first call wins).
    pub fn session(&self, s: Arc<Session>) {
        let _ = self.session.set(s);
    }

    /// Records who the client is, once identified (the first call wins).
    pub fn identity(&self, p: Arc<PeerIdentity>) {
        let _ = self.identity.set(p);
    }

    /// The peer object: its address, then what identification found (absent when unknown).
    /// Cgroup paths and container names are outside text, escaped as every printer escapes it.
    fn peer_json(&self) -> Value {
        let mut peer = json!({"addr": self.peer.to_string()});
        let Some(who) = self.identity.get() else {
            return peer;
        };
        let text = |s: &str| Value::String(crate::untrusted::escape(s));
        let o = peer.as_object_mut().expect("an object");
        for (k, v) in [("uid", who.uid), ("gid", who.gid), ("pid", who.pid)] {
            if let Some(v) = v {
                o.insert(k.into(), v.into());
            }
        }
        if let Some(u) = &who.unit {
            o.insert("unit".into(), text(u));
        }
        if let Some(c) = &who.cgroup {
            o.insert("cgroup".into(), text(c));
        }
        if let Some(c) = &who.container {
            o.insert("container".into(), text(c.label()));
            for (k, v) in [
                ("task_id", &c.task_id),
                ("allocation_id", &c.allocation_id),
                ("task_type", &c.task_type),
            ] {
                if let Some(v) = v {
                    o.insert(k.into(), text(v));
                }
            }
        }
        if let Some(why) = &who.note {
            o.insert("unknown".into(), text(&why.to_string()));
        }
        peer
    }

    fn to_json(&self) -> Value {
        let session = self.session.get().map(|s| {
            json!({
                "master": s.master,
                "tls_version": s.tls_version,
                "alpn": s.alpn.to_string(),
                "resumed": s.resumed,
                "preconnected": s.preconnected,
            })
        });
        json!({
            "id": self.id,
            "listener": &*self.listener,
            "peer": self.peer_json(),
            "started": rfc3339(self.started_unix),
            "age_ms": self.started.elapsed().as_millis() as u64,
            "bytes_up": self.bytes.up.load(Ordering::Relaxed),
            "bytes_down": self.bytes.down.load(Ordering::Relaxed),
            "session": session,
        })
    }
}

/// The last failure of one kind.
#[derive(Debug)]
struct ErrorNote {
    count: u64,
    last_unix: i64,
    last: String,
}

/// Every open connection, and the upstream failures clients met.
#[derive(Debug, Default)]
pub struct Connections {
    next_id: AtomicU64,
    open: Mutex<HashMap<u64, Arc<Live>>>,
    errors: Mutex<BTreeMap<&'static str, ErrorNote>>,
}

/// A connection's place in [`Connections`]; dropping it takes the connection off the list.
pub(crate) struct Registered<'a> {
    registry: &'a Connections,
    live: Arc<Live>,
}

impl Registered<'_> {
    pub fn live(&self) -> Arc<Live> {
        self.live.clone()
    }
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        self.registry
            .open
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.live.id);
    }
}

impl Connections {
    pub(crate) fn register(&self, listener: Arc<str>, peer: &Peer) -> Registered<'_> {
        let live = Arc::new(Live {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            listener,
            peer: peer.clone(),
            started: Instant::now(),
            started_unix: now_secs(),
            bytes: LiveBytes::default(),
            session: OnceLock::new(),
            identity: OnceLock::new(),
        });
        self.open
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(live.id, live.clone());
        Registered {
            registry: self,
            live,
        }
    }

    /// Notes a failure to reach or verify the master, by its metric kind.
    pub(crate) fn note_error(&self, kind: UpstreamErrorKind, detail: &str) {
        let kind = kind.label();
        let mut errors = self.errors.lock().unwrap_or_else(|p| p.into_inner());
        let note = errors.entry(kind).or_insert(ErrorNote {
            count: 0,
            last_unix: 0,
            last: String::new(),
        });
        note.count += 1;
        note.last_unix = now_secs();
        detail.clone_into(&mut note.last);
    }

    /// The newest `limit` open connections (newest first), how many there are in all, and
    /// the failures by kind.
    pub(crate) fn snapshot(&self, limit: usize) -> Value {
        let mut open: Vec<Arc<Live>> = self
            .open
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        let total = open.len();
        open.sort_unstable_by_key(|l| std::cmp::Reverse(l.id));
        open.truncate(limit);
        let rows: Vec<Value> = open.iter().map(|l| l.to_json()).collect();
        let errors: Vec<Value> = self
            .errors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(kind, n)| {
                json!({"kind": kind, "count": n.count, "last": rfc3339(n.last_unix), "error": n.last})
            })
            .collect();
        json!({
            "total": total,
            "shown": rows.len(),
            "omitted": total - rows.len(),
            "limit": limit,
            "connections": rows,
            "errors": errors,
        })
    }
}

/// The `limit` query parameter: absent is [`DEFAULT_LIMIT`]; else 1 to [`MAX_LIMIT`].
pub(crate) fn parse_limit(query: Option<&str>) -> Result<usize, String> {
    let given = query
        .into_iter()
        .flat_map(|q| q.split('&'))
        .find_map(|kv| kv.strip_prefix("limit="));
    match given {
        None => Ok(DEFAULT_LIMIT),
        Some(v) => match v.parse::<usize>() {
            Ok(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
            _ => Err(format!("limit must be a number from 1 to {MAX_LIMIT}")),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_leaves_the_list_when_its_guard_drops() {
        let c = Connections::default();
        let peer = Peer::Ip("127.0.0.1:5000".parse().unwrap());
        let a = c.register("agent".into(), &peer);
        let b = c.register("tasks".into(), &peer);
        b.live().bytes.up.fetch_add(7, Ordering::Relaxed);
        let s = c.snapshot(10);
        assert_eq!(s["total"], 2);
        assert_eq!(s["connections"][0]["listener"], "tasks", "newest first");
        assert_eq!(s["connections"][0]["bytes_up"], 7);
        assert_eq!(s["connections"][0]["peer"]["addr"], "127.0.0.1:5000");
        drop(b);
        let s = c.snapshot(10);
        assert_eq!(s["total"], 1);
        assert_eq!(s["connections"][0]["listener"], "agent");
        drop(a);
        assert_eq!(c.snapshot(10)["total"], 0);
    }

    #[test]
    fn the_limit_keeps_the_newest_and_counts_the_rest() {
        let c = Connections::default();
        let peer = Peer::Unix;
        let held: Vec<_> = (0..5).map(|_| c.register("l".into(), &peer)).collect();
        let s = c.snapshot(2);
        assert_eq!((s["total"].as_u64(), s["shown"].as_u64()), (Some(5), Some(2)));
        assert_eq!(s["omitted"], 3);
        assert_eq!(s["connections"][0]["id"], held[4].live().id);
        assert_eq!(s["connections"][1]["id"], held[3].live().id);
    }

    #[test]
    fn errors_keep_the_last_of_each_kind_and_a_count() {
        let c = Connections::default();
        c.note_error(UpstreamErrorKind::ConnectRefused, "first");
        c.note_error(UpstreamErrorKind::ConnectRefused, "second");
        c.note_error(UpstreamErrorKind::CertName, "name");
        let s = c.snapshot(1);
        assert_eq!(s["errors"][0]["kind"], "cert_name");
        assert_eq!(s["errors"][1]["count"], 2);
        assert_eq!(s["errors"][1]["error"], "second");
    }

    #[test]
    fn limits_outside_the_range_are_refused() {
        assert_eq!(parse_limit(None), Ok(DEFAULT_LIMIT));
        assert_eq!(parse_limit(Some("limit=5")), Ok(5));
        assert_eq!(parse_limit(Some("x=1&limit=10000")), Ok(MAX_LIMIT));
        for bad in ["limit=0", "limit=10001", "limit=ten", "limit="] {
            assert!(parse_limit(Some(bad)).is_err(), "{bad}");
        }
    }
}
