//! Functional tests of the public API on real files and in memory.

use cachefs::fault::Rng;
use cachefs::{
    Cache, ChunkId, ChunkList, CreateOptions, DirSource, DiskView, Error, FileStorage, MemSource,
    MemStorage, NoSource, Overlay, Storage,
};
use std::path::PathBuf;
use std::sync::Arc;

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("cachefs-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn random(rng: &mut Rng, n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    rng.fill(&mut v);
    v
}

fn mem_cache(size: usize) -> (Arc<MemStorage>, Cache) {
    let m = Arc::new(MemStorage::new(size));
    let c = Cache::create(Box::new(m.clone()), CreateOptions::default()).unwrap();
    (m, c)
}

#[test]
fn create_open_refuse_foreign_and_unknown_version() {
    let dir = tmp("refuse");
    let path = dir.join("dev");
    // A file full of something else.
    std::fs::write(&path, vec![0x5A; 4 << 20]).unwrap();
    let st = FileStorage::open(&path).unwrap();
    assert!(matches!(Cache::open(Box::new(st)), Err(Error::NotCacheFs)));
    let st = FileStorage::open(&path).unwrap();
    assert!(matches!(
        Cache::create(Box::new(st), CreateOptions::default()),
        Err(Error::DeviceNotEmpty)
    ));
    let st = FileStorage::open(&path).unwrap();
    let c = Cache::create(Box::new(st), CreateOptions { force: true }).unwrap();
    let id = c.insert_data(b"hello, cache").unwrap();
    c.sync().unwrap();
    drop(c);
    // An existing cache is "something" too.
    let st = FileStorage::open(&path).unwrap();
    assert!(matches!(
        Cache::create(Box::new(st), CreateOptions::default()),
        Err(Error::DeviceNotEmpty)
    ));
    let c = Cache::open(Box::new(FileStorage::open(&path).unwrap())).unwrap();
    assert_eq!(c.read(&id).unwrap().unwrap(), b"hello, cache");
    drop(c);
    // A future format version is refused with a clear error.
    let st = FileStorage::open(&path).unwrap();
    for slot in 0..2u64 {
        let mut b = [0u8; 4];
        st.read_at(slot * 4096 + 8, &mut b).unwrap();
        st.write_at(slot * 4096 + 8, &9u32.to_le_bytes()).unwrap();
    }
    assert!(matches!(
        Cache::open(Box::new(st)),
        Err(Error::UnsupportedVersion(9, 1))
    ));
    let small = MemStorage::new(100 * 1024);
    assert!(matches!(
        Cache::create(Box::new(small), CreateOptions::default()),
        Err(Error::TooSmall(..))
    ));
}

#[test]
fn chunks_compress_zero_and_survive_reopen() {
    let (m, c) = mem_cache(4 << 20);
    let mut rng = Rng(1);
    let rnd = random(&mut rng, 65536);
    let text: Vec<u8> = (0..65536u32)
        .map(|i| b"the quick brown fox "[(i % 20) as usize])
        .collect();
    let zero = vec![0u8; 65536];
    let (a, b, z) = (
        c.insert_data(&rnd).unwrap(),
        c.insert_data(&text).unwrap(),
        c.insert_data(&zero).unwrap(),
    );
    let s = c.stats();
    assert_eq!(s.chunks, 2, "zero chunk stored as nothing");
    assert_eq!(s.compressed_chunks, 1);
    assert!(
        s.stored_bytes < 65536 + 65536 / 4,
        "text chunk compressed: {}",
        s.stored_bytes
    );
    assert!(c.contains(&a) && c.contains(&b) && c.contains(&z));
    let mut part = [0u8; 100];
    assert!(c.read_range(&b, 1000, &mut part).unwrap());
    assert_eq!(&part[..], &text[1000..1100]);
    c.sync().unwrap();
    drop(c);
    let c = Cache::open(Box::new(m.clone())).unwrap();
    assert_eq!(c.read(&a).unwrap().unwrap(), rnd);
    assert_eq!(c.read(&b).unwrap().unwrap(), text);
    assert_eq!(c.read(&z).unwrap().unwrap(), zero);
    c.remove(&a).unwrap();
    assert!(!c.contains(&a));
    assert_eq!(c.read(&a).unwrap(), None);
    c.checkpoint().unwrap();
    drop(c);
    let c = Cache::open(Box::new(m)).unwrap();
    assert!(!c.contains(&a) && c.contains(&b));
}

