//! Disk-image views: a disk as a list of chunk ids, readable at any offset.
//!
//! Chunks missing from the cache come from a [`ChunkSource`] (the receiver
//! implements one over the network). A fetched chunk is verified against its
//! id before it is used or inserted, so a source can never feed the guest
//! wrong bytes. Concurrent misses of the same chunk share one fetch.

use crate::cache::Cache;
use crate::error::{Error, Result};
use chunk::{ChunkId, ChunkList};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock};

/// Why a source could not deliver a chunk.
pub type SourceError = Box<dyn std::error::Error + Send + Sync>;

/// Where chunks missing from the cache come from.
///
/// `fetch` may block for as long as it takes the chunk to arrive (a network
/// source waits for its download) and is called from several threads at
/// once. It returns the chunk's plaintext; the caller checks the length and
/// the sha256, so an implementation need not verify (but may).
pub trait ChunkSource: Send + Sync {
    /// Returns the plaintext of chunk `id`, expected to be `len` bytes.
    fn fetch(&self, id: &ChunkId, len: usize) -> std::result::Result<Vec<u8>, SourceError>;

    /// The plaintext and, when the chunk came as 4 KiB frames ([`chunk::frames`]), those
    /// frames, which the cache then stores without compressing again. A source that only
    /// has plaintext need not implement it.
    fn fetch_with_frames(
        &self,
        id: &ChunkId,
        len: usize,
    ) -> std::result::Result<(Vec<u8>, Option<Vec<u8>>), SourceError> {
        Ok((self.fetch(id, len)?, None))
    }
}

/// Reads chunks from files named by their hex id in a directory (tests,
/// seeding a cache from a local copy of a repository).
pub struct DirSource {
    pub dir: PathBuf,
}

impl ChunkSource for DirSource {
    fn fetch(&self, id: &ChunkId, _len: usize) -> std::result::Result<Vec<u8>, SourceError> {
        Ok(std::fs::read(self.dir.join(id.to_string()))?)
    }
}

/// Chunks held in memory (tests).
#[derive(Default)]
pub struct MemSource {
    pub chunks: RwLock<HashMap<ChunkId, Vec<u8>>>,
    pub fetches: AtomicU64,
}

impl MemSource {
    pub fn add(&self, data: Vec<u8>) -> ChunkId {
        let id = ChunkId::of(&data);
        self.chunks
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, data);
        id
    }
}

impl ChunkSource for MemSource {
    fn fetch(&self, id: &ChunkId, _len: usize) -> std::result::Result<Vec<u8>, SourceError> {
        self.fetches.fetch_add(1, Ordering::Relaxed);
        self.chunks
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .cloned()
            .ok_or_else(|| format!("no chunk {id}").into())
    }
}

/// No source: offline. Every miss is an error.
pub struct NoSource;

impl ChunkSource for NoSource {
    fn fetch(&self, id: &ChunkId, _len: usize) -> std::result::Result<Vec<u8>, SourceError> {
        Err(format!("offline: chunk {id} is not cached").into())
    }
}

/// One fetch in progress, shared by every reader that misses the same chunk.
#[derive(Default)]
struct Inflight {
    result: Mutex<Option<std::result::Result<Arc<Vec<u8>>, String>>>,
    done: Condvar,
}

/// Counters for status and metrics.
#[derive(Debug, Default, Clone, Copy)]
pub struct ViewStats {
    pub hits: u64,
    pub misses: u64,
    pub fetched_bytes: u64,
}

/// A read-only disk image made of chunks.
pub struct DiskView {
    cache: Arc<Cache>,
    source: Arc<dyn ChunkSource>,
    chunk_size: u32,
    size: u64,
    chunks: RwLock<Arc<ChunkList>>,
    inflight: Mutex<HashMap<ChunkId, Arc<Inflight>>>,
    hits: AtomicU64,
    misses: AtomicU64,
    fetched: AtomicU64,
}

impl DiskView {
    /// A view of the disk `list` describes. Zero chunks (`None`) read as zeros and never
    /// touch the cache or the source.
    pub fn new(
        cache: Arc<Cache>,
        list: ChunkList,
        source: Arc<dyn ChunkSource>,
    ) -> Result<DiskView> {
        list.validate().map_err(|e| Error::Invalid(e.to_string()))?;
        Ok(DiskView {
            cache,
            source,
            chunk_size: list.chunk_size,
            size: list.size,
            chunks: RwLock::new(Arc::new(list)),
            inflight: Mutex::new(HashMap::new()),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            fetched: AtomicU64::new(0),
        })
    }

    pub fn size(&self) -> u64 {
        self.size
    }
    pub fn chunk_size(&self) -> u32 {
        self.chunk_size
    }
    pub fn cache(&self) -> &Arc<Cache> {
        &self.cache
    }
    pub fn chunk_list(&self) -> Arc<ChunkList> {
        self.chunks
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
    pub(crate) fn set_chunk_list(&self, list: ChunkList) -> Result<()> {
        if list.size != self.size || list.chunk_size != self.chunk_size || list.validate().is_err()
        {
            return Err(Error::Invalid(
                "new chunk list describes a different disk".into(),
            ));
        }
        *self.chunks.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(list);
        Ok(())
    }
    pub fn stats(&self) -> ViewStats {
        ViewStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            fetched_bytes: self.fetched.load(Ordering::Relaxed),
        }
    }

