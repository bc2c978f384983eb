//! Where the cache's bytes live: a `Storage` is a fixed-size byte device with
//! positional reads and writes and a flush that makes earlier writes durable.
//!
//! The cache talks only to this trait so that tests can swap in an in-memory
//! device and a fault-injecting wrapper (`fault.rs`, built for tests only) that models a
//! disk with a volatile write cache.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::RwLock;

/// A fixed-size byte device. Writes are volatile until `flush` returns.
#[allow(clippy::len_without_is_empty)] // a device is never empty
pub trait Storage: Send + Sync {
    /// Size in bytes; never changes.
    fn len(&self) -> u64;
    /// Fills `buf` from `off`; errors on short reads.
    fn read_at(&self, off: u64, buf: &mut [u8]) -> io::Result<()>;
    fn write_at(&self, off: u64, buf: &[u8]) -> io::Result<()>;
    /// Makes every write that completed before this call durable (fdatasync).
    fn flush(&self) -> io::Result<()>;
}

/// A regular file of fixed size or a block device.
pub struct FileStorage {
    file: File,
    len: u64,
}

impl FileStorage {
    /// Opens an existing file or block device read-write.
    pub fn open(path: &Path) -> io::Result<FileStorage> {
        let file = OpenOptions::new().read(true).write(true).open(path)?;
        Self::from_file(file)
    }

    /// Opens read-only (for `inspect`/`fsck` without `--repair`): writes fail.
    pub fn open_read_only(path: &Path) -> io::Result<FileStorage> {
        let file = OpenOptions::new().read(true).open(path)?;
        Self::from_file(file)
    }

    /// Creates (or truncates) a regular file of exactly `size` bytes and
    /// allocates its blocks, so that the cache's budget is reserved up front.
    pub fn create_file(path: &Path, size: u64) -> io::Result<FileStorage> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)?;
        file.set_len(size)?;
        file.sync_all()?;
        if let Some(dir) = path.parent() {
            // The new directory entry must be durable too (ALICE's lesson).
            let dir = if dir.as_os_str().is_empty() {
                Path::new(".")
            } else {
                dir
            };
            if let Ok(d) = File::open(dir) {
                let _ = d.sync_all();
            }
        }
        Self::from_file(file)
    }

    fn from_file(mut file: File) -> io::Result<FileStorage> {
        use std::io::{Seek, SeekFrom};
        // Works for block devices too, where metadata().len() is 0.
        let len = file.seek(SeekFrom::End(0))?;
        Ok(FileStorage { file, len })
    }
}

impl Storage for FileStorage {
    fn len(&self) -> u64 {
        self.len
    }
    fn read_at(&self, off: u64, buf: &mut [u8]) -> io::Result<()> {
        check_range(off, buf.len(), self.len)?;
        self.file.read_exact_at(buf, off)
    }
    fn write_at(&self, off: u64, buf: &[u8]) -> io::Result<()> {
        check_range(off, buf.len(), self.len)?;
        self.file.write_all_at(buf, off)
    }
    fn flush(&self) -> io::Result<()> {
        self.file.sync_data()
    }
}

fn check_range(off: u64, len: usize, dev: u64) -> io::Result<()> {
    match off.checked_add(len as u64) {
        Some(end) if end <= dev => Ok(()),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("access [{off}, +{len}) beyond device end {dev}"),
        )),
    }
}

/// An in-memory device where every write is immediately "durable". Used by
/// tests and as the base of the crash tests' `fault::FaultStorage`.
pub struct MemStorage {
    data: RwLock<Vec<u8>>,
}

impl MemStorage {
    pub fn new(size: usize) -> MemStorage {
        MemStorage {
            data: RwLock::new(vec![0; size]),
        }
    }
    pub fn from_vec(v: Vec<u8>) -> MemStorage {
        MemStorage {
            data: RwLock::new(v),
        }
    }
    /// A copy of the whole device.
    pub fn snapshot(&self) -> Vec<u8> {
        self.data.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl Storage for MemStorage {
    fn len(&self) -> u64 {
        self.data.read().unwrap_or_else(|e| e.into_inner()).len() as u64
    }
    fn read_at(&self, off: u64, buf: &mut [u8]) -> io::Result<()> {
        let d = self.data.read().unwrap_or_else(|e| e.into_inner());
        check_range(off, buf.len(), d.len() as u64)?;
        buf.copy_from_slice(&d[off as usize..off as usize + buf.len()]);
        Ok(())
    }
    fn write_at(&self, off: u64, buf: &[u8]) -> io::Result<()> {
        let mut d = self.data.write().unwrap_or_else(|e| e.into_inner());
        check_range(off, buf.len(), d.len() as u64)?;
        d[off as usize..off as usize + buf.len()].copy_from_slice(buf);
        Ok(())
    }
    fn flush(&self) -> io::Result<()> {
        Ok(())
    }
}

/// Lets a caller keep a handle on the device the cache uses (tests, tools).
impl<T: Storage + ?Sized> Storage for std::sync::Arc<T> {
    fn len(&self) -> u64 {
        (**self).len()
    }
    fn read_at(&self, off: u64, buf: &mut [u8]) -> io::Result<()> {
        (**self).read_at(off, buf)
    }
    fn write_at(&self, off: u64, buf: &[u8]) -> io::Result<()> {
        (**self).write_at(off, buf)
    }
    fn flush(&self) -> io::Result<()> {
        (**self).flush()
    }
}
