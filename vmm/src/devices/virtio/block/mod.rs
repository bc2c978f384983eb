//! virtio-blk: read, write, flush, discard, write-zeroes, get-id; read-only disks.

pub mod backend;

use std::sync::Arc;

pub use backend::{BlockBackend, RawFile};

use super::chain::Chain;
use super::worker::{ChainHandler, DeviceError, Worker};
use super::{features, ids, ActivateContext, ActivateError, VirtioDevice};
use crate::vstate::memory::GuestMemoryMmap;

/// Sector size of the virtio-blk protocol.
pub const SECTOR_SIZE: u64 = 512;
/// Queue size offered.
pub const QUEUE_SIZE: u16 = 256;
/// Largest request we accept (data bytes); bigger chains fail the device. The driver is
/// told to stay below it: at most [`SEG_MAX`] segments of at most [`SIZE_MAX`] bytes.
pub const MAX_REQUEST_BYTES: u64 = 16 << 20;
/// Largest data segment (VIRTIO_BLK_F_SIZE_MAX). Without it Linux sets no per-request
/// limit of its own, and a raised `max_sectors_kb` could send legitimate requests beyond
/// [`MAX_REQUEST_BYTES`].
pub const SIZE_MAX: u32 = 64 * 1024;
/// Most data segments per request (VIRTIO_BLK_F_SEG_MAX): the chain also carries the
/// header and the status byte.
pub const SEG_MAX: u32 = QUEUE_SIZE as u32 - 2;
/// Discard / write-zeroes segments per request.
pub const MAX_DISCARD_SEGMENTS: u32 = 16;

/// Feature bits.
pub mod feature {
    #![allow(missing_docs)]
    pub const SIZE_MAX: u64 = 1 << 1;
    pub const SEG_MAX: u64 = 1 << 2;
    pub const RO: u64 = 1 << 5;
    pub const FLUSH: u64 = 1 << 9;
    pub const DISCARD: u64 = 1 << 13;
    pub const WRITE_ZEROES: u64 = 1 << 14;
}

/// Request types.
pub mod req {
    #![allow(missing_docs)]
    pub const IN: u32 = 0;
    pub const OUT: u32 = 1;
    pub const FLUSH: u32 = 4;
    pub const GET_ID: u32 = 8;
    pub const DISCARD: u32 = 11;
    pub const WRITE_ZEROES: u32 = 13;
}

/// Status byte values.
pub mod status {
    #![allow(missing_docs)]
    pub const OK: u8 = 0;
    pub const IOERR: u8 = 1;
    pub const UNSUPP: u8 = 2;
}

/// Bytes in the GET_ID answer.
pub const ID_BYTES: usize = 20;

/// A virtio-blk device over a [`BlockBackend`].
pub struct Block {
    backend: Arc<dyn BlockBackend>,
    worker: Option<Worker>,
    name: String,
}

impl Block {
    /// A disk serving `backend`; `name` labels its worker thread and logs.
    pub fn new(backend: Arc<dyn BlockBackend>, name: String) -> Self {
        Self {
            backend,
            worker: None,
            name,
        }
    }
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        ids::BLOCK
    }

    fn queue_max_sizes(&self) -> Vec<u16> {
        vec![QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        let mut f = features::VERSION_1
            | features::RING_EVENT_IDX
            | feature::SIZE_MAX
            | feature::SEG_MAX
            | feature::FLUSH;
        if self.backend.read_only() {
            f |= feature::RO;
        } else {
            f |= feature::DISCARD | feature::WRITE_ZEROES;
        }
        f
    }

    fn config_space(&self) -> Vec<u8> {
        let mut c = vec![0u8; 60];
        let sectors = self.backend.size() / SECTOR_SIZE;
        c[0..8].copy_from_slice(&sectors.to_le_bytes());
        c[8..12].copy_from_slice(&SIZE_MAX.to_le_bytes());
        c[12..16].copy_from_slice(&SEG_MAX.to_le_bytes());
        let max_sectors = (u32::MAX / SECTOR_SIZE as u32).to_le_bytes();
        c[36..40].copy_from_slice(&max_sectors); // max_discard_sectors
        c[40..44].copy_from_slice(&MAX_DISCARD_SEGMENTS.to_le_bytes());
        c[44..48].copy_from_slice(&8u32.to_le_bytes()); // discard alignment: 4 KiB
        c[48..52].copy_from_slice(&max_sectors); // max_write_zeroes_sectors
        c[52..56].copy_from_slice(&MAX_DISCARD_SEGMENTS.to_le_bytes());
        c
    }

    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
        if ctx.queues.len() != 1 {
            return Err(ActivateError::QueueCount {
                need: 1,
                got: ctx.queues.len(),
            });
        }
        self.reset();
        let handler = BlockHandler {
            backend: self.backend.clone(),
            buf: Vec::new(),
        };
        self.worker = Some(Worker::spawn(
            format!("blk-{}", self.name),
            handler,
            ctx.queues,
            ctx.queue_evts,
            ctx.mem,
            ctx.interrupt,
        )?);
        Ok(())
    }

    fn reset(&mut self) {
        if let Some(mut w) = self.worker.take() {
            w.stop();
        }
    }
}

/// Serves requests on the worker thread.
pub struct BlockHandler {
    backend: Arc<dyn BlockBackend>,
    buf: Vec<u8>,
}

impl BlockHandler {
    /// A handler for `backend` (exposed for tests that drive chains directly).
    pub fn new(backend: Arc<dyn BlockBackend>) -> Self {
        Self {
            backend,
            buf: Vec::new(),
        }
    }

