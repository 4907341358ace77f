//! `det-tls-proxy trust`: fetch the master's chain without verifying it, show the leaf's
//! SHA-256 fingerprint as openssl prints it, confirm (by `--fingerprint` when there is no
//! terminal), write the PEM chain as sent (whatever its top: root, intermediate or the leaf
//! alone) atomically with mode 0644, name what anchors it, and prove that `run` and `check`
//! then verify.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::proxy::Exited;
use common::*;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

const TIMEOUT: Duration = Duration::from_secs(20);

fn run(cmd: Command) -> Exited {
    run_to_exit(cmd, TIMEOUT)
}

/// `det-tls-proxy trust --config <config> <args>`.
fn trust(config: &Path, args: &[&str]) -> Exited {
    let mut cmd = command();
    cmd.arg("trust").arg("--config").arg(config).args(args);
    run(cmd)
}

/// The fingerprint `trust` printed for the leaf.
fn printed_fingerprint(out: &Exited) -> String {
    out.stdout
        .lines()
        .find_map(|l| l.strip_prefix("leaf SHA-256 fingerprint: "))
        .unwrap_or_else(|| panic!("no fingerprint line:\n{out}"))
        .trim()
        .to_string()
}

/// A config in `dir` for the master on `port`, `master_cert` at `cert` (need not exist).
fn config_at(dir: &Path, port: u16, cert: &Path) -> PathBuf {
    Cfg::new("127.0.0.1", port).master_cert(cert).write(dir)
}

/// The certificates of a PEM file, in order.
fn pem_certs(path: &Path) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_file_iter(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .collect::<Result<Vec<_>, _>>()
        .expect("PEM certificates")
}

/// The names in a directory, sorted: shows leftovers such as temporary files.
fn dir_names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// A master whose server sends leaf + root (a chain `trust` can anchor), and a config whose
/// `master_cert` (`dir/master.crt`) does not exist yet.
struct Setup {
    ca: Ca,
    leaf: Leaf,
    server: TlsServer,
    cert_path: PathBuf,
    config: PathBuf,
}

fn setup(dir: &Path) -> Setup {
    let ca = Ca::root("Trust Test Root CA");
    let leaf = ca.server("det-master", &["det-master", "127.0.0.1"]);
    let server = ServerBuilder::new(vec![leaf.der(), ca.der()], leaf.key_der()).start();
    let cert_path = dir.join("master.crt");
    let config = config_at(dir, server.port(), &cert_path);
    Setup {
        ca,
        leaf,
        server,
        cert_path,
        config,
    }
}

#[test]
fn matching_fingerprint_writes_the_chain_and_run_and_check_verify() {
    let dir = tempdir();
    let s = setup(dir.path());
    let fp = fingerprint(&s.leaf.der());
    let out = trust(&s.config, &["--fingerprint", &fp]);
    assert_eq!(out.code(), Some(0), "trust failed:\n{out}");
    assert_eq!(printed_fingerprint(&out), fp);
    assert!(out.stdout.contains("[0] subject   CN=det-master"), "{out}");
    assert!(
        out.stdout.contains("[1] subject   CN=Trust Test Root CA"),
        "{out}"
    );

    // The file: the chain as sent, mode 0644, written atomically (nothing else left behind).
    let written = pem_certs(&s.cert_path);
    assert_eq!(
        written,
        vec![s.leaf.der(), s.ca.der()],
        "wrong chain written"
    );
    let mode = std::fs::metadata(&s.cert_path)
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o644, "mode {mode:o}");
    assert_eq!(dir_names(dir.path()), ["master.crt", "proxy.yaml"]);
    assert!(
        out.stdout
            .contains("the root CN=Trust Test Root CA is the trust anchor"),
        "{out}"
    );

    // check and run now verify the master with it.
    let out = check(&s.config);
    assert_eq!(out.code(), Some(0), "check after trust failed:\n{out}");
    let proxy = Proxy::start(&s.config);
    relays(proxy.tcp_addr("main"), b"trusted now");
    assert!(s.server.state().handshake_errors.is_empty());

    // Running it again with the same chain on disk is fine.
    let out = trust(&s.config, &["--fingerprint", &fp]);
    assert_eq!(out.code(), Some(0), "second trust failed:\n{out}");
    assert!(out.stdout.contains("already holds"), "{out}");
}

