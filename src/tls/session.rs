//! The one TLS session store shared by every listener and ALPN choice.

use rustls::client::{
    ClientSessionMemoryCache, ClientSessionStore, Tls12ClientSessionValue, Tls13ClientSessionValue,
};
use rustls::pki_types::ServerName;
use rustls::NamedGroup;

/// Servers whose kx hints and TLS 1.2 sessions are remembered (one master, a few names).
const SESSION_CACHE_SIZE: usize = 64;
/// TLS 1.3 tickets kept per server name. Each is used once; an agent host opening many
/// connections at once (a reconnect storm, a burst of task log shipments) needs many at hand,
/// more than rustls' own cache keeps (8), or most of the burst makes full handshakes.
const TICKETS_PER_SERVER: usize = 256;

/// The one session store behind every listener and ALPN choice: rustls' memory cache for kx
/// hints and TLS 1.2 sessions, and a deeper queue of single-use TLS 1.3 tickets.
#[derive(Debug)]
pub(crate) struct SessionStore {
    inner: ClientSessionMemoryCache,
    tickets: std::sync::Mutex<
        std::collections::HashMap<
            ServerName<'static>,
            std::collections::VecDeque<Tls13ClientSessionValue>,
        >,
    >,
}

impl SessionStore {
    pub fn new() -> SessionStore {
        SessionStore {
            inner: ClientSessionMemoryCache::new(SESSION_CACHE_SIZE),
            tickets: std::sync::Mutex::new(std::collections::HashMap::new()),
        }
    }

    /// TLS 1.3 tickets held for `name`.
    #[cfg(test)]
    pub fn tickets(&self, name: &ServerName<'static>) -> usize {
        let map = self.tickets.lock().unwrap_or_else(|p| p.into_inner());
        map.get(name).map(|q| q.len()).unwrap_or(0)
    }
}

impl Default for SessionStore {
    fn default() -> Self {
        Self::new()
    }
}

impl ClientSessionStore for SessionStore {
    fn set_kx_hint(&self, server_name: ServerName<'static>, group: NamedGroup) {
        self.inner.set_kx_hint(server_name, group)
    }
    fn kx_hint(&self, server_name: &ServerName<'_>) -> Option<NamedGroup> {
        self.inner.kx_hint(server_name)
    }
    fn set_tls12_session(&self, server_name: ServerName<'static>, value: Tls12ClientSessionValue) {
        self.inner.set_tls12_session(server_name, value)
    }
    fn tls12_session(&self, server_name: &ServerName<'_>) -> Option<Tls12ClientSessionValue> {
        self.inner.tls12_session(server_name)
    }
    fn remove_tls12_session(&self, server_name: &ServerName<'static>) {
        self.inner.remove_tls12_session(server_name)
    }
    fn insert_tls13_ticket(
        &self,
        server_name: ServerName<'static>,
        value: Tls13ClientSessionValue,
    ) {
        let mut map = self.tickets.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= SESSION_CACHE_SIZE && !map.contains_key(&server_name) {
            map.clear();
        }
        let queue = map.entry(server_name).or_default();
        if queue.len() >= TICKETS_PER_SERVER {
            queue.pop_front();
        }
        queue.push_back(value);
    }
    fn take_tls13_ticket(
        &self,
        server_name: &ServerName<'static>,
    ) -> Option<Tls13ClientSessionValue> {
        // Newest first: the least likely to have expired.
        let mut map = self.tickets.lock().unwrap_or_else(|p| p.into_inner());
        map.get_mut(server_name).and_then(|q| q.pop_back())
    }
}
