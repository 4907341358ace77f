//! `det-tls-proxy config`, and the key rows a reload compares to say what changed.

use std::collections::BTreeMap;

use figment::value::{Dict, Value};

use super::layers::Loaded;
use super::raw::RawConfig;
use super::Config;

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
        let mut json = serde_json::to_string(&v).unwrap_or_else(|_| "?".into());
        if key == "upstream_proxy" {
            // A proxy URL may carry a password; `config` output is often pasted into tickets.
            json = crate::egress::redact(&json);
        }
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
pub(crate) fn key_values(raw: &RawConfig) -> BTreeMap<String, String> {
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
pub(crate) fn changed_keys(old: &Config, new: &Config) -> Vec<String> {
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
    // The credentials file's path may stay while what it holds changes.
    let from_file = |c: &Config| {
        c.egress
            .proxy
            .as_ref()
            .filter(|p| p.auth_file.is_some())
            .map(|p| p.auth.clone())
    };
    if from_file(old) != from_file(new) {
        keys.push("upstream_proxy_credentials".to_string());
    }
    keys.sort();
    keys.dedup();
    keys
}

#[cfg(any(test, feature = "test-util"))]
/// Every key the file schema has, list items as `listeners[].alpn`: read off the schema
/// types themselves, so a key added there shows up here (and in the reload test) with no
/// second list to keep.
pub fn schema_keys() -> Vec<String> {
    let sample = RawConfig {
        listeners: Some(vec![super::raw::RawListener::default()]),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::layers::{assemble_str, Purpose};
    use crate::config::validate;

    fn config(yaml: &str) -> Config {
        validate(&assemble_str(yaml).unwrap(), Purpose::Show).unwrap()
    }

    #[test]
    fn changed_keys_names_list_items_by_index() {
        let a = config("master_host: det\nlisteners: [{listen: \"127.0.0.1:1\", allowed_clients: [127.0.0.0/8]}]\n");
        let b = config("master_host: det\nlisteners: [{listen: \"127.0.0.1:1\", allowed_clients: [10.0.0.0/8]}]\n");
        assert_eq!(changed_keys(&a, &b), ["listeners[0].allowed_clients"]);
        assert!(changed_keys(&a, &a).is_empty());
    }

    #[test]
    fn the_schema_keys_include_list_items_and_nested_sections() {
        let keys = schema_keys();
        for k in ["master_host", "security.tls.client_key", "listeners[].alpn", "log.access"] {
            assert!(keys.iter().any(|x| x == k), "{k} missing from {keys:?}");
        }
    }
}
