//! virtio-gpu against virtio-queue's mock split queue and a real guest memory: each command's
//! happy path, what reaches the display sink, the pixels a presenter reads back, and every
//! refusal with its response type.

use std::sync::{Arc, Mutex};

use virtio_bindings::virtio_gpu::*;
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::Queue;
use vm_memory::{ByteValued, Bytes, GuestAddress};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::abi::{self, ty};
use super::state::{MAX_RESOURCES, MAX_RESOURCE_BYTES, MAX_TOTAL_BYTES};
use super::*;
use crate::devices::virtio::block::tests::{d, used, N, W};
use crate::devices::virtio::worker::process_queue;
use crate::devices::virtio::{Interrupt, INT_CONFIG};
use crate::display::{CursorImage, Framebuffer, Rect};

/// What the device told the display.
#[derive(Debug)]
pub enum Seen {
    Scanout(Option<Arc<Framebuffer>>),
    Flush(Rect),
    Cursor(Option<Arc<CursorImage>>, u32, u32),
    Move(u32, u32),
}

#[derive(Default)]
pub struct Recorder(pub Mutex<Vec<Seen>>);

impl DisplaySink for Recorder {
    fn set_scanout(&self, fb: Option<Arc<Framebuffer>>) {
        self.0.lock().unwrap().push(Seen::Scanout(fb));
    }
    fn flush(&self, rect: Rect) {
        self.0.lock().unwrap().push(Seen::Flush(rect));
    }
    fn cursor(&self, image: Option<Arc<CursorImage>>, x: u32, y: u32) {
        self.0.lock().unwrap().push(Seen::Cursor(image, x, y));
    }
    fn move_cursor(&self, x: u32, y: u32) {
        self.0.lock().unwrap().push(Seen::Move(x, y));
    }
}

impl Recorder {
    fn take(&self) -> Vec<Seen> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

const MEM_SIZE: u64 = 16 << 20;
const REQ: u64 = 0x10_0000;
const RESP: u64 = 0x18_0000;
const RESP_LEN: u32 = 2048;

fn hdr(kind: u32) -> virtio_gpu_ctrl_hdr {
    virtio_gpu_ctrl_hdr {
        type_: kind,
        ..Default::default()
    }
}

fn bytes<T: ByteValued>(v: T) -> Vec<u8> {
    v.as_slice().to_vec()
}

fn rect(x: u32, y: u32, width: u32, height: u32) -> virtio_gpu_rect {
    virtio_gpu_rect {
        x,
        y,
        width,
        height,
    }
}

pub fn create(id: u32, format: u32, w: u32, h: u32) -> Vec<u8> {
    bytes(abi::ResourceCreate2d(virtio_gpu_resource_create_2d {
        hdr: hdr(ty::RESOURCE_CREATE_2D),
        resource_id: id,
        format,
        width: w,
        height: h,
    }))
}

pub fn attach(id: u32, entries: &[(u64, u32)]) -> Vec<u8> {
    let mut v = bytes(abi::AttachBacking(virtio_gpu_resource_attach_backing {
        hdr: hdr(ty::RESOURCE_ATTACH_BACKING),
        resource_id: id,
        nr_entries: entries.len() as u32,
    }));
    for &(addr, length) in entries {
        v.extend(bytes(abi::MemEntry(virtio_gpu_mem_entry {
            addr,
            length,
            padding: 0,
        })));
    }
    v
}

pub fn set_scanout(scanout_id: u32, id: u32, r: (u32, u32, u32, u32)) -> Vec<u8> {
    bytes(abi::SetScanout(virtio_gpu_set_scanout {
        hdr: hdr(ty::SET_SCANOUT),
        r: rect(r.0, r.1, r.2, r.3),
        scanout_id,
        resource_id: id,
    }))
}

pub fn flush(id: u32, r: (u32, u32, u32, u32)) -> Vec<u8> {
    bytes(abi::ResourceFlush(virtio_gpu_resource_flush {
        hdr: hdr(ty::RESOURCE_FLUSH),
        r: rect(r.0, r.1, r.2, r.3),
        resource_id: id,
        padding: 0,
    }))
}

pub fn transfer(id: u32, r: (u32, u32, u32, u32), offset: u64) -> Vec<u8> {
    bytes(abi::TransferToHost2d(virtio_gpu_transfer_to_host_2d {
        hdr: hdr(ty::TRANSFER_TO_HOST_2D),
        r: rect(r.0, r.1, r.2, r.3),
        offset,
        resource_id: id,
        padding: 0,
    }))
}

fn unref(id: u32) -> Vec<u8> {
    bytes(abi::ResourceUnref(virtio_gpu_resource_unref {
        hdr: hdr(ty::RESOURCE_UNREF),
        resource_id: id,
        padding: 0,
    }))
}

fn detach(id: u32) -> Vec<u8> {
    bytes(abi::DetachBacking(virtio_gpu_resource_detach_backing {
        hdr: hdr(ty::RESOURCE_DETACH_BACKING),
        resource_id: id,
        padding: 0,
    }))
}

fn cursor(kind: u32, id: u32, x: u32, y: u32, hot: (u32, u32)) -> Vec<u8> {
    bytes(abi::UpdateCursor(virtio_gpu_update_cursor {
        hdr: hdr(kind),
        pos: virtio_gpu_cursor_pos {
            scanout_id: 0,
            x,
            y,
            padding: 0,
        },
        resource_id: id,
        hot_x: hot.0,
        hot_y: hot.1,
        padding: 0,
    }))
}

fn get_edid(scanout: u32) -> Vec<u8> {
    bytes(abi::GetEdid(virtio_gpu_cmd_get_edid {
        hdr: hdr(ty::GET_EDID),
        scanout,
        padding: 0,
    }))
}

const XRGB: u32 = virtio_gpu_formats_VIRTIO_GPU_FORMAT_B8G8R8X8_UNORM;
const ARGB: u32 = virtio_gpu_formats_VIRTIO_GPU_FORMAT_B8G8R8A8_UNORM;

struct Rig {
    mem: Arc<GuestMemoryMmap>,
    sink: Arc<Recorder>,
    control: DisplayControl,
    handler: GpuHandler,
}

impl Rig {
    fn new() -> Self {
        Self::with_edid(None)
    }

