//! The one table of keys that other sources can set: each key's environment variable, global
//! flag and whether an imported agent.yaml supplies it. The environment layer, the flags
//! (`cli.rs`) and the agent.yaml import are all read off this table, so a key is declared once.
//! Keys only the file can set need no row: the file schema (`raw.rs`) declares them.

use figment::value::Value;

use super::raw::RawListener;

/// How a variable's or flag's text becomes a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueKind {
    Str,
    Path,
    Port,
    Bool,
    /// Comma-separated in the environment, repeated as a flag; each address becomes a
    /// listener named after it, replacing the file's list.
    Listeners,
    /// A list of strings: comma-separated in the environment, repeated (or comma-separated)
    /// as a flag; replaces the file's list.
    List,
}

/// One key and the sources besides the file that set it.
#[derive(Debug)]
pub struct KeyDecl {
    /// The dotted key in the YAML file.
    pub key: &'static str,
    pub kind: ValueKind,
    /// The environment variable that sets it.
    pub env: Option<&'static str>,
    /// The global flag that sets it, without the leading `--`.
    pub flag: Option<&'static str>,
    /// Taken from an imported agent.yaml (`agent_config`).
    pub agent: bool,
    /// The flag's value name and help line.
    pub value_name: &'static str,
    pub help: &'static str,
}

/// The variable naming the proxy's own file (not a key: it says which file is a layer).
pub(crate) const CONFIG_ENV: &str = "DET_TLS_PROXY_CONFIG";

/// Who reads a key besides the file: the agent too (it reads the same variable and flag, and
/// an imported agent.yaml supplies the key), or only the proxy.
#[derive(Clone, Copy)]
enum Owner {
    Agent,
    Proxy,
}

const fn row(
    owner: Owner,
    key: &'static str,
    kind: ValueKind,
    env: &'static str,
    flag: Option<&'static str>,
    value_name: &'static str,
    help: &'static str,
) -> KeyDecl {
    KeyDecl {
        key,
        kind,
        env: Some(env),
        flag,
        agent: matches!(owner, Owner::Agent),
        value_name,
        help,
    }
}

use Owner::{Agent, Proxy};
use ValueKind::{Bool, List, Listeners, Path, Port, Str};

