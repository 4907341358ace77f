//! The admin endpoint as a scraper meets it: a minimal HTTP/1.1 client (`get`) and
//! `/metrics` parsed by Python's prometheus_client (a real Prometheus text parser), as
//! admin.rs (the metrics themselves) and reload.rs (reloads counted) read it.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use super::probes::{wait_until, Later};
use super::{connect, read_until_closed, IO_TIMEOUT};

// === A minimal HTTP/1.1 client ===

pub struct Resp {
    pub status: u16,
    pub content_type: String,
    pub body: String,
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    loop {
        let Some((size, rest)) = body.split_once("\r\n") else {
            return out;
        };
        let n = usize::from_str_radix(size.split(';').next().unwrap().trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            return out;
        }
        out.push_str(&rest[..n]);
        body = rest[n..].trim_start_matches("\r\n");
    }
}

/// `GET path` with `Connection: close`; the whole response.
pub fn get(addr: SocketAddr, path: &str, accept: Option<&str>) -> Resp {
    get_from(None, addr, path, accept)
}

/// As [`get`], from source address `from` (see `socket_from`).
pub fn get_from(from: Option<&str>, addr: SocketAddr, path: &str, accept: Option<&str>) -> Resp {
    let mut s = match from {
        None => connect(addr),
        Some(ip) => super::socket_from(Some(ip), addr)
            .unwrap_or_else(|| panic!("connect to {addr} from {ip}")),
    };
    let accept = accept
        .map(|a| format!("Accept: {a}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\n{accept}Connection: close\r\n\r\n"
    )
    .unwrap();
    let raw = read_until_closed(&mut s, IO_TIMEOUT);
    let raw = String::from_utf8(raw).expect("UTF-8 response");
    let (head, body) = raw
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no HTTP response: {raw:?}"));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status: {head:?}"));
    let header = |name: &str| {
        head.lines()
            .filter_map(|l| l.split_once(':'))
            .find(|(k, _)| k.trim().eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim().to_string())
            .unwrap_or_default()
    };
    let body = if header("transfer-encoding").eq_ignore_ascii_case("chunked") {
        dechunk(body)
    } else {
        body.to_string()
    };
    Resp {
        status,
        content_type: header("content-type"),
        body,
    }
}

// === /metrics through Python's parsers ===

const PARSE: &str = r#"
import json, sys
try:
    if sys.argv[1] == "openmetrics":
        from prometheus_client.openmetrics.parser import text_string_to_metric_families
    else:
        from prometheus_client.parser import text_string_to_metric_families
except ImportError as e:
    sys.exit("prometheus_client is missing (pip install prometheus-client): %s" % e)
out = []
for f in text_string_to_metric_families(sys.stdin.read()):
    out.append({"name": f.name, "type": f.type, "samples": [
        {"name": s.name, "labels": s.labels, "value": float(s.value)} for s in f.samples]})
print(json.dumps(out))
"#;

#[derive(Debug)]
pub struct Family {
    pub name: String,
    pub kind: String,
    pub samples: Vec<(String, BTreeMap<String, String>, f64)>,
}

#[derive(Debug)]
pub struct Scrape {
    pub families: Vec<Family>,
}

impl Scrape {
    pub fn family(&self, name: &str) -> Option<&Family> {
        self.families.iter().find(|f| f.name == name)
    }

    /// The value of the one sample named `sample` whose labels include `labels`.
    pub fn value(&self, sample: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let found: Vec<f64> = self
            .families
            .iter()
            .flat_map(|f| f.samples.iter())
            .filter(|(n, l, _)| {
                n == sample
                    && labels
                        .iter()
                        .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|(_, _, v)| *v)
            .collect();
        assert!(
            found.len() <= 1,
            "{sample} {labels:?} matches {} samples",
            found.len()
        );
        found.first().copied()
    }

    /// Like `value`, 0 when the labelled child does not exist yet.
    pub fn count(&self, sample: &str, labels: &[(&str, &str)]) -> f64 {
        self.value(sample, labels).unwrap_or(0.0)
    }
}

/// Parses Prometheus text with prometheus_client's `openmetrics` or classic `text` parser.
pub fn parse(text: &str, parser: &str) -> Scrape {
    let mut child = Command::new("python3")
        .arg("-c")
        .arg(PARSE)
        .arg(parser)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the {parser} parser rejected /metrics: {}\n--- /metrics ---\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let families = v
        .as_array()
        .unwrap()
        .iter()
        .map(|f| Family {
            name: f["name"].as_str().unwrap().to_string(),
            kind: f["type"].as_str().unwrap().to_string(),
            samples: f["samples"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| {
                    let labels = s["labels"]
                        .as_object()
                        .unwrap()
                        .iter()
                        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
                        .collect();
                    (
                        s["name"].as_str().unwrap().to_string(),
                        labels,
                        s["value"].as_f64().unwrap(),
                    )
                })
                .collect(),
        })
        .collect();
    Scrape { families }
}

/// What Prometheus sends: OpenMetrics preferred, classic text accepted.
pub const PROMETHEUS_ACCEPT: &str =
    "application/openmetrics-text;version=1.0.0;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";

/// Scrapes /metrics as Prometheus does: the parser follows the response's content type.
pub fn scrape(admin: SocketAddr) -> Scrape {
    let r = get(admin, "/metrics", Some(PROMETHEUS_ACCEPT));
    assert_eq!(r.status, 200, "{}", r.body);
    let parser = if r.content_type.starts_with("application/openmetrics-text") {
        "openmetrics"
    } else {
        "text"
    };
    parse(&r.body, parser)
}

/// Scrapes until `pred` holds; panics with the last scrape after `timeout`.
pub fn scrape_until(
    admin: SocketAddr,
    what: &str,
    timeout: Duration,
    pred: impl Fn(&Scrape) -> bool,
) -> Scrape {
    wait_until(what, timeout, || {
        let s = scrape(admin);
        if pred(&s) {
            Ok(s)
        } else {
            Err(Later(move || format!("last scrape: {s:#?}")))
        }
    })
}
