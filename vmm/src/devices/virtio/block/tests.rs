//! virtio-blk against virtio-queue's mock split queue: well-formed requests of every type,
//! then malformed chains and requests.

use std::sync::{Arc, Mutex};

use virtio_bindings::bindings::virtio_blk::{
    VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN,
    VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_WRITE_ZEROES,
};
use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::{split::Descriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::Queue;
use vm_memory::{Bytes, GuestAddress};

use super::abi::{DiscardSegment, RequestHeader};
use super::request::Status;
use super::*;
use crate::devices::virtio::worker::{process_queue, DeviceError};

/// An in-memory disk that records what was done to it.
pub struct MemDisk {
    pub data: Mutex<Vec<u8>>,
    pub ro: bool,
    pub flushes: Mutex<u32>,
    pub discards: Mutex<Vec<(u64, u64)>>,
}

impl MemDisk {
    pub fn new(size: usize, ro: bool) -> Self {
        let data = (0..size).map(|i| (i / 512) as u8).collect();
        Self {
            data: Mutex::new(data),
            ro,
            flushes: Mutex::new(0),
            discards: Mutex::new(vec![]),
        }
    }
}

impl BlockBackend for MemDisk {
    fn size(&self) -> u64 {
        self.data.lock().unwrap().len() as u64
    }
    fn read_only(&self) -> bool {
        self.ro
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        let d = self.data.lock().unwrap();
        buf.copy_from_slice(&d[offset as usize..offset as usize + buf.len()]);
        Ok(())
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> std::io::Result<()> {
        let mut d = self.data.lock().unwrap();
        d[offset as usize..offset as usize + buf.len()].copy_from_slice(buf);
        Ok(())
    }
    fn flush(&self) -> std::io::Result<()> {
        *self.flushes.lock().unwrap() += 1;
        Ok(())
    }
    fn discard(&self, offset: u64, len: u64) -> std::io::Result<()> {
        self.discards.lock().unwrap().push((offset, len));
        Ok(())
    }
    fn id(&self) -> String {
        "test-disk-serial".into()
    }
}

pub const W: u16 = VRING_DESC_F_WRITE as u16;
pub const N: u16 = VRING_DESC_F_NEXT as u16;
const HDR: u64 = 0x10_0000;
const DATA: u64 = 0x20_0000;
const STATUS: u64 = 0x30_0000;

pub fn mem() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 16 << 20)]).unwrap()
}

pub fn d(addr: u64, len: u32, flags: u16, next: u16) -> RawDescriptor {
    RawDescriptor::from(Descriptor::new(addr, len, flags, next))
}

fn header(m: &GuestMemoryMmap, kind: u32, sector: u64) {
    m.write_obj(RequestHeader::new(kind, sector), GuestAddress(HDR))
        .unwrap();
    m.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
}

/// (used idx, first used element (id, len)).
pub fn used(m: &GuestMemoryMmap, used_ring: GuestAddress, i: u64) -> (u16, u32, u32) {
    let base = used_ring.0;
    let idx: u16 = m.read_obj(GuestAddress(base + 2)).unwrap();
    let id: u32 = m.read_obj(GuestAddress(base + 4 + i * 8)).unwrap();
    let len: u32 = m.read_obj(GuestAddress(base + 8 + i * 8)).unwrap();
    (idx, id, len)
}

fn status(m: &GuestMemoryMmap) -> u8 {
    m.read_obj(GuestAddress(STATUS)).unwrap()
}

const OK: u8 = Status::Ok as u8;
const IOERR: u8 = Status::IoErr as u8;
const UNSUPP: u8 = Status::Unsupp as u8;

struct Rig {
    mem: GuestMemoryMmap,
    disk: Arc<MemDisk>,
    handler: BlockHandler,
}

impl Rig {
    fn new(ro: bool) -> Self {
        let disk = Arc::new(MemDisk::new(64 * 1024, ro));
        Self {
            mem: mem(),
            handler: BlockHandler::new(disk.clone()),
            disk,
        }
    }

    /// Queues `descs` as chains and processes the queue.
    fn run(&mut self, descs: &[RawDescriptor]) -> (Result<bool, DeviceError>, GuestAddress) {
        let mock = MockSplitQueue::new(&self.mem, 16);
        mock.add_desc_chains(descs, 0).unwrap();
        let mut q: Queue = mock.create_queue().unwrap();
        let r = process_queue(&mut self.handler, 0, &mut q, &self.mem);
        (r, mock.used_addr())
    }
}

