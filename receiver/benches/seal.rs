//! `cargo bench -p receiver --bench seal`: what sealing user data costs, in one run on
//! loopback against the real repository server (`RECEIVER_SEAL_BENCH_MB`, default 256):
//!
//! 1. the login's cost: unwrapping the data key with the chosen argon2id parameters
//!    (`KdfParams::DATA_KEY`), next to the repository's verifier (`KdfParams::DEFAULT`);
//! 2. write-back of a user disk whose every chunk changed, sealed (the receiver's
//!    `write_back`: read, seal, ask, upload, commit) against the same work unsealed (the
//!    write-back before sealing: read, lz4-encode, ask, upload), 4 connections each;
//! 3. the fill of that user disk into a fresh cache (fetch sealed, open, verify, insert)
//!    against the fill of the same bytes published as a plaintext appliance disk.
//!
//! Rounds alternate sealed and unsealed (best of `RECEIVER_SEAL_BENCH_ROUNDS`, default 3),
//! each with fresh content so nothing deduplicates against an earlier round. Ratios are
//! unsealed time / sealed time: 1.0 means sealing costs nothing.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use appliance::wire::{MissingChunksRequest, MissingChunksResponse, MISSING_CHUNKS_PATH};
use appliance::{ChunkId, DataKey, KdfParams, SecretKey};
use common::{make_image, publish_request};
use receiver::{FillOptions, RepoClient, RepoConfig};
use repository::publish::{DiskSource, DiskSpec};
use repository::server::ServeConfig;
use repository::Repo;

const PASSWORD: &str = "bench password";
const FAST: KdfParams = KdfParams::INSECURE_FOR_TESTS;

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn mibs(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / (1 << 20) as f64 / d.as_secs_f64()
}

/// Publishes `name` with a system disk from `system` and a user disk of `user_bytes`.
fn publish(repo: &Repo, dir: &Path, key: &SecretKey, name: &str, system: &[u8], user_bytes: u64) {
    let kernel = dir.join("kernel");
    std::fs::write(&kernel, make_image(1, 7)).unwrap();
    let img = dir.join(format!("{name}.img"));
    std::fs::write(&img, system).unwrap();
    let disks = vec![
        DiskSpec {
            role: appliance::DiskRole::System,
            source: DiskSource::Image(img),
        },
        DiskSpec {
            role: appliance::DiskRole::User,
            source: DiskSource::Empty(user_bytes),
        },
    ];
    let req = publish_request(name, kernel, disks);
    repository::publish::publish(repo, &req, key).unwrap();
}

fn fresh_cache(path: &Path, mb: usize) -> Arc<cachefs::Cache> {
    let _ = std::fs::remove_file(path);
    cachefs::FileStorage::create_file(path, ((mb as u64) << 20) * 3 + (64 << 20)).unwrap();
    receiver::open_cache(path, true).unwrap()
}

/// Logs `user` in on a fresh cache and fills the user disk of desk with `content`,
/// returning the session and the overlay holding it.
fn session_with_content(
    cfg: &RepoConfig,
    cache_path: &Path,
    mb: usize,
    user: &str,
    content: &[u8],
) -> (receiver::Session, cachefs::Overlay) {
    let cache = fresh_cache(cache_path, mb);
    let s = receiver::login(cache, cfg, user, PASSWORD).unwrap();
    let fetcher = receiver::Fetcher::new(s.client.clone().unwrap());
    let ov = receiver::open_session_user_disk(&s, "desk", "user", fetcher).unwrap();
    for (i, block) in content.chunks(1 << 20).enumerate() {
        ov.write_at((i as u64) << 20, block).unwrap();
    }
    ov.flush().unwrap();
    (s, ov)
}

