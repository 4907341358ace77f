//! A configuration source under its own name (one environment variable, one flag, one
//! file), below every layer that builds one: figment's `Env` provider names only the prefix.

use figment::value::{Dict, Map, Value};
use figment::{Metadata, Profile, Provider};

use super::duplicates::first_duplicate;
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
/// a `listeners:` or `security:` block; refuse it instead, naming the key by its dotted path.
pub(super) fn refuse_duplicate_keys(text: &str, source: &str) -> Result<(), ConfigError> {
    let Some(dup) = first_duplicate(text) else {
        return Ok(());
    };
    let at = dup
        .at
        .map(|(line, column)| format!(", given again at line {line} column {column}"))
        .unwrap_or_default();
    Err(err(
        &dup.path,
        format!("duplicate key{at}: a key may appear only once; merge the two entries"),
        Some(source.to_string()),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_duplicate_key_is_refused_by_its_path_and_place() {
        let text = "security:\n  tls: {ca_cert: /a.pem}\n  tls: {ca_cert: /b.pem}\n";
        let e = refuse_duplicate_keys(text, "/etc/x.yaml").unwrap_err();
        assert_eq!(
            e.to_string(),
            "security.tls: duplicate key, given again at line 3 column 3: a key may appear only \
             once; merge the two entries (from /etc/x.yaml)"
        );
        assert!(refuse_duplicate_keys("security: {tls: {}}\n", "x").is_ok());
    }
}
