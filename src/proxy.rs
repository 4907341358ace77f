//! One client connection from accept to access-log line: read its first bytes (never dial for
//! a client that leaves without a word), pick passthrough or TLS and the ALPN to offer, reach
//! the master, relay, and account for it.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use crate::config::AlpnPolicy;
use crate::connections::{Live, Session as LiveSession};
use crate::identity::PeerIdentity;
use crate::listen::{ClientStream, Peer};
use crate::outcome::Outcome;
use crate::relay::{Relay, RelayResult, RelayTimeouts};
use crate::sniff::{self, FirstBytes, Want};
use crate::untrusted::escape;
use crate::state::{ListenerPolicy, Shared, State};
use crate::pool::Session;
use crate::upstream::{version_name, Dialed, UpstreamError};

/// A client of which nothing is known (not identified, or nothing found).
static NOBODY: PeerIdentity = PeerIdentity {
    uid: None,
    gid: None,
    pid: None,
    cgroup: None,
    unit: None,
    container: None,
    note: None,
};

/// The listener's client config for a connection whose first bytes are `first` (ALPN `auto`
/// offers `h2` to an HTTP/2 preface, `http/1.1` to anything else), with the client
/// certificate when `present`.
fn client_config(
    policy: &ListenerPolicy,
    first: FirstBytes,
    present: bool,
) -> Option<Arc<rustls::ClientConfig>> {
    let tls = if present { policy.tls_cert.as_ref() } else { policy.tls.as_ref() }?;
    Some(match policy.config.alpn {
        AlpnPolicy::Auto if first == FirstBytes::H2Preface => tls.h2.clone(),
        AlpnPolicy::Auto => tls.http11.clone(),
        _ => tls.fixed.clone(),
    })
}

// === One connection ===

/// What the access log records of a connection.
#[derive(Debug, Default)]
pub struct Record {
    master: String,
    sni: String,
    /// As the master chose it: escaped when logged.
    alpn: crate::untrusted::Untrusted<Vec<u8>>,
    tls_version: &'static str,
    resumed: bool,
    /// Served on a session `upstream.preconnect` had ready.
    preconnected: bool,
    up: u64,
    down: u64,
    /// Its row in `/connections`, which `finish` fills in.
    live: Option<Arc<Live>>,
    /// Who the client is (`peer.rs`), when anything is known.
    peer: Option<Arc<PeerIdentity>>,
}

struct ActiveGuard(prometheus_client::metrics::gauge::Gauge);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Reads the client's first bytes: enough to see a TLS ClientHello (with passthrough on) or
/// the HTTP/2 preface (with ALPN `auto`). `None` when the client closed without sending anything.
async fn first_bytes(
    client: &mut ClientStream,
    policy: &ListenerPolicy,
) -> std::io::Result<Option<sniff::First>> {
    let want = Want {
        client_hello: policy.config.tls_passthrough && policy.tls.is_some(),
        h2: matches!(policy.config.alpn, AlpnPolicy::Auto) && policy.tls.is_some(),
    };
    sniff::read_first(client, want, sniff::FIRST_BYTES_WAIT).await
}

/// Serves one accepted client under `policy`, both taken from `state`, the state current when
/// the client was accepted: a reload while it is open changes nothing for it.
pub async fn handle(
    mut client: ClientStream,
    peer: Peer,
    state: Arc<State>,
    policy: Arc<ListenerPolicy>,
    shared: Arc<Shared>,
) {
    let started = Instant::now();
    policy.metrics.active.inc();
    let _active = ActiveGuard(policy.metrics.active.clone());
    let listed = shared.connections.register(&policy.config.name, &peer);
    let mut rec = Record {
        live: Some(listed.live()),
        ..Record::default()
    };

    let outcome = tokio::select! {
        r = serve(&mut client, &state, &policy, &shared, &peer, &mut rec) => r,
        _ = shared.force_close.cancelled() => Outcome::Shutdown,
    };
    policy.metrics.finished(outcome);
    // A client `allowed_peers` refused is a denial like any other: its lines are rate-limited.
    if outcome == Outcome::Denied && !shared.denied_log.admit(&policy.config.name, denied_summary) {
        return;
    }
    access_line(
        &shared,
        &policy.config.name,
        &peer,
        &rec,
        started.elapsed(),
        outcome,
    );
}

