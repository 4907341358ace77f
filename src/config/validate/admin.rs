//! `admin.*`: the admin endpoint's address and who may scrape it.

use super::Check;
use crate::config::raw::RawAdmin;
use crate::config::{AdminConfig, ListenAddr};

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
            if !sa.ip().is_loopback() && allowed.as_ref().is_none_or(|l| l.is_empty()) {
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
