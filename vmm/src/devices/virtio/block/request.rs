//! A virtio-blk request, parsed and validated from a descriptor chain before anything is
//! done with it.
//!
//! Two kinds of bad input, two answers:
//! * a chain that is not a virtio-blk request at all (no room for the header or the status
//!   byte) is [`Malformed`]: there is nowhere to report an error, so the device fails
//!   (`DEVICE_NEEDS_RESET`), like any other malformed chain;
//! * a well-formed request the device will not carry out (unknown type, out of range,
//!   a write to a read-only disk, ...) is a [`Refusal`]: answered with the status byte
//!   (`VIRTIO_BLK_S_IOERR` or `VIRTIO_BLK_S_UNSUPP`), the device goes on.
//!
//! A [`Request`] that comes out of [`Envelope::request`] holds byte ranges already checked
//! against the disk, so executing it needs no further validation.

use virtio_bindings::bindings::virtio_blk::{
    VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_T_DISCARD,
    VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
    VIRTIO_BLK_T_WRITE_ZEROES,
};

use super::abi::{DiscardSegment, RequestHeader, SEGMENT_FLAG_UNMAP};
use super::{ID_BYTES, MAX_DISCARD_SEGMENTS, SECTOR_SIZE};
use crate::devices::virtio::chain::Chain;
use crate::vstate::memory::GuestMemoryMmap;

/// Bytes of the request header.
pub(super) const HEADER_BYTES: u64 = std::mem::size_of::<RequestHeader>() as u64;
/// Bytes of one discard / write-zeroes segment.
const SEGMENT_BYTES: u64 = std::mem::size_of::<DiscardSegment>() as u64;

/// The status byte a request is answered with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Status {
    /// Done.
    Ok = VIRTIO_BLK_S_OK as u8,
    /// Failed (I/O error, out of range, read-only disk, malformed data area).
    IoErr = VIRTIO_BLK_S_IOERR as u8,
    /// Not a request (or a flag) the device supports.
    Unsupp = VIRTIO_BLK_S_UNSUPP as u8,
}

/// A chain that cannot be a virtio-blk request: the device fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Malformed {
    /// Fewer device-readable bytes than a request header.
    #[error("virtio-blk request without a 16-byte header")]
    NoHeader,
    /// No device-writable byte for the status.
    #[error("virtio-blk request without a status byte")]
    NoStatus,
}

/// A well-formed request the device refuses; answered with [`Refusal::status`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// A request type we do not implement.
    #[error("unsupported request type {0}")]
    UnsupportedType(u32),
    /// A read or write whose data area is not a whole number of sectors.
    #[error("data area of {0} bytes is not a whole number of sectors")]
    PartialSector(u64),
    /// A range that does not fit on the disk (or whose byte offset overflows).
    #[error("sectors {sector}+{bytes} bytes are beyond the end of the disk")]
    OutOfRange {
        /// First sector.
        sector: u64,
        /// Length in bytes.
        bytes: u64,
    },
    /// A write, discard or write-zeroes on a read-only disk.
    #[error("the disk is read-only")]
    ReadOnly,
    /// A discard / write-zeroes data area that is not 1..=MAX segments.
    #[error("discard/write-zeroes data area of {0} bytes is not a list of 1 to 16 segments")]
    BadSegmentList(u64),
    /// A segment flag that request type may not carry.
    #[error("segment flags {0:#x} not supported")]
    SegmentFlags(u32),
}

impl Refusal {
    /// The status byte that answers this refusal.
    pub fn status(&self) -> Status {
        match self {
            Refusal::UnsupportedType(_) | Refusal::SegmentFlags(_) => Status::Unsupp,
            _ => Status::IoErr,
        }
    }
}

/// A byte range on the disk, inside it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DiskRange {
    /// Byte offset.
    pub offset: u64,
    /// Byte length.
    pub len: u64,
}

