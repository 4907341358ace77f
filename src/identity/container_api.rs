//! Who is behind an address on a container bridge: a client from another network namespace
//! is not in the proxy's own socket tables, so the container runtime's API names it (the
//! Docker Engine API over its unix socket; podman serves the same with `podman system service`).
//!
//! A background task keeps a table address → container: listed in full on every (re)connect,
//! then kept current from the API's event stream, reconnecting with back-off when it breaks.
//! A lookup reads the table; a miss (a container started a moment ago, its event not read yet)
//! asks the task for one re-list, shared by every miss waiting at the time, and waits for it
//! at most [`LOOKUP_BUDGET`]. While the API is unreachable a lookup fails at once with the
//! reason, which the task logs (once per reason and minute).
//!
//! Of a container's environment only Determined's `DET_TASK_ID`, `DET_ALLOCATION_ID` and
//! `DET_TASK_TYPE` are kept (`inspect.rs` filters it while parsing): the same environment
//! holds the task's session token.

mod api;
mod inspect;

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use tokio::sync::{watch, Notify};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use api::{Api, ApiError};
use inspect::Change;

/// The longest a lookup waits: for the first listing after start, or for the re-list a miss
/// asks for. A connection's identity is decided before anything is dialled, so this is added
/// to the first byte of a client the directory cannot name at once.
pub const LOOKUP_BUDGET: Duration = Duration::from_millis(50);
const BACKOFF_FIRST: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// The same reason for the API being unavailable is logged at most this often.
const LOG_EVERY: Duration = Duration::from_secs(60);

/// A running container, as the runtime's API describes it: the identifier's own
/// [`ContainerRef`](super::ContainerRef), with its name (without the API's leading `/`), image
/// (`Config.Image`) and Determined task fields filled in.
pub type ContainerInfo = super::ContainerRef;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LookupError {
    #[error("container runtime API unavailable: {0}")]
    Unavailable(String),
    #[error("the container directory was stopped")]
    Stopped,
}

/// Where the task is: only `Synced` answers lookups from the table.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Status {
    /// Before the first listing.
    Starting,
    Synced,
    /// Why the API cannot be used; kept until the next listing succeeds.
    Down(String),
    Stopped,
}

/// What lookups waiting on a miss watch: re-lists answered (tickets), table changes.
#[derive(Debug, Default, Clone, Copy)]
struct Progress {
    answered: u64,
    version: u64,
}

/// The containers' addresses, and each container's, to forget them together.
#[derive(Debug, Default)]
struct Table {
    by_ip: HashMap<IpAddr, Arc<ContainerInfo>>,
    by_id: HashMap<String, Vec<IpAddr>>,
}

impl Table {
    fn set(&mut self, info: ContainerInfo, ips: Vec<IpAddr>) {
        self.forget(&info.id);
        let info = Arc::new(info);
        for ip in &ips {
            self.by_ip.insert(*ip, info.clone());
        }
        self.by_id.insert(info.id.clone(), ips);
    }

    fn forget(&mut self, id: &str) {
        for ip in self.by_id.remove(id).unwrap_or_default() {
            if self.by_ip.get(&ip).is_some_and(|c| c.id == id) {
                self.by_ip.remove(&ip);
            }
        }
    }
}

struct Shared {
    api: Api,
    table: RwLock<Table>,
    status: watch::Sender<Status>,
    progress: watch::Sender<Progress>,
    /// Tickets handed to misses; the task answers every ticket taken before it re-listed.
    asked: AtomicU64,
    wake: Notify,
}

impl Shared {
    // A poisoned lock only means a panic elsewhere; the table itself is always whole.
    fn read(&self) -> RwLockReadGuard<'_, Table> {
        self.table.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Table> {
        self.table.write().unwrap_or_else(|e| e.into_inner())
    }

    fn get(&self, ip: IpAddr) -> Option<Arc<ContainerInfo>> {
        self.read().by_ip.get(&ip).cloned()
    }

