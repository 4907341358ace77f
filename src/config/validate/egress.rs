//! `upstream_proxy` and `upstream_no_proxy`: the HTTP proxy upstream connections are
//! tunnelled through, and the masters reached directly despite it.

use super::Check;
use crate::config::raw::RawConfig;
use crate::egress::{Egress, NoProxy, ProxyUrl};

pub(super) fn egress(c: &mut Check, raw: &RawConfig) -> Egress {
    let proxy = match raw.upstream_proxy.as_deref().map(ProxyUrl::parse) {
        None => None,
        Some(Ok(p)) => p,
        Some(Err(e)) => {
            let source = c.src("upstream_proxy");
            c.fail("upstream_proxy", e, Some(source));
            None
        }
    };
    let no_proxy = match NoProxy::parse(raw.upstream_no_proxy.as_deref().unwrap_or_default()) {
        Ok(n) => n,
        Err(e) => {
            let source = c.src("upstream_no_proxy");
            c.fail("upstream_no_proxy", e, Some(source));
            NoProxy::default()
        }
    };
    Egress {
        source: c.src("upstream_proxy"),
        proxy,
        no_proxy,
    }
}

#[cfg(test)]
mod tests {
    use crate::config::validate::testing::{has, mistakes, valid};

    #[test]
    fn a_proxy_url_and_its_exceptions_are_read() {
        let c = valid("master_host: det.corp\nupstream_proxy: \"http://u:pw@proxy:3128\"\nupstream_no_proxy: [.lab]\n");
        assert_eq!(c.egress.route("det.corp", 8443).map(|p| p.to_string()), Some("http://u:***@proxy:3128".into()));
        assert!(c.egress.route("x.lab", 8443).is_none());
        let off = valid("master_host: det\nupstream_proxy: none\n");
        assert!(off.egress.proxy.is_none());
    }

    #[test]
    fn a_bad_proxy_url_is_refused_without_its_password() {
        let m = mistakes("master_host: det\nupstream_proxy: \"socks5://u:hunter2@p:1\"\n");
        assert!(has(&m, "upstream_proxy", "only http://"), "{m:?}");
        assert!(!format!("{m:?}").contains("hunter2"));
        let m = mistakes("master_host: det\nupstream_no_proxy: [10.0.0.0/40]\n");
        assert!(has(&m, "upstream_no_proxy", "not a CIDR"), "{m:?}");
    }
}