    fn with_edid(edid: Option<Vec<u8>>) -> Self {
        let mem = Arc::new(
            GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)]).unwrap(),
        );
        let sink = Arc::new(Recorder::default());
        let control = DisplayControl::new(1024, 768, edid);
        let handler = GpuHandler::new(GpuState::new(mem.clone(), control.clone(), sink.clone()));
        Self {
            mem,
            sink,
            control,
            handler,
        }
    }

    /// Sends `req` on `queue` in a [header+body | response] chain; returns the response
    /// header type and the response bytes.
    fn send(&mut self, queue: usize, req: &[u8]) -> (u32, Vec<u8>) {
        self.mem.write_slice(req, GuestAddress(REQ)).unwrap();
        self.mem
            .write_slice(&[0xaa; RESP_LEN as usize], GuestAddress(RESP))
            .unwrap();
        let mock = MockSplitQueue::new(self.mem.as_ref(), 16);
        mock.add_desc_chains(
            &[d(REQ, req.len() as u32, N, 1), d(RESP, RESP_LEN, W, 0)],
            0,
        )
        .unwrap();
        let mut q: Queue = mock.create_queue().unwrap();
        process_queue(&mut self.handler, queue, &mut q, &self.mem).unwrap();
        let (idx, _, len) = used(&self.mem, mock.used_addr(), 0);
        assert_eq!(idx, 1, "request completed");
        let mut resp = vec![0u8; len as usize];
        self.mem.read_slice(&mut resp, GuestAddress(RESP)).unwrap();
        let kind = u32::from_le_bytes(resp[..4].try_into().unwrap());
        (kind, resp)
    }

    fn ctl(&mut self, req: &[u8]) -> u32 {
        self.send(0, req).0
    }

    /// Writes `data` into the backing stream made of `entries` at `offset`.
    fn write_stream(&self, entries: &[(u64, u32)], mut offset: u64, data: &[u8]) {
        let mut done = 0usize;
        for &(addr, len) in entries {
            let len = u64::from(len);
            if offset >= len {
                offset -= len;
                continue;
            }
            let n = ((len - offset) as usize).min(data.len() - done);
            self.mem
                .write_slice(&data[done..done + n], GuestAddress(addr + offset))
                .unwrap();
            done += n;
            offset = 0;
            if done == data.len() {
                return;
            }
        }
        panic!("stream too short");
    }
}

fn pixel(x: u32, y: u32) -> u32 {
    0x0001_0000 * (x & 0xff) + 0x100 * (y & 0xff) + ((x * 7 + y) & 0xff)
}

/// A 64x32 XRGB resource 1 whose 8 KiB backing is split over three separate entries
/// (1000 bytes: rows straddle entries), filled with `pixel`.
fn framebuffer_rig() -> (Rig, Vec<(u64, u32)>) {
    let mut rig = Rig::new();
    let entries = vec![(0x40_0000, 1000), (0x50_0000, 4000), (0x60_0100, 3192)];
    let mut img = Vec::new();
    for y in 0..32 {
        for x in 0..64 {
            img.extend_from_slice(&pixel(x, y).to_le_bytes());
        }
    }
    rig.write_stream(&entries, 0, &img);
    assert_eq!(rig.ctl(&create(1, XRGB, 64, 32)), ty::OK_NODATA);
    assert_eq!(rig.ctl(&attach(1, &entries)), ty::OK_NODATA);
    (rig, entries)
}

fn scanout_of(seen: &[Seen]) -> Arc<Framebuffer> {
    match seen {
        [Seen::Scanout(Some(fb))] => fb.clone(),
        other => panic!("expected one scanout, got {other:?}"),
    }
}

fn read_back(fb: &Framebuffer, r: Rect, stride: usize, rows: usize) -> Vec<u8> {
    let mut dst = vec![0u8; stride * rows];
    fb.copy_rect(r, &mut dst, stride);
    dst
}

#[test]
fn display_info_and_edid() {
    let mut rig = Rig::new();
    let (kind, resp) = rig.send(0, &bytes(abi::CtrlHeader(hdr(ty::GET_DISPLAY_INFO))));
    assert_eq!(kind, ty::OK_DISPLAY_INFO);
    let mut info = abi::RespDisplayInfo::default();
    info.as_mut_slice().copy_from_slice(&resp);
    assert_eq!(info.0.pmodes[0].r.width, 1024);
    assert_eq!(info.0.pmodes[0].r.height, 768);
    assert_eq!(info.0.pmodes[0].enabled, 1);
    assert_eq!(info.0.pmodes[1].enabled, 0);

    let (kind, resp) = rig.send(0, &get_edid(0));
    assert_eq!(kind, ty::OK_EDID);
    let mut e = abi::RespEdid::default();
    e.as_mut_slice().copy_from_slice(&resp);
    assert_eq!(e.0.size, 128);
    assert_eq!(
        edid::preferred_mode(&e.0.edid[..128]),
        Some((1024, 768, 60))
    );
    assert_eq!(rig.ctl(&get_edid(1)), ty::ERR_INVALID_PARAMETER);

    // A configured EDID is returned as is.
    let blob: Vec<u8> = (0..=255u8).collect();
    let mut rig = Rig::with_edid(Some(blob.clone()));
    let (_, resp) = rig.send(0, &get_edid(0));
    e.as_mut_slice().copy_from_slice(&resp);
    assert_eq!(e.0.size, 256);
    assert_eq!(&e.0.edid[..256], &blob[..]);
}

