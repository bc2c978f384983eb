//! Writing a user disk back: seal the chunks the repository does not hold yet, upload
//! them, then commit the new sealed user-disk manifest by compare-and-swap on its version.
//!
//! Order matters for "nothing is dropped locally before the repository acknowledged it":
//! the overlay is flushed, the chunks are sealed and go up (only those the repository
//! lacks), the commit is sent, and only after the repository's 200 does cachefs rebase the
//! overlay onto the new chunk list and drop its blocks. A conflict (409: another terminal
//! committed first) or any failure leaves the overlay untouched, so the user's changes
//! stay on this terminal and the error says so.
//!
//! Sealing (docs/formats.md, "Sealed user data"): every non-zero chunk of the disk must
//! have a sealed copy on the repository. Those of the committed version are known from its
//! manifest ([`crate::sealed::SealedChunks`]); the others (changed chunks, and on the first
//! write-back of a disk its initial content, or a disk committed in the clear before
//! sealing) are read from the overlay, sealed, and uploaded in batches of at most
//! [`SEAL_BATCH_BYTES`], so memory stays bounded whatever the disk's size.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use appliance::wire::{
    user_disk_api_path, CommitUserDiskRequest, CommitUserDiskResponse, MissingChunksRequest,
    MissingChunksResponse, MAX_MISSING_IDS, MISSING_CHUNKS_PATH,
};
use appliance::{ChunkId, ChunkList, UserDiskManifest};
use cachefs::{ChunkSource, Overlay};

use crate::client::RepoClient;
use crate::disks::{open_user_disk, user_overlay_name};
use crate::error::{Error, Result};
use crate::login::Session;
use crate::sealed::SealedChunks;
use crate::store::{self, SavedUserDisk};

/// What a write-back did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WriteBackReport {
    /// Chunks the overlay changed.
    pub changed_chunks: usize,
    /// Distinct chunks sealed (changed ones, and unchanged ones with no sealed copy yet).
    pub sealed_chunks: usize,
    /// Of those, chunks uploaded (the repository lacked them).
    pub uploaded_chunks: usize,
    /// Bytes uploaded (sealed).
    pub uploaded_bytes: u64,
    /// The version now committed (unchanged if nothing changed).
    pub version: u64,
}

/// Ids asked about in one `chunks/missing` request: a quarter of the server's limit, so
/// that a disk with any number of changed chunks is written back, and the request and its
/// answer stay small.
pub const MISSING_BATCH: usize = MAX_MISSING_IDS / 4;
/// Plaintext bytes one worker seals, asks about and uploads as a group: big enough that
/// the `chunks/missing` question is one small request per MiB, small enough that memory
/// is a few MiB whatever the disk's size.
pub const SEAL_GROUP_BYTES: usize = 1 << 20;

/// Runs `call` until it succeeds, fails for good, or `attempts` are spent; waits between
/// attempts as [`crate::RepoConfig::retry_delay`] says (backoff with jitter, or what a
/// busy repository asked for).
fn with_retry<T>(client: &RepoClient, mut call: impl FnMut() -> Result<T>) -> Result<T> {
    let cfg = client.config();
    let mut attempt = 1;
    loop {
        match call() {
            Err(e) if e.is_unreachable() && attempt < cfg.attempts => {
                attempt += 1;
                let wait = cfg.retry_delay(attempt, &e);
                log::debug!("{e}; attempt {attempt} in {} ms", wait.as_millis());
                std::thread::sleep(wait);
            }
            r => return r,
        }
    }
}

