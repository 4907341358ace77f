//! `upstream.preconnect`: verified TLS sessions to the master kept ready, so a new client's
//! first bytes go out on a session that is already established instead of paying TCP and TLS
//! set-up (two round trips) first.
//!
//! Sessions are kept per *choice*, what makes two sessions interchangeable: the ALPN offered
//! and whether the client certificate is presented. A choice is learned from clients (the
//! first client with it misses and teaches it), from listeners whose ALPN is fixed by
//! configuration, and from the pool a reload replaced; one no client has used for an hour is
//! forgotten. Each ready session is held by a task of its own that keeps a read pending on
//! it, so a master that closes it (close_notify, FIN or reset) is noticed at once without
//! sending it a byte; the same task closes it after `preconnect_max_idle` and when the pool is
//! closed, and hands it, once, to the one client that takes it. One refill task per choice
//! dials back up to the pool's size, one session at a time, with the data path's own
//! [`Upstream::dial_tls_peer`], and dials a session's replacement a little before its
//! `preconnect_max_idle` (so the pool does not dip while it is closed); after a failure it
//! waits, doubling from 1 s to a minute.
//!
//! The pool belongs to one `State` (the live configuration): a reload closes it (every ready
//! session gets a close_notify) and the new state starts its own.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rustls::pki_types::ServerName;
use rustls::ClientConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{oneshot, Notify};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::Preconnect;
use crate::metrics::PreconnectMetrics;
use crate::upstream::{MasterTls, Upstream};


/// The first wait after a failed refill; it doubles up to [`BACKOFF_MAX`].
pub(crate) const BACKOFF_MIN: Duration = Duration::from_secs(1);
pub(crate) const BACKOFF_MAX: Duration = Duration::from_secs(60);
/// A choice no client has used for this long is forgotten: its sessions are closed.
pub(crate) const FORGET_AFTER: Duration = Duration::from_secs(3600);
/// How long closing a session waits to get its close_notify out.
const CLOSE_WAIT: Duration = Duration::from_secs(1);

/// What makes two sessions interchangeable.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ChoiceKey {
    pub alpn: Vec<Vec<u8>>,
    /// Whether the client certificate is presented (only when one is configured).
    pub client_cert: bool,
}

impl ChoiceKey {
    pub fn of(config: &ClientConfig, client_cert: bool) -> ChoiceKey {
        ChoiceKey {
            alpn: config.alpn_protocols.clone(),
            client_cert,
        }
    }
}

/// A session a client took, and the master as logs name it.
pub struct Pooled {
    pub session: MasterTls,
    pub peer: String,
}

type Reply = oneshot::Sender<Pooled>;

/// One ready session, as the pool sees it: a way to ask its holder for it, and when its holder
/// will close it.
struct Slot {
    id: u64,
    take: oneshot::Sender<Reply>,
    expires: Instant,
}

struct Choice {
    key: ChoiceKey,
    config: Arc<ClientConfig>,
    ready: Mutex<VecDeque<Slot>>,
    refill: Notify,
    /// Cancelled when the choice is forgotten or the pool closed.
    closed: CancellationToken,
    last_used: Mutex<Instant>,
}

impl Choice {
    fn ready(&self) -> MutexGuard<'_, VecDeque<Slot>> {
        self.ready.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn touch(&self) {
        *self.last_used.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
    }

    /// How many ready sessions will not be closed for their age within `margin`, and when the
    /// next one will be.
    fn fresh(&self, margin: Duration) -> (usize, Option<Instant>) {
        let renew = Instant::now() + margin;
        let ready = self.ready();
        let fresh = ready.iter().filter(|s| s.expires > renew).count();
        let next = ready
            .iter()
            .map(|s| s.expires)
            .filter(|e| *e > renew)
            .min()
            .map(|e| e - margin);
        (fresh, next)
    }

    fn forget_at(&self) -> Instant {
        *self.last_used.lock().unwrap_or_else(|p| p.into_inner()) + FORGET_AFTER
    }
}

struct Inner {
    size: usize,
    max_idle: Duration,
    upstream: Upstream,
    name: ServerName<'static>,
    metrics: PreconnectMetrics,
    closed: CancellationToken,
    choices: Mutex<HashMap<ChoiceKey, Arc<Choice>>>,
    /// Choices known from the configuration, learned when the pool starts.
    seeds: Mutex<Vec<(ChoiceKey, Arc<ClientConfig>)>>,
    next_id: AtomicU64,
}

/// The ready sessions of one state; see the module header.
pub struct Pool {
    inner: Arc<Inner>,
}

