//! Host names as configuration and URLs write them: below `config`, `egress`, `tls` and
//! `upstream`, which all need to tell an IP literal from a name.

use std::net::IpAddr;

/// An IP literal, with or without the brackets of a v6 URL host.
pub(crate) fn parse_host_ip(host: &str) -> Option<IpAddr> {
    let h = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    h.parse().ok()
}
