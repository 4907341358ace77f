//! Polls the files the live configuration names (the config file, agent.yaml, certificates,
//! key, CRLs and the egress proxy's credentials) and asks for a reload when one changed. The stat calls run on the blocking pool.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::Config;

/// How often certificate and config files are checked for changes.
pub(crate) const WATCH_PERIOD: Duration = Duration::from_secs(2);

type Stamp = Option<(u64, u64, Option<SystemTime>)>;

/// The files a configuration names, with their state when it was loaded.
pub(crate) type Watched = Vec<(PathBuf, Stamp)>;

/// The files `c` names and their state now. Blocking (stat calls).
pub(crate) fn watch_list(c: &Config) -> Watched {
    let mut files: Vec<PathBuf> = Vec::new();
    files.extend(c.config_file.clone());
    files.extend(c.agent_config.clone());
    files.extend(c.tls.master_cert.clone());
    files.extend(c.tls.client_cert.clone());
    files.extend(c.tls.client_key.clone());
    files.extend(c.tls.crl.iter().cloned());
    files.extend(c.egress.proxy.as_ref().and_then(|p| p.auth_file.clone()));
    files
        .into_iter()
        .map(|p| {
            let s = stamp(&p);
            (p, s)
        })
        .collect()
}

/// A file's identity as far as reload cares: follows symlinks, so a Kubernetes Secret whose
/// `..data` link is swapped shows up as a new inode.
fn stamp(p: &PathBuf) -> Stamp {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(p).ok()?;
    Some((m.ino(), m.len(), m.modified().ok()))
}

/// Queues a reload when a watched file differs from its state at load time. The list and its
/// baseline are replaced by every successful reload, so files named only by a reloaded
/// configuration are watched too, and a change made right after a reload is not lost. A
/// change whose reload failed is not retried until the next one.
pub fn spawn(
    watched: Arc<Mutex<Watched>>,
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
            let Ok((list, now)) = tokio::task::spawn_blocking(move || {
                let now: Vec<Stamp> = list.iter().map(|(p, _)| stamp(p)).collect();
                (list, now)
            })
            .await
            else {
                continue;
            };
            let changed = list.iter().zip(&now).any(|((_, then), now)| then != now);
            if changed && last_triggered.as_ref() != Some(&now) {
                last_triggered = Some(now);
                // A full channel means a reload is already queued.
                let _ = tx.try_send("file change");
            }
        }
    });
}
