//! The way out of the host: an HTTP proxy that upstream connections are tunnelled through with
//! `CONNECT`, and the hosts reached directly despite it (`NO_PROXY`, matched as the agent's
//! Go HTTP client matches it). Credentials are kept out of every text this module produces.

use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::error_kind::UpstreamErrorKind;

/// An HTTP proxy to tunnel through. Its `Display` hides the password.
#[derive(Clone, PartialEq, Eq)]
pub struct ProxyUrl {
    pub host: String,
    pub port: u16,
    /// User and password, percent-decoded, for `Proxy-Authorization: Basic`.
    pub auth: Option<(String, String)>,
    /// The `upstream_proxy_credentials` file `auth` was read from, if it was.
    pub(crate) auth_file: Option<std::path::PathBuf>,
}

impl fmt::Display for ProxyUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "http://")?;
        if let Some((user, _)) = &self.auth {
            write!(f, "{user}:***@")?;
        }
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

impl fmt::Debug for ProxyUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ProxyUrl({self})")
    }
}

/// `text` with the password of any `scheme://user:password@` in it replaced by `***`, for
/// messages that quote what an operator wrote.
pub(crate) fn redact(text: &str) -> String {
    let Some((scheme, rest)) = text.split_once("://") else {
        return text.to_string();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else {
        return text.to_string();
    };
    let user = rest[..at].split(':').next().unwrap_or("");
    format!("{scheme}://{user}:***@{}", &rest[at + 1..])
}

impl ProxyUrl {
    /// `http://[user:pass@]host[:port][/]`; a URL without a scheme is taken as `http://`, as
    /// the agent's HTTP client takes it. `none` or an empty text mean no proxy. The error
    /// never repeats the password.
    pub fn parse(text: &str) -> Result<Option<ProxyUrl>, String> {
        let t = text.trim();
        if t.is_empty() || t.eq_ignore_ascii_case("none") {
            return Ok(None);
        }
        let shown = redact(t);
        let with_scheme = if t.contains("://") {
            t.to_string()
        } else {
            format!("http://{t}")
        };
        let url = url::Url::parse(&with_scheme)
            .map_err(|e| format!("{shown:?} is not a proxy URL ({e}); write http://HOST:PORT"))?;
        if url.scheme() != "http" {
            return Err(format!(
                "{shown:?}: only http:// proxies are supported (CONNECT over plain HTTP; TLS to the master runs inside the tunnel)"
            ));
        }
        let host = match url.host() {
            Some(url::Host::Domain(d)) => d.to_string(),
            Some(url::Host::Ipv4(a)) => a.to_string(),
            Some(url::Host::Ipv6(a)) => a.to_string(),
            None => return Err(format!("{shown:?} names no proxy host")),
        };
        if !matches!(url.path(), "" | "/") || url.query().is_some() || url.fragment().is_some() {
            return Err(format!(
                "{shown:?}: a proxy URL has no path or query; write http://HOST:PORT"
            ));
        }
        let port = url.port_or_known_default().unwrap_or(80);
        let auth = if url.username().is_empty() && url.password().is_none() {
            None
        } else {
            let decode = |s: &str| {
                url::form_urlencoded::parse(format!("x={}", s.replace('+', "%2B")).as_bytes())
                    .next()
                    .map(|(_, v)| v.into_owned())
                    .unwrap_or_default()
            };
            Some((
                decode(url.username()),
                decode(url.password().unwrap_or("")),
            ))
        };
        Ok(Some(ProxyUrl {
            host,
            port,
            auth,
            auth_file: None,
        }))
    }
}

/// One `NO_PROXY` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Rule {
    /// `*`: every host.
    All,
    /// An address, optionally with a port.
    Ip(IpAddr, Option<u16>),
    Net(IpNet),
    /// `.example.com` (subdomains only) or `example.com` (itself and its subdomains), stored
    /// with its leading dot, optionally with a port.
    Domain {
        suffix: String,
        itself: bool,
        port: Option<u16>,
    },
}

/// The hosts reached directly, as Go's `http.ProxyFromEnvironment` reads `NO_PROXY`: a host
/// suffix, an IP, a CIDR, optionally with `:port`, or `*`. `localhost` and loopback addresses
/// never use the proxy, whatever the list says.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NoProxy {
    rules: Vec<Rule>,
}

impl NoProxy {
    /// Each entry of `list` may itself hold several, comma-separated (the variable's form).
    pub fn parse(list: &[String]) -> Result<NoProxy, String> {
        let mut rules = Vec::new();
        for entry in list.iter().flat_map(|e| e.split(',')) {
            let e = entry.trim().to_ascii_lowercase();
            if e.is_empty() {
                continue;
            }
            rules.push(Self::rule(&e)?);
        }
        Ok(NoProxy { rules })
    }

