//! The process around the data path: bind, announce readiness, watch signals and files,
//! reload without cutting connections, drain on SIGTERM, and talk to systemd.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{self, Config, ListenAddr, ListenerConfig, Overrides, Purpose};
use crate::listen::{self, Backoff, Bound, Inherited};
use crate::metrics::Metrics;
use crate::proxy::{self, Shared, State};
use crate::trust::{NameReason, TlsContext};

/// How often certificate and config files are checked for changes.
const WATCH_PERIOD: Duration = Duration::from_secs(2);

pub const EXIT_OK: i32 = 0;
pub const EXIT_RUNTIME: i32 = 1;
pub const EXIT_CONFIG: i32 = 2;

// === systemd notification ===

fn notify(states: &[sd_notify::NotifyState<'_>]) {
    if std::env::var_os("NOTIFY_SOCKET").is_some() {
        let _ = sd_notify::notify(false, states);
    }
}

// === Listeners ===

struct Running {
    config: ListenerConfig,
    bound: Arc<Bound>,
    stop: CancellationToken,
}

/// The serving process: its listeners, the shared state and the drain machinery.
pub struct Server {
    flags: Overrides,
    shared: Arc<Shared>,
    inherited: Inherited,
    listeners: HashMap<String, Running>,
    /// Inherited sockets a reload stopped using: systemd's sockets live as long as we do.
    retired: Vec<Arc<Bound>>,
    semaphore: Arc<Semaphore>,
    tracker: TaskTracker,
    /// The files the live configuration names, with their state when it was loaded.
    watched: Arc<std::sync::Mutex<Watched>>,
}

type Stamp = Option<(u64, u64, Option<SystemTime>)>;
type Watched = Vec<(PathBuf, Stamp)>;

fn watch_list(c: &Config) -> Watched {
    watched_files(c)
        .into_iter()
        .map(|p| {
            let s = stamp(&p);
            (p, s)
        })
        .collect()
}

fn spawn_accept_loop(
    bound: Arc<Bound>,
    shared: Arc<Shared>,
    semaphore: Arc<Semaphore>,
    stop: CancellationToken,
    tracker: TaskTracker,
) {
    tokio::spawn(async move {
        let mut backoff = Backoff::default();
        loop {
            let accepted = tokio::select! {
                r = bound.accept() => r,
                _ = stop.cancelled() => return,
            };
            match accepted {
                Ok((stream, peer)) => {
                    backoff.reset();
                    if !bound.allows(&peer) {
                        deny(&bound, &peer, &shared);
                        drop(stream);
                        continue;
                    }
                    // Beyond max_connections this loop stops accepting until a connection
                    // ends, so further clients wait in the kernel's backlog: at most one
                    // accepted client per listener waits here. The permit is taken after
                    // accept, not before, so an idle listener never holds one that another
                    // listener's client needs.
                    let permit = tokio::select! {
                        p = semaphore.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
                        _ = stop.cancelled() => return,
                    };
                    let shared = shared.clone();
                    let name = bound.name.clone();
                    tracker.spawn(async move {
                        proxy::handle(stream, peer, name, shared).await;
                        drop(permit);
                    });
                }
                Err(e) if listen::is_resource_exhaustion(&e) => {
                    let delay = backoff.next_delay();
                    let name = bound.name.clone();
                    shared.log_failure(&format!("accept:{name}:{e}"), |n| {
                        tracing::warn!(listener = %name, error = %e, repeated = n, retry_in_ms = delay.as_millis() as u64, "cannot accept: out of resources; backing off");
                    });
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = stop.cancelled() => return,
                    }
                }
                Err(e) => {
                    tracing::debug!(listener = %bound.name, error = %e, "accept failed");
                }
            }
        }
    });
}

fn deny(bound: &Bound, peer: &listen::Peer, shared: &Shared) {
    let state = shared.current();
    if let Some(p) = state.listeners.get(&bound.name) {
        p.metrics.denied.inc();
    }
    let name = bound.name.clone();
    let peer_s = peer.to_string();
    let ip = match peer {
        listen::Peer::Ip(a) => a.ip().to_string(),
        listen::Peer::Unix => "unix".into(),
    };
    shared.log_failure(&format!("deny:{name}:{ip}"), |n| {
        tracing::warn!(listener = %name, client = %peer_s, repeated = n, "client not in allowed_clients: closed");
    });
    shared.access_line(
        &name,
        peer,
        &proxy::Record::default(),
        Duration::ZERO,
        "denied",
    );
}