    /// Tells waiting lookups the table changed (after the write lock is released).
    fn changed(&self) {
        self.progress.send_modify(|p| p.version += 1);
    }
}

/// The address → container table of one runtime API socket, kept by a background task.
pub struct ContainerDirectory {
    shared: Arc<Shared>,
    stop: CancellationToken,
}

impl ContainerDirectory {
    /// Starts the background task on the current tokio runtime. Never fails: a socket that is
    /// missing or refuses is retried with back-off, and lookups say why meanwhile.
    pub fn start(socket: PathBuf) -> Arc<Self> {
        let shared = Arc::new(Shared {
            api: Api::new(socket),
            table: RwLock::new(Table::default()),
            status: watch::Sender::new(Status::Starting),
            progress: watch::Sender::new(Progress::default()),
            asked: AtomicU64::new(0),
            wake: Notify::new(),
        });
        let stop = CancellationToken::new();
        tokio::spawn(run(shared.clone(), stop.clone()));
        Arc::new(ContainerDirectory { shared, stop })
    }

    pub fn socket(&self) -> &Path {
        self.shared.api.socket()
    }

    /// The container that has `ip` on one of its networks; `None` when no running container
    /// has it (or none was found within [`LOOKUP_BUDGET`]). An error when the API cannot be
    /// used, with the reason. Never waits longer than the budget.
    pub async fn lookup(&self, ip: IpAddr) -> Result<Option<Arc<ContainerInfo>>, LookupError> {
        let ip = ip.to_canonical();
        let deadline = Instant::now() + LOOKUP_BUDGET;
        self.synced_by(deadline).await?;
        if let Some(c) = self.shared.get(ip) {
            return Ok(Some(c));
        }
        let ticket = self.shared.asked.fetch_add(1, Ordering::SeqCst) + 1;
        self.shared.wake.notify_one();
        let mut progress = self.shared.progress.subscribe();
        let mut status = self.shared.status.subscribe();
        loop {
            // Read before the table: a re-list writes the table, then answers.
            let answered = progress.borrow_and_update().answered;
            if let Some(c) = self.shared.get(ip) {
                return Ok(Some(c));
            }
            if answered >= ticket {
                return Ok(None);
            }
            self.usable(&status.borrow_and_update())?;
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => {
                    tracing::debug!(%ip, budget = ?LOOKUP_BUDGET, "container runtime API: no container with this address within the lookup budget");
                    return Ok(None);
                }
                r = progress.changed() => r.map_err(|_| LookupError::Stopped)?,
                r = status.changed() => r.map_err(|_| LookupError::Stopped)?,
            }
        }
    }

    /// What the table holds for `ip` now, without asking the API (for `status` and tests).
    #[cfg_attr(not(feature = "test-util"), allow(dead_code))] // read by tests/container_api.rs
    pub fn known(&self, ip: IpAddr) -> Option<Arc<ContainerInfo>> {
        self.shared.get(ip.to_canonical())
    }

    /// Stops the background task; lookups from then on fail with [`LookupError::Stopped`].
    pub fn stop(&self) {
        self.stop.cancel();
        self.shared.status.send_replace(Status::Stopped);
    }

    /// Waits (until `deadline`) for the first listing; fails at once when the API is down.
    async fn synced_by(&self, deadline: Instant) -> Result<(), LookupError> {
        let mut status = self.shared.status.subscribe();
        loop {
            if self.usable(&status.borrow_and_update())? {
                return Ok(());
            }
            match tokio::time::timeout_at(deadline, status.changed()).await {
                Ok(r) => r.map_err(|_| LookupError::Stopped)?,
                Err(_) => {
                    return Err(LookupError::Unavailable(format!(
                        "{}: the first listing of containers has not finished",
                        self.socket().display()
                    )))
                }
            }
        }
    }

    /// Whether the table answers (`Ok(false)`: not yet), or why it cannot.
    fn usable(&self, status: &Status) -> Result<bool, LookupError> {
        if self.stop.is_cancelled() {
            return Err(LookupError::Stopped);
        }
        match status {
            Status::Synced => Ok(true),
            Status::Starting => Ok(false),
            Status::Down(reason) => Err(LookupError::Unavailable(reason.clone())),
            Status::Stopped => Err(LookupError::Stopped),
        }
    }
}