#[test]
fn resize_raises_a_display_event() {
    let mut rig = Rig::new();
    let irq = Arc::new(Interrupt::new(EventFd::new(EFD_NONBLOCK).unwrap()));
    rig.control.set_interrupt(Some(irq.clone()));
    assert_eq!(rig.control.events(), 0);
    rig.control.resize(1920, 1080, None);
    assert_eq!(rig.control.events(), VIRTIO_GPU_EVENT_DISPLAY);
    assert_eq!(irq.status() & INT_CONFIG, INT_CONFIG);
    assert_eq!(irq.eventfd().read().unwrap(), 1);
    let (_, resp) = rig.send(0, &bytes(abi::CtrlHeader(hdr(ty::GET_DISPLAY_INFO))));
    let mut info = abi::RespDisplayInfo::default();
    info.as_mut_slice().copy_from_slice(&resp);
    assert_eq!(
        (info.0.pmodes[0].r.width, info.0.pmodes[0].r.height),
        (1920, 1080)
    );
    let (_, resp) = rig.send(0, &get_edid(0));
    assert_eq!(edid::preferred_mode(&resp[32..160]), Some((1920, 1080, 60)));
    rig.control.clear_events(VIRTIO_GPU_EVENT_DISPLAY);
    assert_eq!(rig.control.events(), 0);
    // Absurd sizes are clamped, oversized EDIDs dropped.
    rig.control.resize(0, 1 << 30, Some(vec![0; 4096]));
    let m = rig.control.mode();
    assert_eq!((m.width, m.height, m.edid), (1, 16384, None));
}

#[test]
fn device_config_space_and_features() {
    let sink = Arc::new(Recorder::default());
    let mut gpu = Gpu::new(DisplayConfig {
        width: 800,
        height: 600,
        edid: None,
        sink,
    });
    assert_eq!(gpu.device_type(), 16);
    assert_eq!(gpu.queue_max_sizes().len(), 2);
    let f = gpu.features();
    assert_ne!(f & F_EDID, 0);
    assert_eq!(f & 0b11101, 0, "no virgl, uuid, blob or context init");
    let mut c = GpuConfig::default();
    c.as_mut_slice().copy_from_slice(&gpu.config_space());
    assert_eq!(
        (c.0.num_scanouts, c.0.num_capsets, c.0.events_read),
        (1, 0, 0)
    );
    gpu.control().resize(640, 480, None);
    c.as_mut_slice().copy_from_slice(&gpu.config_space());
    assert_eq!(c.0.events_read, VIRTIO_GPU_EVENT_DISPLAY);
    gpu.write_config(0, &1u32.to_le_bytes()); // events_read is read-only
    gpu.write_config(4, &1u32.to_le_bytes());
    c.as_mut_slice().copy_from_slice(&gpu.config_space());
    assert_eq!(c.0.events_read, 0);
}

#[test]
fn scanout_flush_and_copy_rect_read_the_guest_backing() {
    let (mut rig, entries) = framebuffer_rig();
    assert!(rig.sink.take().is_empty(), "create and attach show nothing");
    assert_eq!(rig.ctl(&set_scanout(0, 1, (0, 0, 64, 32))), ty::OK_NODATA);
    let fb = scanout_of(&rig.sink.take());
    assert_eq!((fb.width(), fb.height()), (64, 32));
    assert_eq!(rig.ctl(&transfer(1, (0, 0, 64, 32), 0)), ty::OK_NODATA);
    assert!(
        rig.sink.take().is_empty(),
        "a transfer copies nothing and shows nothing"
    );
    assert_eq!(rig.ctl(&flush(1, (8, 4, 16, 8))), ty::OK_NODATA);
    match &rig.sink.take()[..] {
        [Seen::Flush(r)] => assert_eq!(*r, Rect::new(8, 4, 16, 8)),
        other => panic!("{other:?}"),
    }

    // The whole image, read at "present" time straight from the three entries.
    let out = read_back(&fb, Rect::new(0, 0, 64, 32), 64 * 4, 32);
    for y in 0..32u32 {
        for x in 0..64u32 {
            let i = (y * 64 + x) as usize * 4;
            assert_eq!(
                u32::from_le_bytes(out[i..i + 4].try_into().unwrap()),
                pixel(x, y),
                "({x},{y})"
            );
        }
    }
    // The guest draws again: the next present sees it without any transfer.
    rig.write_stream(
        &entries,
        (3 * 64 + 62) * 4,
        &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12],
    );
    let out = read_back(&fb, Rect::new(62, 3, 2, 2), 64 * 4, 32);
    let at = |x: usize, y: usize| &out[(y * 64 + x) * 4..(y * 64 + x) * 4 + 4];
    assert_eq!(at(62, 3), &[1, 2, 3, 4]);
    assert_eq!(at(63, 3), &[5, 6, 7, 8]);
    assert_eq!(
        at(62, 4),
        &pixel(62, 4).to_le_bytes(),
        "next row's first pixel unchanged"
    );
    assert_eq!(at(61, 3), &[0; 4], "outside the rect: untouched");

    // A scanout showing part of the resource: flushes are clipped and translated.
    assert_eq!(rig.ctl(&set_scanout(0, 1, (16, 8, 32, 16))), ty::OK_NODATA);
    let fb = scanout_of(&rig.sink.take());
    assert_eq!((fb.width(), fb.height()), (32, 16));
    assert_eq!(rig.ctl(&flush(1, (0, 0, 24, 12))), ty::OK_NODATA);
    assert_eq!(
        rig.ctl(&flush(1, (0, 0, 8, 8))),
        ty::OK_NODATA,
        "outside: no flush"
    );
    match &rig.sink.take()[..] {
        [Seen::Flush(r)] => assert_eq!(*r, Rect::new(0, 0, 8, 4)),
        other => panic!("{other:?}"),
    }
    let out = read_back(&fb, Rect::new(0, 0, 32, 16), 32 * 4, 16);
    assert_eq!(&out[..4], &pixel(16, 8).to_le_bytes());
    let last = (15 * 32 + 31) * 4;
    assert_eq!(&out[last..last + 4], &pixel(47, 23).to_le_bytes());

    // Hostile rectangles and destinations never panic, and clip.
    let mut small = vec![0u8; 10];
    fb.copy_rect(Rect::new(0, 0, 32, 16), &mut small, 8);
    assert_eq!(
        &small[..8],
        &[pixel(16, 8).to_le_bytes(), pixel(17, 8).to_le_bytes()].concat()
    );
    fb.copy_rect(
        Rect::new(u32::MAX, u32::MAX, u32::MAX, u32::MAX),
        &mut small,
        8,
    );
    fb.copy_rect(Rect::new(0, 0, u32::MAX, u32::MAX), &mut small, 0);
    fb.copy_rect(Rect::new(1, 1, 5, 5), &mut small, usize::MAX);
    fb.copy_rect(Rect::new(0, 0, 32, 16), &mut [], 128);

    // Unref of the scanned-out resource turns the scanout off.
    assert_eq!(rig.ctl(&unref(1)), ty::OK_NODATA);
    assert!(matches!(&rig.sink.take()[..], [Seen::Scanout(None)]));
    assert_eq!(
        rig.ctl(&flush(1, (0, 0, 1, 1))),
        ty::ERR_INVALID_RESOURCE_ID
    );
}

