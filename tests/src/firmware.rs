//! The firmware under test, built once per change and shared by every test process.
//!
//! Test binaries run in parallel processes (nextest runs one process per test), so the
//! build is guarded by a file lock and skipped when a stamp says the inputs are unchanged:
//! the static init's bytes, this harness's own binary (which embeds the image builder)
//! and the kernel package.

use anyhow::{Context, Result};
use image_builder::{binaries, image, BuildOptions, ProgramSource};
use sha2::{Digest, Sha256};
use std::fs::{self, File};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// A built firmware: the files QEMU boots.
#[derive(Debug, Clone)]
pub struct Firmware {
    pub dir: PathBuf,
    pub vmlinuz: PathBuf,
    pub initrd: PathBuf,
    pub cmdline: String,
}

impl Firmware {
    /// The firmware `collective-image build --out DIR` wrote.
    pub fn from_dir(dir: &Path) -> Result<Firmware> {
        let cmdline = fs::read_to_string(dir.join("cmdline"))
            .with_context(|| format!("no firmware in {}", dir.display()))?;
        Ok(Firmware {
            dir: dir.to_path_buf(),
            vmlinuz: dir.join("vmlinuz"),
            initrd: dir.join("initrd.img"),
            cmdline: cmdline.trim().to_string(),
        })
    }
}

pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// The firmware for this test run: `$COLLECTIVE_FIRMWARE_DIR` if set (CI builds it once
/// up front), else built from this workspace into `target/system-tests/firmware`.
pub fn firmware() -> &'static Firmware {
    static FIRMWARE: OnceLock<Firmware> = OnceLock::new();
    FIRMWARE.get_or_init(|| match build_or_reuse() {
        Ok(f) => f,
        Err(e) => panic!("cannot build the firmware under test: {e:#}"),
    })
}

fn build_or_reuse() -> Result<Firmware> {
    if let Some(dir) = std::env::var_os("COLLECTIVE_FIRMWARE_DIR") {
        return Firmware::from_dir(Path::new(&dir));
    }
    build_variant("firmware", &[], &[])
}

/// A firmware with more kernel arguments and more initramfs files (a test appliance,
/// say), built into `target/system-tests/<name>` unless its inputs are unchanged.
pub fn build_variant(
    name: &str,
    extra_cmdline: &[String],
    extra_files: &[(PathBuf, String)],
) -> Result<Firmware> {
    build_variant_with_level(
        name,
        extra_cmdline,
        extra_files,
        image_builder::initramfs::ZSTD_LEVEL,
    )
}

/// [`build_variant`] with another zstd level: large test payloads compress faster at 3.
pub fn build_variant_with_level(
    name: &str,
    extra_cmdline: &[String],
    extra_files: &[(PathBuf, String)],
    zstd_level: i32,
) -> Result<Firmware> {
    let ws = workspace();
    let root = ws.join("target/system-tests");
    fs::create_dir_all(&root)?;
    let lock = File::create(root.join("build.lock"))?;
    // SAFETY: flock on an fd we own; released when `lock` is dropped.
    if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } != 0 {
        anyhow::bail!("cannot lock {}", root.join("build.lock").display());
    }
    let programs = binaries::build_static(&ws, binaries::PROGRAMS, &[])?;
    let out = root.join(name);
    let mut inputs = programs.clone();
    inputs.extend(extra_files.iter().map(|(src, _)| src.clone()));
    let stamp = format!(
        "{}{extra_cmdline:?}{extra_files:?}{zstd_level}",
        input_stamp(&inputs)?
    );
    let stamp_file = out.join("STAMP");
    if fs::read_to_string(&stamp_file).ok().as_deref() == Some(stamp.as_str()) {
        return Firmware::from_dir(&out);
    }
    let mut opts = BuildOptions::for_workspace(out.clone())?;
    opts.programs = ProgramSource::Prebuilt(programs);
    opts.extra_cmdline = extra_cmdline.to_vec();
    opts.extra_files = extra_files.to_vec();
    opts.zstd_level = zstd_level;
    let report = image_builder::build(&opts)?;
    eprintln!("{}", report.summary());
    fs::write(&stamp_file, &stamp)?;
    Firmware::from_dir(&out)
}

fn input_stamp(programs: &[PathBuf]) -> Result<String> {
    let mut hasher = Sha256::new();
    for p in programs {
        hasher.update(fs::read(p)?);
    }
    hasher.update(fs::read(std::env::current_exe()?)?);
    hasher.update(image::default_cache_dir().to_string_lossy().as_bytes());
    Ok(image::hex(&hasher.finalize()))
}
