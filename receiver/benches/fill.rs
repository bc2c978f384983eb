//! `cargo bench -p receiver`: in one run on loopback against the real repository server:
//!
//! 1. fill throughput of an image (`RECEIVER_BENCH_MB`, default 1024 MiB) into a fresh
//!    cache, against a baseline that fetches the same chunk files with `curl` (4 parallel
//!    connections, keep-alive) and then decodes (lz4) and hashes them;
//! 2. an update between two versions: bytes the receiver transferred against the bytes
//!    of the chunks that really changed, side by side with `casync extract` using the
//!    old image as seed (casync's own store served over HTTP from this process).
//!
//! Image: 64 KiB chunks, 10 % zero, 45 % text-like, 45 % random.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

mod common;

use appliance::{KdfParams, SecretKey};
use common::{make_image, publish_request, Rng, CS};
use receiver::{FillOptions, RepoConfig};
use repository::publish::{DiskSource, DiskSpec};
use repository::server::ServeConfig;
use repository::Repo;

const PASSWORD: &str = "bench password";

fn mibs(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / (1 << 20) as f64 / d.as_secs_f64()
}

fn publish(
    repo: &Repo,
    dir: &Path,
    key: &SecretKey,
    img: &Path,
) -> repository::publish::PublishStats {
    let kernel = dir.join("kernel");
    std::fs::write(&kernel, vec![1u8; 100_000]).unwrap();
    let disks = vec![DiskSpec {
        role: appliance::DiskRole::System,
        source: DiskSource::Image(img.into()),
    }];
    let req = publish_request("desk", kernel, disks);
    repository::publish::publish(repo, &req, key).unwrap()
}

/// Bytes and count of GET responses under `prefix` in nginx's log (format
/// `METHOD URI STATUS BYTES`) from line `from`.
fn served(log: &Path, from: usize, prefix: &str) -> (u64, usize) {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let (mut bytes, mut n) = (0, 0);
    for l in text.lines().skip(from) {
        let f: Vec<&str> = l.split_whitespace().collect();
        if f.len() == 4 && f[0] == "GET" && f[1].starts_with(prefix) {
            bytes += f[3].parse::<u64>().unwrap_or(0);
            n += 1;
        }
    }
    (bytes, n)
}

