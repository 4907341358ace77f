//! Configuration: figment layers (defaults, an imported agent.yaml, the proxy's file, the
//! environment, the flags) turned once into a typed, validated [`Config`]. Every value keeps
//! the name of the layer it came from, so each error and `det-tls-proxy config` can say where.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::providers::{Format, Yaml};
use figment::value::{Dict, Map, Value};
use figment::{Figment, Metadata, Profile, Provider};
use ipnet::IpNet;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Used when neither `--config` nor `DET_TLS_PROXY_CONFIG` names a file and this one exists.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/determined/tls-proxy.yaml";
/// The listener used when no layer names one.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
const DEFAULT_SOURCE: &str = "default";
/// Built-in values, used by the default layer and by validation when a layer sets a key to null.
const DEFAULT_TIMEOUTS: Timeouts = Timeouts {
    connect: Duration::from_secs(10),
    handshake: Duration::from_secs(10),
    idle: Duration::from_secs(3600),
    close: Duration::from_secs(60),
    shutdown: Duration::from_secs(30),
};
const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
const DEFAULT_LOG_LEVEL: &str = "info";

// === Errors ===

/// One configuration mistake: the key, what is wrong, and the layer the value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub key: String,
    pub message: String,
    pub source: Option<String>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)?;
        if let Some(source) = &self.source {
            write!(f, " (from {source})")?;
        }
        Ok(())
    }
}

/// Every mistake found in one pass, so an operator fixes them all at once.
#[derive(Debug, Clone)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "configuration error: {e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl From<ConfigError> for ConfigErrors {
    fn from(e: ConfigError) -> Self {
        ConfigErrors(vec![e])
    }
}

fn err(key: &str, message: impl Into<String>, source: Option<String>) -> ConfigError {
    ConfigError {
        key: key.to_string(),
        message: message.into(),
        source,
    }
}

// === The file schema ===

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
    #[serde(default)]
    pub present_client_cert: Option<bool>,
    #[serde(default)]
    pub tls_passthrough: Option<String>,
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
fn defaults() -> RawConfig {
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
    }
}

// === The typed configuration ===

#[derive(Debug, Clone)]
pub struct Config {
    pub master: MasterConfig,
    pub tls: TlsSettings,
    pub listeners: Vec<ListenerConfig>,
    pub timeouts: Timeouts,
    pub max_connections: usize,
    pub admin: Option<AdminConfig>,
    pub log: LogConfig,
    /// The proxy's own file, when one was read (watched for changes).
    pub config_file: Option<PathBuf>,
    /// The imported agent.yaml, when one was read.
    pub agent_config: Option<PathBuf>,
    /// Every key's merged value (`listeners[0].alpn` → `"auto"`), to say what a reload changed.
    pub keys: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MasterConfig {
    pub host: String,
    pub port: u16,
    /// Where `port` came from, for messages.
    pub port_source: String,
}

impl MasterConfig {
    pub fn ip(&self) -> Option<IpAddr> {
        parse_host_ip(&self.host)
    }
}

/// An IP literal, with or without the brackets of a v6 URL host.
pub fn parse_host_ip(host: &str) -> Option<IpAddr> {
    let h = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    h.parse().ok()
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    pub enabled: bool,
    pub skip_verify: bool,
    pub master_cert: Option<PathBuf>,
    pub master_cert_name: Option<String>,
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
    pub post_quantum: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ListenAddr {
    Tcp(SocketAddr),
    Unix(PathBuf),
    Systemd(String),
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenAddr::Tcp(a) => write!(f, "{a}"),
            ListenAddr::Unix(p) => write!(f, "unix:{}", p.display()),
            ListenAddr::Systemd(n) => write!(f, "systemd:{n}"),
        }
    }
}

