//! The serving process around the data path: bind, announce readiness, watch signals and
//! files, reload (`reload.rs`), drain on SIGTERM, and talk to systemd. The live configuration
//! is one `state::State` behind `Shared`; this module owns what a state cannot hold: the
//! sockets, the accept loops, the connection limit and the admin endpoint.

mod accept;
mod adopted;
mod drain;
mod reload;
mod upgrade;
mod watch;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{self, Config, ListenerKey, Overrides, Purpose};
use crate::exit::{self, StartError};
use crate::limit::Limit;
use crate::listen::{self, Bound};
use crate::metrics::Metrics;
use crate::state::{Reach, Shared, State};
use crate::tls::{NameReason, TlsContext};

pub use crate::listen::Inherited;

// === systemd notification ===

fn notify(states: &[sd_notify::NotifyState<'_>]) {
    if std::env::var_os("NOTIFY_SOCKET").is_some() {
        let _ = sd_notify::notify(false, states);
    }
}

// === The server ===

/// A listener's socket, its own connection limit and the switch that stops its accept loop.
struct Running {
    bound: Arc<Bound>,
    /// `listeners[].max_connections`: kept across reloads with the socket, resized by them.
    limit: Arc<Limit>,
    stop: CancellationToken,
}

/// The admin endpoint: the address it was configured with, and its stop switch.
struct AdminRunning {
    listen: SocketAddr,
    /// Its listening socket (open until `stop`), to pass on in an upgrade.
    fd: std::os::fd::RawFd,
    stop: CancellationToken,
    /// Its accept loop and connections: the drain lets them finish their answers.
    tracker: TaskTracker,
}

/// What a server starts from. `Start::new` takes the defaults of a process started by hand:
/// no command-line overrides, no inherited sockets, fresh metrics, the system's resolver.
pub struct Start {
    pub config: Config,
    pub flags: Overrides,
    pub inherited: Inherited,
    pub metrics: Arc<Metrics>,
    /// How the master's name is resolved (a test substitutes its own).
    pub resolver: Arc<dyn crate::upstream::Resolve>,
}

impl Start {
    pub fn new(config: Config) -> Start {
        Start {
            config,
            flags: Overrides::default(),
            inherited: Inherited::default(),
            metrics: Arc::new(Metrics::new()),
            resolver: Arc::new(crate::upstream::SystemResolver),
        }
    }
}

/// Whether only this host can reach each bound socket, for the listeners' policies.
fn reach<'a>(bound: impl IntoIterator<Item = (&'a ListenerKey, &'a Bound)>) -> Reach {
    bound
        .into_iter()
        .map(|(k, b)| (k.clone(), b.host_only))
        .collect()
}

/// The serving process: its listeners, the shared state and the drain machinery.
pub struct Server {
    flags: Overrides,
    shared: Arc<Shared>,
    inherited: Inherited,
    /// By configured address: the identity a reload keeps a socket by.
    listeners: HashMap<ListenerKey, Running>,
    /// Inherited sockets a reload stopped using: systemd's sockets live as long as we do.
    retired: HashMap<ListenerKey, Arc<Bound>>,
    limit: Arc<Limit>,
    tracker: TaskTracker,
    admin: Option<AdminRunning>,
    /// The files the live configuration names, with their state when it was loaded.
    watched: Arc<Mutex<watch::Watched>>,
    /// The binary an upgrade starts: this process's own path, read at start.
    exe: Option<std::path::PathBuf>,
}

