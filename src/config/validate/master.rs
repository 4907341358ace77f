//! `master_host` and `master_port`.

use super::Check;
use crate::config::raw::RawConfig;
use crate::config::{MasterConfig, DEFAULT_SOURCE};
use crate::host::parse_host_ip;

pub(super) fn master(c: &mut Check, raw: &RawConfig, tls_enabled: bool) -> MasterConfig {
    let host = raw
        .master_host
        .clone()
        .unwrap_or_default()
        .trim()
        .to_string();
    if host.is_empty() {
        c.fail(
            "master_host",
            "required: the Determined master's DNS name or IP address (set master_host, DET_MASTER_HOST or --master-host, or import agent_config)",
            None,
        );
    }
    let (port, port_source) = port(c, raw.master_port, tls_enabled);
    MasterConfig {
        host,
        port,
        port_source,
    }
}

/// The port and where it came from; without one, the default depends on TLS and on whether
/// an imported agent.yaml (whose own default is 443/80) supplied the master.
fn port(c: &mut Check, port: Option<u16>, enabled: bool) -> (u16, String) {
    let l = c.loaded;
    match port {
        Some(0) => {
            let source = c.src("master_port");
            c.fail("master_port", "0 is not a port", Some(source.clone()));
            (0, source)
        }
        Some(p) => (p, c.src("master_port")),
        None => match &l.agent_config {
            Some(agent) if !l.agent_has_port => (
                if enabled { 443 } else { 80 },
                format!(
                    "{} (agent_config has no master_port: the agent's default)",
                    agent.display()
                ),
            ),
            _ => (
                MasterConfig::default_port(enabled),
                format!(
                    "{DEFAULT_SOURCE} (the master's {} port)",
                    if enabled { "TLS" } else { "plain" }
                ),
            ),
        },
    }
}

/// A `master_host` that is neither an IP literal nor a DNS name.
pub(super) fn host_is_a_name(c: &mut Check, host: &str) {
    if !host.is_empty()
        && parse_host_ip(host).is_none()
        && rustls_pki_types::ServerName::try_from(host).is_err()
    {
        let source = c.src("master_host");
        c.fail(
            "master_host",
            format!(
                "{host:?} is not a valid DNS name or IP address (write it without scheme or port)"
            ),
            Some(source),
        );
    }
}

#[cfg(test)]
mod tests {
    use crate::config::validate::testing::{has, mistakes, valid};

    #[test]
    fn master_host_is_required_and_must_be_a_name_or_an_ip() {
        assert!(has(&mistakes("master_port: 8443\n"), "master_host", "required"));
        let m = mistakes("master_host: \"https://det:8443\"\n");
        assert!(has(&m, "master_host", "not a valid DNS name or IP address"), "{m:?}");
        assert!(mistakes("master_host: \"[::1]\"\n").is_empty());
    }

    #[test]
    fn the_default_port_follows_tls() {
        assert_eq!(valid("master_host: det\n").master.port, 8443);
        let plain = valid("master_host: det\nsecurity: {tls: {enabled: false}}\n");
        assert_eq!(plain.master.port, 8080);
        assert!(plain.master.port_source.starts_with("default"));
        assert!(has(&mistakes("master_host: det\nmaster_port: 0\n"), "master_port", "0 is not a port"));
    }
}
