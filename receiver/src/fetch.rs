//! Fetching one chunk: GET, decode, check against its id, retry with backoff.
//!
//! A sealed user chunk (one the session's [`crate::sealed::SealedChunks`] knows) is fetched
//! under its sealed id, opened with the user's key (its tag checked), and then checked
//! against its plaintext id like any other chunk: callers ask for plaintext ids only.
//!
//! Shared by the background fill and the VMM's demand reads ([`Fetcher`] implements
//! cachefs's `ChunkSource`). A demand read never waits in the fill's queue: it is fetched
//! at once on the reader's thread, and while any demand read is in flight the fill
//! workers pause before starting their next chunk (dm-clone's rule), so the reader gets
//! the link to itself.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use appliance::wire::chunk_path;
use appliance::{ChunkId, VerifiedChunk};

use crate::client::{RepoClient, MAX_STORED_CHUNK};
use crate::error::{Error, Result};

/// Counters, for progress, status and tests.
#[derive(Debug, Default)]
pub struct FetchStats {
    /// Stored (wire) bytes of every chunk body received, good or bad.
    pub wire_bytes: AtomicU64,
    /// Plaintext bytes of verified chunks.
    pub plain_bytes: AtomicU64,
    /// Verified chunks.
    pub chunks: AtomicU64,
    /// Chunks that arrived corrupt (did not decode or hash to their id); refetched.
    pub corrupt: AtomicU64,
    /// Attempts that failed for any reason and were retried.
    pub retries: AtomicU64,
    /// Chunks fetched for a demand read.
    pub demand_chunks: AtomicU64,
}

/// A plain copy of [`FetchStats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FetchCounts {
    pub wire_bytes: u64,
    pub plain_bytes: u64,
    pub chunks: u64,
    pub corrupt: u64,
    pub retries: u64,
    pub demand_chunks: u64,
}

/// Fetches chunks from the repository for the fill and for demand reads.
pub struct Fetcher {
    client: RepoClient,
    stats: FetchStats,
    demand: AtomicUsize,
}

impl Fetcher {
    /// A fetcher over `client` (its connection pool is shared by all threads).
    pub fn new(client: RepoClient) -> Arc<Fetcher> {
        Arc::new(Fetcher {
            client,
            stats: FetchStats::default(),
            demand: AtomicUsize::new(0),
        })
    }

    /// The client.
    pub fn client(&self) -> &RepoClient {
        &self.client
    }

    /// A snapshot of the counters.
    pub fn counts(&self) -> FetchCounts {
        let s = &self.stats;
        FetchCounts {
            wire_bytes: s.wire_bytes.load(Ordering::Relaxed),
            plain_bytes: s.plain_bytes.load(Ordering::Relaxed),
            chunks: s.chunks.load(Ordering::Relaxed),
            corrupt: s.corrupt.load(Ordering::Relaxed),
            retries: s.retries.load(Ordering::Relaxed),
            demand_chunks: s.demand_chunks.load(Ordering::Relaxed),
        }
    }

    /// Demand reads in flight now.
    pub fn demand_in_flight(&self) -> usize {
        self.demand.load(Ordering::Acquire)
    }

