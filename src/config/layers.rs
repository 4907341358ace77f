//! The layers, later wins: built-in defaults, `DET_MASTER`, an imported agent.yaml, the
//! proxy variables other programs read too (`HTTPS_PROXY`, `NO_PROXY`), the proxy's file, the
//! `DET_*` environment, the flags. Each variable and flag is its own figment source, so every
//! value keeps the name of the layer it came from.

use std::path::PathBuf;

use figment::providers::{Format, Yaml};
use figment::value::{Dict, Value};
use figment::{Figment, Metadata};

use super::agent::agent_layer;
use super::named::{refuse_duplicate_keys, Named};
use super::conventional::{det_master_layer, proxy_env_layers};
use super::keys::{
    decl, list_value, listeners_value, KeyDecl, ValueKind, CONFIG_ENV, CREDENTIALS_DIRECTORY_ENV, KEYS,
};
use super::raw::{defaults, RawConfig};
use super::{
    err, validate, Config, ConfigError, ConfigErrors, DEFAULT_CONFIG_PATH, DEFAULT_SOURCE,
};

// === Layers ===

/// Values given on the command line. Every field is optional: `None` leaves the lower layers.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// `--config FILE`: which file is the proxy's own layer.
    pub config: Option<PathBuf>,
    /// Every key flag given, with its text (several for a repeated `--listen`), in the
    /// order of [`KEYS`](super::KEYS).
    pub values: Vec<(&'static KeyDecl, Vec<String>)>,
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
        if name == CONFIG_ENV {
            config_path = Some((PathBuf::from(raw), name.clone()));
            continue;
        }
        let Some(d) = KEYS.iter().find(|d| d.env == Some(name.as_str())) else {
            if name.starts_with("DET_TLS_PROXY_") {
                let names: Vec<&str> = std::iter::once(CONFIG_ENV)
                    .chain(KEYS.iter().filter_map(|d| d.env))
                    .filter(|n| n.starts_with("DET_TLS_PROXY_"))
                    .collect();
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
        match d.kind.value(raw) {
            Ok(value) => layers.push(Named::new(name.clone(), d.key, value)),
            Err(e) => errors.push(err(d.key, e, Some(name.clone()))),
        }
    }
    (layers, config_path)
}

/// One layer per flag given, named after the flag.
fn flag_layers(o: &Overrides) -> Vec<Named> {
    let mut v = Vec::new();
    for (d, values) in &o.values {
        let flag = format!("--{}", d.flag.unwrap_or(d.key));
        let value = match (d.kind, values.as_slice()) {
            (ValueKind::Listeners, all) => Ok(listeners_value(all)),
            (ValueKind::List, all) => Ok(list_value(all)),
            (kind, [one, ..]) => kind.value(one),
            (_, []) => continue,
        };
        // clap has already checked the text against the kind.
        if let Ok(value) = value {
            v.push(Named::new(flag, d.key, value));
        }
    }
    v
}

/// The assembled layers, kept for `config` and for naming sources in errors.
pub struct Loaded {
    pub figment: Figment,
    pub raw: RawConfig,
    pub config_file: Option<PathBuf>,
    pub agent_config: Option<PathBuf>,
    pub(crate) agent_has_port: bool,
    /// `$CREDENTIALS_DIRECTORY` (systemd's `LoadCredential=`): where a relative
    /// `upstream_proxy_credentials` is.
    pub(crate) credentials_directory: Option<PathBuf>,
}

impl Loaded {
    /// The name of the layer that set `key`: a file path, a variable, a flag, or `default`.
    pub(crate) fn source_of(&self, key: &str) -> String {
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
pub(crate) fn assemble(vars: &[(String, String)], flags: &Overrides) -> Result<Loaded, ConfigErrors> {
    assemble_inner(vars, flags, None)
}

#[cfg(any(test, feature = "test-util"))]
/// Assembles the layers with `yaml` as the proxy's file (no environment, no flags): for
/// property tests and fuzzing of the configuration parser.
pub fn assemble_str(yaml: &str) -> Result<Loaded, ConfigErrors> {
    assemble_inner(&[], &Overrides::default(), Some(yaml))
}

pub(super) fn assemble_inner(
    vars: &[(String, String)],
    flags: &Overrides,
    text: Option<&str>,
) -> Result<Loaded, ConfigErrors> {
    let mut errors = Vec::new();
    let (env, env_config) = env_layers(vars, &mut errors);
    let det_master = det_master_layer(vars, &mut errors);
    let (config_file, file_figment) = match text {
        Some(text) => (None, text_layer(text, &mut errors)),
        None => file_layer(flags, env_config, &mut errors),
    };
    if !errors.is_empty() {
        return Err(ConfigErrors(errors));
    }
    let agent_path = agent_config_path(&file_figment, &env)?;

    let default_data = match Value::serialize(defaults()) {
        Ok(Value::Dict(_, d)) => d,
        _ => Dict::new(),
    };
    let mut figment = Figment::new().merge(Named {
        name: DEFAULT_SOURCE.to_string(),
        data: default_data,
    });
    // DET_MASTER is the lowest of the given layers: an imported agent.yaml says more
    // precisely what the agent itself uses.
    if let Some(layer) = det_master {
        figment = figment.merge(layer);
    }
    let mut agent_has_port = false;
    if let Some(path) = &agent_path {
        let (layer, has_port) = agent_layer(path)?;
        agent_has_port = has_port;
        figment = figment.merge(layer);
    }
    // Which proxy variable applies depends on whether TLS is on, which any layer may say.
    let upper = env.into_iter().chain(flag_layers(flags)).collect::<Vec<_>>();
    let tls_enabled = upper
        .iter()
        .fold(figment.clone().merge(file_figment.clone()), |f, l| f.merge(l.clone()))
        .extract_inner::<bool>("security.tls.enabled")
        .unwrap_or(true);
    for layer in proxy_env_layers(vars, tls_enabled) {
        figment = figment.merge(layer);
    }
    figment = figment.merge(file_figment);
    for layer in upper {
        figment = figment.merge(layer);
    }
    let raw: RawConfig = figment.extract().map_err(figment_errors)?;
    Ok(Loaded {
        figment,
        raw,
        config_file,
        agent_config: agent_path,
        agent_has_port,
        credentials_directory: vars
            .iter()
            .find(|(k, v)| k == CREDENTIALS_DIRECTORY_ENV && !v.is_empty())
            .map(|(_, v)| PathBuf::from(v)),
    })
}

/// The proxy's own file: `--config`, then `DET_TLS_PROXY_CONFIG`, then the default path when
/// it exists. Read here so an unreadable file is reported as such, not as "missing".
fn file_layer(
    flags: &Overrides,
    env_config: Option<(PathBuf, String)>,
    errors: &mut Vec<ConfigError>,
) -> (Option<PathBuf>, Figment) {
    let (config_file, explicit) = match (&flags.config, env_config) {
        (Some(p), _) => (Some(p.clone()), Some("--config".to_string())),
        (None, Some((p, var))) => (Some(p), Some(var)),
        (None, None) => {
            let p = PathBuf::from(DEFAULT_CONFIG_PATH);
            (p.exists().then_some(p), None)
        }
    };
    let Some(path) = &config_file else {
        return (None, Figment::new());
    };
    let cannot = |detail: String| err("config", detail, explicit.clone());
    match std::fs::metadata(path) {
        Ok(m) if m.is_file() => match std::fs::read_to_string(path) {
            Ok(text) => {
                if let Err(e) = refuse_duplicate_keys(&text, &path.display().to_string()) {
                    errors.push(e);
                }
            }
            Err(e) => errors.push(cannot(format!("cannot read {}: {e}", path.display()))),
        },
        Ok(_) => errors.push(cannot(format!("{} is not a regular file", path.display()))),
        Err(e) => errors.push(cannot(format!("cannot read {}: {e}", path.display()))),
    }
    let figment = Figment::from(Yaml::file_exact(path));
    (config_file, figment)
}

/// YAML text standing in for the proxy's file (property tests, fuzzing).
fn text_layer(text: &str, errors: &mut Vec<ConfigError>) -> Figment {
    if let Err(e) = refuse_duplicate_keys(text, "the given text") {
        errors.push(e);
    }
    Figment::from(Yaml::string(text))
}

/// `agent_config` may come from the file or the environment (or a flag, later); it decides
/// a layer below them, so it is read first.
fn agent_config_path(file: &Figment, env: &[Named]) -> Result<Option<PathBuf>, ConfigErrors> {
    let probe = env
        .iter()
        .fold(Figment::new().merge(file.clone()), |f, l| f.merge(l.clone()));
    match probe.extract_inner::<Option<PathBuf>>("agent_config") {
        Ok(p) => Ok(p),
        Err(e) if e.missing() => Ok(None),
        Err(e) => Err(figment_errors(e)),
    }
}

/// The `log.format` the layers ask for, read even when the configuration is otherwise broken,
/// so its errors can be printed in the format the operator's log pipeline expects.
pub(crate) fn log_format_hint(vars: &[(String, String)], flags: &Overrides) -> Option<String> {
    let env = |name: &str| vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    if let Some(f) = decl("log.format").and_then(|d| d.env).and_then(env) {
        return Some(f);
    }
    let path = flags
        .config
        .clone()
        .or_else(|| env(CONFIG_ENV).map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG_PATH));
    Figment::from(Yaml::file_exact(path))
        .extract_inner::<String>("log.format")
        .ok()
}

/// This process's environment, as the layers read it (variables that are not UTF-8 are
/// skipped).
pub(crate) fn env_vars() -> Vec<(String, String)> {
    std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .collect()
}

/// Loads and validates the configuration from this process's environment and the flags.
pub fn load(flags: &Overrides, purpose: Purpose) -> Result<Config, ConfigErrors> {
    validate(&assemble(&env_vars(), flags)?, purpose)
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::config::keys::decl;

    /// An environment given as pairs, for the layers' tests.
    pub(in crate::config) fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn each_variable_of_the_table_is_its_own_named_source() {
        let mut errors = Vec::new();
        let (layers, config) = env_layers(
            &vars(&[
                ("DET_MASTER_PORT", "8444"),
                ("DET_AGENT_ID", "ignored"),
                ("DET_TLS_PROXY_CONFIG", "/etc/x.yaml"),
            ]),
            &mut errors,
        );
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(layers.len(), 1);
        assert_eq!(layers[0].name, "DET_MASTER_PORT");
        assert_eq!(config.map(|(p, _)| p), Some(PathBuf::from("/etc/x.yaml")));
    }

    #[test]
    fn an_unknown_proxy_variable_or_a_bad_value_is_an_error() {
        let mut errors = Vec::new();
        env_layers(
            &vars(&[("DET_TLS_PROXY_LISTN", "x"), ("DET_MASTER_PORT", "http")]),
            &mut errors,
        );
        let keys: Vec<&str> = errors.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(keys, ["DET_TLS_PROXY_LISTN", "master_port"]);
        assert!(errors[0].message.contains("DET_TLS_PROXY_LISTEN"), "{}", errors[0]);
        assert!(errors[1].message.contains("not a port number"), "{}", errors[1]);
    }

    #[test]
    fn flags_become_layers_named_after_the_flag() {
        let o = Overrides {
            config: None,
            values: vec![
                (decl("master_host").unwrap(), vec!["det".into()]),
                (decl("listeners").unwrap(), vec!["127.0.0.1:1".into(), "127.0.0.1:2".into()]),
            ],
        };
        let names: Vec<String> = flag_layers(&o).into_iter().map(|l| l.name).collect();
        assert_eq!(names, ["--master-host", "--listen"]);
        let loaded = assemble(&[], &o).unwrap();
        assert_eq!(loaded.raw.listeners.as_ref().map(Vec::len), Some(2));
        assert_eq!(loaded.source_of("master_host"), "--master-host");
    }
}
