//! The variables other programs on an agent host read too, as layers: `DET_MASTER` (the URL
//! tasks and the CLI are given) below an imported agent.yaml, and `HTTPS_PROXY`/`HTTP_PROXY`
//! and `NO_PROXY` (as the agent's Go HTTP client reads them) below the proxy's file.

use figment::value::Value;

use super::keys::{list_value, DET_MASTER_ENV, HTTPS_PROXY_ENV, HTTP_PROXY_ENV, NO_PROXY_ENV};
use super::named::Named;
use super::{err, ConfigError, MasterConfig};

/// The first of `names` set to a non-empty value, as Go's HTTP client reads them.
fn first_set<'a>(vars: &'a [(String, String)], names: &[&str]) -> Option<(&'a str, &'a str)> {
    names.iter().find_map(|n| {
        vars.iter()
            .find(|(k, v)| k == n && !v.trim().is_empty())
            .map(|(k, v)| (k.as_str(), v.as_str()))
    })
}

/// `DET_MASTER` (`https://host:port`, the form tasks and the CLI are given) as `master_host`,
/// `master_port` and `security.tls.enabled`. A missing port takes the master's default for
/// the scheme; without a scheme only the host and port are set.
pub(super) fn det_master_layer(vars: &[(String, String)], errors: &mut Vec<ConfigError>) -> Option<Named> {
    let (name, text) = first_set(vars, &[DET_MASTER_ENV])?;
    match parse_det_master(text) {
        Ok((tls, host, port)) => {
            let mut values = vec![("master_host", Value::from(host))];
            if let Some(port) = port.or(tls.map(MasterConfig::default_port)) {
                values.push(("master_port", Value::from(port)));
            }
            if let Some(on) = tls {
                values.push(("security.tls.enabled", Value::from(on)));
            }
            Some(Named::with(name, values))
        }
        Err(e) => {
            errors.push(err(
                name,
                format!("{:?}: {e}", crate::egress::redact(text)),
                Some("environment".into()),
            ));
            None
        }
    }
}

/// `scheme://host[:port][/]` → (TLS on?, host without brackets, port).
pub(super) fn parse_det_master(text: &str) -> Result<(Option<bool>, String, Option<u16>), String> {
    let t = text.trim();
    let (tls, rest) = match t.split_once("://") {
        Some((scheme, rest)) => match scheme.to_ascii_lowercase().as_str() {
            "https" => (Some(true), rest),
            "http" => (Some(false), rest),
            other => return Err(format!("the scheme {other:?} is not http or https")),
        },
        None => (None, t),
    };
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    if !path.is_empty() {
        return Err("a master URL with a path cannot be proxied; write https://HOST:PORT".into());
    }
    if authority.contains('@') {
        return Err("a master URL carries no credentials; write https://HOST:PORT".into());
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (host, after) = v6.split_once(']').ok_or("an unclosed '[' in the host")?;
        (host, after.strip_prefix(':'))
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err("no host; write https://HOST:PORT".into());
    }
    let port = match port {
        Some(p) => match p.parse::<u16>() {
            Ok(p) if p > 0 => Some(p),
            _ => return Err(format!("{p:?} is not a port number (1-65535)")),
        },
        None => None,
    };
    Ok((tls, host.to_string(), port))
}

/// `HTTPS_PROXY` (or `HTTP_PROXY` for a plaintext master) and `NO_PROXY`, as the layers for
/// `upstream_proxy` and `upstream_no_proxy` below the proxy's file.
pub(super) fn proxy_env_layers(vars: &[(String, String)], tls_enabled: bool) -> Vec<Named> {
    let proxy_names = if tls_enabled {
        HTTPS_PROXY_ENV
    } else {
        HTTP_PROXY_ENV
    };
    let mut layers = Vec::new();
    if let Some((name, text)) = first_set(vars, &proxy_names) {
        layers.push(Named::new(name, "upstream_proxy", Value::from(text.trim().to_string())));
    }
    if let Some((name, text)) = first_set(vars, &NO_PROXY_ENV) {
        layers.push(Named::new(name, "upstream_no_proxy", list_value(&[text.to_string()])));
    }
    layers
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::layers::tests::vars;
    use crate::config::layers::{assemble, assemble_inner, Overrides};

    #[test]
    fn det_master_is_a_url_of_scheme_host_and_port() {
        assert_eq!(parse_det_master("https://det:8443").unwrap(), (Some(true), "det".into(), Some(8443)));
        assert_eq!(parse_det_master("http://[::1]/").unwrap(), (Some(false), "::1".into(), None));
        assert_eq!(parse_det_master("10.0.0.1:9").unwrap(), (None, "10.0.0.1".into(), Some(9)));
        for bad in ["ftp://x", "https://", "https://det:0", "https://det/api", "https://u:p@det"] {
            assert!(parse_det_master(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn det_master_yields_to_explicit_keys_and_sets_the_scheme_default_port() {
        let l = assemble(&vars(&[("DET_MASTER", "https://det.corp")]), &Overrides::default()).unwrap();
        assert_eq!(l.raw.master_port, Some(8443));
        assert_eq!(l.source_of("security.tls.enabled"), "DET_MASTER");
        let l = assemble(
            &vars(&[("DET_MASTER", "http://a:1"), ("DET_MASTER_HOST", "b"), ("DET_MASTER_PORT", "2")]),
            &Overrides::default(),
        )
        .unwrap();
        assert_eq!((l.raw.master_host.as_deref(), l.raw.master_port), (Some("b"), Some(2)));
        assert_eq!(l.raw.security.tls.enabled, Some(false));
        let Err(e) = assemble(&vars(&[("DET_MASTER", "https://u:secret@det")]), &Overrides::default()) else {
            panic!("credentials in DET_MASTER are refused");
        };
        assert_eq!(e.0[0].key, "DET_MASTER");
        assert!(!e.to_string().contains("secret"), "{e}");
    }

    #[test]
    fn the_proxy_variable_follows_the_masters_scheme_and_yields_to_the_file() {
        let both = [("HTTPS_PROXY", "http://s:1"), ("http_proxy", "http://p:2"), ("no_proxy", "a,b")];
        let l = assemble(&vars(&both), &Overrides::default()).unwrap();
        assert_eq!(l.raw.upstream_proxy.as_deref(), Some("http://s:1"));
        assert_eq!(l.source_of("upstream_proxy"), "HTTPS_PROXY");
        assert_eq!(l.raw.upstream_no_proxy, Some(vec!["a".to_string(), "b".to_string()]));
        let plain = [both.as_slice(), &[("DET_SECURITY_TLS_ENABLED", "false")]].concat();
        let l = assemble(&vars(&plain), &Overrides::default()).unwrap();
        assert_eq!(l.raw.upstream_proxy.as_deref(), Some("http://p:2"));
        let l = assemble_inner(&vars(&both), &Overrides::default(), Some("upstream_proxy: none\n")).unwrap();
        assert_eq!(l.raw.upstream_proxy.as_deref(), Some("none"));
    }
}
