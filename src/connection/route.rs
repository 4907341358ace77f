//! `route`: the way to the master for a client whose first bytes are known. Passthrough (its
//! bytes are a ClientHello) and plain TCP (`security.tls.enabled: false`) dial; TLS takes
//! the client configuration the listener has for those bytes (ALPN `auto` offers `h2` to an
//! HTTP/2 preface, `http/1.1` to anything else) and whether the client gets the certificate,
//! then a session `upstream.preconnect` had ready or one dialled and handshaken now. Dialling
//! goes directly or through the egress proxy (`upstream/`).

use std::sync::Arc;
use std::time::Instant;

use tokio::net::TcpStream;

use super::{Connection, Sniffed};
use crate::config::AlpnPolicy;
use crate::sniff::FirstBytes;
use crate::untrusted::Untrusted;
use crate::upstream::{version_name, Dialed, MasterTls, UpstreamError};
use crate::outcome::Outcome;

/// The master's end of a connection, as `route` made it. Kept in `stages` and lent to
/// the relay, which never holds a second copy.
#[allow(clippy::large_enum_variant)]
pub(super) enum Master {
    Tls(MasterTls),
    /// Passthrough, or plain TCP.
    Plain(TcpStream),
}

impl Connection {
    pub(super) async fn route(&mut self, sniffed: &Sniffed) -> Result<Master, Outcome> {
        let passthrough = sniffed.first.kind == FirstBytes::ClientHello;
        let config = match passthrough {
            true => None,
            false => self.client_config(sniffed.first.kind, sniffed.present),
        };
        match config {
            Some(config) => {
                let tls = self.master_tls(config, sniffed.present).await?;
                self.record_tls(tls.get_ref().1);
                Ok(Master::Tls(tls))
            }
            None => Ok(Master::Plain(self.dial().await?.stream)),
        }
    }

    /// The listener's client config for first bytes of this `kind`, with the client
    /// certificate when `present`; `None` when TLS is off.
    fn client_config(&self, kind: FirstBytes, present: bool) -> Option<Arc<rustls::ClientConfig>> {
        let policy = &self.policy;
        let tls = if present { policy.tls_cert.as_ref() } else { policy.tls.as_ref() }?;
        Some(match policy.config.alpn {
            AlpnPolicy::Auto if kind == FirstBytes::H2Preface => tls.h2.clone(),
            AlpnPolicy::Auto => tls.http11.clone(),
            _ => tls.fixed.clone(),
        })
    }

    /// A TCP connection to the master, timed and named for the access line.
    async fn dial(&mut self) -> Result<Dialed, Outcome> {
        let dialed = match self.state.upstream.connect().await {
            Ok(d) => d,
            Err(e) => return Err(self.upstream_failed(&e)),
        };
        self.shared
            .metrics
            .connect_seconds
            .observe(dialed.connect_time.as_secs_f64());
        self.rec.session.master = self.state.upstream.peer(&dialed);
        Ok(dialed)
    }

    /// A TLS session with the master for a client that will use `config`: a pre-connected
    /// one when the pool has one ready, else dialled and handshaken now.
    async fn master_tls(
        &mut self,
        config: Arc<rustls::ClientConfig>,
        present: bool,
    ) -> Result<MasterTls, Outcome> {
        if let Some(pool) = &self.state.pool {
            if let Some(p) = pool.take(&config, present).await {
                self.rec.session.master = p.peer;
                self.rec.session.preconnected = true;
                return Ok(p.session);
            }
        }
        let dialed = self.dial().await?;
        let started = Instant::now();
        let Some(tls) = &self.state.tls else {
            return Err(Outcome::UpstreamError);
        };
        let name = tls.name.server_name.clone();
        let handshake = self.state.upstream.handshake(dialed, config, name).await;
        let stream = handshake.map_err(|e| self.upstream_failed(&e))?;
        self.shared
            .metrics
            .handshake_seconds
            .observe(started.elapsed().as_secs_f64());
        Ok(stream)
    }

    /// What the access log keeps of a handshake; a full handshake also updates the master
    /// certificate's expiry gauge.
    fn record_tls(&mut self, conn: &rustls::ClientConnection) {
        let s = &mut self.rec.session;
        s.alpn = Untrusted::new(conn.alpn_protocol().unwrap_or_default().to_vec());
        s.tls_version = version_name(conn.protocol_version());
        s.resumed = matches!(conn.handshake_kind(), Some(rustls::HandshakeKind::Resumed));
        if s.resumed {
            self.shared.metrics.tls_resumed.inc();
        } else {
            self.shared.saw_master(conn);
        }
    }

    /// Notes why the master was not reached (for `finish` and `/connections`) and logs it,
    /// rate-limited; the connection ends as `upstream_error`.
    fn upstream_failed(&mut self, e: &UpstreamError) -> Outcome {
        let kind = e.kind();
        self.rec.upstream_error = Some(kind);
        let detail = e.to_string();
        self.shared.connections.note_error(kind, &detail);
        let listener = self.policy.config.name.as_str();
        let client = &self.peer;
        self.shared.log_failure(&format!("{kind}:{detail}"), |suppressed| {
            tracing::warn!(
                listener = listener,
                client = %client,
                kind = kind.label(),
                error = %detail,
                repeated = suppressed,
                "upstream failed"
            );
        });
        Outcome::UpstreamError
    }
}