#[test]
fn read_sectors() {
    let mut rig = Rig::new(false);
    header(&rig.mem, VIRTIO_BLK_T_IN, 3);
    let (r, mock) = rig.run(&[
        d(HDR, 16, N, 1),
        d(DATA, 1024, W | N, 2),
        d(STATUS, 1, W, 0),
    ]);
    assert!(r.unwrap(), "driver must be interrupted");
    assert_eq!(status(&rig.mem), OK);
    let mut buf = vec![0u8; 1024];
    rig.mem.read_slice(&mut buf, GuestAddress(DATA)).unwrap();
    assert!(buf[..512].iter().all(|&b| b == 3) && buf[512..].iter().all(|&b| b == 4));
    assert_eq!(used(&rig.mem, mock, 0), (1, 0, 1025));
}

#[test]
fn write_then_read_back_and_flush() {
    let mut rig = Rig::new(false);
    header(&rig.mem, VIRTIO_BLK_T_OUT, 10);
    rig.mem
        .write_slice(&[0xabu8; 512], GuestAddress(DATA))
        .unwrap();
    let (r, mock) = rig.run(&[d(HDR, 16, N, 1), d(DATA, 512, N, 2), d(STATUS, 1, W, 0)]);
    r.unwrap();
    assert_eq!(status(&rig.mem), OK);
    assert_eq!(
        used(&rig.mem, mock, 0).2,
        1,
        "only the status byte was written"
    );
    assert!(rig.disk.data.lock().unwrap()[10 * 512..11 * 512]
        .iter()
        .all(|&b| b == 0xab));
    assert_eq!(
        rig.disk.data.lock().unwrap()[11 * 512],
        11,
        "next sector untouched"
    );

    header(&rig.mem, VIRTIO_BLK_T_FLUSH, 0);
    let (r, _) = rig.run(&[d(HDR, 16, N, 1), d(STATUS, 1, W, 0)]);
    r.unwrap();
    assert_eq!(status(&rig.mem), OK);
    assert_eq!(*rig.disk.flushes.lock().unwrap(), 1);
}

#[test]
fn header_and_data_split_across_descriptors() {
    let mut rig = Rig::new(false);
    header(&rig.mem, VIRTIO_BLK_T_IN, 1);
    let (r, _) = rig.run(&[
        d(HDR, 8, N, 1),
        d(HDR + 8, 8, N, 2),
        d(DATA, 100, W | N, 3),
        d(DATA + 0x1000, 412, W | N, 4),
        d(STATUS, 1, W, 0),
    ]);
    r.unwrap();
    assert_eq!(status(&rig.mem), OK);
    let b: u8 = rig.mem.read_obj(GuestAddress(DATA + 0x1000 + 411)).unwrap();
    assert_eq!(b, 1);
}

#[test]
fn get_id_discard_and_write_zeroes() {
    let mut rig = Rig::new(false);
    header(&rig.mem, VIRTIO_BLK_T_GET_ID, 0);
    let (r, mock) = rig.run(&[d(HDR, 16, N, 1), d(DATA, 20, W | N, 2), d(STATUS, 1, W, 0)]);
    r.unwrap();
    let mut id = [0u8; 16];
    rig.mem.read_slice(&mut id, GuestAddress(DATA)).unwrap();
    assert_eq!(&id, b"test-disk-serial");
    assert_eq!(used(&rig.mem, mock, 0).2, 21);

    let seg = DiscardSegment::new;
    header(&rig.mem, VIRTIO_BLK_T_DISCARD, 0);
    rig.mem.write_obj(seg(8, 8, 0), GuestAddress(DATA)).unwrap();
    let (r, _) = rig.run(&[d(HDR, 16, N, 1), d(DATA, 16, N, 2), d(STATUS, 1, W, 0)]);
    r.unwrap();
    assert_eq!(status(&rig.mem), OK);
    assert_eq!(*rig.disk.discards.lock().unwrap(), vec![(4096, 4096)]);

    header(&rig.mem, VIRTIO_BLK_T_WRITE_ZEROES, 0);
    rig.mem.write_obj(seg(2, 1, 1), GuestAddress(DATA)).unwrap();
    let (r, _) = rig.run(&[d(HDR, 16, N, 1), d(DATA, 16, N, 2), d(STATUS, 1, W, 0)]);
    r.unwrap();
    assert_eq!(status(&rig.mem), OK);
    assert!(rig.disk.data.lock().unwrap()[1024..1536]
        .iter()
        .all(|&b| b == 0));

    // Discard with a flag it may not carry, and past the end of the disk.
    header(&rig.mem, VIRTIO_BLK_T_DISCARD, 0);
    rig.mem.write_obj(seg(0, 1, 1), GuestAddress(DATA)).unwrap();
    let (r, _) = rig.run(&[d(HDR, 16, N, 1), d(DATA, 16, N, 2), d(STATUS, 1, W, 0)]);
    r.unwrap();
    assert_eq!(status(&rig.mem), UNSUPP);
    rig.mem
        .write_obj(seg(u64::MAX / 2, 8, 0), GuestAddress(DATA))
        .unwrap();
    let (r, _) = rig.run(&[d(HDR, 16, N, 1), d(DATA, 16, N, 2), d(STATUS, 1, W, 0)]);
    r.unwrap();
    assert_eq!(status(&rig.mem), IOERR);
}