#[test]
fn formats_convert_to_xrgb() {
    // One pixel r=0x11 g=0x22 b=0x33 a=0x44 in each format's byte order.
    let cases = [
        (
            virtio_gpu_formats_VIRTIO_GPU_FORMAT_B8G8R8A8_UNORM,
            [0x33, 0x22, 0x11, 0x44],
            0x44,
        ),
        (
            virtio_gpu_formats_VIRTIO_GPU_FORMAT_B8G8R8X8_UNORM,
            [0x33, 0x22, 0x11, 0x44],
            0x44,
        ),
        (
            virtio_gpu_formats_VIRTIO_GPU_FORMAT_A8R8G8B8_UNORM,
            [0x44, 0x11, 0x22, 0x33],
            0x44,
        ),
        (
            virtio_gpu_formats_VIRTIO_GPU_FORMAT_X8R8G8B8_UNORM,
            [0x44, 0x11, 0x22, 0x33],
            0xff,
        ),
        (
            virtio_gpu_formats_VIRTIO_GPU_FORMAT_R8G8B8A8_UNORM,
            [0x11, 0x22, 0x33, 0x44],
            0x44,
        ),
        (
            virtio_gpu_formats_VIRTIO_GPU_FORMAT_R8G8B8X8_UNORM,
            [0x11, 0x22, 0x33, 0x44],
            0xff,
        ),
        (
            virtio_gpu_formats_VIRTIO_GPU_FORMAT_A8B8G8R8_UNORM,
            [0x44, 0x33, 0x22, 0x11],
            0x44,
        ),
        (
            virtio_gpu_formats_VIRTIO_GPU_FORMAT_X8B8G8R8_UNORM,
            [0x44, 0x33, 0x22, 0x11],
            0xff,
        ),
    ];
    for (format, px, alpha) in cases {
        let mut rig = Rig::new();
        let entries = [(0x40_0000u64, 4096u32)];
        rig.write_stream(&entries, 0, &[px, px].concat());
        assert_eq!(rig.ctl(&create(3, format, 2, 1)), ty::OK_NODATA);
        assert_eq!(rig.ctl(&attach(3, &entries)), ty::OK_NODATA);
        assert_eq!(rig.ctl(&set_scanout(0, 3, (0, 0, 2, 1))), ty::OK_NODATA);
        let fb = scanout_of(&rig.sink.take());
        let out = read_back(&fb, Rect::new(0, 0, 2, 1), 8, 1);
        // XRGB8888 in memory: B, G, R, X (X is the alpha, or opaque).
        assert_eq!(&out[..4], &[0x33, 0x22, 0x11, alpha], "format {format}");
        assert_eq!(out[..4], out[4..]);
    }
    assert_eq!(
        Rig::new().ctl(&create(3, 99, 2, 1)),
        ty::ERR_INVALID_PARAMETER
    );
}

