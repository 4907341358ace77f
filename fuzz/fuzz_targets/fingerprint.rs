//! The `trust --fingerprint` parser: any text gives nothing or the canonical form
//! (32 lowercase hex pairs joined by ':'), and the canonical form parses to itself.
#![no_main]

use det_tls_proxy::diagnose::parse_fingerprint;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Some(f) = parse_fingerprint(s) {
        assert_eq!(f.len(), 95);
        assert!(f.split(':').all(|p| p.len() == 2
            && p.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))));
        assert_eq!(parse_fingerprint(&f).as_deref(), Some(f.as_str()));
    }
});
