//! The command line: parse, dispatch, exit status (0 fine, 1 runtime failure, 2 configuration
//! or usage error). Everything else lives in the library.

use clap::Parser;

use det_tls_proxy::check::{TrustCmdError, TrustOptions};
use det_tls_proxy::cli::{Cli, Command};
use det_tls_proxy::config::{self, Purpose};
use det_tls_proxy::listen::Inherited;
use det_tls_proxy::server::{self, EXIT_CONFIG, EXIT_OK, EXIT_RUNTIME};

fn main() {
    // Taken before any thread exists: reading clears LISTEN_* from the environment.
    let inherited = Inherited::from_env();
    let cli = Cli::parse();
    let flags = cli.flags.overrides();
    let code = match cli.command.unwrap_or(Command::Run) {
        Command::Run => server::run(flags, inherited),
        Command::Config => show_config(&flags),
        Command::Check { json } => check(&flags, json),
        Command::Demo { hold } => demo(hold),
        Command::Trust {
            fingerprint,
            yes,
            out,
            force,
            from_cli_store,
        } => trust(
            &flags,
            TrustOptions {
                fingerprint,
                yes,
                out,
                force,
                from_cli_store,
            },
        ),
    };
    std::process::exit(code);
}

fn show_config(flags: &config::Overrides) -> i32 {
    let vars = config::env_vars();
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

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a single-threaded tokio runtime")
}

fn check(flags: &config::Overrides, json: bool) -> i32 {
    let config = match config::load(flags, Purpose::Serve) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return EXIT_CONFIG;
        }
    };
    let report = runtime().block_on(det_tls_proxy::check::check(&config));
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).unwrap_or_default()
        );
    } else {
        print!("{}", report.render());
    }
    match (report.ok, report.error_kind.as_deref()) {
        (true, _) => EXIT_OK,
        (false, Some("config")) => EXIT_CONFIG,
        _ => EXIT_RUNTIME,
    }
}

fn trust(flags: &config::Overrides, opts: TrustOptions) -> i32 {
    let config = match config::load(flags, Purpose::Trust) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return EXIT_CONFIG;
        }
    };
    let mut out = std::io::stdout();
    match runtime().block_on(det_tls_proxy::check::trust(&config, &opts, &mut out)) {
        Ok(()) => EXIT_OK,
        Err(TrustCmdError::Usage(m)) => {
            eprintln!("error: {m}");
            EXIT_CONFIG
        }
        Err(TrustCmdError::Failed(m)) => {
            eprintln!("error: {m}");
            EXIT_RUNTIME
        }
    }
}

fn demo(hold: bool) -> i32 {
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return EXIT_RUNTIME;
        }
    };
    let mut out = std::io::stdout();
    match rt.block_on(det_tls_proxy::demo::demo(hold, &mut out)) {
        Ok(()) => EXIT_OK,
        Err(m) => {
            eprintln!("error: {m}");
            EXIT_RUNTIME
        }
    }
}