    /// Plaintext length of chunk `idx`.
    pub fn chunk_len(&self, idx: usize) -> usize {
        let start = idx as u64 * self.chunk_size as u64;
        (self.size - start).min(self.chunk_size as u64) as usize
    }

    /// Reads `buf.len()` bytes at `off`, fetching missing chunks.
    pub fn read_at(&self, off: u64, buf: &mut [u8]) -> Result<()> {
        let end = off
            .checked_add(buf.len() as u64)
            .filter(|&e| e <= self.size)
            .ok_or_else(|| {
                Error::Invalid(format!(
                    "read [{off}, +{}) beyond disk end {}",
                    buf.len(),
                    self.size
                ))
            })?;
        let list = self.chunk_list();
        let cs = self.chunk_size as u64;
        let mut pos = off;
        while pos < end {
            let idx = (pos / cs) as usize;
            let within = (pos % cs) as usize;
            let n = ((cs - pos % cs).min(end - pos)) as usize;
            let dst = &mut buf[(pos - off) as usize..(pos - off) as usize + n];
            self.read_chunk_range(&list, idx, within, dst)?;
            pos += n as u64;
        }
        Ok(())
    }

    fn read_chunk_range(
        &self,
        list: &ChunkList,
        idx: usize,
        within: usize,
        dst: &mut [u8],
    ) -> Result<()> {
        let len = self.chunk_len(idx);
        let Some(id) = list.chunks[idx] else {
            dst.fill(0);
            return Ok(());
        };
        if self.cache.read_range(&id, within, dst)? {
            self.hits.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
        self.misses.fetch_add(1, Ordering::Relaxed);
        let data = self.fetch(&id, len)?;
        dst.copy_from_slice(&data[within..within + dst.len()]);
        Ok(())
    }

    /// The whole plaintext of chunk `idx` (verified).
    pub fn chunk(&self, idx: usize) -> Result<Vec<u8>> {
        let list = self.chunk_list();
        if idx >= list.chunks.len() {
            return Err(Error::Invalid(format!("chunk index {idx} out of range")));
        }
        let mut v = vec![0u8; self.chunk_len(idx)];
        self.read_chunk_range(&list, idx, 0, &mut v)?;
        Ok(v)
    }

    /// Makes sure chunk `idx` is in the cache (background fill).
    pub fn prefetch(&self, idx: usize) -> Result<()> {
        let list = self.chunk_list();
        let Some(entry) = list.chunks.get(idx) else {
            return Err(Error::Invalid(format!("chunk index {idx} out of range")));
        };
        let Some(id) = entry else {
            return Ok(());
        };
        if self.cache.contains(id) {
            return Ok(());
        }
        self.fetch(id, self.chunk_len(idx)).map(|_| ())
    }

    /// Gets a chunk from the source, verifies it and inserts it into the
    /// cache. Concurrent callers for the same id wait for one fetch.
    fn fetch(&self, id: &ChunkId, len: usize) -> Result<Arc<Vec<u8>>> {
        let (slot, leader) = {
            let mut m = self.inflight.lock().unwrap_or_else(|e| e.into_inner());
            match m.get(id) {
                Some(s) => (s.clone(), false),
                None => {
                    let s = Arc::new(Inflight::default());
                    m.insert(*id, s.clone());
                    (s, true)
                }
            }
        };
        if !leader {
            let mut g = slot.result.lock().unwrap_or_else(|e| e.into_inner());
            while g.is_none() {
                g = slot.done.wait(g).unwrap_or_else(|e| e.into_inner());
            }
            return match g.as_ref() {
                Some(Ok(d)) => Ok(d.clone()),
                Some(Err(m)) => Err(Error::Source(*id, m.clone())),
                None => Err(Error::Source(*id, "fetch vanished".into())),
            };
        }
        let res = self.fetch_verified(id, len);
        let shared = match &res {
            Ok(d) => Ok(d.clone()),
            Err(e) => Err(e.to_string()),
        };
        *slot.result.lock().unwrap_or_else(|e| e.into_inner()) = Some(shared);
        slot.done.notify_all();
        self.inflight
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
        res
    }

    fn fetch_verified(&self, id: &ChunkId, len: usize) -> Result<Arc<Vec<u8>>> {
        // It may have arrived while we were queueing (another view, the filler).
        if let Some(d) = self.cache.read(id)? {
            return Ok(Arc::new(d));
        }
        let (d, frames) = self
            .source
            .fetch_with_frames(id, len)
            .map_err(|e| Error::Source(*id, e.to_string()))?;
        if d.len() != len || ChunkId::of(&d) != *id {
            log::warn!("source returned wrong data for chunk {id}");
            return Err(Error::HashMismatch(*id));
        }
        self.fetched.fetch_add(d.len() as u64, Ordering::Relaxed);
        let inserted = match &frames {
            Some(f) => self.cache.insert_framed(id, &d, f),
            None => self.cache.insert(id, &d),
        };
        match inserted {
            Ok(()) => {}
            // Full of pinned chunks: serve from memory without caching.
            Err(Error::Full { .. }) => log::warn!("cache full; serving chunk {id} uncached"),
            // The data is verified: a cache that cannot store it must not
            // fail the guest's read.
            Err(e) => log::error!("could not cache chunk {id}: {e}; serving it uncached"),
        }
        Ok(Arc::new(d))
    }
}
