//! Why the master could not be reached or verified: the `kind` of
//! `det_tls_proxy_upstream_errors_total`, of the "upstream failed" line and of `/connections`'
//! last failures. A leaf below `tls`, `egress` and `upstream`, which each decide some of them.

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UpstreamErrorKind {
    Resolve,
    ConnectRefused,
    ConnectTimeout,
    Connect,
    HandshakeTimeout,
    CertName,
    CertUnknownIssuer,
    CertExpired,
    CertNotYetValid,
    CertCaAsLeaf,
    CertPinMismatch,
    CertRevoked,
    CertInvalid,
    Plaintext,
    TlsAlert,
    TlsProtocol,
    TlsEof,
    TlsReset,
    Tls,
    ProxyConnect,
    ProxyAuth,
    ProxyForbidden,
    ProxyUpstream,
    ProxyTimeout,
    Proxy,
}

impl UpstreamErrorKind {
    /// Every kind, in [`UpstreamErrorKind::index`] order: each label value is registered at start.
    pub(crate) const ALL: [UpstreamErrorKind; 25] = [
        UpstreamErrorKind::Resolve,
        UpstreamErrorKind::ConnectRefused,
        UpstreamErrorKind::ConnectTimeout,
        UpstreamErrorKind::Connect,
        UpstreamErrorKind::HandshakeTimeout,
        UpstreamErrorKind::CertName,
        UpstreamErrorKind::CertUnknownIssuer,
        UpstreamErrorKind::CertExpired,
        UpstreamErrorKind::CertNotYetValid,
        UpstreamErrorKind::CertCaAsLeaf,
        UpstreamErrorKind::CertPinMismatch,
        UpstreamErrorKind::CertRevoked,
        UpstreamErrorKind::CertInvalid,
        UpstreamErrorKind::Plaintext,
        UpstreamErrorKind::TlsAlert,
        UpstreamErrorKind::TlsProtocol,
        UpstreamErrorKind::TlsEof,
        UpstreamErrorKind::TlsReset,
        UpstreamErrorKind::Tls,
        UpstreamErrorKind::ProxyConnect,
        UpstreamErrorKind::ProxyAuth,
        UpstreamErrorKind::ProxyForbidden,
        UpstreamErrorKind::ProxyUpstream,
        UpstreamErrorKind::ProxyTimeout,
        UpstreamErrorKind::Proxy,
    ];

    pub fn label(self) -> &'static str {
        match self {
            UpstreamErrorKind::Resolve => "resolve",
            UpstreamErrorKind::ConnectRefused => "connect_refused",
            UpstreamErrorKind::ConnectTimeout => "connect_timeout",
            UpstreamErrorKind::Connect => "connect",
            UpstreamErrorKind::HandshakeTimeout => "handshake_timeout",
            UpstreamErrorKind::CertName => "cert_name",
            UpstreamErrorKind::CertUnknownIssuer => "cert_unknown_issuer",
            UpstreamErrorKind::CertExpired => "cert_expired",
            UpstreamErrorKind::CertNotYetValid => "cert_not_yet_valid",
            UpstreamErrorKind::CertCaAsLeaf => "cert_ca_as_leaf",
            UpstreamErrorKind::CertPinMismatch => "cert_pin_mismatch",
            UpstreamErrorKind::CertRevoked => "cert_revoked",
            UpstreamErrorKind::CertInvalid => "cert_invalid",
            UpstreamErrorKind::Plaintext => "plaintext",
            UpstreamErrorKind::TlsAlert => "tls_alert",
            UpstreamErrorKind::TlsProtocol => "tls_protocol",
            UpstreamErrorKind::TlsEof => "tls_eof",
            UpstreamErrorKind::TlsReset => "tls_reset",
            UpstreamErrorKind::Tls => "tls",
            UpstreamErrorKind::ProxyConnect => "proxy_connect",
            UpstreamErrorKind::ProxyAuth => "proxy_auth",
            UpstreamErrorKind::ProxyForbidden => "proxy_forbidden",
            UpstreamErrorKind::ProxyUpstream => "proxy_upstream",
            UpstreamErrorKind::ProxyTimeout => "proxy_timeout",
            UpstreamErrorKind::Proxy => "proxy",
        }
    }

    /// Its place in [`UpstreamErrorKind::ALL`] (the counters are kept in that order).
    pub fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for UpstreamErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_lists_every_kind_in_index_order_with_distinct_labels() {
        for (i, k) in UpstreamErrorKind::ALL.iter().enumerate() {
            assert_eq!(k.index(), i);
        }
        let labels: std::collections::HashSet<&str> =
            UpstreamErrorKind::ALL.iter().map(|k| k.label()).collect();
        assert_eq!(labels.len(), UpstreamErrorKind::ALL.len());
    }

    #[test]
    fn the_labels_are_the_documented_ones() {
        let doc = include_str!("../docs/interface.md");
        let row = doc
            .lines()
            .find(|l| l.starts_with("| `det_tls_proxy_upstream_errors_total`"))
            .expect("the upstream_errors_total row of docs/interface.md");
        let documented: Vec<&str> = row
            .rsplit('|')
            .nth(1)
            .unwrap()
            .split(',')
            .map(|s| s.trim().trim_matches('`'))
            .collect();
        let ours: Vec<&str> = UpstreamErrorKind::ALL.iter().map(|k| k.label()).collect();
        assert_eq!(ours, documented);
    }
}