impl ListenAddr {
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if let Some(path) = s.strip_prefix("unix:") {
            if path.is_empty() || !path.starts_with('/') {
                return Err(format!(
                    "{s:?}: a unix socket needs an absolute path (unix:/run/x.sock)"
                ));
            }
            return Ok(ListenAddr::Unix(PathBuf::from(path)));
        }
        if let Some(name) = s.strip_prefix("systemd:") {
            if name.is_empty() || name.contains(':') {
                return Err(format!(
                    "{s:?}: systemd:NAME needs the socket's FileDescriptorName"
                ));
            }
            return Ok(ListenAddr::Systemd(name.to_string()));
        }
        if let Ok(a) = s.parse::<SocketAddr>() {
            return Ok(ListenAddr::Tcp(a));
        }
        if let Some(port) = s.strip_prefix("localhost:") {
            if let Ok(p) = port.parse::<u16>() {
                return Ok(ListenAddr::Tcp(SocketAddr::new(
                    Ipv4Addr::LOCALHOST.into(),
                    p,
                )));
            }
        }
        Err(format!(
            "{s:?} is not a listen address: write HOST:PORT with an IP (127.0.0.1:8080, [::1]:8080), unix:/path or systemd:NAME"
        ))
    }

    /// Loopback TCP and unix sockets are reachable only from this host.
    pub fn is_local(&self) -> bool {
        match self {
            ListenAddr::Tcp(a) => a.ip().is_loopback(),
            ListenAddr::Unix(_) => true,
            ListenAddr::Systemd(_) => false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AlpnPolicy {
    /// HTTP/2 connection preface → `h2`, anything else → `http/1.1`.
    Auto,
    None,
    List(Vec<Vec<u8>>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerConfig {
    pub name: String,
    pub addr: ListenAddr,
    /// `None`: no restriction (only accepted for local addresses).
    pub allowed_clients: Option<Vec<IpNet>>,
    pub mode: u32,
    pub group: Option<u32>,
    pub alpn: AlpnPolicy,
    /// `None` for systemd listeners: decided on the inherited socket's address.
    pub present_client_cert: Option<bool>,
    pub tls_passthrough: bool,
}

/// What identifies a listener across reloads: its address, so a reload that keeps the address
/// keeps the socket even under a new name. A TCP address with port 0 means "any free port"
/// and may appear more than once, so such a listener is identified by its name as well.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ListenerKey {
    Addr(ListenAddr),
    AnyPort(SocketAddr, String),
}

impl ListenerConfig {
    pub fn key(&self) -> ListenerKey {
        match &self.addr {
            ListenAddr::Tcp(a) if a.port() == 0 => ListenerKey::AnyPort(*a, self.name.clone()),
            a => ListenerKey::Addr(a.clone()),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    pub connect: Duration,
    pub handshake: Duration,
    pub idle: Duration,
    pub close: Duration,
    pub shutdown: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminConfig {
    pub listen: SocketAddr,
    pub allowed_clients: Option<Vec<IpNet>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    pub format: LogFormat,
    pub level: String,
    pub access: bool,
}

// === Layers ===

/// Values given on the command line. Every field is optional: `None` leaves the lower layers.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub config: Option<PathBuf>,
    pub master_host: Option<String>,
    pub master_port: Option<u16>,
    pub tls_enabled: Option<bool>,
    pub skip_verify: Option<bool>,
    pub master_cert: Option<PathBuf>,
    pub master_cert_name: Option<String>,
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
    pub listen: Vec<String>,
    pub admin_listen: Option<String>,
}

/// What a subcommand needs of the configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// `run` and `check`: the master certificate must exist.
    Serve,
    /// `trust` creates the master certificate, so it may be missing.
    Trust,
    /// `config`: print what is there, files need not exist.
    Show,
}

/// A provider holding one source's values under its own name (an environment variable, a
/// flag), because figment's own `Env` provider names only the prefix.
struct Named {
    name: String,
    data: Dict,
}

impl Named {
    fn new(name: impl Into<String>, key: &str, value: Value) -> Self {
        let data = match figment::util::nest(key, value) {
            Value::Dict(_, d) => d,
            _ => Dict::new(),
        };
        Named {
            name: name.into(),
            data,
        }
    }
}

impl Provider for Named {
    fn metadata(&self) -> Metadata {
        Metadata::named(self.name.clone())
    }
    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        let mut m = Map::new();
        m.insert(Profile::Default, self.data.clone());
        Ok(m)
    }
}

/// The environment variables we read, and the key each one sets.
const AGENT_ENV: &[(&str, &str, EnvKind)] = &[
    ("DET_MASTER_HOST", "master_host", EnvKind::Str),
    ("DET_MASTER_PORT", "master_port", EnvKind::Port),
    (
        "DET_SECURITY_TLS_ENABLED",
        "security.tls.enabled",
        EnvKind::Bool,
    ),
    (
        "DET_SECURITY_TLS_SKIP_VERIFY",
        "security.tls.skip_verify",
        EnvKind::Bool,
    ),
    (
        "DET_SECURITY_TLS_MASTER_CERT",
        "security.tls.master_cert",
        EnvKind::Str,
    ),
    (
        "DET_SECURITY_TLS_MASTER_CERT_NAME",
        "security.tls.master_cert_name",
        EnvKind::Str,
    ),
    (
        "DET_SECURITY_TLS_CLIENT_CERT",
        "security.tls.client_cert",
        EnvKind::Str,
    ),
    (
        "DET_SECURITY_TLS_CLIENT_KEY",
        "security.tls.client_key",
        EnvKind::Str,
    ),
];

const PROXY_ENV: &[(&str, &str, EnvKind)] = &[
    ("DET_TLS_PROXY_CONFIG", "", EnvKind::Str),
    ("DET_TLS_PROXY_AGENT_CONFIG", "agent_config", EnvKind::Str),
    ("DET_TLS_PROXY_LISTEN", "listeners", EnvKind::Listeners),
    ("DET_TLS_PROXY_ADMIN_LISTEN", "admin.listen", EnvKind::Str),
    ("DET_TLS_PROXY_LOG_FORMAT", "log.format", EnvKind::Str),
    ("DET_TLS_PROXY_LOG_LEVEL", "log.level", EnvKind::Str),
];

#[derive(Debug, Clone, Copy)]
enum EnvKind {
    Str,
    Port,
    Bool,
    Listeners,
}

pub fn parse_bool(s: &str) -> Option<bool> {
    match s.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Some(true),
        "false" | "0" | "no" | "off" => Some(false),
        _ => None,
    }
}

fn listeners_value(addrs: &[String]) -> Value {
    let list: Vec<RawListener> = addrs
        .iter()
        .map(|a| a.trim())
        .filter(|a| !a.is_empty())
        .map(|a| RawListener {
            name: Some(a.to_string()),
            listen: a.to_string(),
            allowed_clients: None,
            mode: None,
            group: None,
            alpn: None,
            present_client_cert: None,
            tls_passthrough: None,
        })
        .collect();
    Value::serialize(list).unwrap_or_else(|_| Value::from(Vec::<Value>::new()))
}

fn env_layers(
    vars: &[(String, String)],
    errors: &mut Vec<ConfigError>,
) -> (Vec<Named>, Option<(PathBuf, String)>) {
    let mut layers = Vec::new();
    let mut config_path = None;
    for (name, raw) in vars {
        if !name.starts_with("DET_") {
            continue;
        }
        let known = AGENT_ENV
            .iter()
            .chain(PROXY_ENV.iter())
            .find(|(n, _, _)| n == name);
        let Some((_, key, kind)) = known else {
            if name.starts_with("DET_TLS_PROXY_") {
                let names: Vec<&str> = PROXY_ENV.iter().map(|(n, _, _)| *n).collect();
                errors.push(err(
                    name,
                    format!(
                        "unknown environment variable; the proxy reads {}",
                        names.join(", ")
                    ),
                    Some("environment".into()),
                ));
            }
            // Every other DET_* belongs to the agent host (DET_AGENT_ID, ...).
            continue;
        };
        if name == "DET_TLS_PROXY_CONFIG" {
            config_path = Some((PathBuf::from(raw), name.clone()));
            continue;
        }
        let value = match kind {
            EnvKind::Str => Value::from(raw.clone()),
            EnvKind::Port => match raw.trim().parse::<u16>() {
                Ok(p) => Value::from(p),
                Err(_) => {
                    errors.push(err(
                        key,
                        format!("{raw:?} is not a port number (1-65535)"),
                        Some(name.clone()),
                    ));
                    continue;
                }
            },
            EnvKind::Bool => match parse_bool(raw) {
                Some(b) => Value::from(b),
                None => {
                    errors.push(err(
                        key,
                        format!("{raw:?} is not a boolean (true or false)"),
                        Some(name.clone()),
                    ));
                    continue;
                }
            },
            EnvKind::Listeners => {
                let addrs: Vec<String> = raw.split(',').map(|s| s.to_string()).collect();
                listeners_value(&addrs)
            }
        };
        layers.push(Named::new(name.clone(), key, value));
    }
    (layers, config_path)
}

fn flag_layers(o: &Overrides) -> Vec<Named> {
    let mut v = Vec::new();
    let mut push = |flag: &str, key: &str, value: Option<Value>| {
        if let Some(value) = value {
            v.push(Named::new(flag, key, value));
        }
    };
    let path = |p: &Option<PathBuf>| p.as_ref().map(|p| Value::from(p.display().to_string()));
    push(
        "--master-host",
        "master_host",
        o.master_host.clone().map(Value::from),
    );
    push(
        "--master-port",
        "master_port",
        o.master_port.map(Value::from),
    );
    push(
        "--security-tls-enabled",
        "security.tls.enabled",
        o.tls_enabled.map(Value::from),
    );
    push(
        "--security-tls-skip-verify",
        "security.tls.skip_verify",
        o.skip_verify.map(Value::from),
    );
    push(
        "--security-tls-master-cert",
        "security.tls.master_cert",
        path(&o.master_cert),
    );
    push(
        "--security-tls-master-cert-name",
        "security.tls.master_cert_name",
        o.master_cert_name.clone().map(Value::from),
    );
    push(
        "--security-tls-client-cert",
        "security.tls.client_cert",
        path(&o.client_cert),
    );
    push(
        "--security-tls-client-key",
        "security.tls.client_key",
        path(&o.client_key),
    );
    if !o.listen.is_empty() {
        push("--listen", "listeners", Some(listeners_value(&o.listen)));
    }
    push(
        "--admin-listen",
        "admin.listen",
        o.admin_listen.clone().map(Value::from),
    );
    v
}

/// A copy of `v` without the tags of the figment it was read through, so the layer it is put
/// in becomes its source.
fn untagged(v: &Value) -> Value {
    Value::serialize(v).unwrap_or_else(|_| v.clone())
}

/// Reads `master_host`, `master_port` and `security.tls.*` from a Determined agent.yaml and
/// nothing else: the agent's other keys are its own business.
fn agent_layer(path: &Path) -> Result<(Named, bool), ConfigError> {
    let source = Some(format!("{} (agent_config)", path.display()));
    let text = std::fs::read_to_string(path).map_err(|e| {
        err(
            "agent_config",
            format!("cannot read {}: {e}", path.display()),
            None,
        )
    })?;
    refuse_duplicate_keys(&text, &format!("{} (agent_config)", path.display()))?;
    let doc: Value = Figment::from(Yaml::string(&text)).extract().map_err(|e| {
        err(
            "agent_config",
            format!("{} is not valid YAML: {}", path.display(), e.kind),
            source.clone(),
        )
    })?;
    let mut data = Dict::new();
    let mut has_port = false;
    if let Value::Dict(_, top) = doc {
        for key in ["master_host", "master_port"] {
            if let Some(v) = top.get(key) {
                if key == "master_port" {
                    has_port = true;
                }
                data.insert(key.to_string(), untagged(v));
            }
        }
        let tls = top
            .get("security")
            .and_then(|s| s.as_dict())
            .and_then(|s| s.get("tls"))
            .and_then(|t| t.as_dict());
        if let Some(tls) = tls {
            let mut keep = Dict::new();
            for key in [
                "enabled",
                "skip_verify",
                "master_cert",
                "master_cert_name",
                "client_cert",
                "client_key",
            ] {
                // The agent writes "" for an unset path; that means absent.
                match tls.get(key) {
                    Some(Value::String(_, s)) if s.is_empty() => {}
                    Some(v) => {
                        keep.insert(key.to_string(), untagged(v));
                    }
                    None => {}
                }
            }
            let mut security = Dict::new();
            security.insert("tls".into(), Value::from(keep));
            data.insert("security".into(), Value::from(security));
        }
    } else {
        return Err(err(
            "agent_config",
            format!("{} does not hold a YAML mapping", path.display()),
            source,
        ));
    }
    Ok((
        Named {
            name: path.display().to_string(),
            data,
        },
        has_port,
    ))
}

/// The assembled layers, kept for `config` and for naming sources in errors.
pub struct Loaded {
    pub figment: Figment,
    pub raw: RawConfig,
    pub config_file: Option<PathBuf>,
    pub agent_config: Option<PathBuf>,
    agent_has_port: bool,
}

impl Loaded {
    /// The name of the layer that set `key`: a file path, a variable, a flag, or `default`.
    pub fn source_of(&self, key: &str) -> String {
        match self.figment.find_metadata(key) {
            Some(md) => describe_metadata(md),
            None => DEFAULT_SOURCE.to_string(),
        }
    }
}

fn describe_metadata(md: &Metadata) -> String {
    match &md.source {
        Some(figment::Source::File(p)) => p.display().to_string(),
        _ => md.name.to_string(),
    }
}

/// A dotted key as an operator would write it; an empty name is shown as `""`.
fn dotted(path: &[String]) -> String {
    path.iter()
        .map(|p| if p.is_empty() { "\"\"" } else { p.as_str() })
        .collect::<Vec<_>>()
        .join(".")
}

/// YAML lets a key appear twice and figment keeps the last one whole, which can silently drop
/// a `listeners:` or `security:` block; refuse it instead.
fn refuse_duplicate_keys(text: &str, source: &str) -> Result<(), ConfigError> {
    match serde_yaml::from_str::<serde_yaml::Value>(text) {
        Err(e) if e.to_string().contains("duplicate entry") => {
            let msg = e.to_string();
            let key = msg
                .split("with key ")
                .nth(1)
                .and_then(|k| k.split_whitespace().next())
                .map(|k| k.trim_matches('"').to_string())
                .unwrap_or_else(|| "config".to_string());
            Err(err(
                &key,
                format!("{msg}: a key may appear only once; merge the two entries"),
                Some(source.to_string()),
            ))
        }
        _ => Ok(()),
    }
}

fn figment_errors(e: figment::Error) -> ConfigErrors {
    let mut out = Vec::new();
    for one in e {
        let key = if one.path.is_empty() {
            "(top level)".to_string()
        } else {
            dotted(&one.path)
        };
        let source = one.metadata.as_ref().map(describe_metadata);
        let message = match &one.kind {
            figment::error::Kind::UnknownField(field, expected) => {
                let key_full = if one.path.is_empty() {
                    dotted(std::slice::from_ref(field))
                } else if one.path.last() == Some(field) {
                    dotted(&one.path)
                } else {
                    dotted(&[one.path.clone(), vec![field.clone()]].concat())
                };
                out.push(err(
                    &key_full,
                    format!("unknown key; expected one of: {}", expected.join(", ")),
                    source,
                ));
                continue;
            }
            kind => kind.to_string(),
        };
        out.push(err(&key, message, source));
    }
    ConfigErrors(out)
}

/// Assembles every layer from the given environment and flags.
pub fn assemble(vars: &[(String, String)], flags: &Overrides) -> Result<Loaded, ConfigErrors> {
    assemble_inner(vars, flags, None)
}

/// Assembles the layers with `yaml` as the proxy's file (no environment, no flags): for
/// property tests and fuzzing of the configuration parser.
pub fn assemble_str(yaml: &str) -> Result<Loaded, ConfigErrors> {
    assemble_inner(&[], &Overrides::default(), Some(yaml))
}

fn assemble_inner(
    vars: &[(String, String)],
    flags: &Overrides,
    text: Option<&str>,
) -> Result<Loaded, ConfigErrors> {
    let mut errors = Vec::new();
    let (env, env_config) = env_layers(vars, &mut errors);

    // Which file is the proxy's own: the flag, then the variable, then the default path.
    let (config_file, explicit) = match (&flags.config, env_config) {
        _ if text.is_some() => (None, None),
        (Some(p), _) => (Some(p.clone()), Some("--config".to_string())),
        (None, Some((p, var))) => (Some(p), Some(var)),
        (None, None) => {
            let p = PathBuf::from(DEFAULT_CONFIG_PATH);
            (p.exists().then_some(p), None)
        }
    };
    let mut file_figment = Figment::new();
    if let Some(path) = &config_file {
        match std::fs::metadata(path) {
            Ok(m) if m.is_file() => {
                // Read it here so an unreadable file is reported as such, not as "missing".
                match std::fs::read_to_string(path) {
                    Ok(text) => {
                        if let Err(e) = refuse_duplicate_keys(&text, &path.display().to_string()) {
                            errors.push(e);
                        }
                    }
                    Err(e) => errors.push(err(
                        "config",
                        format!("cannot read {}: {e}", path.display()),
                        explicit.clone(),
                    )),
                }
                file_figment = Figment::from(Yaml::file_exact(path));
            }
            Ok(_) => errors.push(err(
                "config",
                format!("{} is not a regular file", path.display()),
                explicit.clone(),
            )),
            Err(e) => errors.push(err(
                "config",
                format!("cannot read {}: {e}", path.display()),
                explicit.clone(),
            )),
        }
    }
    if let Some(text) = text {
        if let Err(e) = refuse_duplicate_keys(text, "the given text") {
            errors.push(e);
        }
        file_figment = Figment::from(Yaml::string(text));
    }
    if !errors.is_empty() {
        return Err(ConfigErrors(errors));
    }

    // agent_config may come from the file, the environment or (later) a flag; find it first.
    let env_flags = env.iter().fold(Figment::new(), |f, l| {
        f.merge(Named {
            name: l.name.clone(),
            data: l.data.clone(),
        })
    });
    let probe = Figment::new().merge(file_figment.clone()).merge(env_flags);
    let agent_path: Option<PathBuf> = match probe.extract_inner::<Option<PathBuf>>("agent_config") {
        Ok(p) => p,
        Err(e) if e.missing() => None,
        Err(e) => return Err(figment_errors(e)),
    };

    let default_data = match Value::serialize(defaults()) {
        Ok(Value::Dict(_, d)) => d,
        _ => Dict::new(),
    };
    let mut figment = Figment::new().merge(Named {
        name: DEFAULT_SOURCE.to_string(),
        data: default_data,
    });
    let mut agent_has_port = false;
    if let Some(path) = &agent_path {
        match agent_layer(path) {
            Ok((layer, has_port)) => {
                agent_has_port = has_port;
                figment = figment.merge(layer);
            }
            Err(e) => return Err(e.into()),
        }
    }
    figment = figment.merge(file_figment);
    for layer in env {
        figment = figment.merge(layer);
    }
    for layer in flag_layers(flags) {
        figment = figment.merge(layer);
    }
    let raw: RawConfig = figment.extract().map_err(figment_errors)?;
    Ok(Loaded {
        figment,
        raw,
        config_file,
        agent_config: agent_path,
        agent_has_port,
    })
}

/// The `log.format` the layers ask for, read even when the configuration is otherwise broken,
/// so its errors can be printed in the format the operator's log pipeline expects.
pub fn log_format_hint(vars: &[(String, String)], flags: &Overrides) -> Option<String> {
    let env = |name: &str| vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    if let Some(f) = env("DET_TLS_PROXY_LOG_FORMAT") {
        return Some(f);
    }
    let path = flags
        .config
        .clone()
        .or_else(|| env("DET_TLS_PROXY_CONFIG").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG_PATH));
    Figment::from(Yaml::file_exact(path))
        .extract_inner::<String>("log.format")
        .ok()
}

/// This process's environment, as the layers read it (variables that are not UTF-8 are
/// skipped).
pub fn env_vars() -> Vec<(String, String)> {
    std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .collect()
}

/// Loads and validates the configuration from this process's environment and the flags.
pub fn load(flags: &Overrides, purpose: Purpose) -> Result<Config, ConfigErrors> {
    validate(&assemble(&env_vars(), flags)?, purpose)
}

// === Validation ===

fn parse_cidrs(
    key: &str,
    list: &[String],
    source: &str,
    errors: &mut Vec<ConfigError>,
) -> Vec<IpNet> {
    let mut out = Vec::new();
    for item in list {
        let item = item.trim();
        let parsed = item
            .parse::<IpNet>()
            .or_else(|_| item.parse::<IpAddr>().map(IpNet::from));
        match parsed {
            Ok(n) => out.push(n),
            Err(_) => errors.push(err(
                key,
                format!("{item:?} is not an IP network (write 172.17.0.0/16 or 10.0.0.7)"),
                Some(source.to_string()),
            )),
        }
    }
    out
}

/// Checks a PEM file holds at least one certificate; returns how many.
fn check_cert_file(key: &str, path: &Path, source: &str) -> Result<usize, ConfigError> {
    match crate::pem::load_certs(path) {
        Ok(certs) => Ok(certs.len()),
        Err(e) => Err(err(key, e.to_string(), Some(source.to_string()))),
    }
}

pub fn validate(l: &Loaded, purpose: Purpose) -> Result<Config, ConfigErrors> {
    let raw = &l.raw;
    let mut errors = Vec::new();
    let src = |key: &str| l.source_of(key);

    let host = raw
        .master_host
        .clone()
        .unwrap_or_default()
        .trim()
        .to_string();
    if host.is_empty() {
        errors.push(err(
            "master_host",
            "required: the Determined master's DNS name or IP address (set master_host, DET_MASTER_HOST or --master-host, or import agent_config)",
            None,
        ));
    }

    let t = &raw.security.tls;
    let enabled = t.enabled.unwrap_or(true);
    let skip_verify = t.skip_verify.unwrap_or(false);
    let nonempty_path = |p: &Option<PathBuf>| p.clone().filter(|p| !p.as_os_str().is_empty());
    let master_cert = nonempty_path(&t.master_cert);
    let client_cert = nonempty_path(&t.client_cert);
    let client_key = nonempty_path(&t.client_key);
    let master_cert_name = t
        .master_cert_name
        .clone()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty());

    let (port, port_source) = match raw.master_port {
        Some(0) => {
            errors.push(err(
                "master_port",
                "0 is not a port",
                Some(src("master_port")),
            ));
            (0, src("master_port"))
        }
        Some(p) => (p, src("master_port")),
        None if l.agent_config.is_some() && !l.agent_has_port => (
            if enabled { 443 } else { 80 },
            format!(
                "{} (agent_config has no master_port: the agent's default)",
                l.agent_config.as_ref().unwrap().display()
            ),
        ),
        None => (
            if enabled { 8443 } else { 8080 },
            format!(
                "{DEFAULT_SOURCE} (the master's {} port)",
                if enabled { "TLS" } else { "plain" }
            ),
        ),
    };

    if master_cert.is_some() && skip_verify {
        errors.push(err(
            "security.tls.master_cert",
            format!(
                "cannot specify a master cert file with verification off (security.tls.skip_verify from {}); remove one of them",
                src("security.tls.skip_verify")
            ),
            Some(src("security.tls.master_cert")),
        ));
    }
    match (&client_cert, &client_key) {
        (Some(_), None) => errors.push(err(
            "security.tls.client_key",
            "required when security.tls.client_cert is set (mutual TLS needs both)",
            Some(src("security.tls.client_cert")),
        )),
        (None, Some(_)) => errors.push(err(
            "security.tls.client_cert",
            "required when security.tls.client_key is set (mutual TLS needs both)",
            Some(src("security.tls.client_key")),
        )),
        _ => {}
    }
    if let Some(name) = &master_cert_name {
        if rustls_pki_types::ServerName::try_from(name.as_str()).is_err() {
            errors.push(err(
                "security.tls.master_cert_name",
                format!("{name:?} is not a valid DNS name or IP address"),
                Some(src("security.tls.master_cert_name")),
            ));
        }
    }
    if !host.is_empty()
        && parse_host_ip(&host).is_none()
        && rustls_pki_types::ServerName::try_from(host.as_str()).is_err()
    {
        errors.push(err(
            "master_host",
            format!(
                "{host:?} is not a valid DNS name or IP address (write it without scheme or port)"
            ),
            Some(src("master_host")),
        ));
    }

    if purpose != Purpose::Show && enabled {
        if let Some(path) = &master_cert {
            let must_exist = purpose == Purpose::Serve;
            if must_exist || path.exists() {
                if let Err(e) = check_cert_file(
                    "security.tls.master_cert",
                    path,
                    &src("security.tls.master_cert"),
                ) {
                    errors.push(e);
                }
            }
        }
        if let Some(path) = &client_cert {
            if let Err(e) = check_cert_file(
                "security.tls.client_cert",
                path,
                &src("security.tls.client_cert"),
            ) {
                errors.push(e);
            }
        }
        if let Some(path) = &client_key {
            if let Err(e) = crate::pem::load_key(path) {
                errors.push(err(
                    "security.tls.client_key",
                    e.to_string(),
                    Some(src("security.tls.client_key")),
                ));
            }
        }
    }

    // Listeners.
    let listeners_source = src("listeners");
    let mut listeners = Vec::new();
    let raw_listeners = raw.listeners.clone().unwrap_or_default();
    if raw_listeners.is_empty() {
        errors.push(err(
            "listeners",
            "at least one listener is needed",
            Some(listeners_source.clone()),
        ));
    }
    let mut seen_addrs: BTreeMap<String, String> = BTreeMap::new();
    let mut seen_names: BTreeMap<String, usize> = BTreeMap::new();
    for (i, rl) in raw_listeners.iter().enumerate() {
        let key = format!("listeners[{i}]");
        let addr = match ListenAddr::parse(&rl.listen) {
            Ok(a) => a,
            Err(e) => {
                errors.push(err(
                    &format!("{key}.listen"),
                    e,
                    Some(listeners_source.clone()),
                ));
                continue;
            }
        };
        let name = rl
            .name
            .clone()
            .map(|n| n.trim().to_string())
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| addr.to_string());
        if let Some(prev) = seen_names.insert(name.clone(), i) {
            errors.push(err(
                &format!("{key}.name"),
                format!("{name:?} is also the name of listeners[{prev}]; names must be unique (they label logs and metrics)"),
                Some(listeners_source.clone()),
            ));
        }
        let addr_key = match &addr {
            ListenAddr::Tcp(a) if a.port() == 0 => None,
            other => Some(other.to_string()),
        };
        if let Some(k) = addr_key {
            if let Some(prev) = seen_addrs.insert(k.clone(), name.clone()) {
                errors.push(err(
                    &format!("{key}.listen"),
                    format!("{k} is already the address of listener {prev:?}; two listeners cannot share one address"),
                    Some(listeners_source.clone()),
                ));
            }
        }
        let allowed_clients = rl.allowed_clients.as_ref().map(|list| {
            parse_cidrs(
                &format!("{key}.allowed_clients"),
                list,
                &listeners_source,
                &mut errors,
            )
        });
        if let ListenAddr::Tcp(a) = &addr {
            if !a.ip().is_loopback() && allowed_clients.as_ref().is_none_or(|l| l.is_empty()) {
                errors.push(err(
                    &format!("{key}.allowed_clients"),
                    format!(
                        "listener {name:?} on {a} is reachable from other hosts; list the networks that may use it (for the Docker bridge: allowed_clients: [172.17.0.0/16])"
                    ),
                    Some(listeners_source.clone()),
                ));
            }
        }
        let mode = match (&rl.mode, &addr) {
            (Some(m), ListenAddr::Unix(_)) => {
                match u32::from_str_radix(m.trim().trim_start_matches("0o"), 8) {
                    Ok(v) if v <= 0o777 => v,
                    _ => {
                        errors.push(err(
                            &format!("{key}.mode"),
                            format!("{m:?} is not an octal file mode such as \"0660\""),
                            Some(listeners_source.clone()),
                        ));
                        0o660
                    }
                }
            }
            (Some(_), _) => {
                errors.push(err(
                    &format!("{key}.mode"),
                    "only unix: listeners take a file mode",
                    Some(listeners_source.clone()),
                ));
                0o660
            }
            (None, _) => 0o660,
        };
        let group = match (&rl.group, &addr) {
            (None, _) => None,
            (Some(_), a) if !matches!(a, ListenAddr::Unix(_)) => {
                errors.push(err(
                    &format!("{key}.group"),
                    "only unix: listeners take a group",
                    Some(listeners_source.clone()),
                ));
                None
            }
            (Some(StringOrNumber::Number(n)), _) => Some(*n),
            (Some(StringOrNumber::String(s)), _) => match s.trim().parse::<u32>() {
                Ok(n) => Some(n),
                Err(_) => match nix::unistd::Group::from_name(s.trim()) {
                    Ok(Some(g)) => Some(g.gid.as_raw()),
                    _ => {
                        errors.push(err(
                            &format!("{key}.group"),
                            format!("no group named {s:?} on this host"),
                            Some(listeners_source.clone()),
                        ));
                        None
                    }
                },
            },
        };
        let alpn = match &rl.alpn {
            None => AlpnPolicy::Auto,
            Some(RawAlpn::Word(w)) if w == "auto" => AlpnPolicy::Auto,
            Some(RawAlpn::Word(w)) if w == "none" => AlpnPolicy::None,
            Some(RawAlpn::Word(w)) => {
                errors.push(err(
                    &format!("{key}.alpn"),
                    format!("{w:?}: write auto, none, or a list such as [h2, http/1.1]"),
                    Some(listeners_source.clone()),
                ));
                AlpnPolicy::Auto
            }
            Some(RawAlpn::List(list)) => {
                if list.is_empty() || list.iter().any(|p| p.is_empty() || p.len() > 255) {
                    errors.push(err(
                        &format!("{key}.alpn"),
                        "an ALPN list needs protocol names of 1 to 255 bytes",
                        Some(listeners_source.clone()),
                    ));
                }
                AlpnPolicy::List(list.iter().map(|p| p.as_bytes().to_vec()).collect())
            }
        };
        let tls_passthrough = match rl.tls_passthrough.as_deref().map(str::trim) {
            None | Some("auto") => true,
            Some("off") => false,
            Some(other) => {
                errors.push(err(
                    &format!("{key}.tls_passthrough"),
                    format!("{other:?}: write auto or off"),
                    Some(listeners_source.clone()),
                ));
                true
            }
        };
        let present_client_cert = match &addr {
            ListenAddr::Systemd(_) => rl.present_client_cert,
            a => Some(rl.present_client_cert.unwrap_or(a.is_local())),
        };
        listeners.push(ListenerConfig {
            name,
            addr,
            allowed_clients,
            mode,
            group,
            alpn,
            present_client_cert,
            tls_passthrough,
        });
    }

    // A master address that is one of our own listeners would make the proxy dial itself.
    if !host.is_empty() {
        let master_ips: Vec<IpAddr> = match parse_host_ip(&host) {
            Some(ip) => vec![ip],
            None if host.eq_ignore_ascii_case("localhost") => {
                vec![
                    Ipv4Addr::LOCALHOST.into(),
                    std::net::Ipv6Addr::LOCALHOST.into(),
                ]
            }
            None => vec![],
        };
        for (i, lc) in listeners.iter().enumerate() {
            if let ListenAddr::Tcp(a) = &lc.addr {
                if a.port() != port || a.port() == 0 {
                    continue;
                }
                let hit = master_ips.iter().any(|ip| {
                    *ip == a.ip()
                        || (a.ip().is_unspecified() && (ip.is_loopback() || ip.is_unspecified()))
                });
                if hit {
                    errors.push(err(
                        "master_host",
                        format!(
                            "{host}:{port} is the address of this proxy's own listener {:?} (listeners[{i}]); point master_host/master_port at the real master (the agent.yaml saved before the agent was pointed at the proxy)",
                            lc.name
                        ),
                        Some(src("master_host")),
                    ));
                }
            }
        }
    }

    let tm = &raw.timeouts;
    let d = |v: Option<HumanDuration>, dflt: Duration| v.map_or(dflt, |h| h.0);
    let timeouts = Timeouts {
        connect: d(tm.connect, DEFAULT_TIMEOUTS.connect),
        handshake: d(tm.handshake, DEFAULT_TIMEOUTS.handshake),
        idle: d(tm.idle, DEFAULT_TIMEOUTS.idle),
        close: d(tm.close, DEFAULT_TIMEOUTS.close),
        shutdown: d(tm.shutdown, DEFAULT_TIMEOUTS.shutdown),
    };
    for (k, v) in [
        ("timeouts.connect", timeouts.connect),
        ("timeouts.handshake", timeouts.handshake),
        ("timeouts.idle", timeouts.idle),
        ("timeouts.close", timeouts.close),
    ] {
        if v.is_zero() {
            errors.push(err(k, "must be longer than 0s", Some(src(k))));
        }
    }

    let max_connections = raw.max_connections.unwrap_or(DEFAULT_MAX_CONNECTIONS);
    if max_connections == 0 {
        errors.push(err(
            "max_connections",
            "must be at least 1",
            Some(src("max_connections")),
        ));
    }

    let admin = match raw
        .admin
        .listen
        .as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        None => None,
        Some(a) => {
            let allowed = raw.admin.allowed_clients.as_ref().map(|l| {
                parse_cidrs(
                    "admin.allowed_clients",
                    l,
                    &src("admin.allowed_clients"),
                    &mut errors,
                )
            });
            match ListenAddr::parse(a) {
                Ok(ListenAddr::Tcp(sa)) => {
                    if !sa.ip().is_loopback() && allowed.as_ref().is_none_or(|l| l.is_empty()) {
                        errors.push(err(
                            "admin.allowed_clients",
                            format!("admin.listen {sa} is reachable from other hosts; list the networks that may scrape it"),
                            Some(src("admin.listen")),
                        ));
                    }
                    if listeners
                        .iter()
                        .any(|l| l.addr == ListenAddr::Tcp(sa) && sa.port() != 0)
                    {
                        errors.push(err(
                            "admin.listen",
                            format!("{sa} is also a proxy listener"),
                            Some(src("admin.listen")),
                        ));
                    }
                    Some(AdminConfig {
                        listen: sa,
                        allowed_clients: allowed,
                    })
                }
                Ok(_) => {
                    errors.push(err(
                        "admin.listen",
                        "must be a TCP HOST:PORT",
                        Some(src("admin.listen")),
                    ));
                    None
                }
                Err(e) => {
                    errors.push(err("admin.listen", e, Some(src("admin.listen"))));
                    None
                }
            }
        }
    };

    let format = match raw.log.format.as_deref().map(str::trim) {
        None | Some("text") => LogFormat::Text,
        Some("json") => LogFormat::Json,
        Some(other) => {
            errors.push(err(
                "log.format",
                format!("{other:?}: write text or json"),
                Some(src("log.format")),
            ));
            LogFormat::Text
        }
    };
    let level = raw
        .log
        .level
        .clone()
        .unwrap_or_else(|| DEFAULT_LOG_LEVEL.into());
    if tracing_subscriber::EnvFilter::try_new(&level).is_err() {
        errors.push(err(
            "log.level",
            format!("{level:?}: write error, warn, info, debug or trace"),
            Some(src("log.level")),
        ));
    }

    if !errors.is_empty() {
        return Err(ConfigErrors(errors));
    }
    Ok(Config {
        master: MasterConfig {
            host,
            port,
            port_source,
        },
        tls: TlsSettings {
            enabled,
            skip_verify,
            master_cert,
            master_cert_name,
            client_cert,
            client_key,
            post_quantum: raw.tls.post_quantum.unwrap_or(true),
        },
        listeners,
        timeouts,
        max_connections,
        admin,
        log: LogConfig {
            format,
            level,
            access: raw.log.access.unwrap_or(true),
        },
        config_file: l.config_file.clone(),
        agent_config: l.agent_config.clone(),
        keys: key_values(&l.raw),
    })
}