#[test]
fn fences_are_echoed() {
    let mut rig = Rig::new();
    let mut req = create(1, XRGB, 4, 4);
    let mut h = hdr(ty::RESOURCE_CREATE_2D);
    h.flags = VIRTIO_GPU_FLAG_FENCE;
    h.fence_id = 0x1234_5678_9abc;
    h.ctx_id = 7;
    req[..24].copy_from_slice(abi::CtrlHeader(h).as_slice());
    let (kind, resp) = rig.send(0, &req);
    assert_eq!(kind, ty::OK_NODATA);
    assert_eq!(resp.len(), 24);
    let mut r = abi::CtrlHeader::default();
    r.as_mut_slice().copy_from_slice(&resp);
    assert_eq!(r.0.flags, VIRTIO_GPU_FLAG_FENCE);
    assert_eq!(r.0.fence_id, 0x1234_5678_9abc);
    assert_eq!(r.0.ctx_id, 7);
    // A refused fenced request still signals its fence.
    let (kind, resp) = rig.send(0, &req);
    assert_eq!(kind, ty::ERR_INVALID_RESOURCE_ID);
    r.as_mut_slice().copy_from_slice(&resp);
    assert_eq!(r.0.fence_id, 0x1234_5678_9abc);
    // Without the flag nothing is echoed.
    let (_, resp) = rig.send(0, &create(2, XRGB, 4, 4));
    r.as_mut_slice().copy_from_slice(&resp);
    assert_eq!((r.0.flags, r.0.fence_id), (0, 0));
}

#[test]
fn resource_refusals() {
    let (mut rig, _) = framebuffer_rig();
    // Ids.
    assert_eq!(rig.ctl(&create(0, XRGB, 4, 4)), ty::ERR_INVALID_RESOURCE_ID);
    assert_eq!(
        rig.ctl(&create(1, XRGB, 4, 4)),
        ty::ERR_INVALID_RESOURCE_ID,
        "duplicate"
    );
    assert_eq!(
        rig.ctl(&flush(9, (0, 0, 1, 1))),
        ty::ERR_INVALID_RESOURCE_ID
    );
    assert_eq!(
        rig.ctl(&flush(0, (0, 0, 1, 1))),
        ty::ERR_INVALID_RESOURCE_ID
    );
    assert_eq!(
        rig.ctl(&transfer(9, (0, 0, 1, 1), 0)),
        ty::ERR_INVALID_RESOURCE_ID
    );
    assert_eq!(
        rig.ctl(&attach(9, &[(0x40_0000, 16)])),
        ty::ERR_INVALID_RESOURCE_ID
    );
    assert_eq!(rig.ctl(&detach(9)), ty::ERR_INVALID_RESOURCE_ID);
    assert_eq!(rig.ctl(&unref(9)), ty::ERR_INVALID_RESOURCE_ID);
    assert_eq!(rig.ctl(&unref(0)), ty::ERR_INVALID_RESOURCE_ID);
    assert_eq!(
        rig.ctl(&set_scanout(0, 9, (0, 0, 1, 1))),
        ty::ERR_INVALID_RESOURCE_ID
    );
    // Sizes.
    assert_eq!(rig.ctl(&create(2, XRGB, 0, 4)), ty::ERR_INVALID_PARAMETER);
    assert_eq!(
        rig.ctl(&create(2, XRGB, 16385, 1)),
        ty::ERR_INVALID_PARAMETER
    );
    assert_eq!(
        rig.ctl(&create(2, XRGB, 1, u32::MAX)),
        ty::ERR_INVALID_PARAMETER
    );
    assert_eq!(
        rig.ctl(&create(2, XRGB, 16384, 16384)),
        ty::ERR_INVALID_PARAMETER,
        "1 GiB"
    );
    // Rectangles, including ones whose x + width overflows u32.
    for r in [
        (60, 0, 8, 1),
        (0, 31, 1, 2),
        (u32::MAX - 1, 0, 4, 1),
        (0, u32::MAX, 1, u32::MAX),
        (1, 1, u32::MAX, u32::MAX),
    ] {
        assert_eq!(
            rig.ctl(&flush(1, r)),
            ty::ERR_INVALID_PARAMETER,
            "flush {r:?}"
        );
        assert_eq!(
            rig.ctl(&transfer(1, r, 0)),
            ty::ERR_INVALID_PARAMETER,
            "transfer {r:?}"
        );
        assert_eq!(
            rig.ctl(&set_scanout(0, 1, r)),
            ty::ERR_INVALID_PARAMETER,
            "scanout {r:?}"
        );
    }
    assert_eq!(
        rig.ctl(&set_scanout(0, 1, (0, 0, 0, 0))),
        ty::ERR_INVALID_PARAMETER
    );
    // Transfer offsets beyond the backing, and offsets that overflow.
    assert_eq!(
        rig.ctl(&transfer(1, (0, 0, 64, 32), 4)),
        ty::ERR_INVALID_PARAMETER
    );
    assert_eq!(
        rig.ctl(&transfer(1, (0, 0, 1, 1), u64::MAX - 2)),
        ty::ERR_INVALID_PARAMETER
    );
    assert_eq!(rig.ctl(&transfer(1, (0, 0, 1, 1), 8188)), ty::OK_NODATA);
    // Scanout ids.
    assert_eq!(
        rig.ctl(&set_scanout(1, 1, (0, 0, 4, 4))),
        ty::ERR_INVALID_SCANOUT_ID
    );
    assert_eq!(
        rig.ctl(&set_scanout(16, 0, (0, 0, 0, 0))),
        ty::ERR_INVALID_SCANOUT_ID
    );
    // A second backing.
    assert_eq!(rig.ctl(&attach(1, &[(0x40_0000, 16)])), ty::ERR_UNSPEC);
    assert!(rig.sink.take().is_empty(), "no refusal reached the display");
}