/// A client `allowed_clients` turns away: closed at once, counted and logged (rate-limited).
pub fn deny(policy: &ListenerPolicy, peer: &Peer, shared: &Shared) {
    policy.metrics.finished(Outcome::Denied);
    let name = policy.config.name.as_str();
    // One key per listener, not per address: a flood from many addresses stays one line a
    // minute (the access lines name the clients).
    shared.log_failure(&format!("deny:{name}"), |n| {
        tracing::warn!(listener = %name, client = %peer, repeated = n, "client not in allowed_clients: closed");
    });
    if !shared.access_log_on() || !shared.denied_log.admit(name, denied_summary) {
        return;
    }
    access_line(
        shared,
        name,
        peer,
        &Record::default(),
        Duration::ZERO,
        Outcome::Denied,
    );
}

/// The line that stands for the denied clients' access lines a period did not write.
fn denied_summary(listener: &str, suppressed: u64) {
    tracing::info!(
        target: "access",
        listener = %listener,
        outcome = Outcome::Denied.label(),
        suppressed,
        period_s = crate::denied_log::PERIOD.as_secs(),
        "denied connections not logged"
    );
}

/// One access-log line for a finished or refused connection, when `log.access` is on.
fn access_line(
    shared: &Shared,
    listener: &str,
    client: &Peer,
    rec: &Record,
    took: Duration,
    outcome: Outcome,
) {
    if !shared.access_log_on() {
        return;
    }
    let who: &PeerIdentity = rec.peer.as_deref().unwrap_or(&NOBODY);
    let container = who.container.as_ref();
    tracing::info!(
        target: "access",
        listener = %listener,
        client = %client,
        master = %rec.master,
        sni = %rec.sni,
        alpn = %rec.alpn,
        tls_version = rec.tls_version,
        resumed = rec.resumed,
        preconnected = rec.preconnected,
        bytes_up = rec.up,
        bytes_down = rec.down,
        duration_ms = took.as_millis() as u64,
        outcome = outcome.label(),
        peer_uid = who.uid,
        peer_gid = who.gid,
        peer_pid = who.pid,
        // Cgroup paths, unit and container names are chosen by whoever made them: escaped
        // first, then recorded as strings, which the text format quotes (a name with a space
        // cannot pass for another field) and JSON keeps as they are.
        peer_cgroup = escape(who.cgroup.as_deref().unwrap_or("")).as_str(),
        peer_unit = escape(who.unit.as_deref().unwrap_or("")).as_str(),
        peer_container = escape(container.map_or("", |c| c.label())).as_str(),
        task_id = container.and_then(|c| c.task_id.as_deref()).map(escape).as_deref(),
        allocation_id = container.and_then(|c| c.allocation_id.as_deref()).map(escape).as_deref(),
        task_type = container.and_then(|c| c.task_type.as_deref()).map(escape).as_deref(),
        "connection"
    );
}

async fn serve(
    client: &mut ClientStream,
    state: &State,
    policy: &ListenerPolicy,
    shared: &Shared,
    peer: &Peer,
    rec: &mut Record,
) -> Outcome {
    // Kept (and shared with the connection's `/connections` row) only when something is
    // known: an unidentified client costs its connection no identity at all.
    let found = crate::peer::identify(client, peer, policy, shared, Instant::now()).await;
    let found = (found != NOBODY).then(|| Arc::new(found));
    if let (Some(live), Some(who)) = (&rec.live, &found) {
        live.identity(who.clone());
    }
    let who: &PeerIdentity = found.as_deref().unwrap_or(&NOBODY);
    if !policy.admits(who) {
        crate::peer::refused(policy, peer, who, shared);
        rec.peer = found;
        return Outcome::Denied;
    }
    let present = policy.presents_to(who);
    rec.peer = found;
    let sniffed = match first_bytes(client, policy).await {
        Ok(Some(x)) => x,
        Ok(None) => return Outcome::ClientClosedEarly,
        Err(_) => return Outcome::Reset,
    };
    let first = sniffed.bytes();
    let passthrough = sniffed.kind == FirstBytes::ClientHello;
    let timeouts = RelayTimeouts {
        idle: state.config.timeouts.idle,
        close: state.config.timeouts.close,
    };
    let tls_choice = if passthrough {
        None
    } else {
        client_config(policy, sniffed.kind, present)
    };
    match (tls_choice, &state.tls) {
        (Some(cfg), Some(tls)) => {
            let mut stream = match master_tls(state, policy, shared, peer, (cfg, present), rec).await {
                Ok(s) => s,
                Err(outcome) => return outcome,
            };
            record_session(stream.get_ref().1, tls, shared, rec);
            finish(client, &mut stream, first, timeouts, policy, rec).await
        }
        _ => {
            let mut stream = match dial(state, policy, shared, peer, rec).await {
                Ok(d) => d.stream,
                Err(outcome) => return outcome,
            };
            finish(client, &mut stream, first, timeouts, policy, rec).await
        }
    }
}