/// Files whose change triggers a reload.
fn watched_files(c: &Config) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = Vec::new();
    v.extend(c.config_file.clone());
    v.extend(c.agent_config.clone());
    v.extend(c.tls.master_cert.clone());
    v.extend(c.tls.client_cert.clone());
    v.extend(c.tls.client_key.clone());
    v
}

/// A file's identity as far as reload cares: follows symlinks, so a Kubernetes Secret whose
/// `..data` link is swapped shows up as a new inode.
fn stamp(p: &PathBuf) -> Stamp {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(p).ok()?;
    Some((m.ino(), m.len(), m.modified().ok()))
}

/// Start-up lines an operator should see once: what is verified, and what is not.
pub fn log_trust_summary(config: &Config, tls: Option<&TlsContext>) {
    match tls {
        None => tracing::warn!(
            master = %format!("{}:{}", config.master.host, config.master.port),
            "security.tls.enabled is false: relaying plain TCP to the master, nothing is encrypted"
        ),
        Some(t) if t.skip_verify => tracing::warn!(
            "security.tls.skip_verify is true: the master's certificate is NOT verified; traffic is encrypted to whoever answers. Set security.tls.master_cert instead"
        ),
        Some(t) => {
            if let NameReason::Substituted { from } = &t.name.reason {
                tracing::info!(
                    master_host = %config.master.host,
                    name = %t.name.name(),
                    bundle = %from.display(),
                    "master_host is an IP address: substituting the certificate name {:?} from master_cert for verification and SNI (set security.tls.master_cert_name to choose another)",
                    t.name.name()
                );
            }
        }
    }
    if let Some(key) = &config.tls.client_key {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(m) = std::fs::metadata(key) {
            if m.permissions().mode() & 0o077 != 0 {
                tracing::warn!(
                    path = %key.display(),
                    mode = %format!("{:04o}", m.permissions().mode() & 0o7777),
                    "security.tls.client_key is readable by group or others; chmod 0600 it"
                );
            }
        }
    }
}

impl Server {
    /// Binds every listener of `config` and builds the first state.
    pub fn start(
        config: Config,
        flags: Overrides,
        inherited: Inherited,
        metrics: Arc<Metrics>,
    ) -> Result<Server, (i32, String)> {
        let resolver = Arc::new(crate::upstream::SystemResolver);
        Self::start_with_resolver(config, flags, inherited, metrics, resolver)
    }

    /// As [`Server::start`], resolving `master_host` with `resolver` (tests swap it to move a
    /// name mid-run).
    pub fn start_with_resolver(
        config: Config,
        flags: Overrides,
        mut inherited: Inherited,
        metrics: Arc<Metrics>,
        resolver: Arc<dyn crate::upstream::Resolve>,
    ) -> Result<Server, (i32, String)> {
        // Trust problems are configuration problems: report them before binding anything.
        let tls = TlsContext::for_config(&config)
            .map_err(|e| (EXIT_CONFIG, format!("configuration error: {e}")))?;
        let mut bound = Vec::new();
        for lc in &config.listeners {
            match listen::bind(lc, &mut inherited) {
                Ok(b) => bound.push((lc.clone(), Arc::new(b))),
                Err(e) => {
                    let code = if e.is_config() {
                        EXIT_CONFIG
                    } else {
                        EXIT_RUNTIME
                    };
                    return Err((code, e.to_string()));
                }
            }
        }
        let present: HashMap<String, bool> = bound
            .iter()
            .map(|(_, b)| (b.name.clone(), b.present_client_cert))
            .collect();
        log_trust_summary(&config, tls.as_ref());
        let max = config.max_connections;
        let watched = watch_list(&config);
        let state = State::with_tls(config, tls, &present, &metrics, resolver.clone());
        let shared = Shared::new(state, metrics, resolver);
        let mut server = Server {
            flags,
            shared,
            inherited,
            listeners: HashMap::new(),
            retired: Vec::new(),
            semaphore: Arc::new(Semaphore::new(max)),
            tracker: TaskTracker::new(),
            watched: Arc::new(std::sync::Mutex::new(watched)),
        };
        for (lc, b) in bound {
            server.launch(lc, b);
        }
        Ok(server)
    }

    pub fn shared(&self) -> Arc<Shared> {
        self.shared.clone()
    }

    /// (listener name, bound address) of every listener.
    pub fn addresses(&self) -> Vec<(String, String)> {
        let mut v: Vec<(String, String)> = self
            .listeners
            .values()
            .map(|r| (r.bound.name.clone(), r.bound.local.clone()))
            .collect();
        v.sort();
        v
    }

    /// Stops accepting on every listener (connections in flight go on).
    pub fn stop(self) {
        for r in self.listeners.values() {
            r.stop.cancel();
        }
    }

