//! The chunk store: index, allocation, eviction, pins, and the commit
//! protocol that makes metadata changes durable.
//!
//! Write ordering (the crash-consistency argument, see docs/cachefs.md):
//! 1. chunk data and overlay blocks are written to blocks no durable record
//!    references as live overlay data;
//! 2. `sync` flushes the device, *then* appends the records that reference
//!    that data to the journal and flushes again;
//! 3. overlay blocks that a commit stops referencing are freed only after the
//!    commit is durable; chunk blocks may be reused at once, because a stale
//!    chunk record pointing at reused blocks fails its crc/sha256 check and
//!    is treated as missing (chunks can always be refetched);
//! 4. when the journal is full, the whole state goes to the inactive
//!    checkpoint slot, is flushed, and only then does the other superblock
//!    (with a higher sequence number) switch to it.

use crate::alloc::Allocator;
use crate::codec::crc32;
use crate::error::{Error, Result};
use crate::format::{
    self, Checkpoint, Geometry, Loc, OverlayMeta, Record, SbSlot, Superblock, BLOCK, JOURNAL_HDR,
    MAX_CHUNK,
};
use crate::storage::Storage;
use chunk::frames;
use chunk::ChunkId;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// Options for [`Cache::create`].
#[derive(Clone, Debug, Default)]
pub struct CreateOptions {
    /// Format even if the device holds something (another cachefs, or data).
    pub force: bool,
}

/// Options for [`Cache::open`].
#[derive(Clone, Debug)]
pub struct OpenOptions {
    /// Try lz4 on inserted chunks (kept only where it saves a block). Off
    /// trades disk space for fill CPU on slow machines with large disks.
    pub compress: bool,
    /// Commit automatically once this many metadata bytes are pending.
    pub auto_commit_bytes: usize,
}

impl Default for OpenOptions {
    fn default() -> Self {
        OpenOptions {
            compress: true,
            auto_commit_bytes: 256 << 10,
        }
    }
}

pub(crate) struct Entry {
    pub loc: Loc,
    last_use: AtomicU64,
    /// Set once this chunk has been read back and hashed to its id in this
    /// process: later reads of an uncompressed chunk may then read just the
    /// bytes they need (first-read-per-boot verification).
    verified: AtomicBool,
    /// Frame table of a compressed chunk, kept once verified (one pread per
    /// small read afterwards).
    frames: std::sync::OnceLock<Vec<u32>>,
}

impl Entry {
    fn new(loc: Loc, last_use: u64) -> Entry {
        Entry {
            loc,
            last_use: AtomicU64::new(last_use),
            verified: AtomicBool::new(false),
            frames: std::sync::OnceLock::new(),
        }
    }
}

pub(crate) struct State {
    pub index: HashMap<ChunkId, Entry>,
    pub alloc: Allocator,
    pub pins: BTreeMap<String, Vec<ChunkId>>,
    pin_count: HashMap<ChunkId, u32>,
    /// Persistent overlays as of their last flush.
    pub overlays: BTreeMap<String, OverlayMeta>,
    pending: Vec<Record>,
    pending_bytes: usize,
    /// Blocks to free once the pending records are durable.
    pending_free: Vec<(u32, u32)>,
    /// Ids of all-zero chunks seen (and common sizes): stored as nothing.
    zero_ids: HashMap<ChunkId, u32>,
    pin_bytes: usize,
}

struct CommitState {
    sb: Superblock,
    journal_pos: u64,
    next_seq: u64,
}

/// Bytes a chunk takes in a checkpoint (id + location).
const CKPT_ENTRY: usize = 32 + 17;

/// What recovery found when the cache was opened.
#[derive(Clone, Debug, Default)]
pub struct RecoveryReport {
    pub superblock_seq: u64,
    /// The newest superblock's checkpoint was damaged; an older one was used.
    pub used_older_superblock: bool,
    /// Superblock slots that hold neither a valid superblock nor zeros.
    pub damaged_superblocks: Vec<String>,
    pub journal_commits_replayed: u64,
    /// Chunk records dropped because their location was invalid or overlapping.
    pub dropped_chunks: u64,
    /// Overlay blocks dropped because their location was invalid.
    pub dropped_overlay_blocks: u64,
}

/// What [`Cache::verify_all`] found: (chunks checked, damaged chunk ids,
/// damaged overlay blocks as (overlay, disk block)).
pub type VerifyReport = (usize, Vec<ChunkId>, Vec<(String, u64)>);

/// Usage figures for `inspect`.
#[derive(Clone, Debug, Default)]
pub struct Stats {
    pub device_size: u64,
    pub arena_bytes: u64,
    pub used_bytes: u64,
    pub chunks: u64,
    pub compressed_chunks: u64,
    pub stored_bytes: u64,
    pub plain_bytes: u64,
    pub pinned_chunks_present: u64,
    pub pins: Vec<(String, usize, usize)>,
    pub overlays: Vec<(String, usize)>,
    pub uuid: String,
    pub superblock_seq: u64,
}