#[test]
fn backing_refusals() {
    let mut rig = Rig::new();
    assert_eq!(rig.ctl(&create(1, XRGB, 16, 16)), ty::OK_NODATA);
    // Use before any backing.
    assert_eq!(rig.ctl(&transfer(1, (0, 0, 16, 16), 0)), ty::ERR_UNSPEC);
    assert_eq!(rig.ctl(&set_scanout(0, 1, (0, 0, 16, 16))), ty::ERR_UNSPEC);
    assert_eq!(rig.ctl(&detach(1)), ty::ERR_UNSPEC);
    // Entries outside RAM, across its end, wrapping, empty.
    for e in [
        (MEM_SIZE, 16),
        (MEM_SIZE - 100, 200),
        (u64::MAX - 10, 100),
        (u64::MAX, 1),
    ] {
        assert_eq!(
            rig.ctl(&attach(1, &[(0x40_0000, 512), e])),
            ty::ERR_UNSPEC,
            "{e:x?}"
        );
    }
    assert_eq!(
        rig.ctl(&attach(1, &[(0x40_0000, 0)])),
        ty::ERR_INVALID_PARAMETER
    );
    // Entry counts: none, over the cap, more claimed than sent.
    assert_eq!(rig.ctl(&attach(1, &[])), ty::ERR_INVALID_PARAMETER);
    let mut req = attach(1, &[(0x40_0000, 16); 3]);
    req[28..32].copy_from_slice(&16385u32.to_le_bytes());
    assert_eq!(rig.ctl(&req), ty::ERR_INVALID_PARAMETER);
    req[28..32].copy_from_slice(&10u32.to_le_bytes());
    assert_eq!(rig.ctl(&req), ty::ERR_UNSPEC);
    // The most entries allowed (16384 x 16 bytes, all in RAM) are accepted.
    let many: Vec<(u64, u32)> = (0..16384).map(|i| (0x40_0000 + i * 64, 64)).collect();
    assert_eq!(rig.ctl(&attach(1, &many)), ty::OK_NODATA);
    assert_eq!(rig.ctl(&detach(1)), ty::OK_NODATA);
    // A backing smaller than the image: attach is fine, using it is not.
    assert_eq!(
        rig.ctl(&attach(1, &[(0x40_0000, 16 * 16 * 4 - 1)])),
        ty::OK_NODATA
    );
    assert_eq!(rig.ctl(&transfer(1, (0, 0, 1, 1), 0)), ty::ERR_UNSPEC);
    assert_eq!(rig.ctl(&set_scanout(0, 1, (0, 0, 16, 16))), ty::ERR_UNSPEC);
    assert_eq!(rig.ctl(&detach(1)), ty::OK_NODATA);
    assert_eq!(rig.ctl(&detach(1)), ty::ERR_UNSPEC, "already detached");
    assert!(rig.sink.take().is_empty());
}

#[test]
fn resource_limits() {
    let mut rig = Rig::new();
    for id in 1..=MAX_RESOURCES as u32 {
        assert_eq!(rig.ctl(&create(id, XRGB, 1, 1)), ty::OK_NODATA);
    }
    assert_eq!(rig.ctl(&create(5000, XRGB, 1, 1)), ty::ERR_OUT_OF_MEMORY);
    assert_eq!(rig.handler.state.resource_count(), MAX_RESOURCES);
    for id in 1..=MAX_RESOURCES as u32 {
        assert_eq!(rig.ctl(&unref(id)), ty::OK_NODATA);
    }
    assert_eq!(rig.handler.state.declared_bytes(), 0);
    // 128 MiB each: four fit in 512 MiB, the fifth does not; nothing is allocated.
    let (w, h) = (8192, (MAX_RESOURCE_BYTES / 4 / 8192) as u32);
    for id in 1..=(MAX_TOTAL_BYTES / MAX_RESOURCE_BYTES) as u32 {
        assert_eq!(rig.ctl(&create(id, XRGB, w, h)), ty::OK_NODATA);
    }
    assert_eq!(rig.ctl(&create(99, XRGB, w, h)), ty::ERR_OUT_OF_MEMORY);
    assert_eq!(
        rig.ctl(&create(99, XRGB, w, h + 1)),
        ty::ERR_INVALID_PARAMETER
    );
    assert_eq!(rig.ctl(&unref(1)), ty::OK_NODATA);
    assert_eq!(
        rig.ctl(&create(99, XRGB, w, h)),
        ty::OK_NODATA,
        "room again"
    );

    // Scatter-list entries in all resources together.
    let mut rig = Rig::new();
    let many: Vec<(u64, u32)> = (0..16384).map(|i| (0x40_0000 + i * 64, 64)).collect();
    let per_total = (super::state::MAX_TOTAL_BACKING_ENTRIES / many.len()) as u32;
    for id in 1..=per_total + 1 {
        assert_eq!(rig.ctl(&create(id, XRGB, 1, 1)), ty::OK_NODATA);
    }
    for id in 1..=per_total {
        assert_eq!(rig.ctl(&attach(id, &many)), ty::OK_NODATA);
    }
    assert_eq!(
        rig.ctl(&attach(per_total + 1, &many)),
        ty::ERR_OUT_OF_MEMORY
    );
    assert_eq!(
        rig.ctl(&attach(per_total + 1, &many[..1])),
        ty::ERR_OUT_OF_MEMORY
    );
    assert_eq!(rig.ctl(&detach(1)), ty::OK_NODATA);
    assert_eq!(
        rig.ctl(&attach(per_total + 1, &many)),
        ty::OK_NODATA,
        "room again"
    );
    assert_eq!(rig.ctl(&unref(2)), ty::OK_NODATA);
    assert_eq!(
        rig.ctl(&attach(1, &many)),
        ty::OK_NODATA,
        "unref frees entries too"
    );
}

