//! One listener's policy under one configuration: who may connect, who is given the agent's
//! certificate, and the client configurations its connections use. Built whole, from the
//! listener's configuration and the facts of its bound socket, by each load and reload
//! (`State`); a connection reads the policy current at its accept.

use std::collections::HashMap;
use std::sync::Arc;

use rustls::ClientConfig;

use crate::config::{AlpnPolicy, ListenerConfig, ListenerKey, PresentClientCert, Selectors};
use crate::identity::PeerIdentity;
use crate::listen::Peer;
use crate::metrics::{ListenerMetrics, Metrics, PeerMetrics};
use crate::tls::{Present, Resume, TlsContext};

/// Whether only this host can reach each bound socket (`Bound::host_only`), by listener.
pub(crate) type Reach = HashMap<ListenerKey, bool>;

/// The client configs a listener uses, all sharing one session store.
pub struct ListenerTls {
    pub h2: Arc<ClientConfig>,
    pub(crate) http11: Arc<ClientConfig>,
    pub fixed: Arc<ClientConfig>,
}

/// What the data path needs to know about one listener under the current configuration.
pub struct ListenerPolicy {
    pub config: ListenerConfig,
    /// The listener's name, shared by its connections' `/connections` rows.
    pub name: Arc<str>,
    /// With its default decided by the socket's reach.
    pub present_client_cert: PresentClientCert,
    /// The client configs for peers that are not given the client certificate.
    pub tls: Option<ListenerTls>,
    /// ... and for those that are: only when one is configured and someone may get it.
    pub(crate) tls_cert: Option<ListenerTls>,
    pub metrics: ListenerMetrics,
    pub peers: PeerMetrics,
}

impl ListenerPolicy {
    /// The policy of listener `lc` under `tls`, on a socket whose `reach` says whether only
    /// this host can reach it: the one place the listener's defaults are decided.
    pub fn build(
        lc: &ListenerConfig,
        reach: Option<bool>,
        tls: Option<&TlsContext>,
        metrics: &Metrics,
    ) -> ListenerPolicy {
        // A socket is bound for every listener before its policy is built, so its reach is
        // known; `Never` is the safe answer should it not be.
        let present_client_cert = lc
            .present_client_cert_for(reach)
            .unwrap_or(PresentClientCert::Never);
        let may_present = present_client_cert != PresentClientCert::Never;
        let names: Vec<&str> = [lc.allowed_peers.as_ref(), peer_selectors(&present_client_cert)]
            .into_iter()
            .flatten()
            .flat_map(|s| s.names())
            .collect();
        ListenerPolicy {
            config: lc.clone(),
            name: Arc::from(lc.name.as_str()),
            peers: metrics.peers(&lc.name, &names),
            tls: ListenerTls::build(lc, tls, Present::Nothing),
            tls_cert: ListenerTls::build(lc, tls, Present::ClientCert).filter(|_| may_present),
            present_client_cert,
            metrics: metrics.listener(&lc.name),
        }
    }

    /// Whether `peer` may use this listener under this configuration.
    pub fn allows(&self, peer: &Peer) -> bool {
        crate::listen::peer_allowed(self.config.allowed_clients.as_deref(), peer)
    }

    /// Whether a client is identified: when a selector or the access log will read it.
    pub(crate) fn wants_identity(&self, access_log: bool) -> bool {
        access_log
            || self.config.allowed_peers.is_some()
            || matches!(self.present_client_cert, PresentClientCert::Peers(_))
    }

    /// Whether `allowed_peers` lets `who` in.
    pub fn admits(&self, who: &PeerIdentity) -> bool {
        self.config
            .allowed_peers
            .as_ref()
            .is_none_or(|s| s.matching(who).is_some())
    }

    /// Whether `who` is given the client certificate (one is configured and a selector, or
    /// `true`, says so).
    pub(crate) fn presents_to(&self, who: &PeerIdentity) -> bool {
        self.tls_cert.is_some()
            && match &self.present_client_cert {
                PresentClientCert::Always => true,
                PresentClientCert::Never => false,
                PresentClientCert::Peers(s) => s.matching(who).is_some(),
            }
    }

    /// The `peer` label of `who` in `peers_total`: the name of the first named selector it
    /// matches (allowed_peers first), else `known` or `unknown`.
    pub(crate) fn peer_kind<'a>(&'a self, who: &PeerIdentity) -> &'a str {
        [self.config.allowed_peers.as_ref(), peer_selectors(&self.present_client_cert)]
            .into_iter()
            .flatten()
            .flat_map(|s| s.0.iter())
            .find(|s| s.name.is_some() && s.matches(who))
            .and_then(|s| s.name.as_deref())
            .unwrap_or(if who.is_known() { "known" } else { "unknown" })
    }
}

impl ListenerTls {
    /// The listener's client configs, presenting the agent's certificate or not; `None`
    /// when TLS is off, or the certificate is asked for and none is configured.
    fn build(lc: &ListenerConfig, tls: Option<&TlsContext>, present: Present) -> Option<ListenerTls> {
        let t = tls?;
        if present == Present::ClientCert && !t.has_client_cert() {
            return None;
        }
        let fixed_alpn: Vec<Vec<u8>> = match &lc.alpn {
            AlpnPolicy::List(l) => l.clone(),
            _ => Vec::new(),
        };
        Some(ListenerTls {
            h2: t.client_config(&[b"h2".to_vec()], present, Resume::Shared),
            http11: t.client_config(&[b"http/1.1".to_vec()], present, Resume::Shared),
            fixed: t.client_config(&fixed_alpn, present, Resume::Shared),
        })
    }
}

pub(crate) fn peer_selectors(p: &PresentClientCert) -> Option<&Selectors> {
    match p {
        PresentClientCert::Peers(s) => Some(s),
        _ => None,
    }
}
