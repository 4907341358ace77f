//! The live state: everything a connection reads from the configuration, built whole by each
//! load and reload and swapped in as one unit, and what every connection shares across
//! reloads (metrics, drain signals, the failure-log rate limiter, the expiry warning).
//!
//! The swap is an `RwLock<Arc<State>>`: an accept takes a read lock for as long as it takes to
//! clone one `Arc`, which costs about what `arc-swap`'s load does without another dependency;
//! a reload takes the write lock once.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::config::{AlpnPolicy, Config, ListenerKey, PresentClientCert};
use crate::connections::Connections;
use crate::diagnose::CertSummary;
use crate::identity::container_api::ContainerDirectory;
use crate::identity::{ContainerSource, Identifier};
use crate::metrics::Metrics;
use crate::pool::{ChoiceKey, Pool};
use crate::tls::{Present, Resume, TlsContext};
use crate::upstream::{Resolve, Upstream};

pub(crate) use crate::policy::{ListenerPolicy, Reach};

/// A repeated failure is logged at most once per this period.
pub(crate) const FAILURE_LOG_PERIOD: Duration = Duration::from_secs(60);

/// Everything a connection reads from the configuration; replaced whole on reload. Each
/// connection takes the state current at its accept and keeps it for its life.
pub struct State {
    pub config: Config,
    pub tls: Option<TlsContext>,
    pub upstream: Upstream,
    /// By listen address: a reload that keeps an address keeps its socket, whatever its name.
    pub listeners: HashMap<ListenerKey, Arc<ListenerPolicy>>,
    /// `upstream.preconnect`'s ready sessions: `None` when it is 0 or TLS is off. Started by
    /// [`State::go_live`], closed by [`State::retire`].
    pub pool: Option<Pool>,
}

impl State {
    /// The state for `config`, with its TLS context (built and checked by the caller, which
    /// reports a trust problem before binding anything); `reach` tells, for each bound socket,
    /// whether only this host can reach it.
    pub fn with_tls(
        config: Config,
        tls: Option<TlsContext>,
        reach: &Reach,
        metrics: &Metrics,
        resolver: Arc<dyn Resolve>,
    ) -> State {
        let listeners = config
            .listeners
            .iter()
            .map(|lc| {
                let reach = reach.get(&lc.key()).copied();
                let policy = ListenerPolicy::build(lc, reach, tls.as_ref(), metrics);
                (lc.key(), Arc::new(policy))
            })
            .collect();
        let upstream = Upstream::for_config(&config, resolver);
        let pool = new_pool(&config, tls.as_ref(), &upstream, &listeners, metrics);
        State {
            config,
            tls,
            upstream,
            listeners,
            pool,
        }
    }

    /// This state goes live in place of `replaced`: the pool is this state's alone, so it is
    /// started and closed here. The replaced pool's sessions were made under the old
    /// configuration: closed, never handed to a client; what it learned about clients carries
    /// over (rebuilt from this state's TLS context).
    /// Sets the gauges that show this configuration (`skip_verify`, the caps) as it goes live;
    /// never for a state a reload only prepared, so a refused reload leaves them as they were.
    fn publish(&self, metrics: &Metrics) {
        metrics
            .skip_verify
            .set(i64::from(self.tls.as_ref().is_some_and(|t| t.skip_verify)));
        let caps: Vec<(&str, Option<usize>)> = self
            .config
            .listeners
            .iter()
            .map(|l| (l.name.as_str(), l.max_connections))
            .collect();
        metrics.health.caps(self.config.max_connections, &caps);
    }

    pub(crate) fn go_live(&self, replaced: Option<&State>) {
        let learned = replaced
            .and_then(|old| old.pool.as_ref())
            .map(Pool::learned)
            .unwrap_or_default();
        if let (Some(pool), Some(tls)) = (&self.pool, &self.tls) {
            for key in learned {
                if key.client_cert && !tls.has_client_cert() {
                    continue;
                }
                pool.seed(key.clone(), tls.client_config(
                        &key.alpn,
                        Present::client_cert_if(key.client_cert),
                        Resume::Shared,
                    ));
            }
            pool.start();
        }
        if let Some(old) = replaced {
            old.retire();
        }
    }

    /// This state will hand out no more pre-connected sessions (replaced, or draining).
    pub(crate) fn retire(&self) {
        if let Some(pool) = &self.pool {
            pool.close();
        }
    }
}

/// The pool for `config`, seeded with the listeners whose ALPN the configuration fixes (not
/// `auto`, whose choice depends on each client's first bytes). A seeded choice no client
/// uses is forgotten after an hour, like a learned one.
fn new_pool(
    config: &Config,
    tls: Option<&TlsContext>,
    upstream: &Upstream,
    listeners: &HashMap<ListenerKey, Arc<ListenerPolicy>>,
    metrics: &Metrics,
) -> Option<Pool> {
    let tls = tls?;
    if config.preconnect.size == 0 {
        return None;
    }
    let pool = Pool::new(
        config.preconnect,
        upstream.clone(),
        tls.name.server_name.clone(),
        metrics.preconnect.clone(),
    );
    for p in listeners.values() {
        if matches!(p.config.alpn, AlpnPolicy::Auto) {
            continue;
        }
        // Anonymous sessions unless every client of the listener is given the certificate.
        let all_certified =
            p.tls_cert.is_some() && p.present_client_cert == PresentClientCert::Always;
        if let Some(ltls) = p.tls.as_ref().filter(|_| !all_certified) {
            pool.seed(ChoiceKey::of(&ltls.fixed, false), ltls.fixed.clone());
        }
        if let Some(ltls) = &p.tls_cert {
            pool.seed(ChoiceKey::of(&ltls.fixed, true), ltls.fixed.clone());
        }
    }
    Some(pool)
}

