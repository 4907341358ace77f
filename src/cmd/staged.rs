//! Writing a file the operator owns without ever leaving it half-written: the new contents go
//! to a temporary file beside it (same directory, so the rename stays on one file system),
//! synced, with the mode (and owner) it must have, ready to be renamed over it.

use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use tempfile::NamedTempFile;

/// The mode and owner the staged file gets.
pub(crate) enum Like {
    /// A new file: this mode, the process's owner.
    Mode(u32),
    /// The file it replaces: its mode and owner (an owner this process may not give is an
    /// error that says so).
    Existing,
}

/// `contents` in a temporary file beside `path`, synced, with the mode and owner `like` says.
pub(crate) fn stage(path: &Path, contents: &str, like: Like) -> std::io::Result<NamedTempFile> {
    let (mode, owner) = match like {
        Like::Mode(m) => (m, None),
        Like::Existing => {
            let meta = std::fs::metadata(path)?;
            (meta.mode() & 0o7777, Some((meta.uid(), meta.gid())))
        }
    };
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut tmp = NamedTempFile::new_in(dir)?;
    tmp.write_all(contents.as_bytes())?;
    tmp.as_file().sync_all()?;
    let file = tmp.as_file();
    file.set_permissions(std::fs::Permissions::from_mode(mode))?;
    if let Some((uid, gid)) = owner {
        let now = file.metadata()?;
        if now.uid() != uid || now.gid() != gid {
            std::os::unix::fs::fchown(file, Some(uid), Some(gid)).map_err(|e| {
                std::io::Error::new(
                    e.kind(),
                    format!("cannot give the new file the old one's owner {uid}:{gid} ({e}); run as that user or root"),
                )
            })?;
        }
    }
    Ok(tmp)
}
