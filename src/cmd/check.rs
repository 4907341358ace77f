//! `det-tls-proxy check`: dial the master through the data path's own code and say, in an
//! operator's words, what was found and what to change.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::CertificateDer;
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::config::{self, Config, Overrides, Purpose, TlsSettings};
use crate::diagnose::CertSummary;
use crate::exit;
use crate::tls::{NameReason, TlsContext};
use crate::untrusted::Untrusted;
use crate::upstream::{version_name, Attempt, SystemResolver, Upstream, UpstreamError};

// === The report ===

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
            outcome: a.error.clone().unwrap_or_else(|| "connected".into()),
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
    pub master_port_source: String,
    /// Direct, or through which HTTP proxy.
    pub route: String,
    pub tls_enabled: bool,
    pub name: Option<String>,
    pub name_reason: Option<String>,
    pub sni: Option<String>,
    pub trust: String,
    pub client_certificate: bool,
    pub attempts: Vec<AttemptReport>,
    pub tls_version: Option<String>,
    pub cipher_suite: Option<String>,
    pub key_exchange: Option<String>,
    pub alpn: Option<Untrusted<Vec<u8>>>,
    pub handshake_ms: Option<f64>,
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
    pub config_error: bool,
}

fn trust_source(tls: &TlsSettings, anchors: usize) -> String {
    let pins = tls.master_cert_sha256.len();
    if pins > 0 {
        return super::check_trust::pinned_trust(tls, anchors, pins);
    }
    match (tls.skip_verify, &tls.master_cert) {
        (true, _) => "NOTHING IS VERIFIED (security.tls.skip_verify)".into(),
        (false, Some(p)) => format!(
            "security.tls.master_cert {} ({anchors} certificate{}; replaces the system roots)",
            p.display(),
            if anchors == 1 { "" } else { "s" }
        ),
        (false, None) => "system roots".into(),
    }
}

/// Gives a TLS 1.3 master the moment to send its session tickets, then closes politely.
async fn settle_and_close<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(s: &mut S) {
    let mut b = [0u8; 1];
    let _ = tokio::time::timeout(Duration::from_millis(300), s.read(&mut b)).await;
    let _ = tokio::time::timeout(Duration::from_secs(1), s.shutdown()).await;
}

/// Fetches the master's chain without verifying it (for `trust`, and to show a chain that
/// failed verification).
pub async fn fetch_chain(config: &Config) -> Result<Vec<CertificateDer<'static>>, String> {
    // The same TLS context as `run`, verifying nothing; a master_cert that does not exist yet
    // (`trust` is about to write it) simply offers no name to substitute.
    let mut tls = config.tls.clone();
    tls.skip_verify = true;
    tls.master_cert_sha256.clear();
    tls.crl.clear();
    let ctx = match TlsContext::build(&config.master, &tls) {
        Err(crate::tls::TrustError::MasterCert(_)) => {
            tls.master_cert = None;
            TlsContext::build(&config.master, &tls)
        }
        other => other,
    }
    .map_err(|e| e.to_string())?;
    let cfg = ctx.client_config(&[b"http/1.1".to_vec()], ctx.has_client_cert(), false);
    let up = Upstream::for_config(config, Arc::new(SystemResolver));
    let mut tls = up
        .dial_tls(cfg, ctx.name.server_name.clone())
        .await
        .map_err(|e| e.to_string())?;
    let chain = tls
        .get_ref()
        .1
        .peer_certificates()
        .map(|c| c.to_vec())
        .unwrap_or_default();
    let _ = tokio::time::timeout(Duration::from_secs(1), tls.shutdown()).await;
    Ok(chain)
}

/// Runs the checks of `det-tls-proxy check` against `config`.
pub async fn check(config: &Config) -> Report {
    dial_and_report(config, true).await
}

/// One dial as `run` makes it, reported. With `explain`, as `check` prints it: a certificate
/// failure fetches the chain unverified to show it, and a second dial tests resumption;
/// `trust`, which only needs the verdict, skips both.
pub(super) async fn dial_and_report(config: &Config, explain: bool) -> Report {
    let mut r = Report {
        master: format!("{}:{}", config.master.host, config.master.port),
        master_port_source: config.master.port_source.clone(),
        route: config
            .egress
            .describe(&config.master.host, config.master.port),
        tls_enabled: config.tls.enabled,
        listeners: super::check_peers::listeners(config),
        ..Default::default()
    };
    let up = Upstream::for_config(config, Arc::new(SystemResolver));
    if !config.tls.enabled {
        plain_dial(&up, &mut r).await;
        return r;
    }
    let ctx = match TlsContext::new(config) {
        Ok(c) => c,
        Err(e) => {
            r.error = Some(e.to_string());
            r.error_kind = Some("config".into());
            r.config_error = true;
            return r;
        }
    };
    describe_trust(config, &ctx, &mut r);
    let cfg = ctx.client_config(&[b"http/1.1".to_vec()], ctx.has_client_cert(), true);
    let dialed = match up.connect().await {
        Ok(d) => d,
        Err(e) => {
            fail(&mut r, &e);
            return r;
        }
    };
    r.attempts = dialed.attempts.iter().map(AttemptReport::from).collect();
    let started = Instant::now();
    let name = ctx.name.server_name.clone();
    let mut tls = match up.handshake(dialed, cfg.clone(), name).await {
        Ok(t) => t,
        Err(e) => {
            fail(&mut r, &e);
            if explain && is_cert_failure(&e) {
                if let Ok(chain) = fetch_chain(config).await {
                    r.chain = chain
                        .iter()
                        .filter_map(|c| ChainEntry::from_der(c))
                        .collect();
                    super::check_trust::chain_checks(&ctx, &chain, &mut r);
                }
            }
            return r;
        }
    };
    r.handshake_ms = Some(started.elapsed().as_secs_f64() * 1000.0);
    record_session(tls.get_ref().1, &mut r);
    if let Some(chain) = tls.get_ref().1.peer_certificates() {
        super::check_trust::chain_checks(&ctx, chain, &mut r);
    }
    settle_and_close(&mut tls).await;
    r.verified = !ctx.skip_verify;
    r.ok = true;
    if explain {
        r.resumed_on_second_dial = second_dial_resumes(&up, &ctx, cfg).await;
    }
    r
}