/// A content-addressed chunk cache on one [`Storage`]. `Sync`: share it in an
/// `Arc` between the filler and any number of readers.
pub struct Cache {
    storage: Box<dyn Storage>,
    geo: Geometry,
    uuid: [u8; 16],
    state: RwLock<State>,
    commit: Mutex<CommitState>,
    tick: AtomicU64,
    opts: OpenOptions,
    report: RecoveryReport,
    /// Names of user overlays open now: two handles on one overlay would
    /// keep two different block maps and corrupt each other.
    open_overlays: Mutex<HashSet<String>>,
}

/// How an inserted chunk came: what is left to decide about compressing it.
#[derive(Clone, Copy)]
enum Arrived<'a> {
    /// Plaintext only: compressed here where that pays.
    Plaintext,
    /// Its 4 KiB frames: repacked, never compressed again.
    Frames(&'a [u8]),
    /// Stored raw by its publisher, which found it incompressible.
    Incompressible,
}

/// Which frames the cache keeps compressed: those lz4 shrinks to half or less. A frame
/// that compresses less saves little space and is the slow kind to decode (many short
/// literals and matches: 3 to 4 µs per 4 KiB on /usr data, against under 1 µs for a frame
/// that shrinks to a fifth), and every guest read of it pays that. Measured with
/// `cargo bench -p cachefs` (docs/cachefs.md): keeping every saving frame put random
/// 4 KiB reads at 0.41 to 0.45 of `pread`.
pub fn worth_decoding(stored: usize, plain: usize) -> bool {
    stored * 2 <= plain
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Cache {
    /// Formats `storage` as an empty cache. Refuses a device that holds
    /// anything (a cachefs or other data in its first 64 KiB) unless `force`.
    pub fn create(storage: Box<dyn Storage>, copts: CreateOptions) -> Result<Cache> {
        Self::create_with(storage, copts, OpenOptions::default())
    }

    pub fn create_with(
        storage: Box<dyn Storage>,
        copts: CreateOptions,
        opts: OpenOptions,
    ) -> Result<Cache> {
        let size = storage.len();
        let geo = Geometry::for_size(size)?;
        if !copts.force {
            let mut head = vec![0u8; (64 * 1024).min(size as usize)];
            storage.read_at(0, &mut head)?;
            if head.iter().any(|&b| b != 0) {
                return Err(Error::DeviceNotEmpty);
            }
        }
        let mut uuid = [0u8; 16];
        getrandom::getrandom(&mut uuid)
            .map_err(|e| Error::Io(std::io::Error::other(e.to_string())))?;
        // Kill old superblocks and the start of the journal first, so nothing
        // of a previous cache on this device can outrank the new one.
        let zero = vec![0u8; (2 * BLOCK) as usize];
        storage.write_at(0, &zero)?;
        storage.write_at(geo.journal_off, &zero[..BLOCK as usize])?;
        storage.flush()?;
        let ckpt = Checkpoint::default().encode();
        storage.write_at(geo.ckpt_off[0], &ckpt)?;
        storage.flush()?;
        let sb = Superblock {
            uuid,
            seq: 1,
            geometry: geo,
            ckpt_slot: 0,
            ckpt_len_used: ckpt.len() as u64,
            ckpt_crc: crc32(&[&ckpt]),
            journal_seq: 1,
        };
        storage.write_at(sb_off(sb.seq), &sb.encode())?;
        storage.flush()?;
        log::info!(
            "formatted cachefs: {} bytes, {} arena blocks",
            size,
            geo.arena_blocks
        );
        Self::open_with(storage, opts)
    }

    /// Opens an existing cache and recovers from any crash: newest valid
    /// superblock, its checkpoint, then every intact journal commit after it.
    pub fn open(storage: Box<dyn Storage>) -> Result<Cache> {
        Self::open_with(storage, OpenOptions::default())
    }

    pub fn open_with(storage: Box<dyn Storage>, opts: OpenOptions) -> Result<Cache> {
        let mut candidates = Vec::new();
        let mut unsupported = None;
        let mut damaged: Vec<String> = Vec::new();
        for slot in 0..2u64 {
            let mut b = vec![0u8; BLOCK as usize];
            if storage.read_at(slot * BLOCK, &mut b).is_err() {
                continue;
            }
            match Superblock::decode(&b) {
                SbSlot::Valid(sb) if sb.geometry.device_size <= storage.len() => {
                    candidates.push(sb)
                }
                SbSlot::Valid(_) => {
                    damaged.push(format!("slot {slot}: device smaller than recorded size"))
                }
                SbSlot::Foreign => {}
                SbSlot::Unsupported(v) => unsupported = Some(v),
                SbSlot::Damaged(m) => damaged.push(format!("slot {slot}: {m}")),
            }
        }
        candidates.sort_by_key(|sb| std::cmp::Reverse(sb.seq));
        if candidates.is_empty() {
            if let Some(v) = unsupported {
                return Err(Error::UnsupportedVersion(v, format::FORMAT_VERSION));
            }
            if !damaged.is_empty() {
                return Err(Error::Corrupt(format!(
                    "no valid superblock: {}",
                    damaged.join("; ")
                )));
            }
            return Err(Error::NotCacheFs);
        }
        let mut last_err = None;
        for (i, sb) in candidates.iter().enumerate() {
            match read_checkpoint(&*storage, sb) {
                Ok(ckpt) => {
                    if i > 0 {
                        log::error!(
                            "newest superblock's checkpoint is damaged; fell back to an older one (recent changes may be lost)"
                        );
                    }
                    let report = RecoveryReport {
                        used_older_superblock: i > 0,
                        damaged_superblocks: damaged.clone(),
                        ..Default::default()
                    };
                    return Self::recover(storage, sb.clone(), ckpt, opts, report);
                }
                Err(e) => {
                    log::warn!("superblock seq {}: {e}", sb.seq);
                    last_err = Some(e);
                }
            }
        }
        Err(last_err.unwrap_or(Error::NotCacheFs))
    }

    fn recover(
        storage: Box<dyn Storage>,
        sb: Superblock,
        ckpt: Checkpoint,
        opts: OpenOptions,
        mut report: RecoveryReport,
    ) -> Result<Cache> {
        let geo = sb.geometry;
        let mut st = State {
            index: HashMap::new(),
            alloc: Allocator::new(geo.arena_blocks as u32),
            pins: BTreeMap::new(),
            pin_count: HashMap::new(),
            overlays: BTreeMap::new(),
            pending: Vec::new(),
            pending_bytes: 0,
            pending_free: Vec::new(),
            zero_ids: HashMap::new(),
            pin_bytes: 0,
        };
        let tick = AtomicU64::new(1);
        for (id, loc) in ckpt.chunks {
            st.apply(Record::Put(id, loc), &tick);
        }
        for (name, ids) in ckpt.pins {
            st.apply(Record::Pin(name, ids), &tick);
        }
        for (name, o) in ckpt.overlays {
            st.overlays.insert(name, o);
        }
        // Replay the journal: consecutive commits with the expected sequence
        // number and a valid crc; the first that is not ends the journal.
        let mut pos = 0u64;
        let mut seq = sb.journal_seq;
        let mut commits = 0;
        while pos + BLOCK <= geo.journal_len {
            let mut hdr = vec![0u8; BLOCK as usize];
            if storage.read_at(geo.journal_off + pos, &mut hdr).is_err() {
                break;
            }
            let Some((s, plen, crc)) = format::decode_commit_header(&hdr) else {
                break;
            };
            let total = (JOURNAL_HDR as u64 + plen as u64).div_ceil(BLOCK) * BLOCK;
            if s != seq || pos + total > geo.journal_len {
                break;
            }
            let mut body = vec![0u8; total as usize];
            if storage.read_at(geo.journal_off + pos, &mut body).is_err() {
                break;
            }
            let payload = &body[JOURNAL_HDR..JOURNAL_HDR + plen as usize];
            if !format::commit_crc_ok(&sb.uuid, &body, payload, crc) {
                break;
            }
            match format::decode_records(payload) {
                Ok(recs) => {
                    for r in recs {
                        st.apply(r, &tick);
                    }
                }
                Err(e) => {
                    log::error!("journal commit {s} has a valid crc but does not decode: {e}");
                    break;
                }
            }
            pos += total;
            seq = seq.wrapping_add(1);
            commits += 1;
        }
        // Rebuild free space from what is referenced. Overlay blocks (user
        // data) claim their blocks first; a chunk whose blocks are invalid or
        // already claimed is dropped: it can be refetched.
        let mut dropped = Vec::new();
        for (name, o) in st.overlays.iter_mut() {
            let mut bad = Vec::new();
            let disk_blocks = o.disk_size.div_ceil(BLOCK);
            for (db, (ab, _)) in o.blocks.iter() {
                if *db < disk_blocks && st.alloc.range_free(*ab, 1) {
                    st.alloc.mark_used(*ab, 1);
                } else {
                    bad.push(*db);
                }
            }
            report.dropped_overlay_blocks += bad.len() as u64;
            for db in bad {
                log::error!("overlay {name}: block {db} has an invalid location; dropped");
                o.blocks.remove(&db);
            }
        }
        let mut by_age: Vec<(u64, ChunkId)> = st
            .index
            .iter()
            .map(|(id, e)| (e.last_use.load(Ordering::Relaxed), *id))
            .collect();
        by_age.sort();
        for (_, id) in by_age {
            let Some(loc) = st.index.get(&id).map(|e| e.loc) else {
                continue;
            };
            if st.alloc.range_free(loc.block, loc.nblocks()) {
                st.alloc.mark_used(loc.block, loc.nblocks());
            } else {
                dropped.push(id);
            }
        }
        report.dropped_chunks = dropped.len() as u64;
        report.journal_commits_replayed = commits;
        report.superblock_seq = sb.seq;
        for id in dropped {
            log::warn!("chunk {id}: location invalid or overlapping; dropped");
            st.index.remove(&id);
            st.push(Record::Del(id));
        }
        st.zero_ids = common_zero_ids().clone();
        log::info!(
            "opened cachefs: {} chunks, {} pins, {} overlays, {} journal commits replayed",
            st.index.len(),
            st.pins.len(),
            st.overlays.len(),
            commits
        );
        Ok(Cache {
            storage,
            geo,
            uuid: sb.uuid,
            state: RwLock::new(st),
            commit: Mutex::new(CommitState {
                sb,
                journal_pos: pos,
                next_seq: seq,
            }),
            tick,
            opts,
            report,
            open_overlays: Mutex::new(HashSet::new()),
        })
    }

    pub(crate) fn read_state(&self) -> RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }
    pub(crate) fn write_state(&self) -> RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|e| e.into_inner())
    }
    pub(crate) fn storage(&self) -> &dyn Storage {
        &*self.storage
    }
    pub(crate) fn geometry(&self) -> &Geometry {
        &self.geo
    }
    /// Claims the user overlay `name` for one open handle.
    pub(crate) fn claim_overlay(&self, name: &str) -> Result<()> {
        if lock(&self.open_overlays).insert(name.to_string()) {
            Ok(())
        } else {
            Err(Error::Invalid(format!("overlay {name} is already open")))
        }
    }

    pub(crate) fn release_overlay(&self, name: &str) {
        lock(&self.open_overlays).remove(name);
    }

    /// What recovery found at open.
    pub fn recovery_report(&self) -> &RecoveryReport {
        &self.report
    }

    pub fn uuid(&self) -> [u8; 16] {
        self.uuid
    }

    fn now(&self) -> u64 {
        self.tick.fetch_add(1, Ordering::Relaxed)
    }

    /// Stores a chunk whose plaintext the caller has already verified against
    /// `id`. Compressed with lz4 if that saves at least one block; all-zero
    /// chunks are stored as nothing. Durable after the next [`Cache::sync`].
    pub fn insert(&self, id: &ChunkId, data: &[u8]) -> Result<()> {
        self.insert_with_frames(id, data, Arrived::Plaintext)
    }

    /// [`Cache::insert`] for a chunk the repository stored raw (encoding 0): its publisher
    /// found it does not compress, so it is stored as it is without trying again.
    pub fn insert_raw(&self, id: &ChunkId, data: &[u8]) -> Result<()> {
        self.insert_with_frames(id, data, Arrived::Incompressible)
    }

    /// [`Cache::insert`] for a chunk that arrived in 4 KiB frames (the repository's
    /// encoding 2, [`chunk::frames`]): the frames are stored as they are, so the fill does
    /// not compress what the publisher already compressed. `frames` must be the record of
    /// `data` (the caller decoded it to verify `data`); a table that does not fit, or
    /// frames that save no block, store `data` raw instead.
    pub fn insert_framed(&self, id: &ChunkId, data: &[u8], frames: &[u8]) -> Result<()> {
        self.insert_with_frames(id, data, Arrived::Frames(frames))
    }

    fn insert_with_frames(&self, id: &ChunkId, data: &[u8], arrived: Arrived<'_>) -> Result<()> {
        if data.is_empty() || data.len() > MAX_CHUNK as usize {
            return Err(Error::Invalid(format!(
                "chunk length {} out of range",
                data.len()
            )));
        }
        if data.iter().all(|&b| b == 0) {
            // Zero chunks are served without reading anything back, so this
            // is the one place the id is checked: a wrong one would poison reads.
            let known = self.read_state().zero_ids.get(id) == Some(&(data.len() as u32));
            if !known {
                if ChunkId::of(data) != *id {
                    return Err(Error::HashMismatch(*id));
                }
                self.write_state().zero_ids.insert(*id, data.len() as u32);
            }
            return Ok(());
        }
        if self.touch(id) {
            return Ok(());
        }
        let mut compressed = match arrived {
            _ if !self.opts.compress => None,
            Arrived::Frames(f) => frames::repack(f, data, worth_decoding),
            Arrived::Incompressible => None,
            Arrived::Plaintext => frames::compress_keeping(data, worth_decoding),
        };
        let (stored, is_compressed): (&[u8], bool) = match &compressed {
            Some(c) => (c, true),
            None => (data, false),
        };
        let loc0 = Loc {
            block: 0,
            stored_len: stored.len() as u32,
            raw_len: data.len() as u32,
            compressed: is_compressed,
            crc: crc32(&[stored]),
        };
        if let Some(c) = &mut compressed {
            c.resize(loc0.nblocks() as usize * BLOCK as usize, 0);
        }
        let record: &[u8] = compressed.as_deref().unwrap_or(data);
        let block = self.alloc_blocks(loc0.nblocks(), true)?;
        let loc = Loc { block, ..loc0 };
        if let Err(e) = self.write_blocks(block, record) {
            self.write_state().alloc.release(block, loc.nblocks());
            return Err(e);
        }
        let should_commit = {
            let mut st = self.write_state();
            if st.index.contains_key(id) {
                // Another thread stored it meanwhile.
                st.alloc.release(block, loc.nblocks());
                return Ok(());
            }
            st.index.insert(*id, Entry::new(loc, self.now()));
            st.push(Record::Put(*id, loc));
            st.pending_bytes >= self.opts.auto_commit_bytes
        };
        if should_commit {
            self.sync()?;
        }
        Ok(())
    }

    /// Hashes `data` and inserts it; returns its id.
    pub fn insert_data(&self, data: &[u8]) -> Result<ChunkId> {
        let id = ChunkId::of(data);
        self.insert(&id, data)?;
        Ok(id)
    }

    /// Writes `data` (padded to whole blocks) at arena block `block`.
    pub(crate) fn write_blocks(&self, block: u32, data: &[u8]) -> Result<()> {
        let off = self.geo.block_off(block);
        let full = data.len() / BLOCK as usize * BLOCK as usize;
        if full == data.len() {
            self.storage.write_at(off, data)?;
        } else {
            // One write: the tail padded with zeros to a whole block.
            let mut v = Vec::with_capacity(full + BLOCK as usize);
            v.extend_from_slice(data);
            v.resize(full + BLOCK as usize, 0);
            self.storage.write_at(off, &v)?;
        }
        Ok(())
    }

    /// Room in a checkpoint slot for the index and overlay maps: 3/4 of it
    /// (pins get the rest). Binds only on caches larger than 64 GiB, where
    /// the slot stops growing, or with very small chunks.
    fn index_budget(&self) -> usize {
        (self.geo.ckpt_len as usize).saturating_sub(4096) / 4 * 3
    }

    /// Bytes for pins: what the index and overlays may not use.
    fn pin_budget(&self) -> usize {
        (self.geo.ckpt_len as usize).saturating_sub(4096) / 4
    }

    /// True if one more chunk entry would not fit the checkpoint.
    fn index_full(&self, st: &State) -> bool {
        let ov: usize = st.overlays.values().map(|o| 64 + o.blocks.len() * 16).sum();
        (st.index.len() + 1) * CKPT_ENTRY + ov > self.index_budget()
    }

    /// Allocates `n` contiguous arena blocks, evicting least-recently-used
    /// unpinned chunks if the arena (or, with `new_entry`, the index's room
    /// in the checkpoint) is full.
    pub(crate) fn alloc_blocks(&self, n: u32, new_entry: bool) -> Result<u32> {
        let mut st = self.write_state();
        let fits = |c: &Cache, st: &State| !(new_entry && c.index_full(st));
        if fits(self, &st) {
            if let Some(b) = st.alloc.alloc(n) {
                return Ok(b);
            }
        }
        // Evict a batch: at least 1/64 of the arena, so that a full cache
        // does not sort the index on every insert.
        let batch = (st.alloc.nblocks() as u64 / 64).max(n as u64);
        let mut victims: Vec<(u64, ChunkId, u32)> = st
            .index
            .iter()
            .filter(|(id, _)| !st.pin_count.contains_key(id))
            .map(|(id, e)| (e.last_use.load(Ordering::Relaxed), *id, e.loc.nblocks()))
            .collect();
        victims.sort_unstable();
        let mut freed = 0u64;
        for (_, id, nb) in victims {
            if let Some(e) = st.index.remove(&id) {
                st.alloc.release(e.loc.block, e.loc.nblocks());
                st.push(Record::Del(id));
                log::debug!("evicted {id}");
            }
            freed += nb as u64;
            if freed >= batch && fits(self, &st) {
                if let Some(b) = st.alloc.alloc(n) {
                    return Ok(b);
                }
            }
        }
        if fits(self, &st) {
            if let Some(b) = st.alloc.alloc(n) {
                return Ok(b);
            }
        }
        Err(Error::Full {
            needed: n as u64 * BLOCK,
        })
    }

    /// Marks a chunk used now (LRU); true if present.
    fn touch(&self, id: &ChunkId) -> bool {
        let st = self.read_state();
        match st.index.get(id) {
            Some(e) => {
                e.last_use.store(self.now(), Ordering::Relaxed);
                true
            }
            None => st.zero_ids.contains_key(id),
        }
    }

    /// True if the chunk is present (or is a known zero chunk).
    pub fn contains(&self, id: &ChunkId) -> bool {
        let st = self.read_state();
        st.index.contains_key(id) || st.zero_ids.contains_key(id)
    }

    /// Reads a whole chunk. Returns data that hashes to `id`, or `None` if the
    /// chunk is absent or its record is torn or rotted (then it is dropped).
    pub fn read(&self, id: &ChunkId) -> Result<Option<Vec<u8>>> {
        let (loc, stored) = {
            let st = self.read_state();
            if let Some(n) = st.zero_ids.get(id) {
                return Ok(Some(vec![0; *n as usize]));
            }
            let Some(e) = st.index.get(id) else {
                return Ok(None);
            };
            e.last_use.store(self.now(), Ordering::Relaxed);
            let loc = e.loc;
            let mut buf = vec![0u8; loc.nblocks() as usize * BLOCK as usize];
            self.storage
                .read_at(self.geo.block_off(loc.block), &mut buf)?;
            buf.truncate(loc.stored_len as usize);
            (loc, buf)
        };
        match decode_chunk(id, &loc, stored) {
            Ok((data, table)) => {
                if let Some(e) = self.read_state().index.get(id) {
                    if e.loc == loc {
                        if let Some(t) = table {
                            let _ = e.frames.set(t);
                        }
                        e.verified.store(true, Ordering::Relaxed);
                    }
                }
                Ok(Some(data))
            }
            Err(why) => {
                log::warn!("chunk {id} damaged ({why}); dropping it");
                self.drop_damaged(id, &loc);
                Ok(None)
            }
        }
    }

    fn drop_damaged(&self, id: &ChunkId, loc: &Loc) {
        let mut st = self.write_state();
        if st.index.get(id).map(|e| e.loc) == Some(*loc) {
            st.index.remove(id);
            st.alloc.release(loc.block, loc.nblocks());
            st.push(Record::Del(*id));
        }
    }

    /// Reads `buf.len()` bytes at `off` within a chunk. `Ok(false)` if the
    /// chunk is missing or damaged. Verified uncompressed chunks are read in
    /// place; compressed ones go through the RAM cache of decompressed chunks.
    pub fn read_range(&self, id: &ChunkId, off: usize, buf: &mut [u8]) -> Result<bool> {
        {
            let st = self.read_state();
            // The index first: a view never asks for zero chunks, so that is the common case.
            let Some(e) = st.index.get(id) else {
                let Some(n) = st.zero_ids.get(id) else {
                    return Ok(false);
                };
                if off + buf.len() > *n as usize {
                    return Err(Error::Invalid("read beyond chunk end".into()));
                }
                buf.fill(0);
                return Ok(true);
            };
            e.last_use.store(self.now(), Ordering::Relaxed);
            if off + buf.len() > e.loc.raw_len as usize {
                return Err(Error::Invalid("read beyond chunk end".into()));
            }
            // Verified in this process: read only what is needed. Under the
            // read lock, so eviction cannot reuse these blocks meanwhile.
            if e.verified.load(Ordering::Relaxed) {
                let rec = self.geo.block_off(e.loc.block);
                if !e.loc.compressed {
                    self.storage.read_at(rec + off as u64, buf)?;
                    return Ok(true);
                }
                if let Some(ends) = e.frames.get() {
                    let r = frames::read_range(ends, e.loc.raw_len as usize, off, buf, |o, b| {
                        self.storage.read_at(rec + o as u64, b)
                    });
                    match r {
                        Ok(()) => return Ok(true),
                        // Rotted since verification: fall through to the full check.
                        Err(why) => log::warn!("chunk {id}: {why}; re-verifying"),
                    }
                }
            }
        }
        match self.read(id)? {
            None => Ok(false),
            Some(d) => {
                if off + buf.len() > d.len() {
                    return Err(Error::Invalid("read beyond chunk end".into()));
                }
                buf.copy_from_slice(&d[off..off + buf.len()]);
                Ok(true)
            }
        }
    }

    /// Removes a chunk (no-op if absent).
    pub fn remove(&self, id: &ChunkId) -> Result<()> {
        let mut st = self.write_state();
        if let Some(e) = st.index.remove(id) {
            st.alloc.release(e.loc.block, e.loc.nblocks());
            st.push(Record::Del(*id));
        }
        Ok(())
    }

    /// Pins a named set of chunks (replacing any set of that name): pinned
    /// chunks are never evicted. Durable after the next [`Cache::sync`].
    pub fn pin(&self, name: &str, ids: &[ChunkId]) -> Result<()> {
        if name.is_empty() || name.len() > 255 {
            return Err(Error::Invalid("pin name must be 1..=255 bytes".into()));
        }
        let mut st = self.write_state();
        let bytes = 6 + name.len() + 32 * ids.len();
        let old = st
            .pins
            .get(name)
            .map(|v| 6 + name.len() + 32 * v.len())
            .unwrap_or(0);
        let budget = self.pin_budget();
        if st.pin_bytes - old + bytes > budget {
            return Err(Error::MetadataFull(format!(
                "pin set {name} ({} chunks) does not fit the metadata area ({budget} bytes for pins)",
                ids.len()
            )));
        }
        st.apply(Record::Pin(name.to_string(), ids.to_vec()), &self.tick);
        st.push(Record::Pin(name.to_string(), ids.to_vec()));
        Ok(())
    }

    pub fn unpin(&self, name: &str) -> Result<()> {
        let mut st = self.write_state();
        if st.pins.contains_key(name) {
            st.apply(Record::Unpin(name.to_string()), &self.tick);
            st.push(Record::Unpin(name.to_string()));
        }
        Ok(())
    }

    pub fn pins(&self) -> Vec<(String, Vec<ChunkId>)> {
        self.read_state()
            .pins
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// The base chunk-list digest ([`crate::list_digest`]) the persistent
    /// overlay `name` applies to, if it exists: tells a caller which chunk
    /// list to open it with after a crash during write-back.
    pub fn overlay_base_digest(&self, name: &str) -> Option<[u8; 32]> {
        self.read_state().overlays.get(name).map(|o| o.base_digest)
    }

    /// Every chunk present, least recently used first.
    pub fn chunk_ids(&self) -> Vec<ChunkId> {
        let st = self.read_state();
        let mut v: Vec<(u64, ChunkId)> = st
            .index
            .iter()
            .map(|(id, e)| (e.last_use.load(Ordering::Relaxed), *id))
            .collect();
        v.sort();
        v.into_iter().map(|(_, id)| id).collect()
    }

    /// Makes every change made before this call durable: flush data, then
    /// append the records that reference it to the journal and flush again
    /// (or write a checkpoint when the journal is full).
    pub fn sync(&self) -> Result<()> {
        let mut cs = lock(&self.commit);
        enum Work {
            Nothing,
            Journal(Vec<u8>),
            Checkpoint(Vec<u8>),
        }
        let (work, recs, frees) = {
            let mut st = self.write_state();
            let recs = std::mem::take(&mut st.pending);
            st.pending_bytes = 0;
            let frees = std::mem::take(&mut st.pending_free);
            let work = if recs.is_empty() {
                Work::Nothing
            } else {
                let payload = format::encode_records(&recs);
                let commit = format::encode_commit(&self.uuid, cs.next_seq, &payload);
                if cs.journal_pos + commit.len() as u64 <= self.geo.journal_len {
                    Work::Journal(commit)
                } else {
                    Work::Checkpoint(st.checkpoint(cs.next_seq).encode())
                }
            };
            (work, recs, frees)
        };
        let res = (|| -> Result<()> {
            // Data first: nothing may reference blocks that are not durable.
            self.storage.flush()?;
            match &work {
                Work::Nothing => {}
                Work::Journal(commit) => {
                    self.storage
                        .write_at(self.geo.journal_off + cs.journal_pos, commit)?;
                    self.storage.flush()?;
                    cs.journal_pos += commit.len() as u64;
                    cs.next_seq = cs.next_seq.wrapping_add(1);
                }
                Work::Checkpoint(blob) => self.write_checkpoint(&mut cs, blob)?,
            }
            Ok(())
        })();
        let mut st = self.write_state();
        match res {
            Ok(()) => {
                for (b, n) in frees {
                    st.alloc.release(b, n);
                }
                Ok(())
            }
            Err(e) => {
                // Unknown whether it reached the disk: keep the records for a
                // retry (replaying them twice is harmless) and keep the blocks.
                let mut again = recs;
                again.append(&mut st.pending);
                st.pending = again;
                st.pending_free.extend(frees);
                log::error!("cachefs commit failed: {e}");
                Err(e)
            }
        }
    }

    fn write_checkpoint(&self, cs: &mut CommitState, blob: &[u8]) -> Result<()> {
        if blob.len() as u64 > self.geo.ckpt_len {
            return Err(Error::MetadataFull(format!(
                "checkpoint of {} bytes exceeds its {} byte slot",
                blob.len(),
                self.geo.ckpt_len
            )));
        }
        let slot = 1 - cs.sb.ckpt_slot;
        self.storage
            .write_at(self.geo.ckpt_off[slot as usize], blob)?;
        self.storage.flush()?;
        let sb = Superblock {
            seq: cs.sb.seq.wrapping_add(1),
            ckpt_slot: slot,
            ckpt_len_used: blob.len() as u64,
            ckpt_crc: crc32(&[blob]),
            journal_seq: cs.next_seq,
            ..cs.sb.clone()
        };
        self.storage.write_at(sb_off(sb.seq), &sb.encode())?;
        self.storage.flush()?;
        log::debug!("checkpoint {} written ({} bytes)", sb.seq, blob.len());
        cs.sb = sb;
        cs.journal_pos = 0;
        Ok(())
    }

    /// Writes a checkpoint now (clean shutdown: the next open replays nothing).
    pub fn checkpoint(&self) -> Result<()> {
        self.sync()?;
        let mut cs = lock(&self.commit);
        let blob = self.write_state().checkpoint(cs.next_seq).encode();
        self.storage.flush()?;
        self.write_checkpoint(&mut cs, &blob)
    }

    pub fn stats(&self) -> Stats {
        // Lock order everywhere: overlay, then commit, then state.
        let sb_seq = lock(&self.commit).sb.seq;
        let st = self.read_state();
        let mut s = Stats {
            device_size: self.geo.device_size,
            arena_bytes: self.geo.arena_blocks * BLOCK,
            used_bytes: (st.alloc.nblocks() as u64 - st.alloc.free_blocks()) * BLOCK,
            chunks: st.index.len() as u64,
            uuid: self.uuid.iter().map(|b| format!("{b:02x}")).collect(),
            superblock_seq: sb_seq,
            ..Default::default()
        };
        for (id, e) in &st.index {
            s.compressed_chunks += e.loc.compressed as u64;
            s.stored_bytes += e.loc.stored_len as u64;
            s.plain_bytes += e.loc.raw_len as u64;
            s.pinned_chunks_present += st.pin_count.contains_key(id) as u64;
        }
        for (name, ids) in &st.pins {
            let present = ids
                .iter()
                .filter(|i| st.index.contains_key(i) || st.zero_ids.contains_key(i))
                .count();
            s.pins.push((name.clone(), ids.len(), present));
        }
        for (name, o) in &st.overlays {
            s.overlays.push((name.clone(), o.blocks.len()));
        }
        s
    }

    /// Reads back every chunk record and every persistent overlay block and
    /// checks them. Returns (chunks checked, damaged chunk ids, damaged
    /// overlay blocks as (overlay, disk block)). Damaged chunks are dropped
    /// from the in-memory index as a side effect of reading them; call
    /// [`Cache::sync`] to make that repair durable.
    pub fn verify_all(&self) -> Result<VerifyReport> {
        let ids: Vec<ChunkId> = self.read_state().index.keys().copied().collect();
        let mut bad = Vec::new();
        for id in &ids {
            if self.read(id)?.is_none() {
                bad.push(*id);
            }
        }
        let mut bad_ov = Vec::new();
        let ovs: Vec<(String, OverlayMeta)> = self
            .read_state()
            .overlays
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let mut buf = vec![0u8; BLOCK as usize];
        for (name, o) in ovs {
            for (db, (ab, crc)) in o.blocks {
                self.storage.read_at(self.geo.block_off(ab), &mut buf)?;
                if crc32(&[&buf]) != crc {
                    bad_ov.push((name.clone(), db));
                }
            }
        }
        Ok((ids.len(), bad, bad_ov))
    }
}

