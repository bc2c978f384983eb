//! Human-readable progress lines (the CLI prints them; init may reuse them). Byte counts
//! are [`support::size::human`]'s.

use std::time::Duration;
use support::size::human;

use crate::fill::Progress;

/// `1:02:03` or `2:03`.
pub fn duration(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 3600 {
        format!("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
    } else {
        format!("{}:{:02}", s / 60, s % 60)
    }
}

fn pct(done: u64, total: u64) -> u64 {
    (done * 100).checked_div(total).unwrap_or(100)
}

/// One line per appliance and a total line.
pub fn lines(p: &Progress) -> Vec<String> {
    let mut out = Vec::new();
    for a in &p.appliances {
        let state = if a.complete() {
            "complete"
        } else if a.boot_ready() {
            "boot ready"
        } else {
            "fetching boot chunks"
        };
        out.push(format!(
            "  {} v{}: {} / {} ({}%), {state}",
            a.name,
            a.version,
            human(a.done_bytes),
            human(a.total_bytes),
            pct(a.done_bytes, a.total_bytes)
        ));
    }
    let eta = p.eta.map(duration).unwrap_or_else(|| "?".into());
    let mut total = format!(
        "total {} / {} ({}%), {}/s, {} left, {} on the wire",
        human(p.done_bytes),
        human(p.total_bytes),
        pct(p.done_bytes, p.total_bytes),
        human(p.rate as u64),
        eta,
        human(p.fetch.wire_bytes)
    );
    if p.fetch.corrupt > 0 || p.fetch.retries > 0 {
        total.push_str(&format!(
            ", {} corrupt chunk(s) refetched, {} retries",
            p.fetch.corrupt, p.fetch.retries
        ));
    }
    out.push(total);
    out
}
