//! virtio-blk: read, write, flush, discard, write-zeroes, get-id; read-only disks.

pub mod abi;
pub mod backend;
pub mod request;

use std::sync::Arc;

use virtio_bindings::bindings::virtio_blk::{
    virtio_blk_config, VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO,
    VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_F_SIZE_MAX, VIRTIO_BLK_F_WRITE_ZEROES, VIRTIO_BLK_ID_BYTES,
};
use virtio_bindings::virtio_ids::VIRTIO_ID_BLOCK;
use vm_memory::ByteValued;

use self::abi::BlockConfig;
use self::request::{DiskInfo, DiskRange, Envelope, Request, Status};
pub use backend::{BlockBackend, RawFile};

use super::chain::Chain;
use super::event_loop::EventLoop;
use super::worker::{serve_queues, ChainHandler, DeviceError};
use super::{features, ActivateContext, ActivateError, VirtioDevice};
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
/// Discard granularity told to the driver, in sectors (4 KiB: the host's hole-punching
/// unit on the usual file systems).
pub const DISCARD_ALIGNMENT_SECTORS: u32 = 8;
/// Bytes in the GET_ID answer.
pub const ID_BYTES: usize = VIRTIO_BLK_ID_BYTES as usize;

/// Feature bits the device may offer (`1 << VIRTIO_BLK_F_*`).
pub mod feature {
    #![allow(missing_docs)]
    use super::*;
    pub const SIZE_MAX: u64 = 1 << VIRTIO_BLK_F_SIZE_MAX;
    pub const SEG_MAX: u64 = 1 << VIRTIO_BLK_F_SEG_MAX;
    pub const RO: u64 = 1 << VIRTIO_BLK_F_RO;
    pub const FLUSH: u64 = 1 << VIRTIO_BLK_F_FLUSH;
    pub const DISCARD: u64 = 1 << VIRTIO_BLK_F_DISCARD;
    pub const WRITE_ZEROES: u64 = 1 << VIRTIO_BLK_F_WRITE_ZEROES;
}

/// A virtio-blk device over a [`BlockBackend`].
pub struct Block {
    backend: Arc<dyn BlockBackend>,
    worker: Option<EventLoop>,
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
        VIRTIO_ID_BLOCK
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
        // The largest range one discard / write-zeroes segment may cover.
        let max_segment_sectors = u32::MAX / SECTOR_SIZE as u32;
        let config = BlockConfig(virtio_blk_config {
            capacity: (self.backend.size() / SECTOR_SIZE).to_le(),
            size_max: SIZE_MAX.to_le(),
            seg_max: SEG_MAX.to_le(),
            max_discard_sectors: max_segment_sectors.to_le(),
            max_discard_seg: MAX_DISCARD_SEGMENTS.to_le(),
            discard_sector_alignment: DISCARD_ALIGNMENT_SECTORS.to_le(),
            max_write_zeroes_sectors: max_segment_sectors.to_le(),
            max_write_zeroes_seg: MAX_DISCARD_SEGMENTS.to_le(),
            ..Default::default()
        });
        config.as_slice().to_vec()
    }

    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
        if ctx.queues.len() != 1 {
            return Err(ActivateError::QueueCount {
                need: 1,
                got: ctx.queues.len(),
            });
        }
        self.reset();
        self.worker = Some(serve_queues(
            format!("blk-{}", self.name),
            BlockHandler::new(self.backend.clone()),
            ctx,
        )?);
        Ok(())
    }

    fn reset(&mut self) {
        if let Some(mut w) = self.worker.take() {
            w.stop();
        }
    }
}

/// Serves requests on the worker thread: parse ([`request`]), then execute.
pub struct BlockHandler {
    backend: Arc<dyn BlockBackend>,
    buf: Vec<u8>,
}

/// The outcome of an executed request.
struct Completion {
    status: Status,
    /// Bytes written into the data-in area.
    written: u64,
}

impl Completion {
    fn status(status: Status) -> Self {
        Self { status, written: 0 }
    }
}

impl BlockHandler {
    /// A handler for `backend` (exposed for tests that drive chains directly).
    pub fn new(backend: Arc<dyn BlockBackend>) -> Self {
        Self {
            backend,
            buf: Vec::new(),
        }
    }

    fn disk(&self) -> DiskInfo {
        DiskInfo {
            size: self.backend.size(),
            read_only: self.backend.read_only(),
        }
    }

    /// Carries out a validated request against the backend.
    fn execute(&mut self, request: &Request, chain: &Chain, mem: &GuestMemoryMmap) -> Completion {
        let io_result = |what: &str, r: std::io::Result<()>| match r {
            Ok(()) => Completion::status(Status::Ok),
            Err(e) => {
                log::warn!("virtio-blk {what}: {e}");
                Completion::status(Status::IoErr)
            }
        };
        match request {
            Request::Read(DiskRange { offset, len }) => {
                // `len` is at most the chain's writable bytes, so at most max_chain_bytes.
                self.buf.resize(*len as usize, 0);
                if let Err(e) = self.backend.read_at(&mut self.buf, *offset) {
                    log::warn!("virtio-blk read at {offset:#x}+{len:#x}: {e}");
                    return Completion::status(Status::IoErr);
                }
                Completion {
                    status: Status::Ok,
                    written: chain.write_at(mem, 0, &self.buf) as u64,
                }
            }
            Request::Write(DiskRange { offset, len }) => {
                // `len` is at most the chain's readable bytes, so at most max_chain_bytes.
                self.buf.resize(*len as usize, 0);
                chain.read_at(mem, request::HEADER_BYTES, &mut self.buf);
                io_result("write", self.backend.write_at(&self.buf, *offset))
            }
            Request::Flush => io_result("flush", self.backend.flush()),
            Request::GetId { len } => {
                let mut id = [0u8; ID_BYTES];
                let serial = self.backend.id();
                let n = serial.len().min(ID_BYTES);
                id[..n].copy_from_slice(&serial.as_bytes()[..n]);
                Completion {
                    status: Status::Ok,
                    written: chain.write_at(mem, 0, &id[..*len]) as u64,
                }
            }
            Request::Discard(ranges) => io_result(
                "discard",
                ranges
                    .iter()
                    .try_for_each(|r| self.backend.discard(r.offset, r.len)),
            ),
            Request::WriteZeroes(ranges) => io_result(
                "write-zeroes",
                ranges
                    .iter()
                    .try_for_each(|r| self.backend.write_zeroes(r.offset, r.len)),
            ),
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
        let envelope = Envelope::parse(chain, mem)?;
        let done = match envelope.request(chain, mem, &self.disk()) {
            Ok(request) => self.execute(&request, chain, mem),
            Err(refusal) => {
                log::debug!("virtio-blk: refused: {refusal}");
                Completion::status(refusal.status())
            }
        };
        chain.write_at(mem, envelope.status_offset(), &[done.status as u8]);
        // The used length counts every byte written, the status byte included. The chain
        // is at most `max_chain_bytes`, far below u32::MAX.
        Ok((done.written + 1) as u32)
    }
}

#[cfg(test)]
pub(crate) mod tests;
