//! Copy-on-write overlays over a [`DiskView`].
//!
//! Guest writes (512-byte granularity) land in 4 KiB overlay blocks in the
//! cache's arena. A block that a durable record references is never written
//! in place: a write to it goes to a fresh block, and the old one is freed
//! only after the commit that stops referencing it is durable. `flush`
//! flushes the data, then commits the new block map. So after any crash the
//! overlay is exactly its state at some flush at or after the last completed
//! one, and every write acknowledged by a completed `flush` is there.
//!
//! A system-disk overlay is never journaled (its blocks are free again after
//! a crash or on close); a user-disk overlay persists under a name and can
//! be written back: the changed chunks are returned, and once uploaded the
//! view moves to the new chunk list and the overlay forgets those blocks.

use crate::cache::Cache;
use crate::codec::crc32;
use crate::error::{Error, Result};
use crate::format::{OvBlock, Record, BLOCK};
use crate::view::DiskView;
use chunk::{is_zero, ChunkId, ChunkList};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, RwLock};

const SECTOR: u64 = 512;

#[derive(Clone, Copy, Debug)]
struct Block {
    arena: u32,
    crc: u32,
    /// Written since the last flush: no durable record references it, so
    /// further writes may go to it in place.
    dirty: bool,
    /// Bumped on every write (write-back drops only unchanged blocks).
    gen: u64,
}

struct State {
    map: BTreeMap<u64, Block>,
    /// Blocks replaced since the last flush; freed after its commit.
    replaced: Vec<u32>,
    gen: u64,
    closed: bool,
}

/// What kind of disk an overlay belongs to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OverlayKind {
    /// Thrown away on close; never survives a restart.
    System,
    /// Persists under this name; written back to the repository.
    User(String),
}

/// The result of [`Overlay::prepare_write_back`] (or of
/// [`Overlay::prepare_write_back_ids`], whose `changed` entries carry no data): what to
/// upload.
#[derive(Clone, Debug)]
pub struct WriteBack {
    /// The disk's full new chunk list.
    pub chunks: ChunkList,
    /// Changed chunks that are not all zero: (index, id, plaintext). Upload these; a chunk
    /// written to all zeros is `None` in `chunks` and has nothing to upload.
    pub changed: Vec<(usize, ChunkId, Vec<u8>)>,
    snapshot: Vec<(u64, u64)>,
}

pub struct Overlay {
    view: Arc<DiskView>,
    kind: OverlayKind,
    state: RwLock<State>,
}

impl Overlay {
    /// A throw-away overlay for a system disk.
    pub fn system(view: Arc<DiskView>) -> Result<Overlay> {
        check_view(&view)?;
        Ok(Overlay {
            view,
            kind: OverlayKind::System,
            state: RwLock::new(new_state()),
        })
    }

    /// Opens the persistent overlay `name` over `view`, creating it (durably)
    /// if it does not exist. Refuses an overlay made for a different base
    /// (other chunk list, size or chunk size).
    pub fn user(view: Arc<DiskView>, name: &str) -> Result<Overlay> {
        check_view(&view)?;
        if name.is_empty() || name.len() > 255 {
            return Err(Error::Invalid("overlay name must be 1..=255 bytes".into()));
        }
        let cache = view.cache().clone();
        cache.claim_overlay(name)?;
        let r = Self::open_user(view, name);
        if r.is_err() {
            cache.release_overlay(name);
        }
        r
    }

    fn open_user(view: Arc<DiskView>, name: &str) -> Result<Overlay> {
        let cache = view.cache().clone();
        let digest = view.chunk_list().digest();
        let mut st = new_state();
        let existing = cache.read_state().overlays.get(name).cloned();
        match existing {
            Some(m) => {
                if m.chunk_size != view.chunk_size()
                    || m.disk_size != view.size()
                    || m.base_digest != digest
                {
                    return Err(Error::Invalid(format!(
                        "overlay {name} was made for a different base image; open it with the chunk list it was last written back against"
                    )));
                }
                for (db, (ab, crc)) in m.blocks {
                    st.map.insert(
                        db,
                        Block {
                            arena: ab,
                            crc,
                            dirty: false,
                            gen: 0,
                        },
                    );
                }
            }
            None => {
                cache.write_state().apply_overlay(Record::OvCreate {
                    name: name.to_string(),
                    chunk_size: view.chunk_size(),
                    disk_size: view.size(),
                    base_digest: digest,
                });
                cache.sync()?;
            }
        }
        Ok(Overlay {
            view,
            kind: OverlayKind::User(name.to_string()),
            state: RwLock::new(st),
        })
    }

