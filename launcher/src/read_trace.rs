//! Recording a boot trace: the order in which a guest first reads each block of its
//! disks (the format is [`appliance::boot_trace`]).
//!
//! Publishers record one with `vmm run --trace-reads FILE` and hand it to
//! `collective-repo publish --boot-trace FILE`, which turns it into the appliance's boot
//! profile: the chunks a terminal fetches first, in the order the guest wants them, so the
//! appliance starts as soon as they are in and boots without waiting on demand fetches.

use appliance::boot_trace::{self, TRACE_BLOCK};
use std::collections::HashSet;
use std::io::{self, Write};
use std::sync::{Arc, Mutex};
use vmm::BlockBackend;

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

    /// Writes the trace as `collective-repo publish --boot-trace` reads it.
    pub fn write_to(
        &self,
        out: &mut dyn Write,
        kernel_len: u64,
        initrd_len: Option<u64>,
    ) -> io::Result<()> {
        let st = self
            .inner
            .lock()
            .map_err(|_| io::Error::other("trace lock poisoned"))?;
        boot_trace::write(out, kernel_len, initrd_len, &st.order)
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
