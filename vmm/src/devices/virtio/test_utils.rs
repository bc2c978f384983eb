//! Test helpers: drive a [`MmioTransport`] register by register as a driver would.

use std::os::fd::AsRawFd;

use virtio_queue::mock::MockSplitQueue;
use vmm_sys_util::eventfd::EventFd;

use super::mmio::{reg, MmioTransport};
use super::status;
use crate::bus::BusDevice;
use crate::vstate::memory::GuestMemoryMmap;

/// Writes register `off`.
pub fn w(t: &mut MmioTransport, off: u64, v: u32) {
    t.write(off, &v.to_le_bytes());
}

/// Reads register `off`.
pub fn r(t: &mut MmioTransport, off: u64) -> u32 {
    let mut b = [0u8; 4];
    t.read(off, &mut b);
    u32::from_le_bytes(b)
}

/// Waits up to 5 s for `evt` and drains it; whether it fired.
pub fn wait(evt: &EventFd) -> bool {
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

/// Negotiates `accept`, sets up one queue of `size` entries per mock and sets DRIVER_OK.
pub fn bring_up(
    t: &mut MmioTransport,
    accept: u64,
    size: u16,
    queues: &[MockSplitQueue<'_, GuestMemoryMmap>],
) {
    w(t, reg::STATUS, status::ACKNOWLEDGE | status::DRIVER);
    w(t, reg::DRIVER_FEATURES_SEL, 0);
    w(t, reg::DRIVER_FEATURES, accept as u32);
    w(t, reg::DRIVER_FEATURES_SEL, 1);
    w(t, reg::DRIVER_FEATURES, (accept >> 32) as u32);
    let st = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK;
    w(t, reg::STATUS, st);
    assert_ne!(
        r(t, reg::STATUS) & status::FEATURES_OK,
        0,
        "features accepted"
    );
    for (i, m) in queues.iter().enumerate() {
        w(t, reg::QUEUE_SEL, i as u32);
        w(t, reg::QUEUE_NUM, u32::from(size));
        for (lo, hi, a) in [
            (
                reg::QUEUE_DESC_LOW,
                reg::QUEUE_DESC_HIGH,
                m.desc_table_addr().0,
            ),
            (
                reg::QUEUE_AVAIL_LOW,
                reg::QUEUE_AVAIL_HIGH,
                m.avail_addr().0,
            ),
            (reg::QUEUE_USED_LOW, reg::QUEUE_USED_HIGH, m.used_addr().0),
        ] {
            w(t, lo, a as u32);
            w(t, hi, (a >> 32) as u32);
        }
        w(t, reg::QUEUE_READY, 1);
    }
    w(t, reg::STATUS, st | status::DRIVER_OK);
    assert_eq!(t.status() & status::DEVICE_NEEDS_RESET, 0, "activated");
}
