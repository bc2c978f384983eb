//! `cargo bench -p repository`: publish throughput against `sha256sum` + `lz4`, and the
//! bytes a small update to an ext4 image costs against the bytes that changed, side by
//! side with `casync make` on the same two images. One run, about a minute.
//!
//! The images: a 256 MiB ext4 image of about 150 MB of this machine's files
//! (`/usr/lib/x86_64-linux-gnu`, `/usr/share`), and version 2 made from it layout-stably
//! (`image update`: an 8 MB "package" added under /opt, 5 files rewritten), plus, for
//! contrast, version 2 rebuilt from scratch with `mkfs.ext4 -d`.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use appliance::{SecretKey, DEFAULT_CHUNK_SIZE};
use repository::image::{create, update, Change};
use repository::publish::{publish, DiskSource, DiskSpec, PublishRequest, PublishStats};
use repository::Repo;

const IMAGE_SIZE: u64 = 256 << 20;
const TREE_BYTES: u64 = 150_000_000;
const PACKAGE_BYTES: u64 = 8_000_000;

fn mb(b: u64) -> f64 {
    b as f64 / 1e6
}

/// Copies regular files from `roots` (sorted walk) into `dst` until `budget` bytes.
fn copy_tree(roots: &[&str], dst: &Path, budget: u64, skip: u64) -> (u64, Vec<PathBuf>) {
    let mut files = Vec::new();
    for r in roots {
        walk(Path::new(r), &mut files);
    }
    let (mut total, mut skipped, mut copied) = (0u64, 0u64, Vec::new());
    for f in files {
        let Ok(meta) = fs::metadata(&f) else { continue };
        if meta.len() == 0 || meta.len() > 8 << 20 {
            continue;
        }
        if skipped < skip {
            skipped += meta.len();
            continue;
        }
        let rel = f.strip_prefix("/").unwrap();
        let target = dst.join(rel);
        fs::create_dir_all(target.parent().unwrap()).unwrap();
        if fs::copy(&f, &target).is_err() {
            continue;
        }
        total += meta.len();
        copied.push(target);
        if total >= budget {
            break;
        }
    }
    (total, copied)
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    let mut entries: Vec<_> = entries.flatten().collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let Ok(ft) = e.file_type() else { continue };
        let name = e.file_name();
        let ok_name = name.to_str().is_some_and(|n| {
            !n.chars()
                .any(|c| c.is_whitespace() || c == '"' || c == '\\')
        });
        if !ok_name {
            continue;
        }
        if ft.is_dir() {
            walk(&e.path(), out);
        } else if ft.is_file() {
            out.push(e.path());
        }
    }
}

fn time_cmd(cmd: &str) -> Duration {
    let t = Instant::now();
    let ok = Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(ok, "`{cmd}` failed: is it installed?");
    t.elapsed()
}

fn dir_bytes(dir: &Path) -> u64 {
    let mut files = Vec::new();
    walk(dir, &mut files);
    files
        .iter()
        .filter_map(|f| fs::metadata(f).ok())
        .map(|m| m.len())
        .sum()
}

fn publish_image(repo: &Repo, key: &SecretKey, kernel: &Path, img: &Path) -> PublishStats {
    let req = PublishRequest {
        name: "bench".into(),
        kernel: kernel.into(),
        initrd: None,
        cmdline: String::new(),
        disks: vec![DiskSpec {
            role: appliance::DiskRole::System,
            source: DiskSource::Image(img.into()),
        }],
        memory_mib: 512,
        vcpus: 1,
        networks: vec![],
        chunk_size: DEFAULT_CHUNK_SIZE,
        boot_trace: None,
        display: false,
    };
    publish(repo, &req, key).expect("publish")
}