#[test]
fn rotted_record_is_detected_and_never_returned() {
    let (m, c) = mem_cache(4 << 20);
    let mut rng = Rng(2);
    let d = random(&mut rng, 8192);
    let id = c.insert_data(&d).unwrap();
    c.sync().unwrap();
    drop(c);
    // Find the record in the arena and flip one bit.
    let img = m.snapshot();
    let pos = img.windows(64).position(|w| w == &d[..64]).unwrap();
    m.write_at(pos as u64 + 100, &[img[pos + 100] ^ 1]).unwrap();
    let c = Cache::open(Box::new(m)).unwrap();
    assert!(c.contains(&id));
    assert_eq!(
        c.read(&id).unwrap(),
        None,
        "damaged chunk must read as missing"
    );
    assert!(!c.contains(&id), "damaged chunk is dropped");
}

#[test]
fn lru_eviction_spares_pins_and_recent_chunks() {
    // ~ 50 blocks of arena.
    let (m, c) = mem_cache(480 * 1024);
    let arena = c.stats().arena_bytes as usize / 4096;
    let mut rng = Rng(3);
    let chunks: Vec<Vec<u8>> = (0..arena * 2).map(|_| random(&mut rng, 4096)).collect();
    let ids: Vec<ChunkId> = chunks.iter().map(|d| ChunkId::of(d)).collect();
    for d in &chunks[..arena] {
        c.insert_data(d).unwrap();
    }
    c.pin("app@1", &ids[..3]).unwrap();
    assert!(c.read(&ids[5]).unwrap().is_some()); // recently used
    for d in &chunks[arena..arena + arena / 2] {
        c.insert_data(d).unwrap();
    }
    assert!(
        ids[..3].iter().all(|i| c.contains(i)),
        "pinned chunks evicted"
    );
    assert!(
        c.contains(&ids[5]),
        "recently read chunk evicted before older ones"
    );
    assert!(!c.contains(&ids[3]), "oldest unpinned chunk should be gone");
    // Pins survive a restart.
    c.sync().unwrap();
    drop(c);
    let c = Cache::open(Box::new(m)).unwrap();
    assert_eq!(c.pins(), vec![("app@1".to_string(), ids[..3].to_vec())]);
    // Everything pinned: a clear error.
    let present: Vec<ChunkId> = c.chunk_ids();
    c.pin("all", &present).unwrap();
    let err = c.insert_data(&chunks[arena * 2 - 1]);
    assert!(matches!(err, Err(Error::Full { .. })), "{err:?}");
    c.unpin("all").unwrap();
    c.insert_data(&chunks[arena * 2 - 1]).unwrap();
}

#[test]
fn view_reads_any_range_and_fetches_verified_chunks() {
    let dir = tmp("view");
    let chunks_dir = dir.join("chunks");
    std::fs::create_dir_all(&chunks_dir).unwrap();
    let mut rng = Rng(4);
    let cs = 16384usize;
    let size = cs * 5 + 4096; // short last chunk
    let mut disk = random(&mut rng, size);
    disk[cs..2 * cs].fill(0);
    let ids: Vec<ChunkId> = disk
        .chunks(cs)
        .map(|c| {
            let id = ChunkId::of(c);
            std::fs::write(chunks_dir.join(id.to_string()), c).unwrap();
            id
        })
        .collect();
    let st = FileStorage::create_file(&dir.join("dev"), 8 << 20).unwrap();
    let cache = Arc::new(Cache::create(Box::new(st), CreateOptions::default()).unwrap());
    let view = DiskView::new(
        cache.clone(),
        ChunkList::of_ids(ids.clone(), cs as u32, size as u64),
        Arc::new(DirSource {
            dir: chunks_dir.clone(),
        }),
    )
    .unwrap();
    for _ in 0..300 {
        let off = rng.below(size as u64) as usize;
        let len = 1 + rng.below((size - off).min(40000) as u64) as usize;
        let mut buf = vec![0u8; len];
        view.read_at(off as u64, &mut buf).unwrap();
        assert_eq!(buf, disk[off..off + len]);
    }
    assert!(view.read_at(size as u64 - 1, &mut [0u8; 2]).is_err());
    assert!(view.stats().misses >= 1 && view.stats().hits > 0);
    // A source that lies is caught.
    std::fs::write(chunks_dir.join(ids[3].to_string()), vec![1u8; cs]).unwrap();
    cache.remove(&ids[3]).unwrap();
    let err = view.read_at(3 * cs as u64, &mut [0u8; 10]);
    assert!(matches!(err, Err(Error::HashMismatch(_))), "{err:?}");
    assert!(!cache.contains(&ids[3]));
    // Offline: a miss is an error, hits still work.
    let off = DiskView::new(
        cache.clone(),
        ChunkList::of_ids(ids.clone(), cs as u32, size as u64),
        Arc::new(NoSource),
    )
    .unwrap();
    assert!(off.read_at(3 * cs as u64, &mut [0u8; 10]).is_err());
    let mut b = vec![0u8; 10];
    off.read_at(0, &mut b).unwrap();
    assert_eq!(b, disk[..10]);
    assert!(DiskView::new(
        cache,
        ChunkList::of_ids(ids[..2].to_vec(), cs as u32, size as u64),
        Arc::new(NoSource)
    )
    .is_err());
}