/// A validated request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    /// Read `range` into the chain's data-in area.
    Read(DiskRange),
    /// Write the chain's data-out area (after the header) to `range`.
    Write(DiskRange),
    /// Make completed writes durable.
    Flush,
    /// Write the first `len` bytes of the disk's serial number into the data-in area.
    GetId {
        /// Bytes to write (the data-in area, capped at [`ID_BYTES`]).
        len: usize,
    },
    /// Drop the contents of these ranges.
    Discard(Vec<DiskRange>),
    /// Make these ranges read as zeroes.
    WriteZeroes(Vec<DiskRange>),
}

/// What the parser needs to know about the disk.
#[derive(Clone, Copy, Debug)]
pub struct DiskInfo {
    /// Size in bytes.
    pub size: u64,
    /// Whether writes are refused.
    pub read_only: bool,
}

impl DiskInfo {
    /// The byte range of `bytes` bytes starting at `sector`, if it lies on the disk.
    fn range(&self, sector: u64, bytes: u64) -> Result<DiskRange, Refusal> {
        let out_of_range = Refusal::OutOfRange { sector, bytes };
        let offset = sector.checked_mul(SECTOR_SIZE).ok_or(out_of_range)?;
        let end = offset.checked_add(bytes).ok_or(out_of_range)?;
        if end > self.size {
            return Err(out_of_range);
        }
        Ok(DiskRange { offset, len: bytes })
    }

    fn writable(&self) -> Result<(), Refusal> {
        if self.read_only {
            Err(Refusal::ReadOnly)
        } else {
            Ok(())
        }
    }
}

/// The layout every request shares: a header (device-readable), data (readable for
/// writes, writable for reads), and a status byte (the last device-writable byte).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Envelope {
    /// The request header.
    pub header: RequestHeader,
    /// Device-readable bytes after the header.
    pub data_out: u64,
    /// Device-writable bytes before the status byte.
    pub data_in: u64,
}

impl Envelope {
    /// Reads the header and measures the data areas of `chain`.
    pub fn parse(chain: &Chain, mem: &GuestMemoryMmap) -> Result<Envelope, Malformed> {
        let header: RequestHeader = chain.read_obj(mem, 0).ok_or(Malformed::NoHeader)?;
        let data_in = chain
            .writable_len()
            .checked_sub(1)
            .ok_or(Malformed::NoStatus)?;
        Ok(Envelope {
            header,
            data_out: chain.readable_len() - HEADER_BYTES,
            data_in,
        })
    }

    /// Where the status byte goes in the chain's writable stream.
    pub fn status_offset(&self) -> u64 {
        self.data_in
    }

    /// Turns the header and data areas into a request `disk` can carry out.
    pub fn request(
        &self,
        chain: &Chain,
        mem: &GuestMemoryMmap,
        disk: &DiskInfo,
    ) -> Result<Request, Refusal> {
        let sector = self.header.sector();
        match self.header.kind() {
            VIRTIO_BLK_T_IN => Ok(Request::Read(
                disk.range(sector, whole_sectors(self.data_in)?)?,
            )),
            VIRTIO_BLK_T_OUT => {
                disk.writable()?;
                Ok(Request::Write(
                    disk.range(sector, whole_sectors(self.data_out)?)?,
                ))
            }
            VIRTIO_BLK_T_FLUSH => Ok(Request::Flush),
            VIRTIO_BLK_T_GET_ID => Ok(Request::GetId {
                len: usize::try_from(self.data_in).map_or(ID_BYTES, |n| n.min(ID_BYTES)),
            }),
            VIRTIO_BLK_T_DISCARD => {
                disk.writable()?;
                Ok(Request::Discard(self.segments(chain, mem, disk, 0)?))
            }
            VIRTIO_BLK_T_WRITE_ZEROES => {
                disk.writable()?;
                Ok(Request::WriteZeroes(self.segments(
                    chain,
                    mem,
                    disk,
                    SEGMENT_FLAG_UNMAP,
                )?))
            }
            other => Err(Refusal::UnsupportedType(other)),
        }
    }

