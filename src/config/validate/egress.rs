//! `upstream_proxy`, `upstream_proxy_credentials` and `upstream_no_proxy`: the HTTP proxy
//! upstream connections are tunnelled through, its user and password, and the masters reached
//! directly despite it.

use std::path::{Path, PathBuf};

use super::Check;
use crate::config::layers::Purpose;
use crate::config::raw::RawConfig;
use crate::egress::{Egress, NoProxy, ProxyUrl};

const CREDENTIALS: &str = "upstream_proxy_credentials";

pub(super) fn egress(c: &mut Check, raw: &RawConfig, purpose: Purpose) -> Egress {
    let mut proxy = match raw.upstream_proxy.as_deref().map(ProxyUrl::parse) {
        None => None,
        Some(Ok(p)) => p,
        Some(Err(e)) => {
            let source = c.src("upstream_proxy");
            c.fail("upstream_proxy", e, Some(source));
            None
        }
    };
    let file = raw
        .upstream_proxy_credentials
        .as_deref()
        .filter(|p| !p.as_os_str().is_empty());
    if let Some(file) = file {
        credentials(c, proxy.as_mut(), file, purpose);
    }
    let no_proxy = match NoProxy::parse(raw.upstream_no_proxy.as_deref().unwrap_or_default()) {
        Ok(n) => n,
        Err(e) => {
            let source = c.src("upstream_no_proxy");
            c.fail("upstream_no_proxy", e, Some(source));
            NoProxy::default()
        }
    };
    Egress {
        source: c.src("upstream_proxy"),
        proxy,
        no_proxy,
    }
}

/// `upstream_proxy_credentials`: the proxy's user and password read from a file, so the
/// configuration itself can be world-readable (systemd's `LoadCredential=` hands the service a
/// private copy under `$CREDENTIALS_DIRECTORY`). `config` reads no file; `run`, `check` and
/// `trust` do, and a reload reads it again.
fn credentials(c: &mut Check, proxy: Option<&mut ProxyUrl>, file: &Path, purpose: Purpose) {
    let source = c.src(CREDENTIALS);
    let Some(proxy) = proxy else {
        let message = format!(
            "no upstream_proxy (nor HTTPS_PROXY) is set (upstream_proxy from {}), so these credentials would go unused: set upstream_proxy to http://HOST:PORT, or remove upstream_proxy_credentials",
            c.src("upstream_proxy")
        );
        c.fail(CREDENTIALS, message, Some(source));
        return;
    };
    if proxy.auth.is_some() {
        let message = format!(
            "upstream_proxy ({proxy}, from {}) already holds a user and password; keep them in one place: remove them from upstream_proxy, or remove upstream_proxy_credentials",
            c.src("upstream_proxy")
        );
        c.fail(CREDENTIALS, message, Some(source));
        return;
    }
    if purpose == Purpose::Show {
        return;
    }
    let dir = c.loaded.credentials_directory.as_deref();
    let path = resolve(file, dir);
    match read_credentials(&path) {
        Ok(auth) => {
            proxy.auth = Some(auth);
            proxy.auth_file = Some(path);
        }
        Err(e) => {
            let unset = if file.is_relative() && dir.is_none() && !path.exists() {
                " (a relative path is looked up under $CREDENTIALS_DIRECTORY, which systemd's LoadCredential= sets and which is not set here)"
            } else {
                ""
            };
            c.fail(CREDENTIALS, format!("{e}{unset}"), Some(source));
        }
    }
}

/// `file` under `$CREDENTIALS_DIRECTORY` when it is relative and that is set.
fn resolve(file: &Path, dir: Option<&Path>) -> PathBuf {
    match dir {
        Some(d) if file.is_relative() => d.join(file),
        _ => file.to_path_buf(),
    }
}

