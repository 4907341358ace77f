//! HTTP/1.1 to the container runtime's API over its unix socket: one GET answered with a
//! bounded body, or the event stream read as JSON lines. A fresh connection per request: a
//! unix connect costs microseconds, and no half-dead keep-alive connection is ever reused.
//! Errors carry the socket, the path and the status, never a body (a container's inspect
//! answer holds its environment, and with it session tokens).

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tokio_util::task::AbortOnDropHandle;

/// One answer of the API (a list of containers, one container's inspect) is never larger:
/// an inspect is a few KiB, a list of a thousand containers a few MiB.
const MAX_BODY: usize = 16 << 20;
/// One event is a few hundred bytes plus the container's labels.
const MAX_EVENT_LINE: usize = 256 << 10;
/// Every request but the event stream is bounded: a hung API must not hang the directory.
pub(super) const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub(crate) enum ApiError {
    #[error("no socket at {0} (is the container runtime running? identity.container_api names it)")]
    Missing(PathBuf),
    #[error("permission denied on {0}: the proxy's user may not use the container runtime's socket (give it access, or point identity.container_api at a read-only socket proxy)")]
    Denied(PathBuf),
    #[error("nothing answers on {0} (the container runtime is stopped or restarting)")]
    Refused(PathBuf),
    #[error("cannot connect to {path}: {source}")]
    Connect { path: PathBuf, source: io::Error },
    #[error("HTTP exchange with the container runtime API failed ({what}): {source}")]
    Http {
        what: String,
        source: hyper::Error,
    },
    #[error("GET {path} answered {status}: {message}")]
    Status {
        path: String,
        status: StatusCode,
        message: String,
    },
    #[error("GET {path}: no answer within {after:?}")]
    Timeout { path: String, after: Duration },
    #[error("GET {path}: {what} larger than {limit} bytes")]
    TooLarge {
        path: String,
        what: &'static str,
        limit: usize,
    },
    #[error("{what}: malformed JSON ({category:?} at line {line}, column {column})")]
    Malformed {
        what: String,
        category: serde_json::error::Category,
        line: usize,
        column: usize,
    },
    #[error("the event stream ended")]
    StreamEnded,
}

impl ApiError {
    /// A JSON error described by where it is, never by what the text there says: serde's own
    /// messages quote the unexpected value, which may be an environment variable.
    pub(super) fn malformed(what: impl Into<String>, e: &serde_json::Error) -> ApiError {
        ApiError::Malformed {
            what: what.into(),
            category: e.classify(),
            line: e.line(),
            column: e.column(),
        }
    }

    pub(super) fn is_not_found(&self) -> bool {
        matches!(self, ApiError::Status { status, .. } if *status == StatusCode::NOT_FOUND)
    }
}

/// A response body we own, cleared before it is freed: an inspect answer holds the whole
/// environment of a container. Best effort: hyper's own read buffers are not ours to clear.
pub(super) struct Body(Vec<u8>);

impl Body {
    pub(super) fn bytes(&self) -> &[u8] {
        &self.0
    }
}

impl Drop for Body {
    fn drop(&mut self) {
        self.0.fill(0);
        std::hint::black_box(&mut self.0);
    }
}

/// The API at one socket path.
#[derive(Debug, Clone)]
pub(super) struct Api {
    socket: PathBuf,
}

impl Api {
    pub(super) fn new(socket: PathBuf) -> Api {
        Api { socket }
    }

    pub(super) fn socket(&self) -> &Path {
        &self.socket
    }

    /// `GET path`: the body of a 200 answer, within [`REQUEST_TIMEOUT`].
    pub(super) async fn get(&self, path: &str) -> Result<Body, ApiError> {
        let exchange = async {
            let (resp, _conn) = self.send(path).await?;
            read_body(path, resp.into_body()).await
        };
        tokio::time::timeout(REQUEST_TIMEOUT, exchange)
            .await
            .unwrap_or_else(|_| {
                Err(ApiError::Timeout {
                    path: path.to_string(),
                    after: REQUEST_TIMEOUT,
                })
            })
    }

    /// `GET path` answered 200, its body left to stream: the event stream. Returns once the
    /// API has accepted the subscription, so events from then on are not missed.
    pub(super) async fn stream(&self, path: &str) -> Result<Lines, ApiError> {
        let answered = tokio::time::timeout(REQUEST_TIMEOUT, self.send(path));
        let (resp, conn) = answered.await.unwrap_or_else(|_| {
            Err(ApiError::Timeout {
                path: path.to_string(),
                after: REQUEST_TIMEOUT,
            })
        })?;
        Ok(Lines {
            body: resp.into_body(),
            buf: Vec::new(),
            _conn: conn,
        })
    }

