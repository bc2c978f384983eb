//! Crash test for the chunk store: inserts, reads, removes, evictions and
//! pin changes, with the power cut at a random write or flush. After every
//! cut the cache must open, every chunk it returns must hash to its id, and
//! every pin change acknowledged by a completed `sync` must be there.

use cachefs::fault::{CutMode, FaultStorage, Rng};
use cachefs::{Cache, ChunkId, CreateOptions, Error, MemStorage};
use std::collections::HashMap;
use std::sync::Arc;

const DEVICE: usize = 320 * 1024;

fn pool(seed: u64) -> Vec<(ChunkId, Vec<u8>)> {
    let mut rng = Rng(seed);
    (0..40)
        .map(|i| {
            let len = [1024usize, 4096, 512, 6000][i % 4];
            let mut d = vec![0u8; len];
            match i % 5 {
                0 => {} // zero chunk
                1 | 2 => {
                    // compressible
                    for (j, b) in d.iter_mut().enumerate() {
                        *b = ((j / 64) as u8).wrapping_add(i as u8);
                    }
                    d[0] = i as u8 + 1;
                }
                _ => rng.fill(&mut d),
            }
            (ChunkId::of(&d), d)
        })
        .collect()
}

/// A formatted image whose journal is already 3/4 full, so that the
/// workloads reach checkpoints and superblock switches early.
fn fresh_image() -> Vec<u8> {
    let mem = Arc::new(MemStorage::new(DEVICE));
    let c = Cache::create(Box::new(mem.clone()), CreateOptions::default()).unwrap();
    for i in 0..12u8 {
        let id = c.insert_data(&[i + 1; 100]).unwrap();
        c.remove(&id).unwrap();
        c.sync().unwrap();
    }
    drop(c);
    mem.snapshot()
}

/// What the workload has been told is durable, and what may or may not be.
#[derive(Default)]
struct PinModel {
    committed: HashMap<String, Option<Vec<ChunkId>>>,
    since: HashMap<String, Vec<Option<Vec<ChunkId>>>>,
}

fn run_workload(
    cache: &Cache,
    rng: &mut Rng,
    pool: &[(ChunkId, Vec<u8>)],
    pins: &mut PinModel,
    ops: usize,
) {
    let names = ["app-a@1", "app-a@2", "app-b@7"];
    for _ in 0..ops {
        let r = rng.below(100);
        let res: Result<(), Error> = match r {
            0..=44 => {
                let (id, d) = &pool[rng.below(pool.len() as u64) as usize];
                match cache.insert(id, d) {
                    Err(Error::Full { .. }) => Ok(()),
                    x => x,
                }
            }
            45..=59 => {
                let (id, d) = &pool[rng.below(pool.len() as u64) as usize];
                match cache.read(id) {
                    Ok(Some(got)) => {
                        assert_eq!(&got, d, "read returned wrong bytes");
                        Ok(())
                    }
                    Ok(None) => Ok(()),
                    Err(e) => Err(e),
                }
            }
            60..=64 => cache.remove(&pool[rng.below(pool.len() as u64) as usize].0),
            65..=74 => {
                let name = names[rng.below(3) as usize];
                let n = rng.below(8) as usize;
                let ids: Vec<ChunkId> = (0..n)
                    .map(|_| pool[rng.below(pool.len() as u64) as usize].0)
                    .collect();
                let r = cache.pin(name, &ids);
                if r.is_ok() {
                    pins.since.entry(name.into()).or_default().push(Some(ids));
                }
                r
            }
            75..=79 => {
                let name = names[rng.below(3) as usize];
                let r = cache.unpin(name);
                if r.is_ok() {
                    pins.since.entry(name.into()).or_default().push(None);
                }
                r
            }
            _ => {
                let r = cache.sync();
                if r.is_ok() {
                    for (name, vals) in pins.since.drain() {
                        if let Some(last) = vals.last() {
                            pins.committed.insert(name, last.clone());
                        }
                    }
                }
                r
            }
        };
        if res.is_err() {
            return; // the power is out
        }
    }
}

