//! Publishing, dedup, garbage collection, crash/full-disk behaviour and CLI errors.

mod common;

use std::process::Command;
use std::time::{Duration, SystemTime};

use appliance::wire::manifest_path;
use appliance::{ChunkId, SignedManifest};
use common::*;
use repository::gc::{gc, GcOptions};

#[test]
fn second_version_stores_only_changed_chunks() {
    let f = Fixture::new();
    let mut v2 = f.system.clone();
    v2[70_000] ^= 1; // one byte in chunk 1
    v2[900_000] = 5; // a zero chunk becomes non-zero
    let stats = f.publish("desk", &v2);
    assert_eq!(stats.version, 2);
    assert_eq!(stats.new_chunks, 2, "{stats}");
    assert_eq!(stats.new_bytes, 2 * 65536);
    assert!(stats.existing_chunks >= 5, "{stats}");
    // Unchanged republish: nothing new.
    let stats = f.publish("desk", &v2);
    assert_eq!((stats.version, stats.new_chunks), (3, 0));
    // Another appliance sharing content dedups against it.
    let stats = f.publish("other", &v2);
    assert_eq!((stats.version, stats.new_chunks), (1, 0));
    let bytes = std::fs::read(f.repo.public().join(manifest_path("desk", 2))).unwrap();
    let m = SignedManifest::verify_bytes(&bytes, &f.trusted()).unwrap();
    assert_eq!(
        m.disk("user")
            .unwrap()
            .image
            .chunks
            .iter()
            .flatten()
            .count(),
        0
    );
}

