//! `check`'s view of the pins (`security.tls.master_cert_sha256`) and the CRLs
//! (`security.tls.crl`): which certificate matched which pin, each certificate's revocation
//! status, each CRL's next update.

use rustls::pki_types::CertificateDer;

use crate::config::TlsSettings;
use crate::diagnose::{now_secs, rfc3339};
use crate::tls::{status, TlsContext};

use super::check_report::{CrlReport, Report};

/// The `trust` line when `security.tls.master_cert_sha256` is set.
pub(super) fn pinned_trust(tls: &TlsSettings, anchors: usize, pins: usize) -> String {
    let pinned = format!(
        "security.tls.master_cert_sha256 ({pins} fingerprint{})",
        if pins == 1 { "" } else { "s" }
    );
    match (tls.skip_verify, &tls.master_cert) {
        (true, _) => format!("{pinned} with security.tls.skip_verify: a pinned certificate and the leaf's dates, NOT the name"),
        (false, Some(p)) => format!(
            "security.tls.master_cert {} ({anchors} certificate{}; replaces the system roots) and {pinned}: both must hold",
            p.display(),
            if anchors == 1 { "" } else { "s" }
        ),
        (false, None) => format!("{pinned} only: the pinned certificate is the trust, the system roots are not used"),
    }
}

/// The configured CRLs and their freshness; an expired one is also a warning.
pub(super) fn crl_files(ctx: &TlsContext, r: &mut Report) {
    let now = now_secs();
    for crl in ctx.crls.iter() {
        let expired = crl.expired(now);
        let next_update = crl.next_update.map(rfc3339).unwrap_or_default();
        if expired {
            r.warnings.push(format!(
                "the CRL in {} expired (nextUpdate {next_update}): it is still applied, but revocations since then are not known; publish a fresh CRL",
                crl.path.display()
            ));
        }
        r.crls.push(CrlReport {
            path: crl.path.display().to_string(),
            issuer: crl.issuer.clone(),
            next_update,
            expired,
        });
    }
}

/// The pin verdict and each certificate's CRL status, for the chain the master sent.
pub(super) fn chain_checks(ctx: &TlsContext, chain: &[CertificateDer<'_>], r: &mut Report) {
    if !ctx.pins.is_empty() {
        r.pin = Some(match ctx.pins.matching(chain) {
            Some(i) => format!(
                "[{i}] matches the pinned {}",
                ctx.pins.pin_of(chain[i].as_ref()).unwrap_or("?")
            ),
            None => format!(
                "MISMATCH: none of the {} certificate(s) sent has a pinned fingerprint ({})",
                chain.len(),
                ctx.pins.as_slice().join(", ")
            ),
        });
    }
    if ctx.crls.is_empty() {
        return;
    }
    for entry in r.chain.iter_mut() {
        if let Some(der) = chain
            .iter()
            .find(|d| crate::diagnose::fingerprint(d.as_ref()) == entry.cert.sha256)
        {
            entry.crl = Some(status(&ctx.crls, der.as_ref()).to_string());
        }
    }
}

impl Report {
    /// The pin and CRL lines, after the chain.
    pub(super) fn render_trust_checks(&self, o: &mut String) {
        if let Some(p) = &self.pin {
            o.push_str(&format!("pin         {p}\n"));
        }
        for c in &self.crls {
            let when = match (c.next_update.is_empty(), c.expired) {
                (true, _) => "no next update".to_string(),
                (false, true) => format!("EXPIRED: next update was due {}", c.next_update),
                (false, false) => format!("next update {}", c.next_update),
            };
            o.push_str(&format!("CRL         {}  ({}; {when})\n", c.path, c.issuer));
        }
    }
}
