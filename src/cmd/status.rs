//! `det-tls-proxy status`: asks the running proxy's admin endpoint (`/connections`, found
//! through the same configuration layers as `run`) and prints the open connections, the
//! master's address and certificate expiry, and the last failures by kind; `--json` prints the
//! endpoint's document.

use std::net::SocketAddr;
use std::time::Duration;

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use serde_json::Value;

use crate::config::{self, Overrides, Purpose};
use crate::exit;

/// The whole exchange with the admin endpoint, connect included.
const TIMEOUT: Duration = Duration::from_secs(10);

pub fn main(flags: &Overrides, json: bool, limit: Option<usize>) -> i32 {
    let config = match config::load(flags, Purpose::Show) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return exit::CONFIG;
        }
    };
    let Some(admin) = &config.admin else {
        eprintln!(
            "status: admin.listen is not set, so the running proxy has no admin endpoint to ask; \
             set admin.listen (DET_TLS_PROXY_ADMIN_LISTEN, --admin-listen) for run and status alike"
        );
        return exit::CONFIG;
    };
    let addr = dialable(admin.listen);
    let mut path = String::from("/connections");
    if let Some(n) = limit {
        path += &format!("?limit={n}");
    }
    let fetched = super::runtime().block_on(async {
        tokio::time::timeout(TIMEOUT, fetch(addr, &path))
            .await
            .unwrap_or_else(|_| Err(format!("no answer within {}s", TIMEOUT.as_secs())))
    });
    let doc = match fetched.and_then(|body| {
        serde_json::from_slice::<Value>(&body).map_err(|e| format!("not a JSON answer: {e}"))
    }) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("status: the admin endpoint at {addr} (admin.listen): {e}");
            return exit::RUNTIME;
        }
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default());
    } else {
        print!("{}", render(&doc));
    }
    exit::OK
}