impl Pool {
    pub fn new(
        settings: Preconnect,
        upstream: Upstream,
        name: ServerName<'static>,
        metrics: PreconnectMetrics,
    ) -> Pool {
        Pool {
            inner: Arc::new(Inner {
                size: settings.size,
                max_idle: settings.max_idle,
                upstream,
                name,
                metrics,
                closed: CancellationToken::new(),
                choices: Mutex::new(HashMap::new()),
                seeds: Mutex::new(Vec::new()),
                next_id: AtomicU64::new(0),
            }),
        }
    }

    /// A choice to fill as soon as the pool starts, before any client asks for it.
    pub fn seed(&self, key: ChoiceKey, config: Arc<ClientConfig>) {
        let mut seeds = self.inner.seeds.lock().unwrap_or_else(|p| p.into_inner());
        if !seeds.iter().any(|(k, _)| k == &key) {
            seeds.push((key, config));
        }
    }

    /// Starts filling the seeded choices (on the current runtime).
    pub fn start(&self) {
        let seeds = std::mem::take(&mut *self.inner.seeds.lock().unwrap_or_else(|p| p.into_inner()));
        for (key, config) in seeds {
            self.inner.choice(key, &config);
        }
    }

    /// The choices this pool has learned, for the pool that replaces it.
    pub fn learned(&self) -> Vec<ChoiceKey> {
        self.inner.lock_choices().keys().cloned().collect()
    }

    /// Closes every ready session (close_notify) and stops refilling. Clients that already
    /// took a session keep it.
    pub fn close(&self) {
        self.inner.closed.cancel();
        self.inner.lock_choices().clear();
    }

    /// A ready session for a client that will use `config`, or `None` (a miss: the client
    /// dials fresh, and the choice is learned if it was new). Each session is taken once.
    pub async fn take(&self, config: &Arc<ClientConfig>, client_cert: bool) -> Option<Pooled> {
        if self.inner.closed.is_cancelled() {
            return None;
        }
        let choice = self.inner.choice(ChoiceKey::of(config, client_cert), config);
        choice.touch();
        loop {
            let Some(slot) = choice.ready().pop_front() else {
                break;
            };
            let (reply, answer) = oneshot::channel();
            if slot.take.send(reply).is_err() {
                continue; // its holder just closed it
            }
            if let Ok(pooled) = answer.await {
                self.inner.metrics.hit.inc();
                choice.refill.notify_one();
                return Some(pooled);
            }
        }
        self.inner.metrics.miss.inc();
        choice.refill.notify_one();
        None
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.inner.closed.cancel();
    }
}

impl Inner {
    fn lock_choices(&self) -> MutexGuard<'_, HashMap<ChoiceKey, Arc<Choice>>> {
        self.choices.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The choice for `key`, learned (and its refill started) if it is new.
    fn choice(self: &Arc<Self>, key: ChoiceKey, config: &Arc<ClientConfig>) -> Arc<Choice> {
        let mut choices = self.lock_choices();
        if let Some(c) = choices.get(&key) {
            return c.clone();
        }
        let choice = Arc::new(Choice {
            key: key.clone(),
            config: config.clone(),
            ready: Mutex::new(VecDeque::new()),
            refill: Notify::new(),
            closed: self.closed.child_token(),
            last_used: Mutex::new(Instant::now()),
        });
        if self.closed.is_cancelled() {
            return choice;
        }
        choices.insert(key, choice.clone());
        drop(choices);
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            tracing::debug!(alpn = %alpn_text(&choice.key.alpn), client_cert = choice.key.client_cert, "preconnect: new ALPN choice, filling its pool");
            rt.spawn(refill(self.clone(), choice.clone()));
        }
        choice
    }

    /// Forgets `choice` if it is still the one registered for its key.
    fn forget(&self, choice: &Arc<Choice>) {
        let mut choices = self.lock_choices();
        if choices.get(&choice.key).is_some_and(|c| Arc::ptr_eq(c, choice)) {
            choices.remove(&choice.key);
        }
        drop(choices);
        choice.closed.cancel();
    }
}

fn alpn_text(alpn: &[Vec<u8>]) -> String {
    alpn.iter()
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .collect::<Vec<_>>()
        .join(",")
}

// === Refill ===

/// How long before a session's `max_idle` its replacement is dialled, so the pool does not dip
/// while the old one is closed: a tenth of `max_idle`, at most 5 s.
fn renew_margin(max_idle: Duration) -> Duration {
    (max_idle / 10).min(Duration::from_secs(5))
}

