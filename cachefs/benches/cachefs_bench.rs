//! `cargo bench -p cachefs`: fill throughput and random 4 KiB reads, each
//! against the plain-file baseline, measured in one run on one file system
//! (the target directory's).
//!
//! Image: `CACHEFS_BENCH_MB` MiB (default 256) of 64 KiB chunks: 10 % zero,
//! 45 % text-like (lz4 ~2-3x), 45 % random (incompressible). The fill hands
//! cachefs verified plaintext with its id (hashing is the receiver's cost) and, in
//! the default path, the 4 KiB frames the chunk arrived in from the repository
//! (compressed once, by the publisher, before timing), which cachefs stores as
//! they are; the other rows compress in cachefs (the fill before frames) or not at
//! all.

use cachefs::fault::Rng;
use cachefs::{
    Cache, ChunkId, ChunkList, CreateOptions, DiskView, FileStorage, NoSource, OpenOptions,
};
use std::fs::OpenOptions as FileOpenOptions;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

const CS: usize = 64 * 1024;

fn make_image(mb: usize) -> Vec<u8> {
    let mut rng = Rng(2026);
    let words: Vec<&[u8]> = b"the of and to in is for that with as on by this be are from or at an it kernel module libc so ld linux usr share doc copyright changelog gz debian package version"
        .split(|&c| c == b' ')
        .collect();
    let mut img = vec![0u8; mb << 20];
    for (i, c) in img.chunks_mut(CS).enumerate() {
        match i % 20 {
            0 | 1 => {}
            n if n % 2 == 0 => {
                let mut p = 0;
                while p < c.len() {
                    let w = words[rng.below(words.len() as u64) as usize];
                    let n = w.len().min(c.len() - p);
                    c[p..p + n].copy_from_slice(&w[..n]);
                    p += n;
                    if p < c.len() {
                        c[p] = if rng.chance(10) { b'\n' } else { b' ' };
                        p += 1;
                    }
                }
            }
            _ => rng.fill(c),
        }
    }
    img
}

/// An image closer to a real appliance disk: the files under /usr/lib and
/// /usr/share, each starting on a 4 KiB boundary as in a file system, with
/// every tenth chunk zero (free space). Falls back to the synthetic mix.
fn make_usr_image(mb: usize) -> Vec<u8> {
    let size = mb << 20;
    let mut img = Vec::with_capacity(size);
    let mut stack = vec![PathBuf::from("/usr/lib"), PathBuf::from("/usr/share")];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        let mut entries: Vec<PathBuf> = rd.filter_map(|e| e.ok().map(|e| e.path())).collect();
        entries.sort();
        for p in entries.into_iter().rev() {
            let Ok(m) = std::fs::symlink_metadata(&p) else {
                continue;
            };
            if m.is_dir() {
                stack.push(p);
            } else if m.is_file() && img.len() < size {
                if let Ok(b) = std::fs::read(&p) {
                    img.extend_from_slice(&b);
                    img.resize(img.len().div_ceil(4096) * 4096, 0);
                    if (img.len() / CS) % 10 == 9 {
                        img.resize(img.len().div_ceil(CS) * CS + CS, 0);
                    }
                }
            }
        }
    }
    if img.len() < size {
        eprintln!("not enough files under /usr; using the synthetic mix");
        return make_image(mb);
    }
    img.truncate(size);
    img
}

fn mbps(bytes: usize, d: Duration) -> f64 {
    bytes as f64 / (1 << 20) as f64 / d.as_secs_f64()
}

