//! Validation: the merged layers turned into a typed [`Config`], every mistake reported at
//! once with its key, value and source. One function per section, in the order the errors are
//! reported; rules that span sections are in `cross.rs`.

mod admin;
mod cross;
mod egress;
mod identity;
mod listeners;
mod log;
mod master;
mod peers;
mod timeouts;
mod tls;
mod upstream;

use std::net::IpAddr;
use std::path::Path;

use ipnet::IpNet;

pub(crate) use cross::is_master_address;

use super::layers::{Loaded, Purpose};
use super::{err, Config, ConfigError, ConfigErrors};

pub(crate) use peers::shared_client_cert_warnings;

/// The layers being validated and the mistakes found so far.
struct Check<'a> {
    loaded: &'a Loaded,
    errors: Vec<ConfigError>,
}

impl Check<'_> {
    /// The layer `key` came from, for messages.
    fn src(&self, key: &str) -> String {
        self.loaded.source_of(key)
    }

    fn fail(&mut self, key: &str, message: impl Into<String>, source: Option<String>) {
        self.errors.push(err(key, message, source));
    }

    /// A list of CIDRs (or single addresses); each bad item is a mistake of its own.
    fn cidrs(&mut self, key: &str, list: &[String], source: &str) -> Vec<IpNet> {
        let mut out = Vec::new();
        for item in list {
            let item = item.trim();
            let parsed = item
                .parse::<IpNet>()
                .or_else(|_| item.parse::<IpAddr>().map(IpNet::from));
            match parsed {
                Ok(n) => out.push(n),
                Err(_) => self.fail(
                    key,
                    format!("{item:?} is not an IP network (write 172.17.0.0/16 or 10.0.0.7)"),
                    Some(source.to_string()),
                ),
            }
        }
        out
    }

    /// A PEM file holding at least one certificate.
    fn cert_file(&mut self, key: &str, path: &Path) {
        if let Err(e) = crate::pem::load_certs(path) {
            let source = self.src(key);
            self.fail(key, e.to_string(), Some(source));
        }
    }
}

pub fn validate(l: &Loaded, purpose: Purpose) -> Result<Config, ConfigErrors> {
    let mut c = Check {
        loaded: l,
        errors: Vec::new(),
    };
    let raw = &l.raw;
    let mut tls = tls::settings(&raw.security.tls, &raw.tls);
    let master = master::master(&mut c, raw, tls.enabled);
    tls::combination(&mut c, &tls);
    tls::pins(&mut c, &mut tls);
    master::host_is_a_name(&mut c, &master.host);
    tls::files(&mut c, &tls, purpose);
    let listeners = listeners::listeners(&mut c, raw.listeners.as_deref().unwrap_or_default());
    cross::master_is_not_a_listener(&mut c, &master, &listeners);
    let timeouts = timeouts::timeouts(&mut c, &raw.timeouts);
    let max_connections = timeouts::max_connections(&mut c, raw.max_connections);
    let admin = admin::admin(&mut c, &raw.admin);
    if let Some(a) = &admin {
        cross::admin_is_not_a_listener(&mut c, a, &listeners);
    }
    let log = log::log(&mut c, &raw.log);
    let egress = egress::egress(&mut c, raw, purpose);
    let preconnect = upstream::preconnect(&mut c, &raw.upstream);
    let container_api = identity::container_api(&mut c, &raw.identity, purpose);
    if !c.errors.is_empty() {
        return Err(ConfigErrors(c.errors));
    }
    Ok(Config {
        master,
        tls,
        listeners,
        timeouts,
        max_connections,
        admin,
        log,
        egress,
        preconnect,
        container_api,
        config_file: l.config_file.clone(),
        agent_config: l.agent_config.clone(),
        keys: super::key_values(raw),
    })
}

/// Validation of YAML text as the proxy's only layer, for the sections' unit tests: the files
/// it names are not read (as for `det-tls-proxy config`).
#[cfg(test)]
mod testing {
    use super::validate;
    use crate::config::layers::{assemble_str, Purpose};
    use crate::config::Config;

    /// (key, message) of every mistake in `yaml`; empty when it is valid.
    pub(super) fn mistakes(yaml: &str) -> Vec<(String, String)> {
        let loaded = match assemble_str(yaml) {
            Ok(l) => l,
            Err(e) => return e.0.into_iter().map(|e| (e.key, e.message)).collect(),
        };
        match validate(&loaded, Purpose::Show) {
            Ok(_) => Vec::new(),
            Err(e) => e.0.into_iter().map(|e| (e.key, e.message)).collect(),
        }
    }

    pub(super) fn valid(yaml: &str) -> Config {
        let loaded = assemble_str(yaml).expect("assembles");
        validate(&loaded, Purpose::Show).unwrap_or_else(|e| panic!("{yaml}\n{e}"))
    }

    /// Whether one mistake is about `key` and its message contains `words`.
    pub(super) fn has(mistakes: &[(String, String)], key: &str, words: &str) -> bool {
        mistakes.iter().any(|(k, m)| k == key && m.contains(words))
    }
}
