//! The command line: parse, dispatch, exit with the subcommand's status (0 fine, 1 runtime
//! failure, 2 configuration or usage error). Everything else lives in the library.

use clap::Parser;

use det_tls_proxy::cli::{Cli, Command};
use det_tls_proxy::cmd::{self, trust::TrustOptions};
use det_tls_proxy::server::{self, Inherited};

fn main() {
    // Taken before any thread exists: reading clears LISTEN_* from the environment.
    let inherited = Inherited::from_env();
    let cli = Cli::parse();
    let flags = cli.flags.overrides();
    let code = match cli.command.unwrap_or(Command::Run) {
        Command::Run => server::run(flags, inherited),
        Command::Config => cmd::config::main(&flags),
        Command::Status { json, limit } => cmd::status::main(&flags, json, limit.map(usize::from)),
        Command::Check { json } => cmd::check::main(&flags, json),
        Command::Demo { hold } => cmd::demo::main(hold),
        Command::Trust {
            fingerprint,
            yes,
            out,
            force,
            from_cli_store,
            pin,
        } => cmd::trust::main(
            &flags,
            TrustOptions {
                fingerprint,
                yes,
                out,
                force,
                from_cli_store,
                pin,
            },
        ),
    };
    std::process::exit(code);
}