/// A source that is slow, like a network.
struct SlowSource(MemSource);
impl cachefs::ChunkSource for SlowSource {
    fn fetch(&self, id: &ChunkId, len: usize) -> Result<Vec<u8>, cachefs::SourceError> {
        std::thread::sleep(std::time::Duration::from_millis(2));
        self.0.fetch(id, len)
    }
}

#[test]
fn concurrent_readers_while_a_filler_fills() {
    let mut rng = Rng(5);
    let cs = 65536usize;
    let n = 48;
    let mut disk = random(&mut rng, cs * n);
    for c in disk.chunks_mut(cs).step_by(3) {
        c[..cs / 2].fill(7); // some compressible chunks
    }
    let src = Arc::new(SlowSource(MemSource::default()));
    let ids: Vec<ChunkId> = disk.chunks(cs).map(|c| src.0.add(c.to_vec())).collect();
    let (_, cache) = mem_cache(16 << 20);
    let cache = Arc::new(cache);
    let view = Arc::new(
        DiskView::new(
            cache.clone(),
            ChunkList::of_ids(ids, cs as u32, disk.len() as u64),
            src.clone(),
        )
        .unwrap(),
    );
    let disk = Arc::new(disk);
    let mut handles = Vec::new();
    {
        let view = view.clone();
        handles.push(std::thread::spawn(move || {
            for i in 0..n {
                view.prefetch(i).unwrap();
            }
        }));
    }
    for t in 0..3u64 {
        let (view, disk) = (view.clone(), disk.clone());
        handles.push(std::thread::spawn(move || {
            let mut rng = Rng(100 + t);
            for _ in 0..200 {
                let off = rng.below(disk.len() as u64 - 4096) as usize;
                let mut buf = vec![0u8; 4096];
                view.read_at(off as u64, &mut buf).unwrap();
                assert_eq!(buf, disk[off..off + 4096]);
            }
        }));
    }
    for h in handles {
        h.join().unwrap();
    }
    assert_eq!(cache.stats().chunks, n as u64);
    // Concurrent misses of the same chunk share fetches: never more than one per chunk.
    assert!(src.0.fetches.load(std::sync::atomic::Ordering::Relaxed) <= n as u64);
}

fn user_setup(cs: usize, n: usize) -> (Arc<MemSource>, Vec<u8>, Vec<ChunkId>) {
    let mut rng = Rng(6);
    let disk = random(&mut rng, cs * n);
    let src = Arc::new(MemSource::default());
    let ids = disk.chunks(cs).map(|c| src.add(c.to_vec())).collect();
    (src, disk, ids)
}

