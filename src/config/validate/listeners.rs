//! `listeners[]`: addresses, names, who may connect, and per-listener TLS choices.

use std::collections::BTreeMap;

use super::Check;
use crate::config::raw::{RawAlpn, RawListener, StringOrNumber};
use crate::config::{needs_allowed_clients, tcp_overlaps, AlpnPolicy, ListenAddr, ListenerConfig};

/// Default mode of a unix listener's socket file.
const UNIX_MODE: u32 = 0o660;

pub(super) fn listeners(c: &mut Check, raw: &[RawListener]) -> Vec<ListenerConfig> {
    let source = c.src("listeners");
    if raw.is_empty() {
        c.fail(
            "listeners",
            "at least one listener is needed",
            Some(source.clone()),
        );
    }
    let mut out = Vec::new();
    let mut seen_addrs: BTreeMap<String, String> = BTreeMap::new();
    let mut seen_names: BTreeMap<String, usize> = BTreeMap::new();
    for (i, rl) in raw.iter().enumerate() {
        let key = format!("listeners[{i}]");
        let Some(lc) = listener(c, &key, rl, &source) else {
            continue;
        };
        if let Some(prev) = seen_names.insert(lc.name.clone(), i) {
            c.fail(
                &format!("{key}.name"),
                format!("{:?} is also the name of listeners[{prev}]; names must be unique (they label logs and metrics)", lc.name),
                Some(source.clone()),
            );
        }
        // Port 0 ("any free port") may appear more than once.
        let addr_key = match &lc.addr {
            ListenAddr::Tcp(a) if a.port() == 0 => None,
            other => Some(other.to_string()),
        };
        if let Some(k) = addr_key {
            if let Some(prev) = seen_addrs.insert(k.clone(), lc.name.clone()) {
                c.fail(
                    &format!("{key}.listen"),
                    format!("{k} is already the address of listener {prev:?}; two listeners cannot share one address"),
                    Some(source.clone()),
                );
            }
        }
        if let ListenAddr::Tcp(a) = lc.addr {
            let overlapping = out.iter().find(|o: &&ListenerConfig| match o.addr {
                ListenAddr::Tcp(b) => b != a && tcp_overlaps(a, b),
                _ => false,
            });
            if let Some(o) = overlapping {
                c.fail(
                    &format!("{key}.listen"),
                    format!("{a} overlaps {} of listener {:?}: one of them would take the other's clients, so it cannot be bound ([::] takes IPv4 clients too); drop one, or give them different ports", o.addr, o.name),
                    Some(source.clone()),
                );
            }
        }
        out.push(lc);
    }
    out
}

/// One listener; `None` when its address cannot be parsed (nothing else can be judged then).
fn listener(c: &mut Check, key: &str, rl: &RawListener, source: &str) -> Option<ListenerConfig> {
    let addr = match ListenAddr::parse(&rl.listen) {
        Ok(a) => a,
        Err(e) => {
            c.fail(&format!("{key}.listen"), e, Some(source.to_string()));
            return None;
        }
    };
    let name = rl
        .name
        .clone()
        .map(|n| n.trim().to_string())
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| addr.to_string());
    let allowed_clients = rl
        .allowed_clients
        .as_ref()
        .map(|list| c.cidrs(&format!("{key}.allowed_clients"), list, source));
    if let ListenAddr::Tcp(a) = &addr {
        if needs_allowed_clients(*a, allowed_clients.as_deref()) {
            c.fail(
                &format!("{key}.allowed_clients"),
                format!(
                    "listener {name:?} on {a} is reachable from other hosts; list the networks that may use it (for the Docker bridge: allowed_clients: [172.17.0.0/16])"
                ),
                Some(source.to_string()),
            );
        }
    }
    let present_client_cert =
        super::peers::present_client_cert(c, key, rl.present_client_cert.as_ref(), source);
    let allowed_peers = super::peers::allowed_peers(c, key, rl.allowed_peers.as_ref(), source);
    Some(ListenerConfig {
        mode: mode(c, key, rl.mode.as_deref(), &addr, source),
        group: group(c, key, rl.group.as_ref(), &addr, source),
        alpn: alpn(c, key, rl.alpn.as_ref(), source),
        tls_passthrough: passthrough(c, key, rl.tls_passthrough.as_deref(), source),
        max_connections: max_connections(c, key, rl.max_connections, source),
        name,
        addr,
        allowed_clients,
        present_client_cert,
        allowed_peers,
    })
}

