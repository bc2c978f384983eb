//! A boot trace: the order in which a guest first reads each block of its disks.
//!
//! Publishers record one with `vmm run --trace-reads FILE` and hand it to
//! `collective-repo publish --boot-trace FILE`, which turns it into the appliance's boot
//! profile: the chunks a terminal fetches first, in the order the guest wants them, so the
//! appliance starts as soon as they are in and boots without waiting on demand fetches.

use super::backend::BlockBackend;
use std::collections::HashSet;
use std::io::{self, Write};
use std::sync::{Arc, Mutex};

/// Granularity of the trace: one line per 4 KiB block first read. Publishing maps blocks
/// to whatever chunk size it uses.
pub const TRACE_BLOCK: u64 = 4096;

/// First reads of every traced disk, in order.
#[derive(Default)]
pub struct ReadTrace {
    inner: Mutex<TraceState>,
}

#[derive(Default)]
struct TraceState {
    seen: HashSet<(usize, u64)>,
    order: Vec<(usize, u64)>,
}

impl ReadTrace {
    fn record(&self, disk: usize, offset: u64, len: usize) {
        if len == 0 {
            return;
        }
        let Ok(mut st) = self.inner.lock() else {
            return;
        };
        let first = offset / TRACE_BLOCK;
        let last = (offset + len as u64 - 1) / TRACE_BLOCK;
        for block in first..=last {
            if st.seen.insert((disk, block)) {
                st.order.push((disk, block));
            }
        }
    }

    /// The guest device name of disk `index`: `vda`, `vdb`, ...
    pub fn device_name(index: usize) -> String {
        format!("vd{}", char::from(b'a' + (index % 26) as u8))
    }

    /// Writes the trace as `collective-repo publish --boot-trace` reads it: the kernel and
    /// initrd first (the VMM loads them whole before the guest runs), then `vdX OFFSET`
    /// per block in first-read order.
    pub fn write_to(
        &self,
        out: &mut dyn Write,
        kernel_len: u64,
        initrd_len: Option<u64>,
    ) -> io::Result<()> {
        writeln!(out, "# boot trace written by vmm run --trace-reads")?;
        let blobs = [("kernel", Some(kernel_len)), ("initrd", initrd_len)];
        for (name, len) in blobs {
            if let Some(len) = len {
                for off in (0..len).step_by(TRACE_BLOCK as usize) {
                    writeln!(out, "{name} {off}")?;
                }
            }
        }
        let st = self
            .inner
            .lock()
            .map_err(|_| io::Error::other("trace lock poisoned"))?;
        for (disk, block) in &st.order {
            writeln!(out, "{} {}", Self::device_name(*disk), block * TRACE_BLOCK)?;
        }
        Ok(())
    }
}

/// A disk whose reads are recorded in a [`ReadTrace`].
pub struct TracedDisk {
    inner: Arc<dyn BlockBackend>,
    index: usize,
    trace: Arc<ReadTrace>,
}

impl TracedDisk {
    /// Traces the reads of `inner`, the guest's disk number `index` (0 = `vda`).
    pub fn new(inner: Arc<dyn BlockBackend>, index: usize, trace: Arc<ReadTrace>) -> TracedDisk {
        TracedDisk {
            inner,
            index,
            trace,
        }
    }
}

impl BlockBackend for TracedDisk {
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn read_only(&self) -> bool {
        self.inner.read_only()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.trace.record(self.index, offset, buf.len());
        self.inner.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.inner.write_at(buf, offset)
    }
    fn flush(&self) -> io::Result<()> {
        self.inner.flush()
    }
    fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        self.inner.discard(offset, len)
    }
    fn write_zeroes(&self, offset: u64, len: u64) -> io::Result<()> {
        self.inner.write_zeroes(offset, len)
    }
    fn id(&self) -> String {
        self.inner.id()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Zeros;
    impl BlockBackend for Zeros {
        fn size(&self) -> u64 {
            1 << 20
        }
        fn read_only(&self) -> bool {
            false
        }
        fn read_at(&self, buf: &mut [u8], _offset: u64) -> io::Result<()> {
            buf.fill(0);
            Ok(())
        }
        fn write_at(&self, _buf: &[u8], _offset: u64) -> io::Result<()> {
            Ok(())
        }
        fn flush(&self) -> io::Result<()> {
            Ok(())
        }
        fn discard(&self, _offset: u64, _len: u64) -> io::Result<()> {
            Ok(())
        }
        fn id(&self) -> String {
            "zeros".into()
        }
    }

    #[test]
    fn first_reads_are_kept_in_order_once_each() {
        let trace = Arc::new(ReadTrace::default());
        let vda = TracedDisk::new(Arc::new(Zeros), 0, trace.clone());
        let vdb = TracedDisk::new(Arc::new(Zeros), 1, trace.clone());
        let mut buf = vec![0u8; 6000];
        vda.read_at(&mut buf, 8192).unwrap(); // blocks 2 and 3
        vdb.read_at(&mut buf[..512], 0).unwrap(); // vdb block 0
        vda.read_at(&mut buf[..512], 9000).unwrap(); // block 2 again: not recorded
        vda.write_at(&buf[..512], 0).unwrap(); // writes are not reads
        vda.read_at(&mut buf[..100], 0).unwrap(); // block 0
        let mut out = Vec::new();
        trace.write_to(&mut out, 5000, None).unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(
            lines,
            [
                "kernel 0",
                "kernel 4096",
                "vda 8192",
                "vda 12288",
                "vdb 0",
                "vda 0"
            ]
        );
    }
}