#[test]
fn malformed_requests() {
    let mut rig = Rig::new();
    // Shorter than the header, shorter than the command, unknown, on the wrong queue.
    assert_eq!(rig.ctl(&[0u8; 10]), ty::ERR_UNSPEC);
    assert_eq!(rig.ctl(&create(1, XRGB, 4, 4)[..24]), ty::ERR_UNSPEC);
    assert_eq!(
        rig.ctl(&set_scanout(0, 0, (0, 0, 0, 0))[..40]),
        ty::ERR_UNSPEC
    );
    let ctx_create = virtio_gpu_ctrl_type_VIRTIO_GPU_CMD_CTX_CREATE;
    assert_eq!(
        rig.ctl(&bytes(abi::CtrlHeader(hdr(ctx_create)))),
        ty::ERR_UNSPEC
    );
    assert_eq!(
        rig.ctl(&bytes(abi::CtrlHeader(hdr(0xdead)))),
        ty::ERR_UNSPEC
    );
    assert_eq!(
        rig.ctl(&cursor(ty::MOVE_CURSOR, 0, 1, 1, (0, 0))),
        ty::ERR_UNSPEC
    );
    assert_eq!(rig.send(1, &create(1, XRGB, 4, 4)).0, ty::ERR_UNSPEC);
    assert_eq!(rig.handler.state.resource_count(), 0);

    // A control request without a writable buffer fails the device (its driver is broken).
    let mock = MockSplitQueue::new(rig.mem.as_ref(), 16);
    mock.add_desc_chains(&[d(REQ, 24, 0, 0)], 0).unwrap();
    let mut q: Queue = mock.create_queue().unwrap();
    assert!(process_queue(&mut rig.handler, 0, &mut q, &rig.mem).is_err());
    // ... and so does one whose response buffer cannot hold a header.
    let mock = MockSplitQueue::new(rig.mem.as_ref(), 16);
    mock.add_desc_chains(&[d(REQ, 24, N, 1), d(RESP, 23, W, 0)], 0)
        .unwrap();
    let mut q: Queue = mock.create_queue().unwrap();
    assert!(process_queue(&mut rig.handler, 0, &mut q, &rig.mem).is_err());
    assert!(rig.sink.take().is_empty());
}