/// Where to reach an admin endpoint that listens on `listen` (a wildcard means this host).
fn dialable(mut listen: SocketAddr) -> SocketAddr {
    if listen.ip().is_unspecified() {
        listen.set_ip(match listen {
            SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    listen
}

/// `GET path` on the admin endpoint; the body of a 200 answer.
async fn fetch(addr: SocketAddr, path: &str) -> Result<Vec<u8>, String> {
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("cannot connect: {e} (is the proxy running?)"))?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
            .await
            .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let req = hyper::Request::get(path)
        .header(hyper::header::HOST, addr.to_string())
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    // The endpoint refuses a client outside admin.allowed_clients by closing at once; the
    // request then meets a closed connection, an incomplete answer or a reset, as timing has it.
    let resp = sender.send_request(req).await.map_err(|e| {
        if e.is_incomplete_message() || e.is_canceled() || e.is_closed() || e.is_user() {
            "closed the connection without an answer: is this host in admin.allowed_clients?"
                .to_string()
        } else {
            format!("{e}: the connection ended without an answer; is this host in admin.allowed_clients?")
        }
    })?;
    let status = resp.status();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes()
        .to_vec();
    if !status.is_success() {
        let text = String::from_utf8_lossy(&body);
        return Err(format!("answered {status}: {}", clean(text.trim())));
    }
    Ok(body)
}

// === The table ===

/// Text that came from outside (a peer, a master's error), escaped as every printer escapes it.
fn clean(s: &str) -> String {
    crate::untrusted::escape(s)
}

/// The WHO column: who the peer is as far as the proxy could tell (`uid=0,unit=x.service`),
/// `-` when nothing is known. One word, so the table's columns stay split by spaces.
fn who(p: &Value) -> String {
    let mut parts = Vec::new();
    for key in ["uid", "unit", "container", "task_id"] {
        match &p[key] {
            Value::Number(n) => parts.push(format!("{key}={n}")),
            Value::String(s) => parts.push(format!("{key}={}", clean(s).replace(' ', "\\x20"))),
            _ => {}
        }
    }
    if parts.is_empty() {
        return "-".into();
    }
    parts.join(",")
}

fn age(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        3600..86_400 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{:02}h", s / 86_400, s % 86_400 / 3600),
    }
}

/// How the master session came to be: `full`, `resumed`, `preconnected`, or both of the
/// last two; `connecting` before there is one; `-` without TLS (passthrough, plain TCP).
fn session(s: &Value) -> (String, String, String) {
    if s.is_null() {
        return ("connecting".into(), String::new(), String::new());
    }
    let version = s["tls_version"].as_str().unwrap_or_default();
    if version.is_empty() {
        return ("-".into(), "-".into(), "-".into());
    }
    let how = match (s["preconnected"].as_bool(), s["resumed"].as_bool()) {
        (Some(true), Some(true)) => "preconnected,resumed",
        (Some(true), _) => "preconnected",
        (_, Some(true)) => "resumed",
        _ => "full",
    };
    let alpn = s["alpn"].as_str().filter(|a| !a.is_empty()).unwrap_or("-");
    (how.into(), version.into(), clean(alpn))
}

/// Left-aligned columns, two spaces apart.
fn table(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|i| {
            rows.iter()
                .filter_map(|r| r.get(i))
                .map(|c| c.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out += line.join("  ").trim_end();
        out.push('\n');
    }
    out
}

/// The report for people: one row per connection, then the totals, the master and the errors.
pub fn render(doc: &Value) -> String {
    let mut rows = vec![[
        "LISTENER", "PEER", "WHO", "AGE", "UP", "DOWN", "SESSION", "TLS", "ALPN",
    ]
    .map(String::from)
    .to_vec()];
    for c in doc["connections"].as_array().into_iter().flatten() {
        let (how, version, alpn) = session(&c["session"]);
        rows.push(vec![
            clean(c["listener"].as_str().unwrap_or_default()),
            clean(c["peer"]["addr"].as_str().unwrap_or_default()),
            who(&c["peer"]),
            age(c["age_ms"].as_u64().unwrap_or(0)),
            c["bytes_up"].as_u64().unwrap_or(0).to_string(),
            c["bytes_down"].as_u64().unwrap_or(0).to_string(),
            how,
            version,
            alpn,
        ]);
    }
    let mut out = table(&rows);
    let total = doc["total"].as_u64().unwrap_or(0);
    let omitted = doc["omitted"].as_u64().unwrap_or(0);
    out += &format!("{total} open connection(s)");
    if omitted > 0 {
        out += &format!(
            "; the {} newest shown, {omitted} more not shown (--limit)",
            doc["shown"].as_u64().unwrap_or(0)
        );
    }
    out.push('\n');
    let master = &doc["master"];
    out += &format!(
        "master: {}; certificate expires {}\n",
        clean(master["address"].as_str().unwrap_or("?")),
        master["cert_expiry"]
            .as_str()
            .unwrap_or("(not seen yet: no full handshake since start)")
    );
    let errors = doc["errors"].as_array().cloned().unwrap_or_default();
    if errors.is_empty() {
        out += "no failure to reach or verify the master since start\n";
        return out;
    }
    out += "last failures to reach or verify the master, by kind:\n";
    let mut rows = vec![["KIND", "COUNT", "LAST", "ERROR"]
        .map(String::from)
        .to_vec()];
    for e in &errors {
        rows.push(vec![
            clean(e["kind"].as_str().unwrap_or_default()),
            e["count"].as_u64().unwrap_or(0).to_string(),
            clean(e["last"].as_str().unwrap_or_default()),
            clean(e["error"].as_str().unwrap_or_default()),
        ]);
    }
    for line in table(&rows).lines() {
        out += &format!("  {line}\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn ages_read_at_a_glance() {
        assert_eq!(age(999), "0s");
        assert_eq!(age(59_000), "59s");
        assert_eq!(age(61_000), "1m01s");
        assert_eq!(age(3_720_000), "1h02m");
        assert_eq!(age(90_000_000), "1d01h");
    }

    #[test]
    fn the_table_names_each_session_and_escapes_what_came_from_outside() {
        let doc = json!({
            "total": 3, "shown": 2, "omitted": 1,
            "connections": [
                {"listener": "agent", "peer": {"addr": "127.0.0.1:5000", "uid": 0,
                 "unit": "evil \u{1b}[8m.service"}, "age_ms": 65_000,
                 "bytes_up": 10, "bytes_down": 2048,
                 "session": {"tls_version": "TLSv1.3", "alpn": "h2", "resumed": true, "preconnected": false}},
                {"listener": "tasks", "peer": {"addr": "unix"}, "age_ms": 10, "bytes_up": 0,
                 "bytes_down": 0, "session": null},
            ],
            "master": {"address": "det-master:8443", "cert_expiry": null},
            "errors": [{"kind": "cert_name", "count": 2, "last": "2030-01-01T00:00:00Z",
                        "error": "bad\u{1b}[31m\nname"}],
        });
        let out = render(&doc);
        assert!(
            out.contains(
                "agent     127.0.0.1:5000  uid=0,unit=evil\\x20\\x1b[8m.service  1m05s  10  2048  resumed     TLSv1.3  h2"
            ),
            "{out}"
        );
        assert!(
            out.contains("tasks     unix            -                                   0s     0   0     connecting"),
            "{out}"
        );
        assert!(
            out.contains("3 open connection(s); the 2 newest shown, 1 more not shown"),
            "{out}"
        );
        assert!(
            out.contains("master: det-master:8443; certificate expires (not seen yet"),
            "{out}"
        );
        assert!(out.contains("bad\\x1b[31m\\nname"), "{out}");
        assert!(!out.contains('\u{1b}'), "{out}");
    }
}
