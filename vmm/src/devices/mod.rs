//! Devices: PC legacy devices on port I/O, virtio devices on MMIO.

pub mod legacy;
pub mod virtio;
