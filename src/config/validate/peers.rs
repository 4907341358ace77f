//! `listeners[].allowed_peers` and `listeners[].present_client_cert`: who may use a listener
//! and who gets the agent's client certificate, by peer selectors (`identity::selector`).
//! Also the warning for a configuration that lends the certificate to every local process.

use serde_json::Value;

use super::Check;
use crate::config::{Config, ListenAddr, ListenerConfig, PresentClientCert, Selectors};
use crate::identity::selector;

/// The selector an operator most likely wants, for messages.
pub(super) const AGENT_SELECTOR: &str = "[{unit: determined-agent.service}]";

fn selectors(c: &mut Check, key: &str, raw: &Value, source: &str) -> Option<Selectors> {
    match selector::parse_list(raw) {
        Ok(s) => Some(s),
        Err(mistakes) => {
            for (place, message) in mistakes {
                c.fail(&format!("{key}{place}"), message, Some(source.to_string()));
            }
            None
        }
    }
}

pub(super) fn allowed_peers(
    c: &mut Check,
    key: &str,
    raw: Option<&Value>,
    source: &str,
) -> Option<Selectors> {
    let key = format!("{key}.allowed_peers");
    let s = selectors(c, &key, raw?, source)?;
    if s.0.is_empty() {
        c.fail(
            &key,
            format!("an empty list refuses every client; list the peers that may connect (such as {AGENT_SELECTOR}) or remove the key"),
            Some(source.to_string()),
        );
        return None;
    }
    Some(s)
}

/// `None` when unset: the default is the socket's reach (`ListenerConfig::present_client_cert_for`).
pub(super) fn present_client_cert(
    c: &mut Check,
    key: &str,
    raw: Option<&Value>,
    source: &str,
) -> Option<PresentClientCert> {
    let key = format!("{key}.present_client_cert");
    let default = || None;
    match raw {
        None => default(),
        Some(Value::Bool(true)) => Some(PresentClientCert::Always),
        Some(Value::Bool(false)) => Some(PresentClientCert::Never),
        Some(list @ Value::Array(_)) => match selectors(c, &key, list, source) {
            Some(s) if s.0.is_empty() => Some(PresentClientCert::Never),
            Some(s) => Some(PresentClientCert::Peers(s)),
            None => default(),
        },
        Some(other) => {
            c.fail(
                &key,
                format!("{other}: write true, false, or a list of peer selectors such as {AGENT_SELECTOR}"),
                Some(source.to_string()),
            );
            default()
        }
    }
}

/// One line per TCP listener that would present the agent's client certificate to every
/// process that connects (a unix socket's file mode chooses its clients; a TCP port does not).
pub(crate) fn shared_client_cert_warnings(config: &Config) -> Vec<String> {
    if config.tls.client_cert.is_none() || !config.tls.enabled {
        return Vec::new();
    }
    config
        .listeners
        .iter()
        .filter(|l| presents_to_everyone(l))
        .map(|l| {
            format!(
                "listener {:?} ({}) presents the agent's client certificate (security.tls.client_cert) to every process that connects; present it to the agent alone with present_client_cert: {AGENT_SELECTOR} (or the agent's uid, cgroup or container)",
                l.name, l.addr
            )
        })
        .collect()
}

fn presents_to_everyone(l: &ListenerConfig) -> bool {
    matches!(l.present_client_cert_for(None), Some(PresentClientCert::Always))
        && matches!(l.addr, ListenAddr::Tcp(_) | ListenAddr::Systemd(_))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::validate::testing::{has, mistakes, valid};

    fn one(listener: &str) -> String {
        format!("master_host: det\nlisteners: [{listener}]\n")
    }

    #[test]
    fn present_client_cert_takes_a_bool_or_selectors() {
        let c = valid(&one("{listen: \"127.0.0.1:1\", present_client_cert: [{unit: determined-agent.service}]}"));
        let Some(PresentClientCert::Peers(s)) = &c.listeners[0].present_client_cert else {
            panic!("{:?}", c.listeners[0].present_client_cert);
        };
        assert_eq!(s.to_string(), "[{unit: determined-agent.service}]");
        let c = valid(&one("{listen: \"127.0.0.1:1\", present_client_cert: []}"));
        assert_eq!(c.listeners[0].present_client_cert, Some(PresentClientCert::Never));
        let m = mistakes(&one("{listen: \"127.0.0.1:1\", present_client_cert: yes please}"));
        assert!(has(&m, "listeners[0].present_client_cert", "write true, false, or a list"), "{m:?}");
        let m = mistakes(&one("{listen: \"127.0.0.1:1\", present_client_cert: [{uid: root}]}"));
        assert!(has(&m, "listeners[0].present_client_cert[0].uid", "not a numeric user id"), "{m:?}");
    }

    #[test]
    fn allowed_peers_needs_a_non_empty_list_of_selectors() {
        let c = valid(&one("{listen: \"unix:/run/x.sock\", allowed_peers: [{uid: [0, 1000]}, {cgroup: \"/system.slice/**\"}]}"));
        assert_eq!(c.listeners[0].allowed_peers.as_ref().map(|s| s.0.len()), Some(2));
        let m = mistakes(&one("{listen: \"127.0.0.1:1\", allowed_peers: []}"));
        assert!(has(&m, "listeners[0].allowed_peers", "refuses every client"), "{m:?}");
        let m = mistakes(&one("{listen: \"127.0.0.1:1\", allowed_peers: [{colour: red}]}"));
        assert!(has(&m, "listeners[0].allowed_peers[0].colour", "unknown field"), "{m:?}");
        let m = mistakes(&one("{listen: \"127.0.0.1:1\", allowed_peers: {uid: 0}}"));
        assert!(has(&m, "listeners[0].allowed_peers", "write a list of peer selectors"), "{m:?}");
    }

    #[test]
    fn a_tcp_listener_lending_the_certificate_to_everyone_is_warned() {
        let cert = "security: {tls: {client_cert: /a.crt, client_key: /a.key}}\n";
        let c = valid(&format!(
            "{cert}master_host: det\nlisteners: [{{name: a, listen: \"127.0.0.1:1\"}}, {{name: b, listen: \"127.0.0.1:2\", present_client_cert: [{{uid: 0}}]}}, {{name: c, listen: \"unix:/run/c.sock\"}}, {{name: d, listen: \"127.0.0.1:3\", present_client_cert: false}}]\n"
        ));
        let w = shared_client_cert_warnings(&c);
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].contains("listener \"a\"") && w[0].contains(AGENT_SELECTOR), "{w:?}");
        let no_cert = valid(&one("{listen: \"127.0.0.1:1\"}"));
        assert!(shared_client_cert_warnings(&no_cert).is_empty());
    }
}
