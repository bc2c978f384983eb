//! Filling the cache with an appliance set: boot-profile chunks first (in the order the
//! guest first read them), then everything else in image order, over several
//! connections. Every chunk is verified by [`Fetcher::fetch_chunk`] before it enters the
//! cache. What the cache already holds is skipped, so an interrupted fill (cancelled,
//! network gone, power cut) resumes where it stopped: the cache is content-addressed,
//! what is in it is done. Chunks are made durable every [`FillOptions::sync_every`]
//! bytes, which bounds what a power cut costs.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use appliance::ChunkId;
use cachefs::Cache;

use crate::error::{Error, Result};
use crate::fetch::{FetchCounts, Fetcher};
use crate::set::ApplianceSet;

/// How to fill.
#[derive(Clone, Debug)]
pub struct FillOptions {
    /// Parallel connections (worker threads).
    pub connections: usize,
    /// Make inserted chunks durable every this many plaintext bytes.
    pub sync_every: u64,
    /// Longest pause of a worker for demand reads before it takes its next chunk.
    pub max_demand_pause: Duration,
}

impl Default for FillOptions {
    fn default() -> Self {
        FillOptions {
            connections: 4,
            sync_every: 32 << 20,
            max_demand_pause: Duration::from_secs(1),
        }
    }
}

/// Progress of one appliance.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ApplianceProgress {
    /// Name.
    pub name: String,
    /// Version being filled.
    pub version: u64,
    /// Plaintext bytes of its distinct non-zero chunks.
    pub total_bytes: u64,
    /// Of those, bytes in the cache.
    pub done_bytes: u64,
    /// Bytes of its boot profile.
    pub boot_total_bytes: u64,
    /// Of those, bytes in the cache.
    pub boot_done_bytes: u64,
    /// Estimated time until it is complete: the plan's bytes still to fetch up to its
    /// last chunk, at the fill's current rate (the link is shared, so this is the rate
    /// that matters). `Some(0)` when complete, `None` before a rate is known.
    pub eta: Option<Duration>,
}

impl ApplianceProgress {
    /// Every boot chunk is in: the appliance can start (the rest comes on demand).
    pub fn boot_ready(&self) -> bool {
        self.boot_done_bytes >= self.boot_total_bytes
    }
    /// Every chunk is in.
    pub fn complete(&self) -> bool {
        self.done_bytes >= self.total_bytes
    }
}

/// A snapshot of a fill, for init's screen and the CLI.
#[derive(Clone, Debug, Default)]
pub struct Progress {
    /// Per appliance, in set order.
    pub appliances: Vec<ApplianceProgress>,
    /// Plaintext bytes the whole set needs (distinct chunks, counted once).
    pub total_bytes: u64,
    /// Of those, in the cache.
    pub done_bytes: u64,
    /// Bytes that were already cached when the fill started (resume, shared chunks).
    pub cached_at_start: u64,
    /// Fetch counters (wire bytes, corrupt chunks, retries, demand reads).
    pub fetch: FetchCounts,
    /// Time since the fill started.
    pub elapsed: Duration,
    /// Plaintext bytes per second fetched by this fill.
    pub rate: f64,
    /// Estimated time left at that rate.
    pub eta: Option<Duration>,
    /// The fill has stopped (done, failed or cancelled).
    pub finished: bool,
    /// Chunks that could not be fetched so far.
    pub failed_chunks: u64,
}

/// One chunk to fetch and who needs it.
struct Job {
    id: ChunkId,
    len: usize,
    boot: bool,
    /// Indices into the appliance list.
    owners: Vec<usize>,
    /// Which owners count it as a boot chunk.
    boot_owners: Vec<usize>,
}

struct Shared {
    cache: Arc<Cache>,
    fetcher: Arc<Fetcher>,
    opts: FillOptions,
    jobs: Vec<Job>,
    next: AtomicUsize,
    cancel: AtomicBool,
    done: Vec<AtomicU64>,
    boot_done: Vec<AtomicU64>,
    done_total: AtomicU64,
    since_sync: AtomicU64,
    failures: Mutex<Vec<Error>>,
    base: Vec<ApplianceProgress>,
    /// prefix[k]: bytes of jobs[..k].
    prefix: Vec<u64>,
    /// Per appliance: index of its last job in the plan + 1 (0 if it has none).
    last_job_end: Vec<usize>,
    total: u64,
    cached_at_start: u64,
    start: Instant,
    counts_at_start: FetchCounts,
    running: AtomicUsize,
}

