//! One client connection from accept to access-log line: read its first bytes (never dial for
//! a client that leaves without a word), pick passthrough or TLS and the ALPN to offer, reach
//! the master, relay, and account for it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::config::AlpnPolicy;
use crate::diagnose::CertSummary;
use crate::identity::PeerIdentity;
use crate::listen::{ClientStream, Peer};
use crate::outcome::Outcome;
use crate::relay::{Relay, RelayResult, RelayTimeouts};
use crate::state::{ListenerPolicy, Shared, State};
use crate::pool::Session;
use crate::upstream::{version_name, Dialed, UpstreamError};

/// The HTTP/2 connection preface (RFC 9113 §3.4).
pub const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// How long ALPN `auto` (and passthrough detection) waits for the client's first bytes.
pub const FIRST_BYTES_WAIT: Duration = Duration::from_secs(1);

/// Whether a client's first bytes are the whole HTTP/2 connection preface.
pub fn looks_like_h2(first: &[u8]) -> bool {
    first.len() == H2_PREFACE.len() && first == H2_PREFACE
}

/// The listener's client config for a connection whose first bytes are `first` (ALPN `auto`
/// offers `h2` to an HTTP/2 preface, `http/1.1` to anything else), with the client
/// certificate when `present`.
fn client_config(
    policy: &ListenerPolicy,
    first: &[u8],
    present: bool,
) -> Option<Arc<rustls::ClientConfig>> {
    let tls = if present { policy.tls_cert.as_ref() } else { policy.tls.as_ref() }?;
    Some(match policy.config.alpn {
        AlpnPolicy::Auto if looks_like_h2(first) => tls.h2.clone(),
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
    alpn: String,
    tls_version: &'static str,
    resumed: bool,
    /// Served on a session `upstream.preconnect` had ready.
    preconnected: bool,
    up: u64,
    down: u64,
    /// Who the client is (`peer.rs`).
    peer: PeerIdentity,
}

struct ActiveGuard(prometheus_client::metrics::gauge::Gauge);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Reads the client's first bytes: enough to see a TLS ClientHello or the HTTP/2 preface.
/// Returns `None` when the client closed without sending anything.
async fn first_bytes(
    client: &mut ClientStream,
    policy: &ListenerPolicy,
) -> std::io::Result<Option<([u8; 24], usize)>> {
    let mut buf = [0u8; 24];
    let mut n = 0;
    let deadline = tokio::time::Instant::now() + FIRST_BYTES_WAIT;
    loop {
        let read = tokio::time::timeout_at(deadline, client.read(&mut buf[n..])).await;
        match read {
            Err(_) => return Ok(Some((buf, n))),
            Ok(Err(e)) => return Err(e),
            Ok(Ok(0)) => return Ok(if n == 0 { None } else { Some((buf, n)) }),
            Ok(Ok(m)) => {
                n += m;
                let wants_more = matches!(policy.config.alpn, AlpnPolicy::Auto)
                    && policy.tls.is_some()
                    && n < buf.len()
                    && H2_PREFACE.starts_with(&buf[..n]);
                if !wants_more {
                    return Ok(Some((buf, n)));
                }
            }
        }
    }
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
    let mut rec = Record::default();

    let outcome = tokio::select! {
        r = serve(&mut client, &state, &policy, &shared, &peer, &mut rec) => r,
        _ = shared.force_close.cancelled() => Outcome::Shutdown,
    };
    policy.metrics.finished(outcome);
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
    let ip = match peer {
        Peer::Ip(a) => a.ip().to_string(),
        Peer::Unix => "unix".into(),
    };
    shared.log_failure(&format!("deny:{name}:{ip}"), |n| {
        tracing::warn!(listener = %name, client = %peer, repeated = n, "client not in allowed_clients: closed");
    });
    access_line(
        shared,
        name,
        peer,
        &Record::default(),
        Duration::ZERO,
        Outcome::Denied,
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
    let who = &rec.peer;
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
        peer_cgroup = who.cgroup.as_deref().unwrap_or(""),
        peer_unit = who.unit.as_deref().unwrap_or(""),
        peer_container = container.map_or("", |c| c.label()),
        task_id = container.and_then(|c| c.task_id.as_deref()),
        allocation_id = container.and_then(|c| c.allocation_id.as_deref()),
        task_type = container.and_then(|c| c.task_type.as_deref()),
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
    rec.peer = crate::peer::identify(client, peer, policy, shared, Instant::now()).await;
    if !policy.admits(&rec.peer) {
        crate::peer::refused(policy, peer, &rec.peer, shared);
        return Outcome::Denied;
    }
    let present = policy.presents_to(&rec.peer);
    let (first, n) = match first_bytes(client, policy).await {
        Ok(Some(x)) => x,
        Ok(None) => return Outcome::ClientClosedEarly,
        Err(_) => return Outcome::Reset,
    };
    let first = &first[..n];
    let passthrough = policy.config.tls_passthrough && first.first() == Some(&0x16);
    let timeouts = RelayTimeouts {
        idle: state.config.timeouts.idle,
        close: state.config.timeouts.close,
    };
    let tls_choice = if passthrough {
        None
    } else {
        client_config(policy, first, present)
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
    rec.alpn = conn
        .alpn_protocol()
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .unwrap_or_default();
    rec.tls_version = version_name(conn.protocol_version());
    rec.resumed = matches!(conn.handshake_kind(), Some(rustls::HandshakeKind::Resumed));
    if rec.resumed {
        shared.metrics.tls_resumed.inc();
    } else if let Some(leaf) = conn.peer_certificates().and_then(|c| c.first()) {
        if let Some(s) = CertSummary::from_der(leaf) {
            shared.saw_master_cert(&s);
        }
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
    let RelayResult { up, down, outcome } = Relay::new(&mut *client, &mut *server, timeouts).await;
    rec.up = up + first.len() as u64;
    rec.down = down;
    policy.metrics.up.inc_by(rec.up);
    policy.metrics.down.inc_by(rec.down);
    outcome
}

fn upstream_failed(shared: &Shared, policy: &ListenerPolicy, peer: &Peer, e: &UpstreamError) {
    let kind = e.kind();
    shared.metrics.upstream_error(kind);
    let detail = e.to_string();
    let listener = policy.config.name.as_str();
    shared.log_failure(&format!("{kind}:{detail}"), |suppressed| {
        tracing::warn!(
            listener = listener,
            client = %peer,
            kind = kind,
            error = %detail,
            repeated = suppressed,
            "upstream failed"
        );
    });
}
