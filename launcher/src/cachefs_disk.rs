//! A virtio-blk backend over a cachefs disk image: a view of chunks in the terminal's
//! cache, with a copy-on-write overlay for the guest's writes.
//!
//! Reads of chunks the cache lacks go to the view's `ChunkSource` (the receiver's demand
//! fetch) and block this device's worker thread only; every chunk is checked against its
//! id before the guest sees it. A system disk's overlay is thrown away when the VM ends.

use appliance::ChunkList;
use cachefs::{Cache, ChunkSource, DiskView, FileStorage, NoSource, Overlay};
use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use vmm::BlockBackend;

/// A cachefs image as a block device, optionally with a throw-away overlay.
pub struct CachefsDisk {
    name: String,
    view: Arc<DiskView>,
    /// `None` for a read-only disk: the guest reads the chunks and nothing else.
    overlay: Option<Arc<Overlay>>,
}

fn to_io(e: cachefs::Error) -> io::Error {
    io::Error::other(e.to_string())
}

impl CachefsDisk {
    /// A disk over `blob`'s chunks in `cache`, missing chunks from `source`.
    pub fn new(
        name: &str,
        cache: Arc<Cache>,
        blob: &ChunkList,
        source: Arc<dyn ChunkSource>,
        read_only: bool,
    ) -> io::Result<CachefsDisk> {
        let view = Arc::new(DiskView::new(cache, blob.clone(), source).map_err(to_io)?);
        let overlay = if read_only {
            None
        } else {
            Some(Arc::new(Overlay::system(view.clone()).map_err(to_io)?))
        };
        Ok(CachefsDisk {
            name: name.to_string(),
            view,
            overlay,
        })
    }
}

impl CachefsDisk {
    /// A disk over an overlay its owner keeps: a user disk, whose changes the session
    /// writes back to the repository after the VM has ended.
    pub fn over(name: &str, overlay: Arc<Overlay>) -> CachefsDisk {
        CachefsDisk {
            name: name.to_string(),
            view: overlay.view().clone(),
            overlay: Some(overlay),
        }
    }
}

impl BlockBackend for CachefsDisk {
    fn size(&self) -> u64 {
        self.view.size()
    }

    fn read_only(&self) -> bool {
        self.overlay.is_none()
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        match &self.overlay {
            Some(o) => o.read_at(offset, buf).map_err(to_io),
            None => self.view.read_at(offset, buf).map_err(to_io),
        }
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        match &self.overlay {
            Some(o) => o.write_at(offset, buf).map_err(to_io),
            None => Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "read-only disk",
            )),
        }
    }

    fn flush(&self) -> io::Result<()> {
        match &self.overlay {
            Some(o) => o.flush().map_err(to_io),
            None => Ok(()),
        }
    }

    fn discard(&self, _offset: u64, _len: u64) -> io::Result<()> {
        // A hint; the overlay keeps what it has.
        Ok(())
    }

    fn id(&self) -> String {
        format!("cachefs:{}", self.name)
    }
}

/// Opens cache devices once each, however many disks use them.
#[derive(Default)]
pub struct CacheRegistry {
    open: Mutex<HashMap<PathBuf, Arc<Cache>>>,
}

impl CacheRegistry {
    /// The cache at `path`, opened (and recovered) on first use.
    pub fn open(&self, path: &Path) -> io::Result<Arc<Cache>> {
        let mut open = self
            .open
            .lock()
            .map_err(|_| io::Error::other("cache registry poisoned"))?;
        if let Some(cache) = open.get(path) {
            return Ok(cache.clone());
        }
        let storage = FileStorage::open(path).map_err(|e| {
            io::Error::new(e.kind(), format!("opening cache {}: {e}", path.display()))
        })?;
        let cache = Arc::new(
            Cache::open(Box::new(storage))
                .map_err(|e| io::Error::other(format!("cache {}: {e}", path.display())))?,
        );
        open.insert(path.to_path_buf(), cache.clone());
        Ok(cache)
    }
}

