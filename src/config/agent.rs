//! The `agent_config` import: a Determined agent.yaml supplies the keys the key table marks
//! `agent` (`master_host`, `master_port`, `security.tls.*`) and nothing else.

use std::path::Path;

use figment::providers::{Format, Yaml};
use figment::value::{Dict, Value};
use figment::Figment;

use super::keys::KEYS;
use super::named::{insert_dotted, refuse_duplicate_keys, Named};
use super::{err, ConfigError};

/// A copy of `v` without the tags of the figment it was read through, so the layer it is put
/// in becomes its source.
fn untagged(v: &Value) -> Value {
    Value::serialize(v).unwrap_or_else(|_| v.clone())
}

/// Reads the keys the table marks `agent` (`master_host`, `master_port`, `security.tls.*`)
/// from a Determined agent.yaml and nothing else: the agent's other keys are its own business.
pub(super) fn agent_layer(path: &Path) -> Result<(Named, bool), ConfigError> {
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
    let Value::Dict(_, top) = doc else {
        return Err(err(
            "agent_config",
            format!("{} does not hold a YAML mapping", path.display()),
            source,
        ));
    };
    let mut data = Dict::new();
    for d in KEYS.iter().filter(|d| d.agent) {
        let path: Vec<&str> = d.key.split('.').collect();
        let mut at = Some(&top);
        for part in &path[..path.len() - 1] {
            at = at.and_then(|t| t.get(*part)).and_then(|v| v.as_dict());
        }
        match at.and_then(|t| t.get(path[path.len() - 1])) {
            // The agent writes "" for an unset TLS setting; that means absent.
            Some(Value::String(_, s)) if s.is_empty() && d.key.starts_with("security.tls.") => {}
            Some(v) => insert_dotted(&mut data, &path, untagged(v)),
            None => {}
        }
    }
    let has_port = data.contains_key("master_port");
    Ok((
        Named {
            name: path.display().to_string(),
            data,
        },
        has_port,
    ))
}


#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_agent_import_takes_only_the_agents_keys_and_empty_tls_settings_mean_unset() {
        let dir = tempfile::tempdir().unwrap();
        let agent = dir.path().join("agent.yaml");
        std::fs::write(
            &agent,
            "master_host: det\nagent_id: a1\ncontainer_master_host: 172.17.0.1\nsecurity:\n  tls:\n    enabled: true\n    master_cert: \"\"\n    master_cert_name: det-master\n",
        )
        .unwrap();
        let (layer, has_port) = agent_layer(&agent).unwrap();
        assert!(!has_port);
        let mut keys: Vec<String> = layer.data.keys().cloned().collect();
        keys.sort();
        assert_eq!(keys, ["master_host", "security"]);
        let tls = layer.data["security"].as_dict().unwrap()["tls"].as_dict().unwrap().clone();
        let mut tls_keys: Vec<&String> = tls.keys().collect();
        tls_keys.sort();
        assert_eq!(tls_keys, ["enabled", "master_cert_name"]);
    }
}
