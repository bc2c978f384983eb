//! virtio devices over the virtio-mmio transport (version 2, "modern").
//!
//! * [`mmio::MmioTransport`] owns the register window, the queue configuration and the
//!   device status; it is what vCPU threads call on MMIO exits.
//! * A [`VirtioDevice`] (block, rng, ...) describes itself (type, features, queues, config
//!   space) and, when the driver sets DRIVER_OK, is *activated*: it starts a
//!   worker thread ([`event_loop::EventLoop`]) that waits on the queues' ioeventfds (and
//!   on fds of the device's own, such as the network card's tap or the input queue's
//!   wake-up) and hands each event to the device's [`event_loop::EventHandler`]. Block,
//!   rng and gpu use
//!   [`worker::serve_queues`], which pulls validated chains ([`chain::Chain`]) and hands
//!   each to the device's [`worker::ChainHandler`].
//! * A worker per device (not one event loop for all) because a block read may block for a
//!   long time while cachefs fetches a missing chunk; it must stall only that disk.
//! * Guest-visible structures and constants come from `virtio-bindings`; what the device
//!   reads from guest memory is read as a `ByteValued` type, never by byte index.

pub mod block;
pub mod chain;
pub mod event_loop;
pub mod gpu;
pub mod input;
pub mod mmio;
pub mod net;
pub mod rng;
#[cfg(test)]
pub mod test_utils;
pub mod worker;

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;

use virtio_queue::Queue;
use vmm_sys_util::eventfd::EventFd;

use crate::vstate::memory::GuestMemoryMmap;

/// Feature bits common to all devices (`1 << VIRTIO_F_*`).
pub mod features {
    use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
    use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;

    /// The device conforms to virtio 1.0+ (required by the modern transport).
    pub const VERSION_1: u64 = 1 << VIRTIO_F_VERSION_1;
    /// used_event / avail_event notification suppression.
    pub const RING_EVENT_IDX: u64 = 1 << VIRTIO_RING_F_EVENT_IDX;
}

/// Device status bits (virtio spec 2.1).
pub mod status {
    use virtio_bindings::virtio_config::{
        VIRTIO_CONFIG_S_ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER, VIRTIO_CONFIG_S_DRIVER_OK,
        VIRTIO_CONFIG_S_FAILED, VIRTIO_CONFIG_S_FEATURES_OK, VIRTIO_CONFIG_S_NEEDS_RESET,
    };

    /// Guest OS found the device.
    pub const ACKNOWLEDGE: u32 = VIRTIO_CONFIG_S_ACKNOWLEDGE;
    /// Guest has a driver for it.
    pub const DRIVER: u32 = VIRTIO_CONFIG_S_DRIVER;
    /// Driver is ready.
    pub const DRIVER_OK: u32 = VIRTIO_CONFIG_S_DRIVER_OK;
    /// Feature negotiation is complete.
    pub const FEATURES_OK: u32 = VIRTIO_CONFIG_S_FEATURES_OK;
    /// The device hit an error it cannot recover from without a reset.
    pub const DEVICE_NEEDS_RESET: u32 = VIRTIO_CONFIG_S_NEEDS_RESET;
    /// The driver gave up on the device.
    pub const FAILED: u32 = VIRTIO_CONFIG_S_FAILED;
}

/// InterruptStatus bit: a used buffer was added.
pub const INT_VRING: u32 = virtio_bindings::virtio_mmio::VIRTIO_MMIO_INT_VRING;
/// InterruptStatus bit: the configuration (or the device status) changed.
pub const INT_CONFIG: u32 = virtio_bindings::virtio_mmio::VIRTIO_MMIO_INT_CONFIG;

/// A device's interrupt line (an irqfd) and the state the driver reads back through the
/// transport: InterruptStatus and the "needs reset" flag.
pub struct Interrupt {
    status: AtomicU32,
    failed: AtomicBool,
    /// ConfigGeneration: bumped on every configuration change the device announces, so
    /// the driver can tell a torn multi-register read of the configuration space.
    generation: AtomicU32,
    evt: EventFd,
}

impl Interrupt {
    /// An interrupt raised by writing `evt` (registered with KVM as an irqfd).
    pub fn new(evt: EventFd) -> Self {
        Self {
            status: AtomicU32::new(0),
            failed: AtomicBool::new(false),
            generation: AtomicU32::new(0),
            evt,
        }
    }

    fn raise(&self, bit: u32) {
        self.status.fetch_or(bit, Ordering::SeqCst);
        if let Err(e) = self.evt.write(1) {
            log::warn!("cannot raise virtio interrupt: {e}");
        }
    }

    /// Tells the driver that used buffers are waiting.
    pub fn signal_used_queue(&self) {
        self.raise(INT_VRING);
    }