/// Why the serving loop ended.
enum End {
    Signal(&'static str),
    /// A new process serves the sockets now (its pid).
    Upgraded(u32),
}

/// Start-up lines an operator should see once: what is verified, and what is not.
pub(crate) fn log_trust_summary(config: &Config, tls: Option<&TlsContext>) {
    match tls {
        None => tracing::warn!(
            master = %format!("{}:{}", config.master.host, config.master.port),
            "security.tls.enabled is false: relaying plain TCP to the master, nothing is encrypted"
        ),
        Some(t) if t.skip_verify && !t.pins.is_empty() => tracing::warn!(
            "security.tls.skip_verify is true with security.tls.master_cert_sha256: only the pin and the leaf's dates are checked, NOT the name"
        ),
        Some(t) if t.skip_verify => tracing::warn!(
            "security.tls.skip_verify is true: the master's certificate is NOT verified; traffic is encrypted to whoever answers. Set security.tls.master_cert instead"
        ),
        Some(t) => {
            if !t.pins.is_empty() && config.tls.master_cert.is_none() {
                tracing::info!(
                    pins = t.pins.as_slice().len(),
                    "security.tls.master_cert_sha256 without master_cert: the pinned certificate is the trust; the system roots are not used"
                );
            }
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
    if let Some(t) = tls {
        warn_expired_crls(t);
    }
    for w in crate::config::shared_client_cert_warnings(config) {
        tracing::warn!("{w}");
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

/// A CRL past its nextUpdate is still applied (an outage is worse than a stale list), and
/// said at start and at each reload until a fresh one is in place.
fn warn_expired_crls(tls: &TlsContext) {
    for crl in tls.expired_crls(crate::diagnose::now_secs()) {
        tracing::warn!(
            path = %crl.path.display(),
            issuer = %crl.issuer,
            next_update = %crl.next_update.map(crate::diagnose::rfc3339).unwrap_or_default(),
            "security.tls.crl: the CRL in {} expired (its nextUpdate {} has passed); it is still applied, but revocations since then are not known: publish a fresh CRL",
            crl.path.display(),
            crl.next_update.map(crate::diagnose::rfc3339).unwrap_or_default(),
        );
    }
}

fn start_error(e: listen::ListenError) -> StartError {
    if e.is_config() {
        StartError::Config(e.to_string())
    } else {
        StartError::Runtime(e.to_string())
    }
}

impl Server {
    /// Binds every listener of the configuration (and the admin endpoint) and builds the
    /// first state: the one way a server starts, for `run`, `demo` and the tests alike.
    /// Must run inside the tokio runtime.
    pub fn start(start: Start) -> Result<Server, StartError> {
        let Start {
            config,
            flags,
            mut inherited,
            metrics,
            resolver,
        } = start;
        // Trust problems are configuration problems: report them before binding anything.
        let tls = TlsContext::for_config(&config)
            .map_err(|e| StartError::Config(format!("configuration error: {e}")))?;
        let mut bound = Vec::new();
        for lc in &config.listeners {
            let b = listen::bind(lc, &mut inherited).map_err(start_error)?;
            bound.push((lc.key(), Arc::new(b)));
        }
        let sockets: HashMap<ListenerKey, Arc<Bound>> = bound.iter().cloned().collect();
        adopted::master_is_not_a_systemd_listener(&config, &sockets)
            .map_err(|e| StartError::Config(format!("configuration error: {e}")))?;
        let admin = match &config.admin {
            Some(a) => Some((a.listen, bind_admin(a.listen, &mut inherited)?)),
            None => None,
        };
        inherited.close_unclaimed_upgrade();
        log_trust_summary(&config, tls.as_ref());
        let reach = reach(bound.iter().map(|(k, b)| (k, &**b)));
        let limit = Limit::new(config.max_connections);
        let watched = watch::watch_list(&config);
        let state = State::with_tls(config, tls, &reach, &metrics, resolver.clone());
        let shared = Shared::new(state, metrics, resolver);
        let mut server = Server {
            flags,
            shared,
            inherited,
            listeners: HashMap::new(),
            retired: HashMap::new(),
            limit,
            tracker: TaskTracker::new(),
            admin: None,
            watched: Arc::new(Mutex::new(watched)),
            exe: upgrade::own_path(),
        };
        for (addr, b) in bound {
            server.launch(addr, b);
        }
        if let Some((listen, listener)) = admin {
            server.launch_admin(listen, listener);
        }
        Ok(server)
    }

    pub fn shared(&self) -> Arc<Shared> {
        self.shared.clone()
    }

    /// (listener name, bound address) of every listener.
    pub fn addresses(&self) -> Vec<(String, String)> {
        let state = self.shared.current();
        let mut v: Vec<(String, String)> = self
            .listeners
            .iter()
            .map(|(addr, r)| {
                let name = state
                    .listeners
                    .get(addr)
                    .map(|p| p.config.name.clone())
                    .unwrap_or_default();
                (name, r.bound.local.clone())
            })
            .collect();
        v.sort();
        v
    }

    /// Stops accepting on every listener and the admin endpoint (connections in flight go on).
    pub fn stop(self) {
        for r in self.listeners.values() {
            r.stop.cancel();
        }
        if let Some(a) = &self.admin {
            a.stop.cancel();
        }
    }

    fn launch(&mut self, addr: ListenerKey, bound: Arc<Bound>) {
        let state = self.shared.current();
        let policy = state.listeners.get(&addr);
        if let Some(p) = policy {
            tracing::info!(listener = %p.config.name, addr = %bound.local, present_client_cert = %p.present_client_cert, "listening");
        }
        let own = Limit::new(policy.map_or(usize::MAX, |p| accept::own_cap(&p.config)));
        let stop = CancellationToken::new();
        accept::AcceptLoop {
            key: addr.clone(),
            bound: bound.clone(),
            shared: self.shared.clone(),
            limit: self.limit.clone(),
            own: own.clone(),
            stop: stop.clone(),
            tracker: self.tracker.clone(),
        }
        .spawn();
        let running = Running {
            bound,
            limit: own,
            stop,
        };
        self.listeners.insert(addr, running);
    }

    fn launch_admin(&mut self, listen: SocketAddr, listener: tokio::net::TcpListener) {
        use std::os::fd::AsRawFd;
        let stop = CancellationToken::new();
        let fd = listener.as_raw_fd();
        let tracker = crate::admin::serve(listener, self.shared.clone(), stop.clone());
        self.admin = Some(AdminRunning {
            listen,
            fd,
            stop,
            tracker,
        });
    }

    /// Serves until SIGTERM/SIGINT (or an upgrade hands the sockets over), then drains.
    /// Returns the exit status.
    pub async fn serve(mut self, initial: &Config) -> i32 {
        let (Ok(mut term), Ok(mut int), Ok(mut hup), Ok(mut usr2)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
            signal(SignalKind::hangup()),
            signal(SignalKind::user_defined2()),
        ) else {
            tracing::error!("cannot install signal handlers");
            return exit::RUNTIME;
        };
        tracing::info!(
            master = %format!("{}:{}", initial.master.host, initial.master.port),
            listeners = self.listeners.len(),
            "ready"
        );
        if self.inherited.is_upgrade() {
            // The replaced process tells systemd (it is still the main pid until then).
            self.inherited.signal_ready();
        } else {
            notify(&[
                sd_notify::NotifyState::Ready,
                sd_notify::NotifyState::Status("ready, 0 connections"),
            ]);
        }

        let (reload_tx, mut reload_rx) = mpsc::channel::<&'static str>(1);
        let watcher_stop = CancellationToken::new();
        watch::spawn(self.watched.clone(), reload_tx, watcher_stop.clone());
        let status_stop = CancellationToken::new();
        spawn_status(self.tracker.clone(), status_stop.clone());

        let end = loop {
            tokio::select! {
                _ = term.recv() => break End::Signal("SIGTERM"),
                _ = int.recv() => break End::Signal("SIGINT"),
                _ = hup.recv() => self.reload("SIGHUP").await,
                Some(why) = reload_rx.recv() => self.reload(why).await,
                _ = usr2.recv() => {
                    if let Some(pid) = self.upgrade().await {
                        break End::Upgraded(pid);
                    }
                }
            }
        };
        // Visible before the line that says so: /readyz answers 503 from here on, and systemd
        // knows we are stopping (unless a new process is the main pid now).
        self.shared.draining.store(true, Ordering::SeqCst);
        match end {
            End::Signal(signal) => {
                notify(&[sd_notify::NotifyState::Stopping]);
                tracing::info!(signal, "draining");
            }
            End::Upgraded(new_pid) => {
                self.hand_over();
                tracing::info!(
                    new_pid,
                    "draining: the new process serves the listeners now"
                );
            }
        }
        watcher_stop.cancel();
        self.drain(&mut term, &mut int).await;
        status_stop.cancel();
        tracing::info!("stopped");
        exit::OK
    }
}

/// The admin endpoint's socket: the one a replaced process passed, else bound anew.
fn bind_admin(
    listen: SocketAddr,
    inherited: &mut Inherited,
) -> Result<tokio::net::TcpListener, StartError> {
    let cannot = |e: std::io::Error| {
        StartError::Runtime(format!("cannot start the admin endpoint on {listen}: {e}"))
    };
    match inherited.take_upgraded(&crate::inherit::admin_key(listen)) {
        Some(fd) => {
            let l = std::net::TcpListener::from(fd);
            l.set_nonblocking(true).map_err(cannot)?;
            tokio::net::TcpListener::from_std(l).map_err(cannot)
        }
        None => crate::listen::tcp_listener(listen).map_err(cannot),
    }
}

/// WATCHDOG_USEC when the watchdog is this process's: WATCHDOG_PID is our pid, or absent, as
/// after an upgrade, whose new process cannot know its pid in advance (libsystemd reads the
/// variables the same way).
fn watchdog_usec() -> Option<u64> {
    let usec = std::env::var("WATCHDOG_USEC").ok()?.parse::<u64>().ok()?;
    match std::env::var("WATCHDOG_PID") {
        Ok(pid) if pid.parse::<u32>().ok() != Some(std::process::id()) => None,
        _ => Some(usec),
    }
}

/// STATUS= with the live connection count, and watchdog pings at half of WATCHDOG_USEC.
fn spawn_status(tracker: TaskTracker, stop: CancellationToken) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    let (watchdog, usec) = match watchdog_usec() {
        Some(usec) => (true, usec),
        None => (false, 0),
    };
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
            return exit::CONFIG;
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
            return exit::RUNTIME;
        }
    };
    runtime.block_on(async move {
        let start = Start {
            flags,
            inherited,
            ..Start::new(config.clone())
        };
        let server = match Server::start(start) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!("{e}");
                return e.exit_code();
            }
        };
        server.serve(&config).await
    })
}