    /// Called by background work before each chunk: waits while demand reads are in
    /// flight, at most `max` (so a guest that reads without pause cannot starve the fill
    /// forever).
    pub fn yield_to_demand(&self, max: Duration) {
        let start = Instant::now();
        while self.demand_in_flight() > 0 && start.elapsed() < max {
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Fetches chunk `id` and returns its verified plaintext (of `len` bytes if given).
    /// A corrupt body is counted, logged and fetched again; network failures are retried
    /// with exponential backoff; a 404 fails at once (the repository does not have it).
    pub fn fetch_chunk(&self, id: &ChunkId, len: Option<usize>) -> Result<Vec<u8>> {
        Ok(self.fetch_verified(id, len)?.plain)
    }

    /// [`Fetcher::fetch_chunk`], keeping the chunk's 4 KiB frames when it came in them, so
    /// the cache stores them as they are instead of compressing the plaintext again.
    pub fn fetch_verified(&self, id: &ChunkId, len: Option<usize>) -> Result<VerifiedChunk> {
        let cfg = self.client.config();
        let attempts = cfg.attempts.max(1);
        let sealed = self
            .client
            .sealed()
            .and_then(|s| s.sealed_id(id).map(|sid| (s.clone(), sid)));
        let path = chunk_path(sealed.as_ref().map(|(_, sid)| sid).unwrap_or(id));
        let mut last = String::new();
        let mut last_err: Option<Error> = None;
        for attempt in 1..=attempts {
            if attempt > 1 {
                let wait = match &last_err {
                    Some(e) => cfg.retry_delay(attempt, e),
                    None => cfg.backoff_for(attempt),
                };
                self.stats.retries.fetch_add(1, Ordering::Relaxed);
                std::thread::sleep(wait);
            }
            last_err = None;
            let stored = match self.client.get(&path, MAX_STORED_CHUNK) {
                Ok(b) => b,
                Err(Error::Repository {
                    status: 404,
                    message,
                    ..
                }) => {
                    return Err(Error::ChunkFailed {
                        id: id.to_hex(),
                        attempts: attempt,
                        why: format!("the repository does not have it (404: {message})"),
                    });
                }
                Err(e) => {
                    log::debug!("chunk {id}: attempt {attempt}: {e}");
                    last = e.to_string();
                    last_err = Some(e);
                    continue;
                }
            };
            self.stats
                .wire_bytes
                .fetch_add(stored.len() as u64, Ordering::Relaxed);
            // A sealed chunk is not hashed against its sealed id here: its tag (under the
            // user's key) and its plaintext's hash against `id` already prove it is the
            // chunk asked for, and a third pass over the bytes costs the fill 10 %.
            let decoded = match &sealed {
                Some((s, _)) => s.sealer().open_chunk(id, stored),
                None => appliance::decode_chunk_keeping_frames(id, stored),
            };
            match decoded {
                Ok(chunk) if len.is_none_or(|l| l == chunk.plain.len()) => {
                    self.stats
                        .plain_bytes
                        .fetch_add(chunk.plain.len() as u64, Ordering::Relaxed);
                    self.stats.chunks.fetch_add(1, Ordering::Relaxed);
                    return Ok(chunk);
                }
                Ok(chunk) => {
                    self.stats.corrupt.fetch_add(1, Ordering::Relaxed);
                    last = format!(
                        "it has {} bytes where {} were expected",
                        chunk.plain.len(),
                        len.unwrap_or(0)
                    );
                    log::warn!("chunk {id} arrived with the wrong length; fetching it again");
                }
                Err(e) => {
                    self.stats.corrupt.fetch_add(1, Ordering::Relaxed);
                    last = format!("it arrived corrupt: {e}");
                    log::warn!("chunk {id} arrived corrupt ({e}); not stored, fetching it again");
                }
            }
        }
        Err(Error::ChunkFailed {
            id: id.to_hex(),
            attempts,
            why: last,
        })
    }
}

/// Demand reads of the VMM: fetched at once, the fill pauses meanwhile. The view checks
/// the id again and inserts the chunk into the cache.
impl cachefs::ChunkSource for Fetcher {
    fn fetch(
        &self,
        id: &cachefs::ChunkId,
        len: usize,
    ) -> std::result::Result<Vec<u8>, cachefs::SourceError> {
        self.demand.fetch_add(1, Ordering::AcqRel);
        let _guard = DemandGuard(&self.demand);
        self.stats.demand_chunks.fetch_add(1, Ordering::Relaxed);
        Ok(self.fetch_chunk(id, Some(len))?)
    }

    fn fetch_with_frames(
        &self,
        id: &cachefs::ChunkId,
        len: usize,
    ) -> std::result::Result<(Vec<u8>, Option<Vec<u8>>), cachefs::SourceError> {
        self.demand.fetch_add(1, Ordering::AcqRel);
        let _guard = DemandGuard(&self.demand);
        self.stats.demand_chunks.fetch_add(1, Ordering::Relaxed);
        let chunk = self.fetch_verified(id, Some(len))?;
        Ok((chunk.plain, chunk.frames))
    }
}

struct DemandGuard<'a>(&'a AtomicUsize);

impl Drop for DemandGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}
