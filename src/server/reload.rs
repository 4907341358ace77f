//! Reload: build one complete new state from the configuration on disk, prepare everything
//! that can fail (files read, trust built, new sockets bound, unix socket modes set), and only
//! then swap it in as one unit. A reload that fails anywhere leaves the old state serving,
//! untouched, and says why; one that succeeds says which keys changed.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use crate::config::{self, Config, ListenerConfig, ListenerKey, Purpose};
use crate::listen::{self, Bound};
use crate::state::State;
use crate::tls::TlsContext;

use super::{log_trust_summary, notify, watch, Server};

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
                let changed = if changed.is_empty() {
                    "no key (files re-read)".to_string()
                } else {
                    changed.join(", ")
                };
                tracing::info!(trigger = why, changed = %changed, "configuration reloaded");
            }
            Err(msg) => {
                self.shared.metrics.reload(false);
                tracing::error!(trigger = why, error = %msg, "reload refused; keeping the previous configuration");
            }
        }
        notify(&[sd_notify::NotifyState::Ready]);
    }

    async fn try_reload(&mut self) -> Result<Vec<String>, String> {
        let flags = self.flags.clone();
        let loaded = tokio::task::spawn_blocking(move || -> Result<Loaded, String> {
            let config = config::load(&flags, Purpose::Serve)
                .map_err(|e| e.to_string().replace('\n', "; "))?;
            let tls = TlsContext::for_config(&config).map_err(|e| e.to_string())?;
            let watched = watch::watch_list(&config);
            Ok(Loaded {
                config,
                tls,
                watched,
            })
        })
        .await
        .map_err(|e| format!("the reload task failed: {e}"))??;
        let prepared = self.prepare(&loaded.config)?;
        Ok(self.commit(loaded, prepared))
    }

    /// Everything that can fail, done before anything changes: new listeners and a new admin
    /// address are bound, kept sockets are checked against their new policy, unix socket
    /// modes and groups are set. On failure whatever was done is undone.
    fn prepare(&mut self, config: &Config) -> Result<Prepared, String> {
        let mut p = Prepared::default();
        let result = self.prepare_into(config, &mut p);
        if let Err(e) = result {
            self.undo(p);
            return Err(e);
        }
        Ok(p)
    }

    fn prepare_into(&mut self, config: &Config, p: &mut Prepared) -> Result<(), String> {
        for lc in &config.listeners {
            match self.listeners.get(&lc.key()) {
                Some(r) => r.bound.check_policy(lc).map_err(|e| e.to_string())?,
                None => {
                    let b = match self.retired.remove(&lc.key()) {
                        Some(b) => b,
                        None => Arc::new(
                            listen::bind(lc, &mut self.inherited).map_err(|e| e.to_string())?,
                        ),
                    };
                    p.added.push((lc.key(), b.clone()));
                    b.check_policy(lc).map_err(|e| e.to_string())?;
                }
            }
        }
        let sockets: HashMap<ListenerKey, Arc<Bound>> = self
            .listeners
            .iter()
            .map(|(k, r)| (k.clone(), r.bound.clone()))
            .chain(p.added.iter().cloned())
            .collect();
        super::adopted::master_is_not_a_systemd_listener(config, &sockets)?;
        let want = config.admin.as_ref().map(|a| a.listen);
        let have = self.admin.as_ref().map(|a| a.listen);
        p.admin = match (want, have) {
            (w, h) if w == h => AdminChange::Keep,
            (None, Some(_)) => AdminChange::Stop,
            (Some(addr), _) => AdminChange::Start(
                addr,
                listen::tcp_listener(addr)
                    .map_err(|e| format!("admin.listen: cannot bind {addr}: {e}"))?,
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
                r.bound
                    .set_unix_permissions(lc)
                    .map_err(|e| e.to_string())?;
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
    fn commit(&mut self, loaded: Loaded, p: Prepared) -> Vec<String> {
        let Loaded {
            config,
            tls,
            watched,
        } = loaded;
        let old = self.shared.current();
        let changed = config::changed_keys(&old.config, &config);
        let mut host_only: HashMap<ListenerKey, bool> = self
            .listeners
            .iter()
            .map(|(a, r)| (a.clone(), r.bound.host_only))
            .collect();
        host_only.extend(p.added.iter().map(|(a, b)| (a.clone(), b.host_only)));
        log_trust_summary(&config, tls.as_ref());
        let new_listeners: Vec<ListenerConfig> = config.listeners.clone();
        let max = config.max_connections;
        let log = config.log.clone();
        let state = State::with_tls(
            config,
            tls,
            &host_only,
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