/// A TCP connection to the master, timed and named for the access line.
async fn dial(
    state: &State,
    policy: &ListenerPolicy,
    shared: &Shared,
    peer: &Peer,
    rec: &mut Record,
) -> Result<Dialed, Outcome> {
    let dialed = state.upstream.connect().await.map_err(|e| {
        upstream_failed(shared, policy, peer, &e);
        Outcome::UpstreamError
    })?;
    shared
        .metrics
        .connect_seconds
        .observe(dialed.connect_time.as_secs_f64());
    rec.master = state.upstream.peer(&dialed);
    Ok(dialed)
}

/// A TLS session with the master for a client that will use `cfg`: a pre-connected one when
/// the pool has one ready, else dialled and handshaken now.
async fn master_tls(
    state: &State,
    policy: &ListenerPolicy,
    shared: &Shared,
    peer: &Peer,
    (cfg, present): (Arc<rustls::ClientConfig>, bool),
    rec: &mut Record,
) -> Result<Session, Outcome> {
    if let Some(pool) = &state.pool {
        if let Some(p) = pool.take(&cfg, present).await {
            rec.master = p.peer;
            rec.preconnected = true;
            return Ok(p.session);
        }
    }
    let dialed = dial(state, policy, shared, peer, rec).await?;
    let hs_started = Instant::now();
    let name = match &state.tls {
        Some(tls) => tls.name.server_name.clone(),
        None => return Err(Outcome::UpstreamError),
    };
    let stream = state
        .upstream
        .handshake(dialed, cfg, name)
        .await
        .map_err(|e| {
            upstream_failed(shared, policy, peer, &e);
            Outcome::UpstreamError
        })?;
    shared
        .metrics
        .handshake_seconds
        .observe(hs_started.elapsed().as_secs_f64());
    Ok(stream)
}

/// What the access log and metrics keep of a handshake; a full handshake also updates the
/// master certificate's expiry gauge.
fn record_session(
    conn: &rustls::ClientConnection,
    tls: &crate::tls::TlsContext,
    shared: &Shared,
    rec: &mut Record,
) {
    rec.sni = tls.name.sni().unwrap_or_default();
    rec.alpn = crate::untrusted::Untrusted::new(conn.alpn_protocol().unwrap_or_default().to_vec());
    rec.tls_version = version_name(conn.protocol_version());
    rec.resumed = matches!(conn.handshake_kind(), Some(rustls::HandshakeKind::Resumed));
    if rec.resumed {
        shared.metrics.tls_resumed.inc();
    } else {
        shared.saw_master(conn);
    }
}

/// Sends the bytes already read, then relays until the connection ends.
async fn finish<S>(
    client: &mut ClientStream,
    server: &mut S,
    first: &[u8],
    timeouts: RelayTimeouts,
    policy: &ListenerPolicy,
    rec: &mut Record,
) -> Outcome
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    if !first.is_empty() && server.write_all(first).await.is_err() {
        return Outcome::Reset;
    }
    let live = list_session(rec, first.len());
    let RelayResult { up, down, outcome } = Relay::new(&mut *client, &mut *server, timeouts)
        .counting(live.as_deref().map(|l| &l.bytes))
        .await;
    rec.up = up + first.len() as u64;
    rec.down = down;
    policy.metrics.up.inc_by(rec.up);
    policy.metrics.down.inc_by(rec.down);
    outcome
}

/// Shows the master session, and the first bytes sent, in the connection's `/connections` row.
fn list_session(rec: &Record, first: usize) -> Option<Arc<Live>> {
    let live = rec.live.clone()?;
    live.session(LiveSession {
        master: rec.master.clone(),
        tls_version: rec.tls_version,
        alpn: rec.alpn.to_string(),
        resumed: rec.resumed,
        preconnected: rec.preconnected,
    });
    live.bytes.up.fetch_add(first as u64, Ordering::Relaxed);
    Some(live)
}

fn upstream_failed(shared: &Shared, policy: &ListenerPolicy, peer: &Peer, e: &UpstreamError) {
    let kind = e.kind();
    shared.metrics.upstream_error(kind);
    let detail = e.to_string();
    shared.connections.note_error(kind, &detail);
    let listener = policy.config.name.as_str();
    shared.log_failure(&format!("{kind}:{detail}"), |suppressed| {
        tracing::warn!(
            listener = listener,
            client = %peer,
            kind = kind.label(),
            error = %detail,
            repeated = suppressed,
            "upstream failed"
        );
    });
}
