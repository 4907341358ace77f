//! det-tls-proxy: a per-host sidecar that lets plaintext local clients (the Determined agent,
//! its log shipper, task containers) reach a TLS-only Determined master. Data flows
//! listen → proxy (upstream, relay); config and trust feed them; server (accept, reload, drain) and admin watch.
#![deny(unsafe_code)]

pub mod admin;
pub mod check;
pub mod cli;
pub mod config;
pub mod demo;
pub mod diagnose;
pub mod limit;
pub mod listen;
pub mod logging;
pub mod metrics;
pub mod outcome;
pub mod proxy;
pub mod relay;
pub mod server;
pub mod state;
pub mod pem;
pub mod tls;
pub mod upstream;
