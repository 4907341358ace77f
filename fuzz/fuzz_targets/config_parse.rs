//! The configuration parser: any text as the proxy's YAML file, assembled and validated.
//! Never a panic; an error always names a key and says something.
#![no_main]

use det_tls_proxy::config::{self, Purpose};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let loaded = match config::assemble_str(text) {
        Ok(l) => l,
        Err(e) => {
            assert!(!e.0.is_empty());
            assert!(e
                .0
                .iter()
                .all(|x| !x.key.is_empty() && !x.message.is_empty()));
            return;
        }
    };
    // `Show` reads no certificate files, so a fuzzed path cannot make the target block on a
    // device; the file checks are covered by tests/proptests.rs with safe paths.
    match config::validate(&loaded, Purpose::Show) {
        Ok(c) => {
            assert!(!c.listeners.is_empty());
            let _ = config::describe(&loaded, Some(&c));
        }
        Err(e) => {
            assert!(e
                .0
                .iter()
                .all(|x| !x.key.is_empty() && !x.message.is_empty()));
            let _ = config::describe(&loaded, None);
        }
    }
});
