//! The command line: subcommands and the global flags, named as the agent names them. The
//! key flags are read off the configuration's key table (`config::KEYS`), not declared here.

use std::path::PathBuf;

use clap::{Arg, ArgAction, ArgMatches, Args, FromArgMatches, Parser, Subcommand};

use crate::config::{parse_bool, Overrides, ValueKind, KEYS};

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
        /// Instead of writing a CA bundle, add the leaf's SHA-256 fingerprint to the proxy's
        /// configuration file as security.tls.master_cert_sha256 (existing pins are kept).
        #[arg(long)]
        pin: bool,
    },
    /// Print the effective configuration and where each value came from.
    Config,
    /// List the running proxy's open connections (from its admin endpoint's /connections).
    Status {
        /// Print the admin endpoint's JSON document.
        #[arg(long)]
        json: bool,
        /// Show at most this many connections, the newest (default 1000, at most 10000).
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=10_000))]
        limit: Option<u16>,
    },
    /// Run the whole path on loopback with no setup: stand-in master, proxy, HTTP/1.1, WebSocket, HTTP/2.
    Demo {
        /// Keep serving after the exchanges and print commands to try.
        #[arg(long)]
        hold: bool,
    },
}

/// Flags that work with every subcommand, before or after it: `--config`, and one flag per
/// key of the table that has one.
#[derive(Debug, Default)]
pub struct Flags(Overrides);

impl Flags {
    pub fn overrides(&self) -> Overrides {
        self.0.clone()
    }
}

impl Args for Flags {
    fn augment_args(cmd: clap::Command) -> clap::Command {
        let config = Arg::new("config")
            .long("config")
            .global(true)
            .value_name("FILE")
            .value_parser(clap::value_parser!(PathBuf))
            .help("The proxy's YAML file (default: $DET_TLS_PROXY_CONFIG, else /etc/determined/tls-proxy.yaml if present).");
        KEYS.iter().fold(cmd.arg(config), |cmd, d| {
            let Some(flag) = d.flag else {
                return cmd;
            };
            let arg = Arg::new(flag)
                .long(flag)
                .global(true)
                .value_name(d.value_name)
                .help(d.help);
            cmd.arg(match d.kind {
                ValueKind::Bool => arg
                    .num_args(0..=1)
                    .require_equals(true)
                    .default_missing_value("true")
                    .value_parser(bool_flag),
                ValueKind::Port => arg.value_parser(clap::value_parser!(u16)),
                ValueKind::Listeners | ValueKind::List => arg.action(ArgAction::Append),
                ValueKind::Str | ValueKind::Path => arg,
            })
        })
    }

    fn augment_args_for_update(cmd: clap::Command) -> clap::Command {
        Self::augment_args(cmd)
    }
}

impl FromArgMatches for Flags {
    fn from_arg_matches(m: &ArgMatches) -> Result<Self, clap::Error> {
        let mut o = Overrides {
            config: m.get_one::<PathBuf>("config").cloned(),
            values: Vec::new(),
        };
        for d in KEYS {
            let Some(flag) = d.flag else {
                continue;
            };
            let given: Vec<String> = match d.kind {
                ValueKind::Bool => m
                    .get_one::<bool>(flag)
                    .map(|b| b.to_string())
                    .into_iter()
                    .collect(),
                ValueKind::Port => m
                    .get_one::<u16>(flag)
                    .map(|p| p.to_string())
                    .into_iter()
                    .collect(),
                _ => m
                    .get_many::<String>(flag)
                    .map(|v| v.cloned().collect())
                    .unwrap_or_default(),
            };
            if !given.is_empty() {
                o.values.push((d, given));
            }
        }
        Ok(Flags(o))
    }

    fn update_from_arg_matches(&mut self, m: &ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(m)?;
        Ok(())
    }
}