#[test]
fn cursor_update_move_and_hide() {
    let mut rig = Rig::new();
    let entries = [(0x40_0000u64, 64 * 64 * 4)];
    let img: Vec<u8> = (0..64 * 64u32)
        .flat_map(|i| (0x8000_0000u32 | i).to_le_bytes())
        .collect();
    rig.write_stream(&entries, 0, &img);
    assert_eq!(rig.ctl(&create(5, ARGB, 64, 64)), ty::OK_NODATA);
    assert_eq!(rig.ctl(&attach(5, &entries)), ty::OK_NODATA);
    assert_eq!(rig.ctl(&transfer(5, (0, 0, 64, 64), 0)), ty::OK_NODATA);

    // Linux sends cursor commands without a response buffer.
    let req = cursor(ty::UPDATE_CURSOR, 5, 10, 20, (3, 4));
    rig.mem.write_slice(&req, GuestAddress(REQ)).unwrap();
    let mock = MockSplitQueue::new(rig.mem.as_ref(), 16);
    mock.add_desc_chains(&[d(REQ, req.len() as u32, 0, 0)], 0)
        .unwrap();
    let mut q: Queue = mock.create_queue().unwrap();
    process_queue(&mut rig.handler, 1, &mut q, &rig.mem).unwrap();
    assert_eq!(used(&rig.mem, mock.used_addr(), 0), (1, 0, 0));
    match &rig.sink.take()[..] {
        [Seen::Cursor(Some(c), 10, 20)] => {
            assert_eq!((c.width, c.height, c.hot_x, c.hot_y), (64, 64, 3, 4));
            assert_eq!(c.pixels.len(), 64 * 64);
            assert_eq!(c.pixels[0], 0x8000_0000);
            assert_eq!(c.pixels[64 * 64 - 1], 0x8000_0fff);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        rig.send(1, &cursor(ty::MOVE_CURSOR, 0, 30, 40, (0, 0))).0,
        ty::OK_NODATA
    );
    assert!(matches!(&rig.sink.take()[..], [Seen::Move(30, 40)]));
    assert_eq!(
        rig.send(1, &cursor(ty::UPDATE_CURSOR, 0, 1, 2, (0, 0))).0,
        ty::OK_NODATA
    );
    assert!(matches!(&rig.sink.take()[..], [Seen::Cursor(None, 1, 2)]));

    // Refusals: unknown, too big, no backing, another scanout.
    assert_eq!(
        rig.send(1, &cursor(ty::UPDATE_CURSOR, 9, 0, 0, (0, 0))).0,
        ty::ERR_INVALID_RESOURCE_ID
    );
    assert_eq!(rig.ctl(&create(6, ARGB, 512, 512)), ty::OK_NODATA);
    assert_eq!(
        rig.send(1, &cursor(ty::UPDATE_CURSOR, 6, 0, 0, (0, 0))).0,
        ty::ERR_INVALID_PARAMETER
    );
    assert_eq!(rig.ctl(&create(7, ARGB, 64, 64)), ty::OK_NODATA);
    assert_eq!(
        rig.send(1, &cursor(ty::UPDATE_CURSOR, 7, 0, 0, (0, 0))).0,
        ty::ERR_UNSPEC
    );
    let mut req = cursor(ty::MOVE_CURSOR, 0, 0, 0, (0, 0));
    req[24..28].copy_from_slice(&1u32.to_le_bytes());
    assert_eq!(rig.send(1, &req).0, ty::ERR_INVALID_SCANOUT_ID);
    assert!(rig.sink.take().is_empty());
}

#[test]
fn detach_of_the_scanout_turns_it_off() {
    let (mut rig, _) = framebuffer_rig();
    assert_eq!(rig.ctl(&set_scanout(0, 1, (0, 0, 64, 32))), ty::OK_NODATA);
    scanout_of(&rig.sink.take());
    assert_eq!(rig.ctl(&detach(1)), ty::OK_NODATA);
    assert!(matches!(&rig.sink.take()[..], [Seen::Scanout(None)]));
    assert_eq!(rig.ctl(&flush(1, (0, 0, 64, 32))), ty::OK_NODATA);
    assert!(rig.sink.take().is_empty(), "not shown any more: no flush");
    assert_eq!(rig.ctl(&set_scanout(0, 0, (0, 0, 0, 0))), ty::OK_NODATA);
    assert!(matches!(&rig.sink.take()[..], [Seen::Scanout(None)]));
}

/// Through the real transport: negotiation with EDID, two queues, a request answered on
/// the worker thread, then a resize announced with a config interrupt and a new
/// ConfigGeneration.
#[test]
fn through_the_transport() {
    use crate::devices::virtio::features;
    use crate::devices::virtio::mmio::{reg, MmioTransport};
    use crate::devices::virtio::test_utils::{bring_up, r, w, wait};
    use crate::devices::virtio::INT_VRING;

    let mem =
        Arc::new(GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)]).unwrap());
    let sink = Arc::new(Recorder::default());
    let gpu = Gpu::new(DisplayConfig {
        width: 1280,
        height: 800,
        edid: None,
        sink: sink.clone(),
    });
    let control = gpu.control();
    let irq = EventFd::new(EFD_NONBLOCK).unwrap();
    let mut t = MmioTransport::new(Box::new(gpu), mem.clone(), irq.try_clone().unwrap()).unwrap();
    assert_eq!(r(&mut t, reg::DEVICE_ID), 16);

    let mocks: Vec<_> = [0x1000u64, 0x8000]
        .iter()
        .map(|&a| MockSplitQueue::create(mem.as_ref(), GuestAddress(a), 16))
        .collect();
    bring_up(&mut t, features::VERSION_1 | F_EDID, 16, &mocks);

    mem.write_slice(
        abi::CtrlHeader(hdr(ty::GET_DISPLAY_INFO)).as_slice(),
        GuestAddress(REQ),
    )
    .unwrap();
    mocks[0]
        .add_desc_chains(&[d(REQ, 24, N, 1), d(RESP, RESP_LEN, W, 0)], 0)
        .unwrap();
    w(&mut t, reg::QUEUE_NOTIFY, 0);
    assert!(wait(&irq), "used-buffer interrupt");
    assert_eq!(r(&mut t, reg::INTERRUPT_STATUS) & INT_VRING, INT_VRING);
    assert_eq!(used(&mem, mocks[0].used_addr(), 0), (1, 0, 408));
    let mut info = abi::RespDisplayInfo::default();
    mem.read_slice(info.as_mut_slice(), GuestAddress(RESP))
        .unwrap();
    assert_eq!(info.0.hdr.type_, ty::OK_DISPLAY_INFO);
    assert_eq!(
        (info.0.pmodes[0].r.width, info.0.pmodes[0].r.height),
        (1280, 800)
    );
    w(&mut t, reg::INTERRUPT_ACK, INT_VRING);

    let generation = r(&mut t, reg::CONFIG_GENERATION);
    control.resize(1920, 1200, None);
    assert!(wait(&irq), "config-change interrupt");
    assert_eq!(r(&mut t, reg::INTERRUPT_STATUS), INT_CONFIG);
    assert_ne!(r(&mut t, reg::CONFIG_GENERATION), generation);
    assert_eq!(
        r(&mut t, reg::CONFIG),
        VIRTIO_GPU_EVENT_DISPLAY,
        "events_read"
    );
    w(&mut t, reg::CONFIG + 4, VIRTIO_GPU_EVENT_DISPLAY);
    assert_eq!(r(&mut t, reg::CONFIG), 0, "cleared through events_clear");
    assert_eq!(r(&mut t, reg::CONFIG + 8), 1, "num_scanouts");

    // A reset stops the worker and tells the display its images are gone.
    w(&mut t, reg::STATUS, 0);
    assert!(sink.take().iter().any(|s| matches!(s, Seen::Scanout(None))));
}

/// Linux's cursor buffers are dumb buffers, created XRGB8888; their fourth byte is still
/// the pointer's alpha, so transparent pixels must stay transparent (not opaque black).
#[test]
fn cursor_from_an_xrgb_dumb_buffer_keeps_its_alpha() {
    let mut rig = Rig::new();
    let entries = [(0x40_0000u64, 64 * 64 * 4)];
    // A transparent image with one opaque white pixel.
    let mut img = vec![0u8; 64 * 64 * 4];
    img[..4].copy_from_slice(&0xffff_ffffu32.to_le_bytes());
    rig.write_stream(&entries, 0, &img);
    assert_eq!(rig.ctl(&create(5, XRGB, 64, 64)), ty::OK_NODATA);
    assert_eq!(rig.ctl(&attach(5, &entries)), ty::OK_NODATA);
    assert_eq!(
        rig.send(1, &cursor(ty::UPDATE_CURSOR, 5, 10, 20, (0, 0))).0,
        ty::OK_NODATA
    );
    match &rig.sink.take()[..] {
        [Seen::Cursor(Some(c), 10, 20)] => {
            assert_eq!(c.pixels[0], 0xffff_ffff);
            assert_eq!(
                c.pixels[1], 0,
                "a transparent pixel became {:#x}",
                c.pixels[1]
            );
        }
        other => panic!("{other:?}"),
    }
}