    /// The segment list of a discard or write-zeroes request: every segment is checked
    /// before any is carried out, so a bad one refuses the whole request.
    fn segments(
        &self,
        chain: &Chain,
        mem: &GuestMemoryMmap,
        disk: &DiskInfo,
        allowed_flags: u32,
    ) -> Result<Vec<DiskRange>, Refusal> {
        let count = self.data_out / SEGMENT_BYTES;
        if !self.data_out.is_multiple_of(SEGMENT_BYTES)
            || count == 0
            || count > u64::from(MAX_DISCARD_SEGMENTS)
        {
            return Err(Refusal::BadSegmentList(self.data_out));
        }
        (0..count)
            .map(|i| {
                let seg: DiscardSegment = chain
                    .read_obj(mem, HEADER_BYTES + i * SEGMENT_BYTES)
                    .ok_or(Refusal::BadSegmentList(self.data_out))?;
                if seg.flags() & !allowed_flags != 0 {
                    return Err(Refusal::SegmentFlags(seg.flags()));
                }
                disk.range(seg.sector(), u64::from(seg.sectors()) * SECTOR_SIZE)
            })
            .collect()
    }
}

/// `bytes`, if it is a whole number of sectors.
fn whole_sectors(bytes: u64) -> Result<u64, Refusal> {
    if bytes.is_multiple_of(SECTOR_SIZE) {
        Ok(bytes)
    } else {
        Err(Refusal::PartialSector(bytes))
    }
}

impl From<Malformed> for crate::devices::virtio::worker::DeviceError {
    fn from(m: Malformed) -> Self {
        Self::Request(match m {
            Malformed::NoHeader => "virtio-blk request without a 16-byte header",
            Malformed::NoStatus => "virtio-blk request without a status byte",
        })
    }
}

#[cfg(test)]
mod tests {
    use vm_memory::{Bytes, GuestAddress};

    use super::*;
    use crate::devices::virtio::chain::Buffer;

