//! The subcommands besides `run` (which is `server::run`): each takes what the command line
//! gave and returns the exit status (`exit`).

pub mod check;
mod check_peers;
mod check_report;
mod check_trust;
pub mod config;
pub mod demo;
mod staged;
pub mod status;
pub mod trust;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a single-threaded tokio runtime")
}
