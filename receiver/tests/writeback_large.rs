//! Writing back a user disk with more changed chunks than one `chunks/missing` request may
//! carry (65,536), over the real server on loopback, and reading it back on another cache.
//! The write-back streams: the test process's peak memory during it stays far below the
//! changed data (the chunks are read from the overlay as they are uploaded).

mod common;

use common::*;
use repository::publish::{DiskSource, DiskSpec, PublishRequest};

const CHUNK: usize = 4096;
/// More than appliance::wire::MAX_MISSING_IDS.
const CHANGED: usize = 66_000;
/// Peak memory the write-back may add, against CHANGED * CHUNK = 258 MiB of changed data.
const WRITE_BACK_PEAK_BOUND_KB: u64 = 96 * 1024;

/// The content the test writes into chunk `i`: distinct, not zero, compressible.
fn chunk_content(i: usize) -> Vec<u8> {
    let mut c = vec![0u8; CHUNK];
    c[..8].copy_from_slice(&(i as u64 + 1).to_le_bytes());
    c[CHUNK - 8..].copy_from_slice(&(i as u64 ^ 0x5a5a).to_le_bytes());
    c
}

fn status_kb(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("{field} in /proc/self/status"))
}

#[test]
fn a_user_disk_with_more_than_65536_changed_chunks_is_written_back_and_read_elsewhere() {
    let f = Fixture::new();
    let kpath = f.path("kernel");
    let spath = f.path("big-system.img");
    std::fs::write(&kpath, &f.kernel).unwrap();
    std::fs::write(&spath, bytes(3, 64 * 1024, true)).unwrap();
    let req = PublishRequest {
        name: "big".into(),
        kernel: kpath,
        initrd: None,
        cmdline: "console=ttyS0".into(),
        disks: vec![
            DiskSpec {
                role: appliance::DiskRole::System,
                source: DiskSource::Image(spath),
            },
            DiskSpec {
                role: appliance::DiskRole::User,
                source: DiskSource::Empty((CHANGED * CHUNK) as u64),
            },
        ],
        memory_mib: 256,
        vcpus: 1,
        networks: vec![],
        chunk_size: CHUNK as u32,
        boot_trace: None,
        display: false,
    };
    repository::publish::publish(&f.repo, &req, &f.key).unwrap();
    f.assign("alice", &["big"]);
    let srv = f.serve();
    let cfg = f.config(&srv.url());

    let big_cache = |name: &str| {
        let p = f.path(name);
        cachefs::FileStorage::create_file(&p, 1 << 30).unwrap();
        receiver::open_cache(&p, true).unwrap()
    };

    // Terminal A changes every chunk of the user disk.
    let cache_a = big_cache("a.img");
    let mut sa = receiver::login(cache_a.clone(), &cfg, "alice", PASSWORD).unwrap();
    let fa = receiver::Fetcher::new(sa.client.clone().unwrap());
    let blob = sa
        .set
        .get("big")
        .unwrap()
        .user_disk("user")
        .unwrap()
        .image
        .clone();
    assert_eq!(blob.chunks.len(), CHANGED);
    let ov = receiver::disks::open_user_disk(&cache_a, "alice", "big", "user", &blob, fa).unwrap();
    for start in (0..CHANGED).step_by(256) {
        let slab: Vec<u8> = (start..(start + 256).min(CHANGED))
            .flat_map(chunk_content)
            .collect();
        ov.write_at((start * CHUNK) as u64, &slab).unwrap();
    }
    ov.flush().unwrap();

    // Peak memory from here on (VmHWM reset through clear_refs).
    std::fs::write("/proc/self/clear_refs", "5").unwrap();
    let rss_before = status_kb("VmRSS:");
    let t = std::time::Instant::now();
    let r = receiver::write_back(&mut sa, "big", "user", &ov).unwrap();
    let took = t.elapsed();
    let peak = status_kb("VmHWM:");
    eprintln!(
        "write-back of {CHANGED} changed chunks: {took:?}, {} uploaded ({} bytes); RSS {rss_before} KiB, peak {peak} KiB",
        r.uploaded_chunks, r.uploaded_bytes
    );
    assert_eq!(
        (r.changed_chunks, r.uploaded_chunks, r.version),
        (CHANGED, CHANGED, 1)
    );
    assert!(
        peak < rss_before + WRITE_BACK_PEAK_BOUND_KB,
        "write-back peak {peak} KiB from {rss_before} KiB: it holds the changed chunks in memory"
    );
    assert!(ov.changed_chunks().is_empty());
    drop(ov);

    // Terminal B, with an empty cache, reads the whole disk back (4 readers).
    let cache_b = big_cache("b.img");
    let sb = receiver::login(cache_b.clone(), &cfg, "alice", PASSWORD).unwrap();
    let ud = sb
        .set
        .get("big")
        .unwrap()
        .user_disk("user")
        .unwrap()
        .clone();
    assert_eq!(ud.version, 1);
    let fb = receiver::Fetcher::new(sb.client.clone().unwrap());
    let view = receiver::disks::view(&cache_b, &ud.image, fb.clone()).unwrap();
    let readers: Vec<_> = (0..4)
        .map(|r| {
            let view = view.clone();
            std::thread::spawn(move || {
                let per = CHANGED.div_ceil(4);
                let mut buf = vec![0u8; 64 * CHUNK];
                let mut i = r * per;
                while i < ((r + 1) * per).min(CHANGED) {
                    let n = 64.min(((r + 1) * per).min(CHANGED) - i);
                    view.read_at((i * CHUNK) as u64, &mut buf[..n * CHUNK])
                        .unwrap();
                    for k in 0..n {
                        assert_eq!(
                            &buf[k * CHUNK..(k + 1) * CHUNK],
                            &chunk_content(i + k)[..],
                            "chunk {} read back on another cache",
                            i + k
                        );
                    }
                    i += n;
                }
            })
        })
        .collect();
    for r in readers {
        r.join().unwrap();
    }
    assert_eq!(fb.counts().chunks, CHANGED as u64);
}
