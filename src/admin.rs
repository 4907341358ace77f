//! The admin endpoint: `/healthz` (the process is up), `/readyz` (listeners bound and the last
//! probe of the master succeeded) and `/metrics` (Prometheus text).

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::limit::Limit;
use crate::listen::{self, Backoff};
use crate::state::{Shared, State};
use crate::tls::{Present, Resume};
use crate::upstream::UpstreamError;

/// A probe result is reused for this long, so scrapes cannot hammer the master.
pub(crate) const PROBE_PERIOD: Duration = Duration::from_secs(10);

/// Scrapers served at once; more wait in the admin socket's backlog. A few scrapers and health
/// checkers need a handful; the cap keeps a flood from taking the data path's descriptors.
pub(crate) const MAX_CONNECTIONS: usize = 32;
/// A request head must arrive within this, and the next one on a kept-alive connection too.
pub(crate) const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// A connection's whole life, every request and answer on it included: long enough for a
/// `/readyz` probe under the default `timeouts.connect` and `timeouts.handshake`.
pub(crate) const CONNECTION_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Default)]
struct Probe {
    last: Mutex<Option<(Instant, Result<(), String>)>>,
}

/// Dials the master once through the data path's code with a full handshake (no
/// resumption), so the result and the expiry gauge reflect the master's current certificate.
pub(crate) async fn probe(state: &State, shared: &Shared) -> Result<(), String> {
    let Some(tls) = &state.tls else {
        state.upstream.connect().await.map_err(|e| e.to_string())?;
        return Ok(());
    };
    let cfg = tls.client_config(&[], Present::ClientCert, Resume::Never);
    let stream = state
        .upstream
        .dial_tls(cfg, tls.name.server_name.clone())
        .await
        .map_err(|e| {
            // Counted as the data path counts a handshake failure; an unreachable master is
            // what /readyz reports, not a new kind of error.
            if matches!(
                e,
                UpstreamError::Handshake { .. } | UpstreamError::HandshakeTimeout { .. }
            ) {
                shared.metrics.upstream_error(e.kind());
            }
            e.to_string()
        })?;
    let (_, conn) = stream.get_ref();
    shared.saw_master(conn);
    let mut stream = stream;
    let _ = tokio::io::AsyncWriteExt::shutdown(&mut stream).await;
    Ok(())
}

/// Sets `det_tls_proxy_ready` from the last probe's result as a scrape reads it (0 while
/// draining). A scrape with `probe=1` in its query also starts a new probe when the last is
/// older than [`PROBE_PERIOD`], in the background: the scrape never waits for the master, and
/// sees the result at its next visit. Without it a scrape never dials: probing the master is
/// the scraper's choice (hundreds of hosts probing it is load on the master).
fn readiness_for_scrape(query: Option<&str>, shared: &Arc<Shared>, probe_state: &Arc<Probe>) {
    let draining = shared.draining.load(Ordering::Relaxed);
    // A probe under way holds the lock: the gauge keeps its value until it is done.
    let Ok(last) = probe_state.last.try_lock() else {
        return;
    };
    let fresh = last
        .as_ref()
        .is_some_and(|(at, _)| at.elapsed() < PROBE_PERIOD);
    let ready = match last.as_ref() {
        _ if draining => Some(false),
        Some((_, r)) => Some(r.is_ok()),
        None => None,
    };
    if let Some(ready) = ready {
        shared.metrics.health.ready.get_or_create(&()).set(i64::from(ready));
    }
    drop(last);
    let asked = query.is_some_and(|q| q.split('&').any(|kv| kv == "probe=1"));
    if !asked || fresh || draining {
        return;
    }
    let (shared, probe_state) = (shared.clone(), probe_state.clone());
    tokio::spawn(async move {
        let mut last = probe_state.last.lock().await;
        if last
            .as_ref()
            .is_some_and(|(at, _)| at.elapsed() < PROBE_PERIOD)
        {
            return;
        }
        let result = probe(&shared.current(), &shared).await;
        *last = Some((Instant::now(), result));
    });
}