// === `det-tls-proxy config` ===

/// One line per effective key: `key = value  (source)`.
pub fn describe(l: &Loaded, config: Option<&Config>) -> String {
    let mut out = String::new();
    let value = Value::serialize(&l.raw).unwrap_or_else(|_| Value::from(Dict::new()));
    let mut rows = Vec::new();
    flatten("", &value, &mut rows);
    // Rows come sorted (the raw value is a BTreeMap) and master_port is always one of them.
    for (key, v) in rows {
        if key == "master_port" {
            // Its default depends on TLS, so the validated value tells it best.
            push_port(&mut out, l, config);
            continue;
        }
        let json = serde_json::to_string(&v).unwrap_or_else(|_| "?".into());
        out.push_str(&format!("{key} = {json}  ({})\n", l.source_of(&key)));
    }
    out
}

fn push_port(out: &mut String, l: &Loaded, config: Option<&Config>) {
    match (l.raw.master_port, config) {
        (Some(p), _) => out.push_str(&format!(
            "master_port = {p}  ({})\n",
            l.source_of("master_port")
        )),
        (None, Some(c)) => out.push_str(&format!(
            "master_port = {}  ({})\n",
            c.master.port, c.master.port_source
        )),
        (None, None) => out.push_str("master_port = null  (default)\n"),
    }
}