    /// Connects, sends `GET path` and waits for the head of a 200 answer; any other status
    /// becomes an error carrying the API's own `message`.
    async fn send(
        &self,
        path: &str,
    ) -> Result<(hyper::Response<Incoming>, AbortOnDropHandle<()>), ApiError> {
        let stream = UnixStream::connect(&self.socket)
            .await
            .map_err(|e| self.connect_error(e))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|source| http("handshake", source))?;
        // The connection's driver lives exactly as long as its answer is read.
        let conn = AbortOnDropHandle::new(tokio::spawn(async move {
            let _ = conn.await;
        }));
        let req = Request::get(path)
            .header(hyper::header::HOST, "docker")
            .body(Empty::<Bytes>::new())
            .map_err(|_| ApiError::Status {
                path: path.to_string(),
                status: StatusCode::BAD_REQUEST,
                message: "not a valid request path".into(),
            })?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|source| http(format!("GET {path}"), source))?;
        if resp.status() != StatusCode::OK {
            let status = resp.status();
            let message = match read_body(path, resp.into_body()).await {
                Ok(body) => api_message(body.bytes()),
                Err(_) => String::new(),
            };
            return Err(ApiError::Status {
                path: path.to_string(),
                status,
                message,
            });
        }
        Ok((resp, conn))
    }

    fn connect_error(&self, e: io::Error) -> ApiError {
        let path = self.socket.clone();
        match e.kind() {
            io::ErrorKind::NotFound => ApiError::Missing(path),
            io::ErrorKind::PermissionDenied => ApiError::Denied(path),
            io::ErrorKind::ConnectionRefused => ApiError::Refused(path),
            _ => ApiError::Connect { path, source: e },
        }
    }
}

fn http(what: impl Into<String>, source: hyper::Error) -> ApiError {
    ApiError::Http {
        what: what.into(),
        source,
    }
}

async fn read_body(path: &str, mut body: Incoming) -> Result<Body, ApiError> {
    let mut out = Body(Vec::new());
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|source| http(format!("body of GET {path}"), source))?;
        if let Ok(data) = frame.into_data() {
            if out.0.len() + data.len() > MAX_BODY {
                return Err(ApiError::TooLarge {
                    path: path.to_string(),
                    what: "the answer is",
                    limit: MAX_BODY,
                });
            }
            out.0.extend_from_slice(&data);
        }
    }
    Ok(out)
}

/// The `message` of an error answer (`{"message": "No such container: …"}`), quoted with its
/// control characters escaped and cut short: it is the runtime's text, not ours.
fn api_message(body: &[u8]) -> String {
    #[derive(serde::Deserialize)]
    struct Answer {
        message: String,
    }
    let message = serde_json::from_slice::<Answer>(body)
        .map(|a| a.message)
        .unwrap_or_default();
    let short: String = message.chars().take(200).collect();
    format!("{short:?}")
}

// === The event stream ===

/// A streamed body split into lines (the Docker API writes one JSON object per line).
pub(super) struct Lines {
    body: Incoming,
    buf: Vec<u8>,
    _conn: AbortOnDropHandle<()>,
}

impl Lines {
    /// The next non-empty line, or [`ApiError::StreamEnded`] when the API closed the stream.
    pub(super) async fn next(&mut self) -> Result<Vec<u8>, ApiError> {
        loop {
            if let Some(i) = self.buf.iter().position(|&b| b == b'\n') {
                let mut line: Vec<u8> = self.buf.drain(..=i).collect();
                line.pop();
                if line.iter().any(|b| !b.is_ascii_whitespace()) {
                    return Ok(line);
                }
                continue;
            }
            if self.buf.len() > MAX_EVENT_LINE {
                return Err(ApiError::TooLarge {
                    path: "/events".into(),
                    what: "an event line is",
                    limit: MAX_EVENT_LINE,
                });
            }
            match self.body.frame().await {
                None => return Err(ApiError::StreamEnded),
                Some(Err(source)) => return Err(http("event stream", source)),
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.buf.extend_from_slice(&data);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_answer_is_quoted_and_short() {
        let m = api_message(br#"{"message": "No such container: abc\u001b[31m"}"#);
        assert_eq!(m, r#""No such container: abc\u{1b}[31m""#);
        assert_eq!(api_message(b"not json"), r#""""#);
        let long = format!(r#"{{"message": "{}"}}"#, "x".repeat(500));
        assert_eq!(api_message(long.as_bytes()).len(), 202);
    }

    #[test]
    fn a_malformed_answer_is_described_without_its_text() {
        let e = serde_json::from_str::<u64>("\"DET_SESSION_TOKEN=s3cret\"").unwrap_err();
        assert!(e.to_string().contains("s3cret"), "serde quotes the value");
        let ours = ApiError::malformed("inspect", &e).to_string();
        assert!(!ours.contains("s3cret"), "{ours}");
        assert!(ours.contains("line 1"), "{ours}");
    }

    #[tokio::test]
    async fn a_missing_socket_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let api = Api::new(dir.path().join("docker.sock"));
        let e = api.get("/containers/json").await.err().unwrap();
        assert!(matches!(e, ApiError::Missing(_)), "{e}");
        assert!(e.to_string().contains("identity.container_api"), "{e}");
    }
}
