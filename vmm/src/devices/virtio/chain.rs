//! Strict parsing of a split-virtqueue descriptor chain written by an untrusted guest.
//!
//! virtio-queue's own `DescriptorChain` iterator stops silently on a bad descriptor, which a
//! device cannot tell apart from the end of a chain. We walk the table ourselves from the
//! head index it gives us and reject, with a reason, every chain that:
//! * names a descriptor index outside the table;
//! * visits more descriptors than the table holds (a loop);
//! * uses an indirect table (we do not offer `VIRTIO_RING_F_INDIRECT_DESC`);
//! * puts a device-readable descriptor after a device-writable one (spec 2.7.4.2);
//! * points a buffer outside guest RAM, or wraps the address space;
//! * adds up to more bytes than the device allows.
//!
//! A rejected chain puts the device into the failed state (`DEVICE_NEEDS_RESET`): a driver
//! that writes such chains is broken or hostile, and the spec lets the device stop there.

use virtio_queue::desc::split::Descriptor;
use vm_memory::{ByteValued, Bytes, GuestAddress, GuestMemoryBackend};

use crate::vstate::memory::GuestMemoryMmap;

/// Bytes per entry of a split virtqueue's descriptor table (`struct vring_desc`).
const DESCRIPTOR_SIZE: u64 = std::mem::size_of::<Descriptor>() as u64;

/// Why a chain was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    /// A `next` or head index beyond the queue size.
    #[error("descriptor index {index} outside a table of {size}")]
    IndexOutOfRange {
        /// The bad index.
        index: u16,
        /// The queue size.
        size: u16,
    },
    /// More descriptors than the table holds: the chain loops.
    #[error("descriptor chain loops (more than {0} descriptors)")]
    Loop(u16),
    /// An indirect descriptor, which we never offered.
    #[error("indirect descriptor without VIRTIO_RING_F_INDIRECT_DESC")]
    Indirect,
    /// A device-readable descriptor after a device-writable one.
    #[error("device-readable descriptor after a device-writable one")]
    ReadableAfterWritable,
    /// A buffer not entirely inside guest RAM.
    #[error("buffer {addr:#x}+{len:#x} is outside guest memory")]
    OutOfMemory {
        /// Buffer start.
        addr: u64,
        /// Buffer length.
        len: u32,
    },
    /// The descriptor table itself cannot be read.
    #[error("descriptor table entry at {0:#x} is outside guest memory")]
    TableOutOfMemory(u64),
    /// The chain is longer than the device accepts.
    #[error("descriptor chain of {0} bytes exceeds the device's limit")]
    TooLong(u64),
}

/// One guest buffer of a chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Buffer {
    /// Guest physical start.
    pub addr: GuestAddress,
    /// Length in bytes.
    pub len: u32,
}

/// A validated chain: the device-readable buffers, then the device-writable ones.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Chain {
    /// Head index, to return in the used ring.
    pub head: u16,
    /// Buffers the device reads (driver → device).
    pub readable: Vec<Buffer>,
    /// Buffers the device writes (device → driver).
    pub writable: Vec<Buffer>,
}

impl Chain {
    /// Walks the chain starting at `head` in the descriptor table at `table` of `size`
    /// entries, validating it as described in the module docs.
    pub fn parse(
        mem: &GuestMemoryMmap,
        table: GuestAddress,
        size: u16,
        head: u16,
        max_bytes: u64,
    ) -> Result<Chain, ChainError> {
        let mut chain = Chain {
            head,
            ..Default::default()
        };
        let mut index = head;
        let mut total: u64 = 0;
        for _ in 0..size {
            if index >= size {
                return Err(ChainError::IndexOutOfRange { index, size });
            }
            let at = table
                .0
                .checked_add(u64::from(index) * DESCRIPTOR_SIZE)
                .ok_or(ChainError::TableOutOfMemory(table.0))?;
            let desc: Descriptor = mem
                .read_obj(GuestAddress(at))
                .map_err(|_| ChainError::TableOutOfMemory(at))?;
            let (addr, len) = (desc.addr().0, desc.len());

            if desc.refers_to_indirect_table() {
                return Err(ChainError::Indirect);
            }
            if addr.checked_add(u64::from(len)).is_none()
                || !GuestMemoryBackend::check_range(mem, GuestAddress(addr), len as usize)
            {
                return Err(ChainError::OutOfMemory { addr, len });
            }
            total += u64::from(len);
            if total > max_bytes {
                return Err(ChainError::TooLong(total));
            }
            let buf = Buffer {
                addr: GuestAddress(addr),
                len,
            };
            if desc.is_write_only() {
                chain.writable.push(buf);
            } else if chain.writable.is_empty() {
                chain.readable.push(buf);
            } else {
                return Err(ChainError::ReadableAfterWritable);
            }
            if !desc.has_next() {
                return Ok(chain);
            }
            index = desc.next();
        }
        Err(ChainError::Loop(size))
    }

