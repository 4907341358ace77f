//! Rules only an adopted socket can answer: a `systemd:NAME` listener's address is known once
//! systemd has passed its socket, after validation has run, so the rule that the proxy must
//! not dial itself is applied to it here, at start and at each reload.

use std::collections::HashMap;
use std::sync::Arc;

use crate::config::{Config, ListenAddr, ListenerKey};
use crate::listen::{Bound, Socketish};

/// Refuses a master address that is one of the sockets systemd passed (the classic migration
/// mistake: importing the agent.yaml already pointed at the proxy), as validation refuses one
/// of the configured addresses.
pub(super) fn master_is_not_a_systemd_listener(
    config: &Config,
    sockets: &HashMap<ListenerKey, Arc<Bound>>,
) -> Result<(), String> {
    for (i, lc) in config.listeners.iter().enumerate() {
        let ListenAddr::Systemd(socket) = &lc.addr else {
            continue;
        };
        let Some(Socketish::Tcp(l)) = sockets.get(&lc.key()).map(|b| &b.socket) else {
            continue;
        };
        let Ok(addr) = l.local_addr() else { continue };
        if crate::config::is_master_address(&config.master, addr) {
            return Err(format!(
                "master_host: {}:{} is the address of this proxy's own listener {:?} (listeners[{i}], systemd socket {socket} on {addr}); point master_host/master_port at the real master (the agent.yaml saved before the agent was pointed at the proxy)",
                config.master.host, config.master.port, lc.name
            ));
        }
    }
    Ok(())
}
