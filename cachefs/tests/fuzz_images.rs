//! Deterministic, bounded fuzzing of corrupted images (runs in `cargo test`;
//! `cachefs/fuzz` holds the libFuzzer target for those with nightly).
//!
//! Starting from a valid image with chunks, pins, a checkpoint, journal
//! commits and a user overlay, each case flips bytes, truncates, or rewrites
//! a structure *and fixes its checksum* (so the decoders behind the crcs are
//! exercised too), then opens it and uses it. Garbage must give an error,
//! never a panic, a hang, or a chunk that does not hash to its id.

use cachefs::fault::Rng;
use cachefs::format::{self, Checkpoint, Record, SbSlot, Superblock, BLOCK};
use cachefs::{
    Cache, ChunkId, ChunkList, CreateOptions, DiskView, MemSource, MemStorage, Overlay, Storage,
};
use std::sync::Arc;

const DEVICE: usize = 400 * 1024;
const CS: u32 = 4096;

struct Valid {
    image: Vec<u8>,
    ids: Vec<ChunkId>,
    src: Arc<MemSource>,
}

fn valid_image() -> Valid {
    let mut rng = Rng(11);
    let m = Arc::new(MemStorage::new(DEVICE));
    let cache = Arc::new(Cache::create(Box::new(m.clone()), CreateOptions::default()).unwrap());
    let src = Arc::new(MemSource::default());
    let mut ids = Vec::new();
    for i in 0..8 {
        let mut d = vec![0u8; CS as usize];
        if i % 2 == 0 {
            rng.fill(&mut d);
        } else {
            d.iter_mut()
                .enumerate()
                .for_each(|(j, b)| *b = (j / 100 + i) as u8);
        }
        ids.push(src.add(d.clone()));
        cache.insert(&ChunkId::of(&d), &d).unwrap();
    }
    cache.pin("app@1", &ids[..4]).unwrap();
    cache.checkpoint().unwrap();
    cache.pin("app@2", &ids[2..]).unwrap();
    let view = Arc::new(
        DiskView::new(
            cache.clone(),
            ChunkList::of_ids(ids.clone(), CS, CS as u64 * 8),
            src.clone(),
        )
        .unwrap(),
    );
    let ov = Overlay::user(view, "u").unwrap();
    ov.write_at(4096, &[7u8; 1024]).unwrap();
    ov.flush().unwrap();
    cache.remove(&ids[7]).unwrap();
    cache.sync().unwrap();
    drop(ov);
    drop(cache);
    Valid {
        image: m.snapshot(),
        ids,
        src,
    }
}

fn live_sb(img: &[u8]) -> Option<Superblock> {
    let mut best: Option<Superblock> = None;
    for s in 0..2 {
        if let SbSlot::Valid(sb) = Superblock::decode(&img[s * 4096..(s + 1) * 4096]) {
            if best.as_ref().map(|b| sb.seq > b.seq).unwrap_or(true) {
                best = Some(sb);
            }
        }
    }
    best
}

fn mutate(rng: &mut Rng, buf: &mut Vec<u8>) {
    match rng.below(4) {
        0 => {
            for _ in 0..1 + rng.below(8) {
                if !buf.is_empty() {
                    let i = rng.below(buf.len() as u64) as usize;
                    buf[i] ^= 1 << rng.below(8);
                }
            }
        }
        1 => {
            let n = rng.below(buf.len() as u64 + 1) as usize;
            buf.truncate(n);
        }
        2 => {
            // overwrite a run with random bytes or extreme values
            if !buf.is_empty() {
                let i = rng.below(buf.len() as u64) as usize;
                let n = (1 + rng.below(16) as usize).min(buf.len() - i);
                let v = [0x00, 0xFF, rng.next_u64() as u8][rng.below(3) as usize];
                buf[i..i + n].fill(v);
            }
        }
        _ => {
            let i = rng.below(buf.len() as u64 + 1) as usize;
            let mut extra = vec![0u8; rng.below(64) as usize];
            rng.fill(&mut extra);
            buf.splice(i..i, extra);
        }
    }
}