// === Shared ===

/// What every connection shares: the current state, metrics, and the drain signals.
pub struct Shared {
    state: RwLock<Arc<State>>,
    pub metrics: Arc<Metrics>,
    /// Cancelled when `timeouts.shutdown` has passed: cut what is still relaying.
    pub(crate) force_close: CancellationToken,
    /// Set at the first SIGTERM/SIGINT: `/readyz` answers 503 from then on.
    pub draining: AtomicBool,
    access_log: AtomicBool,
    expiry_warned: AtomicI64,
    failures: Mutex<HashMap<String, (Instant, u64)>>,
    /// Denied clients' access lines, rate-limited per listener.
    pub denied_log: crate::denied_log::DeniedLog,
    pub resolver: Arc<dyn Resolve>,
    /// The connections open now, for `/connections`.
    pub connections: Connections,
    /// Who each client is; its caches outlive reloads.
    pub identity: Identifier,
    /// `identity.container_api`'s directory while that key is set; kept across a reload that
    /// keeps the same socket (its table and event stream with it).
    containers: Mutex<Option<Arc<ContainerDirectory>>>,
}

impl Shared {
    pub fn new(state: State, metrics: Arc<Metrics>, resolver: Arc<dyn Resolve>) -> Arc<Shared> {
        let access = state.config.log.access;
        state.publish(&metrics);
        state.go_live(None);
        let api = state.config.container_api.clone();
        let shared = Arc::new(Shared {
            state: RwLock::new(Arc::new(state)),
            metrics,
            force_close: CancellationToken::new(),
            draining: AtomicBool::new(false),
            access_log: AtomicBool::new(access),
            expiry_warned: AtomicI64::new(0),
            failures: Mutex::new(HashMap::new()),
            denied_log: Default::default(),
            resolver,
            connections: Connections::default(),
            identity: Identifier::new(),
            containers: Mutex::new(None),
        });
        shared.use_container_api(api.as_deref());
        shared
    }

    /// Starts, keeps, replaces or stops the container runtime's directory so that it follows
    /// `identity.container_api`, and hands it to the identifier.
    fn use_container_api(&self, socket: Option<&std::path::Path>) {
        let mut current = self.containers.lock().unwrap_or_else(|p| p.into_inner());
        if current.as_ref().map(|d| d.socket()) == socket {
            return;
        }
        if let Some(old) = current.take() {
            old.stop();
        }
        *current = socket.map(|s| ContainerDirectory::start(s.to_path_buf()));
        let source = current.clone().map(|d| d as Arc<dyn ContainerSource>);
        self.identity.set_containers(source);
    }

    pub fn current(&self) -> Arc<State> {
        self.state.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Swaps in a new configuration; connections in flight keep the state they started with.
    /// The old state's pre-connected sessions are closed, and the new state's pool starts.
    pub fn replace(&self, state: State) {
        self.use_container_api(state.config.container_api.as_deref());
        self.access_log
            .store(state.config.log.access, Ordering::Relaxed);
        state.publish(&self.metrics);
        let new = Arc::new(state);
        let old = std::mem::replace(
            &mut *self.state.write().unwrap_or_else(|p| p.into_inner()),
            new.clone(),
        );
        new.go_live(Some(&old));
        self.failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }

    /// Records the leaf the master sent in `conn`'s handshake (when it sent one).
    pub(crate) fn saw_master(&self, conn: &rustls::ClientConnection) {
        if let Some(leaf) = conn
            .peer_certificates()
            .and_then(|c| c.first())
            .and_then(|c| CertSummary::from_der(c))
        {
            self.saw_master_cert(&leaf);
        }
    }

    /// Records the master's leaf from a full handshake: the expiry gauge, and a warning at
    /// most once a day when it expires within two weeks.
    fn saw_master_cert(&self, leaf: &CertSummary) {
        self.metrics.master_cert_expiry.set(leaf.not_after as f64);
        let now = crate::diagnose::now_secs();
        let left = leaf.not_after - now;
        if left < crate::diagnose::EXPIRY_WARNING.as_secs() as i64 {
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

    /// Whether `log.access` is on in the live configuration.
    pub(crate) fn access_log_on(&self) -> bool {
        self.access_log.load(Ordering::Relaxed)
    }

    /// Logs a failure unless the same cause was logged within the last minute; repeats are
    /// counted and reported with the next line.
    pub(crate) fn log_failure(&self, key: &str, log: impl FnOnce(u64)) {
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
