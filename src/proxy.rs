//! One client connection from accept to access-log line: read its first bytes (never dial for
//! a client that leaves without a word), pick passthrough or TLS and the ALPN to offer, reach
//! the master, relay, and account for it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use rustls::ClientConfig;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use crate::config::{AlpnPolicy, Config, ListenerConfig, ListenerKey};
use crate::diagnose::CertSummary;
use crate::listen::{ClientStream, Peer};
use crate::metrics::{ListenerMetrics, Metrics};
use crate::relay::{Relay, RelayResult, RelayTimeouts};
use crate::trust::{TlsContext, TrustError};
use crate::upstream::{version_name, Resolve, Upstream, UpstreamError};

/// The HTTP/2 connection preface (RFC 9113 §3.4).
pub const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// How long ALPN `auto` (and passthrough detection) waits for the client's first bytes.
pub const FIRST_BYTES_WAIT: Duration = Duration::from_secs(1);
/// A master certificate closer than this to its expiry is warned about (once a day).
pub const EXPIRY_WARNING: Duration = Duration::from_secs(14 * 86_400);
/// A repeated failure is logged at most once per this period.
pub const FAILURE_LOG_PERIOD: Duration = Duration::from_secs(60);

// === Per-listener policy ===

/// The client configs a listener uses, all sharing one session store.
pub struct ListenerTls {
    pub h2: Arc<ClientConfig>,
    pub http11: Arc<ClientConfig>,
    pub fixed: Arc<ClientConfig>,
}

/// What the data path needs to know about one listener under the current configuration.
pub struct ListenerPolicy {
    pub config: ListenerConfig,
    pub present_client_cert: bool,
    pub tls: Option<ListenerTls>,
    pub metrics: ListenerMetrics,
}

impl ListenerPolicy {
    /// Whether `peer` may use this listener under this configuration.
    pub fn allows(&self, peer: &Peer) -> bool {
        crate::listen::peer_allowed(self.config.allowed_clients.as_deref(), peer)
    }

    /// The client config for a connection whose first bytes are `first`.
    fn client_config(&self, first: &[u8]) -> Option<Arc<ClientConfig>> {
        let tls = self.tls.as_ref()?;
        Some(match self.config.alpn {
            AlpnPolicy::Auto if looks_like_h2(first) => tls.h2.clone(),
            AlpnPolicy::Auto => tls.http11.clone(),
            _ => tls.fixed.clone(),
        })
    }
}

/// Whether a client's first bytes are the whole HTTP/2 connection preface.
pub fn looks_like_h2(first: &[u8]) -> bool {
    first.len() == H2_PREFACE.len() && first == H2_PREFACE
}

/// Everything a connection reads from the configuration; replaced whole on reload. Each
/// connection takes the state current at its accept and keeps it for its life.
pub struct State {
    pub config: Config,
    pub tls: Option<TlsContext>,
    pub upstream: Upstream,
    /// By listen address: a reload that keeps an address keeps its socket, whatever its name.
    pub listeners: HashMap<ListenerKey, Arc<ListenerPolicy>>,
}

impl State {
    /// Builds the state for `config`. `host_only` tells, for sockets systemd passed, whether
    /// each is reachable only from this host (other addresses tell it themselves).
    pub fn build(
        config: Config,
        host_only: &HashMap<ListenerKey, bool>,
        metrics: &Metrics,
        resolver: Arc<dyn Resolve>,
    ) -> Result<State, TrustError> {
        let tls = TlsContext::for_config(&config)?;
        Ok(Self::with_tls(config, tls, host_only, metrics, resolver))
    }

