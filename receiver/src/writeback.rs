//! Writing a user disk back: upload the chunks the overlay changed, then commit the new
//! user-disk manifest by compare-and-swap on its version.
//!
//! Order matters for "nothing is dropped locally before the repository acknowledged it":
//! the overlay is flushed, the changed chunks go up (only those the repository lacks),
//! the commit is sent, and only after the repository's 200 does cachefs rebase the
//! overlay onto the new chunk list and drop its blocks. A conflict (409: another terminal
//! committed first) or any failure leaves the overlay untouched, so the user's changes
//! stay on this terminal and the error says so.
//!
//! Not encrypted: see docs/receiver.md ("User data") for why.

use std::collections::HashSet;

use appliance::wire::{
    user_disk_api_path, CommitUserDiskRequest, CommitUserDiskResponse, MissingChunksRequest,
    MissingChunksResponse, MISSING_CHUNKS_PATH,
};
use appliance::{ChunkId, UserDiskManifest};
use cachefs::Overlay;

use std::sync::Arc;

use appliance::ChunkList;
use cachefs::ChunkSource;

use crate::disks::{open_user_disk, user_overlay_name};
use crate::error::{Error, Result};
use crate::login::Session;
use crate::store::{self, SavedUserDisk};

/// What a write-back did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WriteBackReport {
    /// Chunks the overlay changed.
    pub changed_chunks: usize,
    /// Of those, chunks uploaded (the repository lacked them).
    pub uploaded_chunks: usize,
    /// Bytes uploaded (stored encoding).
    pub uploaded_bytes: u64,
    /// The version now committed (unchanged if nothing changed).
    pub version: u64,
}

fn upload(
    session: &Session,
    ids: &[ChunkId],
    data: &std::collections::HashMap<ChunkId, &Vec<u8>>,
    report: &mut WriteBackReport,
) -> Result<()> {
    let client = session
        .client
        .as_ref()
        .ok_or_else(|| offline_error(session))?;
    let cfg = client.config();
    for id in ids {
        let Some(plain) = data.get(id) else { continue };
        let encoded = appliance::encode_chunk(plain);
        let mut attempt = 1;
        loop {
            match client.put_chunk(id, &encoded) {
                Ok(()) => break,
                Err(e) if e.is_unreachable() && attempt < cfg.attempts => {
                    attempt += 1;
                    std::thread::sleep(cfg.backoff_for(attempt));
                }
                Err(e) => return Err(e),
            }
        }
        report.uploaded_chunks += 1;
        report.uploaded_bytes += encoded.len() as u64;
    }
    Ok(())
}

fn offline_error(session: &Session) -> Error {
    Error::Unreachable { url: String::from("(offline session)"), why: format!("{} is logged in offline; the user disk stays on this terminal and is written back at the next online logout", session.user) }
}

/// Writes user disk `disk` of `appliance` back from `overlay` (opened with
/// [`crate::disks::open_user_disk`] over the session's content of that disk).
pub fn write_back(
    session: &mut Session,
    appliance: &str,
    disk: &str,
    overlay: &Overlay,
) -> Result<WriteBackReport> {
    write_back_inner(session, appliance, disk, overlay, true)
}

/// Test hook: everything up to and including the repository's acknowledgement, then
/// stops as if the power went (no `finish_write_back`, no record update).
#[doc(hidden)]
pub fn write_back_crash_after_commit(
    session: &mut Session,
    appliance: &str,
    disk: &str,
    overlay: &Overlay,
) -> Result<WriteBackReport> {
    write_back_inner(session, appliance, disk, overlay, false)
}