    /// Byte range of `sectors` sectors at `sector`, if inside the disk.
    fn range(&self, sector: u64, bytes: u64) -> Option<u64> {
        let off = sector.checked_mul(SECTOR_SIZE)?;
        (off.checked_add(bytes)? <= self.backend.size()).then_some(off)
    }

    /// Executes the request; returns (status, bytes written into the data-in area).
    fn execute(
        &mut self,
        kind: u32,
        sector: u64,
        chain: &Chain,
        mem: &GuestMemoryMmap,
        data_in: u64,
    ) -> (u8, u64) {
        let data_out = chain.readable_len() - 16;
        match kind {
            req::IN => {
                if data_in % SECTOR_SIZE != 0 {
                    return (status::IOERR, 0);
                }
                let Some(off) = self.range(sector, data_in) else {
                    return (status::IOERR, 0);
                };
                self.buf.resize(data_in as usize, 0);
                if let Err(e) = self.backend.read_at(&mut self.buf, off) {
                    log::warn!("virtio-blk read at {off:#x}+{data_in:#x}: {e}");
                    return (status::IOERR, 0);
                }
                let n = chain.write_at(mem, 0, &self.buf);
                (status::OK, n as u64)
            }
            req::OUT => {
                if self.backend.read_only() || data_out % SECTOR_SIZE != 0 {
                    return (status::IOERR, 0);
                }
                let Some(off) = self.range(sector, data_out) else {
                    return (status::IOERR, 0);
                };
                self.buf.resize(data_out as usize, 0);
                chain.read_at(mem, 16, &mut self.buf);
                match self.backend.write_at(&self.buf, off) {
                    Ok(()) => (status::OK, 0),
                    Err(e) => {
                        log::warn!("virtio-blk write at {off:#x}+{data_out:#x}: {e}");
                        (status::IOERR, 0)
                    }
                }
            }
            req::FLUSH => match self.backend.flush() {
                Ok(()) => (status::OK, 0),
                Err(e) => {
                    log::warn!("virtio-blk flush: {e}");
                    (status::IOERR, 0)
                }
            },
            req::GET_ID => {
                let mut id = [0u8; ID_BYTES];
                let s = self.backend.id();
                let n = s.len().min(ID_BYTES);
                id[..n].copy_from_slice(&s.as_bytes()[..n]);
                let len = (data_in as usize).min(ID_BYTES);
                let n = chain.write_at(mem, 0, &id[..len]);
                (status::OK, n as u64)
            }
            req::DISCARD | req::WRITE_ZEROES => {
                if self.backend.read_only() {
                    return (status::IOERR, 0);
                }
                if data_out % 16 != 0
                    || data_out == 0
                    || data_out / 16 > u64::from(MAX_DISCARD_SEGMENTS)
                {
                    return (status::IOERR, 0);
                }
                let mut seg = [0u8; 16];
                for i in 0..data_out / 16 {
                    chain.read_at(mem, 16 + i * 16, &mut seg);
                    let s = u64::from_le_bytes([
                        seg[0], seg[1], seg[2], seg[3], seg[4], seg[5], seg[6], seg[7],
                    ]);
                    let n = u64::from(u32::from_le_bytes([seg[8], seg[9], seg[10], seg[11]]));
                    let flags = u32::from_le_bytes([seg[12], seg[13], seg[14], seg[15]]);
                    // Only WRITE_ZEROES may set a flag (bit 0, unmap).
                    if flags & !u32::from(kind == req::WRITE_ZEROES) != 0 {
                        return (status::UNSUPP, 0);
                    }
                    let Some(off) = self.range(s, n * SECTOR_SIZE) else {
                        return (status::IOERR, 0);
                    };
                    let r = if kind == req::DISCARD {
                        self.backend.discard(off, n * SECTOR_SIZE)
                    } else {
                        self.backend.write_zeroes(off, n * SECTOR_SIZE)
                    };
                    if let Err(e) = r {
                        log::warn!("virtio-blk discard/write-zeroes at {off:#x}: {e}");
                        return (status::IOERR, 0);
                    }
                }
                (status::OK, 0)
            }
            _ => (status::UNSUPP, 0),
        }
    }
}

impl ChainHandler for BlockHandler {
    fn max_chain_bytes(&self) -> u64 {
        MAX_REQUEST_BYTES + 4096
    }

    fn handle(
        &mut self,
        _queue: usize,
        chain: &Chain,
        mem: &GuestMemoryMmap,
    ) -> Result<u32, DeviceError> {
        // Layout: 16-byte header (readable), data (readable for OUT, writable for IN),
        // one status byte (the last writable byte).
        if chain.readable_len() < 16 {
            return Err(DeviceError::Request(
                "virtio-blk request without a 16-byte header",
            ));
        }
        let writable = chain.writable_len();
        if writable == 0 {
            return Err(DeviceError::Request(
                "virtio-blk request without a status byte",
            ));
        }
        let mut hdr = [0u8; 16];
        chain.read_at(mem, 0, &mut hdr);
        let kind = u32::from_le_bytes([hdr[0], hdr[1], hdr[2], hdr[3]]);
        let sector = u64::from_le_bytes([
            hdr[8], hdr[9], hdr[10], hdr[11], hdr[12], hdr[13], hdr[14], hdr[15],
        ]);
        let data_in = writable - 1;
        let (st, written) = self.execute(kind, sector, chain, mem, data_in);
        chain.write_at(mem, data_in, &[st]);
        // The used length counts every byte written, the status byte included.
        Ok((written + 1) as u32)
    }
}

#[cfg(test)]
pub(crate) mod tests;