    fn rule(e: &str) -> Result<Rule, String> {
        if e == "*" {
            return Ok(Rule::All);
        }
        if e.contains('/') {
            return e
                .parse::<IpNet>()
                .map(Rule::Net)
                .map_err(|_| format!("{e:?} is not a CIDR network (write 10.0.0.0/8)"));
        }
        let (host, port) = split_port(e)?;
        if let Some(ip) = crate::host::parse_host_ip(host) {
            return Ok(Rule::Ip(ip, port));
        }
        let bare = host.strip_prefix('*').unwrap_or(host);
        let itself = !bare.starts_with('.');
        let suffix = if itself {
            format!(".{bare}")
        } else {
            bare.to_string()
        };
        if suffix.len() < 2 || suffix.contains(['*', ' ', '@']) {
            return Err(format!(
                "{e:?} is not a host suffix, IP, CIDR or * (write example.com, .example.com, 10.0.0.7 or 10.0.0.0/8)"
            ));
        }
        Ok(Rule::Domain {
            suffix,
            itself,
            port,
        })
    }

    /// Whether `host:port` is reached directly.
    pub(crate) fn bypasses(&self, host: &str, port: u16) -> bool {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        let ip = crate::host::parse_host_ip(&host);
        if host == "localhost" || ip.is_some_and(|ip| ip.is_loopback()) {
            return true;
        }
        let port_ok = |p: &Option<u16>| p.is_none_or(|p| p == port);
        self.rules.iter().any(|r| match r {
            Rule::All => true,
            Rule::Ip(a, p) => ip == Some(*a) && port_ok(p),
            Rule::Net(n) => ip.is_some_and(|ip| n.contains(&ip)),
            Rule::Domain {
                suffix,
                itself,
                port: p,
            } => {
                ip.is_none()
                    && (host.ends_with(suffix.as_str()) || (*itself && host == suffix[1..]))
                    && port_ok(p)
            }
        })
    }
}

/// `host`, `host:port`, `[v6]`, `[v6]:port` or a bare v6 address.
fn split_port(e: &str) -> Result<(&str, Option<u16>), String> {
    let bad_port = || format!("{e:?}: the part after the last ':' is not a port");
    if let Some(rest) = e.strip_prefix('[') {
        let (host, after) = rest
            .split_once(']')
            .ok_or_else(|| format!("{e:?}: unclosed '['"))?;
        return match after.strip_prefix(':') {
            Some(p) => Ok((host, Some(p.parse().map_err(|_| bad_port())?))),
            None if after.is_empty() => Ok((host, None)),
            None => Err(bad_port()),
        };
    }
    if e.parse::<IpAddr>().is_ok() {
        return Ok((e, None));
    }
    match e.rsplit_once(':') {
        Some((h, p)) => Ok((h, Some(p.parse().map_err(|_| bad_port())?))),
        None => Ok((e, None)),
    }
}

/// The egress settings: the proxy (if any), where it was set, and the hosts that bypass it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Egress {
    pub proxy: Option<ProxyUrl>,
    /// The layer that set the proxy (`HTTPS_PROXY`, a file, ...), for `check`.
    pub source: String,
    pub no_proxy: NoProxy,
}

impl Egress {
    /// The proxy to reach `host:port` through, or `None` to dial it directly.
    pub fn route(&self, host: &str, port: u16) -> Option<&ProxyUrl> {
        self.proxy
            .as_ref()
            .filter(|_| !self.no_proxy.bypasses(host, port))
    }

    /// How `host:port` is reached, as `check` reports it.
    pub fn describe(&self, host: &str, port: u16) -> String {
        match (&self.proxy, self.route(host, port)) {
            (None, _) => "direct (no upstream_proxy)".to_string(),
            (Some(_), None) => format!(
                "direct ({} is in upstream_no_proxy, or local)",
                authority(host, port)
            ),
            (Some(_), Some(p)) => format!(
                "via the HTTP proxy {p} (upstream_proxy from {}), CONNECT {}",
                self.source,
                authority(host, port)
            ),
        }
    }
}

// === The tunnel ===

/// Why a proxy did not open the tunnel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The proxy's status line (`HTTP/1.1 407 Proxy Authentication Required`, escaped), or
    /// what went wrong before one arrived.
    pub status_line: String,
    pub status: Option<u16>,
}

impl Refusal {
    /// The `upstream_errors_total{kind}` it is counted as.
    pub fn kind(&self) -> UpstreamErrorKind {
        match self.status {
            Some(407) => UpstreamErrorKind::ProxyAuth,
            Some(403) => UpstreamErrorKind::ProxyForbidden,
            Some(502..=504) => UpstreamErrorKind::ProxyUpstream,
            _ => UpstreamErrorKind::Proxy,
        }
    }

