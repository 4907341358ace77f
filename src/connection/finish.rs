//! `finish`: the one place a connection is accounted for, whether it relayed or was refused:
//! `connections_total{result}`, the bytes relayed, `upstream_errors_total{kind}`, and the
//! access line (a refused client's rate-limited per listener).
//!
//! The stages observe what happens while a connection lives (the dial and handshake
//! histograms, a resumed session, the peer counted as identified), so a long connection
//! shows them as they happen rather than at its end.

use std::sync::Arc;
use std::time::Duration;

use crate::connections::{Live, Session};
use crate::error_kind::UpstreamErrorKind;
use crate::identity::PeerIdentity;
use crate::listen::Peer;
use crate::outcome::Outcome;
use crate::state::{ListenerPolicy, Shared, State};
use crate::untrusted::escape;

/// A client of which nothing is known (not identified, or nothing found).
pub(super) static NOBODY: PeerIdentity = PeerIdentity {
    uid: None,
    gid: None,
    pid: None,
    cgroup: None,
    unit: None,
    container: None,
    note: None,
};

/// What the stages learn of a connection, for `finish`.
#[derive(Debug, Default)]
pub(super) struct Record {
    /// The master session as the stages fill it in, until the relay starts ...
    pub session: Session,
    /// ... then shared with the connection's `/connections` row.
    pub shown: Option<Arc<Session>>,
    pub up: u64,
    pub down: u64,
    /// Its row in `/connections`.
    pub live: Option<Arc<Live>>,
    /// Who the client is, when anything is known.
    pub peer: Option<Arc<PeerIdentity>>,
    /// Why the master was not reached or verified.
    pub upstream_error: Option<UpstreamErrorKind>,
}

impl Record {
    fn session(&self) -> &Session {
        self.shown.as_deref().unwrap_or(&self.session)
    }
}

/// Whose account `finish` writes: the client, under the state and listener policy it was
/// accepted with.
pub(super) struct Account<'a> {
    pub shared: &'a Shared,
    pub state: &'a State,
    pub policy: &'a ListenerPolicy,
    pub client: &'a Peer,
}

/// Accounts for a connection that ended with `outcome` after `took`.
pub(super) fn finish(a: Account<'_>, rec: &Record, took: Duration, outcome: Outcome) {
    let Account {
        shared,
        state,
        policy,
        client,
    } = a;
    // The connection's outcome last: a scrape that sees it counted sees its bytes and its
    // upstream error too.
    if let Some(kind) = rec.upstream_error {
        shared.metrics.upstream_error(kind);
    }
    let metrics = &policy.metrics;
    metrics.up.inc_by(rec.up);
    metrics.down.inc_by(rec.down);
    metrics.finished(outcome);
    if !shared.access_log_on() {
        return;
    }
    // Refused clients' lines are rate-limited: a flood of them stays a few lines and a summary.
    if outcome == Outcome::Denied && !shared.denied_log.admit(&policy.config.name, denied_summary) {
        return;
    }
    // The name sent as SNI is the state's: a TLS session carries it, plain TCP and
    // passthrough do not.
    let sni = match &state.tls {
        Some(tls) if !rec.session().tls_version.is_empty() => tls.name.sni_str(),
        _ => "",
    };
    access_line(&policy.config.name, client, rec, sni, took, outcome);
}

/// The line that stands for the denied clients' access lines a period did not write.
fn denied_summary(listener: &str, suppressed: u64) {
    tracing::info!(
        target: "access",
        listener = %listener,
        outcome = Outcome::Denied.label(),
        suppressed,
        period_s = crate::denied_log::PERIOD.as_secs(),
        "denied connections not logged"
    );
}

/// One access-log line.
fn access_line(
    listener: &str,
    client: &Peer,
    rec: &Record,
    sni: &str,
    took: Duration,
    outcome: Outcome,
) {
    let who: &PeerIdentity = rec.peer.as_deref().unwrap_or(&NOBODY);
    let container = who.container.as_ref();
    let s = rec.session();
    tracing::info!(
        target: "access",
        listener = %listener,
        client = %client,
        master = %s.master,
        sni = %sni,
        alpn = %s.alpn,
        tls_version = s.tls_version,
        resumed = s.resumed,
        preconnected = s.preconnected,
        bytes_up = rec.up,
        bytes_down = rec.down,
        duration_ms = took.as_millis() as u64,
        outcome = outcome.label(),
        peer_uid = who.uid,
        peer_gid = who.gid,
        peer_pid = who.pid,
        // Cgroup paths, unit and container names are chosen by whoever made them: escaped
        // first, then recorded as strings, which the text format quotes (a name with a space
        // cannot pass for another field) and JSON keeps as they are.
        peer_cgroup = escape(who.cgroup.as_deref().unwrap_or("")).as_str(),
        peer_unit = escape(who.unit.as_deref().unwrap_or("")).as_str(),
        peer_container = escape(container.map_or("", |c| c.label())).as_str(),
        task_id = container.and_then(|c| c.task_id.as_deref()).map(escape).as_deref(),
        allocation_id = container.and_then(|c| c.allocation_id.as_deref()).map(escape).as_deref(),
        task_type = container.and_then(|c| c.task_type.as_deref()).map(escape).as_deref(),
        "connection"
    );
}