/// Ids of all-zero chunks of the usual chunk sizes, computed once per process.
fn common_zero_ids() -> &'static HashMap<ChunkId, u32> {
    static IDS: std::sync::OnceLock<HashMap<ChunkId, u32>> = std::sync::OnceLock::new();
    IDS.get_or_init(|| {
        (12..=20)
            .map(|s| (ChunkId::zero(1 << s), 1u32 << s))
            .collect()
    })
}

fn sb_off(seq: u64) -> u64 {
    (seq % 2) * BLOCK
}

fn read_checkpoint(storage: &dyn Storage, sb: &Superblock) -> Result<Checkpoint> {
    let mut b = vec![0u8; sb.ckpt_len_used as usize];
    storage.read_at(sb.geometry.ckpt_off[sb.ckpt_slot as usize], &mut b)?;
    if crc32(&[&b]) != sb.ckpt_crc {
        return Err(Error::Corrupt("checkpoint checksum mismatch".into()));
    }
    Checkpoint::decode(&b)
}

/// Checks and decodes a stored chunk record; the error says why it is
/// unusable. Returns the plaintext and, if compressed, its frame table.
pub(crate) fn decode_chunk(
    id: &ChunkId,
    loc: &Loc,
    stored: Vec<u8>,
) -> std::result::Result<(Vec<u8>, Option<Vec<u32>>), String> {
    if stored.len() != loc.stored_len as usize {
        return Err("short record".into());
    }
    if crc32(&[&stored]) != loc.crc {
        return Err("checksum mismatch (torn or rotted record)".into());
    }
    let (data, table) = if loc.compressed {
        let (d, t) = frames::decompress_all(&stored, loc.raw_len as usize)?;
        (d, Some(t))
    } else {
        (stored, None)
    };
    if ChunkId::of(&data) != *id {
        return Err("content does not hash to id".into());
    }
    Ok((data, table))
}