/// Applies one corruption to the image; returns a description.
fn corrupt(rng: &mut Rng, img: &mut Vec<u8>) -> String {
    let sb = live_sb(img).expect("valid base");
    let g = sb.geometry;
    match rng.below(7) {
        0 => {
            let n = 1 + rng.below(16);
            for _ in 0..n {
                let i = rng.below(g.arena_off) as usize;
                img[i] ^= 1 << rng.below(8);
            }
            format!("{n} bit flips in metadata")
        }
        1 => {
            for _ in 0..1 + rng.below(64) {
                let i = rng.below(img.len() as u64) as usize;
                img[i] = rng.next_u64() as u8;
            }
            "random bytes anywhere".into()
        }
        2 => {
            let n = rng.below(img.len() as u64) as usize;
            img.truncate(n);
            format!("truncated to {n}")
        }
        3 => {
            // Rewrite the checkpoint and fix every checksum.
            let off = g.ckpt_off[sb.ckpt_slot as usize] as usize;
            let mut blob = img[off..off + sb.ckpt_len_used as usize].to_vec();
            mutate(rng, &mut blob);
            if blob.len() as u64 > g.ckpt_len {
                blob.truncate(g.ckpt_len as usize);
            }
            img[off..off + blob.len()].copy_from_slice(&blob);
            let nsb = Superblock {
                ckpt_len_used: blob.len() as u64,
                ckpt_crc: crc(&[&blob]),
                ..sb.clone()
            };
            let s = (nsb.seq % 2) as usize * 4096;
            img[s..s + 4096].copy_from_slice(&nsb.encode());
            "checkpoint rewritten with valid crc".into()
        }
        4 => {
            // Rewrite the first journal commit's payload, fix its crc.
            let off = g.journal_off as usize;
            let Some((seq, plen, _)) = format::decode_commit_header(&img[off..off + 4096]) else {
                return "no journal commit".into();
            };
            let mut payload =
                img[off + format::JOURNAL_HDR..off + format::JOURNAL_HDR + plen as usize].to_vec();
            mutate(rng, &mut payload);
            let commit = format::encode_commit(&sb.uuid, seq, &payload);
            if commit.len() as u64 <= g.journal_len {
                img[off..off + commit.len()].copy_from_slice(&commit);
            }
            "journal commit rewritten with valid crc".into()
        }
        5 => {
            // Superblock fields set to odd values, crc fixed.
            let mut nsb = sb.clone();
            let v = [0, 1, 4096, u64::MAX, u32::MAX as u64, rng.next_u64()][rng.below(6) as usize];
            match rng.below(8) {
                0 => nsb.geometry.journal_len = v,
                1 => nsb.geometry.arena_off = v,
                2 => nsb.geometry.arena_blocks = v,
                3 => nsb.geometry.ckpt_len = v,
                4 => nsb.ckpt_len_used = v,
                5 => nsb.journal_seq = v,
                6 => nsb.geometry.device_size = v,
                _ => nsb.ckpt_slot = v as u8,
            }
            let s = (nsb.seq % 2) as usize * 4096;
            img[s..s + 4096].copy_from_slice(&nsb.encode());
            "superblock field rewritten with valid crc".into()
        }
        _ => {
            // Plausible records with hostile values appended as a new commit.
            let mut recs = Vec::new();
            for _ in 0..1 + rng.below(4) {
                let mut id = [0u8; 32];
                rng.fill(&mut id);
                let loc = format::Loc {
                    block: [0, 1, u32::MAX, rng.next_u64() as u32][rng.below(4) as usize],
                    stored_len: [1, 4096, 100000, u32::MAX][rng.below(4) as usize],
                    raw_len: [1, 4096, 1 << 20][rng.below(3) as usize],
                    compressed: rng.chance(50),
                    crc: rng.next_u64() as u32,
                };
                recs.push(match rng.below(3) {
                    0 => Record::Put(ChunkId(id), loc),
                    1 => Record::OvMap(
                        "u".into(),
                        vec![format::OvBlock {
                            disk_block: [rng.next_u64(), rng.below(16), u64::MAX]
                                [rng.below(3) as usize],
                            arena_block: [rng.next_u64() as u32, rng.below(64) as u32]
                                [rng.below(2) as usize],
                            crc: 0,
                        }],
                    ),
                    _ => Record::OvRebase("u".into(), id),
                });
            }
            // Appended after the last valid commit, so nothing replays over it.
            let mut pos = 0usize;
            let mut seq = sb.journal_seq;
            while pos + 4096 <= g.journal_len as usize {
                let Some((s, plen, _)) = format::decode_commit_header(
                    &img[g.journal_off as usize + pos..g.journal_off as usize + pos + 4096],
                ) else {
                    break;
                };
                if s != seq {
                    break;
                }
                pos += (format::JOURNAL_HDR + plen as usize).div_ceil(4096) * 4096;
                seq += 1;
            }
            let payload = format::encode_records(&recs);
            let commit = format::encode_commit(&sb.uuid, seq, &payload);
            let off = g.journal_off as usize + pos;
            if pos + commit.len() <= g.journal_len as usize {
                img[off..off + commit.len()].copy_from_slice(&commit);
            }
            "hostile records with valid crc".into()
        }
    }
}