fn main() {
    let mb: usize = std::env::var("CACHEFS_BENCH_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256);
    let reads: usize = std::env::var("CACHEFS_BENCH_READS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000);
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("cachefs-bench");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    println!(
        "cachefs bench: {mb} MiB image, 64 KiB chunks, in {}",
        dir.display()
    );
    let data = std::env::var("CACHEFS_BENCH_DATA").unwrap_or_else(|_| "mix".into());
    let img = match data.as_str() {
        "usr" => make_usr_image(mb),
        _ => make_image(mb),
    };
    println!("data: {data} (CACHEFS_BENCH_DATA=mix|usr)");
    let ids: Vec<ChunkId> = img.chunks(CS).map(ChunkId::of).collect();

    // --- Fill: plain file ---
    let raw_path = dir.join("raw.img");
    let t = Instant::now();
    {
        let mut f = FileOpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&raw_path)
            .unwrap();
        for c in img.chunks(CS) {
            f.write_all(c).unwrap();
        }
        f.sync_data().unwrap();
    }
    let raw_fill = t.elapsed();

    // --- Fill: cachefs (device preallocated before timing, as in the field) ---
    let dev_path = dir.join("cache.img");
    let dev_size = (mb as u64 * 2 + 64) << 20;
    let img = Arc::new(img);
    let ids = Arc::new(ids);
    // What the repository serves: each chunk's frames, made by the publisher.
    let arrived: Arc<Vec<Option<Vec<u8>>>> =
        Arc::new(img.chunks(CS).map(chunk::frames::compress).collect());
    let fill = |compress: bool, threads: usize, as_arrived: bool| -> (Duration, Arc<Cache>) {
        let st = FileStorage::create_file(&dev_path, dev_size).unwrap();
        let opts = OpenOptions {
            compress,
            ..Default::default()
        };
        let cache =
            Arc::new(Cache::create_with(Box::new(st), CreateOptions::default(), opts).unwrap());
        let t = Instant::now();
        let hs: Vec<_> = (0..threads)
            .map(|k| {
                let (cache, img, ids) = (cache.clone(), img.clone(), ids.clone());
                let arrived = arrived.clone();
                std::thread::spawn(move || {
                    for (i, c) in img.chunks(CS).enumerate().skip(k).step_by(threads) {
                        match &arrived[i] {
                            Some(frames) if as_arrived => {
                                cache.insert_framed(&ids[i], c, frames).unwrap()
                            }
                            // Stored raw by the publisher: incompressible, as the fill knows.
                            None if as_arrived => cache.insert_raw(&ids[i], c).unwrap(),
                            _ => cache.insert(&ids[i], c).unwrap(),
                        }
                    }
                })
            })
            .collect();
        for h in hs {
            h.join().unwrap();
        }
        cache.sync().unwrap();
        (t.elapsed(), cache)
    };
    let (fill_plain, plain_cache) = fill(false, 1, false);
    let sp = plain_cache.stats();
    drop(plain_cache);
    let (fill1, _) = fill(true, 1, false);
    let (fill2, _) = fill(true, 2, false);
    let (fill_arrived, cache) = fill(true, 1, true);
    let s = cache.stats();

    println!();
    println!(
        "fill ({mb} MiB of plaintext, {} chunks; lz4 stores {:.1} MiB, {} chunks compressed):",
        s.chunks,
        s.stored_bytes as f64 / 1048576.0,
        s.compressed_chunks
    );
    let r = |d: Duration| raw_fill.as_secs_f64() / d.as_secs_f64();
    println!(
        "  plain file write + fdatasync        : {:8.1} MiB/s",
        mbps(img.len(), raw_fill)
    );
    println!(
        "  cachefs fill, frames as they arrived : {:8.1} MiB/s   ratio {:.2}  (the default path)",
        mbps(img.len(), fill_arrived),
        r(fill_arrived)
    );
    println!(
        "  cachefs insert + sync, lz4, 1 thread : {:8.1} MiB/s   ratio {:.2}",
        mbps(img.len(), fill1),
        r(fill1)
    );
    println!(
        "  cachefs insert + sync, lz4, 2 threads: {:8.1} MiB/s   ratio {:.2}",
        mbps(img.len(), fill2),
        r(fill2)
    );
    println!(
        "  cachefs insert + sync, no compression: {:8.1} MiB/s   ratio {:.2}  (stores {:.1} MiB)",
        mbps(img.len(), fill_plain),
        r(fill_plain),
        sp.stored_bytes as f64 / 1048576.0
    );

    // --- Random 4 KiB reads ---
    let view = DiskView::new(
        cache.clone(),
        ChunkList::of_data(&img, CS as u32).unwrap(),
        Arc::new(NoSource),
    )
    .unwrap();
    let raw = std::fs::File::open(&raw_path).unwrap();
    let nblocks = img.len() as u64 / 4096;
    let offsets: Vec<u64> = {
        let mut rng = Rng(7);
        (0..reads).map(|_| rng.below(nblocks) * 4096).collect()
    };
    let mut buf = vec![0u8; 4096];
    // Warm both (page cache; first-read verification of every chunk).
    let t = Instant::now();
    for i in 0..img.len() / CS {
        view.read_at((i * CS) as u64, &mut buf).unwrap();
    }
    let verify_pass = t.elapsed();
    for off in (0..img.len() as u64).step_by(CS) {
        raw.read_exact_at(&mut buf, off).unwrap();
    }
    // Interleaved batches: the machine is shared, so each view batch runs right after a
    // pread batch of the same offsets and both see the same load; the figure is the
    // median of the per-batch ratios.
    let batch = 10_000.min(reads);
    let mut raw_total = Duration::ZERO;
    let mut view_total = Duration::ZERO;
    let mut ratios = Vec::new();
    let mut lat = Vec::with_capacity(reads);
    for round in 0..3 {
        for part in offsets.chunks(batch) {
            let t = Instant::now();
            for &off in part {
                raw.read_exact_at(&mut buf, off).unwrap();
            }
            let raw_time = t.elapsed();
            let t = Instant::now();
            for &off in part {
                if round == 2 {
                    let t1 = Instant::now();
                    view.read_at(off, &mut buf).unwrap();
                    lat.push(t1.elapsed());
                } else {
                    view.read_at(off, &mut buf).unwrap();
                }
            }
            let view_time = t.elapsed();
            raw_total += raw_time;
            view_total += view_time;
            ratios.push(raw_time.as_secs_f64() / view_time.as_secs_f64());
        }
    }
    ratios.sort_by(f64::total_cmp);
    let median_ratio = ratios[ratios.len() / 2];
    // Spot check: the view returns the image's bytes.
    for &off in offsets.iter().take(1000) {
        view.read_at(off, &mut buf).unwrap();
        assert_eq!(&buf[..], &img[off as usize..off as usize + 4096]);
    }
    lat.sort();
    let p = |q: f64| lat[((lat.len() as f64 * q) as usize).min(lat.len() - 1)].as_secs_f64() * 1e6;
    let iops = |d: Duration| reads as f64 / d.as_secs_f64();
    println!();
    println!(
        "random 4 KiB reads ({reads} per round, 3 rounds in interleaved batches of {batch}, warm page cache):"
    );
    println!(
        "  pread of raw image           : {:10.0} reads/s",
        iops(raw_total / 3)
    );
    println!(
        "  DiskView::read_at (cached)   : {:10.0} reads/s   ratio {:.2} (median of {} batches; {:.2} overall)",
        iops(view_total / 3),
        median_ratio,
        ratios.len(),
        raw_total.as_secs_f64() / view_total.as_secs_f64()
    );
    println!(
        "  view latency p50 {:.1} us, p99 {:.1} us, max {:.1} us",
        p(0.5),
        p(0.99),
        p(1.0)
    );
    println!(
        "  first pass over every chunk (read + verify): {:.1} MiB/s",
        mbps(img.len(), verify_pass)
    );
    drop(view);
    drop(cache);

    // --- Recovery: open a cache holding 100 000 chunks ---
    let n = 100_000u32;
    let rec_path = dir.join("recovery.img");
    let st = FileStorage::create_file(&rec_path, (n as u64 + 8192) * 4096 * 5 / 4).unwrap();
    let c = Cache::create(Box::new(st), CreateOptions::default()).unwrap();
    for i in 0..n {
        let mut d = [0u8; 64];
        d[..4].copy_from_slice(&i.to_le_bytes());
        d[4] = 1;
        c.insert(&ChunkId::of(&d), &d).unwrap();
    }
    c.sync().unwrap();
    drop(c);
    let t = Instant::now();
    let c = Cache::open(Box::new(FileStorage::open(&rec_path).unwrap())).unwrap();
    let open_time = t.elapsed();
    let r = c.recovery_report().clone();
    assert_eq!(c.stats().chunks, n as u64);
    println!();
    println!(
        "recovery: open with {n} chunks (checkpoint + {} journal commits): {:.0} ms",
        r.journal_commits_replayed,
        open_time.as_secs_f64() * 1e3
    );
    drop(c);
    let _ = std::fs::remove_dir_all(&dir);
}
