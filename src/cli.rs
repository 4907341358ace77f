//! The command line: subcommands and the global flags, named as the agent names them.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::config::{parse_bool, Overrides};

fn bool_flag(s: &str) -> Result<bool, String> {
    parse_bool(s).ok_or_else(|| format!("{s:?} is not a boolean (true or false)"))
}

#[derive(Debug, Parser)]
#[command(
    name = "det-tls-proxy",
    version,
    about = "Plaintext in, verified TLS out: a per-host sidecar between Determined agents, log shippers, tasks and a TLS master",
    propagate_version = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub flags: Flags,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve (the default).
    Run,
    /// Dial the master once as `run` would and report what was found (exit 0 when it works).
    Check {
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Fetch the master's certificate chain, confirm its fingerprint, and write it to master_cert.
    Trust {
        /// The leaf's expected SHA-256 fingerprint (AB:CD:..., any case): confirms without a prompt.
        #[arg(long, value_name = "SHA256")]
        fingerprint: Option<String>,
        /// Confirm without a prompt (only on a terminal; scripts must give --fingerprint).
        #[arg(long)]
        yes: bool,
        /// Write here instead of security.tls.master_cert.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
        /// Replace an existing file with other contents.
        #[arg(long)]
        force: bool,
        /// Import the chain Determined's CLI stored for this master (default ~/.config/determined/certs.json).
        #[arg(long, value_name = "PATH", num_args = 0..=1, require_equals = true)]
        from_cli_store: Option<Option<PathBuf>>,
    },
    /// Print the effective configuration and where each value came from.
    Config,
    /// Run the whole path on loopback with no setup: stand-in master, proxy, HTTP/1.1, WebSocket, HTTP/2.
    Demo {
        /// Keep serving after the exchanges and print commands to try.
        #[arg(long)]
        hold: bool,
    },
}

/// Flags that work with every subcommand, before or after it.
#[derive(Debug, Args, Default)]
pub struct Flags {
    /// The proxy's YAML file (default: $DET_TLS_PROXY_CONFIG, else /etc/determined/tls-proxy.yaml if present).
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The master's DNS name or IP address.
    #[arg(long, global = true, value_name = "HOST")]
    pub master_host: Option<String>,
    /// The master's port (default 8443 with TLS, 8080 without).
    #[arg(long, global = true, value_name = "PORT")]
    pub master_port: Option<u16>,
    /// Speak TLS to the master (default true).
    #[arg(long, global = true, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true", value_parser = bool_flag)]
    pub security_tls_enabled: Option<bool>,
    /// Encrypt but do not verify the master's certificate.
    #[arg(long, global = true, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true", value_parser = bool_flag)]
    pub security_tls_skip_verify: Option<bool>,
    /// PEM bundle of the master's certificate chain; replaces the system roots.
    #[arg(long, global = true, value_name = "FILE")]
    pub security_tls_master_cert: Option<PathBuf>,
    /// Name sent as SNI and checked in the master's certificate.
    #[arg(long, global = true, value_name = "NAME")]
    pub security_tls_master_cert_name: Option<String>,
    /// Client certificate for mutual TLS.
    #[arg(long, global = true, value_name = "FILE")]
    pub security_tls_client_cert: Option<PathBuf>,
    /// Private key of the client certificate.
    #[arg(long, global = true, value_name = "FILE")]
    pub security_tls_client_key: Option<PathBuf>,
    /// Listen address (repeatable): HOST:PORT, [v6]:PORT, unix:/path or systemd:NAME; replaces the file's listeners.
    #[arg(long, global = true, value_name = "ADDR")]
    pub listen: Vec<String>,
    /// Admin endpoint address (/healthz, /readyz, /metrics).
    #[arg(long, global = true, value_name = "ADDR")]
    pub admin_listen: Option<String>,
}

impl Flags {
    pub fn overrides(&self) -> Overrides {
        Overrides {
            config: self.config.clone(),
            master_host: self.master_host.clone(),
            master_port: self.master_port,
            tls_enabled: self.security_tls_enabled,
            skip_verify: self.security_tls_skip_verify,
            master_cert: self.security_tls_master_cert.clone(),
            master_cert_name: self.security_tls_master_cert_name.clone(),
            client_cert: self.security_tls_client_cert.clone(),
            client_key: self.security_tls_client_key.clone(),
            listen: self.listen.clone(),
            admin_listen: self.admin_listen.clone(),
        }
    }
}