impl Drop for ContainerDirectory {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl fmt::Debug for ContainerDirectory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let table = self.shared.read();
        f.debug_struct("ContainerDirectory")
            .field("socket", &self.socket())
            .field("status", &*self.shared.status.borrow())
            .field("containers", &table.by_ip)
            .finish()
    }
}

// === The background task ===

/// `GET /events`, only what changes a container's addresses: container and network events
/// (Docker reports a network connect as the network's event; podman as the container's).
fn events_path() -> String {
    let filters = r#"{"type":["container","network"]}"#;
    let encoded: String = url::form_urlencoded::byte_serialize(filters.as_bytes()).collect();
    format!("/events?filters={encoded}")
}

async fn run(shared: Arc<Shared>, stop: CancellationToken) {
    let mut backoff = BACKOFF_FIRST;
    let mut quiet = Quiet::default();
    loop {
        let mut synced = false;
        let e = tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            e = session(&shared, &mut synced, &mut quiet) => e,
        };
        if synced {
            backoff = BACKOFF_FIRST;
        }
        let reason = e.to_string();
        shared.status.send_replace(Status::Down(reason.clone()));
        quiet.down(shared.api.socket(), &reason, backoff);
        tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
    shared.status.send_replace(Status::Stopped);
}

/// One connection to the API: subscribe to events first (so nothing between the listing and
/// the first event is missed), list everything, then follow the events and answer re-list
/// requests until something fails. Returns why it ended.
async fn session(shared: &Shared, synced: &mut bool, quiet: &mut Quiet) -> ApiError {
    let mut events = match shared.api.stream(&events_path()).await {
        Ok(events) => events,
        Err(e) => return e,
    };
    let table = match listing(&shared.api).await {
        Ok(t) => t,
        Err(e) => return e,
    };
    let count = table.by_id.len();
    *shared.write() = table;
    shared.changed();
    *synced = true;
    shared.status.send_replace(Status::Synced);
    quiet.up(shared.api.socket(), count);
    loop {
        let step = tokio::select! {
            line = events.next() => match line {
                Ok(line) => follow(shared, &line).await,
                Err(e) => Err(e),
            },
            _ = shared.wake.notified() => {
                let ticket = shared.asked.load(Ordering::SeqCst);
                let done = relist(shared).await;
                shared.progress.send_modify(|p| p.answered = p.answered.max(ticket));
                done
            }
        };
        if let Err(e) = step {
            return e;
        }
    }
}

/// Every running container, inspected.
async fn listing(api: &Api) -> Result<Table, ApiError> {
    let mut table = Table::default();
    for id in inspect::running_ids(api.get("/containers/json").await?.bytes())? {
        if let Some((info, ips)) = inspect_one(api, &id).await? {
            table.set(info, ips);
        }
    }
    Ok(table)
}

/// A miss's re-list: containers no longer running forgotten, new ones inspected.
async fn relist(shared: &Shared) -> Result<(), ApiError> {
    let running: HashSet<String> = inspect::running_ids(shared.api.get("/containers/json").await?.bytes())?
        .into_iter()
        .collect();
    let known: HashSet<String> = shared.read().by_id.keys().cloned().collect();
    for gone in known.difference(&running) {
        shared.write().forget(gone);
    }
    for new in running.difference(&known) {
        if let Some((info, ips)) = inspect_one(&shared.api, new).await? {
            shared.write().set(info, ips);
        }
    }
    shared.changed();
    Ok(())
}

