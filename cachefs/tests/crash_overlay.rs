//! Crash test for user-disk overlays: random 512-byte-granular writes,
//! flushes, write-backs and chunk fills (which evict), with the power cut at
//! a random write or flush. After every cut: the cache opens, the overlay
//! opens against the base its durable state names, and every sector holds
//! either what it held at the last completed flush or something written
//! after it; sectors not written since that flush hold exactly their flushed
//! contents. Chunks read back hash to their ids.

use cachefs::fault::{CutMode, FaultStorage, Rng};
use cachefs::{
    Cache, ChunkId, ChunkList, CreateOptions, DiskView, Error, MemSource, MemStorage, Overlay,
};
use std::sync::Arc;

const DEVICE: usize = 320 * 1024;
const CHUNK: u32 = 4096;
const NCHUNKS: usize = 6;
const DISK: u64 = CHUNK as u64 * NCHUNKS as u64;
const SECTOR: usize = 512;
const NAME: &str = "user-disk";

struct Model {
    /// Disk content at the last completed flush.
    flushed: Vec<u8>,
    /// Current content as the overlay should show it.
    current: Vec<u8>,
    /// Per sector: contents written since the last completed flush.
    since: Vec<Vec<Vec<u8>>>,
}

impl Model {
    fn write(&mut self, off: usize, data: &[u8]) {
        self.current[off..off + data.len()].copy_from_slice(data);
        for (i, s) in data.chunks(SECTOR).enumerate() {
            self.since[off / SECTOR + i].push(s.to_vec());
        }
    }
    fn flushed(&mut self) {
        self.flushed = self.current.clone();
        for s in &mut self.since {
            s.clear();
        }
    }
}

fn setup(source: &Arc<MemSource>, base: &[u8]) -> (Vec<u8>, Vec<ChunkId>) {
    let ids: Vec<ChunkId> = base
        .chunks(CHUNK as usize)
        .map(|c| source.add(c.to_vec()))
        .collect();
    let mem = Arc::new(MemStorage::new(DEVICE));
    let cache = Arc::new(Cache::create(Box::new(mem.clone()), CreateOptions::default()).unwrap());
    let view = Arc::new(
        DiskView::new(
            cache.clone(),
            ChunkList::of_ids(ids.clone(), CHUNK, DISK),
            source.clone(),
        )
        .unwrap(),
    );
    let ov = Overlay::user(view, NAME).unwrap();
    ov.close().unwrap();
    // Fill 3/4 of the journal, so that checkpoints come early in the workloads.
    for i in 0..11u8 {
        let id = cache.insert_data(&[i + 1; 100]).unwrap();
        cache.remove(&id).unwrap();
        cache.sync().unwrap();
    }
    drop(cache);
    (mem.snapshot(), ids)
}

