//! Rules that span sections: the proxy must not dial itself, and the admin endpoint must not
//! take a listener's address.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::Check;
use crate::config::{parse_host_ip, AdminConfig, ListenAddr, ListenerConfig, MasterConfig};

/// A master address that is one of our own listeners would make the proxy dial itself.
pub(super) fn master_is_not_a_listener(
    c: &mut Check,
    m: &MasterConfig,
    listeners: &[ListenerConfig],
) {
    if m.host.is_empty() {
        return;
    }
    let master_ips: Vec<IpAddr> = match parse_host_ip(&m.host) {
        Some(ip) => vec![ip],
        None if m.host.eq_ignore_ascii_case("localhost") => {
            vec![Ipv4Addr::LOCALHOST.into(), Ipv6Addr::LOCALHOST.into()]
        }
        None => vec![],
    };
    for (i, lc) in listeners.iter().enumerate() {
        let ListenAddr::Tcp(a) = &lc.addr else {
            continue;
        };
        if a.port() != m.port || a.port() == 0 {
            continue;
        }
        let hit = master_ips.iter().any(|ip| {
            *ip == a.ip() || (a.ip().is_unspecified() && (ip.is_loopback() || ip.is_unspecified()))
        });
        if hit {
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
