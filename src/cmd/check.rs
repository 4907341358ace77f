//! `det-tls-proxy check`: dial the master through the data path's own code and say, in an
//! operator's words, what was found and what to change.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::CertificateDer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::config::{self, Config, Overrides, Purpose, TlsSettings};
use crate::exit;
use crate::tls::{NameReason, Present, Resume, TlsContext};
use crate::untrusted::Untrusted;
use crate::upstream::{version_name, SystemResolver, Upstream, UpstreamError};

use super::check_report::{AttemptReport, ChainEntry, Report};

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
pub(crate) async fn fetch_chain(config: &Config) -> Result<Vec<CertificateDer<'static>>, String> {
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
    let cfg = ctx.client_config(&[b"http/1.1".to_vec()], Present::ClientCert, Resume::Never);
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
    let cfg = ctx.client_config(&[b"http/1.1".to_vec()], Present::ClientCert, Resume::Shared);
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
    r.error_kind = Some(e.kind().label().to_string());
    r.ok = false;
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
