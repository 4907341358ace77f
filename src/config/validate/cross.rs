//! Rules that span sections: the proxy must not dial itself, and the admin endpoint must not
//! take a listener's address.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use super::Check;
use crate::host::parse_host_ip;
use crate::config::{tcp_overlaps, AdminConfig, ListenAddr, ListenerConfig, MasterConfig};

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
    let taken = listeners.iter().find(|l| match l.addr {
        ListenAddr::Tcp(b) => tcp_overlaps(sa, b),
        _ => false,
    });
    if let Some(l) = taken {
        let source = c.src("admin.listen");
        let how = match l.addr == ListenAddr::Tcp(sa) {
            true => String::new(),
            false => format!(" (it overlaps {}: [::] takes IPv4 clients too)", l.addr),
        };
        c.fail(
            "admin.listen",
            format!("{sa} is also a proxy listener, {:?}{how}", l.name),
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
        let m = mistakes("master_host: det\nlisteners: [{listen: \"0.0.0.0:9090\", allowed_clients: [10.0.0.0/8]}]\nadmin: {listen: \"127.0.0.1:9090\"}\n");
        assert!(has(&m, "admin.listen", "overlaps 0.0.0.0:9090"), "{m:?}");
    }

    #[test]
    fn a_dual_stack_wildcard_overlaps_every_address_on_its_port() {
        use crate::config::tcp_overlaps;
        let a = |s: &str| s.parse::<std::net::SocketAddr>().unwrap();
        assert!(tcp_overlaps(a("[::]:80"), a("0.0.0.0:80")));
        assert!(tcp_overlaps(a("127.0.0.1:80"), a("[::]:80")));
        assert!(tcp_overlaps(a("0.0.0.0:80"), a("10.1.2.3:80")));
        assert!(!tcp_overlaps(a("0.0.0.0:80"), a("[::1]:80")));
        assert!(!tcp_overlaps(a("[::]:80"), a("[::]:81")));
        assert!(!tcp_overlaps(a("[::]:0"), a("0.0.0.0:0")));
        assert!(!tcp_overlaps(a("127.0.0.1:80"), a("127.0.0.2:80")));
        let m = mistakes("master_host: det\nlisteners: [{name: v4, listen: \"0.0.0.0:8080\", allowed_clients: [10.0.0.0/8]}, {name: v6, listen: \"[::]:8080\", allowed_clients: [\"fd00::/8\"]}]\n");
        assert!(has(&m, "listeners[1].listen", "overlaps 0.0.0.0:8080 of listener \"v4\""), "{m:?}");
    }
}