#[test]
fn gc_keeps_referenced_and_young_chunks_and_removes_the_rest() {
    let f = Fixture::new();
    let v1_chunks: std::collections::HashSet<ChunkId> = f
        .repo
        .list_chunks()
        .unwrap()
        .into_iter()
        .map(|c| c.0)
        .collect();
    let mut v2 = f.system.clone();
    v2[..200_000].copy_from_slice(&bytes(99, 200_000, true));
    f.publish("desk", &v2);

    // Nothing is unreferenced yet: gc removes nothing.
    let s = gc(
        &f.repo,
        &GcOptions {
            grace: Duration::ZERO,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(s.removed_chunks, 0);

    // Drop version 1. Its own chunks are unreferenced but young: kept with the default grace.
    let s = gc(
        &f.repo,
        &GcOptions {
            keep_versions: Some(1),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(s.removed_manifests, 1);
    assert_eq!(s.removed_chunks, 0);
    assert!(s.kept_recent >= 4, "{s:?}");

    // Age them: now they go, and version 2 stays complete.
    let old = SystemTime::now() - Duration::from_secs(7200);
    for (_, path) in f.repo.list_chunks().unwrap() {
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .set_modified(old)
            .unwrap();
    }
    // A writer touching an unreferenced chunk (as publish does) protects it.
    let protected = *v1_chunks
        .iter()
        .find(|id| !repository::gc::mark(&f.repo).unwrap().contains(id))
        .unwrap();
    assert!(f.repo.touch_chunk(&protected).unwrap());
    let dry = gc(
        &f.repo,
        &GcOptions {
            grace: Duration::from_secs(3600),
            dry_run: true,
            ..Default::default()
        },
    )
    .unwrap();
    let s = gc(
        &f.repo,
        &GcOptions {
            grace: Duration::from_secs(3600),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(dry.removed_chunks, s.removed_chunks);
    assert!(s.removed_chunks >= 3, "{s:?}");
    assert!(f.repo.has_chunk(&protected));
    let referenced = repository::gc::mark(&f.repo).unwrap();
    assert!(
        referenced.iter().all(|id| f.repo.has_chunk(id)),
        "gc removed a referenced chunk"
    );
}

#[test]
fn gc_refuses_to_run_with_an_unreadable_manifest() {
    let f = Fixture::new();
    std::fs::write(f.repo.manifest_file("desk", 7), b"{garbage").unwrap();
    let before = f.repo.list_chunks().unwrap().len();
    let err = gc(
        &f.repo,
        &GcOptions {
            grace: Duration::ZERO,
            ..Default::default()
        },
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("without deleting anything"),
        "{err}"
    );
    assert_eq!(f.repo.list_chunks().unwrap().len(), before);
}

#[test]
fn publish_on_a_full_disk_leaves_nothing_visible() {
    // Needs root to mount a small tmpfs; skipped otherwise.
    let f = Fixture::new();
    let mnt = f.path("small");
    std::fs::create_dir_all(&mnt).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=2m", "tmpfs"])
        .arg(&mnt)
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !mounted {
        eprintln!("SKIPPED: cannot mount a tmpfs (not root?)");
        return;
    }
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(&self.0).status();
        }
    }
    let _guard = Unmount(mnt.clone());
    let repo = repository::Repo::init(&mnt.join("repo")).unwrap();
    let big = bytes(5, 3 << 20, false); // incompressible, larger than the disk
    let (k, s) = (f.path("k"), f.path("big.img"));
    std::fs::write(&k, &f.kernel).unwrap();
    std::fs::write(&s, &big).unwrap();
    let err = repository::publish::publish(&repo, &request("desk", &k, &s), &f.key)
        .unwrap_err()
        .to_string();
    assert!(err.contains("disk is full"), "{err}");
    assert!(
        repo.versions("desk").unwrap().is_empty(),
        "no version may become visible"
    );
    let leftovers: Vec<_> = std::fs::read_dir(repo.tmp_dir()).unwrap().collect();
    assert!(
        leftovers.is_empty(),
        "temporary files left behind: {leftovers:?}"
    );
    // Every chunk that did become visible is complete.
    for (id, path) in repo.list_chunks().unwrap() {
        appliance::decode_chunk(&id, &std::fs::read(path).unwrap()).unwrap();
    }
}

#[test]
fn cli_end_to_end_and_errors_that_say_what_to_do() {
    let tmp = tempfile::tempdir().unwrap();
    let d = |p: &str| tmp.path().join(p).to_string_lossy().into_owned();
    let repo = d("repo");
    assert!(cli(&["init", &repo], None).0);
    let (ok, _, err) = cli(&["init", &repo], None);
    assert!(!ok && err.contains("already a repository"), "{err}");
    let (ok, out, _) = cli(&["keygen", "--out", &d("pub")], None);
    assert!(ok && out.contains("ed25519:"), "{out}");
    let (ok, _, err) = cli(&["keygen", "--out", &d("pub")], None);
    assert!(!ok && err.contains("exists already"), "{err}");
    std::fs::write(d("kernel"), bytes(1, 100_000, true)).unwrap();
    std::fs::write(d("sys.img"), system_image(3)).unwrap();

    let publish = |sys: &str| {
        cli(
            &[
                "publish",
                &repo,
                "--name",
                "desk",
                "--kernel",
                &d("kernel"),
                "--disk",
                &format!("system={sys}"),
                "--disk",
                "user=16M",
                "--memory",
                "256",
                "--vcpus",
                "1",
                "--key",
                &d("pub.key"),
                "--network",
                "office",
            ],
            None,
        )
    };
    let (ok, out, err) = publish(&d("sys.img"));
    assert!(ok, "{err}");
    assert!(out.contains("published desk version 1"), "{out}");
    assert!(out.contains("already stored: 0 bytes"), "{out}");
    let (ok, _, err) = publish(&d("missing.img"));
    assert!(
        !ok && err.contains("missing.img") && err.contains("check the path"),
        "{err}"
    );
    let (ok, _, err) = cli(
        &[
            "publish",
            &d("nowhere"),
            "--name",
            "x",
            "--kernel",
            "k",
            "--disk",
            "system=s",
            "--memory",
            "64",
            "--vcpus",
            "1",
        ],
        None,
    );
    assert!(!ok && err.contains("collective-repo init"), "{err}");

    let (ok, _, err) = cli(
        &["-r", &repo, "user", "add", "alice", "--insecure-fast-kdf"],
        Some("pw1\n"),
    );
    assert!(ok, "{err}");
    let (ok, _, err) = cli(
        &["-r", &repo, "user", "add", "alice", "--insecure-fast-kdf"],
        Some("pw2\n"),
    );
    assert!(
        !ok && err.contains("exists already") && err.contains("user passwd"),
        "{err}"
    );
    let (ok, _, err) = cli(
        &["-r", &repo, "user", "add", "bob", "--insecure-fast-kdf"],
        Some(""),
    );
    assert!(!ok && err.contains("no password"), "{err}");
    let (ok, _, err) = cli(&["-r", &repo, "set", "assign", "alice", "nosuch"], None);
    assert!(!ok && err.contains("no published version"), "{err}");
    assert!(cli(&["-r", &repo, "set", "assign", "alice", "desk"], None).0);
    // alice's data key opens only with her password: a reset must say so and stop.
    let (ok, _, err) = cli(
        &[
            "-r",
            &repo,
            "user",
            "passwd",
            "alice",
            "--insecure-fast-kdf",
        ],
        Some("pw3\n"),
    );
    assert!(
        !ok && err.contains("--discard-data") && err.contains("recovery"),
        "{err}"
    );
    assert!(
        cli(
            &[
                "-r",
                &repo,
                "user",
                "passwd",
                "alice",
                "--discard-data",
                "--insecure-fast-kdf"
            ],
            Some("pw3\n")
        )
        .0
    );
    let r = repository::Repo::open(tmp.path().join("repo").as_path()).unwrap();
    let rec = r.user("alice").unwrap().unwrap();
    appliance::verify_password(&rec.verifier, "pw3").unwrap();
    let (ok, out, _) = cli(&["-r", &repo, "list"], None);
    assert!(
        ok && out.contains("desk: versions 1") && out.contains("alice: set [desk]"),
        "{out}"
    );
    assert!(cli(&["-r", &repo, "user", "remove", "alice"], None).0);
    let (ok, _, err) = cli(&["-r", &repo, "user", "remove", "alice"], None);
    assert!(!ok && err.contains("no user alice"), "{err}");
    let (ok, out, _) = cli(&["-r", &repo, "gc"], None);
    assert!(ok && out.contains("removed 0 unreferenced"), "{out}");

    // verify: clean, then a tampered manifest and a rotten chunk are reported with advice.
    let (ok, out, err) = cli(
        &[
            "-r",
            &repo,
            "verify",
            "--trusted",
            &d("pub.pub"),
            "--chunks",
        ],
        None,
    );
    assert!(ok && out.contains("0 problem(s)"), "{out}{err}");
    let mpath = tmp.path().join("repo/public/manifests/desk/1.json");
    let text = std::fs::read_to_string(&mpath).unwrap();
    std::fs::write(&mpath, text.replace("\"vcpus\":1", "\"vcpus\":64")).unwrap();
    let (_, chunk) = r.list_chunks().unwrap().into_iter().next().unwrap();
    let mut c = std::fs::read(&chunk).unwrap();
    c[9] ^= 1;
    std::fs::write(&chunk, c).unwrap();
    let (ok, out, _) = cli(
        &[
            "-r",
            &repo,
            "verify",
            "--trusted",
            &d("pub.pub"),
            "--chunks",
        ],
        None,
    );
    assert!(!ok, "{out}");
    assert!(
        out.contains("does not match the content") && out.contains("publish the appliance again"),
        "{out}"
    );
    assert!(
        out.contains(&chunk.display().to_string()) && out.contains("delete it"),
        "{out}"
    );
}

#[test]
fn ext4_images_are_reproducible_and_updates_layout_stable() {
    if Command::new("mkfs.ext4").arg("-V").output().is_err() {
        eprintln!("SKIPPED: e2fsprogs not installed");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir_all(src.join("etc")).unwrap();
    for i in 0..20 {
        std::fs::write(src.join(format!("etc/file{i}")), bytes(i, 50_000, true)).unwrap();
    }
    let (a, b) = (tmp.path().join("a.img"), tmp.path().join("b.img"));
    repository::image::create(&src, &a, 8 << 20, "test").unwrap();
    repository::image::create(&src, &b, 8 << 20, "test").unwrap();
    assert_eq!(
        std::fs::read(&a).unwrap(),
        std::fs::read(&b).unwrap(),
        "same tree, same image"
    );

    let pkg = tmp.path().join("pkg");
    std::fs::create_dir_all(pkg.join("bin")).unwrap();
    std::fs::write(pkg.join("bin/tool"), bytes(77, 100_000, false)).unwrap();
    repository::image::update(
        &b,
        &[repository::image::Change::Add {
            host: pkg.clone(),
            guest: "/opt/pkg".into(),
        }],
    )
    .unwrap();
    // Adding into directories that exist (replacing files) keeps the filesystem consistent
    // (update() runs e2fsck -fn and fails otherwise).
    std::fs::write(pkg.join("bin/tool"), bytes(78, 100_000, false)).unwrap();
    let c = tmp.path().join("c.img");
    std::fs::copy(&b, &c).unwrap();
    repository::image::update(
        &c,
        &[
            repository::image::Change::Add {
                host: pkg.clone(),
                guest: "/opt/pkg".into(),
            },
            repository::image::Change::Add {
                host: pkg.join("bin/tool"),
                guest: "/etc/file3".into(),
            },
        ],
    )
    .unwrap();
    let (va, vb) = (std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
    let changed_blocks = va
        .chunks(4096)
        .zip(vb.chunks(4096))
        .filter(|(x, y)| x != y)
        .count();
    // 100 KB of data is 25 blocks, plus a few metadata blocks.
    assert!(
        (25..60).contains(&changed_blocks),
        "{changed_blocks} blocks changed"
    );
    let err = repository::image::update(
        &b,
        &[repository::image::Change::Add {
            host: tmp.path().join("nope"),
            guest: "/x".into(),
        }],
    )
    .unwrap_err();
    assert!(err.to_string().contains("check the path"), "{err}");
}

#[test]
fn concurrent_publishes_get_distinct_versions() {
    let f = Fixture::new();
    let versions: Vec<u64> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..3u64)
            .map(|i| {
                let f = &f;
                s.spawn(move || {
                    let (k, img) = (f.path(&format!("k{i}")), f.path(&format!("s{i}.img")));
                    std::fs::write(&k, &f.kernel).unwrap();
                    std::fs::write(&img, system_image(100 + i)).unwrap();
                    repository::publish::publish(&f.repo, &request("desk", &k, &img), &f.key)
                        .unwrap()
                        .version
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut sorted = versions.clone();
    sorted.sort();
    assert_eq!(sorted, vec![2, 3, 4], "{versions:?}");
    for v in 1..=4 {
        let bytes = std::fs::read(f.repo.manifest_file("desk", v)).unwrap();
        let m = SignedManifest::verify_bytes(&bytes, &f.trusted()).unwrap();
        assert_eq!(m.version, v);
        assert!(m.all_chunks().iter().all(|id| f.repo.has_chunk(id)));
    }
}

#[test]
fn boot_trace_orders_the_boot_profile() {
    let f = Fixture::new();
    let (k, img, trace) = (f.path("k"), f.path("s.img"), f.path("trace"));
    std::fs::write(&k, &f.kernel).unwrap();
    std::fs::write(&img, &f.system).unwrap();
    // System chunk 6 first, then the kernel, then chunk 0 twice (kept once; once by the
    // guest's device name, as `vmm run --trace-reads` writes it), a zero chunk.
    std::fs::write(
        &trace,
        "# boot\nsystem 400000\nkernel 0\nvda 10\nsystem 20\nsystem 900000\n",
    )
    .unwrap();
    let mut req = request("traced", &k, &img);
    req.boot_trace = Some(trace.clone());
    repository::publish::publish(&f.repo, &req, &f.key).unwrap();
    let m = SignedManifest::verify_bytes(
        &std::fs::read(f.repo.manifest_file("traced", 1)).unwrap(),
        &f.trusted(),
    )
    .unwrap();
    let sys = &m.disk("system").unwrap().image;
    assert_eq!(
        m.boot_profile.clone().unwrap(),
        vec![
            sys.chunks[6].unwrap(),
            m.kernel.chunks[0].unwrap(),
            sys.chunks[0].unwrap()
        ]
    );
    std::fs::write(&trace, "system 99999999\n").unwrap();
    let err = repository::publish::publish(&f.repo, &req, &f.key)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("line 1") && err.contains("beyond the end"),
        "{err}"
    );
}