/// A fill running in the background.
pub struct FillHandle {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
}

/// Builds the ordered job list and the per-appliance totals.
fn plan(
    cache: &Cache,
    set: &ApplianceSet,
) -> (Vec<Job>, Vec<ApplianceProgress>, Vec<u64>, Vec<u64>) {
    let n = set.appliances.len();
    let mut base = Vec::with_capacity(n);
    let mut done = vec![0u64; n];
    let mut boot_done = vec![0u64; n];
    // id -> (len, owners, boot owners), in first-seen order with boot chunks first.
    let mut order: Vec<ChunkId> = Vec::new();
    let mut info: std::collections::HashMap<ChunkId, (usize, Vec<usize>, Vec<usize>)> =
        std::collections::HashMap::new();
    let mut lens: std::collections::HashMap<ChunkId, usize> = std::collections::HashMap::new();
    for a in &set.appliances {
        for b in a.session_blobs() {
            for (i, id) in b.chunks.iter().enumerate() {
                if let Some(id) = id {
                    lens.entry(*id).or_insert(b.chunk_len(i as u64));
                }
            }
        }
    }
    // Boot profiles of every appliance first, in set order.
    for (ai, a) in set.appliances.iter().enumerate() {
        let mut boot_total = 0;
        let mut seen = HashSet::new();
        for id in a.manifest.boot_profile.iter().flatten() {
            let Some(&len) = lens.get(id) else { continue };
            if !seen.insert(*id) {
                continue;
            }
            boot_total += len as u64;
            let e = info.entry(*id).or_insert_with(|| {
                order.push(*id);
                (len, Vec::new(), Vec::new())
            });
            e.2.push(ai);
        }
        base.push(ApplianceProgress {
            name: a.name().to_owned(),
            version: a.manifest.version,
            boot_total_bytes: boot_total,
            ..Default::default()
        });
    }
    for (ai, a) in set.appliances.iter().enumerate() {
        let mut seen = HashSet::new();
        let mut total = 0;
        for b in a.session_blobs() {
            for id in b.chunks.iter().flatten() {
                if !seen.insert(*id) {
                    continue;
                }
                let len = lens[id];
                total += len as u64;
                let e = info.entry(*id).or_insert_with(|| {
                    order.push(*id);
                    (len, Vec::new(), Vec::new())
                });
                e.1.push(ai);
            }
        }
        base[ai].total_bytes = total;
    }
    let mut jobs = Vec::new();
    for id in order {
        let (len, owners, boot_owners) = info.remove(&id).unwrap_or_default();
        if cache.contains(&id) {
            for &o in &owners {
                done[o] += len as u64;
            }
            for &o in &boot_owners {
                boot_done[o] += len as u64;
            }
            continue;
        }
        jobs.push(Job {
            id,
            len,
            boot: !boot_owners.is_empty(),
            owners,
            boot_owners,
        });
    }
    (jobs, base, done, boot_done)
}