/// `/connections`, for `det-tls-proxy status`: the open connections (newest first, at most
/// `?limit=`), the master's address and certificate expiry, and the last failures by kind.
fn connections_page(query: Option<&str>, shared: &Shared) -> Response<Full<Bytes>> {
    let limit = match crate::connections::parse_limit(query) {
        Ok(n) => n,
        Err(e) => {
            return text(
                StatusCode::BAD_REQUEST,
                format!("{e}\n"),
                "text/plain; charset=utf-8",
            )
        }
    };
    let mut doc = shared.connections.snapshot(limit);
    let master = &shared.current().config.master;
    let address = match master.ip() {
        Some(std::net::IpAddr::V6(ip)) => format!("[{ip}]:{}", master.port),
        _ => format!("{}:{}", master.host, master.port),
    };
    let expiry = shared.metrics.master_cert_expiry.get() as i64;
    doc["master"] = serde_json::json!({
        "address": address,
        "cert_expiry": (expiry > 0).then(|| crate::diagnose::rfc3339(expiry)),
    });
    text(StatusCode::OK, doc.to_string(), "application/json")
}

/// Rewrites OpenMetrics text as the classic Prometheus format (0.0.4) for scrapers that did
/// not ask for OpenMetrics: counters are named with their `_total` suffix in HELP/TYPE, and
/// the `# EOF` and `# UNIT` lines go.
pub(crate) fn classic_exposition(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let rewritten = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(name)
                .then(|| format!("{prefix}{name}_total {tail}"))
        });
        match rewritten {
            Some(l) => out.push_str(&l),
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

fn text(status: StatusCode, body: impl Into<Bytes>, content_type: &str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    if let Ok(v) = content_type.parse() {
        r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    r
}

/// Answers one request. Without `detail` (a scraper from another host) `/readyz` says only
/// ready or not: the reason would name the master's address and certificate.
async fn route(
    req: Request<Incoming>,
    shared: Arc<Shared>,
    probe_state: Arc<Probe>,
    detail: bool,
) -> Result<Response<Full<Bytes>>, std::convert::Infallible> {
    let plain = "text/plain; charset=utf-8";
    Ok(match (req.method().as_str(), req.uri().path()) {
        ("GET" | "HEAD", "/healthz") => text(StatusCode::OK, "ok\n", plain),
        ("GET" | "HEAD", "/metrics") => {
            readiness_for_scrape(req.uri().query(), &shared, &probe_state);
            let openmetrics = req
                .headers()
                .get(hyper::header::ACCEPT)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|a| a.contains("application/openmetrics-text"));
            let body = shared.metrics.encode();
            if openmetrics {
                text(
                    StatusCode::OK,
                    body,
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                )
            } else {
                text(
                    StatusCode::OK,
                    classic_exposition(&body),
                    "text/plain; version=0.0.4; charset=utf-8",
                )
            }
        }
        ("GET" | "HEAD", "/connections") => connections_page(req.uri().query(), &shared),
        ("GET" | "HEAD", "/readyz") if shared.draining.load(Ordering::Relaxed) => text(
            StatusCode::SERVICE_UNAVAILABLE,
            if detail {
                "not ready: draining (SIGTERM received)\n"
            } else {
                "not ready\n"
            },
            plain,
        ),
        ("GET" | "HEAD", "/readyz") => {
            let mut last = probe_state.last.lock().await;
            let fresh = last
                .as_ref()
                .is_some_and(|(at, _)| at.elapsed() < PROBE_PERIOD);
            if !fresh {
                let state = shared.current();
                let result = probe(&state, &shared).await;
                *last = Some((Instant::now(), result));
            }
            match last.as_ref().map(|(_, r)| r) {
                Some(Ok(())) => text(StatusCode::OK, "ready\n", plain),
                Some(Err(e)) if detail => text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("not ready: {e}\n"),
                    plain,
                ),
                Some(Err(_)) => text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n", plain),
                None => text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n", plain),
            }
        }
        (_, "/healthz" | "/readyz" | "/metrics" | "/connections") => {
            text(StatusCode::METHOD_NOT_ALLOWED, "GET only\n", plain)
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: try /healthz, /readyz, /metrics or /connections\n",
            plain,
        ),
    })
}