/// nginx in front of the repository, as a deployment would run it: immutable content
/// (chunks, manifests; and casync's store for the comparison) served by nginx, the API
/// proxied to `collective-repo serve`.
struct Nginx(std::process::Child);

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_nginx(
    dir: &Path,
    public: &Path,
    api: std::net::SocketAddr,
) -> Option<(Nginx, String, PathBuf)> {
    let prefix = dir.join("nginx");
    std::fs::create_dir_all(prefix.join("tmp")).ok()?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .ok()?
        .local_addr()
        .ok()?
        .port();
    let log = prefix.join("access.log");
    let conf = format!(
        "daemon off;\nmaster_process off;\nworker_processes 2;\nerror_log {p}/error.log;\npid {p}/nginx.pid;\nevents {{ worker_connections 256; }}\n\
         http {{\n  log_format bench '$request_method $uri $status $body_bytes_sent';\n  access_log {log} bench;\n  sendfile on;\n  tcp_nodelay on;\n  keepalive_requests 1000000;\n\
         client_body_temp_path {p}/tmp;\n  proxy_temp_path {p}/tmp;\n  fastcgi_temp_path {p}/tmp;\n  uwsgi_temp_path {p}/tmp;\n  scgi_temp_path {p}/tmp;\n\
         server {{\n    listen 127.0.0.1:{port};\n    root {root};\n    location /chunks/ {{ default_type application/octet-stream; }}\n    location /manifests/ {{ default_type application/json; }}\n\
             location /store.castr/ {{ root {dir}; }}\n    location /api/ {{ proxy_pass http://{api}; proxy_http_version 1.1; }}\n    location / {{ return 404; }}\n  }}\n}}\n",
        p = prefix.display(),
        log = log.display(),
        root = public.display(),
        dir = dir.display(),
    );
    let conf_path = prefix.join("nginx.conf");
    std::fs::write(&conf_path, conf).ok()?;
    let child = Command::new("/usr/sbin/nginx")
        .arg("-p")
        .arg(&prefix)
        .arg("-c")
        .arg(&conf_path)
        .spawn()
        .ok()?;
    let ng = Nginx(child);
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Some((ng, format!("http://127.0.0.1:{port}/"), log));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

fn log_lines(log: &Path) -> usize {
    std::fs::read_to_string(log)
        .map(|t| t.lines().count())
        .unwrap_or(0)
}

fn fill_once(
    cache_path: &Path,
    size: u64,
    url: &str,
    key: &SecretKey,
    compress: bool,
) -> (Duration, receiver::Progress) {
    let _ = std::fs::remove_file(cache_path);
    cachefs::FileStorage::create_file(cache_path, size).unwrap();
    let cache = receiver::open_cache(cache_path, compress).unwrap();
    let cfg = RepoConfig::new(url, vec![key.public()]);
    let t = Instant::now();
    let session = receiver::login(cache.clone(), &cfg, "bench", PASSWORD).unwrap();
    let fetcher = receiver::Fetcher::new(session.client.clone().unwrap());
    let p = receiver::fill::start(
        cache,
        fetcher,
        &session.set,
        FillOptions {
            connections: 4,
            ..Default::default()
        },
    )
    .wait()
    .unwrap();
    (t.elapsed(), p)
}

/// The curl baseline: fetch every distinct chunk file with curl (4 parallel transfers),
/// then decode and hash each. Returns the total time.
fn curl_baseline(url: &str, ids: &[appliance::ChunkId], dir: &Path) -> Option<Duration> {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).unwrap();
    let cfg = dir.join("curl.cfg");
    let mut text = String::new();
    for id in ids {
        text.push_str(&format!(
            "url = \"{url}{}\"\noutput = \"{}\"\n",
            appliance::wire::chunk_path(id),
            dir.join(id.to_hex()).display()
        ));
    }
    std::fs::write(&cfg, text).unwrap();
    let t = Instant::now();
    let st = Command::new("curl")
        .args([
            "-s",
            "--no-progress-meter",
            "--fail",
            "--parallel",
            "--parallel-max",
            "4",
            "-K",
        ])
        .arg(&cfg)
        .status()
        .ok()?;
    if !st.success() {
        eprintln!("curl failed: {st}");
        return None;
    }
    let fetched = t.elapsed();
    let next = AtomicU64::new(0);
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                let Some(id) = ids.get(i) else { break };
                let stored = std::fs::read(dir.join(id.to_hex())).unwrap();
                appliance::decode_chunk(id, &stored).expect("chunk verifies");
            });
        }
    });
    let total = t.elapsed();
    println!(
        "  baseline: curl {:.2} s + decode/hash {:.2} s",
        fetched.as_secs_f64(),
        (total - fetched).as_secs_f64()
    );
    Some(total)
}

