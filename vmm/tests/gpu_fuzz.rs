//! Bounded-time randomized test of the virtio-gpu parser and executor (stable Rust, no
//! fuzzing engine): random byte strings and mutated valid commands, with backing entries
//! in RAM, across its hole, past its end and wrapping, go through `GpuState::process`
//! against a small guest memory. Every request must get a whole response with a valid
//! type; nothing may panic; the resource limits must hold; and a presenter reading every
//! flushed rectangle (into destinations of random sizes) must not panic either.
//!
//! `GPU_FUZZ_SECS` (default 5) bounds the run; `GPU_FUZZ_SEED` replays a run (the seed is
//! printed at the start).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use vm_memory::GuestAddress;
use vmm::devices::virtio::gpu::abi::ty;
use vmm::devices::virtio::gpu::protocol::{QueueKind, HEADER_SIZE};
use vmm::devices::virtio::gpu::state::{MAX_RESOURCES, MAX_TOTAL_BYTES};
use vmm::devices::virtio::gpu::GpuState;
use vmm::display::{CursorImage, DisplayControl, DisplaySink, Framebuffer, Rect};
use vmm::vstate::memory::GuestMemoryMmap;

/// xorshift64*: small, good enough, reproducible.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next() % n
        }
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
    fn pick<T: Copy>(&mut self, v: &[T]) -> T {
        v[self.below(v.len() as u64) as usize]
    }
    /// A u32 that is often interesting (0, 1, bounds, near overflow).
    fn u32(&mut self) -> u32 {
        match self.below(4) {
            0 => self.pick(&[
                0,
                1,
                2,
                3,
                4,
                63,
                64,
                65,
                255,
                256,
                257,
                1024,
                16383,
                16384,
                16385,
                u32::MAX,
                u32::MAX - 1,
                1 << 31,
            ]),
            1 => self.below(300) as u32,
            2 => self.below(70) as u32,
            _ => self.next() as u32,
        }
    }
    fn id(&mut self) -> u32 {
        if self.chance(90) {
            self.below(6) as u32
        } else {
            self.u32()
        }
    }
}

/// Guest RAM: two regions with a hole between them.
const REGIONS: [(u64, usize); 2] = [(0, 1 << 20), (0x20_0000, 1 << 20)];

/// A presenter that reads every flushed rectangle, like the seat would.
struct Presenter {
    fb: Mutex<Option<Arc<Framebuffer>>>,
    dst: Mutex<(Vec<u8>, usize)>,
    flushes: Mutex<u64>,
}

impl DisplaySink for Presenter {
    fn set_scanout(&self, fb: Option<Arc<Framebuffer>>) {
        *self.fb.lock().unwrap() = fb;
    }
    fn flush(&self, rect: Rect) {
        *self.flushes.lock().unwrap() += 1;
        if let Some(fb) = self.fb.lock().unwrap().as_ref() {
            assert!(
                rect.fits_in(fb.width(), fb.height()),
                "{rect:?} outside the scanout"
            );
            let mut d = self.dst.lock().unwrap();
            let (buf, stride) = &mut *d;
            fb.copy_rect(rect, buf, *stride);
        }
    }
    fn cursor(&self, image: Option<Arc<CursorImage>>, _: u32, _: u32) {
        if let Some(c) = image {
            assert_eq!(
                c.pixels.len() as u64,
                u64::from(c.width) * u64::from(c.height)
            );
            assert!(c.width <= 256 && c.height <= 256);
            assert!(c.hot_x < c.width && c.hot_y < c.height);
        }
    }
    fn move_cursor(&self, _: u32, _: u32) {}
}

fn put_u32(v: &mut Vec<u8>, x: u32) {
    v.extend_from_slice(&x.to_le_bytes());
}

fn header(v: &mut Vec<u8>, rng: &mut Rng, kind: u32) {
    put_u32(v, kind);
    put_u32(v, if rng.chance(30) { 1 } else { 0 }); // FENCE
    v.extend_from_slice(&rng.next().to_le_bytes());
    put_u32(v, rng.below(3) as u32);
    put_u32(v, 0);
}

fn rect(v: &mut Vec<u8>, rng: &mut Rng) {
    for _ in 0..4 {
        let x = rng.u32();
        put_u32(v, x);
    }
}