/// The agent's own names first (the same variables and flags the agent reads), then ours.
#[rustfmt::skip]
pub const KEYS: &[KeyDecl] = &[
    row(Agent, "master_host", Str, "DET_MASTER_HOST", Some("master-host"), "HOST",
        "The master's DNS name or IP address."),
    row(Agent, "master_port", Port, "DET_MASTER_PORT", Some("master-port"), "PORT",
        "The master's port (default 8443 with TLS, 8080 without)."),
    row(Agent, "security.tls.enabled", Bool, "DET_SECURITY_TLS_ENABLED", Some("security-tls-enabled"), "BOOL",
        "Speak TLS to the master (default true)."),
    row(Agent, "security.tls.skip_verify", Bool, "DET_SECURITY_TLS_SKIP_VERIFY", Some("security-tls-skip-verify"), "BOOL",
        "Encrypt but do not verify the master's certificate."),
    row(Agent, "security.tls.master_cert", Path, "DET_SECURITY_TLS_MASTER_CERT", Some("security-tls-master-cert"), "FILE",
        "PEM bundle of the master's certificate chain; replaces the system roots."),
    row(Agent, "security.tls.master_cert_name", Str, "DET_SECURITY_TLS_MASTER_CERT_NAME", Some("security-tls-master-cert-name"), "NAME",
        "Name sent as SNI and checked in the master's certificate."),
    row(Agent, "security.tls.client_cert", Path, "DET_SECURITY_TLS_CLIENT_CERT", Some("security-tls-client-cert"), "FILE",
        "Client certificate for mutual TLS."),
    row(Agent, "security.tls.client_key", Path, "DET_SECURITY_TLS_CLIENT_KEY", Some("security-tls-client-key"), "FILE",
        "Private key of the client certificate."),
    row(Proxy, "security.tls.master_cert_sha256", List, "DET_SECURITY_TLS_MASTER_CERT_SHA256", Some("security-tls-master-cert-sha256"), "SHA256",
        "Accept the master only if its chain holds a certificate with this SHA-256 fingerprint (repeatable)."),
    row(Proxy, "security.tls.crl", List, "DET_SECURITY_TLS_CRL", Some("security-tls-crl"), "FILE",
        "A PEM or DER certificate revocation list checked against the master's chain (repeatable)."),
    row(Proxy, "upstream_proxy", Str, "DET_TLS_PROXY_UPSTREAM_PROXY", Some("upstream-proxy"), "URL",
        "HTTP proxy to tunnel to the master through (http://[user:pass@]host:port, or none); default: HTTPS_PROXY."),
    row(Proxy, "upstream_proxy_credentials", Path, "DET_TLS_PROXY_UPSTREAM_PROXY_CREDENTIALS", Some("upstream-proxy-credentials"), "FILE",
        "File holding USER:PASSWORD for upstream_proxy; a relative path is under $CREDENTIALS_DIRECTORY (systemd's LoadCredential=)."),
    row(Proxy, "upstream_no_proxy", List, "DET_TLS_PROXY_UPSTREAM_NO_PROXY", Some("upstream-no-proxy"), "HOSTS",
        "Masters reached directly despite upstream_proxy: host suffixes, IPs, CIDRs or * (repeatable); default: NO_PROXY."),
    row(Proxy, "agent_config", Path, "DET_TLS_PROXY_AGENT_CONFIG", None, "FILE",
        "A Determined agent.yaml to import master_host, master_port and security.tls.* from."),
    row(Proxy, "listeners", Listeners, "DET_TLS_PROXY_LISTEN", Some("listen"), "ADDR",
        "Listen address (repeatable): HOST:PORT, [v6]:PORT, unix:/path or systemd:NAME; replaces the file's listeners."),
    row(Proxy, "identity.container_api", Path, "DET_TLS_PROXY_IDENTITY_CONTAINER_API", None, "SOCKET",
        "The container runtime's API socket (Docker Engine API), to name clients on container bridges."),
    row(Proxy, "admin.listen", Str, "DET_TLS_PROXY_ADMIN_LISTEN", Some("admin-listen"), "ADDR",
        "Admin endpoint address (/healthz, /readyz, /metrics)."),
    row(Proxy, "log.format", Str, "DET_TLS_PROXY_LOG_FORMAT", None, "FORMAT", "text or json."),
    row(Proxy, "log.level", Str, "DET_TLS_PROXY_LOG_LEVEL", None, "LEVEL", "error, warn, info, debug or trace."),
];

/// The conventional variables other programs on the host read too. They form a layer below
/// the proxy's file, so the file, the `DET_*` variables and the flags override them.
/// `DET_MASTER` is the URL tasks and the CLI are given (`https://host:port`).
pub(crate) const DET_MASTER_ENV: &str = "DET_MASTER";
/// The proxy variables, in the order the agent's Go HTTP client reads them (upper case
/// first): `HTTPS_PROXY` for a TLS master, `HTTP_PROXY` for a plaintext one.
pub(crate) const HTTPS_PROXY_ENV: [&str; 2] = ["HTTPS_PROXY", "https_proxy"];
pub(crate) const HTTP_PROXY_ENV: [&str; 2] = ["HTTP_PROXY", "http_proxy"];
pub(crate) const NO_PROXY_ENV: [&str; 2] = ["NO_PROXY", "no_proxy"];
/// Where systemd puts the files of `LoadCredential=`.
pub(crate) const CREDENTIALS_DIRECTORY_ENV: &str = "CREDENTIALS_DIRECTORY";