#[test]
fn fingerprint_is_case_and_separator_insensitive() {
    let dir = tempdir();
    let s = setup(dir.path());
    let fp = fingerprint(&s.leaf.der());
    for (i, form) in [
        fp.to_uppercase(),
        fp.replace(':', ""),
        fp.replace(':', "").to_uppercase(),
    ]
    .iter()
    .enumerate()
    {
        let out_path = dir.path().join(format!("out{i}.crt"));
        let out = trust(
            &s.config,
            &["--fingerprint", form, "--out", out_path.to_str().unwrap()],
        );
        assert_eq!(out.code(), Some(0), "--fingerprint {form} refused:\n{out}");
        assert_eq!(pem_certs(&out_path).len(), 2);
    }
    assert!(!s.cert_path.exists(), "--out ignored: master_cert written");
}

#[test]
fn mismatching_fingerprint_writes_nothing() {
    let dir = tempdir();
    let s = setup(dir.path());
    let wrong = fingerprint(b"some other certificate");
    let out = trust(&s.config, &["--fingerprint", &wrong]);
    assert_eq!(out.code(), Some(1), "{out}");
    assert!(out.stderr.contains("mismatch"), "{out}");
    assert!(!s.cert_path.exists(), "a file was written on mismatch");
    assert_eq!(dir_names(dir.path()), ["proxy.yaml"]);
}

#[test]
fn no_terminal_and_no_fingerprint_is_refused() {
    let dir = tempdir();
    let s = setup(dir.path());
    let out = trust(&s.config, &[]);
    assert_eq!(out.code(), Some(2), "{out}");
    assert!(out.stderr.contains("--fingerprint"), "{out}");
    assert!(!s.cert_path.exists());

    let out = trust(&s.config, &["--yes"]);
    assert_eq!(out.code(), Some(2), "--yes without a terminal:\n{out}");
    assert!(!s.cert_path.exists());
    assert_eq!(dir_names(dir.path()), ["proxy.yaml"]);
}

#[test]
fn existing_different_file_needs_force() {
    let dir = tempdir();
    let s = setup(dir.path());
    let old = Ca::root("Old Master CA").pem();
    std::fs::write(&s.cert_path, &old).unwrap();
    let fp = fingerprint(&s.leaf.der());

    let out = trust(&s.config, &["--fingerprint", &fp]);
    assert_eq!(out.code(), Some(1), "{out}");
    assert!(out.stderr.contains("--force"), "{out}");
    assert_eq!(std::fs::read_to_string(&s.cert_path).unwrap(), old);

    let out = trust(&s.config, &["--fingerprint", &fp, "--force"]);
    assert_eq!(out.code(), Some(0), "{out}");
    assert_eq!(pem_certs(&s.cert_path), vec![s.leaf.der(), s.ca.der()]);
    let mode = std::fs::metadata(&s.cert_path)
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o644, "mode {mode:o}");
}