    /// Total bytes in the readable buffers.
    pub fn readable_len(&self) -> u64 {
        self.readable.iter().map(|b| u64::from(b.len)).sum()
    }

    /// Total bytes in the writable buffers.
    pub fn writable_len(&self) -> u64 {
        self.writable.iter().map(|b| u64::from(b.len)).sum()
    }

    /// Copies readable bytes from `offset` of the readable stream into `out`; returns how
    /// many were copied (less than `out.len()` at the end of the stream).
    pub fn read_at(&self, mem: &GuestMemoryMmap, offset: u64, out: &mut [u8]) -> usize {
        copy(&self.readable, offset, out.len(), |buf_addr, range| {
            mem.read_slice(&mut out[range.clone()], buf_addr).is_ok()
        })
    }

    /// Reads a guest structure from the readable stream at `offset`; `None` if the stream
    /// ends first (a short read never yields a half-filled object).
    pub fn read_obj<T: ByteValued + Default>(
        &self,
        mem: &GuestMemoryMmap,
        offset: u64,
    ) -> Option<T> {
        let mut obj = T::default();
        let want = obj.as_slice().len();
        (self.read_at(mem, offset, obj.as_mut_slice()) == want).then_some(obj)
    }

    /// Copies `data` into the writable stream at `offset`; returns how many bytes fitted.
    pub fn write_at(&self, mem: &GuestMemoryMmap, offset: u64, data: &[u8]) -> usize {
        copy(&self.writable, offset, data.len(), |buf_addr, range| {
            mem.write_slice(&data[range.clone()], buf_addr).is_ok()
        })
    }
}

/// Walks `bufs` as one byte stream, starting `skip` bytes in, handing each piece (guest
/// address, range in the caller's slice) to `f` until `want` bytes are done.
fn copy(
    bufs: &[Buffer],
    mut skip: u64,
    want: usize,
    mut f: impl FnMut(GuestAddress, std::ops::Range<usize>) -> bool,
) -> usize {
    let mut done = 0usize;
    for b in bufs {
        if done == want {
            break;
        }
        let len = u64::from(b.len);
        if skip >= len {
            skip -= len;
            continue;
        }
        let n = ((len - skip) as usize).min(want - done);
        // The buffer was range-checked when the chain was parsed, so this cannot overflow.
        if !f(GuestAddress(b.addr.0 + skip), done..done + n) {
            break;
        }
        done += n;
        skip = 0;
    }
    done
}

#[cfg(test)]
mod tests {
    use virtio_bindings::virtio_ring;

    use super::*;

