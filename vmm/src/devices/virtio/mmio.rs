//! The virtio-mmio transport, version 2 (virtio 1.x "modern" register layout).
//!
//! Version 2 because Debian 6.1's virtio-gpu and virtio-input drivers silently refuse
//! legacy (version 1) devices; block, net and rng work with either.

use std::sync::Arc;

use virtio_queue::{Queue, QueueT};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::{features, read_config_bytes, status, ActivateContext, Interrupt, VirtioDevice};
use crate::bus::BusDevice;
use crate::vstate::memory::GuestMemoryMmap;

/// "virt"
pub const MMIO_MAGIC: u32 = 0x7472_6976;
/// Modern transport.
pub const MMIO_VERSION: u32 = 2;
/// Our vendor id ("CLTV").
pub const VENDOR_ID: u32 = 0x5654_4c43;

/// Register offsets (`VIRTIO_MMIO_*`), as `u64` to match bus offsets.
pub mod reg {
    #![allow(missing_docs)]
    use virtio_bindings::virtio_mmio::*;

    pub const MAGIC: u64 = VIRTIO_MMIO_MAGIC_VALUE as u64;
    pub const VERSION: u64 = VIRTIO_MMIO_VERSION as u64;
    pub const DEVICE_ID: u64 = VIRTIO_MMIO_DEVICE_ID as u64;
    pub const VENDOR_ID: u64 = VIRTIO_MMIO_VENDOR_ID as u64;
    pub const DEVICE_FEATURES: u64 = VIRTIO_MMIO_DEVICE_FEATURES as u64;
    pub const DEVICE_FEATURES_SEL: u64 = VIRTIO_MMIO_DEVICE_FEATURES_SEL as u64;
    pub const DRIVER_FEATURES: u64 = VIRTIO_MMIO_DRIVER_FEATURES as u64;
    pub const DRIVER_FEATURES_SEL: u64 = VIRTIO_MMIO_DRIVER_FEATURES_SEL as u64;
    pub const QUEUE_SEL: u64 = VIRTIO_MMIO_QUEUE_SEL as u64;
    pub const QUEUE_NUM_MAX: u64 = VIRTIO_MMIO_QUEUE_NUM_MAX as u64;
    pub const QUEUE_NUM: u64 = VIRTIO_MMIO_QUEUE_NUM as u64;
    pub const QUEUE_READY: u64 = VIRTIO_MMIO_QUEUE_READY as u64;
    pub const QUEUE_NOTIFY: u64 = VIRTIO_MMIO_QUEUE_NOTIFY as u64;
    pub const INTERRUPT_STATUS: u64 = VIRTIO_MMIO_INTERRUPT_STATUS as u64;
    pub const INTERRUPT_ACK: u64 = VIRTIO_MMIO_INTERRUPT_ACK as u64;
    pub const STATUS: u64 = VIRTIO_MMIO_STATUS as u64;
    pub const QUEUE_DESC_LOW: u64 = VIRTIO_MMIO_QUEUE_DESC_LOW as u64;
    pub const QUEUE_DESC_HIGH: u64 = VIRTIO_MMIO_QUEUE_DESC_HIGH as u64;
    pub const QUEUE_AVAIL_LOW: u64 = VIRTIO_MMIO_QUEUE_AVAIL_LOW as u64;
    pub const QUEUE_AVAIL_HIGH: u64 = VIRTIO_MMIO_QUEUE_AVAIL_HIGH as u64;
    pub const QUEUE_USED_LOW: u64 = VIRTIO_MMIO_QUEUE_USED_LOW as u64;
    pub const QUEUE_USED_HIGH: u64 = VIRTIO_MMIO_QUEUE_USED_HIGH as u64;
    pub const CONFIG_GENERATION: u64 = VIRTIO_MMIO_CONFIG_GENERATION as u64;
    pub const CONFIG: u64 = VIRTIO_MMIO_CONFIG as u64;
    /// Shared memory regions (virtio 1.2 §4.2.2): selector, then length and base of the
    /// selected region. We have none; a region that does not exist reads all ones
    /// (reading zeros, Linux's virtio-gpu takes a zero-length region at 0 for real, fails
    /// to reserve it and refuses the device).
    pub const SHM_SEL: u64 = 0x0ac;
    pub const SHM_LEN_LOW: u64 = 0x0b0;
    pub const SHM_LEN_HIGH: u64 = 0x0b4;
    pub const SHM_BASE_LOW: u64 = 0x0b8;
    pub const SHM_BASE_HIGH: u64 = 0x0bc;
}