    fn launch(&mut self, lc: ListenerConfig, bound: Arc<Bound>) {
        tracing::info!(listener = %bound.name, addr = %bound.local, present_client_cert = bound.present_client_cert, "listening");
        let stop = CancellationToken::new();
        spawn_accept_loop(
            bound.clone(),
            self.shared.clone(),
            self.semaphore.clone(),
            stop.clone(),
            self.tracker.clone(),
        );
        self.listeners.insert(
            lc.name.clone(),
            Running {
                config: lc,
                bound,
                stop,
            },
        );
    }

    /// Re-reads configuration and certificates. A bad one is refused and the old one stays.
    pub fn reload(&mut self, why: &str) {
        notify(&[sd_notify::NotifyState::Reloading]);
        let result = self.try_reload();
        match &result {
            Ok(()) => {
                self.shared.metrics.reload(true);
                tracing::info!(trigger = why, "configuration reloaded");
            }
            Err(msg) => {
                self.shared.metrics.reload(false);
                tracing::error!(trigger = why, error = %msg, "reload refused; keeping the previous configuration");
            }
        }
        notify(&[sd_notify::NotifyState::Ready]);
    }

    fn try_reload(&mut self) -> Result<(), String> {
        let config = config::load(&self.flags, Purpose::Serve)
            .map_err(|e| e.to_string().replace('\n', "; "))?;
        let watched = watch_list(&config);
        let tls = TlsContext::for_config(&config).map_err(|e| e.to_string())?;
        // Listeners that stay keep their socket; new ones are bound before anything changes.
        let mut added = Vec::new();
        for lc in &config.listeners {
            let same = self
                .listeners
                .get(&lc.name)
                .is_some_and(|r| r.config.addr == lc.addr);
            if !same {
                let reuse_retired = match &lc.addr {
                    ListenAddr::Systemd(_) => self.retired.iter().position(|b| b.name == lc.name),
                    _ => None,
                };
                let b = match reuse_retired {
                    Some(i) => self.retired.remove(i),
                    None => {
                        Arc::new(listen::bind(lc, &mut self.inherited).map_err(|e| e.to_string())?)
                    }
                };
                added.push((lc.clone(), b));
            }
        }
        let mut present: HashMap<String, bool> = self
            .listeners
            .values()
            .map(|r| (r.bound.name.clone(), r.bound.present_client_cert))
            .collect();
        for (_, b) in &added {
            present.insert(b.name.clone(), b.present_client_cert);
        }
        log_trust_summary(&config, tls.as_ref());
        let state = State::with_tls(
            config.clone(),
            tls,
            &present,
            &self.shared.metrics,
            self.shared.resolver.clone(),
        );
        self.shared.replace(state);

        let keep: Vec<String> = config.listeners.iter().map(|l| l.name.clone()).collect();
        let gone: Vec<String> = self
            .listeners
            .iter()
            .filter(|(name, r)| {
                !keep.contains(name)
                    || config
                        .listeners
                        .iter()
                        .any(|l| &l.name == *name && l.addr != r.config.addr)
            })
            .map(|(n, _)| n.clone())
            .collect();
        for name in gone {
            if let Some(r) = self.listeners.remove(&name) {
                r.stop.cancel();
                tracing::info!(listener = %name, addr = %r.bound.local, "listener closed by reload");
                if r.bound.inherited {
                    self.retired.push(r.bound);
                }
            }
        }
        for (lc, b) in added {
            self.launch(lc, b);
        }
        for lc in &config.listeners {
            if let Some(r) = self.listeners.get_mut(&lc.name) {
                r.config = lc.clone();
            }
        }
        *self.watched.lock().unwrap_or_else(|p| p.into_inner()) = watched;
        Ok(())
    }

    /// Serves until SIGTERM/SIGINT, then drains. Returns the exit status.
    pub async fn serve(self, initial: &Config) -> i32 {
        self.serve_until(initial, std::future::pending()).await
    }