fn write_back_inner(
    session: &mut Session,
    appliance: &str,
    disk: &str,
    overlay: &Overlay,
    finish: bool,
) -> Result<WriteBackReport> {
    let expected = session
        .set
        .get(appliance)
        .and_then(|a| a.user_disk(disk))
        .map(|d| d.version)
        .ok_or_else(|| {
            Error::Config(format!(
                "{appliance}/{disk} is not a user disk of this session"
            ))
        })?;
    let client = session
        .client
        .clone()
        .ok_or_else(|| offline_error(session))?;
    let wb = overlay.prepare_write_back()?;
    let base = overlay.view().chunk_list();
    let mut report = WriteBackReport {
        // Chunks written to all zeros count too: they change the list, not the upload.
        changed_chunks: base
            .chunks
            .iter()
            .zip(&wb.chunks.chunks)
            .filter(|(old, new)| old != new)
            .count(),
        version: expected,
        ..Default::default()
    };
    if report.changed_chunks == 0 {
        log::info!("{appliance}/{disk}: nothing changed, nothing to write back");
        return Ok(report);
    }
    let data: std::collections::HashMap<ChunkId, &Vec<u8>> =
        wb.changed.iter().map(|(_, id, d)| (*id, d)).collect();
    let mut ids: Vec<ChunkId> = data
        .keys()
        .copied()
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    ids.sort();
    let missing: MissingChunksResponse = client.api(
        "POST",
        MISSING_CHUNKS_PATH,
        Some(
            serde_json::to_vec(&MissingChunksRequest { ids: ids.clone() })
                .map_err(|e| Error::Config(e.to_string()))?,
        ),
    )?;
    upload(session, &missing.missing, &data, &mut report)?;

    let image = wb.chunks.clone();
    let manifest = UserDiskManifest {
        format: appliance::user::USER_DISK_FORMAT,
        user: session.user.clone(),
        appliance: appliance.into(),
        disk: disk.into(),
        version: expected + 1,
        image,
    };
    let body = serde_json::to_vec(&CommitUserDiskRequest {
        expected_version: expected,
        manifest: manifest.clone(),
    })
    .map_err(|e| Error::Config(e.to_string()))?;
    let path = user_disk_api_path(appliance, disk);
    let mut tries = 0;
    let reply: CommitUserDiskResponse = loop {
        tries += 1;
        match client.api_raw("PUT", &path, body.clone()) {
            Ok(b) => {
                break serde_json::from_slice(&b).map_err(|e| Error::Protocol {
                    what: "commit reply".into(),
                    why: e.to_string(),
                })?
            }
            Err(f) if f.status == 409 => {
                let current = f.api.and_then(|a| a.current_version).unwrap_or(0);
                log::error!("{appliance}/{disk}: conflict (repository at {current}, started from {expected}); local changes kept");
                return Err(Error::Conflict {
                    appliance: appliance.into(),
                    disk: disk.into(),
                    expected,
                    current,
                });
            }
            Err(f)
                if f.status == 400
                    && tries < 3
                    && f.api.as_ref().is_some_and(|a| a.code == "missing_chunks") =>
            {
                // Collected by a gc between the question and the commit: upload and retry.
                let missing = f.api.map(|a| a.missing).unwrap_or_default();
                upload(session, &missing, &data, &mut report)?;
            }
            Err(f) if f.error.is_unreachable() && tries < client.config().attempts => {
                std::thread::sleep(client.config().backoff_for(tries + 1));
            }
            Err(f) => return Err(f.error),
        }
    };
    if reply.version != expected + 1 {
        return Err(Error::Protocol {
            what: "commit reply".into(),
            why: format!(
                "version {} where {} was committed",
                reply.version,
                expected + 1
            ),
        });
    }
    if !finish {
        return Ok(report);
    }
    // Acknowledged: now the overlay may drop what the repository holds.
    overlay.finish_write_back(wb)?;
    report.version = reply.version;
    if let Some(a) = session
        .set
        .appliances
        .iter_mut()
        .find(|a| a.name() == appliance)
    {
        if let Some(d) = a.user_disks.iter_mut().find(|d| d.disk == disk) {
            d.version = reply.version;
            d.image = manifest.image.clone();
        }
    }
    let saved = SavedUserDisk {
        appliance: appliance.into(),
        disk: disk.into(),
        version: reply.version,
        manifest: Some(manifest.clone()),
    };
    session
        .record
        .user_disks
        .retain(|d| !(d.appliance == appliance && d.disk == disk));
    session.record.user_disks.push(saved);
    let ids = manifest.image.distinct_chunks();
    session.cache.pin(
        &crate::set::user_disk_pin(&session.user, appliance, disk),
        &ids,
    )?;
    store::save(&session.cache, &session.record)?;
    log::info!(
        "{appliance}/{disk}: committed version {} ({} chunk(s) changed, {} uploaded)",
        reply.version,
        report.changed_chunks,
        report.uploaded_chunks
    );
    Ok(report)
}

