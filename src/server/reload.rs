//! Reload: build one complete new state from the configuration on disk, prepare everything
//! that can fail (files read, trust built, new sockets bound, unix socket modes set), and only
//! then swap it in as one unit. A reload that fails anywhere leaves the old state serving,
//! untouched, and says why; one that succeeds says which keys changed.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use crate::config::{self, Config, ConfigErrors, ListenerConfig, ListenerKey, Purpose};
use crate::listen::{self, Bound, ListenError};
use crate::state::State;
use crate::tls::{TlsContext, TrustError};

use super::{log_trust_summary, notify, watch, Server};

/// Why a reload was refused. Each says it as the log line always has: operators and their
/// alerts match on it.
#[derive(Debug, thiserror::Error)]
enum ReloadError {
    /// The configuration on disk is invalid: every mistake, on one line.
    #[error("{}", .0.to_string().replace('\n', "; "))]
    Config(ConfigErrors),
    /// A certificate, key, CA bundle or CRL cannot be used.
    #[error("{0}")]
    Trust(TrustError),
    #[error("the reload task failed: {0}")]
    Task(tokio::task::JoinError),
    /// A new listener cannot be bound or adopted, or a listener cannot take its new policy.
    #[error("{0}")]
    Listener(#[from] ListenError),
    /// `master_host` is one of this proxy's own systemd sockets (the message names it).
    #[error("{0}")]
    MasterIsOwnListener(String),
    #[error("admin.listen: cannot bind {addr}: {source}")]
    AdminBind { addr: SocketAddr, source: io::Error },
}

/// The keys whose value a reload changed, as the `configuration reloaded` line lists them.
struct ChangedKeys(Vec<String>);

impl fmt::Display for ChangedKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            f.write_str("no key (files re-read)")
        } else {
            f.write_str(&self.0.join(", "))
        }
    }
}

/// What a reload read and built off the runtime (blocking file and group look-ups).
struct Loaded {
    config: Config,
    tls: Option<TlsContext>,
    watched: watch::Watched,
}

/// Sockets bound and file modes changed for a reload not yet committed.
#[derive(Default)]
struct Prepared {
    added: Vec<(ListenerKey, Arc<Bound>)>,
    admin: AdminChange,
    /// Unix sockets whose mode/group this reload changed, with the mode and gid before.
    chmodded: Vec<(Arc<Bound>, u32, u32)>,
}

#[derive(Default)]
enum AdminChange {
    #[default]
    Keep,
    Stop,
    Start(SocketAddr, tokio::net::TcpListener),
}

impl Server {
    /// Re-reads configuration and certificates. A bad one is refused and the old one stays.
    pub async fn reload(&mut self, why: &str) {
        notify(&[sd_notify::NotifyState::Reloading]);
        match self.try_reload().await {
            Ok(changed) => {
                self.shared.metrics.reload(true);
                tracing::info!(trigger = why, changed = %changed, "configuration reloaded");
            }
            Err(e) => {
                self.shared.metrics.reload(false);
                tracing::error!(trigger = why, error = %e, "reload refused; keeping the previous configuration");
            }
        }
        notify(&[sd_notify::NotifyState::Ready]);
    }

    async fn try_reload(&mut self) -> Result<ChangedKeys, ReloadError> {
        let flags = self.flags.clone();
        let loaded = tokio::task::spawn_blocking(move || -> Result<Loaded, ReloadError> {
            let config = config::load(&flags, Purpose::Serve).map_err(ReloadError::Config)?;
            let tls = TlsContext::for_config(&config).map_err(ReloadError::Trust)?;
            let watched = watch::watch_list(&config);
            Ok(Loaded {
                config,
                tls,
                watched,
            })
        })
        .await
        .map_err(ReloadError::Task)??;
        let prepared = self.prepare(&loaded.config)?;
        Ok(self.commit(loaded, prepared))
    }

    /// Everything that can fail, done before anything changes: new listeners and a new admin
    /// address are bound, kept sockets are checked against their new policy, unix socket
    /// modes and groups are set. On failure whatever was done is undone.
    fn prepare(&mut self, config: &Config) -> Result<Prepared, ReloadError> {
        let mut p = Prepared::default();
        let result = self.prepare_into(config, &mut p);
        if let Err(e) = result {
            self.undo(p);
            return Err(e);
        }
        Ok(p)
    }

    fn prepare_into(&mut self, config: &Config, p: &mut Prepared) -> Result<(), ReloadError> {
        for lc in &config.listeners {
            match self.listeners.get(&lc.key()) {
                Some(r) => r.bound.check_policy(lc)?,
                None => {
                    let b = match self.retired.remove(&lc.key()) {
                        Some(b) => b,
                        None => Arc::new(listen::bind(lc, &mut self.inherited)?),
                    };
                    p.added.push((lc.key(), b.clone()));
                    b.check_policy(lc)?;
                }
            }
        }
        let sockets: HashMap<ListenerKey, Arc<Bound>> = self
            .listeners
            .iter()
            .map(|(k, r)| (k.clone(), r.bound.clone()))
            .chain(p.added.iter().cloned())
            .collect();
        super::adopted::master_is_not_a_systemd_listener(config, &sockets)
            .map_err(ReloadError::MasterIsOwnListener)?;
        let want = config.admin.as_ref().map(|a| a.listen);
        let have = self.admin.as_ref().map(|a| a.listen);
        p.admin = match (want, have) {
            (w, h) if w == h => AdminChange::Keep,
            (None, Some(_)) => AdminChange::Stop,
            (Some(addr), _) => AdminChange::Start(
                addr,
                listen::tcp_listener(addr)
                    .map_err(|source| ReloadError::AdminBind { addr, source })?,
            ),
            (None, None) => AdminChange::Keep,
        };
        let state = self.shared.current();
        for lc in &config.listeners {
            let Some(r) = self.listeners.get(&lc.key()) else {
                continue;
            };
            let before = state.listeners.get(&lc.key()).map(|p| &p.config);
            if before.is_some_and(|b| b.mode == lc.mode && b.group == lc.group) {
                continue;
            }
            if let Some((mode, gid)) = r.bound.unix_permissions_now() {
                r.bound.set_unix_permissions(lc)?;
                p.chmodded.push((r.bound.clone(), mode, gid));
            }
        }
        Ok(())
    }

