//! PEM bundles as `security.tls.master_cert` / `client_cert` are read: every certificate in
//! them, and the description an operator would get of each.
#![no_main]

use std::path::Path;

use det_tls_proxy::diagnose::CertSummary;
use det_tls_proxy::pem::{self as trust, PemError};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match trust::certs_from_pem(Path::new("/etc/determined/master.crt"), data) {
        Ok(certs) => {
            assert!(!certs.is_empty());
            for c in &certs {
                if let Some(s) = CertSummary::from_der(c.as_ref()) {
                    let _ = s.to_string();
                }
            }
        }
        Err(e) => {
            assert!(matches!(
                e,
                PemError::Malformed { .. } | PemError::NoCertificate { .. }
            ));
            let _ = e.to_string();
        }
    }
});