/// A backing address: in RAM, near a region's end, in the hole, past RAM, or absurd.
fn address(rng: &mut Rng) -> u64 {
    match rng.below(6) {
        0 | 1 => rng.below(1 << 20) & !0xfff,
        2 => 0x20_0000 + rng.below(1 << 20),
        3 => (1 << 20) - rng.below(0x2000),
        4 => 0x30_0000 - rng.below(0x2000),
        _ => {
            let any = rng.next();
            rng.pick(&[
                0x10_0000,
                0x1f_ffff,
                0x30_0000,
                u64::MAX,
                u64::MAX - 4095,
                any,
            ])
        }
    }
}

fn valid_ish(rng: &mut Rng) -> (QueueKind, Vec<u8>) {
    let mut v = Vec::new();
    let kinds = [
        ty::GET_DISPLAY_INFO,
        ty::GET_EDID,
        ty::RESOURCE_CREATE_2D,
        ty::RESOURCE_CREATE_2D,
        ty::RESOURCE_UNREF,
        ty::SET_SCANOUT,
        ty::SET_SCANOUT,
        ty::RESOURCE_FLUSH,
        ty::RESOURCE_FLUSH,
        ty::TRANSFER_TO_HOST_2D,
        ty::RESOURCE_ATTACH_BACKING,
        ty::RESOURCE_ATTACH_BACKING,
        ty::RESOURCE_DETACH_BACKING,
        ty::UPDATE_CURSOR,
        ty::MOVE_CURSOR,
        264, // GET_CAPSET_INFO
        268, // RESOURCE_CREATE_BLOB
    ];
    let kind = rng.pick(&kinds);
    header(&mut v, rng, kind);
    let queue = match kind {
        ty::UPDATE_CURSOR | ty::MOVE_CURSOR => QueueKind::Cursor,
        _ => QueueKind::Control,
    };
    match kind {
        ty::GET_EDID => {
            put_u32(&mut v, if rng.chance(80) { 0 } else { rng.u32() });
            put_u32(&mut v, 0);
        }
        ty::RESOURCE_CREATE_2D => {
            let id = rng.id();
            put_u32(&mut v, id);
            let f = if rng.chance(80) {
                rng.pick(&[1, 2, 3, 4, 67, 68, 121, 134])
            } else {
                rng.u32()
            };
            put_u32(&mut v, f);
            for _ in 0..2 {
                let s = if rng.chance(60) {
                    rng.pick(&[1, 16, 64, 100, 256])
                } else {
                    rng.u32()
                };
                put_u32(&mut v, s);
            }
        }
        ty::RESOURCE_UNREF | ty::RESOURCE_DETACH_BACKING => {
            let id = rng.id();
            put_u32(&mut v, id);
            put_u32(&mut v, 0);
        }
        ty::SET_SCANOUT => {
            if rng.chance(60) {
                // A plausible rect.
                for _ in 0..2 {
                    put_u32(&mut v, rng.below(20) as u32);
                }
                for _ in 0..2 {
                    put_u32(&mut v, 1 + rng.below(120) as u32);
                }
            } else {
                rect(&mut v, rng);
            }
            put_u32(&mut v, if rng.chance(90) { 0 } else { rng.u32() });
            let id = rng.id();
            put_u32(&mut v, id);
        }
        ty::RESOURCE_FLUSH | ty::TRANSFER_TO_HOST_2D => {
            rect(&mut v, rng);
            if kind == ty::TRANSFER_TO_HOST_2D {
                let off = if rng.chance(70) {
                    rng.below(4096)
                } else {
                    rng.next()
                };
                v.extend_from_slice(&off.to_le_bytes());
            }
            let id = rng.id();
            put_u32(&mut v, id);
            put_u32(&mut v, 0);
        }
        ty::RESOURCE_ATTACH_BACKING => {
            let id = rng.id();
            put_u32(&mut v, id);
            let n = rng.below(40) as u32;
            let claimed = match rng.below(10) {
                0 => rng.u32(),
                1 => n + 1,
                _ => n,
            };
            put_u32(&mut v, claimed);
            for _ in 0..n {
                let a = address(rng);
                v.extend_from_slice(&a.to_le_bytes());
                let len = match rng.below(4) {
                    0 => rng.u32(),
                    1 => 4096,
                    _ => rng.below(0x20000) as u32,
                };
                put_u32(&mut v, len);
                put_u32(&mut v, 0);
            }
        }
        ty::UPDATE_CURSOR | ty::MOVE_CURSOR => {
            put_u32(&mut v, if rng.chance(90) { 0 } else { rng.u32() });
            for _ in 0..3 {
                let x = rng.u32();
                put_u32(&mut v, x);
            }
            let id = rng.id();
            put_u32(&mut v, id);
            for _ in 0..3 {
                let x = rng.u32();
                put_u32(&mut v, x);
            }
        }
        _ => {}
    }
    (queue, v)
}

