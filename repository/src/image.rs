//! Making ext4 disk images, reproducibly and layout-stably.
//!
//! Fixed-size chunks only dedup across versions if unchanged files keep their blocks
//! (planning notes §3.3: a rebuild from scratch re-fetches 93 % of an image at 64 KiB
//! chunks, an in-place update 6.6 %). So there are two helpers:
//! - [`create`]: `mkfs.ext4 -d DIR` with fixed UUID, hash seed, root owner and time, so the
//!   same tree gives the same image byte for byte (access times, which mkfs copies from
//!   the source and which reading the source moves, are set to the fixed time after);
//! - [`update`]: changes a copy of the previous version's image in place with `debugfs`
//!   (remove, add files and trees), so only the blocks of changed files and a little
//!   metadata differ. Build version N+1 from version N's image this way.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// The time stamped on inodes and the superblock (2020-01-01), for reproducible images.
pub const FIXED_TIME: &str = "1577836800";

fn uuid_from(label: &str) -> String {
    let h = Sha256::digest(format!("collective-image:{label}").as_bytes());
    let x = hex::encode(&h[..16]);
    format!(
        "{}-{}-4{}-8{}-{}",
        &x[0..8],
        &x[8..12],
        &x[13..16],
        &x[17..20],
        &x[20..32]
    )
}

fn run(cmd: &mut Command, what: &str) -> Result<String> {
    let out = cmd.output().map_err(|e| {
        Error::Tool(format!(
            "cannot run {what}: {e}; install e2fsprogs (apt-get install e2fsprogs)"
        ))
    })?;
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if !out.status.success() {
        return Err(Error::Tool(format!(
            "{what} failed ({}): {}",
            out.status,
            stderr.trim()
        )));
    }
    Ok(stderr)
}

/// Makes an ext4 image of `size` bytes at `out` holding the tree `src`.
pub fn create(src: &Path, out: &Path, size: u64, label: &str) -> Result<()> {
    if !src.is_dir() {
        return Err(Error::Input {
            what: "source directory",
            path: src.into(),
            why: "is not a directory".into(),
        });
    }
    if label.len() > 16 {
        return Err(Error::Usage(format!(
            "label {label:?} is longer than ext4's 16 bytes"
        )));
    }
    if size < (1 << 20) || !size.is_multiple_of(4096) {
        return Err(Error::Usage(format!(
            "image size {size} must be a multiple of 4 KiB and at least 1 MiB"
        )));
    }
    let _ = fs::remove_file(out);
    let uuid = uuid_from(label);
    run(
        Command::new("mkfs.ext4")
            .env("E2FSPROGS_FAKE_TIME", FIXED_TIME)
            .env("SOURCE_DATE_EPOCH", FIXED_TIME)
            .args([
                "-q", "-F", "-t", "ext4", "-b", "4096", "-I", "256", "-L", label, "-U", &uuid,
            ])
            .arg("-E")
            .arg(format!(
                "hash_seed={uuid},root_owner=0:0,lazy_itable_init=0,lazy_journal_init=0,nodiscard"
            ))
            .arg("-d")
            .arg(src)
            .arg(out)
            .arg(format!("{}k", size / 1024)),
        "mkfs.ext4",
    )?;
    fix_access_times(src, out)
}

