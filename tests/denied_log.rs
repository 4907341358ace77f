//! Denied clients' access lines are rate-limited per listener: a flood of clients outside
//! `allowed_clients` writes a bounded number of lines, one summary line reports how many were
//! not written (`suppressed`), and `connections_total{result="denied"}` counts every one.

mod common;

use std::time::{Duration, Instant};

use common::proxy::is_access;
use common::*;
use serde_json::Value;

/// The README's figures: 10 lines per listener per 10 s.
const LINES_PER_PERIOD: usize = 10;
const PERIOD: Duration = Duration::from_secs(10);

fn is_summary(v: &Value) -> bool {
    v["message"] == "denied connections not logged"
}

#[test]
fn a_flood_of_denied_clients_writes_a_bounded_number_of_lines_and_reports_the_rest() {
    const FLOOD: usize = 200;
    let dir = tempdir();
    let master = Master::start(dir.path(), Behavior::Echo);
    let proxy = master
        .cfg()
        .listeners(&[r#"{name: main, listen: "127.0.0.1:0", allowed_clients: ["127.0.0.2/32"]}"#])
        .extra(r#"admin: {listen: "127.0.0.1:0"}"#)
        .start(dir.path());
    let addr = proxy.tcp_addr("main");
    let started = Instant::now();
    for _ in 0..FLOOD {
        let mut c = socket_from(Some("127.0.0.1"), addr).expect("connect");
        read_until_closed(&mut c, Duration::from_secs(2));
    }
    let flood_took = started.elapsed();
    let counted = || {
        metric(
            &scrape_text(&proxy.listener_addr("admin")),
            "det_tls_proxy_connections_total",
            &[("listener", "main"), ("result", "denied")],
        )
    };
    assert!(
        eventually(Duration::from_secs(5), || counted() == FLOOD as f64),
        "the metric counted {} of {FLOOD} denials",
        counted()
    );

    // Every denial is either written or reported in a summary, once the periods are over.
    let tally = || {
        let lines = proxy.json_lines();
        let written = lines
            .iter()
            .filter(|v| is_access(v) && v["outcome"] == "denied")
            .count();
        let summaries: Vec<&Value> = lines.iter().filter(|v| is_summary(v)).collect();
        let suppressed: u64 = summaries
            .iter()
            .filter_map(|v| v["suppressed"].as_u64())
            .sum();
        (written, summaries.len(), suppressed)
    };
    let whole = eventually(PERIOD + Duration::from_secs(10), || {
        let (written, _, suppressed) = tally();
        written + suppressed as usize == FLOOD
    });
    let (written, summaries, suppressed) = tally();
    assert!(
        whole,
        "{written} denied access lines + {suppressed} suppressed in {summaries} summaries != {FLOOD} denials"
    );
    // At most 10 lines per period the flood touched.
    let periods = (flood_took.as_secs_f64() / PERIOD.as_secs_f64()).ceil() as usize + 1;
    assert!(
        (1..=LINES_PER_PERIOD * periods).contains(&written),
        "{written} access lines for {FLOOD} denials in {flood_took:?}"
    );
    assert!(
        summaries >= 1 && summaries <= periods,
        "{summaries} summary lines"
    );
    let summary = proxy.find(is_summary).unwrap();
    assert_eq!(summary["listener"], "main", "{summary}");
    assert_eq!(summary["outcome"], "denied", "{summary}");
    let warns = proxy
        .json_lines()
        .iter()
        .filter(|v| v["message"] == "client not in allowed_clients: closed")
        .count();
    assert!(warns <= 2, "{warns} warnings for {FLOOD} denials");
    figure(format!(
        "denied flood: {FLOOD} denials in {flood_took:?}: {written} access lines, {suppressed} reported in {summaries} summary line(s), {warns} warning(s)"
    ));
}
