//! det-tls-proxy: a per-host sidecar that lets plaintext local clients (the Determined agent,
//! its log shipper, task containers) reach a TLS-only Determined master. Data flows
//! listen → server::accept → connection (admit, sniff, route, relay, finish); config and tls build the live state
//! (state) that server swaps whole on reload; admin and metrics watch; cmd holds the
//! subcommands other than `run`.
//!
//! The library's public API is what the binary uses (cli, cmd, server). Every other module is
//! crate-private, and public only with the `test-util` feature, which the integration tests
//! and fuzz targets turn on.
#![deny(unsafe_code)]

pub mod cli;
pub mod cmd;
pub mod server;

macro_rules! internal {
    ($($(#[$doc:meta])* $m:ident),* $(,)?) => {
        $(
            $(#[$doc])*
            #[cfg(feature = "test-util")]
            pub mod $m;
            $(#[$doc])*
            #[cfg(not(feature = "test-util"))]
            pub(crate) mod $m;
        )*
    };
}

internal!(
    admin, config, denied_log, diagnose, egress, error_kind, exit, host, identity, inherit, limit,
    listen, logging, metrics, outcome, pem, policy, pool, relay, sniff, state, tls, untrusted,
    upstream,
);
internal!(connection, connections);