    /// Puts the device into the failed state (DEVICE_NEEDS_RESET) and tells the driver.
    pub fn fail(&self) {
        self.failed.store(true, Ordering::SeqCst);
        self.raise(INT_CONFIG);
    }

    /// Tells the driver that the configuration space changed (e.g. a display event).
    pub fn signal_config_change(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.raise(INT_CONFIG);
    }

    /// The ConfigGeneration register.
    pub fn config_generation(&self) -> u32 {
        self.generation.load(Ordering::SeqCst)
    }

    /// Whether [`Interrupt::fail`] was called since the last reset.
    pub fn is_failed(&self) -> bool {
        self.failed.load(Ordering::SeqCst)
    }

    /// The InterruptStatus register.
    pub fn status(&self) -> u32 {
        self.status.load(Ordering::SeqCst)
    }

    /// InterruptACK: clears the acknowledged bits.
    pub fn ack(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::SeqCst);
    }

    /// Device reset: clears the status and the failed flag.
    pub fn reset(&self) {
        self.status.store(0, Ordering::SeqCst);
        self.failed.store(false, Ordering::SeqCst);
    }

    /// The underlying eventfd (for tests and for registering the irqfd).
    pub fn eventfd(&self) -> &EventFd {
        &self.evt
    }
}

/// Errors while activating a device.
#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    /// The driver enabled a different number of queues than the device needs.
    #[error("device needs {need} queues, driver set up {got}")]
    QueueCount {
        /// Needed.
        need: usize,
        /// Provided.
        got: usize,
    },
    /// The worker thread or its eventfds could not be created.
    #[error("cannot start the device worker: {0}")]
    Worker(#[from] std::io::Error),
}

/// Everything a device gets when the driver sets DRIVER_OK.
pub struct ActivateContext {
    /// Guest memory.
    pub mem: Arc<GuestMemoryMmap>,
    /// The configured queues, in order.
    pub queues: Vec<Queue>,
    /// One notification eventfd per queue (ioeventfds on QueueNotify).
    pub queue_evts: Vec<EventFd>,
    /// The device's interrupt.
    pub interrupt: Arc<Interrupt>,
    /// Features the driver accepted.
    pub acked_features: u64,
}

/// A virtio device behind a transport.
pub trait VirtioDevice: Send {
    /// virtio device id (`virtio_bindings::virtio_ids::VIRTIO_ID_*`).
    fn device_type(&self) -> u32;
    /// Maximum size of each queue (powers of two); the length is the number of queues.
    fn queue_max_sizes(&self) -> Vec<u16>;
    /// Features offered to the driver.
    fn features(&self) -> u64;
    /// The device-specific configuration space.
    fn config_space(&self) -> Vec<u8>;
    /// A driver write to the configuration space; ignored by default (read-only configs).
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
    /// Starts processing the queues.
    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError>;
    /// Stops processing (joins the worker). Safe to call when not active.
    fn reset(&mut self);
}

/// Reads `data.len()` bytes of `config` at `offset`, zero-filling beyond its end.
pub fn read_config_bytes(config: &[u8], offset: u64, data: &mut [u8]) {
    data.fill(0);
    let Ok(start) = usize::try_from(offset) else {
        return;
    };
    if start >= config.len() {
        return;
    }
    let n = data.len().min(config.len() - start);
    data[..n].copy_from_slice(&config[start..start + n]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmm_sys_util::eventfd::EFD_NONBLOCK;

    #[test]
    fn interrupt_status_and_failure() {
        let irq = Interrupt::new(EventFd::new(EFD_NONBLOCK).unwrap());
        irq.signal_used_queue();
        assert_eq!(irq.status(), INT_VRING);
        irq.fail();
        assert!(irq.is_failed());
        assert_eq!(irq.status(), INT_VRING | INT_CONFIG);
        irq.ack(INT_VRING);
        assert_eq!(irq.status(), INT_CONFIG);
        assert_eq!(irq.eventfd().read().unwrap(), 2);
        irq.ack(INT_CONFIG);
        let g = irq.config_generation();
        irq.signal_config_change();
        assert_eq!(irq.status(), INT_CONFIG);
        assert_eq!(irq.config_generation(), g.wrapping_add(1));
        assert_eq!(irq.eventfd().read().unwrap(), 1);
        irq.reset();
        assert!(!irq.is_failed());
        assert_eq!(irq.status(), 0);
    }

    #[test]
    fn config_reads_are_bounded() {
        let mut d = [9u8; 4];
        read_config_bytes(&[1, 2, 3], 1, &mut d);
        assert_eq!(d, [2, 3, 0, 0]);
        read_config_bytes(&[1, 2, 3], 7, &mut d);
        assert_eq!(d, [0; 4]);
        read_config_bytes(&[1, 2, 3], u64::MAX, &mut d);
        assert_eq!(d, [0; 4]);
    }
}