#[test]
fn read_only_disk_refuses_writes() {
    let mut rig = Rig::new(true);
    let dev = Block::new(rig.disk.clone(), "ro".into());
    assert_ne!(dev.features() & feature::RO, 0);
    assert_eq!(dev.features() & feature::DISCARD, 0);
    header(&rig.mem, VIRTIO_BLK_T_OUT, 0);
    rig.mem
        .write_slice(&[0x55u8; 512], GuestAddress(DATA))
        .unwrap();
    let (r, _) = rig.run(&[d(HDR, 16, N, 1), d(DATA, 512, N, 2), d(STATUS, 1, W, 0)]);
    r.unwrap();
    assert_eq!(status(&rig.mem), IOERR);
    assert_eq!(rig.disk.data.lock().unwrap()[0], 0, "data unchanged");
}

#[test]
fn out_of_range_and_odd_requests_get_error_status() {
    let mut rig = Rig::new(false);
    // Past the end (64 KiB = 128 sectors).
    header(&rig.mem, VIRTIO_BLK_T_IN, 127);
    let (r, _) = rig.run(&[
        d(HDR, 16, N, 1),
        d(DATA, 1024, W | N, 2),
        d(STATUS, 1, W, 0),
    ]);
    r.unwrap();
    assert_eq!(status(&rig.mem), IOERR);
    // Sector number whose byte offset overflows.
    header(&rig.mem, VIRTIO_BLK_T_IN, u64::MAX);
    let (r, _) = rig.run(&[d(HDR, 16, N, 1), d(DATA, 512, W | N, 2), d(STATUS, 1, W, 0)]);
    r.unwrap();
    assert_eq!(status(&rig.mem), IOERR);
    // Not a whole number of sectors.
    header(&rig.mem, VIRTIO_BLK_T_IN, 0);
    let (r, _) = rig.run(&[d(HDR, 16, N, 1), d(DATA, 100, W | N, 2), d(STATUS, 1, W, 0)]);
    r.unwrap();
    assert_eq!(status(&rig.mem), IOERR);
    // Unknown request type.
    header(&rig.mem, 0x4242, 0);
    let (r, _) = rig.run(&[d(HDR, 16, N, 1), d(STATUS, 1, W, 0)]);
    r.unwrap();
    assert_eq!(status(&rig.mem), UNSUPP);
}

#[test]
fn malformed_chains_fail_the_device() {
    let cases: Vec<(&str, Vec<RawDescriptor>)> = vec![
        ("loop", vec![d(HDR, 16, N, 1), d(DATA, 512, W | N, 0)]),
        ("next out of range", vec![d(HDR, 16, N, 99)]),
        (
            "buffer outside memory",
            vec![
                d(HDR, 16, N, 1),
                d(0x4000_0000, 512, W | N, 2),
                d(STATUS, 1, W, 0),
            ],
        ),
        (
            "buffer straddling the end of memory",
            vec![
                d(HDR, 16, N, 1),
                d((16 << 20) - 256, 512, W | N, 2),
                d(STATUS, 1, W, 0),
            ],
        ),
        (
            "absurd length",
            vec![
                d(HDR, 16, N, 1),
                d(DATA, u32::MAX, W | N, 2),
                d(STATUS, 1, W, 0),
            ],
        ),
        (
            "too long for the device",
            vec![
                d(HDR, 16, N, 1),
                d(DATA, 8 << 20, W | N, 2),
                d(DATA, 8 << 20, W | N, 3),
                d(DATA, 8 << 20, W | N, 4),
                d(STATUS, 1, W, 0),
            ],
        ),
        (
            "readable after writable",
            vec![d(HDR, 16, N, 1), d(STATUS, 1, W | N, 2), d(DATA, 512, 0, 0)],
        ),
        ("no header", vec![d(HDR, 8, N, 1), d(STATUS, 1, W, 0)]),
        ("no status byte", vec![d(HDR, 16, 0, 0)]),
        ("indirect", vec![d(HDR, 32, 4, 0)]),
    ];
    for (what, descs) in cases {
        let mut rig = Rig::new(false);
        header(&rig.mem, VIRTIO_BLK_T_IN, 0);
        let (r, _) = rig.run(&descs);
        assert!(r.is_err(), "{what}: accepted");
        assert_eq!(
            rig.disk.data.lock().unwrap()[0],
            0,
            "{what}: disk untouched"
        );
    }
}

