//! Certificate inspection shared by `check`, `trust` and the error messages of `run`: what a
//! certificate holds (names, IPs, issuer, validity, fingerprint) in an operator's terms.

use std::fmt;
use std::net::IpAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::untrusted::Untrusted;

/// A master certificate closer than this to its expiry is warned about (`run`: once a day;
/// `check`: in its report).
pub(crate) const EXPIRY_WARNING: std::time::Duration = std::time::Duration::from_secs(14 * 86_400);

/// What an operator needs to know about one certificate. Its names are whatever the master
/// sent, so they are [`Untrusted`]: escaped wherever they are shown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CertSummary {
    pub subject: Untrusted,
    pub issuer: Untrusted,
    pub dns_names: Vec<Untrusted>,
    pub(crate) ip_addresses: Vec<IpAddr>,
    /// Seconds since the Unix epoch.
    pub not_before: i64,
    pub not_after: i64,
    pub is_ca: bool,
    pub self_signed: bool,
    /// SHA-256 of the DER bytes, lowercase hex pairs joined by ':' (as Determined's CLI and
    /// `openssl x509 -fingerprint -sha256` print it, bar the case).
    pub sha256: String,
}

impl CertSummary {
    pub fn from_der(der: &[u8]) -> Option<CertSummary> {
        let (_, cert) = X509Certificate::from_der(der).ok()?;
        let mut dns_names = Vec::new();
        let mut ip_addresses = Vec::new();
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for name in &san.value.general_names {
                match name {
                    GeneralName::DNSName(d) => dns_names.push(Untrusted::from(*d)),
                    GeneralName::IPAddress(b) => {
                        if let Ok(a) = <[u8; 4]>::try_from(*b) {
                            ip_addresses.push(IpAddr::from(a));
                        } else if let Ok(a) = <[u8; 16]>::try_from(*b) {
                            ip_addresses.push(IpAddr::from(a));
                        }
                    }
                    _ => {}
                }
            }
        }
        let subject = Untrusted::new(cert.subject().to_string());
        let issuer = Untrusted::new(cert.issuer().to_string());
        Some(CertSummary {
            self_signed: subject == issuer,
            subject,
            issuer,
            dns_names,
            ip_addresses,
            not_before: cert.validity().not_before.timestamp(),
            not_after: cert.validity().not_after.timestamp(),
            is_ca: cert.is_ca(),
            sha256: fingerprint(der),
        })
    }

    /// Whole days from now until expiry; negative once expired.
    pub fn days_left(&self) -> i64 {
        (self.not_after - now_secs()).div_euclid(86_400)
    }

    pub fn expired(&self) -> bool {
        now_secs() > self.not_after
    }

    pub(crate) fn not_yet_valid(&self) -> bool {
        now_secs() < self.not_before
    }

    /// "DNS names a, b and IPs 10.0.0.5" — or says there are none.
    pub fn names(&self) -> String {
        let dns = if self.dns_names.is_empty() {
            "no DNS names".to_string()
        } else {
            let v: Vec<String> = self.dns_names.iter().map(|d| d.to_string()).collect();
            format!("DNS names {}", v.join(", "))
        };
        let ips = if self.ip_addresses.is_empty() {
            "no IP addresses".to_string()
        } else {
            let v: Vec<String> = self.ip_addresses.iter().map(|i| i.to_string()).collect();
            format!("IP addresses {}", v.join(", "))
        };
        format!("{dns} and {ips}")
    }

    pub fn validity(&self) -> String {
        format!(
            "valid {} to {}",
            rfc3339(self.not_before),
            rfc3339(self.not_after)
        )
    }
}

impl fmt::Display for CertSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "subject {}, issuer {}, {}, {}",
            self.subject,
            self.issuer,
            self.names(),
            self.validity()
        )
    }
}

pub(crate) fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// `YYYY-MM-DDTHH:MM:SSZ` for any time a certificate can hold, before 1970 and after 9999
/// included (proleptic Gregorian calendar, days to civil date after Howard Hinnant).
pub fn rfc3339(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// SHA-256 over `der`, lowercase hex pairs joined by ':'.
pub fn fingerprint(der: &[u8]) -> String {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der);
    let parts: Vec<String> = d.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    parts.join(":")
}

/// Standard base64 with padding (for writing PEM).
pub(crate) fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Parses a fingerprint as an operator may paste it: any case, with or without ':' separators,
/// optionally prefixed `sha256:` or `SHA256 Fingerprint=`. Returns the canonical form.
pub fn parse_fingerprint(s: &str) -> Option<String> {
    let mut t = s.trim();
    for prefix in [
        "SHA256 Fingerprint=",
        "sha256 Fingerprint=",
        "sha256:",
        "SHA256:",
    ] {
        if let Some(rest) = t.strip_prefix(prefix) {
            t = rest.trim();
        }
    }
    let hex: String = t.chars().filter(|c| *c != ':' && *c != ' ').collect();
    if hex.len() != 64 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    let lower = hex.to_ascii_lowercase();
    let pairs: Vec<&str> = (0..32).map(|i| &lower[2 * i..2 * i + 2]).collect();
    Some(pairs.join(":"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn rfc3339_covers_every_certificate_time() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_795_673_045), "2026-11-26T06:04:05Z");
        assert_eq!(rfc3339(-315_619_200), "1960-01-01T00:00:00Z");
        assert_eq!(rfc3339(253_402_300_799), "9999-12-31T23:59:59Z");
        assert_eq!(rfc3339(-1), "1969-12-31T23:59:59Z");
        for secs in [
            i64::MIN / 4,
            -62_135_596_800,
            0,
            4_102_444_800,
            i64::MAX / 4,
        ] {
            let _ = rfc3339(secs);
        }
        // Agrees with humantime wherever humantime works.
        for secs in (0..4_000_000_000i64).step_by(77_777_777) {
            let t = UNIX_EPOCH + Duration::from_secs(secs as u64);
            assert_eq!(
                rfc3339(secs),
                humantime::format_rfc3339_seconds(t).to_string()
            );
        }
    }

    #[test]
    fn base64_matches_rfc4648_vectors() {
        for (input, want) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(input.as_bytes()), want);
        }
    }

    #[test]
    fn fingerprint_parser_accepts_common_spellings() {
        let canon = (0..32)
            .map(|i| format!("{:02x}", i * 7 % 256))
            .collect::<Vec<_>>()
            .join(":");
        assert_eq!(parse_fingerprint(&canon).as_deref(), Some(canon.as_str()));
        assert_eq!(
            parse_fingerprint(&canon.to_uppercase()).as_deref(),
            Some(canon.as_str())
        );
        assert_eq!(
            parse_fingerprint(&canon.replace(':', "")).as_deref(),
            Some(canon.as_str())
        );
        let openssl = format!("SHA256 Fingerprint={}", canon.to_uppercase());
        assert_eq!(parse_fingerprint(&openssl).as_deref(), Some(canon.as_str()));
        assert_eq!(parse_fingerprint("ab:cd"), None);
        assert_eq!(parse_fingerprint(&canon.replace('0', "g")), None);
    }
}
