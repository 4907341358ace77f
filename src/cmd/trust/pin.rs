//! `trust --pin`: the confirmed certificate's SHA-256 fingerprint added to the proxy's own
//! file as `security.tls.master_cert_sha256`. The file's text is edited (comments and layout
//! kept, `config::edit`), the result loaded and validated as `run` loads it from a temporary
//! file beside it, and only then renamed into place with the file's mode.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::config::edit::{add_to_list, by_hand, list_at};
use crate::config::{self, Config, Overrides, Purpose, KEYS};
use crate::diagnose::parse_fingerprint;

use super::TrustCmdError;
use crate::cmd::staged::{stage, Like};

const KEY: &str = "security.tls.master_cert_sha256";
const PATH: &[&str] = &["security", "tls", "master_cert_sha256"];

/// The file `--pin` edits: the proxy's own, as the layers picked it.
pub(super) fn pin_target(config: &Config) -> Result<PathBuf, TrustCmdError> {
    config.config_file.clone().ok_or_else(|| {
        TrustCmdError::Usage(format!(
            "--pin writes {KEY} into the proxy's configuration file, and none was read: pass --config FILE \
             (or set DET_TLS_PROXY_CONFIG; the default {} does not exist)",
            config::DEFAULT_CONFIG_PATH
        ))
    })
}

/// Adds `fp` (canonical) to the pins of `file`, keeping the pins already there.
pub(super) fn write_pin(
    flags: &Overrides,
    file: &Path,
    fp: &str,
    out: &mut dyn Write,
) -> Result<(), TrustCmdError> {
    let failed = |m: String| TrustCmdError::Failed(m);
    // A symlinked file (a ConfigMap, /etc/alternatives) stays a link: its target is replaced.
    let real = std::fs::canonicalize(file)
        .map_err(|e| failed(format!("cannot read {}: {e}", file.display())))?;
    let text = std::fs::read_to_string(&real)
        .map_err(|e| failed(format!("cannot read {}: {e}", file.display())))?;
    let existing = list_at(&text, PATH)
        .map_err(|e| failed(format!("cannot read {KEY} in {}: {e}", file.display())))?;
    let others: Vec<String> = existing
        .iter()
        .filter(|p| parse_fingerprint(p).as_deref() != Some(fp))
        .cloned()
        .collect();
    if others.len() < existing.len() {
        let _ = writeln!(out, "{} already pins {fp}; unchanged", file.display());
        say_kept(&others, file, out);
        say_overridden(
            overridden_by(&config::assemble(&config::env_vars(), flags).ok()),
            out,
        );
        return Ok(());
    }
    let edited = add_to_list(&text, PATH, &[fp.to_string()]).map_err(|why| {
        let all: Vec<String> = existing.iter().cloned().chain([fp.to_string()]).collect();
        failed(format!(
            "cannot edit {} safely: {why}; nothing written. Add the pin by hand (merged with the \
             file's own security.tls section; in a flow mapping write master_cert_sha256: [{}]):\n{}",
            file.display(),
            all.iter().map(|p| format!("\"{p}\"")).collect::<Vec<_>>().join(", "),
            by_hand(PATH, &all).trim_end()
        ))
    })?;
    let tmp = stage(&real, &edited, Like::Existing)
        .map_err(|e| failed(format!("cannot write beside {}: {e}", file.display())))?;
    let source = validate_staged(flags, tmp.path(), file, fp)?;
    tmp.persist(&real)
        .map_err(|e| failed(format!("cannot write {}: {}", file.display(), e.error)))?;
    let _ = writeln!(out, "pinned {fp} in {} ({KEY})", file.display());
    say_kept(&others, file, out);
    say_overridden(source, out);
    let _ = writeln!(
        out,
        "the rest of {} is unchanged; `det-tls-proxy config` shows the key and its source",
        file.display()
    );
    Ok(())
}

/// The staged file loaded as `run` loads the configuration (same environment, same flags,
/// the staged file as `--config`): it must validate and hold the pin. Returns the higher
/// layer overriding the file's pins, if any.
fn validate_staged(
    flags: &Overrides,
    staged: &Path,
    file: &Path,
    fp: &str,
) -> Result<Option<String>, TrustCmdError> {
    let mut with_staged = flags.clone();
    with_staged.config = Some(staged.to_path_buf());
    let named = |e: String| e.replace(&staged.display().to_string(), &file.display().to_string());
    let loaded = config::assemble(&config::env_vars(), &with_staged).map_err(|e| {
        TrustCmdError::Failed(format!(
            "{} with the pin added does not load as `run` would load it, so nothing was written:\n{}",
            file.display(),
            named(e.to_string())
        ))
    })?;
    let valid = config::validate(&loaded, Purpose::Serve).map_err(|e| {
        TrustCmdError::Failed(format!(
            "{} with the pin added does not validate as `run` would validate it, so nothing was written:\n{}",
            file.display(),
            named(e.to_string())
        ))
    })?;
    let source = overridden_by(&Some(loaded));
    if source.is_none() && !valid.tls.master_cert_sha256.iter().any(|p| p == fp) {
        return Err(TrustCmdError::Failed(format!(
            "{} with the pin added does not pin {fp} when loaded; nothing written",
            file.display()
        )));
    }
    Ok(source)
}

/// The environment variable or flag setting the pins above the file, if one does.
fn overridden_by(loaded: &Option<config::Loaded>) -> Option<String> {
    let source = loaded.as_ref()?.source_of(KEY);
    let decl = KEYS.iter().find(|d| d.key == KEY)?;
    let flag = decl.flag.map(|f| format!("--{f}"));
    (decl.env == Some(source.as_str()) || flag.as_deref() == Some(source.as_str()))
        .then_some(source)
}

fn say_kept(others: &[String], file: &Path, out: &mut dyn Write) {
    if others.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "kept the pin(s) already in {}: {}; the master is accepted with any of them while it \
         changes over; once it presents only the new certificate, remove {} from {KEY}",
        file.display(),
        others.join(", "),
        if others.len() == 1 { "it" } else { "them" }
    );
}

fn say_overridden(source: Option<String>, out: &mut dyn Write) {
    if let Some(s) = source {
        let _ = writeln!(
            out,
            "WARNING: {s} sets {KEY} above the file, so the pin written will not take effect until {s} is removed"
        );
    }
}