/// Starts filling `set` into `cache` with `opts.connections` worker threads.
pub fn start(
    cache: Arc<Cache>,
    fetcher: Arc<Fetcher>,
    set: &ApplianceSet,
    opts: FillOptions,
) -> FillHandle {
    let (jobs, base, done, boot_done) = plan(&cache, set);
    let total: u64 = {
        let mut seen = HashSet::new();
        let mut t = 0;
        for a in &set.appliances {
            for b in a.session_blobs() {
                for (i, id) in b.chunks.iter().enumerate() {
                    if let Some(id) = id {
                        if seen.insert(*id) {
                            t += b.chunk_len(i as u64) as u64;
                        }
                    }
                }
            }
        }
        t
    };
    let missing: u64 = jobs.iter().map(|j| j.len as u64).sum();
    let boot_jobs = jobs.iter().filter(|j| j.boot).count();
    log::info!(
        "fill: {} chunks ({} MiB) to fetch, {} of them boot chunks; {} MiB already cached",
        jobs.len(),
        missing >> 20,
        boot_jobs,
        (total - missing) >> 20
    );
    let workers = opts.connections.max(1).min(jobs.len().max(1));
    let mut prefix = Vec::with_capacity(jobs.len() + 1);
    prefix.push(0u64);
    let mut last_job_end = vec![0usize; base.len()];
    for (k, j) in jobs.iter().enumerate() {
        prefix.push(prefix[k] + j.len as u64);
        for &o in &j.owners {
            last_job_end[o] = k + 1;
        }
    }
    let shared = Arc::new(Shared {
        prefix,
        last_job_end,
        counts_at_start: fetcher.counts(),
        cache,
        fetcher,
        opts,
        jobs,
        next: AtomicUsize::new(0),
        cancel: AtomicBool::new(false),
        done: done.into_iter().map(AtomicU64::new).collect(),
        boot_done: boot_done.into_iter().map(AtomicU64::new).collect(),
        done_total: AtomicU64::new(total - missing),
        since_sync: AtomicU64::new(0),
        failures: Mutex::new(Vec::new()),
        base,
        total,
        cached_at_start: total - missing,
        start: Instant::now(),
        running: AtomicUsize::new(workers),
    });
    let workers = (0..workers)
        .map(|_| {
            let s = shared.clone();
            std::thread::spawn(move || {
                work(&s);
                s.running.fetch_sub(1, Ordering::AcqRel);
            })
        })
        .collect();
    FillHandle { shared, workers }
}

fn work(s: &Shared) {
    loop {
        if s.cancel.load(Ordering::Relaxed) {
            return;
        }
        let i = s.next.fetch_add(1, Ordering::Relaxed);
        let Some(job) = s.jobs.get(i) else { return };
        s.fetcher.yield_to_demand(s.opts.max_demand_pause);
        let id = job.id;
        if !s.cache.contains(&id) {
            let chunk = match s.fetcher.fetch_verified(&job.id, Some(job.len)) {
                Ok(c) => c,
                Err(e) => {
                    log::warn!("fill: {e}");
                    if let Ok(mut f) = s.failures.lock() {
                        f.push(e);
                    }
                    continue;
                }
            };
            // Frames as they arrived: the fill does not compress again.
            let stored = match (&chunk.frames, chunk.encoding) {
                (Some(frames), _) => s.cache.insert_framed(&id, &chunk.plain, frames),
                (None, appliance::ChunkEncoding::Raw) => s.cache.insert_raw(&id, &chunk.plain),
                (None, _) => s.cache.insert(&id, &chunk.plain),
            };
            match stored {
                Ok(()) => {}
                Err(e @ cachefs::Error::Full { .. }) => {
                    // Everything is pinned: the rest cannot be stored either.
                    log::error!("fill: {e}");
                    if let Ok(mut f) = s.failures.lock() {
                        f.push(e.into());
                    }
                    s.cancel.store(true, Ordering::Relaxed);
                    return;
                }
                Err(e) => {
                    log::error!("fill: storing chunk {id}: {e}");
                    if let Ok(mut f) = s.failures.lock() {
                        f.push(e.into());
                    }
                    continue;
                }
            }
            if s.since_sync.fetch_add(job.len as u64, Ordering::Relaxed) + job.len as u64
                >= s.opts.sync_every
            {
                s.since_sync.store(0, Ordering::Relaxed);
                if let Err(e) = s.cache.sync() {
                    log::error!("fill: cache sync: {e}");
                }
            }
        }
        for &o in &job.owners {
            s.done[o].fetch_add(job.len as u64, Ordering::Relaxed);
        }
        for &o in &job.boot_owners {
            s.boot_done[o].fetch_add(job.len as u64, Ordering::Relaxed);
        }
        s.done_total.fetch_add(job.len as u64, Ordering::Relaxed);
    }
}

