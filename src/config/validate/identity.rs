//! `identity.*`: `container_api`, the container runtime's API socket. The operator asked for
//! it, so `run` (and `check`, and a reload) refuse a path where no socket is: a typo must not
//! leave bridge clients unidentified in silence. The socket may go away later (the runtime
//! restarts); the directory then retries and says why.

use std::os::unix::fs::FileTypeExt;
use std::path::PathBuf;

use super::Check;
use crate::config::layers::Purpose;
use crate::config::raw::RawIdentity;

const KEY: &str = "identity.container_api";

pub(super) fn container_api(c: &mut Check, raw: &RawIdentity, purpose: Purpose) -> Option<PathBuf> {
    let path = raw.container_api.clone().filter(|p| !p.as_os_str().is_empty())?;
    let source = c.src(KEY);
    if !path.is_absolute() {
        c.fail(
            KEY,
            format!("{:?} is not an absolute path (write /var/run/docker.sock)", path.display().to_string()),
            Some(source),
        );
        return None;
    }
    if purpose == Purpose::Show {
        return Some(path);
    }
    match std::fs::metadata(&path) {
        Ok(m) if m.file_type().is_socket() => {}
        Ok(_) => c.fail(
            KEY,
            format!("{} is not a unix socket (name the container runtime's API socket, e.g. /var/run/docker.sock)", path.display()),
            Some(source),
        ),
        Err(e) => {
            let what = match e.kind() {
                std::io::ErrorKind::NotFound => format!("no socket at {}", path.display()),
                _ => format!("{}: {e}", path.display()),
            };
            c.fail(
                KEY,
                format!("{what} (start the container runtime first, e.g. dockerd or `podman system service`, or remove the key)"),
                Some(source),
            )
        }
    }
    Some(path)
}

#[cfg(test)]
mod tests {
    use crate::config::validate::testing::{has, mistakes, valid};

    #[test]
    fn off_by_default_and_an_absolute_path_when_set() {
        assert_eq!(valid("master_host: det\n").container_api, None);
        assert_eq!(valid("master_host: det\nidentity: {container_api: \"\"}\n").container_api, None);
        let c = valid("master_host: det\nidentity: {container_api: /run/docker.sock}\n");
        assert_eq!(c.container_api.unwrap().to_str(), Some("/run/docker.sock"));
        let m = mistakes("master_host: det\nidentity: {container_api: run/docker.sock}\n");
        assert!(has(&m, "identity.container_api", "not an absolute path"), "{m:?}");
    }
}
