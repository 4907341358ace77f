//! `admin.*`: the admin endpoint's address and who may scrape it.

use super::Check;
use crate::config::raw::RawAdmin;
use crate::config::{needs_allowed_clients, AdminConfig, ListenAddr};

pub(super) fn admin(c: &mut Check, raw: &RawAdmin) -> Option<AdminConfig> {
    let a = raw
        .listen
        .as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty())?;
    let allowed = raw.allowed_clients.as_ref().map(|l| {
        let source = c.src("admin.allowed_clients");
        c.cidrs("admin.allowed_clients", l, &source)
    });
    let source = c.src("admin.listen");
    match ListenAddr::parse(a) {
        Ok(ListenAddr::Tcp(sa)) => {
            if needs_allowed_clients(sa, allowed.as_deref()) {
                c.fail(
                    "admin.allowed_clients",
                    format!("admin.listen {sa} is reachable from other hosts; list the networks that may scrape it"),
                    Some(source),
                );
            }
            Some(AdminConfig {
                listen: sa,
                allowed_clients: allowed,
            })
        }
        Ok(_) => {
            c.fail("admin.listen", "must be a TCP HOST:PORT", Some(source));
            None
        }
        Err(e) => {
            c.fail("admin.listen", e, Some(source));
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::config::validate::testing::{has, mistakes, valid};

    #[test]
    fn admin_off_by_default_loopback_without_a_list_elsewhere_with_one() {
        assert!(valid("master_host: det\n").admin.is_none());
        assert!(valid("master_host: det\nadmin: {listen: \"127.0.0.1:9090\"}\n").admin.is_some());
        let m = mistakes("master_host: det\nadmin: {listen: \"0.0.0.0:9090\"}\n");
        assert!(has(&m, "admin.allowed_clients", "reachable from other hosts"), "{m:?}");
        let m = mistakes("master_host: det\nadmin: {listen: \"unix:/run/a.sock\"}\n");
        assert!(has(&m, "admin.listen", "TCP HOST:PORT"), "{m:?}");
    }
}