    /// Undoes a prepared reload: new sockets closed, systemd's returned to the retired set,
    /// socket modes restored.
    fn undo(&mut self, p: Prepared) {
        for (addr, b) in p.added {
            if b.inherited {
                self.retired.insert(addr, b);
            }
        }
        for (b, mode, gid) in p.chmodded {
            if let Some(path) = &b.unix_path {
                use std::os::unix::fs::PermissionsExt;
                let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode));
                let _ = std::os::unix::fs::chown(path, None, Some(gid));
            }
        }
    }

    /// The global `max_connections` and each kept listener's own, resized in place: raised,
    /// waiting clients come in; lowered, open connections finish and new ones wait.
    fn resize_limits(&self, max: usize, listeners: &[ListenerConfig]) {
        self.limit.resize(max);
        for lc in listeners {
            if let Some(r) = self.listeners.get(&lc.key()) {
                r.limit.resize(super::accept::own_cap(lc));
            }
        }
    }

    /// Swaps the new state in and starts/stops what it says. Cannot fail.
    fn commit(&mut self, loaded: Loaded, p: Prepared) -> ChangedKeys {
        let Loaded {
            config,
            tls,
            watched,
        } = loaded;
        let old = self.shared.current();
        let changed = ChangedKeys(config::changed_keys(&old.config, &config));
        let sockets = self.listeners.iter().map(|(k, r)| (k, &*r.bound));
        let reach = super::reach(sockets.chain(p.added.iter().map(|(k, b)| (k, &**b))));
        log_trust_summary(&config, tls.as_ref());
        let new_listeners: Vec<ListenerConfig> = config.listeners.clone();
        let max = config.max_connections;
        let log = config.log.clone();
        let state = State::with_tls(
            config,
            tls,
            &reach,
            &self.shared.metrics,
            self.shared.resolver.clone(),
        );
        // From this instant every accept takes the new policy.
        self.shared.replace(state);
        self.resize_limits(max, &new_listeners);
        crate::logging::apply(&log);

        let gone: Vec<ListenerKey> = self
            .listeners
            .keys()
            .filter(|a| !new_listeners.iter().any(|l| &l.key() == *a))
            .cloned()
            .collect();
        for addr in gone {
            if let Some(r) = self.listeners.remove(&addr) {
                r.stop.cancel();
                let name = old
                    .listeners
                    .get(&addr)
                    .map(|p| p.config.name.clone())
                    .unwrap_or_default();
                tracing::info!(listener = %name, addr = %r.bound.local, "listener closed by reload; its connections go on");
                if r.bound.inherited {
                    self.retired.insert(addr, r.bound);
                }
            }
        }
        for lc in &new_listeners {
            let renamed = old
                .listeners
                .get(&lc.key())
                .filter(|p| p.config.name != lc.name && self.listeners.contains_key(&lc.key()));
            if let Some(p) = renamed {
                tracing::info!(listener = %lc.name, was = %p.config.name, addr = %lc.addr, "listener renamed");
            }
        }
        for (addr, b) in p.added {
            self.launch(addr, b);
        }
        match p.admin {
            AdminChange::Keep => {}
            AdminChange::Stop => {
                if let Some(a) = self.admin.take() {
                    a.stop.cancel();
                }
            }
            AdminChange::Start(listen, listener) => {
                if let Some(a) = self.admin.take() {
                    a.stop.cancel();
                }
                self.launch_admin(listen, listener);
            }
        }
        *self.watched.lock().unwrap_or_else(|p| p.into_inner()) = watched;
        changed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ConfigError;

    #[test]
    fn refusals_and_changes_read_as_the_log_lines_always_have() {
        let mistake = |key: &str| ConfigError {
            key: key.into(),
            message: "bad".into(),
            source: Some("/etc/x.yaml".into()),
        };
        let config = ReloadError::Config(ConfigErrors(vec![mistake("a"), mistake("b")]));
        assert_eq!(
            config.to_string(),
            "configuration error: a: bad (from /etc/x.yaml); configuration error: b: bad (from /etc/x.yaml)"
        );
        let admin = ReloadError::AdminBind {
            addr: SocketAddr::from(([127, 0, 0, 1], 9090)),
            source: io::Error::from(io::ErrorKind::AddrInUse),
        };
        assert_eq!(
            admin.to_string(),
            "admin.listen: cannot bind 127.0.0.1:9090: address in use"
        );
        assert_eq!(ChangedKeys(vec![]).to_string(), "no key (files re-read)");
        let keys = ChangedKeys(vec!["log.level".into(), "max_connections".into()]);
        assert_eq!(keys.to_string(), "log.level, max_connections");
    }
}
