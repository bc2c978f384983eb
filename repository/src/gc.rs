//! Garbage collection: removing chunks no manifest refers to.
//!
//! Safe while a publish (or a user-data upload) runs, without a lock, because of three rules:
//! - writers refresh the mtime of every chunk they reference, new or existing, and refresh
//!   them all once more right before they write the manifest that refers to them;
//! - `gc` removes only unreferenced chunks whose mtime is older than its start time minus a
//!   grace period (default one hour): a chunk touched by a running publish is younger;
//! - `gc` removes a chunk by first renaming it away and then looking at its mtime again: if a
//!   writer touched it in between, it is put back; if the writer came after the rename, the
//!   writer found no file and stored the chunk anew.
//!
//! So a chunk can only be lost to a writer that spent longer than the grace period between
//! touching a chunk and writing its manifest, and publish checks for exactly that before
//! writing its manifest. Manifests that cannot be read make `gc` stop before deleting
//! anything: a damaged root must never turn into lost data.

use std::collections::HashSet;
use std::fs;
use std::io;
use std::path::Path;
use std::time::{Duration, SystemTime};

use appliance::{ChunkId, SignedManifest, UserDiskManifest};

use crate::error::{Error, Result};
use crate::fsutil::io_context;
use crate::store::Repo;

/// What to collect.
#[derive(Clone, Debug)]
pub struct GcOptions {
    /// Unreferenced chunks younger than this are kept.
    pub grace: Duration,
    /// Keep only the newest N versions of each appliance (older manifests are deleted first).
    pub keep_versions: Option<usize>,
    /// Report only.
    pub dry_run: bool,
}

impl Default for GcOptions {
    fn default() -> Self {
        GcOptions {
            grace: Duration::from_secs(3600),
            keep_versions: None,
            dry_run: false,
        }
    }
}

/// What a collection did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GcStats {
    /// Distinct chunks referenced by some manifest.
    pub referenced: u64,
    /// Chunks removed (or that would be, with `dry_run`).
    pub removed_chunks: u64,
    /// Their stored bytes.
    pub removed_bytes: u64,
    /// Unreferenced chunks kept because they are younger than the grace period.
    pub kept_recent: u64,
    /// Manifests removed by `keep_versions`.
    pub removed_manifests: u64,
    /// Stale temporary files removed.
    pub removed_temp_files: u64,
}

impl std::fmt::Display for GcStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} chunks referenced; removed {} unreferenced chunks ({:.1} MiB), {} old manifests, {} stale temporary files; kept {} unreferenced chunks younger than the grace period",
            self.referenced,
            self.removed_chunks,
            self.removed_bytes as f64 / (1 << 20) as f64,
            self.removed_manifests,
            self.removed_temp_files,
            self.kept_recent
        )
    }
}

/// Runs a collection.
pub fn gc(repo: &Repo, opts: &GcOptions) -> Result<GcStats> {
    let start = SystemTime::now();
    let cutoff = start
        .checked_sub(opts.grace)
        .unwrap_or(SystemTime::UNIX_EPOCH);
    let mut stats = GcStats::default();

    if let Some(keep) = opts.keep_versions {
        let keep = keep.max(1);
        for (name, versions) in repo.appliances()? {
            for v in versions.iter().take(versions.len().saturating_sub(keep)) {
                let path = repo.manifest_file(&name, *v);
                stats.removed_manifests += 1;
                if !opts.dry_run {
                    fs::remove_file(&path).map_err(|e| io_context("removing", &path, e))?;
                    log::info!("gc: removed {}", path.display());
                }
            }
        }
    }

    let referenced = mark(repo)?;
    stats.referenced = referenced.len() as u64;

    let trash_dir = repo.tmp_dir();
    for (id, path) in repo.list_chunks()? {
        if referenced.contains(&id) {
            continue;
        }
        let Some((mtime, len)) = stat(&path)? else {
            continue;
        };
        if mtime >= cutoff {
            stats.kept_recent += 1;
            continue;
        }
        if opts.dry_run {
            stats.removed_chunks += 1;
            stats.removed_bytes += len;
            continue;
        }
        let trash = trash_dir.join(format!("gc-{id}.trash"));
        match fs::rename(&path, &trash) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io_context("moving aside", &path, e)),
        }
        match stat(&trash)? {
            Some((mtime, _)) if mtime >= cutoff => {
                // A writer touched it between our look and the rename: put it back, unless
                // the writer already stored it again (then the copy in place is as good).
                if path.exists() {
                    let _ = fs::remove_file(&trash);
                } else {
                    fs::rename(&trash, &path).map_err(|e| io_context("putting back", &path, e))?;
                }
                stats.kept_recent += 1;
            }
            _ => {
                fs::remove_file(&trash).map_err(|e| io_context("removing", &trash, e))?;
                stats.removed_chunks += 1;
                stats.removed_bytes += len;
            }
        }
    }

    // Temporary files from crashed or failed writers.
    if let Ok(entries) = fs::read_dir(&trash_dir) {
        for entry in entries.flatten() {
            let path = entry.path();
            let is_own_trash = path
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("gc-"));
            if let Ok(Some((mtime, _))) = stat(&path) {
                if mtime < cutoff
                    && !is_own_trash
                    && !opts.dry_run
                    && fs::remove_file(&path).is_ok()
                {
                    stats.removed_temp_files += 1;
                }
            }
        }
    }
    log::info!("gc: {stats}");
    Ok(stats)
}

/// Every chunk referenced by an appliance manifest or a user-disk manifest.
pub fn mark(repo: &Repo) -> Result<HashSet<ChunkId>> {
    let mut referenced = HashSet::new();
    for (name, versions) in repo.appliances()? {
        for v in versions {
            let path = repo.manifest_file(&name, v);
            let bytes = match fs::read(&path) {
                Ok(b) => b,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_context("reading", &path, e)),
            };
            let signed: SignedManifest =
                serde_json::from_slice(&bytes).map_err(|e| refuse(&path, &e.to_string()))?;
            referenced.extend(signed.manifest.all_chunks());
        }
    }
    for path in repo.user_disk_files()? {
        let bytes = fs::read(&path).map_err(|e| io_context("reading", &path, e))?;
        let m: UserDiskManifest =
            serde_json::from_slice(&bytes).map_err(|e| refuse(&path, &e.to_string()))?;
        referenced.extend(m.image.chunks.iter().flatten().copied());
    }
    Ok(referenced)
}

fn refuse(path: &Path, why: &str) -> Error {
    Error::Usage(format!("gc stopped without deleting anything: {} cannot be read ({why}); repair or remove it, then run gc again", path.display()))
}

fn stat(path: &Path) -> Result<Option<(SystemTime, u64)>> {
    match fs::metadata(path) {
        Ok(m) => Ok(Some((
            m.modified()
                .map_err(|e| io_context("reading mtime of", path, e))?,
            m.len(),
        ))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_context("reading", path, e)),
    }
}