fn mode(c: &mut Check, key: &str, raw: Option<&str>, addr: &ListenAddr, source: &str) -> u32 {
    match (raw, addr) {
        (Some(m), ListenAddr::Unix(_)) => {
            match u32::from_str_radix(m.trim().trim_start_matches("0o"), 8) {
                Ok(v) if v <= 0o777 => v,
                _ => {
                    c.fail(
                        &format!("{key}.mode"),
                        format!("{m:?} is not an octal file mode such as \"0660\""),
                        Some(source.to_string()),
                    );
                    UNIX_MODE
                }
            }
        }
        (Some(_), _) => {
            c.fail(
                &format!("{key}.mode"),
                "only unix: listeners take a file mode",
                Some(source.to_string()),
            );
            UNIX_MODE
        }
        (None, _) => UNIX_MODE,
    }
}

/// A group by name or id; a name is looked up on this host (blocking: reloads run this on
/// the blocking pool).
fn group(
    c: &mut Check,
    key: &str,
    raw: Option<&StringOrNumber>,
    addr: &ListenAddr,
    source: &str,
) -> Option<u32> {
    match (raw?, addr) {
        (_, a) if !matches!(a, ListenAddr::Unix(_)) => {
            c.fail(
                &format!("{key}.group"),
                "only unix: listeners take a group",
                Some(source.to_string()),
            );
            None
        }
        (StringOrNumber::Number(n), _) => Some(*n),
        (StringOrNumber::String(s), _) => match s.trim().parse::<u32>() {
            Ok(n) => Some(n),
            Err(_) => match nix::unistd::Group::from_name(s.trim()) {
                Ok(Some(g)) => Some(g.gid.as_raw()),
                _ => {
                    c.fail(
                        &format!("{key}.group"),
                        format!("no group named {s:?} on this host"),
                        Some(source.to_string()),
                    );
                    None
                }
            },
        },
    }
}

fn alpn(c: &mut Check, key: &str, raw: Option<&RawAlpn>, source: &str) -> AlpnPolicy {
    match raw {
        None => AlpnPolicy::Auto,
        Some(RawAlpn::Word(w)) if w == "auto" => AlpnPolicy::Auto,
        Some(RawAlpn::Word(w)) if w == "none" => AlpnPolicy::None,
        Some(RawAlpn::Word(w)) => {
            c.fail(
                &format!("{key}.alpn"),
                format!("{w:?}: write auto, none, or a list such as [h2, http/1.1]"),
                Some(source.to_string()),
            );
            AlpnPolicy::Auto
        }
        Some(RawAlpn::List(list)) => {
            if list.is_empty() || list.iter().any(|p| p.is_empty() || p.len() > 255) {
                c.fail(
                    &format!("{key}.alpn"),
                    "an ALPN list needs protocol names of 1 to 255 bytes",
                    Some(source.to_string()),
                );
            }
            AlpnPolicy::List(list.iter().map(|p| p.as_bytes().to_vec()).collect())
        }
    }
}

fn passthrough(c: &mut Check, key: &str, raw: Option<&str>, source: &str) -> bool {
    match raw.map(str::trim) {
        None | Some("auto") => true,
        Some("off") => false,
        Some(other) => {
            c.fail(
                &format!("{key}.tls_passthrough"),
                format!("{other:?}: write auto or off"),
                Some(source.to_string()),
            );
            true
        }
    }
}

/// A listener's own cap. One above the global `max_connections` is allowed as written and
/// simply never binds (every connection also takes a place under the global cap): an operator
/// who raises the global cap later should not have to touch every listener, and a warning for
/// a harmless setting would teach operators to ignore warnings.
fn max_connections(c: &mut Check, key: &str, raw: Option<usize>, source: &str) -> Option<usize> {
    if raw == Some(0) {
        c.fail(
            &format!("{key}.max_connections"),
            "must be at least 1 (leave it out for no cap of its own)",
            Some(source.to_string()),
        );
    }
    raw
}

#[cfg(test)]
mod tests {
    use crate::config::validate::testing::{has, mistakes, valid};
    use crate::config::{AlpnPolicy, ListenAddr, PresentClientCert};

    fn one(listener: &str) -> String {
        format!("master_host: det\nlisteners: [{listener}]\n")
    }