/// The row for a key, if it has one.
pub(crate) fn decl(key: &str) -> Option<&'static KeyDecl> {
    KEYS.iter().find(|d| d.key == key)
}

pub(crate) fn parse_bool(s: &str) -> Option<bool> {
    match s.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Some(true),
        "false" | "0" | "no" | "off" => Some(false),
        _ => None,
    }
}

/// Listeners named after their addresses, as the environment and the flags give them.
pub(crate) fn listeners_value(addrs: &[String]) -> Value {
    let list: Vec<RawListener> = addrs
        .iter()
        .map(|a| a.trim())
        .filter(|a| !a.is_empty())
        .map(|a| RawListener {
            name: Some(a.to_string()),
            listen: a.to_string(),
            ..RawListener::default()
        })
        .collect();
    Value::serialize(list).unwrap_or_else(|_| Value::from(Vec::<Value>::new()))
}

impl ValueKind {
    /// The value one variable's (or flag's) text stands for, or what is wrong with it.
    pub fn value(self, raw: &str) -> Result<Value, String> {
        match self {
            Str | Path => Ok(Value::from(raw.to_string())),
            Port => raw
                .trim()
                .parse::<u16>()
                .map(Value::from)
                .map_err(|_| format!("{raw:?} is not a port number (1-65535)")),
            Bool => parse_bool(raw)
                .map(Value::from)
                .ok_or_else(|| format!("{raw:?} is not a boolean (true or false)")),
            Listeners => {
                let addrs: Vec<String> = raw.split(',').map(str::to_string).collect();
                Ok(listeners_value(&addrs))
            }
            List => Ok(list_value(&[raw.to_string()])),
        }
    }
}

/// A list of strings from comma-separated texts (empty items dropped).
pub(crate) fn list_value(texts: &[String]) -> Value {
    let items: Vec<Value> = texts
        .iter()
        .flat_map(|t| t.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(|t| Value::from(t.to_string()))
        .collect();
    Value::from(items)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_row_names_a_key_of_the_schema_once() {
        let schema = crate::config::schema_keys();
        let mut seen = std::collections::HashSet::new();
        for d in KEYS {
            let listed = schema
                .iter()
                .any(|k| k == d.key || k.starts_with(&format!("{}[]", d.key)));
            assert!(listed, "{} is not a key of the file schema", d.key);
            assert!(seen.insert(d.key), "{} declared twice", d.key);
        }
    }

    #[test]
    fn variables_and_flags_follow_the_agents_naming() {
        for d in KEYS {
            if let Some(env) = d.env {
                assert!(env.starts_with("DET_"), "{env}");
                assert_eq!(env, env.to_ascii_uppercase());
            }
            if d.agent {
                // The agent's names: DET_ + the key in upper case, --the-key-with-dashes.
                let spelled = d.key.replace('.', "_").to_ascii_uppercase();
                assert_eq!(d.env.unwrap(), format!("DET_{spelled}"));
                assert_eq!(d.flag.unwrap(), d.key.replace(['.', '_'], "-"));
            }
        }
    }

    #[test]
    fn values_parse_by_kind() {
        assert_eq!(Port.value("8443").unwrap(), Value::from(8443u16));
        assert!(Port.value("0x1").unwrap_err().contains("not a port number"));
        assert_eq!(Bool.value("off").unwrap(), Value::from(false));
        assert!(Bool.value("maybe").unwrap_err().contains("not a boolean"));
        let l = Listeners.value("127.0.0.1:1, unix:/run/x.sock").unwrap();
        let list: Vec<RawListener> = l.deserialize().unwrap();
        assert_eq!(list.len(), 2);
        assert_eq!(list[1].name.as_deref(), Some("unix:/run/x.sock"));
        let pins: Vec<String> = List.value("ab, ,cd").unwrap().deserialize().unwrap();
        assert_eq!(pins, ["ab", "cd"]);
    }
}
