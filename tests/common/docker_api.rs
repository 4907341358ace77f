//! A stand-in for the Docker Engine API on a unix socket, for what a real runtime cannot be
//! made to do on demand: run a container whose event never comes, answer slowly, fail every
//! request, break its event stream. It answers `GET /containers/json`,
//! `GET /containers/{id}/json` and `GET /events` (chunked JSON lines, held open) in Docker's
//! shapes, and counts the requests.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Default)]
struct State {
    /// Running containers: id → inspect answer.
    containers: BTreeMap<String, String>,
    list_delay: Duration,
    fail: Option<u16>,
    /// Every request's path, in order.
    requests: Vec<String>,
    /// Open event streams.
    streams: Vec<UnixStream>,
}

pub struct DockerApi {
    socket: PathBuf,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
}

impl DockerApi {
    pub fn start(dir: &Path) -> DockerApi {
        let socket = dir.join("docker.sock");
        let listener = UnixListener::bind(&socket).expect("bind the stand-in API");
        let state = Arc::new(Mutex::new(State::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (s, st) = (state.clone(), stop.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if st.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let s = s.clone();
                std::thread::spawn(move || serve(conn, &s));
            }
        });
        DockerApi {
            socket,
            state,
            stop,
        }
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A running container on the `bridge` network at `ip`, with `env`; no event is sent.
    pub fn add(&self, id: &str, name: &str, ip: &str, env: &[&str]) {
        let env: Vec<String> = env.iter().map(|e| format!("{e:?}")).collect();
        let inspect = format!(
            r#"{{"Id": "{id}", "Name": "/{name}", "State": {{"Running": true}},
                "Config": {{"Image": "stand-in/image:1", "Env": [{}]}},
                "NetworkSettings": {{"IPAddress": "{ip}",
                    "Networks": {{"bridge": {{"IPAddress": "{ip}", "GlobalIPv6Address": ""}}}}}}}}"#,
            env.join(", ")
        );
        self.add_raw(id, &inspect);
    }

    /// A running container whose inspect answer is `inspect`, as given.
    pub fn add_raw(&self, id: &str, inspect: &str) {
        self.state()
            .containers
            .insert(id.to_string(), inspect.to_string());
    }

    /// Sends `line` (one JSON event) on every open event stream.
    pub fn event(&self, line: &str) {
        let data = format!("{line}\n");
        let chunk = format!("{:x}\r\n{data}\r\n", data.len());
        for s in &mut self.state().streams {
            let _ = s.write_all(chunk.as_bytes());
        }
    }

    /// Closes every open event stream, as a restarting daemon does.
    pub fn break_streams(&self) {
        for s in self.state().streams.drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
    }

    pub fn set_list_delay(&self, delay: Duration) {
        self.state().list_delay = delay;
    }

    /// Every request answered with `status` (None: answered normally).
    pub fn fail_with(&self, status: Option<u16>) {
        self.state().fail = status;
    }

    /// How many requests' paths started with `prefix`.
    pub fn count(&self, prefix: &str) -> usize {
        let s = self.state();
        s.requests.iter().filter(|p| p.starts_with(prefix)).count()
    }
}

impl Drop for DockerApi {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.break_streams();
        let _ = UnixStream::connect(&self.socket);
    }
}

/// One connection: one request, one answer (an event stream is kept open in the state).
fn serve(mut conn: UnixStream, state: &Mutex<State>) {
    let Some(path) = request_path(&mut conn) else {
        return;
    };
    let (fail, delay) = {
        let mut s = state.lock().unwrap_or_else(|e| e.into_inner());
        s.requests.push(path.clone());
        (s.fail, s.list_delay)
    };
    if let Some(status) = fail {
        return answer(&mut conn, status, r#"{"message": "stand-in failure"}"#);
    }
    if path.starts_with("/events") {
        let head = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n";
        if conn.write_all(head.as_bytes()).is_ok() {
            let mut s = state.lock().unwrap_or_else(|e| e.into_inner());
            s.streams.push(conn);
        }
        return;
    }
    if path == "/containers/json" {
        // Time is the behaviour here: a slow API (`set_list_delay`).
        std::thread::sleep(delay);
        let s = state.lock().unwrap_or_else(|e| e.into_inner());
        let ids: Vec<String> = s
            .containers
            .keys()
            .map(|id| format!(r#"{{"Id": "{id}"}}"#))
            .collect();
        drop(s);
        return answer(&mut conn, 200, &format!("[{}]", ids.join(", ")));
    }
    let id = path
        .strip_prefix("/containers/")
        .and_then(|p| p.strip_suffix("/json"))
        .unwrap_or_default();
    let found = state
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .containers
        .get(id)
        .cloned();
    match found {
        Some(inspect) => answer(&mut conn, 200, &inspect),
        None => answer(
            &mut conn,
            404,
            &format!(r#"{{"message": "No such container: {id}"}}"#),
        ),
    }
}

/// The path of the request on `conn` (its head read, nothing more).
fn request_path(conn: &mut UnixStream) -> Option<String> {
    conn.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() > 8192 || conn.read(&mut byte).ok()? == 0 {
            return None;
        }
        head.push(byte[0]);
    }
    let text = String::from_utf8_lossy(&head);
    let line = text.lines().next()?;
    line.split_whitespace().nth(1).map(str::to_string)
}

fn answer(conn: &mut UnixStream, status: u16, body: &str) {
    let head = format!(
        "HTTP/1.1 {status} Stand-in\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = conn.write_all(head.as_bytes());
    let _ = conn.write_all(body.as_bytes());
}