/// Serves the admin endpoint on `listener` until `stop`. `admin.allowed_clients` is read from
/// the live state at each accept, so a reload that narrows it applies to the next scrape.
/// Returns the tracker of its tasks (the accept loop and every connection).
pub(crate) fn serve(listener: TcpListener, shared: Arc<Shared>, stop: CancellationToken) -> TaskTracker {
    let local = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    tracing::info!(listener = "admin", addr = %local, "listening");
    let tracker = TaskTracker::new();
    let conns = tracker.clone();
    tracker.spawn(async move {
        let probe_state = Arc::new(Probe::default());
        let limit = Limit::new(MAX_CONNECTIONS);
        let mut backoff = Backoff::default();
        loop {
            // The place is taken before accept: beyond the cap, scrapers wait in the admin
            // socket's own backlog and hold none of the descriptors the data path needs.
            let permit = tokio::select! {
                p = limit.acquire() => p,
                _ = stop.cancelled() => break,
            };
            let accepted = listen::accept_or_back_off(
                &listener,
                &local,
                &mut backoff,
                |key, log| shared.log_failure(key, log),
                &stop,
            );
            let Some((stream, peer)) = accepted.await else {
                break;
            };
            if !admitted(&shared, peer) {
                continue;
            }
            let conn = Conn {
                shared: shared.clone(),
                probe_state: probe_state.clone(),
                // The detail of a failed probe names the master's address and certificate:
                // for this host only.
                detail: peer.ip().to_canonical().is_loopback(),
            };
            let stop = stop.clone();
            conns.spawn(async move {
                conn.serve(stream, stop).await;
                drop(permit);
            });
        }
        tracing::info!(listener = "admin", addr = %local, "admin endpoint closed");
    });
    tracker
}

/// Whether `admin.allowed_clients` of the live configuration lets `peer` in.
fn admitted(shared: &Shared, peer: SocketAddr) -> bool {
    let state = shared.current();
    let allowed = state
        .config
        .admin
        .as_ref()
        .and_then(|a| a.allowed_clients.as_deref());
    match allowed {
        Some(nets) if !listen::client_allowed(nets, peer.ip()) => {
            tracing::debug!(client = %peer, "admin client not in admin.allowed_clients: closed");
            false
        }
        _ => true,
    }
}

/// One scraper's connection.
struct Conn {
    shared: Arc<Shared>,
    probe_state: Arc<Probe>,
    /// Whether `/readyz` may say why it is not ready.
    detail: bool,
}

impl Conn {
    /// HTTP/1.1 until the scraper closes, [`HEADER_TIMEOUT`] passes without a whole request
    /// head (also between keep-alive requests: hyper starts it whenever it waits for one), the
    /// connection has lived [`CONNECTION_TIMEOUT`], or the endpoint stops.
    async fn serve(self, stream: tokio::net::TcpStream, stop: CancellationToken) {
        let Conn {
            shared,
            probe_state,
            detail,
        } = self;
        let service = hyper::service::service_fn(move |req| {
            route(req, shared.clone(), probe_state.clone(), detail)
        });
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(hyper_util::rt::TokioTimer::new())
            .header_read_timeout(HEADER_TIMEOUT)
            .serve_connection(TokioIo::new(stream), service);
        tokio::select! {
            _ = tokio::time::timeout(CONNECTION_TIMEOUT, conn) => {}
            _ = stop.cancelled() => {}
        }
    }
}
