//! `det-tls-proxy config`: every effective value and the layer it came from, printed even
//! when the configuration is invalid (the errors follow on stderr, exit 2).

use crate::config::{self, Overrides, Purpose};
use crate::exit;

pub fn main(flags: &Overrides) -> i32 {
    let vars = config::env_vars();
    let loaded = match config::assemble(&vars, flags) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("{e}");
            return exit::CONFIG;
        }
    };
    match config::validate(&loaded, Purpose::Show) {
        Ok(c) => {
            print!("{}", config::describe(&loaded, Some(&c)));
            exit::OK
        }
        Err(e) => {
            print!("{}", config::describe(&loaded, None));
            eprintln!("{e}");
            exit::CONFIG
        }
    }
}