/// Runs `one` on every item over `workers` threads; stops at the first failure and
/// returns it.
fn parallel<T: Sync>(
    workers: usize,
    items: &[T],
    one: impl Fn(&T) -> Result<()> + Sync,
) -> Result<()> {
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let first_error = Mutex::new(None);
    let workers = workers.clamp(1, 16).min(items.len().max(1));
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| {
                while !failed.load(Ordering::Relaxed) {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(item) = items.get(i) else { break };
                    if let Err(e) = one(item) {
                        failed.store(true, Ordering::Relaxed);
                        if let Ok(mut slot) = first_error.lock() {
                            slot.get_or_insert(e);
                        }
                    }
                }
            });
        }
    });
    match first_error.into_inner().ok().flatten() {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// A chunk to seal: its index in the disk and its plaintext id.
type ToSeal = (usize, ChunkId);

/// Reads, seals and uploads `items` (chunks of `overlay`) over the configured connections.
/// Each worker takes a group of chunks (about [`SEAL_GROUP_BYTES`]), seals them, asks the
/// repository which of their sealed ids it lacks, and uploads those: sealing on one worker
/// overlaps with the uploads of the others, and memory is one group per worker whatever
/// the disk's size. Every chunk sealed is recorded in `sealed` once it is on the
/// repository.
fn seal_and_upload(
    client: &RepoClient,
    overlay: &Overlay,
    sealed: &SealedChunks,
    items: &[ToSeal],
    report: &mut WriteBackReport,
) -> Result<()> {
    let per_group = (SEAL_GROUP_BYTES / overlay.view().chunk_size().max(1) as usize).clamp(1, 256);
    let groups: Vec<&[ToSeal]> = items.chunks(per_group).collect();
    let sealed_n = AtomicUsize::new(0);
    let uploaded = AtomicUsize::new(0);
    let bytes = AtomicU64::new(0);
    parallel(client.config().connections, &groups, |group| {
        let mut out = Vec::with_capacity(group.len());
        for (idx, plain_id) in group.iter() {
            let plain = overlay.read_chunk(*idx)?;
            if ChunkId::of(&plain) != *plain_id {
                return Err(Error::Config(format!(
                    "chunk {idx} of the user disk changed while it was written back; write it back again"
                )));
            }
            let (sid, data) = sealed.sealer().seal_chunk(plain_id, &plain)?;
            out.push((*plain_id, sid, data));
        }
        let body = serde_json::to_vec(&MissingChunksRequest {
            ids: out.iter().map(|(_, sid, _)| *sid).collect(),
        })
        .map_err(|e| Error::Config(e.to_string()))?;
        let missing: MissingChunksResponse = with_retry(client, || {
            client.api("POST", MISSING_CHUNKS_PATH, Some(body.clone()))
        })?;
        let missing: HashSet<ChunkId> = missing.missing.into_iter().collect();
        for (_, sid, data) in out.iter().filter(|(_, sid, _)| missing.contains(sid)) {
            with_retry(client, || client.put_chunk(sid, data))?;
            uploaded.fetch_add(1, Ordering::Relaxed);
            bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
        }
        for (p, sid, _) in &out {
            sealed.insert(*p, *sid);
        }
        sealed_n.fetch_add(out.len(), Ordering::Relaxed);
        Ok(())
    })?;
    report.sealed_chunks += sealed_n.load(Ordering::Relaxed);
    report.uploaded_chunks += uploaded.load(Ordering::Relaxed);
    report.uploaded_bytes += bytes.load(Ordering::Relaxed);
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

/// True if the committed version of the disk was written before sealing (format 1): it
/// must be written back sealed even if nothing changed.
fn committed_in_the_clear(session: &Session, appliance: &str, disk: &str) -> bool {
    session
        .record
        .user_disk(appliance, disk)
        .and_then(|d| d.manifest.as_ref())
        .is_some_and(|m| !m.is_sealed())
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
    let sealed = session.sealed.clone().ok_or_else(|| Error::DataKey {
        user: session.user.clone(),
        why: "this session has no data key, so nothing can be sealed; log in online".into(),
    })?;
    // Ids only: the data is read again chunk by chunk as it is sealed.
    let wb = overlay.prepare_write_back_ids()?;
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
    let upgrade = committed_in_the_clear(session, appliance, disk);
    if report.changed_chunks == 0 && !upgrade {
        log::info!("{appliance}/{disk}: nothing changed, nothing to write back");
        return Ok(report);
    }
    if upgrade {
        log::warn!(
            "{appliance}/{disk}: committed in the clear before sealing; sealing the whole disk now"
        );
    }
    // Every distinct non-zero chunk without a sealed copy yet, at its first index. Memory
    // here is per chunk of the disk (tens of bytes each), so what is not needed any more is
    // dropped at once: a disk of 66,000 chunks must write back within a bounded peak.
    let to_seal: Vec<ToSeal> = {
        let mut seen = HashSet::new();
        wb.chunks
            .chunks
            .iter()
            .enumerate()
            .filter_map(|(i, c)| c.map(|p| (i, p)))
            .filter(|(_, p)| sealed.sealed_id(p).is_none() && seen.insert(*p))
            .collect()
    };
    seal_and_upload(&client, overlay, &sealed, &to_seal, &mut report)?;
    drop(to_seal);

    let mut image = wb.chunks.clone();
    for c in image.chunks.iter_mut().flatten() {
        *c = sealed
            .sealed_id(c)
            .ok_or_else(|| Error::Config("a chunk was left unsealed".into()))?;
    }
    let mut manifest = UserDiskManifest {
        format: appliance::user::USER_DISK_FORMAT,
        user: session.user.clone(),
        appliance: appliance.into(),
        disk: disk.into(),
        version: expected + 1,
        image,
        sealed: None,
    };
    sealed.sealer().seal_manifest(&mut manifest, &wb.chunks)?;
    let request = CommitUserDiskRequest {
        expected_version: expected,
        manifest,
    };
    let body = serde_json::to_vec(&request).map_err(|e| Error::Config(e.to_string()))?;
    let manifest = request.manifest;
    let path = user_disk_api_path(appliance, disk);
    let mut tries = 0;
    let reply: CommitUserDiskResponse = loop {
        tries += 1;
        match client.api_raw("PUT", &path, &body) {
            Ok(b) => {
                break serde_json::from_slice(&b).map_err(|e| Error::Protocol {
                    what: "commit reply".into(),
                    why: e.to_string(),
                })?
            }
            Err(f) if f.status == 409 && f.api.as_ref().is_some_and(|a| a.code == "conflict") => {
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
                // Collected by a gc between the question and the commit: seal and upload
                // those again, then commit again.
                let missing: HashSet<ChunkId> = f
                    .api
                    .map(|a| a.missing)
                    .unwrap_or_default()
                    .into_iter()
                    .collect();
                let again: Vec<ToSeal> = manifest
                    .image
                    .chunks
                    .iter()
                    .zip(&wb.chunks.chunks)
                    .enumerate()
                    .filter_map(|(i, (s, p))| Some((i, (*s)?, (*p)?)))
                    .filter(|(_, s, _)| missing.contains(s))
                    .map(|(i, _, p)| (i, p))
                    .collect();
                seal_and_upload(&client, overlay, &sealed, &again, &mut report)?;
            }
            Err(f) if f.error.is_unreachable() && tries < client.config().attempts => {
                std::thread::sleep(client.config().retry_delay(tries + 1, &f.error));
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
    let plain = wb.chunks.clone();
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
            d.image = plain.clone();
        }
    }
    let saved = SavedUserDisk {
        appliance: appliance.into(),
        disk: disk.into(),
        version: reply.version,
        manifest: Some(manifest),
    };
    session
        .record
        .user_disks
        .retain(|d| !(d.appliance == appliance && d.disk == disk));
    session.record.user_disks.push(saved);
    let ids = plain.distinct_chunks();
    session.cache.pin(
        &crate::set::user_disk_pin(&session.user, appliance, disk),
        &ids,
    )?;
    store::save(&session.cache, &session.record)?;
    log::info!(
        "{appliance}/{disk}: committed version {} ({} chunk(s) changed, {} sealed, {} uploaded)",
        reply.version,
        report.changed_chunks,
        report.sealed_chunks,
        report.uploaded_chunks
    );
    Ok(report)
}

/// The plaintext content of a saved user-disk manifest (opened with the session's key;
/// a format-1 manifest is plaintext already). None if it cannot be opened.
fn plain_content(session: &Session, m: &UserDiskManifest) -> Option<ChunkList> {
    match &session.sealed {
        Some(s) => s.open_manifest(m).ok(),
        None if !m.is_sealed() => Some(m.image.clone()),
        None => None,
    }
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
            if let Some(plain) = plain_content(session, m) {
                candidates.push((m.version, plain));
            }
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
