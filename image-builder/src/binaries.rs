//! Building the firmware's own programs as static executables.
//!
//! The initramfs has no C library, so its programs are linked statically
//! (`-C target-feature=+crt-static` on the gnu target; no musl target is installed on our
//! build machines). They get their own target folder so that the static flags never
//! invalidate the workspace's normal build, and so that a `cargo test` already holding
//! the workspace's build lock can still build the firmware.

use anyhow::{bail, Context, Result};
use log::info;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The Rust target the firmware's programs are built for.
pub const TARGET: &str = "x86_64-unknown-linux-gnu";

/// A program the initramfs carries: cargo package, binary name, path in the initramfs.
#[derive(Debug, Clone, Copy)]
pub struct FirmwareProgram {
    pub package: &'static str,
    pub bin: &'static str,
    pub install_path: &'static str,
}

/// Every program in the initramfs.
pub const PROGRAMS: &[FirmwareProgram] = &[
    FirmwareProgram {
        package: "collective-init",
        bin: "init",
        install_path: "init",
    },
    FirmwareProgram {
        package: "launcher",
        bin: "vmm",
        install_path: "bin/vmm",
    },
    FirmwareProgram {
        package: "collective-session",
        bin: "session",
        install_path: "bin/session",
    },
];

/// The workspace this builder was compiled from, when it still exists: the default source
/// of the firmware's programs.
pub fn default_workspace() -> Option<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()?
        .to_path_buf();
    dir.join("Cargo.toml").exists().then_some(dir)
}

/// Builds `programs` (plus any `extra_bins` of the same packages) statically, release
/// profile, and returns the path of each binary, in order.
pub fn build_static(
    workspace: &Path,
    programs: &[FirmwareProgram],
    extra_bins: &[(&str, &str)],
) -> Result<Vec<PathBuf>> {
    let target_dir = workspace.join("target/firmware");
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(workspace)
        .args([
            "build",
            "--release",
            "--locked",
            "--target",
            TARGET,
            "--target-dir",
        ])
        .arg(&target_dir);
    let all: Vec<(&str, &str)> = programs
        .iter()
        .map(|p| (p.package, p.bin))
        .chain(extra_bins.iter().copied())
        .collect();
    for (package, bin) in &all {
        cmd.args(["-p", package, "--bin", bin]);
    }
    // The outer cargo (when we run under `cargo test`) exports variables meant for its own
    // build; they must not leak into this one.
    for var in [
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_MAKEFLAGS",
        "MAKEFLAGS",
    ] {
        cmd.env_remove(var);
    }
    cmd.env(
        "CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUSTFLAGS",
        "-C target-feature=+crt-static",
    );
    // Every byte of the initramfs is unpacked at every boot; panic messages keep their
    // file and line without the symbol table.
    cmd.env("CARGO_PROFILE_RELEASE_STRIP", "symbols");
    info!(
        "building static firmware programs: {}",
        all.iter().map(|(_, b)| *b).collect::<Vec<_>>().join(", ")
    );
    let status = cmd
        .status()
        .context("running cargo to build the firmware's programs")?;
    if !status.success() {
        bail!("building the firmware's programs failed (cargo output above)");
    }
    let out_dir = target_dir.join(TARGET).join("release");
    all.iter()
        .map(|(_, bin)| {
            let path = out_dir.join(bin);
            path.exists()
                .then_some(path.clone())
                .with_context(|| format!("cargo built no {}", path.display()))
        })
        .collect()
}
