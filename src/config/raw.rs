//! The file schema: what a YAML layer may hold, every field optional so layers can merge.
//! `#[serde(deny_unknown_fields)]` everywhere, so a typo is an error, not a silent default.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::{Timeouts, DEFAULT_LISTEN};

/// Built-in values, used by the default layer and by validation when a layer sets a key to null.
pub(crate) const DEFAULT_TIMEOUTS: Timeouts = Timeouts {
    connect: Duration::from_secs(10),
    handshake: Duration::from_secs(10),
    idle: Duration::from_secs(3600),
    close: Duration::from_secs(60),
    shutdown: Duration::from_secs(30),
};
pub(crate) const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
pub(crate) const DEFAULT_LOG_LEVEL: &str = "info";
/// `upstream.preconnect_max_idle`: under the idle timeouts masters and the load balancers in
/// front of them commonly use (60 s and more), so a pooled session is replaced before the
/// other side gives up on it.
pub(crate) const DEFAULT_PRECONNECT_MAX_IDLE: Duration = Duration::from_secs(30);

/// A duration written as a humantime string (`10s`, `1h 30m`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

impl Serialize for HumanDuration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(self.0).to_string())
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(s.trim())
            .map(HumanDuration)
            .map_err(|e| {
                serde::de::Error::custom(format!(
                    "invalid duration {s:?}: {e} (write it like \"10s\", \"500ms\" or \"1h\")"
                ))
            })
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub master_host: Option<String>,
    #[serde(default)]
    pub master_port: Option<u16>,
    #[serde(default)]
    pub security: RawSecurity,
    #[serde(default)]
    pub agent_config: Option<PathBuf>,
    #[serde(default)]
    pub listeners: Option<Vec<RawListener>>,
    #[serde(default)]
    pub timeouts: RawTimeouts,
    #[serde(default)]
    pub max_connections: Option<usize>,
    #[serde(default)]
    pub admin: RawAdmin,
    #[serde(default)]
    pub tls: RawTlsOptions,
    #[serde(default)]
    pub log: RawLog,
    #[serde(default)]
    pub upstream_proxy: Option<String>,
    #[serde(default)]
    pub upstream_no_proxy: Option<Vec<String>>,
    /// A file holding `USER:PASSWORD` for `upstream_proxy`; relative to
    /// `$CREDENTIALS_DIRECTORY` when that is set.
    #[serde(default)]
    pub upstream_proxy_credentials: Option<PathBuf>,
    #[serde(default)]
    pub upstream: RawUpstream,
    #[serde(default)]
    pub identity: RawIdentity,
}

/// `identity.*`: where the proxy learns who its clients are, beyond the kernel.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawIdentity {
    /// The container runtime's API socket (Docker Engine API); absent: not asked.
    #[serde(default)]
    pub container_api: Option<PathBuf>,
}

/// `upstream.*`: how the master is reached beyond its address.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawUpstream {
    #[serde(default)]
    pub preconnect: Option<usize>,
    #[serde(default)]
    pub preconnect_max_idle: Option<HumanDuration>,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawSecurity {
    #[serde(default)]
    pub tls: RawTls,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    #[serde(default)]
    pub enabled: Option<bool>,
    #[serde(default)]
    pub skip_verify: Option<bool>,
    #[serde(default)]
    pub master_cert: Option<PathBuf>,
    #[serde(default)]
    pub master_cert_name: Option<String>,
    #[serde(default)]
    pub client_cert: Option<PathBuf>,
    #[serde(default)]
    pub client_key: Option<PathBuf>,
    #[serde(default)]
    pub master_cert_sha256: Option<Vec<String>>,
    #[serde(default)]
    pub crl: Option<Vec<PathBuf>>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct RawListener {
    #[serde(default)]
    pub name: Option<String>,
    pub listen: String,
    #[serde(default)]
    pub allowed_clients: Option<Vec<String>>,
    #[serde(default)]
    pub mode: Option<String>,
    #[serde(default)]
    pub group: Option<StringOrNumber>,
    #[serde(default)]
    pub alpn: Option<RawAlpn>,
    /// `true`, `false` or a list of peer selectors (judged in `validate/peers.rs`).
    #[serde(default)]
    pub present_client_cert: Option<serde_json::Value>,
    #[serde(default)]
    pub tls_passthrough: Option<String>,
    #[serde(default)]
    pub max_connections: Option<usize>,
    /// Peer selectors (judged in `validate/peers.rs`).
    #[serde(default)]
    pub allowed_peers: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum StringOrNumber {
    Number(u32),
    String(String),
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum RawAlpn {
    Word(String),
    List(Vec<String>),
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawTimeouts {
    #[serde(default)]
    pub connect: Option<HumanDuration>,
    #[serde(default)]
    pub handshake: Option<HumanDuration>,
    #[serde(default)]
    pub idle: Option<HumanDuration>,
    #[serde(default)]
    pub close: Option<HumanDuration>,
    #[serde(default)]
    pub shutdown: Option<HumanDuration>,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    #[serde(default)]
    pub listen: Option<String>,
    #[serde(default)]
    pub allowed_clients: Option<Vec<String>>,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawTlsOptions {
    #[serde(default)]
    pub post_quantum: Option<bool>,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawLog {
    #[serde(default)]
    pub format: Option<String>,
    #[serde(default)]
    pub level: Option<String>,
    #[serde(default)]
    pub access: Option<bool>,
}

/// The built-in defaults, as a layer of their own so `config` can name them.
pub(crate) fn defaults() -> RawConfig {
    RawConfig {
        master_host: None,
        master_port: None,
        security: RawSecurity {
            tls: RawTls {
                enabled: Some(true),
                skip_verify: Some(false),
                ..Default::default()
            },
        },
        agent_config: None,
        listeners: Some(vec![RawListener {
            name: None,
            listen: DEFAULT_LISTEN.to_string(),
            allowed_clients: None,
            mode: None,
            group: None,
            alpn: None,
            present_client_cert: None,
            tls_passthrough: None,
            max_connections: None,
            allowed_peers: None,
        }]),
        timeouts: RawTimeouts {
            connect: Some(HumanDuration(DEFAULT_TIMEOUTS.connect)),
            handshake: Some(HumanDuration(DEFAULT_TIMEOUTS.handshake)),
            idle: Some(HumanDuration(DEFAULT_TIMEOUTS.idle)),
            close: Some(HumanDuration(DEFAULT_TIMEOUTS.close)),
            shutdown: Some(HumanDuration(DEFAULT_TIMEOUTS.shutdown)),
        },
        max_connections: Some(DEFAULT_MAX_CONNECTIONS),
        admin: RawAdmin::default(),
        tls: RawTlsOptions {
            post_quantum: Some(true),
        },
        log: RawLog {
            format: Some("text".into()),
            level: Some(DEFAULT_LOG_LEVEL.into()),
            access: Some(true),
        },
        upstream_proxy: None,
        upstream_no_proxy: None,
        upstream_proxy_credentials: None,
        upstream: RawUpstream {
            preconnect: Some(0),
            preconnect_max_idle: Some(HumanDuration(DEFAULT_PRECONNECT_MAX_IDLE)),
        },
        identity: RawIdentity::default(),
    }
}
