//! The end of a session: stop the fill, write the user disks back, release what the
//! update no longer needs, and drop everything else.
//!
//! Nothing local is dropped before the repository acknowledged it: a user disk whose
//! write-back fails (offline, a conflict with another terminal) keeps its overlay in the
//! cache and says so; the next online logout writes it back.

use crate::{Outcome, Screen};
use cachefs::Overlay;
use receiver::fill::FillHandle;
use receiver::Session;
use std::sync::Arc;
use std::time::Instant;
use support::size::human;

/// Logs out: the fill stops (what arrived is kept), user disks are written back.
pub fn finish(
    session: &mut Session,
    fill: Option<FillHandle>,
    user_disks: &[(String, String, Arc<Overlay>)],
    bridges: &[String],
    screen: &mut Screen,
    problem: Option<String>,
) -> Outcome {
    screen.line("");
    screen.line("Logging out ...");
    let mut complete = true;
    if let Some(fill) = fill {
        if !fill.is_finished() {
            fill.cancel();
        }
        match fill.wait() {
            Ok(p) => {
                complete = p.done_bytes >= p.total_bytes;
                log::info!(
                    "fill: {} of {} in the cache, {} fetched",
                    human(p.done_bytes),
                    human(p.total_bytes),
                    human(p.fetch.plain_bytes)
                );
            }
            Err(e) => {
                complete = false;
                log::warn!("fill: {e}");
            }
        }
    }
    for (app, disk, overlay) in user_disks {
        let started = Instant::now();
        screen.line(&format!("  {app}/{disk}: writing back ..."));
        match receiver::write_back(session, app, disk, overlay) {
            Ok(report) => screen.line(&format!(
                "  {app}/{disk}: saved as version {} ({} chunk(s) uploaded, {:.1} s)",
                report.version,
                report.uploaded_chunks,
                started.elapsed().as_secs_f64()
            )),
            Err(e) if e.is_unreachable() => screen.line(&format!(
                "  {app}/{disk}: the repository cannot be reached; your changes stay in this terminal's cache and are saved at your next online logout here"
            )),
            Err(e) => screen.line(&format!(
                "  {app}/{disk}: NOT saved to the repository: {e}; your changes stay in this terminal's cache"
            )),
        }
    }
    if complete && !session.is_offline() {
        match session.release_previous() {
            Ok(released) if !released.is_empty() => {
                log::info!("previous versions released: {}", released.join(", "))
            }
            Ok(_) => {}
            Err(e) => log::warn!("releasing previous versions: {e}"),
        }
    }
    // Only users whose data is all written back give up their place; this one counts as
    // the most recent.
    match session.keep_recent_offline_users() {
        Ok(gone) if !gone.is_empty() => log::info!(
            "offline records and user disks released (beyond the users kept): {}",
            gone.join(", ")
        ),
        Ok(_) => {}
        Err(e) => log::warn!("keeping the recent offline users: {e}"),
    }
    for b in bridges {
        if let Err(e) = crate::bridges::remove(b) {
            log::debug!("removing bridge {b}: {e}");
        }
    }
    if let Err(e) = session.cache.sync() {
        screen.line(&format!("  the cache could not be synced: {e}"));
    }
    session.logout();
    match problem {
        Some(p) => {
            screen.line(&format!("The session ended with a problem: {p}"));
            Outcome::LoggedOut
        }
        None => {
            screen.line("Logged out.");
            Outcome::LoggedOut
        }
    }
}
