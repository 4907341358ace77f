//! Drain: after the first SIGTERM/SIGINT (when /readyz already answers 503 and systemd has
//! heard STOPPING=1) the listeners close, connections in flight finish within `timeouts.shutdown` (or a second
//! signal), and the admin endpoint stops last.

use std::time::Duration;

use tokio::signal::unix::Signal;

use super::Server;

impl Server {
    /// Called once `shared.draining` is set and systemd has heard STOPPING=1.
    pub(super) async fn drain(&mut self, term: &mut Signal, int: &mut Signal) {
        // Stop accepting and close the sockets: new clients are refused from here on.
        for (_, r) in self.listeners.drain() {
            r.stop.cancel();
        }
        // No client will take a pre-connected session any more: close them, and stop refilling.
        self.shared.current().retire();
        self.retired.clear();
        self.tracker.close();
        let shutdown = self.shared.current().config.timeouts.shutdown;
        let in_flight = self.tracker.len();
        if in_flight > 0 {
            tracing::info!(connections = in_flight, timeout = %humantime::format_duration(shutdown), "waiting for connections to finish");
        }
        let drained = tokio::select! {
            _ = self.tracker.wait() => true,
            _ = tokio::time::sleep(shutdown) => {
                tracing::warn!(
                    connections = self.tracker.len(),
                    "timeouts.shutdown passed; closing the connections still open"
                );
                false
            }
            _ = term.recv() => {
                tracing::warn!(signal = "SIGTERM", connections = self.tracker.len(), "second signal while draining; closing the connections still open");
                false
            }
            _ = int.recv() => {
                tracing::warn!(signal = "SIGINT", connections = self.tracker.len(), "second signal while draining; closing the connections still open");
                false
            }
        };
        if !drained {
            self.shared.force_close.cancel();
            let _ = tokio::time::timeout(Duration::from_secs(2), self.tracker.wait()).await;
        }
        // The admin endpoint answers (/readyz 503, /healthz 200) until here.
        if let Some(a) = self.admin.take() {
            a.stop.cancel();
            a.tracker.close();
            let _ = tokio::time::timeout(Duration::from_secs(2), a.tracker.wait()).await;
        }
    }
}
