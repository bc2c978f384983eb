//! Storage behind a virtio-blk device.
//!
//! The trait takes `&self` and is `Send + Sync` so one backend can serve several queues
//! (or several readers) at once, and every call may block: the device calls it from its own
//! worker thread, never from a vCPU, so a cachefs view can wait there for a missing chunk to
//! arrive from the repository without stalling the guest's CPUs or other disks.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;

/// A disk image.
pub trait BlockBackend: Send + Sync {
    /// Size in bytes (the device exposes `size / 512` sectors).
    fn size(&self) -> u64;
    /// Whether writes must be refused (VIRTIO_BLK_F_RO is offered).
    fn read_only(&self) -> bool;
    /// Fills `buf` from `offset`. May block until the data is available.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// Writes `buf` at `offset`.
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// Makes completed writes durable.
    fn flush(&self) -> io::Result<()>;
    /// Drops the contents of a range (a hint: reads may return old data or zeroes).
    fn discard(&self, offset: u64, len: u64) -> io::Result<()>;
    /// Makes a range read as zeroes. The default writes zero buffers.
    fn write_zeroes(&self, offset: u64, len: u64) -> io::Result<()> {
        let zeros = vec![0u8; 64 * 1024];
        let mut done = 0;
        while done < len {
            let n = (len - done).min(zeros.len() as u64) as usize;
            self.write_at(&zeros[..n], offset + done)?;
            done += n as u64;
        }
        Ok(())
    }
    /// Serial number reported by VIRTIO_BLK_T_GET_ID (at most 20 bytes are used).
    fn id(&self) -> String;
}

/// A raw image in a host file (or block device).
pub struct RawFile {
    file: File,
    size: u64,
    read_only: bool,
    id: String,
}

impl RawFile {
    /// Opens `path`, read-only if asked.
    pub fn open(path: &Path, read_only: bool) -> io::Result<Self> {
        let file = OpenOptions::new().read(true).write(!read_only).open(path)?;
        let size = {
            use std::io::Seek;
            let mut f = &file;
            f.seek(io::SeekFrom::End(0))?
        };
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        Ok(Self {
            file,
            size,
            read_only,
            id: name.chars().take(20).collect(),
        })
    }
}

impl BlockBackend for RawFile {
    fn size(&self) -> u64 {
        self.size
    }
    fn read_only(&self) -> bool {
        self.read_only
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        if self.read_only {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "read-only disk",
            ));
        }
        self.file.write_all_at(buf, offset)
    }
    fn flush(&self) -> io::Result<()> {
        if self.read_only {
            return Ok(());
        }
        self.file.sync_data()
    }
    fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        if self.read_only {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "read-only disk",
            ));
        }
        let (Ok(off), Ok(len)) = (libc::off_t::try_from(offset), libc::off_t::try_from(len)) else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "range too large",
            ));
        };
        // SAFETY: fallocate on a file descriptor we own; no memory is passed.
        let r = unsafe {
            libc::fallocate(
                self.file.as_raw_fd(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                off,
                len,
            )
        };
        if r != 0 {
            let e = io::Error::last_os_error();
            // Discard is advisory: a file system without hole punching just keeps the data.
            if e.raw_os_error() == Some(libc::EOPNOTSUPP) {
                return Ok(());
            }
            return Err(e);
        }
        Ok(())
    }
    fn id(&self) -> String {
        self.id.clone()
    }
}