#[test]
fn bad_avail_index_fails_the_device() {
    let mut rig = Rig::new(false);
    let mock = MockSplitQueue::new(&rig.mem, 16);
    let mut q: Queue = mock.create_queue().unwrap();
    // The driver claims 1000 new chains in a queue of 16.
    rig.mem
        .write_obj(1000u16, GuestAddress(mock.avail_addr().0 + 2))
        .unwrap();
    assert!(process_queue(&mut rig.handler, 0, &mut q, &rig.mem).is_err());
}

#[test]
fn raw_file_backend_round_trip() {
    let path = std::env::temp_dir().join(format!("vmm-rawfile-{}", std::process::id()));
    std::fs::write(&path, vec![7u8; 8192]).unwrap();
    let f = RawFile::open(&path, false).unwrap();
    assert_eq!(f.size(), 8192);
    f.write_at(&[1, 2, 3], 4096).unwrap();
    let mut b = [0u8; 4];
    f.read_at(&mut b, 4095).unwrap();
    assert_eq!(b, [7, 1, 2, 3]);
    f.flush().unwrap();
    f.discard(0, 4096).unwrap();
    f.write_zeroes(4096, 512).unwrap();
    f.read_at(&mut b, 4096).unwrap();
    assert_eq!(b, [0; 4]);
    assert!(f.read_at(&mut b, 8190).is_err(), "read past the end");
    let ro = RawFile::open(&path, true).unwrap();
    assert!(ro.read_only());
    assert!(ro.write_at(&[1], 0).is_err());
    std::fs::remove_file(&path).ok();
}

#[test]
fn advertised_limits_keep_legitimate_requests_under_the_cap() {
    let dev = Block::new(Arc::new(MemDisk::new(4096, false)), "t".into());
    assert_ne!(dev.features() & feature::SIZE_MAX, 0);
    assert_ne!(dev.features() & feature::SEG_MAX, 0);
    let c = abi::BlockConfig::from_slice(&dev.config_space())
        .copied()
        .unwrap()
        .0;
    let (size_max, seg_max, capacity) = (c.size_max, c.seg_max, c.capacity);
    assert!(u64::from(size_max) * u64::from(seg_max) <= MAX_REQUEST_BYTES);
    assert!(size_max >= 4096, "Linux needs at least a page per segment");
    assert_eq!(capacity, 8, "capacity in sectors");
    let (max_discard_seg, alignment) = (c.max_discard_seg, c.discard_sector_alignment);
    assert_eq!(max_discard_seg, MAX_DISCARD_SEGMENTS);
    assert_eq!(alignment, 8, "4 KiB discard granularity");
}

#[test]
fn discard_with_a_bad_later_segment_does_nothing() {
    let mut rig = Rig::new(false);
    header(&rig.mem, VIRTIO_BLK_T_DISCARD, 0);
    rig.mem
        .write_obj(DiscardSegment::new(0, 8, 0), GuestAddress(DATA))
        .unwrap();
    rig.mem
        .write_obj(DiscardSegment::new(1000, 8, 0), GuestAddress(DATA + 16))
        .unwrap();
    let (r, mock) = rig.run(&[d(HDR, 16, N, 1), d(DATA, 32, N, 2), d(STATUS, 1, W, 0)]);
    assert!(r.unwrap(), "driver must be interrupted");
    assert_eq!(status(&rig.mem), IOERR);
    assert_eq!(used(&rig.mem, mock, 0), (1, 0, 1));
    assert!(
        rig.disk.discards.lock().unwrap().is_empty(),
        "the good first segment was not discarded either"
    );
}
