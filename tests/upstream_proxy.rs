//! Egress through an HTTP proxy: each upstream connection is a CONNECT tunnel through a real
//! squid or tinyproxy, named by the master's host name as configured (only the proxy can
//! resolve it here), with TLS end to end inside it; refusals are reported with the proxy's
//! status line; `NO_PROXY`, loopback masters and `upstream_proxy: none` go direct; the
//! password never shows.

mod common;

use std::process::Command;
use std::time::Duration;

use common::egress::{EgressProxy, MASTER_NAME};
use common::server::{closed_port, PlainEcho};
use common::*;

const PASSWORD: &str = "pa:ss w0rd";
const AUTH: Option<(&str, &str)> = Some(("ops", PASSWORD));

/// A config reaching `m` as `det-master`, with an admin endpoint.
fn by_name(m: &Master) -> Cfg {
    Cfg::new(MASTER_NAME, m.server.port())
        .master_cert(&m.ca_pem)
        .extra("admin: {listen: \"127.0.0.1:0\"}")
}

fn start_with_env(cfg: &Cfg, dir: &std::path::Path, env: &[(&str, &str)]) -> Proxy {
    let mut cmd = command();
    cmd.arg("run").arg("--config").arg(cfg.write(dir));
    cmd.envs(env.iter().copied());
    Proxy::start_cmd(cmd)
}

/// `det-tls-proxy SUBCOMMAND` on `cfg` with `env`: (exit code, stdout + stderr).
fn subcommand(sub: &str, cfg: &Cfg, dir: &std::path::Path, env: &[(&str, &str)]) -> (i32, String) {
    let mut cmd: Command = command();
    cmd.arg(sub).arg("--config").arg(cfg.write(dir));
    cmd.envs(env.iter().copied());
    let out = run_to_exit(cmd, Duration::from_secs(30));
    (
        out.code().unwrap_or(-1),
        format!("{}{}", out.stdout, out.stderr),
    )
}

fn never_shows_the_password(text: &str) {
    assert!(
        !text.contains(PASSWORD) && !text.contains(&common::egress::encode(PASSWORD)),
        "the proxy password leaked:\n{text}"
    );
}

#[test]
fn tunnels_through_squid_by_the_masters_name_with_tls_end_to_end() {
    let dir = tempdir();
    let m = Master::start(dir.path(), Behavior::Echo);
    let squid = EgressProxy::squid(dir.path(), AUTH, None);
    let url = squid.url(AUTH);
    let env = [("HTTPS_PROXY", url.as_str())];
    let cfg = by_name(&m);
    let proxy = start_with_env(&cfg, dir.path(), &env);

    let mut data = vec![0u8; 256 * 1024];
    Pattern::new(3).fill(&mut data);
    let mut c = connect(proxy.tcp_addr("main"));
    let back = roundtrip(&mut c, &data);
    assert_eq!(sha256(&back), sha256(&data), "the tunnel changed the bytes");
    let local = c.local_addr().unwrap();
    finish(&mut c);

    // The master saw TLS for its name; squid saw a CONNECT for that name from user ops.
    assert_eq!(m.server.handshake(1).sni.as_deref(), Some(MASTER_NAME));
    let shown = format!("http://ops:***@127.0.0.1:{}", squid.port);
    let line = proxy.access_line(local);
    assert_eq!(
        line["master"],
        format!("{MASTER_NAME}:{} via {shown}", m.server.port()),
        "{line}"
    );
    squid.wait_log(
        &format!("CONNECT {MASTER_NAME}:{} ops", m.server.port()),
        Duration::from_secs(10),
    );

    let (code, report) = subcommand("check", &cfg, dir.path(), &env);
    assert_eq!(code, 0, "{report}");
    assert!(
        report.contains(&format!(
            "route       via the HTTP proxy {shown} (upstream_proxy from HTTPS_PROXY)"
        )),
        "{report}"
    );
    let (code, listing) = subcommand("config", &cfg, dir.path(), &env);
    assert_eq!(code, 0, "{listing}");
    assert!(
        listing.contains(&format!("upstream_proxy = \"{shown}\"  (HTTPS_PROXY)")),
        "{listing}"
    );
    for text in [proxy.stderr(), report, listing] {
        never_shows_the_password(&text);
    }
}