/// One event applied: the container inspected again, or forgotten.
async fn follow(shared: &Shared, line: &[u8]) -> Result<(), ApiError> {
    match inspect::event(line)? {
        Change::Reinspect(id) => match inspect_one(&shared.api, &id).await? {
            Some((info, ips)) => shared.write().set(info, ips),
            None => shared.write().forget(&id),
        },
        Change::Gone(id) => shared.write().forget(&id),
        Change::Other => return Ok(()),
    }
    shared.changed();
    Ok(())
}

/// A container's addresses, or `None` when it is not running (or no longer exists).
async fn inspect_one(api: &Api, id: &str) -> Result<Option<(ContainerInfo, Vec<IpAddr>)>, ApiError> {
    if !inspect::plausible_id(id) {
        return Ok(None);
    }
    match api.get(&format!("/containers/{id}/json")).await {
        Ok(body) => inspect::container(body.bytes()),
        Err(e) if e.is_not_found() => Ok(None),
        Err(e) => Err(e),
    }
}

/// The API's availability in the log: each new reason once, the same one again after
/// [`LOG_EVERY`], and the recovery.
#[derive(Default)]
struct Quiet {
    last: Option<(String, Instant)>,
}

impl Quiet {
    fn down(&mut self, socket: &Path, reason: &str, retry: Duration) {
        let now = Instant::now();
        let repeated = self
            .last
            .as_ref()
            .is_some_and(|(r, at)| r == reason && now.duration_since(*at) < LOG_EVERY);
        if repeated {
            tracing::debug!(socket = %socket.display(), %reason, ?retry, "container runtime API still unavailable");
            return;
        }
        tracing::warn!(
            socket = %socket.display(),
            %reason,
            ?retry,
            "container runtime API unavailable: clients on container bridges are not identified until it answers"
        );
        self.last = Some((reason.to_string(), now));
    }

    fn up(&mut self, socket: &Path, containers: usize) {
        let again = self.last.take().is_some();
        tracing::info!(
            socket = %socket.display(),
            containers,
            "container runtime API {}: following its events",
            if again { "answers again" } else { "listed" }
        );
    }
}

// === As the identifier's source of containers ===

impl super::ContainerSource for ContainerDirectory {
    fn lookup(&self, ip: IpAddr) -> super::ContainerLookup<'_> {
        Box::pin(async move {
            match ContainerDirectory::lookup(self, ip).await {
                Ok(found) => Ok(found.map(|c| (*c).clone())),
                Err(e) => Err(e.to_string()),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_missing_socket_fails_lookups_at_once_with_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let d = ContainerDirectory::start(dir.path().join("docker.sock"));
        let started = std::time::Instant::now();
        let e = d.lookup("10.88.0.2".parse().unwrap()).await.unwrap_err();
        assert!(started.elapsed() <= LOOKUP_BUDGET + Duration::from_millis(100));
        assert!(e.to_string().contains("no socket at"), "{e}");
        d.stop();
        let e = d.lookup("10.88.0.2".parse().unwrap()).await.unwrap_err();
        assert_eq!(e, LookupError::Stopped);
    }

    #[test]
    fn forgetting_a_container_keeps_an_address_another_took() {
        let info = |id: &str| ContainerInfo {
            id: id.into(),
            name: id.into(),
            image: String::new(),
            task_id: None,
            allocation_id: None,
            task_type: None,
        };
        let ip: IpAddr = "10.88.0.2".parse().unwrap();
        let mut t = Table::default();
        t.set(info("old"), vec![ip]);
        t.set(info("new"), vec![ip]);
        t.forget("old");
        assert_eq!(t.by_ip[&ip].id, "new");
        t.forget("new");
        assert!(t.by_ip.is_empty() && t.by_id.is_empty());
    }

    #[test]
    fn the_event_filter_is_url_encoded() {
        assert_eq!(
            events_path(),
            "/events?filters=%7B%22type%22%3A%5B%22container%22%2C%22network%22%5D%7D"
        );
    }
}

