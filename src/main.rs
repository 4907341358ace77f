//! The command line: parse, dispatch, exit status (0 fine, 1 runtime failure, 2 configuration
//! or usage error). Everything else lives in the library.

use clap::Parser;

use det_tls_proxy::cli::{Cli, Command};
use det_tls_proxy::config::{self, Purpose};
use det_tls_proxy::lifecycle::{self, EXIT_CONFIG, EXIT_OK};
use det_tls_proxy::listen::Inherited;

fn main() {
    // Taken before any thread exists: reading clears LISTEN_* from the environment.
    let inherited = Inherited::from_env();
    let cli = Cli::parse();
    let flags = cli.flags.overrides();
    let code = match cli.command.unwrap_or(Command::Run) {
        Command::Run => lifecycle::run(flags, inherited),
        Command::Config => show_config(&flags),
    };
    std::process::exit(code);
}

fn show_config(flags: &config::Overrides) -> i32 {
    let vars: Vec<(String, String)> = std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .collect();
    let loaded = match config::assemble(&vars, flags) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("{e}");
            return EXIT_CONFIG;
        }
    };
    match config::validate(&loaded, Purpose::Show) {
        Ok(c) => {
            print!("{}", config::describe(&loaded, Some(&c)));
            EXIT_OK
        }
        Err(e) => {
            print!("{}", config::describe(&loaded, None));
            eprintln!("{e}");
            EXIT_CONFIG
        }
    }
}
