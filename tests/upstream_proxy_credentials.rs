//! `upstream_proxy_credentials`: the egress proxy's user and password read from a file (a
//! relative one under `$CREDENTIALS_DIRECTORY`, where systemd's `LoadCredential=` puts it), so
//! the configuration holds no secret. Each test talks to a real squid asking for Basic
//! credentials: the file's user and password open the tunnel, a rewritten file is picked up by
//! the watcher, a bad file is refused (at start, by `check`, on reload) naming the key and never
//! what the file holds, and the password shows nowhere.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::egress::{EgressProxy, MASTER_NAME};
use common::proxy::{run_expecting_exit, Exited};
use common::*;

const USER: &str = "ops";
/// A ':' inside: only the first one separates the user from the password.
const PASSWORD: &str = "pa:ss w0rd";
const AUTH: Option<(&str, &str)> = Some((USER, PASSWORD));
const WITHIN: Duration = Duration::from_secs(10);

/// The master reached as `det-master` (only squid resolves it) through `squid`, with no
/// credentials in the URL and the credentials file `file`.
fn through(m: &Master, squid: &EgressProxy, file: &str) -> Cfg {
    Cfg::new(MASTER_NAME, m.server.port())
        .master_cert(&m.ca_pem)
        .extra(r#"admin: {listen: "127.0.0.1:0"}"#)
        .extra(&format!("upstream_proxy: {}", q(squid.url(None))))
        .extra(&format!("upstream_proxy_credentials: {}", q(file)))
}

/// `det-tls-proxy SUBCOMMAND --config CONFIG ARGS` with `env`.
fn subcommand(sub: &str, config: &Path, args: &[&str], env: &[(&str, &str)]) -> Exited {
    let mut cmd = command();
    cmd.arg(sub).arg("--config").arg(config).args(args);
    cmd.envs(env.iter().copied());
    run_to_exit(cmd, Duration::from_secs(30))
}

fn never_shows(secret: &str, text: &str) {
    assert!(
        !text.contains(secret) && !text.contains(&common::egress::encode(secret)),
        "{secret:?} leaked:\n{text}"
    );
}

/// Writes `text` to `path` by renaming a sibling over it, as a credential rotation does.
fn rewrite(path: &Path, text: &str) {
    let staged = path.with_extension("new");
    std::fs::write(&staged, text).unwrap();
    std::fs::rename(&staged, path).unwrap();
}

/// A credentials folder `dir/creds` holding `auth` with `text`.
fn credentials(dir: &Path, text: &str) -> (PathBuf, PathBuf) {
    let creds = dir.join("creds");
    std::fs::create_dir_all(&creds).unwrap();
    let file = creds.join("auth");
    std::fs::write(&file, text).unwrap();
    (creds, file)
}

#[test]
fn a_relative_file_under_credentials_directory_authenticates_the_tunnel() {
    let dir = tempdir();
    let m = Master::start(dir.path(), Behavior::Echo);
    let squid = EgressProxy::squid(dir.path(), AUTH, None);
    let (creds, _) = credentials(dir.path(), &format!("{USER}:{PASSWORD}\n"));
    let config = through(&m, &squid, "auth").write(dir.path());
    let env = [("CREDENTIALS_DIRECTORY", creds.to_str().unwrap())];

    let mut cmd = command();
    cmd.arg("run").arg("--config").arg(&config).envs(env);
    let proxy = Proxy::start_cmd(cmd);
    let local = relays(
        proxy.tcp_addr("main"),
        b"through squid with the file's password",
    );
    squid.wait_log(
        &format!("CONNECT {MASTER_NAME}:{} {USER}", m.server.port()),
        WITHIN,
    );
    let shown = format!(
        "{MASTER_NAME}:{} via http://{USER}:***@127.0.0.1:{}",
        m.server.port(),
        squid.port
    );
    assert_eq!(proxy.access_line(local)["master"], shown.as_str());

    let check = subcommand("check", &config, &[], &env);
    assert_eq!(check.code(), Some(0), "{check}");
    assert!(
        check
            .stdout
            .contains(&format!("via the HTTP proxy http://{USER}:***@127.0.0.1:")),
        "{check}"
    );
    let shown = subcommand("config", &config, &[], &env);
    assert!(
        shown.stdout.contains(&format!(
            "upstream_proxy_credentials = \"auth\"  ({})",
            config.display()
        )),
        "{shown}"
    );
    for text in [proxy.stderr(), check.to_string(), shown.to_string()] {
        never_shows(PASSWORD, &text);
    }
}

#[test]
fn the_variable_and_the_flag_name_the_file_too() {
    let dir = tempdir();
    let m = Master::start(dir.path(), Behavior::Echo);
    let squid = EgressProxy::squid(dir.path(), AUTH, None);
    let (_, file) = credentials(dir.path(), &format!("{USER}:{PASSWORD}"));
    let file = file.to_str().unwrap();
    let config = Cfg::new(MASTER_NAME, m.server.port())
        .master_cert(&m.ca_pem)
        .extra(&format!("upstream_proxy: {}", q(squid.url(None))))
        .write(dir.path());
    let var = "DET_TLS_PROXY_UPSTREAM_PROXY_CREDENTIALS";
    let flag = ["--upstream-proxy-credentials", file];
    for (source, args, env) in [
        (var, &[][..], &[(var, file)][..]),
        ("--upstream-proxy-credentials", &flag[..], &[][..]),
    ] {
        let check = subcommand("check", &config, args, env);
        assert_eq!(check.code(), Some(0), "{source}: {check}");
        let shown = subcommand("config", &config, args, env);
        let row = format!("upstream_proxy_credentials = {}  ({source})", q(file));
        assert!(shown.stdout.contains(&row), "{row:?} missing:\n{shown}");
    }
    squid.wait_log(
        &format!("CONNECT {MASTER_NAME}:{} {USER}", m.server.port()),
        WITHIN,
    );
}

#[test]
fn a_rewritten_file_is_picked_up_without_a_signal() {
    let dir = tempdir();
    let m = Master::start(dir.path(), Behavior::Echo);
    let squid = EgressProxy::squid(dir.path(), AUTH, None);
    let (_, file) = credentials(dir.path(), &format!("{USER}:stale-secret\n"));
    let proxy = through(&m, &squid, file.to_str().unwrap()).start(dir.path());
    let main = proxy.tcp_addr("main");

    let local = proxy.refuses(main, Refusal::UpstreamError, WITHIN);
    let warn = proxy.wait_for("the 407", WITHIN, |v| {
        v["message"] == "upstream failed" && v["client"] == local.to_string().as_str()
    });
    assert_eq!(warn["kind"], "proxy_auth", "{warn}");
    let hint = format!(
        "refused the user and password in upstream_proxy_credentials ({})",
        file.display()
    );
    assert!(field(&warn, "error").contains(&hint), "{warn}");

    rewrite(&file, &format!("{USER}:{PASSWORD}\n"));
    let reloaded = proxy.wait_for(
        "a reload by the file watcher",
        Duration::from_secs(15),
        |v| field(v, "message") == "configuration reloaded" && field(v, "trigger") == "file change",
    );
    assert_eq!(
        field(&reloaded, "changed"),
        "upstream_proxy_credentials",
        "{reloaded}"
    );
    relays(main, b"the new password opens the tunnel");
    for secret in [PASSWORD, "stale-secret"] {
        never_shows(secret, &proxy.stderr());
    }
}

#[test]
fn a_bad_file_is_refused_naming_the_key_and_never_its_content() {
    let dir = tempdir();
    let m = Master::start(dir.path(), Behavior::Echo);
    let squid = EgressProxy::squid(dir.path(), AUTH, None);
    let (_, file) = credentials(dir.path(), "");
    let config = through(&m, &squid, file.to_str().unwrap()).write(dir.path());
    let missing = dir.path().join("absent");
    let cases = [
        ("", "is empty"),
        ("sekrit-token-without-a-colon\n", "holds no USER:PASSWORD"),
        (
            "ops:sekrit-one\nops:sekrit-two\n",
            "holds more than one line",
        ),
    ];
    for (text, reason) in cases {
        std::fs::write(&file, text).unwrap();
        let out = subcommand("check", &config, &[], &[]);
        assert_eq!(out.code(), Some(2), "{out}");
        let said = format!("upstream_proxy_credentials: {} {reason}", file.display());
        assert!(out.to_string().contains(&said), "{said:?} missing:\n{out}");
        never_shows("sekrit", &out.to_string());
    }
    let absent = through(&m, &squid, missing.to_str().unwrap()).write(&dir.path().join("creds"));
    let out = run_expecting_exit(&absent);
    assert_eq!(out.code(), Some(2), "{out}");
    let said = format!(
        "upstream_proxy_credentials: cannot read {}",
        missing.display()
    );
    assert!(out.stderr.contains(&said), "{said:?} missing:\n{out}");

    // On reload: refused, the reason logged, the old credentials kept.
    std::fs::write(&file, format!("{USER}:{PASSWORD}\n")).unwrap();
    let proxy = Proxy::start(&config);
    relays(proxy.tcp_addr("main"), b"before");
    rewrite(&file, "sekrit-token-without-a-colon\n");
    let line = proxy.wait_for("the refused reload", Duration::from_secs(15), |v| {
        field(v, "message") == "reload refused; keeping the previous configuration"
    });
    assert!(
        field(&line, "error").contains("upstream_proxy_credentials")
            && field(&line, "error").contains("holds no USER:PASSWORD"),
        "{line}"
    );
    relays(
        proxy.tcp_addr("main"),
        b"the old credentials still open the tunnel",
    );
    never_shows("sekrit", &proxy.stderr());
    never_shows(PASSWORD, &proxy.stderr());
}

#[test]
fn credentials_in_both_the_url_and_a_file_are_refused_naming_both() {
    let dir = tempdir();
    let m = Master::start(dir.path(), Behavior::Echo);
    let squid = EgressProxy::squid(dir.path(), AUTH, None);
    let (_, file) = credentials(dir.path(), &format!("{USER}:{PASSWORD}\n"));
    let config = Cfg::new(MASTER_NAME, m.server.port())
        .master_cert(&m.ca_pem)
        .extra(&format!("upstream_proxy: {}", q(squid.url(AUTH))))
        .extra(&format!("upstream_proxy_credentials: {}", qp(&file)))
        .write(dir.path());
    let out = run_expecting_exit(&config);
    assert_eq!(out.code(), Some(2), "{out}");
    let said = format!(
        "upstream_proxy_credentials: upstream_proxy (http://{USER}:***@127.0.0.1:{}, from {}) already holds a user and password",
        squid.port,
        config.display()
    );
    assert!(out.stderr.contains(&said), "{said:?} missing:\n{out}");
    never_shows(PASSWORD, &out.to_string());
}