/// `openssl x509 -noout -fingerprint -sha256 -in <file>`.
fn openssl_fingerprint(pem_file: &Path) -> String {
    let out = Command::new("openssl")
        .args(["x509", "-noout", "-fingerprint", "-sha256", "-in"])
        .arg(pem_file)
        .output()
        .expect("run openssl");
    assert!(out.status.success(), "openssl: {out:?}");
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

#[test]
fn fingerprint_equals_what_openssl_prints_and_openssls_line_is_accepted() {
    let dir = tempdir();
    let s = setup(dir.path());
    let leaf_pem = certs::write(dir.path(), "leaf.pem", &s.leaf.pem());
    let openssl = openssl_fingerprint(&leaf_pem);
    // "sha256 Fingerprint=AB:CD:..." (OpenSSL 3) or "SHA256 Fingerprint=..." (1.1).
    let (_, hex) = openssl
        .split_once('=')
        .unwrap_or_else(|| panic!("unexpected openssl output {openssl:?}"));

    // Without --fingerprint it refuses, but still shows the fingerprint to compare.
    let out = trust(&s.config, &[]);
    assert_eq!(out.code(), Some(2), "{out}");
    let printed = printed_fingerprint(&out);
    assert_eq!(printed.to_uppercase(), hex.to_uppercase());
    assert_eq!(
        printed,
        printed.to_lowercase(),
        "the interface: lowercase hex pairs"
    );

    // The operator pastes openssl's whole line.
    let out = trust(&s.config, &["--fingerprint", &openssl]);
    assert_eq!(out.code(), Some(0), "openssl's own line refused:\n{out}");
    assert!(s.cert_path.exists());
}

/// The usual private-PKI master: its certificate file holds leaf + intermediate, the root
/// stays offline. Every certificate of `master_cert` is an anchor (as for the agent), so the
/// chain as sent is written and the intermediate anchors it.
#[test]
fn leaf_and_intermediate_without_the_root_are_written_and_the_intermediate_anchors() {
    let dir = tempdir();
    let root = Ca::root("Offline Root CA");
    let inter = root.intermediate("Issuing Intermediate CA");
    let leaf = inter.server("det-master", &["det-master", "127.0.0.1"]);
    let server = ServerBuilder::new(vec![leaf.der(), inter.der()], leaf.key_der()).start();
    let cert_path = dir.path().join("master.crt");
    let config = config_at(dir.path(), server.port(), &cert_path);
    let out = trust(&config, &["--fingerprint", &fingerprint(&leaf.der())]);
    assert_eq!(out.code(), Some(0), "{out}");
    assert_eq!(pem_certs(&cert_path), vec![leaf.der(), inter.der()]);
    assert!(
        out.stdout.contains(
            "the intermediate CN=Issuing Intermediate CA is now the trust anchor; \
             the root CN=Offline Root CA was not sent and is not needed"
        ),
        "the anchor is not named:\n{out}"
    );
    assert_eq!(dir_names(dir.path()), ["master.crt", "proxy.yaml"]);

    let out = check(&config);
    assert_eq!(out.code(), Some(0), "check after trust:\n{out}");
    relays(Proxy::start(&config).tcp_addr("main"), b"trusted now");
    assert!(server.state().handshake_errors.is_empty());

    // As said: a renewed leaf from the same intermediate verifies with the same file.
    let renewed = inter.server("det-master", &["det-master", "127.0.0.1"]);
    let server2 = ServerBuilder::new(vec![renewed.der(), inter.der()], renewed.key_der()).start();
    let out = check(&config_at(tempdir().path(), server2.port(), &cert_path));
    assert_eq!(out.code(), Some(0), "a renewed leaf:\n{out}");
}

/// A master that sends only its leaf (signed by a CA it does not send): the leaf itself is
/// pinned, and the operator is told a renewal will need `trust` again.
#[test]
fn leaf_only_master_is_pinned_and_verifies() {
    let dir = tempdir();
    let ca = Ca::root("Unsent Root CA");
    let leaf = ca.server("det-master", &["det-master", "127.0.0.1"]);
    let server = ServerBuilder::new(vec![leaf.der()], leaf.key_der()).start();
    let cert_path = dir.path().join("master.crt");
    let config = config_at(dir.path(), server.port(), &cert_path);
    let out = trust(&config, &["--fingerprint", &fingerprint(&leaf.der())]);
    assert_eq!(out.code(), Some(0), "{out}");
    assert_eq!(pem_certs(&cert_path), vec![leaf.der()]);
    assert!(
        out.stdout
            .contains("the leaf itself is pinned: a renewed certificate will need `trust` again")
            && out.stdout.contains("CN=Unsent Root CA was not sent"),
        "{out}"
    );
    let out = check(&config);
    assert_eq!(out.code(), Some(0), "check after trust:\n{out}");
    relays(Proxy::start(&config).tcp_addr("main"), b"trusted now");

    // The pin is exactly that leaf: another leaf from the same CA is refused.
    let other = ca.server("det-master", &["det-master", "127.0.0.1"]);
    let server2 = ServerBuilder::new(vec![other.der()], other.key_der()).start();
    let out = check(&config_at(tempdir().path(), server2.port(), &cert_path));
    assert_eq!(out.code(), Some(1), "another leaf accepted:\n{out}");
}

#[test]
fn self_signed_leaf_is_its_own_root() {
    let dir = tempdir();
    let leaf = Leaf::self_signed("det-master", &["det-master"]);
    let server = ServerBuilder::new(vec![leaf.der()], leaf.key_der()).start();
    let cert_path = dir.path().join("master.crt");
    let config = config_at(dir.path(), server.port(), &cert_path);
    let out = trust(&config, &["--fingerprint", &fingerprint(&leaf.der())]);
    assert_eq!(out.code(), Some(0), "{out}");
    assert_eq!(pem_certs(&cert_path), vec![leaf.der()]);
    assert!(
        out.stdout
            .contains("self-signed certificate CN=det-master is pinned"),
        "{out}"
    );
    // The master is addressed by IP and its certificate holds only a DNS name: the name is
    // substituted from the file just written.
    let out = check(&config);
    assert_eq!(out.code(), Some(0), "{out}");
    relays(Proxy::start(&config).tcp_addr("main"), b"trusted now");
}

/// A master certificate made as operators make one with openssl (Determined's docs use
/// `openssl req -x509 ... -subj /CN=det-master -addext subjectAltName=DNS:det-master`): openssl
/// marks it `CA:TRUE`. The agent (Go) and the CLI (Python/OpenSSL) accept it when it is the
/// trusted certificate itself; so must `trust`, `check` and `run`.
#[test]
fn openssl_made_self_signed_master_certificate_is_trusted() {
    let dir = tempdir();
    let key_path = dir.path().join("openssl.key");
    let crt_path = dir.path().join("openssl.crt");
    let st = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "30",
            "-subj",
            "/CN=det-master",
            "-addext",
            "subjectAltName=DNS:det-master",
            "-keyout",
        ])
        .arg(&key_path)
        .arg("-out")
        .arg(&crt_path)
        .output()
        .expect("run openssl");
    assert!(st.status.success(), "openssl req: {st:?}");
    let chain = pem_certs(&crt_path);
    let key = PrivateKeyDer::from_pem_file(&key_path).expect("key");
    let server = ServerBuilder::new(chain.clone(), key).start();
    let cert_path = dir.path().join("master.crt");
    let config = config_at(dir.path(), server.port(), &cert_path);
    let fp = openssl_fingerprint(&crt_path);
    let out = trust(&config, &["--fingerprint", &fp]);
    assert_eq!(
        out.code(),
        Some(0),
        "trust of an openssl-made master cert:\n{out}"
    );
    let out = check(&config);
    assert_eq!(
        out.code(),
        Some(0),
        "check of an openssl-made master cert:\n{out}"
    );
}

