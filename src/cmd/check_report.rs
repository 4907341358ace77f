//! `check`'s report: what each step found, as text for an operator (ending in the `OK`/`FAILED:`
//! verdict) or as `--json`. Filled by `check.rs` (the dial) and `check_trust.rs` (pins, CRLs).

use serde::Serialize;

use crate::diagnose::CertSummary;
use crate::exit;
use crate::untrusted::Untrusted;
use crate::upstream::Attempt;

#[derive(Debug, Clone, Serialize)]
pub struct AttemptReport {
    pub address: String,
    pub outcome: String,
    pub ms: f64,
}

impl From<&Attempt> for AttemptReport {
    fn from(a: &Attempt) -> Self {
        AttemptReport {
            address: a.addr.to_string(),
            outcome: a.result.to_string(),
            ms: a.elapsed.as_secs_f64() * 1000.0,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ChainEntry {
    #[serde(flatten)]
    pub cert: CertSummary,
    pub days_left: i64,
    /// What `security.tls.crl` says about it (`None` when no CRL is configured).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub crl: Option<String>,
}

impl ChainEntry {
    pub(super) fn from_der(der: &[u8]) -> Option<ChainEntry> {
        CertSummary::from_der(der).map(|cert| ChainEntry {
            days_left: cert.days_left(),
            cert,
            crl: None,
        })
    }
}

/// One CRL of `security.tls.crl` as `check` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct CrlReport {
    pub path: String,
    pub issuer: Untrusted,
    /// RFC 3339; empty when the CRL has none.
    pub next_update: String,
    pub expired: bool,
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct Report {
    pub master: String,
    pub(crate) master_port_source: String,
    /// Direct, or through which HTTP proxy.
    pub route: String,
    pub tls_enabled: bool,
    pub name: Option<String>,
    pub(crate) name_reason: Option<String>,
    pub sni: Option<String>,
    pub trust: String,
    pub(crate) client_certificate: bool,
    pub attempts: Vec<AttemptReport>,
    pub tls_version: Option<String>,
    pub cipher_suite: Option<String>,
    pub(crate) key_exchange: Option<String>,
    pub alpn: Option<Untrusted<Vec<u8>>>,
    pub(crate) handshake_ms: Option<f64>,
    pub resumed_on_second_dial: Option<bool>,
    pub chain: Vec<ChainEntry>,
    pub verified: bool,
    pub ok: bool,
    pub error: Option<String>,
    pub error_kind: Option<String>,
    pub warnings: Vec<String>,
    /// Which certificate matched which pin of `security.tls.master_cert_sha256`, or the
    /// mismatch.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pin: Option<String>,
    /// The CRLs of `security.tls.crl` and their next update.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub crls: Vec<CrlReport>,
    /// Each listener's peer policy.
    pub listeners: Vec<super::check_peers::ListenerReport>,
    /// The configuration could not even be turned into a TLS context (exit 2).
    #[serde(skip)]
    pub(crate) config_error: bool,
}

pub(super) fn print_chain(out: &mut String, chain: &[ChainEntry]) {
    for (i, c) in chain.iter().enumerate() {
        let s = &c.cert;
        out.push_str(&format!("  [{i}] subject   {}\n", s.subject));
        out.push_str(&format!("      issuer    {}\n", s.issuer));
        out.push_str(&format!(
            "      DNS       {}\n",
            if s.dns_names.is_empty() {
                "-".to_string()
            } else {
                let v: Vec<String> = s.dns_names.iter().map(|d| d.to_string()).collect();
                v.join(", ")
            }
        ));
        let ips: Vec<String> = s.ip_addresses.iter().map(|i| i.to_string()).collect();
        out.push_str(&format!(
            "      IP        {}\n",
            if ips.is_empty() {
                "-".to_string()
            } else {
                ips.join(", ")
            }
        ));
        let state = if s.expired() {
            "EXPIRED".to_string()
        } else if s.not_yet_valid() {
            "NOT YET VALID".to_string()
        } else {
            format!("{} days left", c.days_left)
        };
        out.push_str(&format!(
            "      valid     {} to {} ({state})\n",
            crate::diagnose::rfc3339(s.not_before),
            crate::diagnose::rfc3339(s.not_after)
        ));
        out.push_str(&format!("      SHA-256   {}\n", s.sha256));
        if let Some(crl) = &c.crl {
            out.push_str(&format!("      CRL       {crl}\n"));
        }
    }
}

impl Report {
    pub(crate) fn exit_code(&self) -> i32 {
        match (self.ok, self.config_error) {
            (true, _) => exit::OK,
            (false, true) => exit::CONFIG,
            (false, false) => exit::RUNTIME,
        }
    }

    pub fn render(&self) -> String {
        let mut o = String::new();
        o.push_str(&format!(
            "master      {}  (port from {})\n",
            self.master, self.master_port_source
        ));
        o.push_str(&format!("route       {}\n", self.route));
        if let Some(n) = &self.name {
            o.push_str(&format!(
                "name        {}  ({})\n",
                n,
                self.name_reason.as_deref().unwrap_or("")
            ));
            o.push_str(&format!(
                "SNI         {}\n",
                self.sni.as_deref().unwrap_or("none (IP identity)")
            ));
        }
        o.push_str(&format!("trust       {}\n", self.trust));
        if self.tls_enabled {
            o.push_str(&format!(
                "client cert {}\n",
                if self.client_certificate {
                    "presented"
                } else {
                    "none"
                }
            ));
        }
        for a in &self.attempts {
            o.push_str(&format!(
                "address     {}  {} ({:.1} ms)\n",
                a.address, a.outcome, a.ms
            ));
        }
        if let Some(v) = &self.tls_version {
            o.push_str(&format!(
                "TLS         {}, {}, key exchange {}, ALPN {}\n",
                v,
                self.cipher_suite.as_deref().unwrap_or("?"),
                self.key_exchange.as_deref().unwrap_or("?"),
                self.alpn.as_ref().map_or("none".into(), |a| a.to_string())
            ));
        }
        if let Some(ms) = self.handshake_ms {
            o.push_str(&format!("handshake   {ms:.1} ms\n"));
        }
        if let Some(res) = self.resumed_on_second_dial {
            o.push_str(&format!(
                "resumption  {}\n",
                if res {
                    "second dial resumed the session"
                } else {
                    "second dial made a full handshake (the master does not resume)"
                }
            ));
        }
        if !self.chain.is_empty() {
            o.push_str(&format!(
                "chain       {} certificate(s) sent by the master\n",
                self.chain.len()
            ));
            print_chain(&mut o, &self.chain);
        }
        self.render_trust_checks(&mut o);
        super::check_peers::render(&self.listeners, &mut o);
        for w in &self.warnings {
            o.push_str(&format!("WARNING: {w}\n"));
        }
        self.verdict(&mut o);
        o
    }

    /// The last line: OK (verified, unverified or plain) or FAILED with the reason.
    fn verdict(&self, o: &mut String) {
        match (&self.error, self.ok) {
            (Some(e), _) => o.push_str(&format!("FAILED: {e}\n")),
            (None, true) if self.verified => o.push_str(&format!(
                "OK: connected to {} and verified it as {}\n",
                self.master,
                self.name.as_deref().unwrap_or("?")
            )),
            (None, true) if self.tls_enabled => o.push_str(&format!(
                "OK (UNVERIFIED): connected to {} with TLS, but nothing was verified (skip_verify)\n",
                self.master
            )),
            (None, true) => o.push_str(&format!("OK: connected to {} (plain TCP)\n", self.master)),
            (None, false) => o.push_str("FAILED\n"),
        }
    }
}