/// Sets every inode's access time to [`FIXED_TIME`]. `mkfs.ext4 -d` copies each source
/// file's atime, and reading the tree (mkfs itself does, once per build) moves those
/// atimes under `relatime`: two builds of one tree a second apart differed in a few inode
/// blocks, so the image was not a function of the tree alone.
fn fix_access_times(src: &Path, img: &Path) -> Result<()> {
    let mut cmds = vec![format!("sif / atime @{FIXED_TIME}")];
    let mut pending = vec![(src.to_path_buf(), String::new())];
    while let Some((dir, guest_dir)) = pending.pop() {
        let entries =
            fs::read_dir(&dir).map_err(|e| crate::fsutil::io_context("reading", &dir, e))?;
        let mut names: Vec<(PathBuf, String, bool)> = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| crate::fsutil::io_context("reading", &dir, e))?;
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                log::warn!(
                    "{}: name is not UTF-8; its access time stays as mkfs copied it",
                    entry.path().display()
                );
                continue;
            };
            let is_dir = entry.file_type().map(|t| t.is_dir()).unwrap_or(false);
            names.push((entry.path(), format!("{guest_dir}/{name}"), is_dir));
        }
        for (host, guest, is_dir) in names {
            if guest.contains(['"', '\n']) {
                log::warn!(
                    "{}: name holds a quote or newline; its access time stays as mkfs copied it",
                    host.display()
                );
                continue;
            }
            cmds.push(format!("sif \"{guest}\" atime @{FIXED_TIME}"));
            if is_dir {
                pending.push((host, guest));
            }
        }
    }
    let script = img.with_extension("atime-cmds");
    fs::write(&script, cmds.join("\n") + "\n")
        .map_err(|e| crate::fsutil::io_context("writing", &script, e))?;
    let stderr = run(
        Command::new("debugfs")
            .env("E2FSPROGS_FAKE_TIME", FIXED_TIME)
            .arg("-w")
            .arg("-f")
            .arg(&script)
            .arg(img),
        "debugfs",
    );
    let _ = fs::remove_file(&script);
    let problems: Vec<String> = stderr?
        .lines()
        .filter(|l| !l.starts_with("debugfs ") && !l.trim().is_empty())
        .map(str::to_owned)
        .collect();
    if !problems.is_empty() {
        return Err(Error::Tool(format!(
            "debugfs could not fix the access times in {}: {}",
            img.display(),
            problems.join("; ")
        )));
    }
    Ok(())
}

/// One change to apply to an image.
#[derive(Clone, Debug)]
pub enum Change {
    /// Copy a host file or tree to this absolute path in the image (replacing files).
    Add { host: PathBuf, guest: String },
    /// Remove a file (not a directory) from the image.
    Remove { guest: String },
}

fn check_guest_path(p: &str) -> Result<()> {
    if !p.starts_with('/')
        || p.contains("..")
        || p.chars()
            .any(|c| c.is_whitespace() || c == '"' || c == '\\')
    {
        return Err(Error::Usage(format!(
            "image path {p:?} must be absolute, without '..', spaces, quotes or backslashes"
        )));
    }
    Ok(())
}

/// True if `path` exists in the image (`debugfs -R stat`, read-only).
fn exists_in_image(img: &Path, path: &str) -> Result<bool> {
    let out = Command::new("debugfs")
        .arg("-R")
        .arg(format!("stat {path}"))
        .arg(img)
        .output()
        .map_err(|e| Error::Tool(format!("cannot run debugfs: {e}; install e2fsprogs")))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    Ok(!stderr.contains("File not found"))
}

