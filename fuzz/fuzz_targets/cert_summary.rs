//! What the proxy says about a certificate the master presented (names, issuer, validity):
//! whoever answers on the master's address chooses those bytes. Seeded by run.sh with a
//! certificate made at run time.
#![no_main]

use det_tls_proxy::diagnose::CertSummary;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some(s) = CertSummary::from_der(data) {
        let _ = s.to_string();
        let _ = s.names();
        let _ = s.days_left();
    }
});