    /// What the operator can do about it.
    pub fn hint(&self, proxy: &ProxyUrl, target: &str) -> String {
        match self.status {
            Some(407) if proxy.auth.is_some() => match &proxy.auth_file {
                Some(f) => format!(
                    "the proxy ({proxy}) refused the user and password in upstream_proxy_credentials ({}); check them",
                    f.display()
                ),
                None => format!(
                    "the proxy refused the user and password in upstream_proxy ({proxy}); check them"
                ),
            },
            Some(407) => "the proxy wants credentials: put USER:PASSWORD in the file upstream_proxy_credentials names, or write them into upstream_proxy as http://USER:PASSWORD@HOST:PORT".to_string(),
            Some(403) => format!(
                "the proxy's policy forbids a tunnel to {target}: ask its operator to allow CONNECT to this host and port, or list the master in upstream_no_proxy if it is reachable directly"
            ),
            Some(502..=504) => format!(
                "the proxy could not reach {target} itself: check that the master's name resolves from the proxy and that the master is up"
            ),
            Some(_) => "the proxy did not open a tunnel (a CONNECT answer other than 2xx)".to_string(),
            None => "check that upstream_proxy names an HTTP proxy".to_string(),
        }
    }
}

/// `host:port` as a CONNECT target and `Host` header (a v6 address in brackets).
pub fn authority(host: &str, port: u16) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// The CONNECT request for `target`, with `Proxy-Authorization` when the URL has a user.
fn request(proxy: &ProxyUrl, target: &str) -> String {
    let mut r = format!(
        "CONNECT {target} HTTP/1.1\r\nHost: {target}\r\nUser-Agent: det-tls-proxy/{}\r\n",
        env!("CARGO_PKG_VERSION")
    );
    if let Some((user, pass)) = &proxy.auth {
        let token = crate::diagnose::base64(format!("{user}:{pass}").as_bytes());
        r.push_str(&format!("Proxy-Authorization: Basic {token}\r\n"));
    }
    r.push_str("\r\n");
    r
}

/// The longest CONNECT answer head read before giving up.
const MAX_HEAD: usize = 16 * 1024;

/// Asks the proxy on `stream` for a tunnel to `host:port` and reads its answer up to the end
/// of the head and not a byte further, so what follows is the master's.
pub(crate) async fn open_tunnel(
    stream: &mut TcpStream,
    proxy: &ProxyUrl,
    host: &str,
    port: u16,
) -> Result<(), Refusal> {
    let target = authority(host, port);
    let lost = |e: std::io::Error| Refusal {
        status_line: format!("the proxy closed or failed before answering CONNECT: {e}"),
        status: None,
    };
    stream
        .write_all(request(proxy, &target).as_bytes())
        .await
        .map_err(lost)?;
    let head = read_head(stream).await.map_err(lost)?;
    let text = String::from_utf8_lossy(&head);
    let line = text.lines().next().unwrap_or("").trim();
    // The proxy's words reach logs and `check`: escaped here, where they enter.
    let status_line = crate::untrusted::Untrusted::new(line);
    let status = line
        .strip_prefix("HTTP/1.")
        .and_then(|rest| rest.get(2..5))
        .and_then(|code| code.parse::<u16>().ok());
    match status {
        Some(200..=299) => Ok(()),
        None => Err(Refusal {
            status_line: format!("not an HTTP answer: {status_line:?}"),
            status: None,
        }),
        Some(_) => Err(Refusal {
            status_line: status_line.to_string(),
            status,
        }),
    }
}

