//! Which name is verified and sent as SNI: `master_cert_name`, else a DNS `master_host`, else
//! (for an IP host) the first DNS name of the bundle's leaf, else the IP itself without SNI.

use std::fmt;
use std::path::PathBuf;

use rustls::pki_types::{CertificateDer, ServerName};

use crate::config::{MasterConfig, TlsSettings};
use crate::host::parse_host_ip;
use crate::diagnose::CertSummary;
use crate::untrusted::Untrusted;

/// Why a name was chosen, in the order the rules are tried (docs/interface.md).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NameReason {
    /// `security.tls.master_cert_name` was set.
    Override,
    /// `master_host` is a DNS name.
    DnsHost,
    /// `master_host` is an IP; the first DNS name of the leaf in `master_cert` stands in.
    Substituted { from: PathBuf },
    /// `master_host` is an IP checked against the certificate's IP SANs; no SNI is sent.
    IpSan,
}

impl fmt::Display for NameReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NameReason::Override => write!(f, "security.tls.master_cert_name"),
            NameReason::DnsHost => write!(f, "master_host is a DNS name"),
            NameReason::Substituted { from } => {
                write!(
                    f,
                    "substituted: first DNS name of the certificate in {}",
                    from.display()
                )
            }
            NameReason::IpSan => write!(
                f,
                "master_host is an IP: checked against the certificate's IP SANs, no SNI"
            ),
        }
    }
}

/// The identity verified, and (separately) what is sent as SNI: rustls sends SNI only for DNS
/// names, so an IP identity goes out with none, as RFC 6066 requires.
#[derive(Debug, Clone)]
pub struct NameChoice {
    pub server_name: ServerName<'static>,
    pub reason: NameReason,
}

impl NameChoice {
    pub fn sni(&self) -> Option<String> {
        Some(self.sni_str()).filter(|s| !s.is_empty()).map(str::to_string)
    }
    /// The name sent as SNI, or "" when none is (an IP address).
    pub(crate) fn sni_str(&self) -> &str {
        match &self.server_name {
            ServerName::DnsName(d) => d.as_ref(),
            _ => "",
        }
    }
    pub fn name(&self) -> String {
        server_name_text(&self.server_name).unwrap_or_default()
    }
}

/// The DNS name or IP address a `ServerName` holds, as text.
pub(crate) fn server_name_text(name: &ServerName<'_>) -> Option<String> {
    match name {
        ServerName::DnsName(d) => Some(d.as_ref().to_string()),
        ServerName::IpAddress(ip) => Some(std::net::IpAddr::from(*ip).to_string()),
        _ => None,
    }
}

/// The end-entity certificate of a bundle: the first that is not a CA, else the first.
pub(crate) fn bundle_leaf(certs: &[CertificateDer<'static>]) -> Option<CertSummary> {
    let summaries: Vec<CertSummary> = certs
        .iter()
        .filter_map(|c| CertSummary::from_der(c))
        .collect();
    summaries
        .iter()
        .find(|s| !s.is_ca && !s.dns_names.is_empty())
        .or_else(|| summaries.iter().find(|s| !s.is_ca))
        // `openssl req -x509` marks a self-signed master certificate CA:TRUE.
        .or_else(|| {
            summaries
                .iter()
                .find(|s| s.self_signed && !s.dns_names.is_empty())
        })
        .cloned()
}

pub(crate) fn choose_name(
    master: &MasterConfig,
    tls: &TlsSettings,
    bundle: Option<&[CertificateDer<'static>]>,
) -> NameChoice {
    if let Some(name) = &tls.master_cert_name {
        if let Ok(sn) = ServerName::try_from(name.clone()) {
            return NameChoice {
                server_name: sn,
                reason: NameReason::Override,
            };
        }
    }
    match parse_host_ip(&master.host) {
        None => NameChoice {
            server_name: ServerName::try_from(master.host.clone())
                .unwrap_or_else(|_| ServerName::try_from("invalid.invalid").expect("static name")),
            reason: NameReason::DnsHost,
        },
        Some(ip) => {
            let substitute = bundle
                .and_then(bundle_leaf)
                .and_then(|leaf| {
                    let mut names = leaf.dns_names.into_iter().map(Untrusted::into_raw);
                    names.find(|n| !n.starts_with("*."))
                })
                .and_then(|n| ServerName::try_from(n).ok());
            match (substitute, &tls.master_cert) {
                (Some(sn), Some(path)) => NameChoice {
                    server_name: sn,
                    reason: NameReason::Substituted { from: path.clone() },
                },
                _ => NameChoice {
                    server_name: ServerName::IpAddress(ip.into()),
                    reason: NameReason::IpSan,
                },
            }
        }
    }
}
