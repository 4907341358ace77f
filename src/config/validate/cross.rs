//! Rules that span sections: the proxy must not dial itself, and the admin endpoint must not
//! take a listener's address.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use super::Check;
use crate::host::parse_host_ip;
use crate::config::{AdminConfig, ListenAddr, ListenerConfig, MasterConfig};

/// A master address that is one of our own listeners would make the proxy dial itself.
pub(super) fn master_is_not_a_listener(
    c: &mut Check,
    m: &MasterConfig,
    listeners: &[ListenerConfig],
) {
    for (i, lc) in listeners.iter().enumerate() {
        let ListenAddr::Tcp(a) = &lc.addr else {
            continue;
        };
        if is_master_address(m, *a) {
            let source = c.src("master_host");
            c.fail(
                "master_host",
                format!(
                    "{}:{} is the address of this proxy's own listener {:?} (listeners[{i}]); point master_host/master_port at the real master (the agent.yaml saved before the agent was pointed at the proxy)",
                    m.host, m.port, lc.name
                ),
                Some(source),
            );
        }
    }
}

/// Whether dialling the master would reach a socket listening on `a`. A `systemd:` listener's
/// address is known only once its socket is adopted, so `server` asks this too.
pub(crate) fn is_master_address(m: &MasterConfig, a: SocketAddr) -> bool {
    if m.host.is_empty() || a.port() != m.port || a.port() == 0 {
        return false;
    }
    let master_ips: Vec<IpAddr> = match parse_host_ip(&m.host) {
        Some(ip) => vec![ip],
        None if m.host.eq_ignore_ascii_case("localhost") => {
            vec![Ipv4Addr::LOCALHOST.into(), Ipv6Addr::LOCALHOST.into()]
        }
        None => vec![],
    };
    master_ips.iter().any(|ip| {
        *ip == a.ip() || (a.ip().is_unspecified() && (ip.is_loopback() || ip.is_unspecified()))
    })
}

pub(super) fn admin_is_not_a_listener(
    c: &mut Check,
    a: &AdminConfig,
    listeners: &[ListenerConfig],
) {
    let sa = a.listen;
    if listeners
        .iter()
        .any(|l| l.addr == ListenAddr::Tcp(sa) && sa.port() != 0)
    {
        let source = c.src("admin.listen");
        c.fail(
            "admin.listen",
            format!("{sa} is also a proxy listener"),
            Some(source),
        );
    }
}

#[cfg(test)]
mod tests {
    use crate::config::validate::testing::{has, mistakes};

    #[test]
    fn the_master_may_not_be_one_of_our_own_listeners() {
        let m = mistakes("master_host: localhost\nmaster_port: 8080\nlisteners: [{listen: \"127.0.0.1:8080\"}]\n");
        assert!(has(&m, "master_host", "this proxy's own listener"), "{m:?}");
        let m = mistakes("master_host: \"127.0.0.1\"\nmaster_port: 8080\nlisteners: [{listen: \"0.0.0.0:8080\", allowed_clients: [10.0.0.0/8]}]\n");
        assert!(has(&m, "master_host", "this proxy's own listener"), "{m:?}");
    }

    #[test]
    fn the_admin_endpoint_may_not_take_a_listeners_address() {
        let m = mistakes("master_host: det\nlisteners: [{listen: \"127.0.0.1:9090\"}]\nadmin: {listen: \"127.0.0.1:9090\"}\n");
        assert!(has(&m, "admin.listen", "also a proxy listener"), "{m:?}");
    }
}