fn check(cache: &Cache, pool: &[(ChunkId, Vec<u8>)], pins: &PinModel, ctx: &str) {
    let known: HashMap<ChunkId, &Vec<u8>> = pool.iter().map(|(i, d)| (*i, d)).collect();
    for id in cache.chunk_ids() {
        if let Some(got) = cache.read(&id).unwrap() {
            assert_eq!(
                ChunkId::of(&got),
                id,
                "{ctx}: chunk does not hash to its id"
            );
            assert_eq!(Some(&&got), known.get(&id), "{ctx}: unknown chunk content");
        }
    }
    let now: HashMap<String, Vec<ChunkId>> = cache.pins().into_iter().collect();
    for name in ["app-a@1", "app-a@2", "app-b@7"] {
        let got = now.get(name).cloned();
        let committed = pins.committed.get(name).cloned().unwrap_or(None);
        let allowed: Vec<Option<Vec<ChunkId>>> = std::iter::once(committed)
            .chain(pins.since.get(name).cloned().unwrap_or_default())
            .collect();
        assert!(
            allowed.contains(&got),
            "{ctx}: pin {name} = {got:?}, allowed {allowed:?}"
        );
    }
}

fn iterations(default: u64) -> u64 {
    std::env::var("CACHEFS_CRASH_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[test]
fn crash_anywhere_in_chunk_and_pin_workload() {
    let pool = pool(42);
    let base = fresh_image();
    let iters = iterations(1200);
    let mut cuts_hit = 0;
    let mut recovered_after_checkpoint = 0;
    for seed in 0..iters {
        let mut rng = Rng(seed * 7919 + 1);
        let mode = if seed % 2 == 0 {
            CutMode::DropUnflushed
        } else {
            CutMode::Reorder
        };
        let cut = rng.below(110);
        let dev = FaultStorage::new(base.clone(), Some(cut), mode, seed);
        let dev = std::sync::Arc::new(dev);
        let cache = Cache::open(Box::new(dev.clone())).expect("open fresh");
        let mut pins = PinModel::default();
        run_workload(&cache, &mut rng, &pool, &mut pins, 120);
        drop(cache);
        if dev.is_cut() {
            cuts_hit += 1;
        }
        let img = dev.durable_image();
        let ctx = format!("seed {seed} cut {cut} {mode:?}");
        let cache = Cache::open(Box::new(MemStorage::from_vec(img)))
            .unwrap_or_else(|e| panic!("{ctx}: reopen failed: {e}"));
        check(&cache, &pool, &pins, &ctx);
        if cache.stats().superblock_seq > 1 {
            recovered_after_checkpoint += 1;
        }
        // The recovered cache must keep working: more changes, sync, reopen.
        let mut pins2 = PinModel {
            committed: HashMap::new(),
            since: HashMap::new(),
        };
        for (k, v) in cache.pins() {
            pins2.committed.insert(k, Some(v));
        }
        run_workload(&cache, &mut rng, &pool, &mut pins2, 30);
        cache.sync().unwrap();
        for (name, vals) in pins2.since.drain() {
            if let Some(last) = vals.last() {
                pins2.committed.insert(name, last.clone());
            }
        }
        check(&cache, &pool, &pins2, &format!("{ctx} (after more work)"));
    }
    assert!(
        cuts_hit as u64 > iters / 2,
        "too few runs hit their cut point: {cuts_hit}"
    );
    // The journal fills up in these workloads: checkpoints and superblock
    // switches are among the cut points, not just journal appends.
    assert!(
        recovered_after_checkpoint as u64 > iters / 10,
        "checkpoints rarely reached: {recovered_after_checkpoint}"
    );
    eprintln!("{iters} cut points, {cuts_hit} hit, {recovered_after_checkpoint} recovered from a later checkpoint");
}
