//! The shipped alerts in Debian's real `prometheus`, scraping a real proxy in front of a real
//! master: the readiness alert goes pending, fires and resolves as the master stops and comes
//! back, and the expiry alert fires for a certificate that expires in two days.
//!
//! Prometheus runs with deploy/prometheus/prometheus.yml (its scrape job and `probe=1`), the
//! intervals cut to 1 s and the target set to the proxy's admin address, and with a copy of
//! deploy/prometheus/alerts.yaml whose `for:` durations are cut to 2 s (the shipped ones are
//! minutes). Alert states come from Prometheus's own `/api/v1/rules`.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::certs::leaf_expiring_in;
use common::prometheus::get;
use common::{tempdir, wait_until, Behavior, Later, Master, ServerBuilder};
use serde_json::Value;
use serde_yaml::Value as Yaml;

const DEPLOY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/prometheus");
/// The `for:` every alert gets in the test's copy.
const FOR: &str = "2s";

/// A Prometheus server of our own, killed when the test ends.
struct Prometheus {
    child: Child,
    addr: SocketAddr,
    log: PathBuf,
}

impl Prometheus {
    fn start(dir: &Path, target: SocketAddr) -> Prometheus {
        let rules = dir.join("rules.yaml");
        std::fs::copy(Path::new(DEPLOY).join("rules.yaml"), &rules).unwrap();
        let alerts = dir.join("alerts.yaml");
        std::fs::write(&alerts, short_for(&Path::new(DEPLOY).join("alerts.yaml"))).unwrap();

        let shipped = std::fs::read_to_string(Path::new(DEPLOY).join("prometheus.yml")).unwrap();
        let mut config: Yaml = serde_yaml::from_str(&shipped).unwrap();
        config["global"]["scrape_interval"] = "1s".into();
        config["global"]["evaluation_interval"] = "1s".into();
        config["rule_files"] = Yaml::Sequence(vec![path_yaml(&rules), path_yaml(&alerts)]);
        let job = &mut config["scrape_configs"][0];
        assert_eq!(
            job["job_name"], "det-tls-proxy",
            "the shipped job: {shipped}"
        );
        job["static_configs"][0]["targets"] = Yaml::Sequence(vec![target.to_string().into()]);
        let config_path = dir.join("prometheus.yml");
        std::fs::write(&config_path, serde_yaml::to_string(&config).unwrap()).unwrap();

        let addr = free_port();
        let log = dir.join("prometheus.log");
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot run prometheus ({e}): install Debian's prometheus (tests/run.sh)")
            });
        let p = Prometheus { child, addr, log };
        p.wait("Prometheus to be ready", Duration::from_secs(30), || {
            let up = std::net::TcpStream::connect(addr).is_ok();
            (up && get(addr, "/-/ready", None).status == 200)
                .then_some(())
                .ok_or_else(|| format!("listening: {up}"))
        });
        p
    }

    /// Every alerting rule's state ("inactive", "pending", "firing") by name.
    fn rule(&self, name: &str) -> Value {
        let r = get(self.addr, "/api/v1/rules?type=alert", None);
        assert_eq!(r.status, 200, "{}", r.body);
        let v: Value = serde_json::from_str(&r.body).unwrap();
        v["data"]["groups"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
            .find(|r| r["name"] == name)
            .unwrap_or_else(|| panic!("no alerting rule {name}: {v}"))
    }

    /// Waits until `name`'s state is `state` and returns the rule; the states seen on the way
    /// are in the panic message.
    fn wait_state(&self, name: &str, state: &str, timeout: Duration) -> Value {
        let mut seen: Vec<String> = Vec::new();
        self.wait(&format!("{name} to be {state}"), timeout, || {
            let rule = self.rule(name);
            let now = rule["state"].as_str().unwrap_or("?").to_string();
            assert_eq!(rule["health"], "ok", "{rule}");
            if seen.last() != Some(&now) {
                seen.push(now.clone());
            }
            (now == state)
                .then_some(rule)
                .ok_or_else(|| format!("states seen: {seen:?}"))
        })
    }

    /// Waits until `f` returns `Ok`; panics after `timeout` with the last `Err` and
    /// Prometheus's log.
    fn wait<T>(
        &self,
        what: &str,
        timeout: Duration,
        mut f: impl FnMut() -> Result<T, String>,
    ) -> T {
        let log = || std::fs::read_to_string(&self.log).unwrap_or_default();
        wait_until(what, timeout, || {
            f().map_err(|seen| Later(move || format!("{seen}; prometheus log:\n{}", log())))
        })
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn path_yaml(p: &Path) -> Yaml {
    p.to_str().unwrap().into()
}

/// A port nothing listens on now, for Prometheus's web listener.
fn free_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

/// The shipped alerts with every `for:` cut to [`FOR`] (each must have one).
fn short_for(alerts: &Path) -> String {
    let mut doc: Yaml = serde_yaml::from_str(&std::fs::read_to_string(alerts).unwrap()).unwrap();
    let groups = doc["groups"].as_sequence_mut().unwrap();
    for rule in groups
        .iter_mut()
        .flat_map(|g| g["rules"].as_sequence_mut().unwrap().iter_mut())
    {
        assert!(rule.get("for").is_some(), "an alert without for: {rule:?}");
        rule["for"] = FOR.into();
    }
    serde_yaml::to_string(&doc).unwrap()
}

#[test]
fn readiness_and_expiry_alerts_follow_the_master() {
    let dir = tempdir();
    let master = Master::start(dir.path(), Behavior::Echo);
    let port = master.server.port();
    let proxy = master
        .cfg()
        .extra(r#"admin: {listen: "127.0.0.1:0"}"#)
        .start(dir.path());
    let admin = proxy.tcp_addr("admin");
    let prometheus = Prometheus::start(dir.path(), admin);
    let within = Duration::from_secs(30);

    // Healthy: the probe succeeds and the expiry is years away.
    prometheus.wait("the proxy scraped and ready", within, || {
        let r = get(
            prometheus.addr,
            "/api/v1/query?query=det_tls_proxy_ready%20%3D%3D%201",
            None,
        );
        let v: Value = serde_json::from_str(&r.body).map_err(|e| format!("{e}: {}", r.body))?;
        let found = v["data"]["result"].as_array().map_or(0, Vec::len);
        (found == 1)
            .then_some(())
            .ok_or_else(|| format!("the query found {found} series: {v}"))
    });
    for name in [
        "DetTlsProxyDown",
        "DetTlsProxyNotReady",
        "DetTlsProxyMasterCertExpiring",
        "DetTlsProxyMasterCertExpiringSoon",
        "DetTlsProxySkipVerify",
    ] {
        assert_eq!(prometheus.rule(name)["state"], "inactive", "{name}");
    }

    // The master stops: the next probe fails, the alert is pending for `for:`, then fires.
    let ca = master.ca;
    drop(master.server);
    prometheus.wait_state("DetTlsProxyNotReady", "pending", within);
    let firing = prometheus.wait_state("DetTlsProxyNotReady", "firing", within);
    let alert = &firing["alerts"][0];
    assert_eq!(alert["labels"]["severity"], "critical", "{alert}");
    assert_eq!(alert["labels"]["instance"], admin.to_string(), "{alert}");
    assert_eq!(prometheus.rule("DetTlsProxyDown")["state"], "inactive");

    // It comes back on the same port, with a certificate that expires in two days: the
    // readiness alert resolves and the critical expiry alert fires (the warning one covers
    // 3 to 14 days, so it stays quiet).
    let leaf = leaf_expiring_in(
        &ca,
        &["det-master", "127.0.0.1"],
        Duration::from_secs(2 * 86_400),
    );
    let _master = ServerBuilder::new(vec![leaf.der()], leaf.key_der())
        .port(port)
        .start();
    prometheus.wait_state("DetTlsProxyNotReady", "inactive", within);
    let expiring = prometheus.wait_state("DetTlsProxyMasterCertExpiring", "firing", within);
    let summary = expiring["alerts"][0]["annotations"]["summary"]
        .as_str()
        .unwrap_or_default();
    assert!(summary.contains("expires in 1d 23h"), "{expiring}");
    assert_eq!(
        prometheus.rule("DetTlsProxyMasterCertExpiringSoon")["state"],
        "inactive"
    );
}