#[test]
fn out_file_without_master_cert_configured() {
    let dir = tempdir();
    let s = setup(dir.path());
    let config = Cfg::new("127.0.0.1", s.server.port()).write(dir.path());
    let out_path = dir.path().join("elsewhere.pem");
    let out = trust(
        &config,
        &[
            "--fingerprint",
            &fingerprint(&s.leaf.der()),
            "--out",
            out_path.to_str().unwrap(),
        ],
    );
    assert_eq!(out.code(), Some(0), "{out}");
    assert_eq!(pem_certs(&out_path), vec![s.leaf.der(), s.ca.der()]);
    let mode = std::fs::metadata(&out_path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o644, "mode {mode:o}");

    // Nowhere to write at all: a usage error.
    let out = trust(&config, &["--fingerprint", &fingerprint(&s.leaf.der())]);
    assert_eq!(out.code(), Some(2), "{out}");
}

#[test]
fn from_cli_store_imports_the_chain_the_cli_saved() {
    let dir = tempdir();
    let s = setup(dir.path());
    let store = dir.path().join("certs.json");
    let other = Ca::root("Another Master CA");
    let json = serde_json::json!({
        "https://det.example.com:8443": other.pem(),
        format!("https://127.0.0.1:{}", s.server.port()): s.leaf.pem() + &s.ca.pem(),
    });
    std::fs::write(&store, json.to_string()).unwrap();
    let store_arg = format!("--from-cli-store={}", store.display());
    let fp = fingerprint(&s.leaf.der());

    let out = trust(&s.config, &[&store_arg, "--fingerprint", &fp]);
    assert_eq!(out.code(), Some(0), "{out}");
    assert!(
        out.stdout.contains("CLI"),
        "the source is not named:\n{out}"
    );
    assert_eq!(printed_fingerprint(&out), fp);
    assert_eq!(pem_certs(&s.cert_path), vec![s.leaf.der(), s.ca.der()]);
    relays(Proxy::start(&s.config).tcp_addr("main"), b"trusted now");

    // A store without this master.
    let store2 = dir.path().join("certs2.json");
    std::fs::write(
        &store2,
        serde_json::json!({ "https://det.example.com:8443": other.pem() }).to_string(),
    )
    .unwrap();
    let out = trust(
        &s.config,
        &[
            &format!("--from-cli-store={}", store2.display()),
            "--fingerprint",
            &fp,
            "--out",
            dir.path().join("x.pem").to_str().unwrap(),
        ],
    );
    assert_eq!(out.code(), Some(1), "{out}");
    assert!(!dir.path().join("x.pem").exists());
}

#[test]
fn from_cli_store_defaults_to_the_clis_own_file() {
    let dir = tempdir();
    let s = setup(dir.path());
    let home = dir.path().join("home");
    let store = home.join(".config").join("determined");
    std::fs::create_dir_all(&store).unwrap();
    let json = serde_json::json!({
        format!("https://127.0.0.1:{}", s.server.port()): s.leaf.pem() + &s.ca.pem(),
    });
    std::fs::write(store.join("certs.json"), json.to_string()).unwrap();
    let mut cmd = command();
    cmd.env("HOME", &home)
        .env_remove("XDG_CONFIG_HOME")
        .arg("trust")
        .arg("--config")
        .arg(&s.config)
        .args([
            "--from-cli-store",
            "--fingerprint",
            &fingerprint(&s.leaf.der()),
        ]);
    let out = run(cmd);
    assert_eq!(out.code(), Some(0), "{out}");
    assert_eq!(pem_certs(&s.cert_path), vec![s.leaf.der(), s.ca.der()]);
}