/// The write-back as it was before sealing: the changed chunks' ids, which the repository
/// lacks, then each read, lz4-encoded and uploaded over 4 connections, then the overlay
/// rebased onto the new list (the commit between is left out: the repository now refuses
/// unsealed user disks; it is one small request).
fn unsealed_write_back(client: &RepoClient, ov: &cachefs::Overlay) -> u64 {
    let wb = ov.prepare_write_back_ids().unwrap();
    let index: HashMap<ChunkId, usize> = wb.changed.iter().map(|(i, id, _)| (*id, *i)).collect();
    let ids: Vec<ChunkId> = index.keys().copied().collect();
    let mut uploaded = 0u64;
    for batch in ids.chunks(receiver::writeback::MISSING_BATCH) {
        let body = serde_json::to_vec(&MissingChunksRequest {
            ids: batch.to_vec(),
        })
        .unwrap();
        let missing: MissingChunksResponse =
            client.api("POST", MISSING_CHUNKS_PATH, Some(body)).unwrap();
        let next = AtomicUsize::new(0);
        std::thread::scope(|scope| {
            for _ in 0..4 {
                scope.spawn(|| loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(id) = missing.missing.get(i) else {
                        break;
                    };
                    let plain = ov.read_chunk(index[id]).unwrap();
                    assert_eq!(ChunkId::of(&plain), *id);
                    client
                        .put_chunk(id, &appliance::encode_chunk(&plain))
                        .unwrap();
                });
            }
        });
        uploaded += missing.missing.len() as u64;
    }
    ov.finish_write_back(wb).unwrap();
    uploaded
}

/// Single-thread throughput of sealing and opening a 64 KiB chunk of each kind.
fn seal_throughput() {
    let sealer = appliance::UserSealer::new(&DataKey::generate());
    let img = make_image(8, 77);
    let chunks: Vec<(ChunkId, &[u8])> = img
        .chunks(65536)
        .map(|c| (ChunkId::of(c), c))
        .filter(|(_, c)| !appliance::is_zero(c))
        .collect();
    let n: u64 = chunks.iter().map(|(_, c)| c.len() as u64).sum();
    let t = Instant::now();
    let sealed: Vec<_> = chunks
        .iter()
        .map(|(id, c)| sealer.seal_chunk(id, c).unwrap().1)
        .collect();
    let seal = t.elapsed();
    let t = Instant::now();
    for ((id, _), s) in chunks.iter().zip(sealed) {
        sealer.open_chunk(id, s).unwrap();
    }
    let open = t.elapsed();
    let t = Instant::now();
    for (id, c) in &chunks {
        appliance::decode_chunk(id, &appliance::encode_chunk(c)).unwrap();
    }
    let plain = t.elapsed();
    println!(
        "one core, plaintext MiB/s: seal (encode + encrypt + hash) {:.0}, open (decrypt + decode + hash) {:.0}; unsealed encode + decode + hash {:.0}",
        mibs(n, seal), mibs(n, open), mibs(n, plain)
    );
}

fn fill(cfg: &RepoConfig, cache_path: &Path, mb: usize, user: &str) -> (Duration, u64) {
    let cache = fresh_cache(cache_path, mb);
    let s = receiver::login(cache.clone(), cfg, user, PASSWORD).unwrap();
    let fetcher = receiver::Fetcher::new(s.client.clone().unwrap());
    let t = Instant::now();
    let p = receiver::fill::start(
        cache,
        fetcher,
        &s.set,
        FillOptions {
            connections: 4,
            ..Default::default()
        },
    )
    .wait()
    .unwrap();
    (t.elapsed(), p.done_bytes - p.cached_at_start)
}