/// Errors while creating a transport.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// A device asked for an invalid queue size.
    #[error("invalid virtqueue size: {0}")]
    Queue(#[from] virtio_queue::Error),
    /// Eventfd creation failed.
    #[error("cannot create eventfd: {0}")]
    EventFd(#[from] std::io::Error),
}

/// One virtio device in its 4 KiB MMIO window.
pub struct MmioTransport {
    device: Box<dyn VirtioDevice>,
    mem: Arc<GuestMemoryMmap>,
    interrupt: Arc<Interrupt>,
    queues: Vec<Queue>,
    queue_evts: Vec<EventFd>,
    queue_select: u32,
    device_features_select: u32,
    driver_features_select: u32,
    driver_features: u64,
    status: u32,
}

impl MmioTransport {
    /// Wraps `device`; `irq` is the eventfd registered as its irqfd.
    pub fn new(
        device: Box<dyn VirtioDevice>,
        mem: Arc<GuestMemoryMmap>,
        irq: EventFd,
    ) -> Result<Self, TransportError> {
        let mut queues = Vec::new();
        let mut queue_evts = Vec::new();
        for max in device.queue_max_sizes() {
            queues.push(Queue::new(max)?);
            queue_evts.push(EventFd::new(EFD_NONBLOCK)?);
        }
        Ok(Self {
            device,
            mem,
            interrupt: Arc::new(Interrupt::new(irq)),
            queues,
            queue_evts,
            queue_select: 0,
            device_features_select: 0,
            driver_features_select: 0,
            driver_features: 0,
            status: 0,
        })
    }

    /// Per-queue notification eventfds, to register as ioeventfds on QueueNotify with the
    /// queue index as datamatch.
    pub fn queue_evts(&self) -> &[EventFd] {
        &self.queue_evts
    }

    /// Stops the device's worker for good (the VM is shutting down); unlike a driver
    /// reset, the registers are left as they are.
    pub fn stop_device(&mut self) {
        self.device.reset();
    }

    /// The device's interrupt state.
    pub fn interrupt(&self) -> &Arc<Interrupt> {
        &self.interrupt
    }

    /// The Status register as the driver sees it.
    pub fn status(&self) -> u32 {
        let failed = if self.interrupt.is_failed() {
            status::DEVICE_NEEDS_RESET
        } else {
            0
        };
        self.status | failed
    }

    fn offered_features(&self) -> u64 {
        self.device.features() | features::VERSION_1
    }

    fn selected_queue(&mut self) -> Option<&mut Queue> {
        if self.status & status::DRIVER_OK != 0 {
            // Queue layout is frozen once the driver is running.
            return None;
        }
        self.queues.get_mut(self.queue_select as usize)
    }

    fn reset(&mut self) {
        self.device.reset();
        for q in &mut self.queues {
            q.reset();
        }
        self.interrupt.reset();
        self.status = 0;
        self.driver_features = 0;
        self.queue_select = 0;
        self.device_features_select = 0;
        self.driver_features_select = 0;
    }

    fn activate(&mut self) {
        let event_idx = self.driver_features & features::RING_EVENT_IDX != 0;
        let mut queues = Vec::new();
        let mut evts = Vec::new();
        for (i, q) in self.queues.iter_mut().enumerate() {
            q.set_event_idx(event_idx);
            if !q.is_valid(self.mem.as_ref()) {
                log::error!(
                    "virtio device {}: queue {i} is not ready or not in guest memory",
                    self.device.device_type()
                );
                self.interrupt.fail();
                return;
            }
            match Queue::try_from(q.state()) {
                Ok(copy) => queues.push(copy),
                Err(e) => {
                    log::error!(
                        "virtio device {}: queue {i}: {e}",
                        self.device.device_type()
                    );
                    self.interrupt.fail();
                    return;
                }
            }
            match self.queue_evts[i].try_clone() {
                Ok(e) => evts.push(e),
                Err(e) => {
                    log::error!("cannot clone queue eventfd: {e}");
                    self.interrupt.fail();
                    return;
                }
            }
        }
        let ctx = ActivateContext {
            mem: self.mem.clone(),
            queues,
            queue_evts: evts,
            interrupt: self.interrupt.clone(),
            acked_features: self.driver_features,
        };
        if let Err(e) = self.device.activate(ctx) {
            log::error!(
                "virtio device {}: activation failed: {e}",
                self.device.device_type()
            );
            self.interrupt.fail();
        }
    }

    fn set_status(&mut self, v: u32) {
        if v == 0 {
            self.reset();
            return;
        }
        let mut new = v & !status::DEVICE_NEEDS_RESET;
        let newly = new & !self.status;
        if newly & status::FEATURES_OK != 0 {
            let offered = self.offered_features();
            let ok = self.driver_features & !offered == 0
                && self.driver_features & features::VERSION_1 != 0;
            if !ok {
                log::warn!(
                    "driver accepted features {:#x}, offered {offered:#x}: refusing FEATURES_OK",
                    self.driver_features
                );
                new &= !status::FEATURES_OK;
            }
        }
        let activate = newly & status::DRIVER_OK != 0 && new & status::FEATURES_OK != 0;
        self.status = new;
        if activate {
            self.activate();
        }
    }

    fn read_reg(&self, offset: u64) -> u32 {
        let q = self.queues.get(self.queue_select as usize);
        match offset {
            reg::MAGIC => MMIO_MAGIC,
            reg::VERSION => MMIO_VERSION,
            reg::DEVICE_ID => self.device.device_type(),
            reg::VENDOR_ID => VENDOR_ID,
            reg::DEVICE_FEATURES => match self.device_features_select {
                0 => self.offered_features() as u32,
                1 => (self.offered_features() >> 32) as u32,
                _ => 0,
            },
            reg::QUEUE_NUM_MAX => q.map_or(0, |q| u32::from(q.max_size())),
            reg::QUEUE_READY => q.map_or(0, |q| u32::from(q.ready())),
            reg::INTERRUPT_STATUS => self.interrupt.status(),
            reg::STATUS => self.status(),
            reg::CONFIG_GENERATION => self.interrupt.config_generation(),
            reg::SHM_LEN_LOW | reg::SHM_LEN_HIGH | reg::SHM_BASE_LOW | reg::SHM_BASE_HIGH => {
                u32::MAX
            }
            _ => {
                log::debug!("virtio-mmio: read of unknown register {offset:#x}");
                0
            }
        }
    }

    fn write_reg(&mut self, offset: u64, v: u32) {
        match offset {
            reg::DEVICE_FEATURES_SEL => self.device_features_select = v,
            reg::DRIVER_FEATURES_SEL => self.driver_features_select = v,
            reg::DRIVER_FEATURES => {
                if self.status & status::FEATURES_OK == 0 {
                    match self.driver_features_select {
                        0 => {
                            self.driver_features =
                                (self.driver_features & !0xffff_ffff) | u64::from(v)
                        }
                        1 => {
                            self.driver_features =
                                (self.driver_features & 0xffff_ffff) | (u64::from(v) << 32)
                        }
                        _ => {}
                    }
                }
            }
            reg::QUEUE_SEL => self.queue_select = v,
            reg::QUEUE_NUM => {
                if let Some(q) = self.selected_queue() {
                    // Queue::set_size keeps the old size for a value that is not a power of
                    // two or exceeds the maximum; is_valid() catches the rest at DRIVER_OK.
                    q.set_size(v as u16);
                }
            }
            reg::QUEUE_READY => {
                if let Some(q) = self.selected_queue() {
                    q.set_ready(v == 1);
                }
            }
            reg::QUEUE_DESC_LOW => self.with_queue(|q| q.set_desc_table_address(Some(v), None)),
            reg::QUEUE_DESC_HIGH => self.with_queue(|q| q.set_desc_table_address(None, Some(v))),
            reg::QUEUE_AVAIL_LOW => self.with_queue(|q| q.set_avail_ring_address(Some(v), None)),
            reg::QUEUE_AVAIL_HIGH => self.with_queue(|q| q.set_avail_ring_address(None, Some(v))),
            reg::QUEUE_USED_LOW => self.with_queue(|q| q.set_used_ring_address(Some(v), None)),
            reg::QUEUE_USED_HIGH => self.with_queue(|q| q.set_used_ring_address(None, Some(v))),
            reg::QUEUE_NOTIFY => {
                // Normally caught by the ioeventfd; this path sees only unmatched values.
                if let Some(e) = self.queue_evts.get(v as usize) {
                    let _ = e.write(1);
                }
            }
            reg::INTERRUPT_ACK => self.interrupt.ack(v),
            reg::STATUS => self.set_status(v),
            _ => log::debug!("virtio-mmio: write of {v:#x} to unknown register {offset:#x}"),
        }
    }

    fn with_queue(&mut self, f: impl FnOnce(&mut Queue)) {
        if let Some(q) = self.selected_queue() {
            f(q);
        }
    }
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= reg::CONFIG {
            let config = self.device.config_space();
            read_config_bytes(&config, offset - reg::CONFIG, data);
            return;
        }
        if data.len() != 4 || !offset.is_multiple_of(4) {
            data.fill(0);
            return;
        }
        data.copy_from_slice(&self.read_reg(offset).to_le_bytes());
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= reg::CONFIG {
            self.device.write_config(offset - reg::CONFIG, data);
            return;
        }
        if data.len() != 4 || !offset.is_multiple_of(4) {
            log::debug!(
                "virtio-mmio: ignoring {}-byte write at {offset:#x}",
                data.len()
            );
            return;
        }
        let v = u32::from_le_bytes([data[0], data[1], data[2], data[3]]);
        self.write_reg(offset, v);
    }
}

