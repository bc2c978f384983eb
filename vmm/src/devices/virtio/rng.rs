//! virtio-rng: fills the guest's buffers from the host kernel's CSPRNG (getrandom).

use super::chain::Chain;
use super::event_loop::EventLoop;
use super::worker::{serve_queues, ChainHandler, DeviceError};
use virtio_bindings::virtio_ids::VIRTIO_ID_RNG;

use super::{features, ActivateContext, ActivateError, VirtioDevice};
use crate::vstate::memory::GuestMemoryMmap;

/// Bytes served per request at most; the guest asks again for more.
pub const MAX_BYTES_PER_REQUEST: usize = 64 * 1024;

/// The entropy device.
#[derive(Default)]
pub struct Rng {
    worker: Option<EventLoop>,
}

impl Rng {
    /// A new device.
    pub fn new() -> Self {
        Self::default()
    }
}

impl VirtioDevice for Rng {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_RNG
    }
    fn queue_max_sizes(&self) -> Vec<u16> {
        vec![64]
    }
    fn features(&self) -> u64 {
        features::VERSION_1 | features::RING_EVENT_IDX
    }
    fn config_space(&self) -> Vec<u8> {
        Vec::new()
    }
    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
        if ctx.queues.len() != 1 {
            return Err(ActivateError::QueueCount {
                need: 1,
                got: ctx.queues.len(),
            });
        }
        self.reset();
        self.worker = Some(serve_queues("rng".into(), RngHandler::default(), ctx)?);
        Ok(())
    }
    fn reset(&mut self) {
        if let Some(mut w) = self.worker.take() {
            w.stop();
        }
    }
}

/// Serves entropy requests.
#[derive(Default)]
pub struct RngHandler {
    buf: Vec<u8>,
}

fn getrandom(buf: &mut [u8]) -> std::io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        // SAFETY: writes at most `buf.len() - done` bytes into the live buffer.
        let r = unsafe { libc::getrandom(buf[done..].as_mut_ptr().cast(), buf.len() - done, 0) };
        if r < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        done += r as usize;
    }
    Ok(())
}

impl ChainHandler for RngHandler {
    fn max_chain_bytes(&self) -> u64 {
        // Any sane size; only the first MAX_BYTES_PER_REQUEST bytes are filled.
        1 << 30
    }

    fn handle(
        &mut self,
        _queue: usize,
        chain: &Chain,
        mem: &GuestMemoryMmap,
    ) -> Result<u32, DeviceError> {
        if !chain.readable.is_empty() {
            return Err(DeviceError::Request("virtio-rng buffer is device-readable"));
        }
        let n = (chain.writable_len() as usize).min(MAX_BYTES_PER_REQUEST);
        self.buf.resize(n, 0);
        if let Err(e) = getrandom(&mut self.buf) {
            log::warn!("getrandom failed: {e}");
            return Ok(0);
        }
        Ok(chain.write_at(mem, 0, &self.buf) as u32)
    }
}

#[cfg(test)]
mod tests {
    use virtio_queue::mock::MockSplitQueue;
    use virtio_queue::Queue;
    use vm_memory::{Bytes, GuestAddress};

    use super::*;
    use crate::devices::virtio::block::tests::{d, mem, used, N, W};
    use crate::devices::virtio::worker::process_queue;

    #[test]
    fn fills_writable_buffers() {
        let m = mem();
        let mock = MockSplitQueue::new(&m, 16);
        mock.add_desc_chains(&[d(0x10_0000, 64, W | N, 1), d(0x20_0000, 64, W, 0)], 0)
            .unwrap();
        let mut q: Queue = mock.create_queue().unwrap();
        let mut h = RngHandler::default();
        assert!(process_queue(&mut h, 0, &mut q, &m).unwrap());
        assert_eq!(used(&m, mock.used_addr(), 0), (1, 0, 128));
        let mut b = [0u8; 64];
        m.read_slice(&mut b, GuestAddress(0x20_0000)).unwrap();
        assert!(b.iter().any(|&x| x != 0), "random bytes written");
    }

    #[test]
    fn caps_huge_requests_and_rejects_readable_buffers() {
        let m = mem();
        let mock = MockSplitQueue::new(&m, 16);
        mock.add_desc_chains(&[d(0x10_0000, 1 << 20, W, 0)], 0)
            .unwrap();
        let mut q: Queue = mock.create_queue().unwrap();
        let mut h = RngHandler::default();
        process_queue(&mut h, 0, &mut q, &m).unwrap();
        assert_eq!(
            used(&m, mock.used_addr(), 0).2 as usize,
            MAX_BYTES_PER_REQUEST
        );

        let mock = MockSplitQueue::new(&m, 16);
        mock.add_desc_chains(&[d(0x10_0000, 64, 0, 0)], 0).unwrap();
        let mut q: Queue = mock.create_queue().unwrap();
        assert!(process_queue(&mut h, 0, &mut q, &m).is_err());
    }
}
