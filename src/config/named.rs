//! A configuration source under its own name (one environment variable, one flag, one
//! file), below every layer that builds one: figment's `Env` provider names only the prefix.

use figment::value::{Dict, Map, Value};
use figment::{Metadata, Profile, Provider};

use super::{err, ConfigError};

/// A provider holding one source's values under its own name (an environment variable, a
/// flag), because figment's own `Env` provider names only the prefix.
#[derive(Clone)]
pub(super) struct Named {
    pub(super) name: String,
    pub(super) data: Dict,
}

impl Named {
    pub(super) fn new(name: impl Into<String>, key: &str, value: Value) -> Self {
        let data = match figment::util::nest(key, value) {
            Value::Dict(_, d) => d,
            _ => Dict::new(),
        };
        Named {
            name: name.into(),
            data,
        }
    }

    /// One source setting several keys (`DET_MASTER` sets three).
    pub(super) fn with(name: impl Into<String>, values: Vec<(&str, Value)>) -> Self {
        let mut data = Dict::new();
        for (key, value) in values {
            let path: Vec<&str> = key.split('.').collect();
            insert_dotted(&mut data, &path, value);
        }
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

/// Sets `path` (a dotted key split at its dots) in `data`, creating the tables on the way.
pub(super) fn insert_dotted(data: &mut Dict, path: &[&str], value: Value) {
    match path {
        [] => {}
        [last] => {
            data.insert(last.to_string(), value);
        }
        [first, rest @ ..] => {
            let entry = data
                .entry(first.to_string())
                .or_insert_with(|| Value::from(Dict::new()));
            if let Value::Dict(_, inner) = entry {
                insert_dotted(inner, rest, value);
            }
        }
    }
}

/// YAML lets a key appear twice and figment keeps the last one whole, which can silently drop
/// a `listeners:` or `security:` block; refuse it instead.
pub(super) fn refuse_duplicate_keys(text: &str, source: &str) -> Result<(), ConfigError> {
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