/// `security.tls.enabled: false`: all there is to check is that the master's port answers.
async fn plain_dial(up: &Upstream, r: &mut Report) {
    r.trust = "none: security.tls.enabled is false (plain TCP)".into();
    r.warnings.push(
        "security.tls.enabled is false: the proxy relays plain TCP and encrypts nothing".into(),
    );
    match up.connect().await {
        Ok(d) => {
            r.attempts = d.attempts.iter().map(AttemptReport::from).collect();
            r.ok = true;
        }
        Err(e) => fail(r, &e),
    }
}

/// What will be trusted and which name verified, before any dial.
fn describe_trust(config: &Config, ctx: &TlsContext, r: &mut Report) {
    r.trust = trust_source(&config.tls, ctx.anchors);
    r.name = Some(ctx.name.name());
    r.name_reason = Some(ctx.name.reason.to_string());
    r.sni = ctx.name.sni();
    r.client_certificate = ctx.has_client_cert();
    r.warnings
        .extend(config::shared_client_cert_warnings(config));
    super::check_trust::crl_files(ctx, r);
    if ctx.skip_verify {
        r.warnings.push(
            "security.tls.skip_verify is true: NOTHING WAS VERIFIED — the connection is encrypted, but to whoever answered"
                .into(),
        );
    }
    if matches!(ctx.name.reason, NameReason::IpSan) && config.tls.master_cert.is_none() {
        r.warnings.push("master_host is an IP and no name is set: the certificate must hold this IP as an IP SAN".into());
    }
}

/// The negotiated session and the chain the master sent; a leaf close to expiry is warned.
fn record_session(conn: &rustls::ClientConnection, r: &mut Report) {
    r.tls_version = Some(version_name(conn.protocol_version()).to_string());
    r.cipher_suite = conn
        .negotiated_cipher_suite()
        .map(|s| format!("{:?}", s.suite()));
    r.key_exchange = conn
        .negotiated_key_exchange_group()
        .map(|g| format!("{:?}", g.name()));
    r.alpn = conn.alpn_protocol().map(|p| Untrusted::new(p.to_vec()));
    r.chain = conn
        .peer_certificates()
        .map(|c| c.iter().filter_map(|c| ChainEntry::from_der(c)).collect())
        .unwrap_or_default();
    if let Some(leaf) = r.chain.first() {
        if leaf.days_left < crate::diagnose::EXPIRY_WARNING.as_secs() as i64 / 86_400 {
            r.warnings.push(format!(
                "the master's certificate expires in {} days",
                leaf.days_left
            ));
        }
    }
}

/// A second dial shows whether the master resumes sessions (it saves a handshake per agent
/// reconnect). `None` when the second dial itself failed.
async fn second_dial_resumes(
    up: &Upstream,
    ctx: &TlsContext,
    cfg: Arc<rustls::ClientConfig>,
) -> Option<bool> {
    let mut t = up.dial_tls(cfg, ctx.name.server_name.clone()).await.ok()?;
    let resumed = matches!(
        t.get_ref().1.handshake_kind(),
        Some(rustls::HandshakeKind::Resumed)
    );
    settle_and_close(&mut t).await;
    Some(resumed)
}

fn fail(r: &mut Report, e: &UpstreamError) {
    if let UpstreamError::Connect { attempts } = e {
        r.attempts = attempts.iter().map(AttemptReport::from).collect();
    }
    r.error = Some(e.to_string());
    r.error_kind = Some(e.kind().to_string());
    r.ok = false;
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
    pub fn exit_code(&self) -> i32 {
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

fn is_cert_failure(e: &UpstreamError) -> bool {
    match e {
        UpstreamError::Handshake { kind, .. } => kind.is_cert(),
        _ => false,
    }
}

/// `det-tls-proxy check [--json]`: exit 0 when the master was reached as configured, 2 for a
/// configuration the checks could not even start from, 1 otherwise.
pub fn main(flags: &Overrides, json: bool) -> i32 {
    let config = match config::load(flags, Purpose::Serve) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return exit::CONFIG;
        }
    };
    let report = super::runtime().block_on(check(&config));
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).unwrap_or_default()
        );
    } else {
        print!("{}", report.render());
    }
    report.exit_code()
}