/// A coherent sequence: create, attach a backing that covers the image (split into random
/// pieces in RAM), show it, transfer and flush random rectangles; so that flushes reach the
/// presenter and the copy paths run.
fn scenario(rng: &mut Rng) -> Vec<(QueueKind, Vec<u8>)> {
    let mut reqs = Vec::new();
    let id = 1 + rng.below(5) as u32;
    let (w, h) = (1 + rng.below(64) as u32, 1 + rng.below(64) as u32);
    // Free the id first (noise may have taken it).
    let mut v = Vec::new();
    header(&mut v, rng, ty::RESOURCE_UNREF);
    put_u32(&mut v, id);
    put_u32(&mut v, 0);
    reqs.push((QueueKind::Control, v));
    let mut v = Vec::new();
    header(&mut v, rng, ty::RESOURCE_CREATE_2D);
    for x in [id, rng.pick(&[1, 2, 3, 4, 67, 68, 121, 134]), w, h] {
        put_u32(&mut v, x);
    }
    reqs.push((QueueKind::Control, v));

    let mut need = u64::from(w) * u64::from(h) * 4;
    let mut entries = Vec::new();
    while need > 0 {
        let len = (1 + rng.below(need.min(6000))).min(need);
        let region = REGIONS[rng.below(2) as usize];
        let addr = region.0 + rng.below(region.1 as u64 - len);
        entries.push((addr, len as u32));
        need -= len;
    }
    let mut v = Vec::new();
    header(&mut v, rng, ty::RESOURCE_ATTACH_BACKING);
    put_u32(&mut v, id);
    put_u32(&mut v, entries.len() as u32);
    for (a, l) in entries {
        v.extend_from_slice(&a.to_le_bytes());
        put_u32(&mut v, l);
        put_u32(&mut v, 0);
    }
    reqs.push((QueueKind::Control, v));

    let sub = |rng: &mut Rng| {
        let x = rng.below(u64::from(w)) as u32;
        let y = rng.below(u64::from(h)) as u32;
        let rw = 1 + rng.below(u64::from(w - x)) as u32;
        let rh = 1 + rng.below(u64::from(h - y)) as u32;
        [x, y, rw, rh]
    };
    let mut v = Vec::new();
    header(&mut v, rng, ty::SET_SCANOUT);
    for x in sub(rng) {
        put_u32(&mut v, x);
    }
    put_u32(&mut v, 0);
    put_u32(&mut v, id);
    reqs.push((QueueKind::Control, v));
    for _ in 0..rng.below(6) {
        let kind = rng.pick(&[ty::TRANSFER_TO_HOST_2D, ty::RESOURCE_FLUSH]);
        let mut v = Vec::new();
        header(&mut v, rng, kind);
        for x in sub(rng) {
            put_u32(&mut v, x);
        }
        if kind == ty::TRANSFER_TO_HOST_2D {
            v.extend_from_slice(&0u64.to_le_bytes());
        }
        put_u32(&mut v, id);
        put_u32(&mut v, 0);
        reqs.push((QueueKind::Control, v));
    }
    let mut v = Vec::new();
    header(&mut v, rng, ty::UPDATE_CURSOR);
    for x in [0, rng.u32(), rng.u32(), 0, id, rng.u32(), rng.u32(), 0] {
        put_u32(&mut v, x);
    }
    reqs.push((QueueKind::Cursor, v));
    if rng.chance(70) {
        let mut v = Vec::new();
        let kind = rng.pick(&[ty::RESOURCE_UNREF, ty::RESOURCE_DETACH_BACKING]);
        header(&mut v, rng, kind);
        put_u32(&mut v, id);
        put_u32(&mut v, 0);
        reqs.push((QueueKind::Control, v));
    }
    reqs
}