fn casync_update(
    dir: &Path,
    v1: &Path,
    v2: &Path,
    url: &str,
    log: &Path,
) -> Option<(u64, u64, Duration)> {
    if Command::new("casync").arg("--version").output().is_err() {
        println!("  casync: not installed (Debian package casync); skipped");
        return None;
    }
    let store = dir.join("store.castr");
    let _ = std::fs::remove_dir_all(&store);
    for (img, idx) in [(v1, "v1.caibx"), (v2, "v2.caibx")] {
        let st = Command::new("casync")
            .arg("make")
            .arg(format!("--store={}", store.display()))
            .arg(dir.join(idx))
            .arg(img)
            .stdout(std::process::Stdio::null())
            .status()
            .ok()?;
        if !st.success() {
            println!("  casync make failed: {st}");
            return None;
        }
    }
    let from = log_lines(log);
    let out = dir.join("casync-out.img");
    let _ = std::fs::remove_file(&out);
    let t = Instant::now();
    let st = Command::new("casync")
        .arg("extract")
        .arg(format!("--store={url}store.castr"))
        .arg(format!("--seed={}", v1.display()))
        .arg(dir.join("v2.caibx"))
        .arg(&out)
        .status()
        .ok()?;
    let took = t.elapsed();
    if !st.success() {
        println!("  casync extract failed: {st}");
        return None;
    }
    let same = std::fs::read(&out).ok()? == std::fs::read(v2).ok()?;
    let (bytes, count) = served(log, from, "/store.castr/");
    println!(
        "  casync extract: {count} chunk files, output {}",
        if same {
            "identical to v2"
        } else {
            "DIFFERS from v2"
        }
    );
    let idx = std::fs::metadata(dir.join("v2.caibx"))
        .map(|m| m.len())
        .unwrap_or(0);
    Some((bytes, idx, took))
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` would run this too: only run
    // when asked to bench.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let _ = env_logger::builder()
        .filter_level(log::LevelFilter::Warn)
        .try_init();
    let mb: usize = std::env::var("RECEIVER_BENCH_MB")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1024);
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/receiver-bench");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    println!(
        "receiver bench: {mb} MiB image, 64 KiB chunks, loopback, files under {}",
        dir.display()
    );

    let repo = Repo::init(&dir.join("repo")).unwrap();
    let key = SecretKey::generate();
    repository::users::add(
        &repo,
        "bench",
        PASSWORD,
        KdfParams::INSECURE_FOR_TESTS,
        KdfParams::INSECURE_FOR_TESTS,
    )
    .unwrap();
    let v1 = make_image(mb, 2026);
    let v1_path = dir.join("v1.img");
    std::fs::write(&v1_path, &v1).unwrap();
    let t = Instant::now();
    let s1 = publish(&repo, &dir, &key, &v1_path);
    println!(
        "published v1: {} MiB new ({} MiB stored) in {:.1} s",
        s1.new_bytes >> 20,
        s1.new_stored_bytes >> 20,
        t.elapsed().as_secs_f64()
    );
    repository::users::assign(&repo, "bench", &["desk".into()]).unwrap();

    let mut cfg = ServeConfig::new(&repo, "127.0.0.1:0");
    cfg.threads = 8;
    cfg.access_log = Some(dir.join("access.log"));
    cfg.dummy_kdf = KdfParams::INSECURE_FOR_TESTS;
    let server = repository::server::start(repo.clone(), &cfg).unwrap();
    let direct = format!("http://{}/", server.addr());
    let Some((_nginx, url, log)) = start_nginx(&dir, &repo.public(), server.addr()) else {
        panic!("this benchmark needs nginx (Debian package nginx, in .ci/apt-packages) to serve the immutable content");
    };
    println!("serving: chunks and manifests by nginx at {url}, API proxied to collective-repo serve at {direct}");

    // 1. Fill throughput against curl.
    println!("\n1. fill throughput");
    let cache_path = dir.join("cache.img");
    let cache_size = ((mb as u64) << 20) * 2 + (256 << 20);
    let manifest = {
        let bytes = std::fs::read(repo.manifest_file("desk", 1)).unwrap();
        appliance::SignedManifest::verify_bytes(&bytes, &[key.public()]).unwrap()
    };
    let mut ids: Vec<appliance::ChunkId> = manifest.kernel.distinct_chunks();
    for d in &manifest.disks {
        for id in d.image.distinct_chunks() {
            if !ids.contains(&id) {
                ids.push(id);
            }
        }
    }
    let plain: u64 = (mb as u64) << 20;
    // Two baseline runs (the first also warms the server's page cache); the faster counts.
    let warm = curl_baseline(&url, &ids, &dir.join("warm"));
    let _ = std::fs::remove_dir_all(dir.join("warm"));
    let base = match (warm, curl_baseline(&url, &ids, &dir.join("curl"))) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    // Best of two for the receiver too (the machine is shared; runs vary).
    let best = |compress: bool| {
        let a = fill_once(&cache_path, cache_size, &url, &key, compress);
        let b = fill_once(&cache_path, cache_size, &url, &key, compress);
        if a.0 <= b.0 {
            a
        } else {
            b
        }
    };
    let (t_raw, p_raw) = best(false);
    let (t_lz4, p_lz4) = best(true);
    let _ = std::fs::remove_dir_all(dir.join("warm"));
    // The same fetch straight from collective-repo serve, for the record.
    let few = &ids[..ids.len().min(200)];
    let few_bytes: u64 = few.len() as u64 * CS as u64;
    if let Some(d) = curl_baseline(&direct, few, &dir.join("direct")) {
        println!(
            "  (curl straight from collective-repo serve, {} chunks: {:.1} MiB/s)",
            few.len(),
            mibs(few_bytes, d)
        );
    }
    let _ = std::fs::remove_dir_all(dir.join("direct"));
    let _ = std::fs::remove_dir_all(dir.join("curl"));
    let nonzero = p_raw.total_bytes;
    println!(
        "  image {} MiB, non-zero chunk bytes {} MiB, on the wire {} MiB",
        mb,
        nonzero >> 20,
        p_raw.fetch.wire_bytes >> 20
    );
    if let Some(b) = base {
        println!(
            "  curl + decode + hash:            {:7.1} MiB/s of image ({:.2} s)",
            mibs(plain, b),
            b.as_secs_f64()
        );
        println!(
            "  receiver, cache uncompressed:    {:7.1} MiB/s of image ({:.2} s)  ratio {:.2}",
            mibs(plain, t_raw),
            t_raw.as_secs_f64(),
            b.as_secs_f64() / t_raw.as_secs_f64()
        );
        println!(
            "  receiver, cache lz4 (default):   {:7.1} MiB/s of image ({:.2} s)  ratio {:.2}",
            mibs(plain, t_lz4),
            t_lz4.as_secs_f64(),
            b.as_secs_f64() / t_lz4.as_secs_f64()
        );
    } else {
        println!(
            "  curl baseline unavailable; receiver {:.1} MiB/s (raw), {:.1} MiB/s (lz4)",
            mibs(plain, t_raw),
            mibs(plain, t_lz4)
        );
    }
    let _ = p_lz4;

    // 2. Update v1 -> v2: 300 scattered 4 KiB writes plus 2 MiB of new data at the end.
    println!("\n2. update v1 -> v2");
    let mut v2 = v1.clone();
    let mut rng = Rng(99);
    for _ in 0..300 {
        let off = (rng.next() as usize % (v2.len() / 4096)) * 4096;
        for b in &mut v2[off..off + 4096] {
            *b = rng.next() as u8;
        }
    }
    let tail = v2.len() - (2 << 20);
    for b in &mut v2[tail..] {
        *b = rng.next() as u8;
    }
    drop(v1);
    let v2_path = dir.join("v2.img");
    std::fs::write(&v2_path, &v2).unwrap();
    drop(v2);
    let s2 = publish(&repo, &dir, &key, &v2_path);
    println!(
        "  changed chunks: {} ({:.2} MiB plaintext, {:.2} MiB stored)",
        s2.new_chunks,
        s2.new_bytes as f64 / (1 << 20) as f64,
        s2.new_stored_bytes as f64 / (1 << 20) as f64
    );
    // The receiver's cache holds v1 (from the lz4 fill above).
    let cache = receiver::open_cache(&cache_path, true).unwrap();
    let from = log_lines(&log);
    let rcfg = RepoConfig::new(&url, vec![key.public()]);
    let t = Instant::now();
    let mut session = receiver::login(cache.clone(), &rcfg, "bench", PASSWORD).unwrap();
    let fetcher = receiver::Fetcher::new(session.client.clone().unwrap());
    let p = receiver::fill::start(
        cache.clone(),
        fetcher,
        &session.set,
        FillOptions {
            connections: 4,
            ..Default::default()
        },
    )
    .wait()
    .unwrap();
    let took = t.elapsed();
    session.release_previous().unwrap();
    let (chunk_bytes, n) = served(&log, from, "/chunks/");
    let (manifest_bytes, _) = served(&log, from, "/manifests/");
    println!(
        "  receiver: {n} chunk GETs, {:.2} MiB of chunks + {:.2} MiB manifest in {:.2} s",
        chunk_bytes as f64 / (1 << 20) as f64,
        manifest_bytes as f64 / (1 << 20) as f64,
        took.as_secs_f64()
    );
    println!(
        "  receiver: chunk bytes / changed chunks' bytes = {:.3} (plaintext {:.3}); with the manifest {:.3}",
        chunk_bytes as f64 / s2.new_stored_bytes as f64,
        p.fetch.plain_bytes as f64 / s2.new_bytes as f64,
        (chunk_bytes + manifest_bytes) as f64 / s2.new_stored_bytes as f64
    );
    if let Some((bytes, idx, took)) = casync_update(&dir, &v1_path, &v2_path, &url, &log) {
        println!(
            "  casync extract --seed=v1: {:.2} MiB of chunks (+ {:.2} MiB index) in {:.2} s; / changed chunks' stored bytes = {:.3}, / changed plaintext = {:.3}",
            bytes as f64 / (1 << 20) as f64,
            idx as f64 / (1 << 20) as f64,
            took.as_secs_f64(),
            bytes as f64 / s2.new_stored_bytes as f64,
            bytes as f64 / s2.new_bytes as f64
        );
    }
    server.shutdown();
    if std::env::var("RECEIVER_BENCH_KEEP").is_err() {
        let _ = std::fs::remove_dir_all(&dir);
    }
}