#[test]
fn system_overlay_is_discarded_user_overlay_persists_and_writes_back() {
    let cs = 16384;
    let (src, mut disk, ids) = user_setup(cs, 8);
    let size = disk.len() as u64;
    let m = Arc::new(MemStorage::new(8 << 20));
    let cache = Arc::new(Cache::create(Box::new(m.clone()), CreateOptions::default()).unwrap());
    let used0 = cache.stats().used_bytes;

    // System disk: writes visible, gone after close, space returned.
    let view = Arc::new(
        DiskView::new(
            cache.clone(),
            ChunkList::of_ids(ids.clone(), cs as u32, size),
            src.clone(),
        )
        .unwrap(),
    );
    let sys = Overlay::system(view.clone()).unwrap();
    sys.write_at(1024, &[9u8; 2048]).unwrap();
    assert!(
        sys.write_at(1000, &[9u8; 512]).is_err(),
        "unaligned write accepted"
    );
    let mut b = vec![0u8; 4096];
    sys.read_at(0, &mut b).unwrap();
    assert_eq!(&b[1024..3072], &[9u8; 2048][..]);
    assert_eq!(&b[..1024], &disk[..1024]);
    sys.close().unwrap();
    view.read_at(0, &mut b).unwrap();
    assert_eq!(b, disk[..4096]);
    let used_chunks = cache.stats().stored_bytes;
    assert!(cache.stats().used_bytes <= used0 + used_chunks.div_ceil(4096) * 4096 + 65536);

    // User disk.
    let ov = Overlay::user(view.clone(), "alice/home").unwrap();
    assert!(
        Overlay::user(view.clone(), "alice/home").is_err(),
        "second handle on one overlay"
    );
    ov.write_at(cs as u64 * 2 + 512, &[1u8; 512]).unwrap();
    ov.write_at(cs as u64 * 5, &[2u8; 8192]).unwrap();
    ov.flush().unwrap();
    ov.write_at(0, &[3u8; 512]).unwrap(); // not flushed: may be lost
    disk[cs * 2 + 512..cs * 2 + 1024].fill(1);
    disk[cs * 5..cs * 5 + 8192].fill(2);
    drop(ov);
    drop(view);
    drop(cache);
    let cache = Arc::new(Cache::open(Box::new(m.clone())).unwrap());
    let view = Arc::new(
        DiskView::new(
            cache.clone(),
            ChunkList::of_ids(ids.clone(), cs as u32, size),
            src.clone(),
        )
        .unwrap(),
    );
    let ov = Overlay::user(view.clone(), "alice/home").unwrap();
    let mut all = vec![0u8; size as usize];
    ov.read_at(0, &mut all).unwrap();
    assert_eq!(
        all, disk,
        "flushed writes survive a restart, the unflushed one is gone"
    );
    assert_eq!(ov.changed_chunks(), vec![2, 5]);
    ov.write_at(0, &disk[..512]).unwrap();

    // Write-back: upload changed chunks, move to the new list.
    let wb = ov.prepare_write_back().unwrap();
    assert_eq!(wb.changed.len(), 3);
    for (idx, id, data) in &wb.changed {
        assert_eq!(data[..], disk[idx * cs..(idx + 1) * cs]);
        assert_eq!(*id, ChunkId::of(data));
        src.add(data.clone());
    }
    let new_list = wb.chunks.clone();
    ov.finish_write_back(wb).unwrap();
    assert!(ov.changed_chunks().is_empty());
    assert_eq!(*view.chunk_list(), new_list);
    ov.read_at(0, &mut all).unwrap();
    assert_eq!(all, disk);
    drop(ov);
    drop(view);
    drop(cache);
    // After restart the overlay only opens against the new base.
    let cache = Arc::new(Cache::open(Box::new(m)).unwrap());
    let old = Arc::new(
        DiskView::new(
            cache.clone(),
            ChunkList::of_ids(ids, cs as u32, size),
            src.clone(),
        )
        .unwrap(),
    );
    assert!(matches!(
        Overlay::user(old, "alice/home"),
        Err(Error::Invalid(_))
    ));
    let view = Arc::new(DiskView::new(cache.clone(), new_list, src).unwrap());
    let ov = Overlay::user(view, "alice/home").unwrap();
    ov.read_at(0, &mut all).unwrap();
    assert_eq!(all, disk);
    Overlay::delete_user(&cache, "alice/home").unwrap();
    assert_eq!(cache.overlay_base_digest("alice/home"), None);
}

#[test]
fn readers_never_see_wrong_bytes_while_eviction_reuses_blocks() {
    // A cache far smaller than the image: chunks are evicted and their
    // blocks reused while other threads read through the view.
    let mut rng = Rng(8);
    let cs = 16384usize;
    let n = 96; // 1.5 MiB image
    let mut disk = random(&mut rng, cs * n);
    for c in disk.chunks_mut(cs).step_by(2) {
        c[..cs / 2].fill(3); // compressible
    }
    let src = Arc::new(MemSource::default());
    let ids: Vec<ChunkId> = disk.chunks(cs).map(|c| src.add(c.to_vec())).collect();
    let (_, cache) = mem_cache(600 * 1024); // ~ 400 KiB arena
    let cache = Arc::new(cache);
    let view = Arc::new(
        DiskView::new(
            cache.clone(),
            ChunkList::of_ids(ids, cs as u32, disk.len() as u64),
            src,
        )
        .unwrap(),
    );
    let disk = Arc::new(disk);
    let hs: Vec<_> = (0..3u64)
        .map(|t| {
            let (view, disk) = (view.clone(), disk.clone());
            std::thread::spawn(move || {
                let mut rng = Rng(200 + t);
                for _ in 0..400 {
                    let off = rng.below(disk.len() as u64 - 9000) as usize;
                    let len = 1 + rng.below(9000) as usize;
                    let mut buf = vec![0u8; len];
                    view.read_at(off as u64, &mut buf).unwrap();
                    assert!(buf == disk[off..off + len], "wrong bytes at {off}+{len}");
                }
            })
        })
        .collect();
    let filler = {
        let cache = cache.clone();
        std::thread::spawn(move || {
            let mut rng = Rng(300);
            for _ in 0..300 {
                let d = random(&mut rng, 8192);
                cache.insert_data(&d).unwrap();
                if rng.chance(10) {
                    cache.sync().unwrap();
                }
            }
        })
    };
    for h in hs {
        h.join().unwrap();
    }
    filler.join().unwrap();
    assert!(cache.stats().used_bytes <= cache.stats().arena_bytes);
}