fn mutate(rng: &mut Rng, v: &mut Vec<u8>) {
    for _ in 0..rng.below(4) {
        match rng.below(4) {
            0 if !v.is_empty() => {
                let i = rng.below(v.len() as u64) as usize;
                v[i] ^= 1 << rng.below(8);
            }
            1 if !v.is_empty() => {
                let i = rng.below(v.len() as u64) as usize;
                v[i] = rng.next() as u8;
            }
            2 => {
                let n = rng.below(v.len() as u64 + 1) as usize;
                v.truncate(n);
            }
            _ => {
                for _ in 0..rng.below(16) {
                    v.push(rng.next() as u8);
                }
            }
        }
    }
}

const VALID_TYPES: [u32; 8] = [
    ty::OK_NODATA,
    ty::OK_DISPLAY_INFO,
    ty::OK_EDID,
    ty::ERR_UNSPEC,
    ty::ERR_OUT_OF_MEMORY,
    ty::ERR_INVALID_SCANOUT_ID,
    ty::ERR_INVALID_RESOURCE_ID,
    ty::ERR_INVALID_PARAMETER,
];

#[test]
fn gpu_requests_never_panic_and_always_get_a_response() {
    let secs: u64 = std::env::var("GPU_FUZZ_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let seed: u64 = std::env::var("GPU_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
                | 1
        });
    eprintln!("gpu_fuzz: GPU_FUZZ_SEED={seed} GPU_FUZZ_SECS={secs}");
    let mut rng = Rng(seed);

    let ranges: Vec<(GuestAddress, usize)> =
        REGIONS.iter().map(|&(a, l)| (GuestAddress(a), l)).collect();
    let mem = Arc::new(GuestMemoryMmap::from_ranges(&ranges).unwrap());
    let presenter = Arc::new(Presenter {
        fb: Mutex::new(None),
        dst: Mutex::new((vec![0; 64 * 64 * 4], 256)),
        flushes: Mutex::new(0),
    });
    let control = DisplayControl::new(640, 480, None);
    let mut state = GpuState::new(mem, control.clone(), presenter.clone());

    let deadline = Instant::now() + Duration::from_secs(secs);
    let (mut requests, mut ok) = (0u64, 0u64);
    let mut out = Vec::new();
    while Instant::now() < deadline {
        for _ in 0..64 {
            let batch = if rng.chance(20) {
                let n = rng.below(200) as usize;
                let q = if rng.chance(50) {
                    QueueKind::Control
                } else {
                    QueueKind::Cursor
                };
                vec![(q, (0..n).map(|_| rng.next() as u8).collect())]
            } else if rng.chance(15) {
                scenario(&mut rng)
            } else {
                vec![valid_ish(&mut rng)]
            };
            let mutate_percent = if batch.len() > 1 { 3 } else { 30 };
            for (mut queue, mut req) in batch {
                if rng.chance(mutate_percent) {
                    mutate(&mut rng, &mut req);
                }
                if rng.chance(3) {
                    queue = QueueKind::Cursor;
                }
                if rng.chance(1) {
                    control.resize(rng.u32(), rng.u32(), None);
                }
                if rng.chance(2) {
                    let stride = rng.below(2048) as usize;
                    let len = rng.below(300_000) as usize;
                    *presenter.dst.lock().unwrap() = (vec![0; len], stride);
                }
                out.clear();
                let code = state.process(queue, &req, &mut out);
                requests += 1;
                assert!(
                    VALID_TYPES.contains(&code),
                    "seed {seed}: response type {code:#x} for {req:02x?}"
                );
                assert!(out.len() >= HEADER_SIZE, "seed {seed}: short response");
                assert_eq!(u32::from_le_bytes(out[..4].try_into().unwrap()), code);
                if code < ty::ERR_UNSPEC {
                    ok += 1;
                }
                assert!(state.resource_count() <= MAX_RESOURCES);
                assert!(state.declared_bytes() <= MAX_TOTAL_BYTES);
            }
        }
    }
    let flushes = *presenter.flushes.lock().unwrap();
    eprintln!("gpu_fuzz: {requests} requests, {ok} accepted, {flushes} flushes presented");
    assert!(requests > 1000, "the loop ran");
    assert!(
        ok > requests / 20,
        "valid-ish requests mostly reach the executor"
    );
    assert!(flushes > 0, "scenarios reach the presenter");
}