/// Keeps `choice` at the pool's size until it is forgotten or the pool closed; a session
/// about to reach `max_idle` is replaced ahead of time.
async fn refill(inner: Arc<Inner>, choice: Arc<Choice>) {
    let mut backoff = BACKOFF_MIN;
    let margin = renew_margin(inner.max_idle);
    loop {
        if choice.closed.is_cancelled() {
            return;
        }
        if Instant::now() >= choice.forget_at() {
            tracing::debug!(alpn = %alpn_text(&choice.key.alpn), "preconnect: no client used this ALPN choice for an hour; forgotten");
            inner.forget(&choice);
            return;
        }
        let (fresh, renew_at) = choice.fresh(margin);
        if fresh < inner.size {
            let dialled = tokio::select! {
                r = inner.upstream.dial_tls_peer(choice.config.clone(), inner.name.clone()) => r,
                _ = choice.closed.cancelled() => return,
            };
            match dialled {
                Ok((session, peer)) => {
                    backoff = BACKOFF_MIN;
                    add(&inner, &choice, session, peer);
                }
                Err(e) => {
                    let msg = "preconnect: cannot open a session to the master; clients dial fresh meanwhile";
                    if backoff == BACKOFF_MIN {
                        tracing::warn!(error = %e, retry_in = ?backoff, "{msg}");
                    } else {
                        tracing::debug!(error = %e, retry_in = ?backoff, "{msg}");
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = choice.closed.cancelled() => return,
                    }
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
            }
            continue;
        }
        let wake = renew_at.map_or(choice.forget_at(), |r| r.min(choice.forget_at()));
        tokio::select! {
            _ = choice.refill.notified() => {}
            _ = tokio::time::sleep_until(wake) => {}
            _ = choice.closed.cancelled() => return,
        }
    }
}

/// Puts a fresh session in `choice`'s queue, held by a task of its own.
fn add(inner: &Arc<Inner>, choice: &Arc<Choice>, session: MasterTls, peer: String) {
    let id = inner.next_id.fetch_add(1, Ordering::Relaxed);
    let (take, asked) = oneshot::channel();
    let expires = Instant::now() + inner.max_idle;
    choice.ready().push_back(Slot { id, take, expires });
    tokio::spawn(hold(
        inner.clone(),
        choice.clone(),
        (id, expires),
        Pooled { session, peer },
        asked,
    ));
}

// === Holding one session ===

/// Why a held session ends.
enum End {
    Taken(Reply),
    /// Closed by the master (or it spoke unasked): nothing to say back.
    Lost(&'static str),
    /// Closed by us: a close_notify first.
    Closed(&'static str),
}

/// Holds one ready session until a client takes it, the master closes it, it has waited
/// `max_idle`, or the pool closes.
async fn hold(
    inner: Arc<Inner>,
    choice: Arc<Choice>,
    (id, deadline): (u64, Instant),
    mut pooled: Pooled,
    mut asked: oneshot::Receiver<Reply>,
) {
    let mut byte = [0u8; 1];
    // A pending read sees the master's close_notify, FIN or reset; rustls processes the
    // session tickets that arrive meanwhile. Dropping the read loses nothing.
    let end = tokio::select! {
        r = &mut asked => match r {
            Ok(reply) => End::Taken(reply),
            Err(_) => End::Closed("pool closed"),
        },
        r = pooled.session.read(&mut byte) => End::Lost(match r {
            Ok(0) => "the master closed it",
            Ok(_) => "the master sent data before any client did",
            Err(_) => "the master closed it without close_notify",
        }),
        _ = tokio::time::sleep_until(deadline) => End::Closed("idle for upstream.preconnect_max_idle"),
        _ = choice.closed.cancelled() => End::Closed("pool closed"),
    };
    let why = match end {
        End::Taken(reply) => match reply.send(pooled) {
            Ok(()) => return,
            // The client went away between asking and taking.
            Err(p) => {
                pooled = p;
                "the client that took it left"
            }
        },
        End::Lost(why) => {
            inner.metrics.discard.inc();
            forget_slot(&choice, id);
            tracing::debug!(reason = why, "preconnect: session discarded");
            return;
        }
        End::Closed(why) => why,
    };
    inner.metrics.discard.inc();
    forget_slot(&choice, id);
    tracing::debug!(reason = why, "preconnect: session discarded");
    let _ = tokio::time::timeout(CLOSE_WAIT, pooled.session.shutdown()).await;
}

/// Takes a closed session's slot out of the queue and asks for a replacement.
fn forget_slot(choice: &Choice, id: u64) {
    choice.ready().retain(|s| s.id != id);
    choice.refill.notify_one();
}