    #[test]
    fn a_listener_reachable_from_other_hosts_needs_allowed_clients() {
        let m = mistakes(&one("{listen: \"0.0.0.0:8080\"}"));
        assert!(has(&m, "listeners[0].allowed_clients", "reachable from other hosts"), "{m:?}");
        let c = valid(&one("{listen: \"0.0.0.0:8080\", allowed_clients: [172.17.0.0/16, 10.0.0.7]}"));
        assert_eq!(c.listeners[0].allowed_clients.as_ref().map(Vec::len), Some(2));
        let m = mistakes(&one("{listen: \"0.0.0.0:8080\", allowed_clients: [nope]}"));
        assert!(has(&m, "listeners[0].allowed_clients", "not an IP network"), "{m:?}");
    }

    #[test]
    fn names_default_to_the_address_and_must_be_unique() {
        let c = valid(&one("{listen: \"127.0.0.1:8080\"}"));
        assert_eq!(c.listeners[0].name, "127.0.0.1:8080");
        let m = mistakes("master_host: det\nlisteners: [{name: a, listen: \"127.0.0.1:1\"}, {name: a, listen: \"127.0.0.1:2\"}]\n");
        assert!(has(&m, "listeners[1].name", "names must be unique"), "{m:?}");
    }

    #[test]
    fn two_listeners_cannot_share_an_address_except_port_zero() {
        let m = mistakes("master_host: det\nlisteners: [{name: a, listen: \"127.0.0.1:1\"}, {name: b, listen: \"127.0.0.1:1\"}]\n");
        assert!(has(&m, "listeners[1].listen", "two listeners cannot share"), "{m:?}");
        valid("master_host: det\nlisteners: [{name: a, listen: \"127.0.0.1:0\"}, {name: b, listen: \"127.0.0.1:0\"}]\n");
    }

    #[test]
    fn unix_mode_and_group_only_on_unix_listeners() {
        let c = valid(&one("{listen: \"unix:/run/x.sock\", mode: \"0600\", group: 0}"));
        assert_eq!((c.listeners[0].mode, c.listeners[0].group), (0o600, Some(0)));
        assert_eq!(valid(&one("{listen: \"unix:/run/x.sock\"}")).listeners[0].mode, 0o660);
        let m = mistakes(&one("{listen: \"127.0.0.1:1\", mode: \"0600\", group: 0}"));
        assert!(has(&m, "listeners[0].mode", "only unix"), "{m:?}");
        assert!(has(&m, "listeners[0].group", "only unix"), "{m:?}");
        let m = mistakes(&one("{listen: \"unix:/run/x.sock\", mode: \"rw\"}"));
        assert!(has(&m, "listeners[0].mode", "not an octal file mode"), "{m:?}");
    }

    #[test]
    fn alpn_and_passthrough_words() {
        let c = valid(&one("{listen: \"127.0.0.1:1\", alpn: [h2], tls_passthrough: \"off\"}"));
        assert_eq!(c.listeners[0].alpn, AlpnPolicy::List(vec![b"h2".to_vec()]));
        assert!(!c.listeners[0].tls_passthrough);
        assert_eq!(valid(&one("{listen: \"127.0.0.1:1\", alpn: none}")).listeners[0].alpn, AlpnPolicy::None);
        let m = mistakes(&one("{listen: \"127.0.0.1:1\", alpn: h3, tls_passthrough: maybe}"));
        assert!(has(&m, "listeners[0].alpn", "write auto, none"), "{m:?}");
        assert!(has(&m, "listeners[0].tls_passthrough", "write auto or off"), "{m:?}");
    }

    #[test]
    fn a_listener_cap_is_at_least_one_and_may_exceed_the_global_one() {
        let m = mistakes(&one("{listen: \"127.0.0.1:1\", max_connections: 0}"));
        assert!(has(&m, "listeners[0].max_connections", "at least 1"), "{m:?}");
        let c = valid("master_host: det\nmax_connections: 5\nlisteners: [{listen: \"127.0.0.1:1\", max_connections: 50}, {listen: \"127.0.0.1:2\"}]\n");
        assert_eq!(c.listeners[0].max_connections, Some(50));
        assert_eq!(c.listeners[1].max_connections, None);
    }

    #[test]
    fn present_client_cert_defaults_by_reach() {
        let c = valid("master_host: det\nlisteners: [{name: a, listen: \"127.0.0.1:1\"}, {name: b, listen: \"0.0.0.0:2\", allowed_clients: [10.0.0.0/8]}, {name: c, listen: \"systemd:agent\"}]\n");
        let present: Vec<Option<PresentClientCert>> =
            c.listeners.iter().map(|l| l.present_client_cert_for(None)).collect();
        assert_eq!(present, [Some(PresentClientCert::Always), Some(PresentClientCert::Never), None]);
        assert_eq!(c.listeners[2].addr, ListenAddr::Systemd("agent".into()));
    }
}