    pub fn view(&self) -> &Arc<DiskView> {
        &self.view
    }
    pub fn kind(&self) -> &OverlayKind {
        &self.kind
    }

    fn cache(&self) -> &Arc<Cache> {
        self.view.cache()
    }

    fn write_lock(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|e| e.into_inner())
    }
    fn read_lock(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Reads one overlay block, checking its crc.
    fn read_block(&self, b: &Block, disk_block: u64, out: &mut [u8]) -> Result<()> {
        let c = self.cache();
        c.storage().read_at(c.geometry().block_off(b.arena), out)?;
        if crc32(&[out]) != b.crc {
            return Err(Error::OverlayCorrupt(disk_block * BLOCK));
        }
        Ok(())
    }

    /// Writes `data` at `off`; both multiples of 512. Durable after `flush`.
    pub fn write_at(&self, off: u64, data: &[u8]) -> Result<()> {
        if off % SECTOR != 0 || data.len() as u64 % SECTOR != 0 {
            return Err(Error::Invalid(
                "overlay writes must be 512-byte aligned".into(),
            ));
        }
        let end = off
            .checked_add(data.len() as u64)
            .filter(|&e| e <= self.view.size())
            .ok_or_else(|| Error::Invalid("write beyond disk end".into()))?;
        let mut st = self.write_lock();
        if st.closed {
            return Err(Error::Invalid("overlay is closed".into()));
        }
        let mut pos = off;
        let mut buf = vec![0u8; BLOCK as usize];
        while pos < end {
            let db = pos / BLOCK;
            let within = (pos % BLOCK) as usize;
            let n = ((BLOCK - pos % BLOCK).min(end - pos)) as usize;
            let src = &data[(pos - off) as usize..(pos - off) as usize + n];
            let cur = st.map.get(&db).copied();
            if n as u64 != BLOCK {
                match &cur {
                    Some(b) => self.read_block(b, db, &mut buf)?,
                    None => self.view.read_at(db * BLOCK, &mut buf)?,
                }
            }
            buf[within..within + n].copy_from_slice(src);
            let in_place = matches!(cur, Some(b) if b.dirty)
                || (self.kind == OverlayKind::System && cur.is_some());
            let arena = match cur {
                Some(b) if in_place => b.arena,
                _ => self.cache().alloc_blocks(1, false)?,
            };
            if let Err(e) = self.cache().write_blocks(arena, &buf) {
                if !in_place {
                    self.cache().write_state().alloc.release(arena, 1);
                }
                return Err(e);
            }
            if let Some(b) = cur {
                if !in_place {
                    st.replaced.push(b.arena);
                }
            }
            st.gen += 1;
            let gen = st.gen;
            st.map.insert(
                db,
                Block {
                    arena,
                    crc: crc32(&[&buf]),
                    dirty: true,
                    gen,
                },
            );
            pos += n as u64;
        }
        Ok(())
    }

    /// Reads at any offset and length: overlay blocks where written, the
    /// base view elsewhere.
    pub fn read_at(&self, off: u64, buf: &mut [u8]) -> Result<()> {
        let end = off
            .checked_add(buf.len() as u64)
            .filter(|&e| e <= self.view.size())
            .ok_or_else(|| Error::Invalid("read beyond disk end".into()))?;
        let st = self.read_lock();
        let mut pos = off;
        let mut blk = vec![0u8; BLOCK as usize];
        while pos < end {
            let db = pos / BLOCK;
            match st.map.get(&db) {
                Some(b) => {
                    let within = (pos % BLOCK) as usize;
                    let n = ((BLOCK - pos % BLOCK).min(end - pos)) as usize;
                    self.read_block(b, db, &mut blk)?;
                    buf[(pos - off) as usize..(pos - off) as usize + n]
                        .copy_from_slice(&blk[within..within + n]);
                    pos += n as u64;
                }
                None => {
                    // The run of base blocks up to the next overlay block.
                    let next = st
                        .map
                        .range(db..)
                        .next()
                        .map(|(k, _)| k * BLOCK)
                        .unwrap_or(u64::MAX);
                    let run_end = next.min(end);
                    self.view.read_at(
                        pos,
                        &mut buf[(pos - off) as usize..(run_end - off) as usize],
                    )?;
                    pos = run_end;
                }
            }
        }
        Ok(())
    }

    /// Makes every write before this call durable (user overlays) or at
    /// least written through (system overlays).
    pub fn flush(&self) -> Result<()> {
        let mut st = self.write_lock();
        let name = match &self.kind {
            OverlayKind::System => return Ok(self.cache().storage().flush()?),
            OverlayKind::User(n) => n.clone(),
        };
        let dirty: Vec<OvBlock> = st
            .map
            .iter()
            .filter(|(_, b)| b.dirty)
            .map(|(db, b)| OvBlock {
                disk_block: *db,
                arena_block: b.arena,
                crc: b.crc,
            })
            .collect();
        let replaced = std::mem::take(&mut st.replaced);
        if !dirty.is_empty() || !replaced.is_empty() {
            let frees: Vec<(u32, u32)> = replaced.iter().map(|b| (*b, 1)).collect();
            let cache = self.cache();
            let mut cs = cache.write_state();
            cs.apply_overlay(Record::OvMap(name, dirty));
            cs.defer_free(&frees);
            drop(cs);
        }
        // Whatever happens now, these blocks may be referenced by a durable
        // record: never write them in place again.
        for b in st.map.values_mut() {
            b.dirty = false;
        }
        self.cache().sync()
    }

    /// Indices of the chunks this overlay has changed (for write-back).
    pub fn changed_chunks(&self) -> Vec<usize> {
        let cs = self.view.chunk_size() as u64;
        let set: BTreeSet<usize> = self
            .read_lock()
            .map
            .keys()
            .map(|db| (db * BLOCK / cs) as usize)
            .collect();
        set.into_iter().collect()
    }

    /// Flushes, then computes the new content and id of every changed chunk.
    pub fn prepare_write_back(&self) -> Result<WriteBack> {
        self.prepare(true)
    }

    /// [`Overlay::prepare_write_back`] keeping only the ids: every `changed` entry's data
    /// is empty, so memory is the chunk list rather than the changed bytes (a large write-back
    /// reads each chunk again with [`Overlay::read_chunk`] when it uploads it, and
    /// [`Overlay::finish_write_back`] reads it once more to store it in the cache).
    pub fn prepare_write_back_ids(&self) -> Result<WriteBack> {
        self.prepare(false)
    }

    /// The current content of chunk `idx` (overlay blocks where written, the base elsewhere).
    pub fn read_chunk(&self, idx: usize) -> Result<Vec<u8>> {
        let mut data = vec![0u8; self.view.chunk_len(idx)];
        self.read_at(idx as u64 * self.view.chunk_size() as u64, &mut data)?;
        Ok(data)
    }

    fn prepare(&self, keep_data: bool) -> Result<WriteBack> {
        self.flush()?;
        let changed_idx = self.changed_chunks();
        let mut chunks = ChunkList::clone(&self.view.chunk_list());
        let mut changed = Vec::new();
        for idx in changed_idx {
            let mut data = vec![0u8; self.view.chunk_len(idx)];
            self.read_at(idx as u64 * self.view.chunk_size() as u64, &mut data)?;
            if is_zero(&data) {
                chunks.chunks[idx] = None;
                continue;
            }
            let id = ChunkId::of(&data);
            chunks.chunks[idx] = Some(id);
            changed.push((idx, id, if keep_data { data } else { Vec::new() }));
        }
        let snapshot = self
            .read_lock()
            .map
            .iter()
            .map(|(db, b)| (*db, b.gen))
            .collect();
        Ok(WriteBack {
            chunks,
            changed,
            snapshot,
        })
    }

    /// After the changed chunks are safely in the repository: stores them in
    /// the cache, moves the view to the new chunk list and drops the overlay
    /// blocks not written since `prepare_write_back`, in one durable commit.
    pub fn finish_write_back(&self, wb: WriteBack) -> Result<()> {
        let cache = self.cache().clone();
        for (idx, id, data) in &wb.changed {
            let reread;
            let data = if data.is_empty() {
                // Prepared without data: read it again. If it was written since, its
                // blocks stay in the overlay and the chunk is fetched when needed.
                reread = self.read_chunk(*idx)?;
                if ChunkId::of(&reread) != *id {
                    continue;
                }
                &reread
            } else {
                data
            };
            match cache.insert(id, data) {
                Ok(()) | Err(Error::Full { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        // The new chunks are durable before the overlay blocks go.
        cache.sync()?;
        let mut st = self.write_lock();
        let mut drop_blocks = Vec::new();
        for (db, gen) in &wb.snapshot {
            if let Some(b) = st.map.get(db) {
                if b.gen == *gen {
                    drop_blocks.push((*db, b.arena));
                }
            }
        }
        for (db, _) in &drop_blocks {
            st.map.remove(db);
        }
        self.view.set_chunk_list(wb.chunks.clone())?;
        match &self.kind {
            OverlayKind::System => {
                let mut cs = cache.write_state();
                for (_, a) in drop_blocks {
                    cs.alloc.release(a, 1);
                }
                Ok(())
            }
            OverlayKind::User(name) => {
                let frees: Vec<(u32, u32)> = drop_blocks.iter().map(|(_, a)| (*a, 1)).collect();
                {
                    let mut cs = cache.write_state();
                    cs.apply_overlay(Record::OvUnmap(
                        name.clone(),
                        drop_blocks.iter().map(|(d, _)| *d).collect(),
                    ));
                    cs.apply_overlay(Record::OvRebase(name.clone(), wb.chunks.digest()));
                    cs.defer_free(&frees);
                }
                drop(st);
                cache.sync()
            }
        }
    }

    /// Closes the overlay: a system overlay's blocks are freed at once; a
    /// user overlay is flushed.
    pub fn close(self) -> Result<()> {
        match &self.kind {
            OverlayKind::User(_) => self.flush(),
            OverlayKind::System => {
                self.discard();
                Ok(())
            }
        }
    }

    fn discard(&self) {
        let mut st = self.write_lock();
        if st.closed {
            return;
        }
        st.closed = true;
        let mut cs = self.cache().write_state();
        for b in st.map.values() {
            cs.alloc.release(b.arena, 1);
        }
        for a in &st.replaced {
            cs.alloc.release(*a, 1);
        }
        st.map.clear();
        st.replaced.clear();
    }

    /// Deletes the persistent overlay `name` (for example after the user's
    /// data was written back and the terminal is wiped).
    pub fn delete_user(cache: &Cache, name: &str) -> Result<()> {
        {
            let mut cs = cache.write_state();
            let Some(m) = cs.overlays.get(name).cloned() else {
                return Ok(());
            };
            let frees: Vec<(u32, u32)> = m.blocks.values().map(|(a, _)| (*a, 1)).collect();
            cs.apply_overlay(Record::OvDelete(name.to_string()));
            cs.defer_free(&frees);
        }
        cache.sync()
    }
}

impl Drop for Overlay {
    fn drop(&mut self) {
        match &self.kind {
            OverlayKind::System => self.discard(),
            OverlayKind::User(name) => self.cache().release_overlay(name),
        }
    }
}

fn new_state() -> State {
    State {
        map: BTreeMap::new(),
        replaced: Vec::new(),
        gen: 0,
        closed: false,
    }
}

fn check_view(view: &DiskView) -> Result<()> {
    if view.size() % BLOCK != 0 {
        return Err(Error::Invalid(
            "overlays need a disk size that is a multiple of 4096".into(),
        ));
    }
    Ok(())
}