/// The answer's head, through the blank line, consumed exactly: peek, then read only what
/// belongs to the head.
async fn read_head(stream: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut head: Vec<u8> = Vec::new();
    let mut buf = vec![0u8; 2048];
    loop {
        let n = stream.peek(&mut buf).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let from = head.len().saturating_sub(3);
        let before = head.len();
        head.extend_from_slice(&buf[..n]);
        if let Some(at) = head[from..].windows(4).position(|w| w == b"\r\n\r\n") {
            let end = from + at + 4;
            stream.read_exact(&mut buf[..end - before]).await?;
            head.truncate(end);
            return Ok(head);
        }
        stream.read_exact(&mut buf[..n]).await?;
        if head.len() > MAX_HEAD {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("no end of the answer's head within {MAX_HEAD} bytes"),
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn np(s: &str) -> NoProxy {
        NoProxy::parse(&[s.to_string()]).unwrap()
    }

    #[test]
    fn proxy_urls_parse_and_never_show_the_password() {
        let p = ProxyUrl::parse("http://al%40ice:s3cr%3At@proxy.corp:3128/")
            .unwrap()
            .unwrap();
        assert_eq!(p.host, "proxy.corp");
        assert_eq!(p.port, 3128);
        assert_eq!(p.auth, Some(("al@ice".into(), "s3cr:t".into())));
        assert_eq!(p.to_string(), "http://al@ice:***@proxy.corp:3128");
        let p = ProxyUrl::parse("10.0.0.1").unwrap().unwrap();
        assert_eq!((p.host.as_str(), p.port, p.auth.is_none()), ("10.0.0.1", 80, true));
        assert_eq!(ProxyUrl::parse("http://[::1]:8/").unwrap().unwrap().to_string(), "http://[::1]:8");
        assert_eq!(ProxyUrl::parse(" None ").unwrap(), None);
        for bad in ["https://u:hunter2@p:1", "socks5://p:1", "http://u:hunter2@p:1/x", "http://u:hunter2@:1"] {
            let e = ProxyUrl::parse(bad).unwrap_err();
            assert!(!e.contains("hunter2"), "{e}");
        }
    }

    #[test]
    fn redact_hides_only_the_password() {
        assert_eq!(redact("http://u:pw@h:1/x"), "http://u:***@h:1/x");
        assert_eq!(redact("http://h:1"), "http://h:1");
        assert_eq!(redact("h:1"), "h:1");
    }

    #[test]
    fn no_proxy_matches_as_go_does() {
        let n = np("example.com, .corp.net, *.lab, 10.0.0.0/8, 192.168.1.5, [2001:db8::1]:8443, api.io:443");
        assert!(n.bypasses("example.com", 1) && n.bypasses("a.example.com", 1));
        assert!(!n.bypasses("badexample.com", 1));
        assert!(n.bypasses("x.corp.net", 1) && !n.bypasses("corp.net", 1));
        assert!(n.bypasses("m.lab", 1) && !n.bypasses("lab", 1));
        assert!(n.bypasses("10.2.3.4", 1) && !n.bypasses("11.2.3.4", 1));
        assert!(n.bypasses("192.168.1.5", 9) && !n.bypasses("192.168.1.6", 9));
        assert!(n.bypasses("2001:db8::1", 8443) && !n.bypasses("2001:db8::1", 8444));
        assert!(n.bypasses("API.io", 443) && !n.bypasses("api.io", 8443));
        assert!(np("*").bypasses("anything", 1));
        let none = NoProxy::default();
        assert!(none.bypasses("localhost", 1) && none.bypasses("127.0.0.9", 1) && none.bypasses("::1", 1));
        assert!(!none.bypasses("det.corp", 1));
    }

    #[test]
    fn bad_no_proxy_entries_are_refused() {
        assert!(NoProxy::parse(&["10.0.0.0/33".into()]).is_err());
        assert!(NoProxy::parse(&["host:port".into()]).is_err());
        assert!(NoProxy::parse(&["a b".into()]).is_err());
    }

    #[test]
    fn the_connect_request_names_the_master_and_carries_basic_credentials() {
        let p = ProxyUrl::parse("http://ops:pa%3Ass@p:3128").unwrap().unwrap();
        let r = request(&p, &authority("det.corp", 8443));
        assert!(r.starts_with("CONNECT det.corp:8443 HTTP/1.1\r\nHost: det.corp:8443\r\n"), "{r}");
        assert!(r.contains("Proxy-Authorization: Basic b3BzOnBhOnNz\r\n"), "{r}");
        assert!(r.ends_with("\r\n\r\n"));
        assert_eq!(authority("::1", 1), "[::1]:1");
    }

    #[tokio::test]
    async fn the_answer_head_is_consumed_exactly() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut req = [0u8; 512];
            let _ = s.read(&mut req).await.unwrap();
            for part in [&b"HTTP/1.1 200 Connection established\r"[..], b"\nVia: x\r\n\r", b"\nMASTER"] {
                s.write_all(part).await.unwrap();
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        });
        let mut c = TcpStream::connect(addr).await.unwrap();
        let p = ProxyUrl::parse("http://127.0.0.1:1").unwrap().unwrap();
        open_tunnel(&mut c, &p, "det", 8443).await.unwrap();
        let mut rest = Vec::new();
        c.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest, b"MASTER");
        server.await.unwrap();
    }

    #[test]
    fn route_skips_the_proxy_for_bypassed_hosts() {
        let e = Egress {
            proxy: ProxyUrl::parse("http://p:3128").unwrap(),
            source: "HTTPS_PROXY".into(),
            no_proxy: np(".internal"),
        };
        assert!(e.route("det.internal", 8443).is_none());
        assert_eq!(e.route("det.example.com", 8443).map(|p| p.port), Some(3128));
    }
}