    const HDR: u64 = 0x1000;
    const DATA: u64 = 0x2000;
    const STATUS: u64 = 0x9000;
    const DISK: DiskInfo = DiskInfo {
        size: 64 * 1024,
        read_only: false,
    };
    const READ_ONLY_DISK: DiskInfo = DiskInfo {
        size: 64 * 1024,
        read_only: true,
    };

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap()
    }

    fn buf(addr: u64, len: u32) -> Buffer {
        Buffer {
            addr: GuestAddress(addr),
            len,
        }
    }

    /// A chain of a header, `data_out` readable and `data_in` writable data bytes, and a
    /// status byte; the header says `kind` at `sector`.
    fn chain(m: &GuestMemoryMmap, kind: u32, sector: u64, data_out: u32, data_in: u32) -> Chain {
        m.write_obj(RequestHeader::new(kind, sector), GuestAddress(HDR))
            .unwrap();
        let mut readable = vec![buf(HDR, 16)];
        if data_out > 0 {
            readable.push(buf(DATA, data_out));
        }
        let mut writable = Vec::new();
        if data_in > 0 {
            writable.push(buf(DATA, data_in));
        }
        writable.push(buf(STATUS, 1));
        Chain {
            head: 0,
            readable,
            writable,
        }
    }

    fn parse(m: &GuestMemoryMmap, c: &Chain, disk: &DiskInfo) -> Result<Request, Refusal> {
        Envelope::parse(c, m).unwrap().request(c, m, disk)
    }

    fn segments(m: &GuestMemoryMmap, segs: &[DiscardSegment]) {
        for (i, s) in segs.iter().enumerate() {
            m.write_obj(*s, GuestAddress(DATA + 16 * i as u64)).unwrap();
        }
    }

    #[test]
    fn chains_that_are_not_requests_are_malformed() {
        let m = mem();
        let mut c = chain(&m, VIRTIO_BLK_T_IN, 0, 0, 512);
        c.readable = vec![buf(HDR, 15)];
        assert_eq!(Envelope::parse(&c, &m), Err(Malformed::NoHeader));
        c.readable = vec![];
        assert_eq!(Envelope::parse(&c, &m), Err(Malformed::NoHeader));
        let mut c = chain(&m, VIRTIO_BLK_T_IN, 0, 0, 0);
        c.writable.clear();
        assert_eq!(Envelope::parse(&c, &m), Err(Malformed::NoStatus));
    }

    #[test]
    fn envelope_measures_the_data_areas() {
        let m = mem();
        // Header split over two buffers, data-in split too.
        let mut c = chain(&m, VIRTIO_BLK_T_IN, 7, 0, 0);
        c.readable = vec![buf(HDR, 8), buf(HDR + 8, 8 + 4)];
        c.writable = vec![buf(DATA, 100), buf(DATA + 0x1000, 412), buf(STATUS, 1)];
        let e = Envelope::parse(&c, &m).unwrap();
        assert_eq!((e.header.kind(), e.header.sector()), (VIRTIO_BLK_T_IN, 7));
        assert_eq!((e.data_out, e.data_in, e.status_offset()), (4, 512, 512));
    }

    #[test]
    fn good_requests() {
        let m = mem();
        let c = chain(&m, VIRTIO_BLK_T_IN, 3, 0, 1024);
        let at = |offset, len| DiskRange { offset, len };
        assert_eq!(parse(&m, &c, &DISK), Ok(Request::Read(at(1536, 1024))));
        assert_eq!(
            parse(&m, &c, &READ_ONLY_DISK),
            Ok(Request::Read(at(1536, 1024)))
        );
        let c = chain(&m, VIRTIO_BLK_T_OUT, 127, 512, 0);
        assert_eq!(parse(&m, &c, &DISK), Ok(Request::Write(at(127 * 512, 512))));
        let c = chain(&m, VIRTIO_BLK_T_FLUSH, 0, 0, 0);
        assert_eq!(parse(&m, &c, &READ_ONLY_DISK), Ok(Request::Flush));
        let c = chain(&m, VIRTIO_BLK_T_GET_ID, 0, 0, 64);
        assert_eq!(parse(&m, &c, &DISK), Ok(Request::GetId { len: ID_BYTES }));
        let c = chain(&m, VIRTIO_BLK_T_GET_ID, 0, 0, 5);
        assert_eq!(parse(&m, &c, &DISK), Ok(Request::GetId { len: 5 }));
        segments(
            &m,
            &[DiscardSegment::new(8, 8, 0), DiscardSegment::new(0, 1, 0)],
        );
        let c = chain(&m, VIRTIO_BLK_T_DISCARD, 0, 32, 0);
        assert_eq!(
            parse(&m, &c, &DISK),
            Ok(Request::Discard(vec![at(4096, 4096), at(0, 512)]))
        );
        segments(&m, &[DiscardSegment::new(2, 1, SEGMENT_FLAG_UNMAP)]);
        let c = chain(&m, VIRTIO_BLK_T_WRITE_ZEROES, 0, 16, 0);
        assert_eq!(
            parse(&m, &c, &DISK),
            Ok(Request::WriteZeroes(vec![at(1024, 512)]))
        );
    }

    #[test]
    fn refusals_and_their_status() {
        let m = mem();
        // (what, (type, sector, data-out bytes, data-in bytes), disk, refusal, status)
        type Shape = (u32, u64, u32, u32);
        let cases: Vec<(&str, Shape, DiskInfo, Refusal, Status)> = vec![
            (
                "unknown type",
                (0x4242, 0, 0, 0),
                DISK,
                Refusal::UnsupportedType(0x4242),
                Status::Unsupp,
            ),
            (
                "read of part of a sector",
                (VIRTIO_BLK_T_IN, 0, 0, 100),
                DISK,
                Refusal::PartialSector(100),
                Status::IoErr,
            ),
            (
                "read past the end",
                (VIRTIO_BLK_T_IN, 127, 0, 1024),
                DISK,
                Refusal::OutOfRange {
                    sector: 127,
                    bytes: 1024,
                },
                Status::IoErr,
            ),
            (
                "sector whose byte offset overflows",
                (VIRTIO_BLK_T_IN, u64::MAX, 0, 512),
                DISK,
                Refusal::OutOfRange {
                    sector: u64::MAX,
                    bytes: 512,
                },
                Status::IoErr,
            ),
            (
                "write to a read-only disk",
                (VIRTIO_BLK_T_OUT, 0, 512, 0),
                READ_ONLY_DISK,
                Refusal::ReadOnly,
                Status::IoErr,
            ),
            (
                "write of part of a sector",
                (VIRTIO_BLK_T_OUT, 0, 513, 0),
                DISK,
                Refusal::PartialSector(513),
                Status::IoErr,
            ),
            (
                "write past the end",
                (VIRTIO_BLK_T_OUT, 128, 512, 0),
                DISK,
                Refusal::OutOfRange {
                    sector: 128,
                    bytes: 512,
                },
                Status::IoErr,
            ),
            (
                "discard on a read-only disk",
                (VIRTIO_BLK_T_DISCARD, 0, 16, 0),
                READ_ONLY_DISK,
                Refusal::ReadOnly,
                Status::IoErr,
            ),
            (
                "write-zeroes on a read-only disk",
                (VIRTIO_BLK_T_WRITE_ZEROES, 0, 16, 0),
                READ_ONLY_DISK,
                Refusal::ReadOnly,
                Status::IoErr,
            ),
            (
                "discard without segments",
                (VIRTIO_BLK_T_DISCARD, 0, 0, 0),
                DISK,
                Refusal::BadSegmentList(0),
                Status::IoErr,
            ),
            (
                "discard with a partial segment",
                (VIRTIO_BLK_T_DISCARD, 0, 20, 0),
                DISK,
                Refusal::BadSegmentList(20),
                Status::IoErr,
            ),
            (
                "discard with too many segments",
                (VIRTIO_BLK_T_DISCARD, 0, 17 * 16, 0),
                DISK,
                Refusal::BadSegmentList(17 * 16),
                Status::IoErr,
            ),
        ];
        for (what, (kind, sector, data_out, data_in), disk, refusal, status) in cases {
            let c = chain(&m, kind, sector, data_out, data_in);
            assert_eq!(parse(&m, &c, &disk), Err(refusal), "{what}");
            assert_eq!(refusal.status(), status, "{what}");
        }
    }

    #[test]
    fn bad_segments_refuse_the_whole_request() {
        let m = mem();
        let c = chain(&m, VIRTIO_BLK_T_DISCARD, 0, 32, 0);
        // Discard may carry no flag.
        segments(
            &m,
            &[
                DiscardSegment::new(0, 1, 0),
                DiscardSegment::new(1, 1, SEGMENT_FLAG_UNMAP),
            ],
        );
        assert_eq!(parse(&m, &c, &DISK), Err(Refusal::SegmentFlags(1)));
        assert_eq!(Refusal::SegmentFlags(1).status(), Status::Unsupp);
        // Write-zeroes may carry UNMAP, nothing else.
        let c = chain(&m, VIRTIO_BLK_T_WRITE_ZEROES, 0, 16, 0);
        segments(&m, &[DiscardSegment::new(0, 1, 2)]);
        assert_eq!(parse(&m, &c, &DISK), Err(Refusal::SegmentFlags(2)));
        // A later segment beyond the end.
        let c = chain(&m, VIRTIO_BLK_T_DISCARD, 0, 32, 0);
        segments(
            &m,
            &[
                DiscardSegment::new(0, 8, 0),
                DiscardSegment::new(120, 16, 0),
            ],
        );
        assert_eq!(
            parse(&m, &c, &DISK),
            Err(Refusal::OutOfRange {
                sector: 120,
                bytes: 16 * 512
            })
        );
        // A segment whose sector's byte offset overflows.
        segments(&m, &[DiscardSegment::new(u64::MAX / 2, 8, 0)]);
        let c = chain(&m, VIRTIO_BLK_T_DISCARD, 0, 16, 0);
        assert!(matches!(
            parse(&m, &c, &DISK),
            Err(Refusal::OutOfRange { .. })
        ));
    }
}