fn casync_store_growth(store: &Path, index: &Path, img: &Path) -> (u64, Duration) {
    let before = dir_bytes(store);
    let t = Instant::now();
    let out = Command::new("casync")
        .arg("make")
        .arg(format!("--store={}", store.display()))
        .arg(index)
        .arg(img)
        .output()
        .expect("run casync (apt-get install casync)");
    assert!(
        out.status.success(),
        "casync make failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (dir_bytes(store) - before, t.elapsed())
}

fn main() {
    // `cargo bench` passes --bench; under `cargo test --all-targets` (debug build, no
    // --bench) this would take minutes, so it only says how to run it.
    if !std::env::args().any(|a| a == "--bench") {
        println!("publish bench: run with `cargo bench -p repository`");
        return;
    }
    let base = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("publish-bench");
    let _ = fs::remove_dir_all(&base);
    fs::create_dir_all(&base).unwrap();
    let p = |n: &str| base.join(n);

    eprintln!(
        "preparing a {} MiB ext4 image of ~{} MB of files...",
        IMAGE_SIZE >> 20,
        TREE_BYTES / 1_000_000
    );
    let (tree_bytes, tree_files) = copy_tree(
        &["/usr/lib/x86_64-linux-gnu", "/usr/share"],
        &p("tree"),
        TREE_BYTES,
        0,
    );
    let v1 = p("v1.img");
    create(&p("tree"), &v1, IMAGE_SIZE, "bench").unwrap();

    // Version 2, layout-stable: copy of v1 with a package added and 5 files rewritten.
    let (pkg_bytes, _) = copy_tree(&["/usr/bin", "/usr/sbin"], &p("pkg"), PACKAGE_BYTES, 0);
    let mut changes = vec![Change::Add {
        host: p("pkg"),
        guest: "/opt".into(),
    }];
    let mut rewritten_bytes = 0;
    for (i, f) in tree_files
        .iter()
        .step_by(tree_files.len() / 5)
        .take(5)
        .enumerate()
    {
        let mut data = fs::read(f).unwrap();
        data.extend_from_slice(format!("\nrewritten {i}\n").as_bytes());
        let host = p(&format!("rewrite{i}"));
        fs::write(&host, &data).unwrap();
        rewritten_bytes += data.len() as u64;
        let guest = format!("/{}", f.strip_prefix(p("tree")).unwrap().display());
        changes.push(Change::Add { host, guest });
    }
    let v2 = p("v2.img");
    fs::copy(&v1, &v2).unwrap();
    update(&v2, &changes).unwrap();
    let (a, b) = (fs::read(&v1).unwrap(), fs::read(&v2).unwrap());
    let changed_blocks = a
        .chunks(4096)
        .zip(b.chunks(4096))
        .filter(|(x, y)| x != y)
        .count() as u64;
    drop((a, b));
    let true_changed = pkg_bytes + rewritten_bytes;

    // Version 2 rebuilt from scratch (what a naive publisher does).
    for (i, f) in tree_files
        .iter()
        .step_by(tree_files.len() / 5)
        .take(5)
        .enumerate()
    {
        fs::copy(p(&format!("rewrite{i}")), f).unwrap();
    }
    let _ = Command::new("cp")
        .arg("-a")
        .arg(p("pkg/usr"))
        .arg(p("tree/opt"))
        .status();
    let v2_naive = p("v2-naive.img");
    create(&p("tree"), &v2_naive, IMAGE_SIZE, "bench").unwrap();

    let kernel = p("kernel");
    fs::write(&kernel, b"bench kernel placeholder").unwrap();
    let key = SecretKey::generate();

    // Baseline: sha256sum and lz4 of the same image, page cache warm for everyone.
    let _ = time_cmd(&format!("cat {} > /dev/null", v1.display()));
    let t_sha = time_cmd(&format!("sha256sum {}", v1.display()));
    let t_lz4 = time_cmd(&format!("lz4 -1 -c {} > /dev/null", v1.display()));
    let baseline = t_sha + t_lz4;

    let repo = Repo::init(&p("repo")).unwrap();
    let s1 = publish_image(&repo, &key, &kernel, &v1);
    let s2 = publish_image(&repo, &key, &kernel, &v2);
    let naive_repo = Repo::init(&p("repo-naive")).unwrap();
    publish_image(&naive_repo, &key, &kernel, &v1);
    let s2n = publish_image(&naive_repo, &key, &kernel, &v2_naive);

    let store = p("casync.castr");
    let (c1, tc1) = casync_store_growth(&store, &p("v1.caibx"), &v1);
    let (c2, _) = casync_store_growth(&store, &p("v2.caibx"), &v2);
    let store_n = p("casync-naive.castr");
    casync_store_growth(&store_n, &p("n1.caibx"), &v1);
    let (c2n, _) = casync_store_growth(&store_n, &p("n2.caibx"), &v2_naive);

    let secs = |d: Duration| d.as_secs_f64();
    let img_mb = mb(IMAGE_SIZE);
    println!();
    println!(
        "== publish throughput: {} MiB ext4 image, {:.0} MB of files, chunk 64 KiB ==",
        IMAGE_SIZE >> 20,
        mb(tree_bytes)
    );
    println!(
        "sha256sum                   {:6.2} s  {:7.0} MB/s",
        secs(t_sha),
        img_mb / secs(t_sha)
    );
    println!(
        "lz4 -1                      {:6.2} s  {:7.0} MB/s",
        secs(t_lz4),
        img_mb / secs(t_lz4)
    );
    println!(
        "sha256sum + lz4 (baseline)  {:6.2} s  {:7.0} MB/s",
        secs(baseline),
        img_mb / secs(baseline)
    );
    println!("collective-repo publish v1  {:6.2} s  {:7.0} MB/s  (hash, zero-skip, lz4, write+fsync each chunk, sign)", secs(s1.elapsed), img_mb / secs(s1.elapsed));
    println!(
        "ratio publish / baseline    {:6.2} x the time",
        secs(s1.elapsed) / secs(baseline)
    );
    println!(
        "casync make v1              {:6.2} s  (for reference)",
        secs(tc1)
    );
    println!(
        "v1 stored: {:.1} MB new in {} chunks -> {:.1} MB after lz4; zero chunks skipped {:.1} MB; casync store {:.1} MB",
        mb(s1.new_bytes),
        s1.new_chunks,
        mb(s1.new_stored_bytes),
        mb(s1.zero_bytes),
        mb(c1)
    );
    println!();
    println!("== version 2: {:.1} MB package added + {} files rewritten ({:.2} MB); changed 4 KiB blocks: {} ({:.1} MB) ==", mb(pkg_bytes), 5, mb(rewritten_bytes), changed_blocks, mb(changed_blocks * 4096));
    println!(
        "{:<34} {:>14} {:>16} {:>10}",
        "", "new (plain MB)", "new stored (MB)", "stored/changed"
    );
    println!(
        "{:<34} {:>14.2} {:>16} {:>10}",
        "bytes actually changed (files)",
        mb(true_changed),
        "-",
        "1.00"
    );
    println!(
        "{:<34} {:>14.2} {:>16.2} {:>10.2}",
        "collective-repo, layout-stable v2",
        mb(s2.new_bytes),
        mb(s2.new_stored_bytes),
        s2.new_stored_bytes as f64 / true_changed as f64
    );
    println!(
        "{:<34} {:>14} {:>16.2} {:>10.2}",
        "casync make, layout-stable v2",
        "-",
        mb(c2),
        c2 as f64 / true_changed as f64
    );
    println!(
        "{:<34} {:>14.2} {:>16.2} {:>10.2}",
        "collective-repo, v2 rebuilt",
        mb(s2n.new_bytes),
        mb(s2n.new_stored_bytes),
        s2n.new_stored_bytes as f64 / true_changed as f64
    );
    println!(
        "{:<34} {:>14} {:>16.2} {:>10.2}",
        "casync make, v2 rebuilt",
        "-",
        mb(c2n),
        c2n as f64 / true_changed as f64
    );
    println!("(casync stores zstd-compressed chunks of ~64 KiB average, content-defined; ours are fixed 64 KiB, lz4)");
    let _ = fs::remove_dir_all(&base);
}