fn iterations(default: u64) -> u64 {
    std::env::var("CACHEFS_CRASH_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[test]
fn crash_anywhere_in_overlay_workload() {
    let mut rng = Rng(99);
    let mut base = vec![0u8; DISK as usize];
    rng.fill(&mut base);
    base[CHUNK as usize..2 * CHUNK as usize].fill(0); // one zero chunk
    let source = Arc::new(MemSource::default());
    let (image, ids0) = setup(&source, &base);
    // Filler chunks, to put eviction pressure on the arena.
    let fillers: Vec<Vec<u8>> = (0..30)
        .map(|i| {
            let mut d = vec![0u8; 4096 * (1 + i % 3)];
            rng.fill(&mut d);
            d
        })
        .collect();
    let iters = iterations(1000);
    let mut cuts = 0;
    let mut after_checkpoint = 0;
    for seed in 0..iters {
        let mut rng = Rng(seed * 104729 + 7);
        let mode = if seed % 2 == 0 {
            CutMode::DropUnflushed
        } else {
            CutMode::Reorder
        };
        let cut = rng.below(90);
        let dev = Arc::new(FaultStorage::new(image.clone(), Some(cut), mode, seed));
        let ctx = format!("seed {seed} cut {cut} {mode:?}");
        let mut model = Model {
            flushed: base.clone(),
            current: base.clone(),
            since: vec![Vec::new(); DISK as usize / SECTOR],
        };
        let mut lists = vec![ChunkList::of_ids(ids0.clone(), CHUNK, DISK)];
        {
            let cache = Arc::new(Cache::open(Box::new(dev.clone())).expect("open"));
            let view = Arc::new(
                DiskView::new(
                    cache.clone(),
                    ChunkList::of_ids(ids0.clone(), CHUNK, DISK),
                    source.clone(),
                )
                .unwrap(),
            );
            let ov = Overlay::user(view.clone(), NAME).unwrap();
            for _ in 0..60 {
                let r = rng.below(100);
                let res: Result<(), Error> = match r {
                    0..=54 => {
                        let sectors = 1 + rng.below(12) as usize;
                        let off = rng.below((DISK as usize / SECTOR - sectors) as u64 + 1) as usize
                            * SECTOR;
                        let mut data = vec![0u8; sectors * SECTOR];
                        rng.fill(&mut data);
                        model.write(off, &data); // before: a cut mid-write may land any of it
                        ov.write_at(off as u64, &data)
                    }
                    55..=69 => {
                        let off = rng.below(DISK - 100);
                        let len = 1 + rng.below(99) as usize;
                        let mut buf = vec![0u8; len];
                        ov.read_at(off, &mut buf).map(|()| {
                            assert_eq!(
                                buf,
                                model.current[off as usize..off as usize + len],
                                "{ctx}: live read"
                            );
                        })
                    }
                    70..=81 => ov.flush().map(|()| model.flushed()),
                    82..=91 => {
                        let d = &fillers[rng.below(fillers.len() as u64) as usize];
                        match cache.insert(&ChunkId::of(d), d) {
                            Err(Error::Full { .. }) => Ok(()),
                            x => x,
                        }
                    }
                    _ => match ov.prepare_write_back() {
                        Ok(wb) => {
                            model.flushed();
                            let new = wb.chunks.clone();
                            for (_, _, d) in &wb.changed {
                                source.add(d.clone()); // "uploaded"
                            }
                            lists.push(new);
                            ov.finish_write_back(wb)
                        }
                        Err(e) => Err(e),
                    },
                };
                if let Err(e) = res {
                    assert!(dev.is_cut(), "{ctx}: error without a power cut: {e}");
                    break;
                }
            }
        }
        if dev.is_cut() {
            cuts += 1;
        }
        // Reboot.
        let cache = Arc::new(
            Cache::open(Box::new(MemStorage::from_vec(dev.durable_image())))
                .unwrap_or_else(|e| panic!("{ctx}: reopen: {e}")),
        );
        if cache.stats().superblock_seq > 1 {
            after_checkpoint += 1;
        }
        let digest = cache
            .overlay_base_digest(NAME)
            .unwrap_or_else(|| panic!("{ctx}: overlay lost"));
        let list = lists
            .iter()
            .find(|l| l.digest() == digest)
            .unwrap_or_else(|| panic!("{ctx}: overlay names an unknown base"))
            .clone();
        let view = Arc::new(DiskView::new(cache.clone(), list, source.clone()).unwrap());
        let ov = Overlay::user(view, NAME).unwrap_or_else(|e| panic!("{ctx}: open overlay: {e}"));
        let mut disk = vec![0u8; DISK as usize];
        ov.read_at(0, &mut disk)
            .unwrap_or_else(|e| panic!("{ctx}: read after crash: {e}"));
        for s in 0..DISK as usize / SECTOR {
            let got = &disk[s * SECTOR..(s + 1) * SECTOR];
            let ok = got == &model.flushed[s * SECTOR..(s + 1) * SECTOR]
                || model.since[s].iter().any(|c| c.as_slice() == got);
            assert!(
                ok,
                "{ctx}: sector {s} holds bytes never acknowledged nor written since"
            );
        }
        for id in cache.chunk_ids() {
            if let Some(d) = cache.read(&id).unwrap() {
                assert_eq!(ChunkId::of(&d), id, "{ctx}");
            }
        }
        // Still writable: write, flush, reopen, read back.
        ov.write_at(512, &[0xAB; 1024]).unwrap();
        ov.flush().unwrap();
        let mut b = vec![0u8; 1024];
        ov.read_at(512, &mut b).unwrap();
        assert_eq!(b, vec![0xAB; 1024], "{ctx}");
    }
    assert!(
        cuts as u64 > iters / 2,
        "too few runs hit their cut: {cuts}"
    );
    assert!(
        after_checkpoint as u64 > iters / 10,
        "checkpoints rarely reached: {after_checkpoint}"
    );
    eprintln!(
        "{iters} cut points, {cuts} hit, {after_checkpoint} recovered from a later checkpoint"
    );
}