fn crc(parts: &[&[u8]]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    for p in parts {
        h.update(p);
    }
    h.finalize()
}

/// Opens and exercises a (possibly corrupt) image; must never panic.
fn exercise(img: Vec<u8>, v: &Valid) -> usize {
    let Ok(cache) = Cache::open(Box::new(MemStorage::from_vec(img))) else {
        return 0;
    };
    let cache = Arc::new(cache);
    let mut ok = 0;
    for id in cache.chunk_ids().into_iter().chain(v.ids.iter().copied()) {
        if let Ok(Some(d)) = cache.read(&id) {
            assert_eq!(
                ChunkId::of(&d),
                id,
                "returned a chunk that does not hash to its id"
            );
            ok += 1;
        }
        let mut b = [0u8; 100];
        let _ = cache.read_range(&id, 10, &mut b);
    }
    let _ = cache.stats();
    let _ = cache.verify_all();
    if let Ok(view) = DiskView::new(
        cache.clone(),
        ChunkList::of_ids(v.ids.clone(), CS, CS as u64 * 8),
        v.src.clone(),
    ) {
        if let Ok(ov) = Overlay::user(Arc::new(view), "u") {
            let mut b = vec![0u8; CS as usize * 8];
            let _ = ov.read_at(0, &mut b);
            let _ = ov.write_at(0, &[1u8; 512]);
            let _ = ov.flush();
        }
    }
    let _ = cache.insert_data(&[5u8; 3000]);
    let _ = cache.pin("x", &v.ids);
    let _ = cache.sync();
    let _ = cache.checkpoint();
    ok
}

#[test]
fn corrupted_images_give_errors_never_panics() {
    let v = valid_image();
    assert_eq!(
        exercise(v.image.clone(), &v),
        7 + 7,
        "the valid image works"
    );
    let cases: u64 = std::env::var("CACHEFS_FUZZ_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2500);
    let mut opened = 0;
    for case in 0..cases {
        let mut rng = Rng(case * 31 + 5);
        let mut img = v.image.clone();
        let what = corrupt(&mut rng, &mut img);
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let img2 = img.clone();
            let ok = Cache::open(Box::new(MemStorage::from_vec(img2))).is_ok();
            exercise(img, &v);
            ok
        }));
        match r {
            Ok(o) => opened += o as u32,
            Err(_) => panic!("case {case} ({what}) panicked"),
        }
    }
    // Most corruptions are caught or harmless; some must still open.
    assert!(opened > 0);
}

#[test]
fn decoders_reject_garbage_without_panicking() {
    let mut rng = Rng(77);
    let v = valid_image();
    let sb = live_sb(&v.image).unwrap();
    let off = sb.geometry.ckpt_off[sb.ckpt_slot as usize] as usize;
    let ckpt = v.image[off..off + sb.ckpt_len_used as usize].to_vec();
    assert!(Checkpoint::decode(&ckpt).is_ok());
    for _ in 0..20000 {
        let mut b = match rng.below(3) {
            0 => ckpt.clone(),
            1 => v.image[..BLOCK as usize].to_vec(),
            _ => {
                let mut r = vec![0u8; rng.below(300) as usize];
                rng.fill(&mut r);
                r
            }
        };
        mutate(&mut rng, &mut b);
        let _ = Checkpoint::decode(&b);
        let _ = Superblock::decode(&b);
        let _ = format::decode_records(&b);
        let _ = format::decode_commit_header(&b);
        let raw = 1 + rng.below(20000) as usize;
        let _ = chunk::frames::decompress_all(&b, raw);
        let _ = chunk::lz4dec::decompress_into(&b, &mut vec![0u8; raw]);
        let _ = b
            .len()
            .checked_sub(0)
            .map(|_| MemStorage::from_vec(b.clone()).len());
    }
}
