//! The user's appliance set: manifests fetched and verified, user-disk states, and the
//! pins that keep what the set needs in the cache.
//!
//! Trust chain: the login reply names each manifest with its sha256; the manifest file
//! must hash to it, carry a valid signature by a built-in publisher key, and be the
//! appliance and version asked for. A manifest that fails any of these is refused and
//! reported; the rest of the set still runs.

use std::collections::HashSet;

use appliance::{ChunkId, ChunkList, DiskRole, Manifest, SignedManifest};
use cachefs::Cache;
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// Prefix of the pin of one appliance version's chunks: `app/<name>@<version>`.
pub const APP_PIN_PREFIX: &str = "app/";
/// Prefix of the pin of one user disk's committed content.
pub const USERDISK_PIN_PREFIX: &str = "userdisk/";

/// Pin name of an appliance version.
pub fn app_pin(name: &str, version: u64) -> String {
    format!("{APP_PIN_PREFIX}{name}@{version}")
}

/// Pin name of a user disk's committed content.
pub fn user_disk_pin(user: &str, appliance: &str, disk: &str) -> String {
    format!("{USERDISK_PIN_PREFIX}{user}/{appliance}/{disk}")
}

/// One user disk of an appliance, at the version this login starts from.
#[derive(Clone, Debug)]
pub struct UserDisk {
    /// Disk name within the appliance.
    pub disk: String,
    /// Committed version the session starts from (0: never committed).
    pub version: u64,
    /// Its content (the appliance's initial content for version 0).
    pub image: ChunkList,
}

/// A verified appliance of the set.
#[derive(Clone, Debug)]
pub struct Appliance {
    /// The newest version (verified).
    pub manifest: Manifest,
    /// The signed manifest's bytes (kept for offline login).
    pub signed_bytes: String,
    /// The previous version, verified, while its chunks are still pinned: run it if the
    /// new one is not complete yet (an update never makes an appliance unusable).
    pub previous: Option<(Manifest, String)>,
    /// The user disks, in the manifest's disk order.
    pub user_disks: Vec<UserDisk>,
}

impl Appliance {
    /// Kernel, initrd and disks, each user disk at this session's content of it.
    pub fn session_blobs(&self) -> Vec<&ChunkList> {
        self.manifest.blobs_with(|d| {
            self.user_disk(&d.name)
                .map(|u| &u.image)
                .unwrap_or(&d.image)
        })
    }

    /// Appliance name.
    pub fn name(&self) -> &str {
        &self.manifest.name
    }

    /// The content of user disk `disk`.
    pub fn user_disk(&self, disk: &str) -> Option<&UserDisk> {
        self.user_disks.iter().find(|d| d.disk == disk)
    }
}

/// An appliance that was refused, and why.
#[derive(Clone, Debug)]
pub struct Refused {
    /// Appliance name.
    pub name: String,
    /// Version refused.
    pub version: u64,
    /// Why (for the login screen).
    pub reason: String,
}

/// The verified set.
#[derive(Clone, Debug, Default)]
pub struct ApplianceSet {
    /// Verified appliances, in start order.
    pub appliances: Vec<Appliance>,
    /// Appliances refused (bad manifest, unreachable manifest).
    pub refused: Vec<Refused>,
    /// Appliances of the set with no published version.
    pub unavailable: Vec<String>,
}

impl ApplianceSet {
    /// The appliance called `name`.
    pub fn get(&self, name: &str) -> Option<&Appliance> {
        self.appliances.iter().find(|a| a.name() == name)
    }
}

/// Checks a signed manifest: file digest (if known), signature, name and version.
pub fn verify_manifest(
    bytes: &[u8],
    expected_sha256: Option<&str>,
    name: &str,
    version: u64,
    trusted: &[appliance::PublicKey],
) -> Result<Manifest> {
    let bad = |why: String| Error::BadManifest {
        appliance: name.into(),
        version,
        why,
    };
    if let Some(want) = expected_sha256 {
        let got = hex::encode(Sha256::digest(bytes));
        if !got.eq_ignore_ascii_case(want) {
            return Err(bad(format!("its sha256 is {got}, the login reply says {want} (altered in transit or on the server)")));
        }
    }
    let m = SignedManifest::verify_bytes(bytes, trusted).map_err(|e| bad(e.to_string()))?;
    if m.name != name || m.version != version {
        return Err(bad(format!(
            "it describes {} version {}",
            m.name, m.version
        )));
    }
    Ok(m)
}

/// The distinct chunk ids an appliance version needs (user disks at their session state).
pub fn needed_chunks(a: &Appliance) -> Vec<ChunkId> {
    appliance::manifest::distinct_chunks(a.session_blobs())
}

/// True if every chunk of `a` is in the cache.
pub fn is_complete(cache: &Cache, a: &Appliance) -> bool {
    needed_chunks(a).iter().all(|id| cache.contains(id))
}

/// The user disks of `m` at the states `lookup` gives (version, plaintext content of the
/// committed version).
pub fn user_disks_of(
    m: &Manifest,
    lookup: impl Fn(&str) -> (u64, Option<ChunkList>),
) -> Vec<UserDisk> {
    m.disks
        .iter()
        .filter(|d| d.role == DiskRole::User)
        .map(|d| {
            let (version, committed) = lookup(&d.name);
            UserDisk {
                disk: d.name.clone(),
                version,
                image: committed.unwrap_or_else(|| d.image.clone()),
            }
        })
        .collect()
}

/// Pins what the set needs and unpins appliance versions it no longer needs (they stay
/// cached until evicted). The previous version of an updated appliance stays pinned
/// until [`release_previous`].
pub fn pin_set(cache: &Cache, user: &str, set: &ApplianceSet) -> Result<()> {
    let mut keep = HashSet::new();
    for a in &set.appliances {
        let ids = a.manifest.all_chunks();
        let name = app_pin(a.name(), a.manifest.version);
        cache.pin(&name, &ids)?;
        keep.insert(name);
        if let Some((prev, _)) = &a.previous {
            keep.insert(app_pin(&prev.name, prev.version));
        }
        for d in &a.user_disks {
            let ids = d.image.distinct_chunks();
            cache.pin(&user_disk_pin(user, a.name(), &d.disk), &ids)?;
        }
    }
    // A refused appliance keeps whatever version it had: the user may still need it.
    let refused: HashSet<&str> = set.refused.iter().map(|r| r.name.as_str()).collect();
    for (name, _) in cache.pins() {
        if let Some(rest) = name.strip_prefix(APP_PIN_PREFIX) {
            let app = rest.rsplit_once('@').map(|(a, _)| a).unwrap_or(rest);
            if !keep.contains(&name) && !refused.contains(app) {
                log::info!("unpinning {name}: no longer in the appliance set");
                cache.unpin(&name)?;
            }
        }
    }
    cache.sync()?;
    Ok(())
}

/// Once an updated appliance is complete, its previous version is no longer needed:
/// unpins it and forgets it. Returns the names of appliances whose previous version was
/// released.
pub fn release_previous(cache: &Cache, set: &mut ApplianceSet) -> Result<Vec<String>> {
    let mut released = Vec::new();
    for a in &mut set.appliances {
        if a.previous.is_some() && is_complete(cache, a) {
            if let Some((prev, _)) = a.previous.take() {
                cache.unpin(&app_pin(&prev.name, prev.version))?;
                log::info!(
                    "{} version {} is complete; version {} unpinned",
                    a.name(),
                    a.manifest.version,
                    prev.version
                );
                released.push(a.name().to_owned());
            }
        }
    }
    if !released.is_empty() {
        cache.sync()?;
    }
    Ok(released)
}
