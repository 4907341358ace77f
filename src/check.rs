//! `det-tls-proxy check` and `det-tls-proxy trust`: dial the master through the data path's
//! own code and say, in an operator's words, what was found and what to change.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::CertificateDer;
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::config::{Config, TlsSettings};
use crate::diagnose::{parse_fingerprint, CertSummary};
use crate::tls::{NameReason, TlsContext};
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
}

impl ChainEntry {
    fn from_der(der: &[u8]) -> Option<ChainEntry> {
        CertSummary::from_der(der).map(|cert| ChainEntry {
            days_left: cert.days_left(),
            cert,
        })
    }
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct Report {
    pub master: String,
    pub master_port_source: String,
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
    pub alpn: Option<String>,
    pub handshake_ms: Option<f64>,
    pub resumed_on_second_dial: Option<bool>,
    pub chain: Vec<ChainEntry>,
    pub verified: bool,
    pub ok: bool,
    pub error: Option<String>,
    pub error_kind: Option<String>,
    pub warnings: Vec<String>,
}

fn trust_source(tls: &TlsSettings, anchors: usize) -> String {
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
    let dialed = up.connect().await.map_err(|e| e.to_string())?;
    let mut tls = up
        .handshake(
            dialed.addr,
            dialed.stream,
            cfg,
            ctx.name.server_name.clone(),
        )
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
async fn dial_and_report(config: &Config, explain: bool) -> Report {
    let mut r = Report {
        master: format!("{}:{}", config.master.host, config.master.port),
        master_port_source: config.master.port_source.clone(),
        tls_enabled: config.tls.enabled,
        ..Default::default()
    };
    let up = Upstream::for_config(config, Arc::new(SystemResolver));
    if !config.tls.enabled {
        r.trust = "none: security.tls.enabled is false (plain TCP)".into();
        r.warnings.push(
            "security.tls.enabled is false: the proxy relays plain TCP and encrypts nothing".into(),
        );
        match up.connect().await {
            Ok(d) => {
                r.attempts = d.attempts.iter().map(AttemptReport::from).collect();
                r.ok = true;
            }
            Err(e) => fail(&mut r, &e),
        }
        return r;
    }
    let ctx = match TlsContext::new(config) {
        Ok(c) => c,
        Err(e) => {
            r.error = Some(e.to_string());
            r.error_kind = Some("config".into());
            return r;
        }
    };
    r.trust = trust_source(&config.tls, ctx.anchors);
    r.name = Some(ctx.name.name());
    r.name_reason = Some(ctx.name.reason.to_string());
    r.sni = ctx.name.sni();
    r.client_certificate = ctx.has_client_cert();
    if ctx.skip_verify {
        r.warnings.push(
            "security.tls.skip_verify is true: NOTHING WAS VERIFIED — the connection is encrypted, but to whoever answered"
                .into(),
        );
    }
    if matches!(ctx.name.reason, NameReason::IpSan) && config.tls.master_cert.is_none() {
        r.warnings.push("master_host is an IP and no name is set: the certificate must hold this IP as an IP SAN".into());
    }
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
    let mut tls = match up
        .handshake(
            dialed.addr,
            dialed.stream,
            cfg.clone(),
            ctx.name.server_name.clone(),
        )
        .await
    {
        Ok(t) => t,
        Err(e) => {
            fail(&mut r, &e);
            if explain && is_cert_failure(&e) {
                if let Ok(chain) = fetch_chain(config).await {
                    r.chain = chain
                        .iter()
                        .filter_map(|c| ChainEntry::from_der(c))
                        .collect();
                }
            }
            return r;
        }
    };
    r.handshake_ms = Some(started.elapsed().as_secs_f64() * 1000.0);
    {
        let conn = tls.get_ref().1;
        r.tls_version = Some(version_name(conn.protocol_version()).to_string());
        r.cipher_suite = conn
            .negotiated_cipher_suite()
            .map(|s| format!("{:?}", s.suite()));
        r.key_exchange = conn
            .negotiated_key_exchange_group()
            .map(|g| format!("{:?}", g.name()));
        r.alpn = conn
            .alpn_protocol()
            .map(|p| String::from_utf8_lossy(p).into_owned());
        r.chain = conn
            .peer_certificates()
            .map(|c| c.iter().filter_map(|c| ChainEntry::from_der(c)).collect())
            .unwrap_or_default();
    }
    settle_and_close(&mut tls).await;
    r.verified = !ctx.skip_verify;
    r.ok = true;
    if let Some(leaf) = r.chain.first() {
        if leaf.days_left < crate::diagnose::EXPIRY_WARNING.as_secs() as i64 / 86_400 {
            r.warnings.push(format!(
                "the master's certificate expires in {} days",
                leaf.days_left
            ));
        }
    }

    if !explain {
        return r;
    }
    // A second dial shows whether the master resumes sessions (it saves a handshake per
    // agent reconnect).
    if let Ok(d) = up.connect().await {
        if let Ok(mut t) = up
            .handshake(d.addr, d.stream, cfg, ctx.name.server_name.clone())
            .await
        {
            r.resumed_on_second_dial = Some(matches!(
                t.get_ref().1.handshake_kind(),
                Some(rustls::HandshakeKind::Resumed)
            ));
            settle_and_close(&mut t).await;
        }
    }
    r
}

fn fail(r: &mut Report, e: &UpstreamError) {
    if let UpstreamError::Connect { attempts } = e {
        r.attempts = attempts.iter().map(AttemptReport::from).collect();
    }
    r.error = Some(e.to_string());
    r.error_kind = Some(e.kind().to_string());
    r.ok = false;
}

fn print_chain(out: &mut String, chain: &[ChainEntry]) {
    for (i, c) in chain.iter().enumerate() {
        let s = &c.cert;
        out.push_str(&format!("  [{i}] subject   {}\n", s.subject));
        out.push_str(&format!("      issuer    {}\n", s.issuer));
        out.push_str(&format!(
            "      DNS       {}\n",
            if s.dns_names.is_empty() {
                "-".to_string()
            } else {
                s.dns_names.join(", ")
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
    }
}

impl Report {
    pub fn render(&self) -> String {
        let mut o = String::new();
        o.push_str(&format!(
            "master      {}  (port from {})\n",
            self.master, self.master_port_source
        ));
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
                self.alpn.as_deref().unwrap_or("none")
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
        for w in &self.warnings {
            o.push_str(&format!("WARNING: {w}\n"));
        }
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
        o
    }
}

// === trust ===

#[derive(Debug, Clone, Default)]
pub struct TrustOptions {
    pub fingerprint: Option<String>,
    pub yes: bool,
    pub out: Option<PathBuf>,
    pub force: bool,
    /// `Some(None)`: the default store; `Some(Some(p))`: that file.
    pub from_cli_store: Option<Option<PathBuf>>,
}

#[derive(Debug, thiserror::Error)]
pub enum TrustCmdError {
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    Failed(String),
}

fn pem_chain(chain: &[CertificateDer<'_>]) -> String {
    let mut s = String::new();
    for c in chain {
        s.push_str("-----BEGIN CERTIFICATE-----\n");
        let b64 = crate::diagnose::base64(c.as_ref());
        for line in b64.as_bytes().chunks(64) {
            s.push_str(std::str::from_utf8(line).unwrap_or(""));
            s.push('\n');
        }
        s.push_str("-----END CERTIFICATE-----\n");
    }
    s
}

fn default_cli_store() -> PathBuf {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
        .unwrap_or_else(|| PathBuf::from("."));
    base.join("determined").join("certs.json")
}

/// Finds this master's chain in the CLI's store (JSON object: master URL → PEM chain).
fn from_cli_store(path: &Path, config: &Config) -> Result<(String, String), TrustCmdError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| TrustCmdError::Failed(format!("cannot read {}: {e}", path.display())))?;
    let map: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(&text).map_err(|e| {
            TrustCmdError::Failed(format!(
                "{} is not the CLI's certs.json (a JSON object of master URL → PEM): {e}",
                path.display()
            ))
        })?;
    let host = config
        .master
        .host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_ascii_lowercase();
    let mut candidates = Vec::new();
    for (url, pem) in &map {
        let Some(pem) = pem.as_str() else { continue };
        let rest = url.split("://").nth(1).unwrap_or(url).trim_end_matches('/');
        let authority = rest.split('/').next().unwrap_or(rest);
        let (h, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(':') && p.chars().all(|c| c.is_ascii_digit()) => {
                (h, p.parse::<u16>().ok())
            }
            _ => (authority, None),
        };
        let h = h
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_ascii_lowercase();
        if h == host {
            candidates.push((port, url.clone(), pem.to_string()));
        }
    }
    let exact = candidates
        .iter()
        .find(|(p, _, _)| *p == Some(config.master.port));
    let chosen = exact
        .or_else(|| candidates.iter().find(|(p, _, _)| p.is_none()))
        .or(candidates.first());
    match chosen {
        Some((_, url, pem)) => Ok((url.clone(), pem.clone())),
        None => Err(TrustCmdError::Failed(format!(
            "{} holds no certificate for {} (it has: {})",
            path.display(),
            config.master.host,
            map.keys().cloned().collect::<Vec<_>>().join(", ")
        ))),
    }
}

/// A temporary file beside `path` holding `contents` (mode 0644, synced), ready to be renamed
/// over it.
fn stage(path: &Path, contents: &str) -> std::io::Result<tempfile::NamedTempFile> {
    use std::os::unix::fs::PermissionsExt;
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    tmp.write_all(contents.as_bytes())?;
    tmp.as_file().sync_all()?;
    tmp.as_file()
        .set_permissions(std::fs::Permissions::from_mode(0o644))?;
    Ok(tmp)
}

/// `det-tls-proxy trust`. Returns the lines to print on success.
pub async fn trust(
    config: &Config,
    opts: &TrustOptions,
    out: &mut dyn Write,
) -> Result<(), TrustCmdError> {
    let target = opts
        .out
        .clone()
        .or_else(|| config.tls.master_cert.clone())
        .ok_or_else(|| TrustCmdError::Usage("nowhere to write: set security.tls.master_cert (the file to create) or pass --out FILE".into()))?;
    let stdin_tty = std::io::stdin().is_terminal();
    if opts.yes && !stdin_tty && opts.fingerprint.is_none() {
        return Err(TrustCmdError::Usage(
            "--yes is refused without a terminal: pass --fingerprint with the master's SHA-256 fingerprint (no silent trust)".into(),
        ));
    }
    let expected = match &opts.fingerprint {
        Some(f) => Some(parse_fingerprint(f).ok_or_else(|| {
            TrustCmdError::Usage(format!(
                "--fingerprint {f:?} is not a SHA-256 fingerprint (32 hex pairs, e.g. AB:CD:...)"
            ))
        })?),
        None => None,
    };

    let (pem, chain_ders): (String, Vec<CertificateDer<'static>>) = match &opts.from_cli_store {
        Some(store) => {
            let path = store.clone().unwrap_or_else(default_cli_store);
            let (url, pem) = from_cli_store(&path, config)?;
            let certs = crate::pem::certs_from_pem(&path, pem.as_bytes())
                .map_err(|e| TrustCmdError::Failed(e.to_string()))?;
            let _ = writeln!(out, "from the CLI's store {} entry {url}", path.display());
            (pem_chain(&certs), certs)
        }
        None => {
            let chain = fetch_chain(config).await.map_err(|e| {
                TrustCmdError::Failed(format!("cannot fetch the master's certificate: {e}"))
            })?;
            if chain.is_empty() {
                return Err(TrustCmdError::Failed(
                    "the master sent no certificate".into(),
                ));
            }
            (pem_chain(&chain), chain)
        }
    };
    let entries: Vec<ChainEntry> = chain_ders
        .iter()
        .filter_map(|c| ChainEntry::from_der(c))
        .collect();
    let mut shown = String::new();
    let _ = writeln!(
        out,
        "master {}:{} presents {} certificate(s):",
        config.master.host,
        config.master.port,
        entries.len()
    );
    print_chain(&mut shown, &entries);
    let _ = write!(out, "{shown}");
    let leaf_fp = entries
        .first()
        .map(|e| e.cert.sha256.clone())
        .unwrap_or_default();
    let _ = writeln!(out, "leaf SHA-256 fingerprint: {leaf_fp}");
    let _ = writeln!(out, "  (compare with `openssl x509 -noout -fingerprint -sha256 -in <master cert>` on the master)");

    match expected {
        Some(fp) if fp == leaf_fp => {
            let _ = writeln!(out, "fingerprint matches --fingerprint");
        }
        Some(fp) => {
            return Err(TrustCmdError::Failed(format!(
                "fingerprint mismatch: expected {fp}, the master presents {leaf_fp}; nothing written"
            )))
        }
        None if opts.yes && stdin_tty => {}
        None if stdin_tty => {
            let _ = write!(out, "Trust this certificate and write the chain to {}? [y/N] ", target.display());
            let _ = out.flush();
            let mut answer = String::new();
            let _ = std::io::stdin().read_line(&mut answer);
            if !matches!(answer.trim().to_ascii_lowercase().as_str(), "y" | "yes") {
                return Err(TrustCmdError::Failed("not confirmed; nothing written".into()));
            }
        }
        None => {
            return Err(TrustCmdError::Usage(
                "no terminal to confirm on: pass --fingerprint with the leaf's SHA-256 fingerprint (no silent trust)".into(),
            ))
        }
    }

    // Something must anchor the chain: a self-signed last certificate. A master that sends
    // only its leaf (or stops at an intermediate) leaves nothing to trust.
    if let Some(last) = entries.last() {
        if !last.cert.self_signed {
            return Err(TrustCmdError::Failed(format!(
                "the chain ends at {} issued by {}, which the master did not send, so nothing written could anchor it; \
                 get that issuer's certificate from the master's operator and put it with the chain in {} \
                 (Determined's master certificate file should hold the full chain to a root)",
                last.cert.subject,
                last.cert.issuer,
                target.display()
            )));
        }
    }

    let unchanged = match std::fs::read_to_string(&target) {
        Ok(existing) if existing == pem => true,
        Ok(_) if !opts.force => {
            return Err(TrustCmdError::Failed(format!(
                "{} exists with other contents; pass --force to replace it",
                target.display()
            )))
        }
        _ => false,
    };
    // Written beside the target first and proven with the same verification as `run`; only
    // a chain that verifies replaces the file (atomically), so a failure leaves nothing behind.
    let staged = if unchanged {
        None
    } else {
        Some(stage(&target, &pem).map_err(|e| {
            TrustCmdError::Failed(format!("cannot write beside {}: {e}", target.display()))
        })?)
    };
    let mut verify_cfg = config.clone();
    verify_cfg.tls.master_cert = Some(
        staged
            .as_ref()
            .map(|t| t.path().to_path_buf())
            .unwrap_or_else(|| target.clone()),
    );
    verify_cfg.tls.skip_verify = false;
    let report = dial_and_report(&verify_cfg, false).await;
    if !report.ok || report.error.is_some() {
        return Err(TrustCmdError::Failed(format!(
            "the chain does not verify as `run` would, so nothing was written: {}",
            report.error.clone().unwrap_or_default()
        )));
    }
    match staged {
        None => {
            let _ = writeln!(out, "{} already holds this chain", target.display());
        }
        Some(tmp) => {
            tmp.persist(&target).map_err(|e| {
                TrustCmdError::Failed(format!("cannot write {}: {}", target.display(), e.error))
            })?;
            let _ = writeln!(
                out,
                "wrote {} certificate(s) to {} (mode 0644)",
                entries.len(),
                target.display()
            );
        }
    }
    let _ = writeln!(
        out,
        "OK: verified {} as {} with {}",
        report.master,
        report.name.as_deref().unwrap_or("?"),
        target.display()
    );
    Ok(())
}

fn is_cert_failure(e: &UpstreamError) -> bool {
    match e {
        UpstreamError::Handshake { kind, .. } => kind.is_cert(),
        _ => false,
    }
}