fn login_cost() {
    let key = DataKey::generate();
    for (what, p) in [
        ("data key wrap (KdfParams::DATA_KEY)", KdfParams::DATA_KEY),
        (
            "repository verifier (KdfParams::DEFAULT)",
            KdfParams::DEFAULT,
        ),
    ] {
        let wrapped = key.wrap("bench", PASSWORD, p, None).unwrap();
        let mut best = Duration::MAX;
        for _ in 0..3 {
            let t = Instant::now();
            wrapped.unwrap_with_password("bench", PASSWORD).unwrap();
            best = best.min(t.elapsed());
        }
        println!(
            "login cost, {what}: argon2id m={} MiB t={} p={}: {:.0} ms (best of 3)",
            p.m_kib / 1024,
            p.t,
            p.p,
            ms(best)
        );
    }
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let _ = env_logger::builder()
        .filter_level(log::LevelFilter::Warn)
        .try_init();
    let env = |k: &str, d: usize| {
        std::env::var(k)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(d)
    };
    let mb = env("RECEIVER_SEAL_BENCH_MB", 256);
    let rounds = env("RECEIVER_SEAL_BENCH_ROUNDS", 3);
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/seal-bench");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    println!("seal bench: {mb} MiB user disk (64 KiB chunks: 10 % zero, 45 % text, 45 % random), {rounds} rounds, loopback");
    login_cost();
    seal_throughput();

    let repo = Repo::init(&dir.join("repo")).unwrap();
    let key = SecretKey::generate();
    let small = make_image(1, 3);
    publish(&repo, &dir, &key, "desk", &small, (mb as u64) << 20);
    // The fill baseline: the first round's user content, published as plaintext.
    // make_image ORs its seed with 1: even seeds only, or two rounds get the same image.
    let content = |round: usize| make_image(mb, 1000 + 2 * round as u64);
    publish(&repo, &dir, &key, "plain", &content(0), 65536);
    repository::users::add(&repo, "reader", PASSWORD, FAST, FAST).unwrap();
    repository::users::assign(&repo, "reader", &["plain".into()]).unwrap();

    let mut scfg = ServeConfig::new(&repo, "127.0.0.1:0");
    scfg.threads = 8;
    scfg.access_log = Some(dir.join("access.log"));
    scfg.dummy_kdf = FAST;
    let server = repository::server::start(repo.clone(), &scfg).unwrap();
    let url = format!("http://{}/", server.addr());
    let mut cfg = RepoConfig::new(&url, vec![key.public()]);
    cfg.wrap_kdf = FAST;

    let (mut wb_sealed, mut wb_plain) = (Duration::MAX, Duration::MAX);
    let (mut fill_sealed, mut fill_plain) = (Duration::MAX, Duration::MAX);
    let mut bytes = 0u64;
    for round in 0..rounds {
        // Write-back, unsealed then sealed, each of content no round wrote before.
        for (sealed, user) in [(false, format!("p{round}")), (true, format!("s{round}"))] {
            repository::users::add(&repo, &user, PASSWORD, FAST, FAST).unwrap();
            repository::users::assign(&repo, &user, &["desk".into()]).unwrap();
            let data = content(if sealed { round } else { rounds + round });
            let (mut s, ov) = session_with_content(&cfg, &dir.join("wb.img"), mb, &user, &data);
            let t = Instant::now();
            if sealed {
                let r = receiver::write_back(&mut s, "desk", "user", &ov).unwrap();
                let d = t.elapsed();
                wb_sealed = wb_sealed.min(d);
                println!(
                    "  round {round}: write-back sealed   {:.2} s ({} chunks, {} MiB up)",
                    d.as_secs_f64(),
                    r.uploaded_chunks,
                    r.uploaded_bytes >> 20
                );
            } else {
                let n = unsealed_write_back(s.client.as_ref().unwrap(), &ov);
                let d = t.elapsed();
                wb_plain = wb_plain.min(d);
                println!(
                    "  round {round}: write-back unsealed {:.2} s ({n} chunks)",
                    d.as_secs_f64()
                );
            }
        }
        // Fill: the plaintext appliance disk, then the sealed user disk of round 0 (the
        // same bytes).
        let (d, b) = fill(&cfg, &dir.join("fill.img"), mb, "reader");
        fill_plain = fill_plain.min(d);
        println!(
            "  round {round}: fill unsealed {:.2} s ({} MiB)",
            d.as_secs_f64(),
            b >> 20
        );
        let (d, b) = fill(&cfg, &dir.join("fill.img"), mb, "s0");
        fill_sealed = fill_sealed.min(d);
        bytes = b;
        println!(
            "  round {round}: fill sealed   {:.2} s ({} MiB)",
            d.as_secs_f64(),
            b >> 20
        );
    }
    server.shutdown();
    let disk = (mb as u64) << 20;
    println!("| measurement | unsealed | sealed | ratio (unsealed time / sealed time) |");
    println!("| --- | --- | --- | --- |");
    println!(
        "| write-back of {mb} MiB, every chunk changed | {:.2} s ({:.0} MiB/s) | {:.2} s ({:.0} MiB/s) | {:.2} |",
        wb_plain.as_secs_f64(), mibs(disk, wb_plain), wb_sealed.as_secs_f64(), mibs(disk, wb_sealed),
        wb_plain.as_secs_f64() / wb_sealed.as_secs_f64()
    );
    println!(
        "| fill of the same {} MiB into a fresh cache | {:.2} s ({:.0} MiB/s) | {:.2} s ({:.0} MiB/s) | {:.2} |",
        bytes >> 20, fill_plain.as_secs_f64(), mibs(bytes, fill_plain), fill_sealed.as_secs_f64(), mibs(bytes, fill_sealed),
        fill_plain.as_secs_f64() / fill_sealed.as_secs_f64()
    );
}