    /// As [`State::build`], with a TLS context the caller has already built (and checked).
    pub fn with_tls(
        config: Config,
        tls: Option<TlsContext>,
        host_only: &HashMap<ListenerKey, bool>,
        metrics: &Metrics,
        resolver: Arc<dyn Resolve>,
    ) -> State {
        let mut listeners = HashMap::new();
        for lc in &config.listeners {
            // An explicit setting wins; otherwise only listeners no other host can reach
            // present the agent's certificate.
            let present_client_cert = lc.present_client_cert.unwrap_or_else(|| {
                host_only
                    .get(&lc.key())
                    .copied()
                    .unwrap_or_else(|| lc.addr.is_local())
            });
            let ltls = match &tls {
                Some(t) => {
                    let fixed_alpn: Vec<Vec<u8>> = match &lc.alpn {
                        AlpnPolicy::List(l) => l.clone(),
                        _ => Vec::new(),
                    };
                    Some(ListenerTls {
                        h2: t.client_config(&[b"h2".to_vec()], present_client_cert, true),
                        http11: t.client_config(&[b"http/1.1".to_vec()], present_client_cert, true),
                        fixed: t.client_config(&fixed_alpn, present_client_cert, true),
                    })
                }
                None => None,
            };
            listeners.insert(
                lc.key(),
                Arc::new(ListenerPolicy {
                    config: lc.clone(),
                    present_client_cert,
                    tls: ltls,
                    metrics: metrics.listener(&lc.name),
                }),
            );
        }
        let upstream = Upstream::for_config(&config, resolver);
        State {
            config,
            tls,
            upstream,
            listeners,
        }
    }
}

// === Shared ===

/// What every connection shares: the current state, metrics, and the drain signals.
pub struct Shared {
    state: RwLock<Arc<State>>,
    pub metrics: Arc<Metrics>,
    /// Cancelled when `timeouts.shutdown` has passed: cut what is still relaying.
    pub force_close: CancellationToken,
    /// Set at the first SIGTERM/SIGINT: `/readyz` answers 503 from then on.
    pub draining: AtomicBool,
    access_log: AtomicBool,
    expiry_warned: AtomicI64,
    failures: Mutex<HashMap<String, (Instant, u64)>>,
    pub resolver: Arc<dyn Resolve>,
}

impl Shared {
    pub fn new(state: State, metrics: Arc<Metrics>, resolver: Arc<dyn Resolve>) -> Arc<Shared> {
        let access = state.config.log.access;
        metrics
            .skip_verify
            .set(i64::from(state.tls.as_ref().is_some_and(|t| t.skip_verify)));
        Arc::new(Shared {
            state: RwLock::new(Arc::new(state)),
            metrics,
            force_close: CancellationToken::new(),
            draining: AtomicBool::new(false),
            access_log: AtomicBool::new(access),
            expiry_warned: AtomicI64::new(0),
            failures: Mutex::new(HashMap::new()),
            resolver,
        })
    }

    pub fn current(&self) -> Arc<State> {
        self.state.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Swaps in a new configuration; connections in flight keep the state they started with.
    pub fn replace(&self, state: State) {
        self.access_log
            .store(state.config.log.access, Ordering::Relaxed);
        self.metrics
            .skip_verify
            .set(i64::from(state.tls.as_ref().is_some_and(|t| t.skip_verify)));
        *self.state.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(state);
        self.failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }

    /// Records the master's leaf from a full handshake: the expiry gauge, and a warning at
    /// most once a day when it expires within two weeks.
    pub fn saw_master_cert(&self, leaf: &CertSummary) {
        self.metrics.master_cert_expiry.set(leaf.not_after as f64);
        let now = crate::diagnose::now_secs();
        let left = leaf.not_after - now;
        if left < EXPIRY_WARNING.as_secs() as i64 {
            let last = self.expiry_warned.load(Ordering::Relaxed);
            if now - last >= 86_400
                && self
                    .expiry_warned
                    .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                    .is_ok()
            {
                tracing::warn!(
                    subject = %leaf.subject,
                    not_after = %crate::diagnose::rfc3339(leaf.not_after),
                    days_left = left.div_euclid(86_400),
                    "the master's certificate expires soon; renew it on the master"
                );
            }
        }
    }

    /// One access-log line for a finished or refused connection, when `log.access` is on.
    pub fn access_line(
        &self,
        listener: &str,
        client: &Peer,
        rec: &Record,
        took: Duration,
        outcome: &str,
    ) {
        if !self.access_log.load(Ordering::Relaxed) {
            return;
        }
        tracing::info!(
            target: "access",
            listener = %listener,
            client = %client,
            master = %rec.master,
            sni = %rec.sni,
            alpn = %rec.alpn,
            tls_version = rec.tls_version,
            resumed = rec.resumed,
            bytes_up = rec.up,
            bytes_down = rec.down,
            duration_ms = took.as_millis() as u64,
            outcome = outcome,
            "connection"
        );
    }

    /// Logs a failure unless the same cause was logged within the last minute; repeats are
    /// counted and reported with the next line.
    pub fn log_failure(&self, key: &str, log: impl FnOnce(u64)) {
        let now = Instant::now();
        let mut map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        match map.get_mut(key) {
            Some((last, suppressed)) if now.duration_since(*last) < FAILURE_LOG_PERIOD => {
                *suppressed += 1;
            }
            Some((last, suppressed)) => {
                let n = *suppressed;
                *last = now;
                *suppressed = 0;
                drop(map);
                log(n);
            }
            None => {
                if map.len() > 1000 {
                    map.clear();
                }
                map.insert(key.to_string(), (now, 0));
                drop(map);
                log(0);
            }
        }
    }
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
    up: u64,
    down: u64,
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
        _ = shared.force_close.cancelled() => "shutdown",
    };
    let counter = match outcome {
        "ok" => &policy.metrics.ok,
        "upstream_error" => &policy.metrics.upstream_error,
        "client_closed_early" => &policy.metrics.client_closed_early,
        "idle_timeout" | "close_timeout" => &policy.metrics.timeout,
        _ => &policy.metrics.error,
    };
    counter.inc();
    shared.access_line(&policy.config.name, &peer, &rec, started.elapsed(), outcome);
}