impl FillHandle {
    /// A snapshot of the progress.
    pub fn progress(&self) -> Progress {
        let s = &self.shared;
        let done = s.done_total.load(Ordering::Relaxed);
        let elapsed = s.start.elapsed();
        let rate = (done - s.cached_at_start) as f64 / elapsed.as_secs_f64().max(1e-3);
        let taken = s.next.load(Ordering::Relaxed).min(s.jobs.len());
        let appliances = s
            .base
            .iter()
            .enumerate()
            .map(|(i, b)| {
                let done_bytes = s.done[i].load(Ordering::Relaxed);
                let eta = if done_bytes >= b.total_bytes {
                    Some(Duration::ZERO)
                } else if rate > 0.0 {
                    // Jobs not yet taken up to its last one, or at least its own bytes left.
                    let queued = s.prefix[s.last_job_end[i].max(taken)] - s.prefix[taken];
                    let ahead = queued.max(b.total_bytes - done_bytes);
                    Some(Duration::from_secs_f64(ahead as f64 / rate))
                } else {
                    None
                };
                ApplianceProgress {
                    done_bytes,
                    boot_done_bytes: s.boot_done[i].load(Ordering::Relaxed),
                    eta,
                    ..b.clone()
                }
            })
            .collect();
        let now = s.fetcher.counts();
        let fetch = FetchCounts {
            wire_bytes: now.wire_bytes - s.counts_at_start.wire_bytes,
            plain_bytes: now.plain_bytes - s.counts_at_start.plain_bytes,
            chunks: now.chunks - s.counts_at_start.chunks,
            corrupt: now.corrupt - s.counts_at_start.corrupt,
            retries: now.retries - s.counts_at_start.retries,
            demand_chunks: now.demand_chunks - s.counts_at_start.demand_chunks,
        };
        let left = s.total - done;
        let eta = if left == 0 {
            Some(Duration::ZERO)
        } else if rate > 0.0 {
            Some(Duration::from_secs_f64(left as f64 / rate))
        } else {
            None
        };
        Progress {
            appliances,
            total_bytes: s.total,
            done_bytes: done,
            cached_at_start: s.cached_at_start,
            fetch,
            elapsed,
            rate,
            eta,
            finished: s.running.load(Ordering::Acquire) == 0,
            failed_chunks: s.failures.lock().map(|f| f.len() as u64).unwrap_or(0),
        }
    }

    /// Asks the workers to stop after their current chunk.
    pub fn cancel(&self) {
        self.shared.cancel.store(true, Ordering::Relaxed);
    }

    /// True once every worker has stopped.
    pub fn is_finished(&self) -> bool {
        self.shared.running.load(Ordering::Acquire) == 0
    }

    /// Waits for the workers, makes everything durable and returns the final progress,
    /// or the first failure (the chunks that did arrive are kept: a new fill resumes).
    pub fn wait(self) -> Result<Progress> {
        for w in self.workers {
            let _ = w.join();
        }
        let sync = self.shared.cache.sync();
        let p = FillHandle {
            shared: self.shared.clone(),
            workers: Vec::new(),
        }
        .progress();
        let mut failures = self
            .shared
            .failures
            .lock()
            .map(|mut f| std::mem::take(&mut *f))
            .unwrap_or_default();
        sync?;
        if !failures.is_empty() {
            let n = failures.len();
            let first = failures.swap_remove(0);
            log::error!("fill: {n} chunk(s) failed; first: {first}");
            return Err(first);
        }
        if self.shared.cancel.load(Ordering::Relaxed) {
            return Err(Error::Cancelled);
        }
        Ok(p)
    }
}

/// Fills `set` and calls `on_progress` about every `interval` until done.
pub fn fill(
    cache: Arc<Cache>,
    fetcher: Arc<Fetcher>,
    set: &ApplianceSet,
    opts: FillOptions,
    interval: Duration,
    mut on_progress: impl FnMut(&Progress),
) -> Result<Progress> {
    let h = start(cache, fetcher, set, opts);
    while !h.is_finished() {
        on_progress(&h.progress());
        let t = Instant::now();
        while !h.is_finished() && t.elapsed() < interval {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    let p = h.wait()?;
    on_progress(&p);
    Ok(p)
}
