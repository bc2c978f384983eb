//! Opens a valid cache image patched by the fuzz input, then uses it.
//! Input: a u32 length to truncate to (0 = keep), then (u32 offset, u8 value)
//! patches. Garbage must give errors, never a panic or a hang.
#![no_main]
use cachefs::{Cache, ChunkId, CreateOptions, DiskView, MemSource, MemStorage, Overlay};
use libfuzzer_sys::fuzz_target;
use std::sync::{Arc, OnceLock};

const DEVICE: usize = 400 * 1024;

fn base() -> &'static (Vec<u8>, Vec<ChunkId>) {
    static B: OnceLock<(Vec<u8>, Vec<ChunkId>)> = OnceLock::new();
    B.get_or_init(|| {
        let m = Arc::new(MemStorage::new(DEVICE));
        let cache = Arc::new(Cache::create(Box::new(m.clone()), CreateOptions::default()).unwrap());
        let src = Arc::new(MemSource::default());
        let mut ids = Vec::new();
        for i in 0..8u8 {
            let d: Vec<u8> = (0..4096u32).map(|j| (j as u8).wrapping_mul(i) ^ (j >> 7) as u8).collect();
            ids.push(src.add(d.clone()));
            cache.insert(&ChunkId::of(&d), &d).unwrap();
        }
        cache.pin("p", &ids[..3]).unwrap();
        cache.checkpoint().unwrap();
        let view = Arc::new(DiskView::new(cache.clone(), ChunkList::of_ids(ids.clone(), 4096, 4096 * 8), src).unwrap());
        let ov = Overlay::user(view, "u").unwrap();
        ov.write_at(512, &[1u8; 1024]).unwrap();
        ov.flush().unwrap();
        cache.remove(&ids[7]).unwrap();
        cache.sync().unwrap();
        drop(ov);
        drop(cache);
        (m.snapshot(), ids)
    })
}

fuzz_target!(|data: &[u8]| {
    let (img, ids) = base();
    let mut img = img.clone();
    if data.len() < 4 {
        return;
    }
    let trunc = u32::from_le_bytes([data[0], data[1], data[2], data[3]]) as usize;
    for p in data[4..].chunks_exact(5) {
        let off = u32::from_le_bytes([p[0], p[1], p[2], p[3]]) as usize % img.len();
        img[off] = p[4];
    }
    if trunc != 0 {
        img.truncate(trunc % img.len());
    }
    let Ok(cache) = Cache::open(Box::new(MemStorage::from_vec(img))) else { return };
    let cache = Arc::new(cache);
    for id in cache.chunk_ids().iter().chain(ids.iter()) {
        if let Ok(Some(d)) = cache.read(id) {
            assert_eq!(ChunkId::of(&d), *id);
        }
    }
    let _ = cache.verify_all();
    let src = Arc::new(MemSource::default());
    if let Ok(view) = DiskView::new(cache.clone(), ChunkList::of_ids(ids.clone(), 4096, 4096 * 8), src) {
        if let Ok(ov) = Overlay::user(Arc::new(view), "u") {
            let mut b = vec![0u8; 4096 * 8];
            let _ = ov.read_at(0, &mut b);
            let _ = ov.write_at(0, &[2u8; 512]);
            let _ = ov.flush();
        }
    }
    let _ = cache.insert_data(&[3u8; 5000]);
    let _ = cache.sync();
});