impl Drop for MmioTransport {
    fn drop(&mut self) {
        self.device.reset();
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsRawFd;

    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Bytes, GuestAddress};

    use super::*;
    use crate::devices::virtio::block::abi::RequestHeader;
    use crate::devices::virtio::block::tests::{d, mem, used, MemDisk, N, W};
    use crate::devices::virtio::block::Block;
    use crate::devices::virtio::{INT_CONFIG, INT_VRING};
    use virtio_bindings::virtio_blk::VIRTIO_BLK_T_IN;

    fn w(t: &mut MmioTransport, off: u64, v: u32) {
        t.write(off, &v.to_le_bytes());
    }

    fn r(t: &mut MmioTransport, off: u64) -> u32 {
        let mut b = [0u8; 4];
        t.read(off, &mut b);
        u32::from_le_bytes(b)
    }

    fn wait(evt: &EventFd) -> bool {
        let mut p = libc::pollfd {
            fd: evt.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let n = unsafe { libc::poll(&mut p, 1, 5000) };
        let _ = evt.read();
        n == 1
    }

    fn negotiate(t: &mut MmioTransport, accept: u64) -> u32 {
        w(t, reg::STATUS, status::ACKNOWLEDGE | status::DRIVER);
        w(t, reg::DRIVER_FEATURES_SEL, 0);
        w(t, reg::DRIVER_FEATURES, accept as u32);
        w(t, reg::DRIVER_FEATURES_SEL, 1);
        w(t, reg::DRIVER_FEATURES, (accept >> 32) as u32);
        w(
            t,
            reg::STATUS,
            status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
        );
        r(t, reg::STATUS)
    }

    fn setup_queue(t: &mut MmioTransport, desc: u64, avail: u64, used: u64, size: u32) {
        w(t, reg::QUEUE_SEL, 0);
        w(t, reg::QUEUE_NUM, size);
        w(t, reg::QUEUE_DESC_LOW, desc as u32);
        w(t, reg::QUEUE_DESC_HIGH, (desc >> 32) as u32);
        w(t, reg::QUEUE_AVAIL_LOW, avail as u32);
        w(t, reg::QUEUE_AVAIL_HIGH, (avail >> 32) as u32);
        w(t, reg::QUEUE_USED_LOW, used as u32);
        w(t, reg::QUEUE_USED_HIGH, (used >> 32) as u32);
        w(t, reg::QUEUE_READY, 1);
    }

    fn block_transport(mem: Arc<GuestMemoryMmap>) -> (MmioTransport, EventFd) {
        let irq = EventFd::new(EFD_NONBLOCK).unwrap();
        let dev = Block::new(Arc::new(MemDisk::new(64 * 1024, false)), "t".into());
        (
            MmioTransport::new(Box::new(dev), mem, irq.try_clone().unwrap()).unwrap(),
            irq,
        )
    }

    #[test]
    fn identification_registers() {
        let (mut t, _) = block_transport(Arc::new(mem()));
        assert_eq!(r(&mut t, reg::MAGIC), MMIO_MAGIC);
        assert_eq!(r(&mut t, reg::VERSION), 2);
        assert_eq!(r(&mut t, reg::DEVICE_ID), 2);
        w(&mut t, reg::DEVICE_FEATURES_SEL, 1);
        assert_eq!(r(&mut t, reg::DEVICE_FEATURES) & 1, 1, "VERSION_1 offered");
        assert_eq!(r(&mut t, reg::QUEUE_NUM_MAX), 256);
        w(&mut t, reg::QUEUE_SEL, 7);
        assert_eq!(r(&mut t, reg::QUEUE_NUM_MAX), 0, "no such queue");
        // No shared memory region: all ones, as Linux expects of a missing one.
        w(&mut t, reg::SHM_SEL, 1);
        for shm in [
            reg::SHM_LEN_LOW,
            reg::SHM_LEN_HIGH,
            reg::SHM_BASE_LOW,
            reg::SHM_BASE_HIGH,
        ] {
            assert_eq!(r(&mut t, shm), u32::MAX);
        }
        // Capacity (sectors) in the config space, read with narrow accesses too.
        let mut b = [0u8; 8];
        t.read(reg::CONFIG, &mut b);
        assert_eq!(u64::from_le_bytes(b), 128);
        let mut one = [0u8; 1];
        t.read(reg::CONFIG + 0x1000, &mut one);
        assert_eq!(one[0], 0);
        // Misaligned or narrow register accesses are ignored.
        let mut two = [0xffu8; 2];
        t.read(reg::MAGIC, &mut two);
        assert_eq!(two, [0, 0]);
    }

    #[test]
    fn features_ok_refused_for_bad_feature_sets() {
        let (mut t, _) = block_transport(Arc::new(mem()));
        assert_eq!(
            negotiate(&mut t, 0) & status::FEATURES_OK,
            0,
            "VERSION_1 is mandatory"
        );
        w(&mut t, reg::STATUS, 0);
        let st = negotiate(&mut t, features::VERSION_1 | (1 << 40));
        assert_eq!(st & status::FEATURES_OK, 0, "a feature never offered");
        w(&mut t, reg::STATUS, 0);
        let st = negotiate(&mut t, features::VERSION_1 | features::RING_EVENT_IDX);
        assert_ne!(st & status::FEATURES_OK, 0);
    }

    #[test]
    fn driver_round_trip_then_malformed_chain_needs_reset() {
        let m = Arc::new(mem());
        let (mut t, irq) = block_transport(m.clone());
        let mock = MockSplitQueue::create(m.as_ref(), GuestAddress(0x1000), 16);
        assert_ne!(
            negotiate(&mut t, features::VERSION_1 | features::RING_EVENT_IDX) & status::FEATURES_OK,
            0
        );
        setup_queue(
            &mut t,
            mock.desc_table_addr().0,
            mock.avail_addr().0,
            mock.used_addr().0,
            16,
        );
        w(
            &mut t,
            reg::STATUS,
            status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK,
        );
        assert_eq!(t.status() & status::DEVICE_NEEDS_RESET, 0);

        // A good read request.
        m.write_obj(
            RequestHeader::new(VIRTIO_BLK_T_IN, 5),
            GuestAddress(0x10_0000),
        )
        .unwrap();
        mock.add_desc_chains(
            &[
                d(0x10_0000, 16, N, 1),
                d(0x20_0000, 512, W | N, 2),
                d(0x30_0000, 1, W, 0),
            ],
            0,
        )
        .unwrap();
        w(&mut t, reg::QUEUE_NOTIFY, 0);
        assert!(wait(&irq), "used-buffer interrupt");
        assert_eq!(r(&mut t, reg::INTERRUPT_STATUS) & INT_VRING, INT_VRING);
        w(&mut t, reg::INTERRUPT_ACK, INT_VRING);
        assert_eq!(r(&mut t, reg::INTERRUPT_STATUS), 0);
        assert_eq!(used(&m, mock.used_addr(), 0), (1, 0, 513));
        let b: u8 = m.read_obj(GuestAddress(0x20_0000)).unwrap();
        assert_eq!(b, 5);

        // Queue layout is frozen while running.
        w(&mut t, reg::QUEUE_NUM, 8);
        w(&mut t, reg::QUEUE_READY, 0);
        assert_eq!(r(&mut t, reg::QUEUE_READY), 1);

        // A looping chain: the device fails and says so.
        mock.add_desc_chains(&[d(0x10_0000, 16, N, 4), d(0x20_0000, 512, W | N, 3)], 3)
            .unwrap();
        w(&mut t, reg::QUEUE_NOTIFY, 0);
        assert!(wait(&irq), "config-change interrupt");
        assert_ne!(r(&mut t, reg::STATUS) & status::DEVICE_NEEDS_RESET, 0);
        assert_ne!(r(&mut t, reg::INTERRUPT_STATUS) & INT_CONFIG, 0);

        // Reset clears everything; the device can be brought up again.
        w(&mut t, reg::STATUS, 0);
        assert_eq!(r(&mut t, reg::STATUS), 0);
        assert_eq!(r(&mut t, reg::INTERRUPT_STATUS), 0);
        assert_eq!(r(&mut t, reg::QUEUE_READY), 0);
    }

    #[test]
    fn queue_outside_memory_fails_at_driver_ok() {
        let (mut t, irq) = block_transport(Arc::new(mem()));
        negotiate(&mut t, features::VERSION_1);
        setup_queue(&mut t, 0xffff_0000_0000, 0x2000, 0x3000, 16);
        w(
            &mut t,
            reg::STATUS,
            status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK,
        );
        assert!(wait(&irq));
        assert_ne!(t.status() & status::DEVICE_NEEDS_RESET, 0);
    }
}