/// `vmm run --disk cachefs=CACHE:LIST.json[,ro]`: a disk whose chunk list (the
/// repository's `ChunkList` JSON) is in LIST and whose chunks are in CACHE. No
/// repository is involved: a chunk missing from the cache is a read error.
pub fn open_from_cli(
    registry: &CacheRegistry,
    spec: &str,
    read_only: bool,
) -> Result<CachefsDisk, String> {
    let (cache_path, list_path) = spec
        .split_once(':')
        .ok_or_else(|| format!("cachefs disk {spec:?}: expected CACHE:LIST.json"))?;
    let text = std::fs::read_to_string(list_path)
        .map_err(|e| format!("reading chunk list {list_path}: {e}"))?;
    let blob: ChunkList =
        serde_json::from_str(&text).map_err(|e| format!("chunk list {list_path}: {e}"))?;
    blob.validate()
        .map_err(|e| format!("chunk list {list_path}: {e}"))?;
    let cache = registry
        .open(Path::new(cache_path))
        .map_err(|e| e.to_string())?;
    let name = Path::new(list_path)
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    CachefsDisk::new(&name, cache, &blob, Arc::new(NoSource), read_only)
        .map_err(|e| format!("cachefs disk {spec}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use cachefs::{CreateOptions, MemStorage};

    fn cache_with(data: &[u8], chunk: u32) -> (Arc<Cache>, ChunkList) {
        let cache = Arc::new(
            Cache::create(Box::new(MemStorage::new(8 << 20)), CreateOptions::default()).unwrap(),
        );
        let blob = appliance::Chunker::new(data, chunk)
            .unwrap()
            .into_blob()
            .unwrap();
        for (i, id) in blob.chunks.iter().enumerate() {
            if let Some(id) = id {
                let start = i * chunk as usize;
                let end = (start + chunk as usize).min(data.len());
                cache.insert(id, &data[start..end]).unwrap();
            }
        }
        (cache, blob)
    }

    #[test]
    fn reads_come_from_the_chunks_and_writes_stay_in_the_overlay() {
        let mut data = vec![0u8; 256 * 1024];
        for (i, b) in data.iter_mut().enumerate().take(70_000) {
            *b = (i % 251) as u8;
        }
        let (cache, blob) = cache_with(&data, 64 * 1024);
        let ro = CachefsDisk::new("root", cache.clone(), &blob, Arc::new(NoSource), true).unwrap();
        assert!(ro.read_only());
        let mut buf = vec![0u8; 4096];
        ro.read_at(&mut buf, 65536 - 1024).unwrap();
        assert_eq!(&buf[..], &data[65536 - 1024..65536 + 3072]);
        assert!(ro.write_at(&buf, 0).is_err());

        let rw = CachefsDisk::new("scratch", cache, &blob, Arc::new(NoSource), false).unwrap();
        rw.write_at(&[7u8; 512], 512).unwrap();
        rw.flush().unwrap();
        let mut sector = [0u8; 512];
        rw.read_at(&mut sector, 512).unwrap();
        assert_eq!(sector, [7u8; 512]);
        ro.read_at(&mut sector, 512).unwrap();
        assert_eq!(
            &sector[..],
            &data[512..1024],
            "the chunks themselves are unchanged"
        );
    }

    #[test]
    fn a_chunk_missing_from_the_cache_is_an_error_not_garbage() {
        let data = vec![9u8; 128 * 1024];
        let (_, blob) = cache_with(&data, 64 * 1024);
        let empty = Arc::new(
            Cache::create(Box::new(MemStorage::new(8 << 20)), CreateOptions::default()).unwrap(),
        );
        let disk = CachefsDisk::new("root", empty, &blob, Arc::new(NoSource), true).unwrap();
        let mut buf = vec![0u8; 512];
        assert!(disk.read_at(&mut buf, 0).is_err());
    }
}
