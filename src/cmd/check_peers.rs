//! `check`'s view of the local side: each listener, who may use it and who is given the
//! agent's client certificate.

use serde::Serialize;

use crate::config::Config;

/// One listener as `check` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct ListenerReport {
    pub name: String,
    pub listen: String,
    /// `true`, `false`, the selectors, or "by the socket's reach" for a systemd socket left
    /// to its default.
    pub present_client_cert: String,
    /// The selectors of `allowed_peers`; "any" without them.
    pub allowed_peers: String,
}

pub(super) fn listeners(config: &Config) -> Vec<ListenerReport> {
    config
        .listeners
        .iter()
        .map(|l| ListenerReport {
            name: l.name.clone(),
            listen: l.addr.to_string(),
            present_client_cert: l.present_client_cert_for(None).map_or_else(
                || "by the socket's reach (true on loopback and unix sockets)".to_string(),
                |p| p.to_string(),
            ),
            allowed_peers: l
                .allowed_peers
                .as_ref()
                .map_or_else(|| "any".to_string(), |s| s.to_string()),
        })
        .collect()
}

/// `check`'s text lines for `listeners`.
pub(super) fn render(listeners: &[ListenerReport], o: &mut String) {
    for l in listeners {
        o.push_str(&format!(
            "listener    {} ({}): client certificate to {}; peers allowed: {}\n",
            l.name, l.listen, l.present_client_cert, l.allowed_peers
        ));
    }
}
