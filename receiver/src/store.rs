//! What a login leaves in the cache for the next one: the offline record.
//!
//! cachefs has no metadata store, but it has everything one needs: crash-safe
//! content-addressed chunks and named, durable pin sets whose id order is kept. The
//! record is serialized to JSON, cut into pieces, each piece inserted as a chunk, and the
//! piece ids pinned under `receiver/user/<name>`. Replacing the pin is one journal record,
//! so a power cut leaves either the old record or the new one, never a mix; old pieces
//! lose their pin and are evicted like any chunk. No file next to the cache device, no
//! change to cachefs's format.

use serde::{Deserialize, Serialize};

use appliance::{UserDiskManifest, WrappedKey};
use cachefs::Cache;

use crate::error::{Error, Result};

/// Version of [`OfflineRecord`]. 2 added `online_unix` and `last_login_unix` (offline
/// login expires, and the terminal keeps the most recent users); a format-1 record is
/// read as format 2 (see [`upgrade`]).
pub const RECORD_FORMAT: u32 = 2;
/// Piece size of a stored record.
const PIECE: usize = 4 << 20;
/// Prefix of the pin naming a user's record.
pub const USER_PIN_PREFIX: &str = "receiver/user/";

/// One appliance of the set as last seen online.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SavedAppliance {
    /// Appliance name.
    pub name: String,
    /// Version handed out at the last login.
    pub version: u64,
    /// The signed manifest, byte for byte (re-verified against the built-in keys when
    /// used offline: the cache is not trusted more than the network).
    pub signed_manifest: String,
    /// The version before, if its chunks are still pinned: what runs while `version`
    /// is not complete.
    #[serde(default)]
    pub previous: Option<(u64, String)>,
}

/// One user disk as last committed (or as written back from this terminal). Its manifest
/// is kept as the repository has it (sealed: its chunk list names sealed chunks; the
/// plaintext content is opened from it with the user's key).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SavedUserDisk {
    /// Appliance.
    pub appliance: String,
    /// Disk name.
    pub disk: String,
    /// Committed version (0: never committed, the appliance's initial content).
    pub version: u64,
    /// Content of that version (None for version 0).
    pub manifest: Option<UserDiskManifest>,
}

/// Everything offline login needs.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct OfflineRecord {
    /// [`RECORD_FORMAT`].
    pub format: u32,
    /// User name.
    pub user: String,
    /// argon2id verifier handed out by the repository at the last login (a fresh salt,
    /// not the repository's own verifier). Empty when `data_key` is there: the wrapped key
    /// is the offline check, and a second, cheaper target for guessing is not kept.
    #[serde(default)]
    pub verifier: String,
    /// The user's data key as the repository keeps it: opening it with the password is
    /// the offline login's check, and it opens the saved sealed user-disk manifests.
    #[serde(default)]
    pub data_key: Option<WrappedKey>,
    /// When it was saved, seconds since the epoch.
    pub saved_unix: u64,
    /// The user's last online login on this terminal, seconds since the epoch: offline
    /// login works for `RepoConfig::offline_days` after it.
    #[serde(default)]
    pub online_unix: u64,
    /// The user's last login of either kind on this terminal: which users a full terminal
    /// keeps for offline login (the most recent).
    #[serde(default)]
    pub last_login_unix: u64,
    /// The appliance set, in start order.
    pub appliances: Vec<SavedAppliance>,
    /// The user disks.
    pub user_disks: Vec<SavedUserDisk>,
}

impl OfflineRecord {
    /// The saved state of one user disk.
    pub fn user_disk(&self, appliance: &str, disk: &str) -> Option<&SavedUserDisk> {
        self.user_disks
            .iter()
            .find(|d| d.appliance == appliance && d.disk == disk)
    }
}

fn pin_name(user: &str) -> String {
    format!("{USER_PIN_PREFIX}{user}")
}

/// Stores `rec` durably (replacing the previous record of that user).
pub fn save(cache: &Cache, rec: &OfflineRecord) -> Result<()> {
    let json =
        serde_json::to_vec(rec).map_err(|e| Error::Config(format!("offline record: {e}")))?;
    let mut ids = Vec::new();
    for piece in json.chunks(PIECE) {
        ids.push(cache.insert_data(piece)?);
    }
    cache.pin(&pin_name(&rec.user), &ids)?;
    cache.sync()?;
    Ok(())
}

/// Loads the record of `user`, if one is stored and intact.
pub fn load(cache: &Cache, user: &str) -> Result<Option<OfflineRecord>> {
    let name = pin_name(user);
    let Some((_, ids)) = cache.pins().into_iter().find(|(n, _)| *n == name) else {
        return Ok(None);
    };
    let mut json = Vec::new();
    for id in &ids {
        match cache.read(id)? {
            Some(piece) => json.extend_from_slice(&piece),
            None => {
                log::warn!(
                    "offline record of {user} lost a piece ({id}); offline login is not possible"
                );
                return Ok(None);
            }
        }
    }
    match serde_json::from_slice::<OfflineRecord>(&json) {
        Ok(r) if r.format == RECORD_FORMAT && r.user == user => Ok(Some(r)),
        Ok(r) if r.format == 1 && r.user == user => Ok(Some(upgrade(r))),
        Ok(r) => {
            log::warn!(
                "offline record of {user} has format {} / user {}; ignored",
                r.format,
                r.user
            );
            Ok(None)
        }
        Err(e) => {
            log::warn!("offline record of {user} does not parse: {e}; ignored");
            Ok(None)
        }
    }
}

/// A format-1 record as format 2. Format 1 set `saved_unix` only at an online login (a
/// write-back or a release re-saved the record with the login's time), so it *is* the
/// last online login: the record keeps its true age. Counting it as expired would turn
/// every user away offline right after a firmware update; counting it as fresh from now
/// would give a record of any age another full period.
fn upgrade(mut r: OfflineRecord) -> OfflineRecord {
    r.format = RECORD_FORMAT;
    if r.online_unix == 0 {
        r.online_unix = r.saved_unix;
    }
    r.last_login_unix = r.last_login_unix.max(r.online_unix);
    r
}

/// Removes the record of `user` (its pieces lose their pin and are evicted like any
/// chunk): offline login of that user on this terminal is no longer possible.
pub fn remove(cache: &Cache, user: &str) -> Result<()> {
    cache.unpin(&pin_name(user))?;
    cache.sync()?;
    Ok(())
}

/// Users with a stored record.
pub fn users(cache: &Cache) -> Vec<String> {
    cache
        .pins()
        .into_iter()
        .filter_map(|(n, _)| n.strip_prefix(USER_PIN_PREFIX).map(str::to_owned))
        .collect()
}
