//! The Prometheus metrics (docs/interface.md), counted from the start and exposed by the admin
//! endpoint. Per-listener handles are looked up once, so the data path touches only atomics.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::error_kind::UpstreamErrorKind;
use crate::outcome::Outcome;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConnLabels {
    pub listener: String,
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListenerLabel {
    pub listener: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BytesLabels {
    pub listener: String,
    pub direction: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PeerLabels {
    pub listener: String,
    pub peer: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct KindLabel {
    pub kind: UpstreamErrorKind,
}

impl EncodeLabelValue for UpstreamErrorKind {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        std::fmt::Write::write_str(encoder, self.label())
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ResultLabel {
    pub result: String,
}

fn latency_histogram() -> Histogram {
    Histogram::new(
        [
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
        ]
        .into_iter(),
    )
}

pub struct Metrics {
    pub registry: Registry,
    pub connections: Family<ConnLabels, Counter>,
    pub active: Family<ListenerLabel, Gauge>,
    pub bytes: Family<BytesLabels, Counter>,
    pub(crate) connect_seconds: Histogram,
    pub(crate) handshake_seconds: Histogram,
    pub(crate) upstream_errors: Family<KindLabel, Counter>,
    pub(crate) tls_resumed: Counter,
    pub(crate) master_cert_expiry: Gauge<f64, AtomicU64>,
    pub(crate) config_reloads: Family<ResultLabel, Counter>,
    pub skip_verify: Gauge,
    /// Readiness, the connection cap, the last reload's result.
    pub health: HealthGauges,
    /// `preconnect_total{result}`: hit, miss, discard.
    pub preconnect: PreconnectMetrics,
    /// `peers_total{listener,peer}`: identified clients by the kind the selectors name.
    pub peers: Family<PeerLabels, Counter>,
}

/// The pool's counters, looked up once: a client taking a session bumps an atomic.
#[derive(Clone, Default)]
pub struct PreconnectMetrics {
    /// A client served on a pooled session.
    pub hit: Counter,
    /// A client that found no pooled session for its ALPN choice and dialled fresh.
    pub miss: Counter,
    /// A pooled session closed unused: the master closed it, it sat `preconnect_max_idle`, or
    /// a reload replaced the pool.
    pub discard: Counter,
}

impl PreconnectMetrics {
    /// Registers `preconnect_total{result}` with its three children, so they read 0 from
    /// the start.
    fn register(registry: &mut Registry) -> PreconnectMetrics {
        let family = Family::<ResultLabel, Counter>::default();
        let by_result = |r: &str| {
            family
                .get_or_create(&ResultLabel {
                    result: r.to_string(),
                })
                .clone()
        };
        let metrics = PreconnectMetrics {
            hit: by_result("hit"),
            miss: by_result("miss"),
            discard: by_result("discard"),
        };
        registry.register(
            "preconnect",
            "Pre-connected sessions (upstream.preconnect), by result: hit (a client took one), miss (none ready, dialled fresh), discard (closed unused)",
            family,
        );
        metrics
    }
}

/// The gauges the alerts read besides the counters.
#[derive(Clone, Default)]
pub struct HealthGauges {
    /// 1 when the last readiness probe succeeded, 0 when it failed or the proxy drains; no
    /// sample until a probe has run (see `admin::readiness_for_scrape`).
    pub ready: Family<(), Gauge>,
    /// The global `max_connections`, so utilisation needs no copy of the configuration.
    pub max_connections: Gauge,
    /// 0 from a refused reload until the next one succeeds (Prometheus' own convention).
    pub(crate) reload_ok: Gauge,
    /// `listeners[].max_connections`, for the listeners that have one.
    listener_max: Family<ListenerLabel, Gauge>,
}

impl HealthGauges {
    fn register(registry: &mut Registry) -> HealthGauges {
        let g = HealthGauges::default();
        g.reload_ok.set(1);
        registry.register(
            "ready",
            "1 when the last readiness probe (/readyz, or /metrics?probe=1) reached and verified the master; 0 when it failed or the proxy is draining",
            g.ready.clone(),
        );
        registry.register(
            "max_connections",
            "The global connection cap (max_connections)",
            g.max_connections.clone(),
        );
        registry.register(
            "listener_max_connections",
            "A listener's own connection cap (listeners[].max_connections); no sample for a listener without one",
            g.listener_max.clone(),
        );
        registry.register(
            "config_last_reload_successful",
            "0 when the last configuration reload was refused, else 1",
            g.reload_ok.clone(),
        );
        g
    }
}

impl HealthGauges {
    /// The caps of the configuration going live: the global one, and each listener's own
    /// (a listener whose cap was removed, or that is gone, loses its sample).
    pub(crate) fn caps(&self, global: usize, listeners: &[(&str, Option<usize>)]) {
        self.max_connections.set(global as i64);
        self.listener_max.clear();
        for (name, cap) in listeners {
            if let Some(cap) = cap {
                let label = ListenerLabel {
                    listener: name.to_string(),
                };
                self.listener_max.get_or_create(&label).set(*cap as i64);
            }
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Registers `metric` under `name` and hands it back: one line per metric in [`Metrics::new`].
fn registered<M: prometheus_client::registry::Metric + Clone>(
    registry: &mut Registry,
    name: &str,
    help: &str,
    metric: M,
) -> M {
    registry.register(name, help, metric.clone());
    metric
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("det_tls_proxy");
        let r = &mut registry;
        let connections = registered(r, "connections", "Client connections finished, by listener and result", Family::<ConnLabels, Counter>::default());
        let active = registered(r, "active_connections", "Client connections open now", Family::<ListenerLabel, Gauge>::default());
        let bytes = registered(r, "bytes", "Bytes relayed, by direction (up: client to master, down: master to client)", Family::<BytesLabels, Counter>::default());
        let connect_seconds = registered(r, "connect_seconds", "TCP connect time to the master", latency_histogram());
        let handshake_seconds = registered(r, "handshake_seconds", "TLS handshake time with the master", latency_histogram());
        let upstream_errors = registered(r, "upstream_errors", "Failures to reach or verify the master, by kind", Family::<KindLabel, Counter>::default());
        let tls_resumed = registered(r, "tls_resumed", "TLS handshakes with the master that resumed a session", Counter::default());
        let master_cert_expiry = registered(r, "master_cert_expiry_timestamp_seconds", "Expiry of the master's leaf certificate seen in the last full handshake (Unix time)", Gauge::<f64, AtomicU64>::default());
        let config_reloads = registered(r, "config_reloads", "Configuration reloads, by result", Family::<ResultLabel, Counter>::default());
        let skip_verify = registered(r, "skip_verify", "1 when the master's certificate is not verified (security.tls.skip_verify)", Gauge::default());
        // Every kind from the start, at 0, so a rate() over any of them has a baseline.
        for kind in UpstreamErrorKind::ALL {
            let _ = upstream_errors.get_or_create(&KindLabel { kind });
        }
        let health = HealthGauges::register(&mut registry);
        let preconnect = PreconnectMetrics::register(&mut registry);
        let peers = PeerMetrics::register(&mut registry);
        Metrics {
            peers,
            registry,
            connections,
            active,
            bytes,
            connect_seconds,
            handshake_seconds,
            upstream_errors,
            tls_resumed,
            master_cert_expiry,
            config_reloads,
            skip_verify,
            health,
            preconnect,
        }
    }

    /// Handles for one listener, so each connection bumps atomics without hashing labels.
    pub fn listener(&self, name: &str) -> ListenerMetrics {
        let bytes = |direction: &str| {
            self.bytes
                .get_or_create(&BytesLabels {
                    listener: name.to_string(),
                    direction: direction.to_string(),
                })
                .clone()
        };
        ListenerMetrics {
            active: self
                .active
                .get_or_create(&ListenerLabel {
                    listener: name.to_string(),
                })
                .clone(),
            results: Outcome::ALL.map(|o| {
                self.connections
                    .get_or_create(&ConnLabels {
                        listener: name.to_string(),
                        result: o.label().to_string(),
                    })
                    .clone()
            }),
            up: bytes("up"),
            down: bytes("down"),
        }
    }

    /// Handles for one listener's `peers_total`: its selectors' names, `known` and `unknown`,
    /// so the label's values are what the configuration names and nothing a client chooses.
    pub fn peers(&self, listener: &str, names: &[&str]) -> PeerMetrics {
        let counter = |peer: &str| {
            self.peers
                .get_or_create(&PeerLabels {
                    listener: listener.to_string(),
                    peer: peer.to_string(),
                })
                .clone()
        };
        let mut named: Vec<(String, Counter)> = Vec::new();
        for n in names {
            if !named.iter().any(|(have, _)| have == n) {
                named.push((n.to_string(), counter(n)));
            }
        }
        PeerMetrics {
            known: counter("known"),
            unknown: counter("unknown"),
            named,
        }
    }

    pub fn upstream_error(&self, kind: UpstreamErrorKind) {
        self.upstream_errors.get_or_create(&KindLabel { kind }).inc();
    }

    pub fn reload(&self, ok: bool) {
        self.health.reload_ok.set(i64::from(ok));
        self.config_reloads
            .get_or_create(&ResultLabel {
                result: if ok { "success" } else { "error" }.to_string(),
            })
            .inc();
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[derive(Clone)]
pub struct ListenerMetrics {
    pub active: Gauge,
    /// `connections_total{result}`, one counter per [`Outcome`] in `Outcome::ALL` order.
    results: [Counter; Outcome::ALL.len()],
    pub up: Counter,
    pub down: Counter,
}

impl ListenerMetrics {
    /// Counts one finished (or refused) connection under its outcome.
    pub fn finished(&self, outcome: Outcome) {
        self.results[outcome.index()].inc();
    }
}

/// One listener's `peers_total` children.
#[derive(Clone)]
pub struct PeerMetrics {
    known: Counter,
    unknown: Counter,
    named: Vec<(String, Counter)>,
}

impl PeerMetrics {
    fn register(registry: &mut Registry) -> Family<PeerLabels, Counter> {
        let peers = Family::<PeerLabels, Counter>::default();
        registry.register(
            "peers",
            "Clients identified, by listener and peer: the name of the selector they matched, else known or unknown",
            peers.clone(),
        );
        peers
    }

    /// Counts one client of this kind (`ListenerPolicy::peer_kind`).
    pub fn count(&self, kind: &str) {
        let counter = match kind {
            "known" => Some(&self.known),
            "unknown" => Some(&self.unknown),
            name => self.named.iter().find(|(n, _)| n == name).map(|(_, c)| c),
        };
        if let Some(c) = counter {
            c.inc();
        }
    }
}
