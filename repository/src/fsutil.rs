//! Crash-safe file writes: nothing half-written ever becomes visible under its final name.
//!
//! Every file is written to a temporary name in the repository's `private/tmp/` (same
//! filesystem), fsynced, then moved into place with `rename` (replace) or `link`
//! (create-only, fails if the name exists), and the directory is fsynced. A crash or a full
//! disk at any point leaves at worst a stray temporary file, which `gc` removes.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use rand_core::RngCore;

/// Errors with the path and a hint; `ENOSPC` gets its own advice.
pub fn io_context(what: &str, path: &Path, e: io::Error) -> crate::Error {
    crate::Error::Io {
        context: format!("{what} {}", path.display()),
        source: e,
    }
}

/// A unique temporary path in `tmp_dir`.
pub fn temp_path(tmp_dir: &Path, hint: &str) -> PathBuf {
    let mut r = [0u8; 8];
    rand_core::OsRng.fill_bytes(&mut r);
    tmp_dir.join(format!(
        "{hint}.{}.{}.tmp",
        std::process::id(),
        hex::encode(r)
    ))
}

/// Writes `data` to a new temporary file and fsyncs it.
fn write_temp(tmp_dir: &Path, hint: &str, data: &[u8]) -> Result<PathBuf, crate::Error> {
    let tmp = temp_path(tmp_dir, hint);
    let result = (|| {
        let mut f = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
        f.write_all(data)?;
        f.sync_all()
    })();
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        return Err(io_context("writing temporary file", &tmp, e));
    }
    Ok(tmp)
}

/// Atomically replaces (or creates) `dest` with `data`. Does not fsync the directory:
/// callers that need the name durable call [`fsync_dir`] (batched for chunks).
pub fn write_replace_nodirsync(
    tmp_dir: &Path,
    dest: &Path,
    data: &[u8],
) -> Result<(), crate::Error> {
    let tmp = write_temp(tmp_dir, "replace", data)?;
    if let Err(e) = fs::rename(&tmp, dest) {
        let _ = fs::remove_file(&tmp);
        return Err(io_context("moving into place", dest, e));
    }
    Ok(())
}

/// Atomically replaces (or creates) `dest` with `data`, durably.
pub fn write_replace(tmp_dir: &Path, dest: &Path, data: &[u8]) -> Result<(), crate::Error> {
    write_replace_nodirsync(tmp_dir, dest, data)?;
    fsync_parent(dest)
}

/// Atomically creates `dest` with `data`, durably; `Ok(false)` if `dest` already exists
/// (its content is untouched).
pub fn write_new(tmp_dir: &Path, dest: &Path, data: &[u8]) -> Result<bool, crate::Error> {
    let tmp = write_temp(tmp_dir, "new", data)?;
    let linked = fs::hard_link(&tmp, dest);
    let _ = fs::remove_file(&tmp);
    match linked {
        Ok(()) => {
            fsync_parent(dest)?;
            Ok(true)
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(io_context("creating", dest, e)),
    }
}

/// fsyncs a directory so the names in it are durable.
pub fn fsync_dir(dir: &Path) -> Result<(), crate::Error> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_context("syncing directory", dir, e))
}

/// fsyncs the directory holding `path`.
pub fn fsync_parent(path: &Path) -> Result<(), crate::Error> {
    match path.parent() {
        Some(dir) => fsync_dir(dir),
        None => Ok(()),
    }
}

/// Creates `dir` and its parents.
pub fn create_dir_all(dir: &Path) -> Result<(), crate::Error> {
    fs::create_dir_all(dir).map_err(|e| io_context("creating directory", dir, e))
}