impl State {
    fn push(&mut self, r: Record) {
        self.pending_bytes += r.encoded_len();
        self.pending.push(r);
    }

    /// Applies a record to the in-memory state (replay and live changes to
    /// pins; chunk and overlay changes made live update the maps directly).
    fn apply(&mut self, r: Record, tick: &AtomicU64) {
        match r {
            Record::Put(id, loc) => {
                self.index
                    .insert(id, Entry::new(loc, tick.fetch_add(1, Ordering::Relaxed)));
            }
            Record::Del(id) => {
                self.index.remove(&id);
            }
            Record::Pin(name, ids) => {
                self.remove_pin(&name);
                self.pin_bytes += 6 + name.len() + 32 * ids.len();
                let uniq: HashSet<ChunkId> = ids.iter().copied().collect();
                for id in uniq {
                    *self.pin_count.entry(id).or_insert(0) += 1;
                }
                self.pins.insert(name, ids);
            }
            Record::Unpin(name) => self.remove_pin(&name),
            Record::OvCreate {
                name,
                chunk_size,
                disk_size,
                base_digest,
            } => {
                self.overlays.insert(
                    name,
                    OverlayMeta {
                        chunk_size,
                        disk_size,
                        base_digest,
                        blocks: BTreeMap::new(),
                    },
                );
            }
            Record::OvMap(name, blocks) => {
                if let Some(o) = self.overlays.get_mut(&name) {
                    for b in blocks {
                        o.blocks.insert(b.disk_block, (b.arena_block, b.crc));
                    }
                }
            }
            Record::OvUnmap(name, blocks) => {
                if let Some(o) = self.overlays.get_mut(&name) {
                    for b in blocks {
                        o.blocks.remove(&b);
                    }
                }
            }
            Record::OvRebase(name, d) => {
                if let Some(o) = self.overlays.get_mut(&name) {
                    o.base_digest = d;
                }
            }
            Record::OvDelete(name) => {
                self.overlays.remove(&name);
            }
        }
    }

