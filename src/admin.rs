//! The admin endpoint: `/healthz` (the process is up), `/readyz` (listeners bound and the last
//! probe of the master succeeded) and `/metrics` (Prometheus text).

use std::io;
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

use crate::diagnose::CertSummary;
use crate::state::{Shared, State};
use crate::upstream::UpstreamError;

/// A probe result is reused for this long, so scrapes cannot hammer the master.
pub const PROBE_PERIOD: Duration = Duration::from_secs(10);

#[derive(Default)]
struct Probe {
    last: Mutex<Option<(Instant, Result<(), String>)>>,
}

/// Dials the master once through the data path's code with a full handshake (no
/// resumption), so the result and the expiry gauge reflect the master's current certificate.
pub async fn probe(state: &State, shared: &Shared) -> Result<(), String> {
    let Some(tls) = &state.tls else {
        state.upstream.connect().await.map_err(|e| e.to_string())?;
        return Ok(());
    };
    let cfg = tls.client_config(&[], tls.has_client_cert(), false);
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
    if let Some(s) = conn
        .peer_certificates()
        .and_then(|c| c.first())
        .and_then(|c| CertSummary::from_der(c))
    {
        shared.saw_master_cert(&s);
    }
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
pub fn classic_exposition(openmetrics: &str) -> String {
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

async fn route(
    req: Request<Incoming>,
    shared: Arc<Shared>,
    probe_state: Arc<Probe>,
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
            "not ready: draining (SIGTERM received)\n",
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
                Some(Err(e)) => text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("not ready: {e}\n"),
                    plain,
                ),
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

/// Binds the admin endpoint's socket (a reload binds the new address before it commits).
pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        None,
    )?;
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        // "[::]:9090" serves IPv4 scrapers too (their addresses are judged as IPv4).
        let _ = socket.set_only_v6(false);
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(128)?;
    TcpListener::from_std(socket.into())
}

/// Serves the admin endpoint on `listener` until `stop`. `admin.allowed_clients` is read from
/// the live state at each accept, so a reload that narrows it applies to the next scrape.
pub fn serve(listener: TcpListener, shared: Arc<Shared>, stop: CancellationToken) {
    let local = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    tracing::info!(listener = "admin", addr = %local, "listening");
    let probe_state = Arc::new(Probe::default());
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                r = listener.accept() => r,
                _ = stop.cancelled() => break,
            };
            let (stream, peer) = match accepted {
                Ok(x) => x,
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let state = shared.current();
            let allowed = state
                .config
                .admin
                .as_ref()
                .and_then(|a| a.allowed_clients.as_deref());
            if let Some(nets) = allowed {
                if !crate::listen::client_allowed(nets, peer.ip()) {
                    tracing::debug!(client = %peer, "admin client not in admin.allowed_clients: closed");
                    continue;
                }
            }
            let shared = shared.clone();
            let probe_state = probe_state.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    route(req, shared.clone(), probe_state.clone())
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(Duration::from_secs(10))
                    .serve_connection(TokioIo::new(stream), service);
                tokio::select! {
                    _ = tokio::time::timeout(Duration::from_secs(60), conn) => {}
                    _ = stop.cancelled() => {}
                }
            });
        }
        tracing::info!(listener = "admin", addr = %local, "admin endpoint closed");
    });
}
