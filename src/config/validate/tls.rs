//! `security.tls.*` and `tls.*`: what TLS to speak to the master and with which files.

use std::path::PathBuf;

use super::Check;
use crate::config::layers::Purpose;
use crate::config::raw::{RawTls, RawTlsOptions};
use crate::config::TlsSettings;

/// The settings as given; an empty path or name means unset. Finds no mistakes itself.
pub(super) fn settings(t: &RawTls, opts: &RawTlsOptions) -> TlsSettings {
    let nonempty_path = |p: &Option<PathBuf>| p.clone().filter(|p| !p.as_os_str().is_empty());
    TlsSettings {
        enabled: t.enabled.unwrap_or(true),
        skip_verify: t.skip_verify.unwrap_or(false),
        master_cert: nonempty_path(&t.master_cert),
        master_cert_name: t
            .master_cert_name
            .clone()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty()),
        client_cert: nonempty_path(&t.client_cert),
        client_key: nonempty_path(&t.client_key),
        // Checked by `pins`; kept as written until then.
        master_cert_sha256: t.master_cert_sha256.clone().unwrap_or_default(),
        crl: t
            .crl
            .iter()
            .flatten()
            .filter(|p| !p.as_os_str().is_empty())
            .cloned()
            .collect(),
        post_quantum: opts.post_quantum.unwrap_or(true),
    }
}

/// Settings that contradict each other, and a name that cannot be a certificate name.
pub(super) fn combination(c: &mut Check, t: &TlsSettings) {
    if t.master_cert.is_some() && t.skip_verify {
        let message = format!(
            "cannot specify a master cert file with verification off (security.tls.skip_verify from {}); remove one of them",
            c.src("security.tls.skip_verify")
        );
        let source = c.src("security.tls.master_cert");
        c.fail("security.tls.master_cert", message, Some(source));
    }
    match (&t.client_cert, &t.client_key) {
        (Some(_), None) => {
            let source = c.src("security.tls.client_cert");
            c.fail(
                "security.tls.client_key",
                "required when security.tls.client_cert is set (mutual TLS needs both)",
                Some(source),
            );
        }
        (None, Some(_)) => {
            let source = c.src("security.tls.client_key");
            c.fail(
                "security.tls.client_cert",
                "required when security.tls.client_key is set (mutual TLS needs both)",
                Some(source),
            );
        }
        _ => {}
    }
    if let Some(name) = &t.master_cert_name {
        if rustls_pki_types::ServerName::try_from(name.as_str()).is_err() {
            let source = c.src("security.tls.master_cert_name");
            c.fail(
                "security.tls.master_cert_name",
                format!("{name:?} is not a valid DNS name or IP address"),
                Some(source),
            );
        }
    }
}

/// Each pinned fingerprint in `trust`'s canonical form, or a mistake naming the key.
pub(super) fn pins(c: &mut Check, t: &mut TlsSettings) {
    let key = "security.tls.master_cert_sha256";
    let mut canonical = Vec::new();
    for pin in &t.master_cert_sha256 {
        match crate::diagnose::parse_fingerprint(pin) {
            Some(p) if !canonical.contains(&p) => canonical.push(p),
            Some(_) => {}
            None => {
                let source = c.src(key);
                c.fail(
                    key,
                    format!("{pin:?} is not a SHA-256 fingerprint (32 hex pairs, as `det-tls-proxy trust` and `openssl x509 -fingerprint -sha256` print it)"),
                    Some(source),
                );
            }
        }
    }
    t.master_cert_sha256 = canonical;
    if !t.crl.is_empty() && t.skip_verify {
        let message = format!(
            "revocation cannot be checked with verification off (security.tls.skip_verify from {}); remove one of them",
            c.src("security.tls.skip_verify")
        );
        let source = c.src("security.tls.crl");
        c.fail("security.tls.crl", message, Some(source));
    }
}

/// The PEM files, read as `run` will read them. `config` reads none; `trust` does not need
/// `master_cert` to exist yet (it is about to write it).
pub(super) fn files(c: &mut Check, t: &TlsSettings, purpose: Purpose) {
    if purpose == Purpose::Show || !t.enabled {
        return;
    }
    if let Some(path) = &t.master_cert {
        if purpose == Purpose::Serve || path.exists() {
            c.cert_file("security.tls.master_cert", path);
        }
    }
    if let Some(path) = &t.client_cert {
        c.cert_file("security.tls.client_cert", path);
    }
    if let Some(path) = &t.client_key {
        if let Err(e) = crate::pem::load_key(path) {
            let source = c.src("security.tls.client_key");
            c.fail("security.tls.client_key", e.to_string(), Some(source));
        }
    }
    for path in &t.crl {
        if let Err(e) = crate::pem::load_crls(path) {
            let source = c.src("security.tls.crl");
            c.fail("security.tls.crl", e.to_string(), Some(source));
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::config::validate::testing::{has, mistakes, valid};

    #[test]
    fn master_cert_with_skip_verify_is_refused() {
        let m = mistakes("master_host: det\nsecurity: {tls: {master_cert: /x.pem, skip_verify: true}}\n");
        assert!(has(&m, "security.tls.master_cert", "verification off"), "{m:?}");
    }

    #[test]
    fn a_client_certificate_needs_its_key_and_the_key_its_certificate() {
        let m = mistakes("master_host: det\nsecurity: {tls: {client_cert: /a.crt}}\n");
        assert!(has(&m, "security.tls.client_key", "required"), "{m:?}");
        let m = mistakes("master_host: det\nsecurity: {tls: {client_key: /a.key}}\n");
        assert!(has(&m, "security.tls.client_cert", "required"), "{m:?}");
    }

    #[test]
    fn empty_paths_and_names_mean_unset() {
        let c = valid("master_host: det\nsecurity: {tls: {master_cert: \"\", master_cert_name: \" \"}}\n");
        assert_eq!(c.tls.master_cert, None);
        assert_eq!(c.tls.master_cert_name, None);
        assert!(c.tls.post_quantum);
    }

    #[test]
    fn pins_are_fingerprints_kept_in_one_form() {
        let fp = "AB".repeat(32);
        let c = valid(&format!("master_host: det\nsecurity: {{tls: {{master_cert_sha256: [\"{fp}\", \"sha256:{fp}\"]}}}}\n"));
        assert_eq!(c.tls.master_cert_sha256, [vec!["ab"; 32].join(":")]);
        let m = mistakes("master_host: det\nsecurity: {tls: {master_cert_sha256: [\"ab:cd\"]}}\n");
        assert!(has(&m, "security.tls.master_cert_sha256", "not a SHA-256 fingerprint"), "{m:?}");
    }

    #[test]
    fn a_crl_needs_verification_on() {
        let m = mistakes("master_host: det\nsecurity: {tls: {crl: [/x.crl], skip_verify: true}}\n");
        assert!(has(&m, "security.tls.crl", "verification off"), "{m:?}");
    }

    #[test]
    fn master_cert_name_must_be_a_certificate_name() {
        let m = mistakes("master_host: det\nsecurity: {tls: {master_cert_name: \"bad name\"}}\n");
        assert!(has(&m, "security.tls.master_cert_name", "not a valid DNS name"), "{m:?}");
    }
}
