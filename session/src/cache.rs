//! The session's cache: the terminal's cache disk, or a cache in memory when it has none.
//!
//! init found, checked and (on first use) formatted the disk; the session is the only
//! process that keeps it open while it runs. It never formats here: a disk init did not
//! accept is not ours to wipe.

use cachefs::{Cache, CreateOptions, FileStorage, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Where the session's cache lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CacheLocation {
    /// A block device or file holding a cachefs cache.
    Device(PathBuf),
    /// A cache file of this many bytes created on a memory file system (`/run`): the
    /// terminal works, but fetches everything again at every login.
    Memory { file: PathBuf, bytes: u64 },
}

impl CacheLocation {
    /// `memory` or `memory:SIZE` (bytes, or with K/M/G/T: [`support::size::parse`]) or a
    /// path.
    pub fn parse(text: &str, run_dir: &Path) -> Result<CacheLocation, String> {
        if let Some(rest) = text.strip_prefix("memory") {
            let bytes = match rest.strip_prefix(':') {
                Some(size) => support::size::parse(size)
                    .map_err(|_| format!("cache {text:?}: write memory:SIZE, e.g. memory:2G"))?,
                None if rest.is_empty() => default_memory_cache_bytes(),
                None => return Err(format!("cache {text:?}: write memory or memory:SIZE")),
            };
            return Ok(CacheLocation::Memory {
                file: run_dir.join("memory-cache.img"),
                bytes,
            });
        }
        Ok(CacheLocation::Device(PathBuf::from(text)))
    }
}

/// A quarter of the RAM, at least 256 MiB: the appliances' own memory comes first.
fn default_memory_cache_bytes() -> u64 {
    let total = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .unwrap_or(1 << 20)
        * 1024;
    (total / 4).max(256 << 20)
}

/// Opens (or, in memory, creates) the cache.
pub fn open(location: &CacheLocation) -> Result<Arc<Cache>, String> {
    let options = OpenOptions {
        compress: true,
        ..Default::default()
    };
    match location {
        CacheLocation::Device(path) => {
            let storage = FileStorage::open(path)
                .map_err(|e| format!("cannot open the cache disk {}: {e}", path.display()))?;
            Cache::open_with(Box::new(storage), options)
                .map(Arc::new)
                .map_err(|e| format!("the cache disk {} cannot be used: {e}", path.display()))
        }
        CacheLocation::Memory { file, bytes } => {
            let _ = std::fs::remove_file(file);
            let storage = FileStorage::create_file(file, *bytes).map_err(|e| {
                format!("cannot create a cache in memory ({}): {e}", file.display())
            })?;
            drop(
                Cache::create(Box::new(storage), CreateOptions { force: true })
                    .map_err(|e| format!("cannot create a cache in memory: {e}"))?,
            );
            let storage = FileStorage::open(file)
                .map_err(|e| format!("cannot open the cache in memory: {e}"))?;
            Cache::open_with(Box::new(storage), options)
                .map(Arc::new)
                .map_err(|e| format!("cannot open the cache in memory: {e}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_parse() {
        let run = Path::new("/run/session");
        assert_eq!(
            CacheLocation::parse("/dev/vda", run).unwrap(),
            CacheLocation::Device("/dev/vda".into())
        );
        assert_eq!(
            CacheLocation::parse("memory:512M", run).unwrap(),
            CacheLocation::Memory {
                file: run.join("memory-cache.img"),
                bytes: 512 << 20
            }
        );
        assert!(CacheLocation::parse("memory:lots", run).is_err());
        assert!(CacheLocation::parse("memoryx", run).is_err());
    }

    #[test]
    fn a_memory_cache_is_created_and_usable() {
        let dir = std::env::temp_dir().join(format!("session-cache-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let loc = CacheLocation::parse("memory:8M", &dir).unwrap();
        let cache = open(&loc).unwrap();
        let data = vec![7u8; 4096];
        let id = cachefs::ChunkId::of(&data);
        cache.insert(&id, &data).unwrap();
        assert!(cache.contains(&id));
        drop(cache);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
