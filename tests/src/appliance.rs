//! A small test appliance: Debian's cloud kernel, an initramfs whose init is
//! `appliance-probe`, an ext4 root image (also chunked into a cachefs cache), and a
//! scratch disk. The nested VMM test and benchmark boot it.

use anyhow::{Context, Result};
use image_builder::initramfs::{self, Tree};
use image_builder::{binaries, debian, image};
use sha2::{Digest, Sha256};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::firmware::workspace;

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

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub struct TestAppliance {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub root_img: PathBuf,
    /// The root image's chunk list (`ChunkList` JSON).
    pub root_list: PathBuf,
    /// A cachefs cache file holding the root image's chunks.
    pub cache_disk: PathBuf,
    /// 4 MiB of zeros.
    pub scratch_disk: PathBuf,
    /// sha256 of `/probe.txt` on the root image.
    pub expected_sha256: String,
}

impl TestAppliance {
    /// Builds the appliance's files into `dir`.
    pub fn build(dir: &Path) -> Result<TestAppliance> {
        fs::create_dir_all(dir)?;
        let cloud =
            debian::fetch_kernel(&image::default_cache_dir(), "linux-image-cloud-amd64", None)?;
        let probe =
            binaries::build_static(&workspace(), &[], &[("collective-init", "appliance-probe")])?;

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
            .args([
                "-q",
                "-F",
                "-b",
                "4096",
                "-E",
                "root_owner=0:0",
                "-U",
                "6f1c1d2e-0000-4000-8000-000000000001",
                "-d",
            ])
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
            let cache =
                cachefs::Cache::create(Box::new(storage), cachefs::CreateOptions { force: true })?;
            for (i, id) in blob.chunks.iter().enumerate() {
                if let Some(id) = id {
                    let start = i * CHUNK_SIZE as usize;
                    let end = (start + CHUNK_SIZE as usize).min(image_bytes.len());
                    cache.insert(&id, &image_bytes[start..end])?;
                }
            }
            cache.sync()?;
        }
        let scratch_disk = dir.join("scratch.img");
        fs::write(&scratch_disk, vec![0u8; 4 << 20])?;

        Ok(TestAppliance {
            kernel: cloud.vmlinuz(),
            initrd,
            root_img,
            root_list: list,
            cache_disk,
            scratch_disk,
            expected_sha256: hex(&Sha256::digest(&content)),
        })
    }
}