#[test]
fn a_wrong_id_is_never_served() {
    let (_, c) = mem_cache(4 << 20);
    let wrong = ChunkId::of(b"something else");
    assert!(matches!(
        c.insert(&wrong, &[0u8; 4096]),
        Err(Error::HashMismatch(_))
    ));
    assert!(!c.contains(&wrong));
    // Non-zero data under a wrong id is caught on its first read.
    c.insert(&wrong, &[1u8; 4096]).unwrap();
    assert_eq!(c.read(&wrong).unwrap(), None);
    assert!(!c.contains(&wrong));
}

#[test]
fn large_device_accepts_large_pins() {
    // 100 GiB, sparse: past the size where the checkpoint slot stops growing.
    let dir = tmp("large");
    let path = dir.join("big.img");
    let st = FileStorage::create_file(&path, 100 << 30).unwrap();
    let c = Cache::create(Box::new(st), CreateOptions::default()).unwrap();
    // A 10 GiB appliance at 64 KiB chunks: 163 840 ids.
    let ids: Vec<ChunkId> = (0..163_840u32)
        .map(|i| ChunkId::of(&i.to_le_bytes()))
        .collect();
    c.pin("big-appliance@1", &ids).unwrap();
    let id = c.insert_data(&[7u8; 5000]).unwrap();
    c.sync().unwrap();
    drop(c);
    let c = Cache::open(Box::new(FileStorage::open(&path).unwrap())).unwrap();
    assert_eq!(c.pins()[0].1.len(), ids.len());
    assert!(c.read(&id).unwrap().is_some());
    drop(c);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn frames_that_arrived_are_kept_where_they_halve_and_raw_chunks_are_stored_as_they_are() {
    let (_, cache) = mem_cache(8 << 20);
    // Half zeros (frames that shrink to almost nothing), half text-like bytes that lz4
    // shrinks to about 0.6 (kept plain under the halving rule).
    let mut rng = Rng(9);
    let mut data = vec![0u8; 65536];
    for b in data[32768..].iter_mut() {
        *b = b"abcdefghijklmnop"[rng.below(16) as usize];
    }
    let arrived = chunk::frames::compress(&data).expect("the chunk compresses");
    let id = ChunkId::of(&data);
    cache.insert_framed(&id, &data, &arrived).unwrap();
    assert_eq!(cache.read(&id).unwrap().as_deref(), Some(&data[..]));
    let stats = cache.stats();
    assert_eq!(stats.compressed_chunks, 1);
    assert!(
        stats.stored_bytes < arrived.len() as u64 + 32768 + 4096,
        "zero frames kept compressed: {} bytes",
        stats.stored_bytes
    );
    let mut buf = vec![0u8; 4096];
    assert!(cache.read_range(&id, 40000, &mut buf).unwrap());
    assert_eq!(&buf[..], &data[40000..44096]);

    // A raw chunk is stored as it is, without trying to compress it.
    let text = vec![b'a'; 65536];
    let raw_id = ChunkId::of(&text);
    cache.insert_raw(&raw_id, &text).unwrap();
    assert_eq!(cache.stats().compressed_chunks, 1);
    assert_eq!(cache.read(&raw_id).unwrap().as_deref(), Some(&text[..]));
    // A frame table that does not fit is not trusted: the plaintext is stored.
    let other = vec![7u8; 65536];
    let other_id = ChunkId::of(&other);
    cache
        .insert_framed(&other_id, &other, &arrived[..10])
        .unwrap();
    assert_eq!(cache.read(&other_id).unwrap().as_deref(), Some(&other[..]));
}