/// The merged value of every key, one row per key; list items are spelled `listeners[0].alpn`.
fn key_values(raw: &RawConfig) -> BTreeMap<String, String> {
    let mut rows = BTreeMap::new();
    if let Ok(v) = serde_json::to_value(raw) {
        json_rows("", &v, &mut rows);
    }
    rows
}

fn json_rows(prefix: &str, v: &serde_json::Value, rows: &mut BTreeMap<String, String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, v) in m {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                json_rows(&key, v, rows);
            }
        }
        serde_json::Value::Array(items) if items.iter().all(|i| i.is_object()) => {
            for (i, item) in items.iter().enumerate() {
                json_rows(&format!("{prefix}[{i}]"), item, rows);
            }
        }
        other => {
            rows.insert(prefix.to_string(), other.to_string());
        }
    }
}

/// The keys whose merged value differs between two loads (a key present in only one counts).
pub fn changed_keys(old: &Config, new: &Config) -> Vec<String> {
    let mut keys: Vec<String> = old
        .keys
        .iter()
        .filter(|(k, v)| new.keys.get(*k) != Some(v))
        .map(|(k, _)| k.clone())
        .collect();
    keys.extend(
        new.keys
            .keys()
            .filter(|k| !old.keys.contains_key(*k))
            .cloned(),
    );
    keys.sort();
    keys.dedup();
    keys
}

/// Every key the file schema has, list items as `listeners[].alpn`: read off the schema
/// types themselves, so a key added there shows up here (and in the reload test) with no
/// second list to keep.
pub fn schema_keys() -> Vec<String> {
    let sample = RawConfig {
        listeners: Some(vec![RawListener::default()]),
        ..RawConfig::default()
    };
    let mut rows = BTreeMap::new();
    if let Ok(v) = serde_json::to_value(&sample) {
        json_rows("", &v, &mut rows);
    }
    rows.into_keys().map(|k| k.replace("[0]", "[]")).collect()
}

fn flatten(prefix: &str, v: &Value, rows: &mut Vec<(String, serde_json::Value)>) {
    match v {
        Value::Dict(_, d) => {
            for (k, v) in d {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&key, v, rows);
            }
        }
        other => {
            let j = serde_json::to_value(other).unwrap_or(serde_json::Value::Null);
            rows.push((prefix.to_string(), j));
        }
    }
}
