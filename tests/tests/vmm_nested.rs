//! The VMM inside the firmware boots Debian's stock cloud kernel with a root disk served
//! from cachefs: the appliance's init loads `virtio_mmio` (found through our ACPI
//! tables), checks the sha256 of a file on the root disk, writes to a second disk,
//! prints a marker and powers off; the VMM exits 0.
//!
//! Everything runs nested: the firmware in QEMU TCG (`-cpu max`, so it has SVM), the
//! appliance on the firmware's `/dev/kvm`.

use anyhow::{Context, Result};
use image_builder::initramfs::{self, Tree};
use image_builder::{binaries, debian, image};
use sha2::{Digest, Sha256};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use system_tests::firmware::{build_variant, workspace};
use system_tests::{Machine, MachineConfig};

const CHUNK_SIZE: u32 = 64 * 1024;

/// Deterministic file content, so the expected hash is fixed.
fn probe_file_content() -> Vec<u8> {
    let mut x: u64 = 0x9e3779b97f4a7c15;
    (0..300 * 1024)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

struct Appliance {
    files: Vec<(PathBuf, String)>,
    cache_disk: PathBuf,
    scratch_disk: PathBuf,
    expected_sha256: String,
}

/// The cloud kernel, the probe initramfs, an ext4 root image chunked into a cachefs
/// cache, a scratch disk, and the argv file init's autorun starts the VMM with.
fn build_appliance(dir: &Path) -> Result<Appliance> {
    fs::create_dir_all(dir)?;
    let cloud = debian::fetch_kernel(&image::default_cache_dir(), "linux-image-cloud-amd64", None)?;
    let probe = binaries::build_static(&workspace(), &[], &[("collective-init", "appliance-probe")])?;

    let mut tree = Tree::new();
    for d in ["proc", "sys", "mnt"] {
        tree.dir(d);
    }
    tree.char_device("dev/console", 0o600, 5, 1);
    tree.file("init", 0o755, fs::read(&probe[0])?);
    image::add_modules(&mut tree, &cloud, &["virtio_mmio", "virtio_blk"])?;
    let initrd = dir.join("probe-initrd.img");
    fs::write(&initrd, initramfs::compress(&tree.to_cpio()?)?)?;

    let content = probe_file_content();
    let root_dir = dir.join("root");
    let _ = fs::remove_dir_all(&root_dir);
    fs::create_dir_all(&root_dir)?;
    fs::write(root_dir.join("probe.txt"), &content)?;
    let root_img = dir.join("root.img");
    let _ = fs::remove_file(&root_img);
    let status = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-b", "4096", "-E", "root_owner=0:0", "-U", "6f1c1d2e-0000-4000-8000-000000000001", "-d"])
        .arg(&root_dir)
        .arg(&root_img)
        .arg("16M")
        .env("E2FSPROGS_FAKE_TIME", "1")
        .status()
        .context("running mkfs.ext4 (Debian's e2fsprogs)")?;
    anyhow::ensure!(status.success(), "mkfs.ext4 failed");

    let blob = appliance::Chunker::new(fs::File::open(&root_img)?, CHUNK_SIZE)?.into_blob()?;
    let list = dir.join("root.json");
    fs::write(&list, serde_json::to_vec(&blob)?)?;
    let image_bytes = fs::read(&root_img)?;
    let cache_disk = dir.join("cache.img");
    {
        let storage = cachefs::FileStorage::create_file(&cache_disk, 64 << 20)?;
        let cache = cachefs::Cache::create(Box::new(storage), cachefs::CreateOptions { force: true })?;
        for (i, id) in blob.chunks.iter().enumerate() {
            if let Some(id) = id {
                let start = i * CHUNK_SIZE as usize;
                let end = (start + CHUNK_SIZE as usize).min(image_bytes.len());
                cache.insert(&cachefs::ChunkId(id.0), &image_bytes[start..end])?;
            }
        }
        cache.sync()?;
    }
    let scratch_disk = dir.join("scratch.img");
    fs::write(&scratch_disk, vec![0u8; 4 << 20])?;

    let argv = [
        "/bin/vmm",
        "run",
        "--kernel",
        "/appliance/vmlinuz",
        "--initrd",
        "/appliance/initrd.img",
        "--cmdline",
        "console=ttyS0 loglevel=4 probe.file=/probe.txt",
        "--disk",
        "cachefs=/dev/vda:/appliance/root.json,ro",
        "--disk",
        "/dev/vdb",
        "--memory",
        "512",
        "--vcpus",
        "2",
        "--no-input",
    ];
    let run = dir.join("run");
    fs::write(&run, argv.join("\n") + "\n")?;
    Ok(Appliance {
        files: vec![
            (cloud.vmlinuz(), "appliance/vmlinuz".into()),
            (initrd, "appliance/initrd.img".into()),
            (list, "appliance/root.json".into()),
            (run, "appliance/run".into()),
        ],
        cache_disk,
        scratch_disk,
        expected_sha256: hex(&Sha256::digest(&content)),
    })
}

#[test]
fn vmm_boots_the_debian_cloud_kernel_from_a_cachefs_root_disk() {
    let dir = workspace().join("target/system-tests/vmm-appliance");
    let appliance = build_appliance(&dir).expect("build the test appliance");
    let firmware = build_variant("vmm-firmware", &["collective.autorun=/appliance/run".to_string()], &appliance.files).expect("build the firmware");

    let config = MachineConfig { disks: vec![appliance.cache_disk.clone(), appliance.scratch_disk.clone()], ..Default::default() };
    let mut m = Machine::boot(&firmware, &config).unwrap();
    let marker = format!("APPLIANCE-PROBE sha256={} file=/probe.txt", appliance.expected_sha256);
    m.expect(&marker, Duration::from_secs(600)).unwrap();
    m.expect("autorun: /bin/vmm exited with code 0", Duration::from_secs(120)).unwrap();

    // The appliance's write went through the VMM's virtio-blk to the firmware's disk.
    let scratch = fs::read(&appliance.scratch_disk).unwrap();
    let wrote = format!("PROBE-WROTE sha256={}\n", appliance.expected_sha256);
    assert_eq!(&scratch[..wrote.len()], wrote.as_bytes(), "the appliance's write did not reach the second disk");

    m.send_line("poweroff").unwrap();
    assert!(m.wait_exit(Duration::from_secs(120)).unwrap().success());
}