    /// Serves until SIGTERM/SIGINT or `shutdown` completes, then drains.
    pub async fn serve_until(
        mut self,
        initial: &Config,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> i32 {
        tokio::pin!(shutdown);
        let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
            signal(SignalKind::hangup()),
        ) else {
            tracing::error!("cannot install signal handlers");
            return EXIT_RUNTIME;
        };
        tracing::info!(
            master = %format!("{}:{}", initial.master.host, initial.master.port),
            listeners = self.listeners.len(),
            "ready"
        );
        notify(&[
            sd_notify::NotifyState::Ready,
            sd_notify::NotifyState::Status("ready, 0 connections"),
        ]);

        let (reload_tx, mut reload_rx) = mpsc::channel::<&'static str>(1);
        let watcher_stop = CancellationToken::new();
        spawn_file_watch(self.watched.clone(), reload_tx, watcher_stop.clone());
        let status_stop = CancellationToken::new();
        spawn_status(self.tracker.clone(), status_stop.clone());

        loop {
            tokio::select! {
                _ = term.recv() => { tracing::info!(signal = "SIGTERM", "draining"); break; }
                _ = int.recv() => { tracing::info!(signal = "SIGINT", "draining"); break; }
                _ = &mut shutdown => { tracing::info!("draining"); break; }
                _ = hup.recv() => self.reload("SIGHUP"),
                Some(why) = reload_rx.recv() => self.reload(why),
            }
        }
        watcher_stop.cancel();
        notify(&[sd_notify::NotifyState::Stopping]);
        // Stop accepting and close the sockets: new clients are refused from here on.
        for (_, r) in self.listeners.drain() {
            r.stop.cancel();
        }
        self.retired.clear();
        self.tracker.close();
        let shutdown = self.shared.current().config.timeouts.shutdown;
        let in_flight = self.tracker.len();
        if in_flight > 0 {
            tracing::info!(connections = in_flight, timeout = %humantime::format_duration(shutdown), "waiting for connections to finish");
        }
        if tokio::time::timeout(shutdown, self.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                connections = self.tracker.len(),
                "timeouts.shutdown passed; closing the connections still open"
            );
            self.shared.force_close.cancel();
            let _ = tokio::time::timeout(Duration::from_secs(2), self.tracker.wait()).await;
        }
        status_stop.cancel();
        tracing::info!("stopped");
        EXIT_OK
    }
}

/// Polls the files the live configuration names and queues a reload when one differs from
/// its state at load time. The list and its baseline are replaced by every successful reload,
/// so files named only by a reloaded configuration are watched too, and a change made right
/// after a reload is not lost. A change whose reload failed is not retried until the next one.
fn spawn_file_watch(
    watched: Arc<std::sync::Mutex<Watched>>,
    tx: mpsc::Sender<&'static str>,
    stop: CancellationToken,
) {
    tokio::spawn(async move {
        let mut last_triggered: Option<Vec<Stamp>> = None;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(WATCH_PERIOD) => {}
                _ = stop.cancelled() => return,
            }
            let list = watched.lock().unwrap_or_else(|p| p.into_inner()).clone();
            let now: Vec<Stamp> = list.iter().map(|(p, _)| stamp(p)).collect();
            let changed = list.iter().zip(&now).any(|((_, then), now)| then != now);
            if changed && last_triggered.as_ref() != Some(&now) {
                last_triggered = Some(now);
                // A full channel means a reload is already queued.
                let _ = tx.try_send("file change");
            }
        }
    });
}

/// STATUS= with the live connection count, and watchdog pings at half of WATCHDOG_USEC.
fn spawn_status(tracker: TaskTracker, stop: CancellationToken) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    let mut usec = 0u64;
    let watchdog = sd_notify::watchdog_enabled(false, &mut usec);
    let period = if watchdog {
        Duration::from_micros(usec / 2).max(Duration::from_millis(100))
    } else {
        Duration::from_secs(5)
    };
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(period);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.cancelled() => return,
            }
            let active = tracker.len();
            let status = format!("ready, {active} connections");
            if watchdog {
                notify(&[
                    sd_notify::NotifyState::Watchdog,
                    sd_notify::NotifyState::Status(&status),
                ]);
            } else {
                notify(&[sd_notify::NotifyState::Status(&status)]);
            }
        }
    });
}

/// `det-tls-proxy run`: the whole life of the serving process.
pub fn run(flags: Overrides, inherited: Inherited) -> i32 {
    let config = match config::load(&flags, Purpose::Serve) {
        Ok(c) => c,
        Err(e) => {
            crate::logging::config_errors(&flags, &e);
            return EXIT_CONFIG;
        }
    };
    crate::logging::init(&config.log);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the runtime");
            return EXIT_RUNTIME;
        }
    };
    runtime.block_on(async move {
        let metrics = Arc::new(Metrics::new());
        let server = match Server::start(config.clone(), flags, inherited, metrics.clone()) {
            Ok(s) => s,
            Err((code, msg)) => {
                tracing::error!("{msg}");
                return code;
            }
        };
        if let Some(admin) = &config.admin {
            if let Err(e) = crate::admin::start(admin, server.shared()).await {
                tracing::error!(error = %e, "cannot start the admin endpoint");
                return EXIT_RUNTIME;
            }
        }
        server.serve(&config).await
    })
}