    const VRING_DESC_F_NEXT: u16 = virtio_ring::VRING_DESC_F_NEXT as u16;
    const VRING_DESC_F_WRITE: u16 = virtio_ring::VRING_DESC_F_WRITE as u16;
    const VRING_DESC_F_INDIRECT: u16 = virtio_ring::VRING_DESC_F_INDIRECT as u16;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap()
    }

    fn put(mem: &GuestMemoryMmap, table: u64, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        mem.write_obj(
            Descriptor::new(addr, len, flags, next),
            GuestAddress(table + u64::from(i) * DESCRIPTOR_SIZE),
        )
        .unwrap();
    }

    const T: GuestAddress = GuestAddress(0x1000);

    #[test]
    fn good_chain_and_stream_copies() {
        let m = mem();
        put(&m, T.0, 0, 0x8000, 4, VRING_DESC_F_NEXT, 3);
        put(&m, T.0, 3, 0x9000, 4, VRING_DESC_F_NEXT, 5);
        put(
            &m,
            T.0,
            5,
            0xa000,
            8,
            VRING_DESC_F_WRITE | VRING_DESC_F_NEXT,
            6,
        );
        put(&m, T.0, 6, 0xb000, 8, VRING_DESC_F_WRITE, 0);
        m.write_slice(b"abcd", GuestAddress(0x8000)).unwrap();
        m.write_slice(b"efgh", GuestAddress(0x9000)).unwrap();
        let c = Chain::parse(&m, T, 8, 0, 1 << 20).unwrap();
        assert_eq!((c.readable.len(), c.writable.len()), (2, 2));
        assert_eq!((c.readable_len(), c.writable_len()), (8, 16));
        let mut out = [0u8; 6];
        assert_eq!(c.read_at(&m, 2, &mut out), 6);
        assert_eq!(&out, b"cdefgh");
        assert_eq!(c.read_at(&m, 6, &mut out), 2, "short at end of stream");
        assert_eq!(c.write_at(&m, 6, b"0123456789"), 10);
        let mut w = [0u8; 2];
        m.read_slice(&mut w, GuestAddress(0xa006)).unwrap();
        assert_eq!(&w, b"01");
        let mut w = [0u8; 8];
        m.read_slice(&mut w, GuestAddress(0xb000)).unwrap();
        assert_eq!(&w, b"23456789");
        assert_eq!(c.write_at(&m, 15, b"xyz"), 1);
    }

    #[test]
    fn malformed_chains_are_rejected() {
        let m = mem();
        // Loop: 0 -> 1 -> 0.
        put(&m, T.0, 0, 0x8000, 4, VRING_DESC_F_NEXT, 1);
        put(&m, T.0, 1, 0x8000, 4, VRING_DESC_F_NEXT, 0);
        assert_eq!(Chain::parse(&m, T, 8, 0, 1 << 20), Err(ChainError::Loop(8)));
        // Self-loop.
        put(&m, T.0, 0, 0x8000, 4, VRING_DESC_F_NEXT, 0);
        assert_eq!(Chain::parse(&m, T, 8, 0, 1 << 20), Err(ChainError::Loop(8)));
        // Next out of range, and head out of range.
        put(&m, T.0, 0, 0x8000, 4, VRING_DESC_F_NEXT, 8);
        assert!(matches!(
            Chain::parse(&m, T, 8, 0, 1 << 20),
            Err(ChainError::IndexOutOfRange { index: 8, .. })
        ));
        assert!(matches!(
            Chain::parse(&m, T, 8, 9, 1 << 20),
            Err(ChainError::IndexOutOfRange { index: 9, .. })
        ));
        // Buffer outside memory, partly outside, and wrapping.
        put(&m, T.0, 0, 0x20_0000, 4, 0, 0);
        assert!(matches!(
            Chain::parse(&m, T, 8, 0, 1 << 20),
            Err(ChainError::OutOfMemory { .. })
        ));
        put(&m, T.0, 0, 0xf_fff0, 32, 0, 0);
        assert!(matches!(
            Chain::parse(&m, T, 8, 0, 1 << 20),
            Err(ChainError::OutOfMemory { .. })
        ));
        put(&m, T.0, 0, u64::MAX - 2, 16, 0, 0);
        assert!(matches!(
            Chain::parse(&m, T, 8, 0, 1 << 20),
            Err(ChainError::OutOfMemory { .. })
        ));
        // Absurd length.
        put(&m, T.0, 0, 0x8000, u32::MAX, 0, 0);
        assert!(matches!(
            Chain::parse(&m, T, 8, 0, 1 << 20),
            Err(ChainError::OutOfMemory { .. })
        ));
        put(&m, T.0, 0, 0x8000, 0x1000, VRING_DESC_F_NEXT, 1);
        put(&m, T.0, 1, 0x9000, 0x1000, 0, 0);
        assert_eq!(
            Chain::parse(&m, T, 8, 0, 0x1800),
            Err(ChainError::TooLong(0x2000))
        );
        // Wrong direction: readable after writable.
        put(
            &m,
            T.0,
            0,
            0x8000,
            4,
            VRING_DESC_F_WRITE | VRING_DESC_F_NEXT,
            1,
        );
        put(&m, T.0, 1, 0x9000, 4, 0, 0);
        assert_eq!(
            Chain::parse(&m, T, 8, 0, 1 << 20),
            Err(ChainError::ReadableAfterWritable)
        );
        // Indirect.
        put(&m, T.0, 0, 0x8000, 16, VRING_DESC_F_INDIRECT, 0);
        assert_eq!(
            Chain::parse(&m, T, 8, 0, 1 << 20),
            Err(ChainError::Indirect)
        );
        // Descriptor table itself outside memory.
        assert!(matches!(
            Chain::parse(&m, GuestAddress(0xf_fff8), 8, 0, 1 << 20),
            Err(ChainError::TableOutOfMemory(_))
        ));
        assert!(matches!(
            Chain::parse(&m, GuestAddress(u64::MAX - 8), 8, 1, 1 << 20),
            Err(ChainError::TableOutOfMemory(_))
        ));
    }
}