/// Emits the debugfs commands that copy `host` to `guest`. `may_exist` is false when a
/// parent directory is being created by these same commands (so nothing below it exists).
fn emit_add(
    host: &Path,
    guest: &str,
    cmds: &mut Vec<String>,
    may_exist: bool,
    img: &Path,
) -> Result<()> {
    let host_str = host
        .to_str()
        .filter(|s| !s.chars().any(|c| c.is_whitespace() || c == '"'))
        .ok_or_else(|| {
            Error::Usage(format!(
                "host path {} must be UTF-8 without spaces or quotes",
                host.display()
            ))
        })?;
    let meta = fs::symlink_metadata(host).map_err(|e| Error::Input {
        what: "file to add",
        path: host.into(),
        why: e.to_string(),
    })?;
    if meta.is_dir() {
        let exists = may_exist && exists_in_image(img, guest)?;
        if !exists {
            cmds.push(format!("mkdir {guest}"));
        }
        let mut entries: Vec<_> = fs::read_dir(host)
            .map_err(|e| Error::Input {
                what: "directory to add",
                path: host.into(),
                why: e.to_string(),
            })?
            .flatten()
            .map(|e| e.path())
            .collect();
        entries.sort();
        for e in entries {
            let Some(name) = e.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            let child = format!("{}/{name}", guest.trim_end_matches('/'));
            check_guest_path(&child)?;
            emit_add(&e, &child, cmds, exists, img)?;
        }
    } else if meta.file_type().is_symlink() {
        let target = fs::read_link(host).map_err(|e| Error::Input {
            what: "symlink to add",
            path: host.into(),
            why: e.to_string(),
        })?;
        cmds.push(format!("rm {guest}"));
        cmds.push(format!("symlink {guest} {}", target.display()));
    } else if meta.is_file() {
        cmds.push(format!("rm {guest}"));
        cmds.push(format!("write {host_str} {guest}"));
    }
    Ok(())
}

/// Applies `changes` to the ext4 image `img` in place (make a copy of the previous version
/// first), then checks the filesystem with `e2fsck -fn`.
pub fn update(img: &Path, changes: &[Change]) -> Result<()> {
    if !img.is_file() {
        return Err(Error::Input {
            what: "image",
            path: img.into(),
            why: "does not exist".into(),
        });
    }
    let mut cmds = Vec::new();
    for c in changes {
        match c {
            Change::Add { host, guest } => {
                check_guest_path(guest)?;
                // Parents first, like `mkdir -p`. Never `mkdir` a directory that exists:
                // debugfs 1.47.0 then leaks an allocated, unlinked inode (e2fsck finds it).
                let parts: Vec<&str> = guest.trim_matches('/').split('/').collect();
                let mut parent_is_new = false;
                for i in 1..parts.len() {
                    let dir = format!("/{}", parts[..i].join("/"));
                    if parent_is_new || !exists_in_image(img, &dir)? {
                        cmds.push(format!("mkdir {dir}"));
                        parent_is_new = true;
                    }
                }
                emit_add(host, guest, &mut cmds, !parent_is_new, img)?;
            }
            Change::Remove { guest } => {
                check_guest_path(guest)?;
                cmds.push(format!("rm {guest}"));
            }
        }
    }
    let script = img.with_extension("debugfs-cmds");
    fs::write(&script, cmds.join("\n") + "\n")
        .map_err(|e| crate::fsutil::io_context("writing", &script, e))?;
    let stderr = run(
        Command::new("debugfs")
            .env("E2FSPROGS_FAKE_TIME", FIXED_TIME)
            .arg("-w")
            .arg("-f")
            .arg(&script)
            .arg(img),
        "debugfs",
    );
    let _ = fs::remove_file(&script);
    let stderr = stderr?;
    // debugfs exits 0 even when a command fails; its complaints go to stderr. A `rm` of a
    // file that is not there (before adding it) is expected; anything else is an error.
    let problems: Vec<&str> = stderr
        .lines()
        .filter(|l| !l.starts_with("debugfs ") && !l.trim().is_empty())
        .filter(|l| !(l.starts_with("rm: ") && l.contains("File not found")))
        .filter(|l| !l.starts_with("Allocated inode"))
        .collect();
    if !problems.is_empty() {
        return Err(Error::Tool(format!(
            "debugfs could not apply every change to {}: {}",
            img.display(),
            problems.join("; ")
        )));
    }
    let out = Command::new("e2fsck")
        .args(["-fn"])
        .arg(img)
        .output()
        .map_err(|e| Error::Tool(format!("cannot run e2fsck: {e}")))?;
    if !out.status.success() {
        return Err(Error::Tool(format!(
            "{} is inconsistent after the update (e2fsck -fn): {}",
            img.display(),
            String::from_utf8_lossy(&out.stdout).trim()
        )));
    }
    Ok(())
}