/// Opens the persistent overlay of a user disk over the session's content of it, and
/// repairs the one state a power cut can leave behind: the repository acknowledged a
/// write-back but the terminal died before cachefs rebased the overlay. The overlay then
/// still names the previous content as its base. If its content equals what the
/// repository now holds, the rebase is finished now; if it differs (changes made here on
/// an older version while another terminal committed), it is `Error::Conflict` and the
/// local data stays untouched.
pub fn open_session_user_disk(
    session: &Session,
    appliance: &str,
    disk: &str,
    source: Arc<dyn ChunkSource>,
) -> Result<Overlay> {
    let a = session.set.get(appliance).ok_or_else(|| {
        Error::Config(format!("{appliance} is not in the session's appliance set"))
    })?;
    let ud = a
        .user_disk(disk)
        .ok_or_else(|| Error::Config(format!("{appliance} has no user disk {disk}")))?;
    let name = user_overlay_name(&session.user, appliance, disk);
    let cache = &session.cache;
    let Some(base) = cache.overlay_base_digest(&name) else {
        return open_user_disk(cache, &session.user, appliance, disk, &ud.image, source);
    };
    if base == ud.image.digest() {
        return open_user_disk(cache, &session.user, appliance, disk, &ud.image, source);
    }
    // Which content was it made on? The previous record's, or the appliance's initial one.
    let initial = a
        .manifest
        .disks
        .iter()
        .find(|d| d.name == disk)
        .map(|d| d.image.clone());
    let mut candidates: Vec<(u64, ChunkList)> = Vec::new();
    for rec in [session.previous_record.as_ref(), Some(&session.record)]
        .into_iter()
        .flatten()
    {
        if let Some(m) = rec
            .user_disk(appliance, disk)
            .and_then(|d| d.manifest.as_ref())
        {
            candidates.push((m.version, m.image.clone()));
        }
    }
    candidates.extend(initial.map(|b| (0, b)));
    let Some((old_version, old)) = candidates.into_iter().find(|(_, b)| b.digest() == base) else {
        return Err(Error::Config(format!(
            "the local overlay of {appliance}/{disk} was made on a content this terminal no longer knows; it is kept in the cache (overlay {name})"
        )));
    };
    let overlay = open_user_disk(cache, &session.user, appliance, disk, &old, source.clone())?;
    if overlay.changed_chunks().is_empty() {
        // Nothing local: another terminal moved the disk on, and this one simply follows.
        log::info!(
            "{appliance}/{disk}: moving from version {old_version} to version {}",
            ud.version
        );
        drop(overlay);
        Overlay::delete_user(cache, &name)?;
        return open_user_disk(cache, &session.user, appliance, disk, &ud.image, source);
    }
    let wb = overlay.prepare_write_back()?;
    if wb.chunks == ud.image {
        log::warn!("{appliance}/{disk}: finishing a write-back interrupted after the repository acknowledged version {}", ud.version);
        overlay.finish_write_back(wb)?;
        drop(overlay);
        return open_user_disk(cache, &session.user, appliance, disk, &ud.image, source);
    }
    Err(Error::Conflict {
        appliance: appliance.into(),
        disk: disk.into(),
        expected: old_version,
        current: ud.version,
    })
}