#[test]
fn tunnels_through_tinyproxy_set_in_the_file() {
    let dir = tempdir();
    let m = Master::start(dir.path(), Behavior::Echo);
    let tiny = EgressProxy::tinyproxy(dir.path(), Some(("ops", "s3cret")), &[]);
    let cfg = by_name(&m).extra(&format!(
        "upstream_proxy: {}",
        q(tiny.url(Some(("ops", "s3cret"))))
    ));
    // The file's setting wins over the variable, which points nowhere.
    let proxy = start_with_env(&cfg, dir.path(), &[("HTTPS_PROXY", "http://127.0.0.1:9")]);
    for i in 0..3u8 {
        relays(proxy.tcp_addr("main"), &[b'x', i]);
    }
    tiny.wait_log(
        &format!("CONNECT {MASTER_NAME}:{}", m.server.port()),
        Duration::from_secs(5),
    );
    assert_eq!(m.server.handshake(3).sni.as_deref(), Some(MASTER_NAME));
    never_shows_the_password(&proxy.stderr().replace("s3cret", PASSWORD));
    assert!(!proxy.stderr().contains("s3cret"), "{}", proxy.stderr());
}

/// The client is closed, the WARN line and `check` quote the proxy's status line and say
/// what to fix, and the failure is counted under its kind.
fn assert_refused(
    cfg: &Cfg,
    dir: &std::path::Path,
    env: &[(&str, &str)],
    status: &str,
    kind: &str,
    fix: &str,
) {
    let proxy = start_with_env(cfg, dir, env);
    let local = proxy.refuses(
        proxy.tcp_addr("main"),
        Refusal::UpstreamError,
        Duration::from_secs(10),
    );
    let warn = proxy.wait_for(
        "the \"upstream failed\" line",
        Duration::from_secs(5),
        |v| v["message"] == "upstream failed" && v["client"] == local.to_string().as_str(),
    );
    assert_eq!(warn["kind"], kind, "{warn}");
    let error = field(&warn, "error");
    assert!(error.contains(status) && error.contains(fix), "{warn}");
    let m = scrape_text(&proxy.listener_addr("admin"));
    assert_eq!(
        metric(&m, "det_tls_proxy_upstream_errors_total", &[("kind", kind)]),
        1.0,
        "{m}"
    );
    let (code, report) = subcommand("check", cfg, dir, env);
    assert_eq!(code, 1, "{report}");
    assert!(report.contains(status) && report.contains(fix), "{report}");
    never_shows_the_password(&proxy.stderr());
    never_shows_the_password(&report);
}

#[test]
fn a_proxy_wanting_credentials_is_reported_with_its_status_line() {
    let dir = tempdir();
    let m = Master::start(dir.path(), Behavior::Echo);
    let squid = EgressProxy::squid(dir.path(), AUTH, None);
    let cfg = by_name(&m);
    let none = squid.url(None);
    assert_refused(
        &cfg,
        dir.path(),
        &[("HTTPS_PROXY", none.as_str())],
        "407 Proxy Authentication Required",
        "proxy_auth",
        "wants credentials",
    );
    let wrong = squid.url(Some(("ops", "not the password")));
    let proxy = start_with_env(&cfg, dir.path(), &[("HTTPS_PROXY", wrong.as_str())]);
    proxy.refuses(
        proxy.tcp_addr("main"),
        Refusal::UpstreamError,
        Duration::from_secs(10),
    );
    proxy.wait_for_text("refused the user and password", Duration::from_secs(5));
    assert!(!proxy.stderr().contains("not the password"));
}

#[test]
fn a_connect_the_proxys_policy_forbids_is_reported_with_its_status_line() {
    let dir = tempdir();
    let m = Master::start(dir.path(), Behavior::Echo);
    // tinyproxy allows CONNECT to port 443 only.
    let tiny = EgressProxy::tinyproxy(dir.path(), None, &[443]);
    let url = tiny.url(None);
    assert_refused(
        &by_name(&m),
        dir.path(),
        &[("HTTPS_PROXY", url.as_str())],
        "403",
        "proxy_forbidden",
        "forbids a tunnel",
    );
}