/// A client `allowed_clients` turns away: closed at once, counted and logged (rate-limited).
pub fn deny(policy: &ListenerPolicy, peer: &Peer, shared: &Shared) {
    policy.metrics.denied.inc();
    let name = policy.config.name.as_str();
    let ip = match peer {
        Peer::Ip(a) => a.ip().to_string(),
        Peer::Unix => "unix".into(),
    };
    shared.log_failure(&format!("deny:{name}:{ip}"), |n| {
        tracing::warn!(listener = %name, client = %peer, repeated = n, "client not in allowed_clients: closed");
    });
    shared.access_line(name, peer, &Record::default(), Duration::ZERO, "denied");
}

async fn serve(
    client: &mut ClientStream,
    state: &State,
    policy: &ListenerPolicy,
    shared: &Shared,
    peer: &Peer,
    rec: &mut Record,
) -> &'static str {
    let (first, n) = match first_bytes(client, policy).await {
        Ok(Some(x)) => x,
        Ok(None) => return "client_closed_early",
        Err(_) => return "reset",
    };
    let first = &first[..n];
    let passthrough = policy.config.tls_passthrough && first.first() == Some(&0x16);

    let dialed = match state.upstream.connect().await {
        Ok(d) => d,
        Err(e) => {
            upstream_failed(shared, policy, peer, &e);
            return "upstream_error";
        }
    };
    shared
        .metrics
        .connect_seconds
        .observe(dialed.connect_time.as_secs_f64());
    rec.master = dialed.addr.to_string();
    let timeouts = RelayTimeouts {
        idle: state.config.timeouts.idle,
        close: state.config.timeouts.close,
    };

    let tls_choice = if passthrough {
        None
    } else {
        policy.client_config(first)
    };
    match (tls_choice, &state.tls) {
        (Some(cfg), Some(tls)) => {
            let hs_started = Instant::now();
            let name = tls.name.server_name.clone();
            let mut stream = match state
                .upstream
                .handshake(dialed.addr, dialed.stream, cfg, name)
                .await
            {
                Ok(s) => s,
                Err(e) => {
                    upstream_failed(shared, policy, peer, &e);
                    return "upstream_error";
                }
            };
            shared
                .metrics
                .handshake_seconds
                .observe(hs_started.elapsed().as_secs_f64());
            {
                let (_, conn) = stream.get_ref();
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
            finish(client, &mut stream, first, timeouts, policy, rec).await
        }
        _ => {
            let mut stream = dialed.stream;
            finish(client, &mut stream, first, timeouts, policy, rec).await
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
) -> &'static str
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    if !first.is_empty() && server.write_all(first).await.is_err() {
        return "reset";
    }
    let RelayResult { up, down, outcome } = Relay::new(&mut *client, &mut *server, timeouts).await;
    rec.up = up + first.len() as u64;
    rec.down = down;
    policy.metrics.up.inc_by(rec.up);
    policy.metrics.down.inc_by(rec.down);
    outcome.as_str()
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