/// `USER:PASSWORD` on one line, the trailing newline dropped. No error repeats what the file
/// holds: a mistake there may be the password itself.
fn read_credentials(path: &Path) -> Result<(String, String), String> {
    let shown = path.display();
    let form = "write USER:PASSWORD on one line";
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {shown}: {e}"))?;
    let text = String::from_utf8(bytes).map_err(|_| format!("{shown} is not UTF-8 text; {form}"))?;
    let line = text.strip_suffix('\n').unwrap_or(&text);
    let line = line.strip_suffix('\r').unwrap_or(line);
    if line.is_empty() {
        return Err(format!("{shown} is empty; {form}"));
    }
    if line.contains(['\n', '\r']) {
        return Err(format!("{shown} holds more than one line; {form}"));
    }
    match line.split_once(':') {
        Some((user, password)) if !user.is_empty() => Ok((user.into(), password.into())),
        _ => Err(format!("{shown} holds no USER:PASSWORD (a user, ':', then the password); {form}")),
    }
}

#[cfg(test)]
mod tests {
    use super::{read_credentials, resolve};
    use crate::config::validate::testing::{has, mistakes, valid};
    use std::path::Path;

    #[test]
    fn a_proxy_url_and_its_exceptions_are_read() {
        let c = valid("master_host: det.corp\nupstream_proxy: \"http://u:pw@proxy:3128\"\nupstream_no_proxy: [.lab]\n");
        assert_eq!(c.egress.route("det.corp", 8443).map(|p| p.to_string()), Some("http://u:***@proxy:3128".into()));
        assert!(c.egress.route("x.lab", 8443).is_none());
        let off = valid("master_host: det\nupstream_proxy: none\n");
        assert!(off.egress.proxy.is_none());
    }

    #[test]
    fn a_bad_proxy_url_is_refused_without_its_password() {
        let m = mistakes("master_host: det\nupstream_proxy: \"socks5://u:hunter2@p:1\"\n");
        assert!(has(&m, "upstream_proxy", "only http://"), "{m:?}");
        assert!(!format!("{m:?}").contains("hunter2"));
        let m = mistakes("master_host: det\nupstream_no_proxy: [10.0.0.0/40]\n");
        assert!(has(&m, "upstream_no_proxy", "not a CIDR"), "{m:?}");
    }

    #[test]
    fn a_credentials_file_holds_one_user_password_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("auth");
        let read = |text: &str| {
            std::fs::write(&path, text).unwrap();
            read_credentials(&path)
        };
        assert_eq!(read("ops:pa:ss w0rd\n"), Ok(("ops".into(), "pa:ss w0rd".into())));
        assert_eq!(read("ops:\r\n"), Ok(("ops".into(), String::new())));
        for (text, words) in [
            ("", "is empty"),
            ("\n", "is empty"),
            ("hunter2\n", "holds no USER:PASSWORD"),
            (":hunter2", "holds no USER:PASSWORD"),
            ("ops:hunter2\nops:hunter3\n", "more than one line"),
        ] {
            let e = read(text).unwrap_err();
            assert!(e.contains(words) && !e.contains("hunter"), "{text:?}: {e}");
        }
        std::fs::write(&path, b"ops:\xff").unwrap();
        assert!(read_credentials(&path).unwrap_err().contains("not UTF-8"));
        let e = read_credentials(&dir.path().join("absent")).unwrap_err();
        assert!(e.contains("cannot read"), "{e}");
    }

    #[test]
    fn a_relative_credentials_file_is_under_the_credentials_directory() {
        let d = Some(Path::new("/run/credentials/det-tls-proxy.service"));
        assert_eq!(resolve(Path::new("proxy-auth"), d), Path::new("/run/credentials/det-tls-proxy.service/proxy-auth"));
        assert_eq!(resolve(Path::new("/etc/auth"), d), Path::new("/etc/auth"));
        assert_eq!(resolve(Path::new("auth"), None), Path::new("auth"));
    }

    #[test]
    fn credentials_in_the_url_and_a_file_or_without_a_proxy_are_refused() {
        let m = mistakes("master_host: det\nupstream_proxy: \"http://u:hunter2@p:1\"\nupstream_proxy_credentials: /auth\n");
        assert!(has(&m, "upstream_proxy_credentials", "upstream_proxy (http://u:***@p:1"), "{m:?}");
        assert!(!format!("{m:?}").contains("hunter2"));
        let m = mistakes("master_host: det\nupstream_proxy: none\nupstream_proxy_credentials: /auth\n");
        assert!(has(&m, "upstream_proxy_credentials", "no upstream_proxy"), "{m:?}");
        valid("master_host: det\nupstream_proxy: \"http://p:1\"\nupstream_proxy_credentials: /auth\n");
    }
}