#[test]
fn a_proxy_that_cannot_reach_the_master_says_so() {
    let dir = tempdir();
    let m = Master::start(dir.path(), Behavior::Echo);
    let squid = EgressProxy::squid(dir.path(), None, None);
    let url = squid.url(None);
    // Nothing listens on the master port squid is sent to.
    let cfg = Cfg::new(MASTER_NAME, closed_port())
        .master_cert(&m.ca_pem)
        .extra("admin: {listen: \"127.0.0.1:0\"}");
    assert_refused(
        &cfg,
        dir.path(),
        &[("HTTPS_PROXY", url.as_str())],
        "503",
        "proxy_upstream",
        "could not reach",
    );
}

#[test]
fn no_proxy_loopback_and_none_go_direct() {
    let dir = tempdir();
    let m = Master::start(dir.path(), Behavior::Echo);
    let nowhere = [("HTTPS_PROXY", "http://127.0.0.1:9")];
    // A loopback master is never proxied, whatever the variables say.
    let proxy = start_with_env(&m.cfg(), dir.path(), &nowhere);
    relays(proxy.tcp_addr("main"), b"loopback");
    let (_, report) = subcommand("check", &m.cfg(), dir.path(), &nowhere);
    assert!(
        report.contains("route       direct (127.0.0.1:"),
        "{report}"
    );

    // NO_PROXY names the master: dialled directly, so this host must resolve it, and cannot.
    let env = [nowhere[0], ("NO_PROXY", "example.com, det-master")];
    let proxy = start_with_env(&by_name(&m), dir.path(), &env);
    let local = proxy.refuses(
        proxy.tcp_addr("main"),
        Refusal::UpstreamError,
        Duration::from_secs(10),
    );
    let warn = proxy.wait_for("the resolve failure", Duration::from_secs(5), |v| {
        v["message"] == "upstream failed" && v["client"] == local.to_string().as_str()
    });
    assert_eq!(warn["kind"], "resolve", "{warn}");

    // `upstream_proxy: none` in the file turns the variable off.
    let off = by_name(&m).extra("upstream_proxy: none");
    let (_, report) = subcommand("check", &off, dir.path(), &nowhere);
    assert!(
        report.contains("route       direct (no upstream_proxy)"),
        "{report}"
    );
}

#[test]
fn a_plaintext_master_is_tunnelled_through_http_proxy() {
    let dir = tempdir();
    let plain = PlainEcho::new();
    let tiny = EgressProxy::tinyproxy(dir.path(), None, &[]);
    let url = tiny.url(None);
    let cfg = Cfg::new(MASTER_NAME, plain.addr.port()).tls("enabled", "false");
    // HTTPS_PROXY is for a TLS master; a plaintext one follows HTTP_PROXY, as Go does.
    let env = [
        ("HTTP_PROXY", url.as_str()),
        ("HTTPS_PROXY", "http://127.0.0.1:9"),
    ];
    let proxy = start_with_env(&cfg, dir.path(), &env);
    relays(proxy.tcp_addr("main"), b"plain through the tunnel");
    tiny.wait_log(
        &format!("CONNECT {MASTER_NAME}:{}", plain.addr.port()),
        Duration::from_secs(5),
    );
}

#[test]
fn a_client_that_half_closes_still_gets_the_answer_through_squid() {
    // squid ends the whole tunnel at the first FIN it reads, so toward the master the proxy
    // ends its sending side with close_notify alone and lets the master close.
    let dir = tempdir();
    let m = Master::start(
        dir.path(),
        Behavior::AnswerLateAfterEof(Duration::from_millis(500), b"all received".to_vec()),
    );
    let squid = EgressProxy::squid(dir.path(), None, None);
    let url = squid.url(None);
    let proxy = start_with_env(&by_name(&m), dir.path(), &[("HTTPS_PROXY", url.as_str())]);
    let mut c = connect(proxy.tcp_addr("main"));
    std::io::Write::write_all(&mut c, b"the whole request").unwrap();
    c.shutdown(std::net::Shutdown::Write).unwrap();
    assert_eq!(
        read_until_closed(&mut c, Duration::from_secs(10)),
        b"all received"
    );
    let line = proxy.access_line(c.local_addr().unwrap());
    assert_eq!(line["outcome"], "ok", "{line}");
}
