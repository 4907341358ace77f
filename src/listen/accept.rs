//! The accept step both accept loops run (a listener's, `server::accept`, and the admin
//! endpoint's): wait for a client, and wait out running out of descriptors instead of spinning.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// What a client is accepted from: a listener's `Bound` socket, or the admin endpoint's.
pub(crate) trait Accept {
    type Client;
    fn accept(&self) -> impl Future<Output = io::Result<Self::Client>> + Send;
}

impl Accept for TcpListener {
    type Client = (TcpStream, SocketAddr);

    fn accept(&self) -> impl Future<Output = io::Result<(TcpStream, SocketAddr)>> + Send {
        TcpListener::accept(self)
    }
}

/// The next client of `from` (on `local`, as logs name it); `None` once `stop` is cancelled.
///
/// Running out of descriptors or memory is waited out instead of spun on: `backoff`'s delay,
/// reset by the next client, with a warning through `log_failure` (`Shared::log_failure`, which
/// rate-limits it by its key; this module sits below `state` and cannot name it). Any other
/// accept error concerns one client that is gone already: the next one is taken.
pub(crate) async fn accept_or_back_off<A: Accept>(
    from: &A,
    local: &str,
    backoff: &mut Backoff,
    log_failure: impl Fn(&str, &dyn Fn(u64)),
    stop: &CancellationToken,
) -> Option<A::Client> {
    loop {
        let accepted = tokio::select! {
            r = from.accept() => r,
            _ = stop.cancelled() => return None,
        };
        let e = match accepted {
            Ok(client) => {
                backoff.reset();
                return Some(client);
            }
            Err(e) => e,
        };
        if !is_resource_exhaustion(&e) {
            tracing::debug!(addr = %local, error = %e, "accept failed");
            continue;
        }
        let delay = backoff.next_delay();
        log_failure(&format!("accept:{local}:{e}"), &|n| {
            tracing::warn!(addr = %local, error = %e, repeated = n, retry_in_ms = delay.as_millis() as u64, "cannot accept: out of resources; backing off");
        });
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stop.cancelled() => return None,
        }
    }
}

/// Errors that mean "out of something": wait before accepting again instead of spinning.
fn is_resource_exhaustion(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(nix::libc::EMFILE)
            | Some(nix::libc::ENFILE)
            | Some(nix::libc::ENOBUFS)
            | Some(nix::libc::ENOMEM)
    )
}

/// Back-off after an accept error: 10 ms doubling to 1 s, reset on success.
#[derive(Debug)]
pub(crate) struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            next: Duration::from_millis(10),
        }
    }
}

impl Backoff {
    fn reset(&mut self) {
        self.next = Duration::from_millis(10);
    }
    fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(Duration::from_secs(1));
        d
    }
}
