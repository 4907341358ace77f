//! det-tls-proxy: a per-host sidecar that lets plaintext local clients (the Determined agent,
//! its log shipper, task containers) reach a TLS-only Determined master. Data flows
//! listen → proxy (upstream, relay); config and tls feed them through the live state; server
//! (accept, reload, watch, drain) and admin watch them; cmd holds the other subcommands.
#![deny(unsafe_code)]

pub mod admin;
pub mod cli;
pub mod cmd;
pub mod config;
pub mod diagnose;
pub mod exit;
pub mod limit;
pub mod listen;
pub mod logging;
pub mod metrics;
pub mod outcome;
pub mod pem;
pub mod proxy;
pub mod relay;
pub mod server;
pub mod state;
pub mod tls;
pub mod upstream;
