//! How long, and for whom, a terminal keeps what offline login needs.
//!
//! An offline record holds the user's wrapped data key: whoever knows the password it was
//! wrapped with can open it, even after the repository changed the password or removed
//! the user. Three rules bound that:
//!
//! - **Expiry.** Offline login works for `RepoConfig::offline_days` after the user's last
//!   online login on this terminal ([`expires_unix`]); 0 turns it off.
//! - **Revocation at the next online contact.** When the repository refuses a password
//!   that still opens this terminal's record, the password was changed or the user removed
//!   since: the record goes ([`revoke`]). A password that does not open the record is a
//!   typing error (or someone else's guess) and leaves it alone, so nobody can delete a
//!   colleague's offline record by typing their name with a wrong password.
//! - **A few users only.** Once a user's disks are written back, their record and user-disk
//!   pins are only a convenience for offline login: a terminal keeps them for the
//!   `RepoConfig::offline_users` most recently logged-in users ([`keep_recent_users`]),
//!   so pins of everyone who ever logged in no longer fill the cache. A user with changes
//!   not yet written back keeps everything: the overlay needs its base chunks.

use std::collections::HashSet;

use cachefs::Cache;

use crate::error::Result;
use crate::set::USERDISK_PIN_PREFIX;
use crate::store::{self, OfflineRecord};

/// Seconds in a day.
const DAY: u64 = 86_400;

/// When offline login from `rec` stops working (seconds since the epoch), or None when
/// `days` is 0 (offline login turned off).
pub fn expires_unix(rec: &OfflineRecord, days: u32) -> Option<u64> {
    (days > 0).then(|| rec.online_unix.saturating_add(u64::from(days) * DAY))
}

/// The UTC date of `unix` (`2026-12-21`), for messages.
pub fn date(unix: u64) -> String {
    i64::try_from(unix)
        .ok()
        .and_then(|s| jiff::Timestamp::from_second(s).ok())
        .map(|t| t.strftime("%Y-%m-%d").to_string())
        .unwrap_or_else(|| format!("{unix} s after 1970"))
}

/// True if a persistent overlay of `user` holds changes not yet written back.
pub fn has_unsaved_changes(cache: &Cache, user: &str) -> bool {
    users_with_unsaved_changes(cache).contains(user)
}

/// Users with a persistent overlay holding changes not yet written back (one pass over
/// the cache's statistics, which walks its whole index).
fn users_with_unsaved_changes(cache: &Cache) -> HashSet<String> {
    let prefix = crate::disks::user_overlay_name("", "", "");
    let prefix = prefix.trim_end_matches('/');
    cache
        .stats()
        .overlays
        .into_iter()
        .filter(|(_, blocks)| *blocks > 0)
        .filter_map(|(name, _)| {
            let rest = name.strip_prefix(prefix)?.strip_prefix('/')?;
            rest.split('/').next().map(str::to_owned)
        })
        .collect()
}

/// `name` is `prefix` followed by `/` and more.
fn under(name: &str, prefix: &str) -> bool {
    name.strip_prefix(prefix)
        .is_some_and(|rest| rest.starts_with('/'))
}

/// Removes the offline record of `user` and, unless the user has changes not yet written
/// back, the pins of their user disks. Returns true if the user disks were released too.
/// Their emptied overlays stay (metadata only: a name and a base digest; deleting one
/// still open in this session is not safe).
pub fn revoke(cache: &Cache, user: &str) -> Result<bool> {
    revoke_as(cache, user, has_unsaved_changes(cache, user))
}

/// [`revoke`], told whether the user has changes not yet written back.
fn revoke_as(cache: &Cache, user: &str, unsaved: bool) -> Result<bool> {
    store::remove(cache, user)?;
    if unsaved {
        log::warn!(
            "offline record of {user} removed; their user disks stay pinned: changes on them are not written back yet"
        );
        return Ok(false);
    }
    let disk_prefix = format!("{USERDISK_PIN_PREFIX}{user}");
    for (name, _) in cache.pins() {
        if under(&name, &disk_prefix) {
            cache.unpin(&name)?;
        }
    }
    cache.sync()?;
    log::info!("offline record and user disks of {user} released");
    Ok(true)
}

/// Keeps the offline records and user disks of the `keep` most recently logged-in users
/// and revokes the others' (never a user with changes not yet written back). Returns the
/// users whose records went.
pub fn keep_recent_users(cache: &Cache, keep: usize) -> Result<Vec<String>> {
    let mut users: Vec<(u64, String)> = Vec::new();
    for user in store::users(cache) {
        // A record that cannot be read counts as the oldest.
        let last = store::load(cache, &user)?
            .map(|r| r.last_login_unix)
            .unwrap_or(0);
        users.push((last, user));
    }
    users.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
    let unsaved = users_with_unsaved_changes(cache);
    let mut gone = Vec::new();
    for (_, user) in users.into_iter().skip(keep) {
        if unsaved.contains(&user) {
            log::info!(
                "{user} is beyond the offline users kept but has changes not written back; kept"
            );
            continue;
        }
        revoke_as(cache, &user, false)?;
        gone.push(user);
    }
    Ok(gone)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_utc_days() {
        assert_eq!(date(0), "1970-01-01");
        assert_eq!(date(1_797_811_200), "2026-12-21");
        assert_eq!(date(1_797_811_200 + DAY - 1), "2026-12-21");
        // Out of jiff's range: still a message, never a panic.
        assert!(date(u64::MAX).contains("after 1970"));
    }

    #[test]
    fn prefixes_match_whole_names_only() {
        assert!(under("userdisk/alice/desk/user", "userdisk/alice"));
        assert!(!under("userdisk/alice2/desk/user", "userdisk/alice"));
        assert!(!under("userdisk/alice", "userdisk/alice"));
    }
}
