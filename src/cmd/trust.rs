//! `det-tls-proxy trust`: fetch the master's chain without verifying it, have the operator
//! confirm its fingerprint, prove the chain verifies as `run` would, and only then write it
//! (or, with `--pin`, add the leaf's fingerprint to the proxy's file: `pin.rs`).

mod pin;

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};

use rustls::pki_types::CertificateDer;

use crate::config::{self, Config, Overrides, Purpose};
use crate::diagnose::parse_fingerprint;
use crate::exit;

use super::check::{dial_and_report, fetch_chain};
use super::check_report::{print_chain, ChainEntry};
use super::staged::{stage, Like};

#[derive(Debug, Clone, Default)]
pub struct TrustOptions {
    pub fingerprint: Option<String>,
    pub yes: bool,
    pub out: Option<PathBuf>,
    pub force: bool,
    /// `Some(None)`: the default store; `Some(Some(p))`: that file.
    pub from_cli_store: Option<Option<PathBuf>>,
    /// Pin the leaf's fingerprint in the proxy's file instead of writing a CA bundle.
    pub pin: bool,
}

/// Where the confirmed trust goes.
enum Target {
    /// A PEM bundle: `--out` or `security.tls.master_cert`.
    Bundle(PathBuf),
    /// `--pin`: the proxy's own configuration file.
    Pin(PathBuf),
}

impl Target {
    fn pick(config: &Config, opts: &TrustOptions) -> Result<Target, TrustCmdError> {
        let usage = |m: &str| Err(TrustCmdError::Usage(m.into()));
        match opts {
            TrustOptions { pin: true, out: Some(_), .. } => usage(
                "--pin writes the fingerprint into the configuration file, --out a certificate file: give one of them",
            ),
            TrustOptions { pin: true, force: true, .. } => usage(
                "--force replaces a certificate file; --pin keeps the file's other pins and needs no --force",
            ),
            TrustOptions { pin: true, .. } => pin::pin_target(config).map(Target::Pin),
            _ => opts
                .out
                .clone()
                .or_else(|| config.tls.master_cert.clone())
                .map(Target::Bundle)
                .ok_or_else(|| TrustCmdError::Usage("nowhere to write: set security.tls.master_cert (the file to create) or pass --out FILE".into())),
        }
    }

    fn question(&self) -> String {
        match self {
            Target::Bundle(p) => format!(
                "Trust this certificate and write the chain to {}?",
                p.display()
            ),
            Target::Pin(p) => format!(
                "Pin this certificate's SHA-256 fingerprint in {}?",
                p.display()
            ),
        }
    }
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
            crate::untrusted::escape(&map.keys().cloned().collect::<Vec<_>>().join(", "))
        ))),
    }
}

/// `det-tls-proxy trust`: fetch (or import), show, confirm, prove, write (or pin).
pub async fn trust(
    config: &Config,
    flags: &Overrides,
    opts: &TrustOptions,
    out: &mut dyn Write,
) -> Result<(), TrustCmdError> {
    let target = Target::pick(config, opts)?;
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
    let (pem, chain_ders) = obtain_chain(config, opts, out).await?;
    let entries: Vec<ChainEntry> = chain_ders
        .iter()
        .filter_map(|c| ChainEntry::from_der(c))
        .collect();
    let leaf_fp = show_chain(config, &entries, out);
    confirm(
        expected,
        &leaf_fp,
        opts.yes,
        stdin_tty,
        &target.question(),
        out,
    )?;
    match target {
        Target::Pin(file) => pin::write_pin(flags, &file, &leaf_fp, out),
        Target::Bundle(path) => {
            write_verified(config, opts.force, &path, &pem, entries.len(), out).await?;
            let _ = writeln!(out, "{}", anchor_note(&entries));
            Ok(())
        }
    }
}

/// The chain as PEM and DER: from the CLI's store when asked, else fetched from the master
/// without verifying it.
async fn obtain_chain(
    config: &Config,
    opts: &TrustOptions,
    out: &mut dyn Write,
) -> Result<(String, Vec<CertificateDer<'static>>), TrustCmdError> {
    if let Some(store) = &opts.from_cli_store {
        let path = store.clone().unwrap_or_else(default_cli_store);
        let (url, pem) = from_cli_store(&path, config)?;
        let certs = crate::pem::certs_from_pem(&path, pem.as_bytes())
            .map_err(|e| TrustCmdError::Failed(e.to_string()))?;
        // The store's keys are whatever was typed at `det` login: shown escaped.
        let url = crate::untrusted::Untrusted::new(url);
        let _ = writeln!(out, "from the CLI's store {} entry {url}", path.display());
        return Ok((pem_chain(&certs), certs));
    }
    let chain = fetch_chain(config).await.map_err(|e| {
        TrustCmdError::Failed(format!("cannot fetch the master's certificate: {e}"))
    })?;
    if chain.is_empty() {
        return Err(TrustCmdError::Failed(
            "the master sent no certificate".into(),
        ));
    }
    Ok((pem_chain(&chain), chain))
}

