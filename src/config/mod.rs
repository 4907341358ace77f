//! Configuration: figment layers (defaults, an imported agent.yaml, the proxy's file, the
//! environment, the flags) turned once into a typed, validated [`Config`]. Every value keeps
//! the name of the layer it came from, so each error and `det-tls-proxy config` can say where.

use std::fmt;

/// Used when neither `--config` nor `DET_TLS_PROXY_CONFIG` names a file and this one exists.
pub(crate) const DEFAULT_CONFIG_PATH: &str = "/etc/determined/tls-proxy.yaml";
/// The listener used when no layer names one.
pub(crate) const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
const DEFAULT_SOURCE: &str = "default";
/// Built-in values, used by the default layer and by validation when a layer sets a key to null.
mod agent;
mod conventional;
mod describe;
mod duplicates;
pub(crate) mod edit;
mod keys;
mod layers;
mod named;
mod raw;
mod typed;
mod validate;

pub(crate) use describe::key_values;
pub use describe::describe;
pub(crate) use describe::changed_keys;
#[cfg(any(test, feature = "test-util"))]
pub use describe::schema_keys;
pub use keys::KEYS;
pub(crate) use keys::{parse_bool, ValueKind};
#[cfg(any(test, feature = "test-util"))]
pub use layers::assemble_str;
pub use layers::{load, Loaded, Overrides, Purpose};
pub(crate) use layers::{assemble, env_vars, log_format_hint};
pub use typed::*;
pub(crate) use validate::is_master_address;
pub use validate::validate;
pub(crate) use validate::shared_client_cert_warnings;

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
