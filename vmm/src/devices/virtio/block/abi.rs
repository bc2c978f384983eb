//! virtio-blk's guest-visible structures, as `virtio-bindings` defines them, made readable
//! from guest memory with `ByteValued`.
//!
//! `virtio-bindings` cannot implement vm-memory's `ByteValued` for its own types, so each
//! structure the device reads or exposes gets a transparent wrapper here. Fields are
//! little-endian in the guest ABI; the accessors convert, so the device code never sees a
//! byte index.

use virtio_bindings::bindings::virtio_blk::{
    virtio_blk_config, virtio_blk_discard_write_zeroes, virtio_blk_outhdr,
    VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP,
};
use vm_memory::ByteValued;

/// The header that starts every request (`struct virtio_blk_outhdr`).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
#[repr(transparent)]
pub struct RequestHeader(pub virtio_blk_outhdr);

// SAFETY: `virtio_blk_outhdr` is `#[repr(C)]` with only integer fields and no padding
// (16 bytes: u32, u32, u64), so every byte pattern is a valid value.
unsafe impl ByteValued for RequestHeader {}

impl RequestHeader {
    /// A header for request type `kind` at `sector` (for tests and tools).
    pub fn new(kind: u32, sector: u64) -> Self {
        Self(virtio_blk_outhdr {
            type_: kind.to_le(),
            ioprio: 0,
            sector: sector.to_le(),
        })
    }

    /// `VIRTIO_BLK_T_*`.
    pub fn kind(&self) -> u32 {
        u32::from_le(self.0.type_)
    }

    /// First sector (512-byte units) the request addresses.
    pub fn sector(&self) -> u64 {
        u64::from_le(self.0.sector)
    }
}

/// One range of a discard or write-zeroes request
/// (`struct virtio_blk_discard_write_zeroes`).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
#[repr(transparent)]
pub struct DiscardSegment(pub virtio_blk_discard_write_zeroes);

// SAFETY: `virtio_blk_discard_write_zeroes` is `#[repr(C)]` with only integer fields and
// no padding (16 bytes: u64, u32, u32), so every byte pattern is a valid value.
unsafe impl ByteValued for DiscardSegment {}

impl DiscardSegment {
    /// A segment of `sectors` sectors at `sector` with `flags` (for tests and tools).
    pub fn new(sector: u64, sectors: u32, flags: u32) -> Self {
        Self(virtio_blk_discard_write_zeroes {
            sector: sector.to_le(),
            num_sectors: sectors.to_le(),
            flags: flags.to_le(),
        })
    }

    /// First sector.
    pub fn sector(&self) -> u64 {
        u64::from_le(self.0.sector)
    }

    /// Number of sectors.
    pub fn sectors(&self) -> u32 {
        u32::from_le(self.0.num_sectors)
    }

    /// `VIRTIO_BLK_WRITE_ZEROES_FLAG_*`.
    pub fn flags(&self) -> u32 {
        u32::from_le(self.0.flags)
    }
}

/// The only segment flag the spec defines (write-zeroes may unmap).
pub const SEGMENT_FLAG_UNMAP: u32 = VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP;

/// The device's configuration space (`struct virtio_blk_config`).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
#[repr(transparent)]
pub struct BlockConfig(pub virtio_blk_config);

// SAFETY: `virtio_blk_config` is `#[repr(C, packed)]` with only integer fields (and
// arrays and structs of them), so it has no padding and every byte pattern is valid.
unsafe impl ByteValued for BlockConfig {}
