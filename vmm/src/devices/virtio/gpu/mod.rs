//! virtio-gpu, 2D only: one scanout, a control and a cursor queue, `VIRTIO_GPU_F_EDID`
//! and nothing else (no virgl, no blobs, no capsets). This is exactly what Linux 6.1's
//! driver needs for a KMS framebuffer without 3D (see shared notes, graphics §1.2).
//!
//! * `abi.rs`: the guest structures as `ByteValued` wrappers of `virtio-bindings` types;
//! * `protocol.rs`: request bytes → [`protocol::Command`] or a refusal; responses → bytes;
//! * `state.rs`: the executor ([`GpuState`]: resources, scanout, cursor, limits);
//! * `edid.rs`: the EDID synthesized when the monitor's own is unknown.
//!
//! The device never copies pixels: see [`crate::display`].

pub mod abi;
pub mod edid;
pub mod protocol;
pub mod state;

#[cfg(test)]
mod tests;

use std::sync::Arc;

use virtio_bindings::virtio_gpu::VIRTIO_GPU_F_EDID;
use virtio_bindings::virtio_ids::VIRTIO_ID_GPU;
use vm_memory::ByteValued;

use self::abi::GpuConfig;
use self::protocol::{QueueKind, HEADER_SIZE};
pub use self::state::GpuState;
use super::chain::Chain;
use super::event_loop::EventLoop;
use super::worker::{serve_queues, ChainHandler, DeviceError};
use super::{features, ActivateContext, ActivateError, VirtioDevice};
use crate::display::{DisplayConfig, DisplayControl, DisplaySink};
use crate::vstate::memory::GuestMemoryMmap;

/// Feature: GET_EDID is supported.
pub const F_EDID: u64 = 1 << VIRTIO_GPU_F_EDID;
/// Control queue size offered.
pub const CONTROL_QUEUE_SIZE: u16 = 256;
/// Cursor queue size offered.
pub const CURSOR_QUEUE_SIZE: u16 = 64;
/// Largest chain: an ATTACH_BACKING with the most entries (256 KiB) plus the largest
/// response (an EDID, 1 KiB) fit with room to spare.
pub const MAX_CHAIN_BYTES: u64 = 1 << 20;

const CONTROL: usize = 0;
const CURSOR: usize = 1;

/// Where `events_clear` sits in the configuration space.
const EVENTS_CLEAR_AT: u64 =
    std::mem::offset_of!(virtio_bindings::virtio_gpu::virtio_gpu_config, events_clear) as u64;

/// The GPU device.
pub struct Gpu {
    control: DisplayControl,
    sink: Arc<dyn DisplaySink>,
    worker: Option<EventLoop>,
}

impl Gpu {
    /// A GPU showing on `config.sink`, with the monitor mode of `config`.
    pub fn new(config: DisplayConfig) -> Self {
        Self {
            control: DisplayControl::new(config.width, config.height, config.edid),
            sink: config.sink,
            worker: None,
        }
    }

    /// The handle that changes the monitor mode at run time.
    pub fn control(&self) -> DisplayControl {
        self.control.clone()
    }
}

impl VirtioDevice for Gpu {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_GPU
    }
    fn queue_max_sizes(&self) -> Vec<u16> {
        vec![CONTROL_QUEUE_SIZE, CURSOR_QUEUE_SIZE]
    }
    fn features(&self) -> u64 {
        features::VERSION_1 | features::RING_EVENT_IDX | F_EDID
    }
    fn config_space(&self) -> Vec<u8> {
        let mut c = GpuConfig::default();
        c.0.events_read = self.control.events().to_le();
        c.0.num_scanouts = 1u32.to_le();
        c.0.num_capsets = 0;
        c.as_slice().to_vec()
    }
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        // Only events_clear is writable.
        if let (EVENTS_CLEAR_AT, Ok(b)) = (offset, <[u8; 4]>::try_from(data)) {
            self.control.clear_events(u32::from_le_bytes(b));
        }
    }
    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
        if ctx.queues.len() != 2 {
            return Err(ActivateError::QueueCount {
                need: 2,
                got: ctx.queues.len(),
            });
        }
        self.reset();
        self.control.set_interrupt(Some(ctx.interrupt.clone()));
        let handler = GpuHandler::new(GpuState::new(
            ctx.mem.clone(),
            self.control.clone(),
            self.sink.clone(),
        ));
        self.worker = Some(serve_queues("gpu".into(), handler, ctx)?);
        Ok(())
    }
    fn reset(&mut self) {
        if let Some(mut w) = self.worker.take() {
            w.stop();
            // The driver's resources are gone with its session.
            self.sink.set_scanout(None);
            self.sink.cursor(None, 0, 0);
        }
        self.control.set_interrupt(None);
    }
}

/// Serves both queues: reads each request, hands it to the [`GpuState`], writes the answer.
pub struct GpuHandler {
    state: GpuState,
    request: Vec<u8>,
    response: Vec<u8>,
}

impl GpuHandler {
    /// A handler executing on `state`.
    pub fn new(state: GpuState) -> Self {
        Self {
            state,
            request: Vec::new(),
            response: Vec::new(),
        }
    }
}

impl ChainHandler for GpuHandler {
    fn max_chain_bytes(&self) -> u64 {
        MAX_CHAIN_BYTES
    }

    fn handle(
        &mut self,
        queue: usize,
        chain: &Chain,
        mem: &GuestMemoryMmap,
    ) -> Result<u32, DeviceError> {
        let kind = match queue {
            CONTROL => QueueKind::Control,
            CURSOR => QueueKind::Cursor,
            _ => return Err(DeviceError::Request("virtio-gpu has two queues")),
        };
        // Linux gives cursor commands no response buffer; control commands always have
        // one, and one that cannot hold a header is a broken driver.
        if kind == QueueKind::Control && chain.writable_len() < HEADER_SIZE as u64 {
            return Err(DeviceError::Request(
                "virtio-gpu control request without room for a response header",
            ));
        }
        // Bounded by MAX_CHAIN_BYTES.
        self.request.resize(chain.readable_len() as usize, 0);
        let n = chain.read_at(mem, 0, &mut self.request);
        self.request.truncate(n);
        self.response.clear();
        self.state.process(kind, &self.request, &mut self.response);
        Ok(chain.write_at(mem, 0, &self.response) as u32)
    }
}