    fn remove_pin(&mut self, name: &str) {
        if let Some(old) = self.pins.remove(name) {
            self.pin_bytes -= 6 + name.len() + 32 * old.len();
            let uniq: HashSet<ChunkId> = old.into_iter().collect();
            for id in uniq {
                if let Some(c) = self.pin_count.get_mut(&id) {
                    *c -= 1;
                    if *c == 0 {
                        self.pin_count.remove(&id);
                    }
                }
            }
        }
    }

    fn checkpoint(&self, seq: u64) -> Checkpoint {
        let mut chunks: Vec<(u64, ChunkId, Loc)> = self
            .index
            .iter()
            .map(|(id, e)| (e.last_use.load(Ordering::Relaxed), *id, e.loc))
            .collect();
        chunks.sort_unstable_by_key(|c| c.0);
        Checkpoint {
            seq,
            chunks: chunks.into_iter().map(|(_, id, l)| (id, l)).collect(),
            pins: self
                .pins
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            overlays: self
                .overlays
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        }
    }

    /// Frees these blocks once the pending records are durable.
    pub(crate) fn defer_free(&mut self, frees: &[(u32, u32)]) {
        self.pending_free.extend_from_slice(frees);
    }

    pub(crate) fn apply_overlay(&mut self, r: Record) {
        let tick = AtomicU64::new(0);
        self.apply(r.clone(), &tick);
        self.push(r);
    }
}