/// Prints the chain and returns the leaf's fingerprint.
fn show_chain(config: &Config, entries: &[ChainEntry], out: &mut dyn Write) -> String {
    let mut shown = String::new();
    let _ = writeln!(
        out,
        "master {}:{} presents {} certificate(s):",
        config.master.host,
        config.master.port,
        entries.len()
    );
    print_chain(&mut shown, entries);
    let _ = write!(out, "{shown}");
    let leaf_fp = entries
        .first()
        .map(|e| e.cert.sha256.clone())
        .unwrap_or_default();
    let _ = writeln!(out, "leaf SHA-256 fingerprint: {leaf_fp}");
    let _ = writeln!(out, "  (compare with `openssl x509 -noout -fingerprint -sha256 -in <master cert>` on the master)");
    leaf_fp
}

/// The operator's confirmation: `--fingerprint` matching the leaf, or a "y" on a terminal.
/// Nothing is trusted silently.
fn confirm(
    expected: Option<String>,
    leaf_fp: &str,
    yes: bool,
    stdin_tty: bool,
    question: &str,
    out: &mut dyn Write,
) -> Result<(), TrustCmdError> {
    match expected {
        Some(fp) if fp == leaf_fp => {
            let _ = writeln!(out, "fingerprint matches --fingerprint");
            Ok(())
        }
        Some(fp) => Err(TrustCmdError::Failed(format!(
            "fingerprint mismatch: expected {fp}, the master presents {leaf_fp}; nothing written"
        ))),
        None if yes && stdin_tty => Ok(()),
        None if stdin_tty => {
            let _ = write!(out, "{question} [y/N] ");
            let _ = out.flush();
            let mut answer = String::new();
            let _ = std::io::stdin().read_line(&mut answer);
            if matches!(answer.trim().to_ascii_lowercase().as_str(), "y" | "yes") {
                Ok(())
            } else {
                Err(TrustCmdError::Failed("not confirmed; nothing written".into()))
            }
        }
        None => Err(TrustCmdError::Usage(
            "no terminal to confirm on: pass --fingerprint with the leaf's SHA-256 fingerprint (no silent trust)".into(),
        )),
    }
}

/// Which certificate of the written chain anchors trust, in an operator's words. Every CA
/// certificate of `master_cert` is an anchor and the leaf is trusted as itself, so the top
/// one sent is what later certificates must chain to; a root the master did not send is not
/// needed.
fn anchor_note(entries: &[ChainEntry]) -> String {
    let (Some(leaf), Some(top)) = (entries.first(), entries.last()) else {
        return "nothing was sent to anchor trust".into();
    };
    let renew = "a renewed certificate will need `trust` again";
    match (entries.len(), top.cert.self_signed) {
        (1, true) => format!(
            "the master's self-signed certificate {} is pinned: {renew}",
            leaf.cert.subject
        ),
        (1, false) => format!(
            "the leaf itself is pinned: {renew} (its issuer {} was not sent and is not needed)",
            leaf.cert.issuer
        ),
        (_, true) => format!(
            "the root {} is the trust anchor: a renewed leaf it issues verifies without `trust` again",
            top.cert.subject
        ),
        (_, false) => format!(
            "the intermediate {} is now the trust anchor; the root {} was not sent and is not needed \
             (a renewed leaf from the same intermediate verifies without `trust` again)",
            top.cert.subject, top.cert.issuer
        ),
    }
}

/// Written beside the target first and proven with the same verification as `run`; only a
/// chain that verifies replaces the file (atomically), so a failure leaves nothing behind.
async fn write_verified(
    config: &Config,
    force: bool,
    target: &Path,
    pem: &str,
    count: usize,
    out: &mut dyn Write,
) -> Result<(), TrustCmdError> {
    let unchanged = match std::fs::read_to_string(target) {
        Ok(existing) if existing == pem => true,
        Ok(_) if !force => {
            return Err(TrustCmdError::Failed(format!(
                "{} exists with other contents; pass --force to replace it",
                target.display()
            )))
        }
        _ => false,
    };
    let staged = if unchanged {
        None
    } else {
        Some(stage(target, pem, Like::Mode(0o644)).map_err(|e| {
            TrustCmdError::Failed(format!("cannot write beside {}: {e}", target.display()))
        })?)
    };
    let mut verify_cfg = config.clone();
    verify_cfg.tls.master_cert = Some(
        staged
            .as_ref()
            .map(|t| t.path().to_path_buf())
            .unwrap_or_else(|| target.to_path_buf()),
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
            tmp.persist(target).map_err(|e| {
                TrustCmdError::Failed(format!("cannot write {}: {}", target.display(), e.error))
            })?;
            let _ = writeln!(
                out,
                "wrote {count} certificate(s) to {} (mode 0644)",
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

/// `det-tls-proxy trust`: exit 0 when the chain is in place, 2 for a usage error, 1 otherwise.
pub fn main(flags: &Overrides, opts: TrustOptions) -> i32 {
    let config = match config::load(flags, Purpose::Trust) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return exit::CONFIG;
        }
    };
    let mut out = std::io::stdout();
    match super::runtime().block_on(trust(&config, flags, &opts, &mut out)) {
        Ok(()) => exit::OK,
        Err(TrustCmdError::Usage(m)) => {
            eprintln!("error: {m}");
            exit::CONFIG
        }
        Err(TrustCmdError::Failed(m)) => {
            eprintln!("error: {m}");
            exit::RUNTIME
        }
    }
}
