//! The display the virtio-gpu device shows on, as the embedding program (the seat) sees it.
//!
//! There is no host-side copy of any guest image: a [`Framebuffer`] names the guest pages
//! that hold the scanout's pixels (the resource's backing, a scatter list of guest-physical
//! ranges already checked against guest RAM) and the presenter reads them with
//! [`Framebuffer::copy_rect`] when it presents, straight into its own buffer (a dumb buffer
//! mapped for scan-out). The device only tells the [`DisplaySink`] *what* changed
//! ([`DisplaySink::flush`] rectangles); the sink decides *when* to copy (e.g. coalesced once
//! per host vblank). A guest that rewrites its pages between flush and present shows the
//! newer pixels, which is what a real framebuffer does too.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use vm_memory::{Bytes, GuestAddress};

use crate::devices::virtio::Interrupt;
use crate::vstate::memory::GuestMemoryMmap;

/// Largest width or height of a display mode or resource.
pub const MAX_DIMENSION: u32 = 16384;
/// Largest EDID blob the device returns (`virtio_gpu_resp_edid::edid`).
pub const MAX_EDID_BYTES: usize = 1024;
/// Bytes per pixel of every format the device accepts.
pub const BYTES_PER_PIXEL: u64 = 4;

/// A rectangle in pixels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Rect {
    /// Left edge.
    pub x: u32,
    /// Top edge.
    pub y: u32,
    /// Width.
    pub width: u32,
    /// Height.
    pub height: u32,
}

impl Rect {
    /// A rectangle at (`x`, `y`) of `width` x `height`.
    pub const fn new(x: u32, y: u32, width: u32, height: u32) -> Self {
        Self {
            x,
            y,
            width,
            height,
        }
    }

    /// Whether it covers no pixel.
    pub fn is_empty(&self) -> bool {
        self.width == 0 || self.height == 0
    }

    /// Whether it lies inside a `width` x `height` area (u64 arithmetic: no overflow).
    pub fn fits_in(&self, width: u32, height: u32) -> bool {
        u64::from(self.x) + u64::from(self.width) <= u64::from(width)
            && u64::from(self.y) + u64::from(self.height) <= u64::from(height)
    }

    /// The part of `self` inside `other` (empty if they do not meet).
    pub fn intersect(&self, other: &Rect) -> Rect {
        let x0 = u64::from(self.x).max(u64::from(other.x));
        let y0 = u64::from(self.y).max(u64::from(other.y));
        let x1 = (u64::from(self.x) + u64::from(self.width))
            .min(u64::from(other.x) + u64::from(other.width));
        let y1 = (u64::from(self.y) + u64::from(self.height))
            .min(u64::from(other.y) + u64::from(other.height));
        if x1 <= x0 || y1 <= y0 {
            return Rect::default();
        }
        // Each bound came from u32 + u32 and the differences fit in u32.
        Rect::new(x0 as u32, y0 as u32, (x1 - x0) as u32, (y1 - y0) as u32)
    }
}

/// The 32-bit pixel formats of virtio-gpu 2D, named by their byte order in memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PixelFormat {
    /// Bytes B, G, R, A (DRM ARGB8888).
    B8G8R8A8,
    /// Bytes B, G, R, X (DRM XRGB8888: what Linux uses for its framebuffers).
    B8G8R8X8,
    /// Bytes A, R, G, B.
    A8R8G8B8,
    /// Bytes X, R, G, B.
    X8R8G8B8,
    /// Bytes R, G, B, A.
    R8G8B8A8,
    /// Bytes X, B, G, R.
    X8B8G8R8,
    /// Bytes A, B, G, R.
    A8B8G8R8,
    /// Bytes R, G, B, X.
    R8G8B8X8,
}

impl PixelFormat {
    /// The format for a `VIRTIO_GPU_FORMAT_*` value, if it is one of the 2D formats.
    #[allow(non_upper_case_globals)] // bindgen's names
    pub fn from_virtio(v: u32) -> Option<Self> {
        use virtio_bindings::virtio_gpu::*;
        Some(match v {
            virtio_gpu_formats_VIRTIO_GPU_FORMAT_B8G8R8A8_UNORM => Self::B8G8R8A8,
            virtio_gpu_formats_VIRTIO_GPU_FORMAT_B8G8R8X8_UNORM => Self::B8G8R8X8,
            virtio_gpu_formats_VIRTIO_GPU_FORMAT_A8R8G8B8_UNORM => Self::A8R8G8B8,
            virtio_gpu_formats_VIRTIO_GPU_FORMAT_X8R8G8B8_UNORM => Self::X8R8G8B8,
            virtio_gpu_formats_VIRTIO_GPU_FORMAT_R8G8B8A8_UNORM => Self::R8G8B8A8,
            virtio_gpu_formats_VIRTIO_GPU_FORMAT_X8B8G8R8_UNORM => Self::X8B8G8R8,
            virtio_gpu_formats_VIRTIO_GPU_FORMAT_A8B8G8R8_UNORM => Self::A8B8G8R8,
            virtio_gpu_formats_VIRTIO_GPU_FORMAT_R8G8B8X8_UNORM => Self::R8G8B8X8,
            _ => return None,
        })
    }

    /// Whether its memory layout is already XRGB8888/ARGB8888 (a row copies as is).
    pub fn is_native(self) -> bool {
        matches!(self, Self::B8G8R8A8 | Self::B8G8R8X8)
    }

    /// The same byte order with the padding byte read as alpha. For cursor images: Linux
    /// makes every dumb buffer XRGB8888 (B8G8R8X8), the cursor's included, and fills its
    /// fourth byte with the pointer's alpha (QEMU, too, reads cursor data as ARGB
    /// whatever the resource's format says).
    pub fn with_alpha(self) -> Self {
        match self {
            Self::B8G8R8X8 => Self::B8G8R8A8,
            Self::X8R8G8B8 => Self::A8R8G8B8,
            Self::R8G8B8X8 => Self::R8G8B8A8,
            Self::X8B8G8R8 => Self::A8B8G8R8,
            other => other,
        }
    }

    /// One pixel as ARGB8888 (`0xAARRGGBB`); formats without alpha give opaque pixels.
    pub fn to_argb(self, p: [u8; 4]) -> u32 {
        let (a, r, g, b) = match self {
            Self::B8G8R8A8 => (p[3], p[2], p[1], p[0]),
            Self::B8G8R8X8 => (0xff, p[2], p[1], p[0]),
            Self::A8R8G8B8 => (p[0], p[1], p[2], p[3]),
            Self::X8R8G8B8 => (0xff, p[1], p[2], p[3]),
            Self::R8G8B8A8 => (p[3], p[0], p[1], p[2]),
            Self::R8G8B8X8 => (0xff, p[0], p[1], p[2]),
            Self::A8B8G8R8 => (p[0], p[3], p[2], p[1]),
            Self::X8B8G8R8 => (0xff, p[3], p[2], p[1]),
        };
        u32::from_be_bytes([a, r, g, b])
    }
}

/// A resource's backing: guest-physical ranges, each checked to lie in guest RAM, read as
/// one byte stream (row-major pixels, `width * 4` bytes per row).
#[derive(Debug, Default)]
pub struct Backing {
    entries: Vec<(GuestAddress, u32)>,
    /// Offset in the stream where each entry starts (same length as `entries`).
    starts: Vec<u64>,
    total: u64,
}

impl Backing {
    /// A backing made of `entries`, which the caller checked against guest RAM.
    pub fn new(entries: Vec<(GuestAddress, u32)>) -> Self {
        let mut starts = Vec::with_capacity(entries.len());
        let mut total = 0u64;
        for &(_, len) in &entries {
            starts.push(total);
            total += u64::from(len);
        }
        Self {
            entries,
            starts,
            total,
        }
    }

    /// Bytes in the stream.
    pub fn len(&self) -> u64 {
        self.total
    }

    /// Whether the stream is empty.
    pub fn is_empty(&self) -> bool {
        self.total == 0
    }

    /// Number of scatter-list entries.
    pub fn entries(&self) -> usize {
        self.entries.len()
    }

    /// Copies the stream's bytes from `offset` into `out`, crossing entries as needed;
    /// returns false (leaving the rest of `out` as it was) if the stream ends first or a
    /// read fails.
    pub fn read(&self, mem: &GuestMemoryMmap, offset: u64, out: &mut [u8]) -> bool {
        // Index of the entry holding `offset`: the last one starting at or before it.
        let mut i = match self.starts.partition_point(|&s| s <= offset) {
            0 => return out.is_empty(),
            n => n - 1,
        };
        let mut skip = offset - self.starts[i];
        let mut done = 0usize;
        while done < out.len() {
            let Some(&(addr, len)) = self.entries.get(i) else {
                return false;
            };
            let avail = u64::from(len).saturating_sub(skip);
            let n = (avail.min((out.len() - done) as u64)) as usize;
            if n > 0 {
                let Some(at) = addr.0.checked_add(skip) else {
                    return false;
                };
                if mem
                    .read_slice(&mut out[done..done + n], GuestAddress(at))
                    .is_err()
                {
                    return false;
                }
                done += n;
            }
            skip = 0;
            i += 1;
        }
        true
    }
}

/// A scanout's image: a guest resource's backing, read at present time.
pub struct Framebuffer {
    mem: Arc<GuestMemoryMmap>,
    backing: Arc<Backing>,
    format: PixelFormat,
    /// Bytes per row of the resource.
    stride: u64,
    /// The part of the resource the scanout shows.
    src: Rect,
}

impl std::fmt::Debug for Framebuffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Framebuffer")
            .field("format", &self.format)
            .field("stride", &self.stride)
            .field("src", &self.src)
            .field("backing_entries", &self.backing.entries())
            .finish()
    }
}

impl Framebuffer {
    /// The image of `src` inside a resource `resource_width` pixels wide whose backing
    /// covers every row of `src` (checked by the device before it builds one).
    pub fn new(
        mem: Arc<GuestMemoryMmap>,
        backing: Arc<Backing>,
        format: PixelFormat,
        resource_width: u32,
        src: Rect,
    ) -> Self {
        Self {
            mem,
            backing,
            format,
            stride: u64::from(resource_width) * BYTES_PER_PIXEL,
            src,
        }
    }

    /// Width of the scanout rectangle.
    pub fn width(&self) -> u32 {
        self.src.width
    }

    /// Height of the scanout rectangle.
    pub fn height(&self) -> u32 {
        self.src.height
    }

    /// The guest's pixel format.
    pub fn format(&self) -> PixelFormat {
        self.format
    }

    /// The part of the resource shown (resource coordinates).
    pub fn source(&self) -> Rect {
        self.src
    }

    /// Copies `rect` (clipped to the framebuffer; coordinates relative to the scanout) into
    /// `dst`, an XRGB8888 image with `dst_stride` bytes per row, at (dst_x, dst_y) =
    /// (rect.x, rect.y). Converts other 32-bit formats to XRGB8888; B8G8R8X8/B8G8R8A8 copy
    /// row by row with memcpy of contiguous runs (the backing is a scatter list: rows may
    /// span entries). Never panics on any rect or dst size (clips to dst too).
    pub fn copy_rect(&self, rect: Rect, dst: &mut [u8], dst_stride: usize) {
        self.copy_rect_at(rect, dst, dst_stride, false)
    }

    /// Like [`Framebuffer::copy_rect`], but `dst` begins at the rectangle's top-left pixel
    /// (a presenter hands out the part of its buffer where the rectangle goes).
    pub fn copy_rect_to(&self, rect: Rect, dst: &mut [u8], dst_stride: usize) {
        self.copy_rect_at(rect, dst, dst_stride, true)
    }

    fn copy_rect_at(&self, rect: Rect, dst: &mut [u8], dst_stride: usize, at_origin: bool) {
        let rect = rect.intersect(&Rect::new(0, 0, self.src.width, self.src.height));
        if rect.is_empty() || dst_stride == 0 {
            return;
        }
        // Clip to the destination: whole pixels per row, rows that fit in `dst`.
        let dst_cols = (dst_stride / 4) as u64;
        let x0 = u64::from(rect.x);
        // Where the rectangle's first pixel goes in `dst`.
        let (dst_x, dst_y0) = if at_origin {
            (0, 0)
        } else {
            (x0, u64::from(rect.y))
        };
        if dst_x >= dst_cols {
            return;
        }
        let cols = u64::from(rect.width).min(dst_cols - dst_x) as usize;
        let row_bytes = cols * 4;
        let mut tmp = if self.format.is_native() {
            Vec::new()
        } else {
            vec![0u8; row_bytes]
        };
        for row in 0..u64::from(rect.height) {
            let y = u64::from(rect.y) + row;
            // Destination row; stop at the first that does not fit.
            let Some(d0) = ((dst_y0 + row) as usize)
                .checked_mul(dst_stride)
                .and_then(|o| o.checked_add(dst_x as usize * 4))
            else {
                return;
            };
            let Some(out) = dst.get_mut(d0..d0.saturating_add(row_bytes)) else {
                return;
            };
            if out.len() != row_bytes {
                return;
            }
            // Source offset in the backing (u64: at most 16384 * 16384 * 4 + ...).
            let sy = u64::from(self.src.y) + y;
            let sx = u64::from(self.src.x) + x0;
            let off = sy * self.stride + sx * BYTES_PER_PIXEL;
            if self.format.is_native() {
                if !self.backing.read(&self.mem, off, out) {
                    out.fill(0);
                }
            } else {
                if !self.backing.read(&self.mem, off, &mut tmp) {
                    tmp.fill(0);
                }
                for (o, i) in out.chunks_exact_mut(4).zip(tmp.chunks_exact(4)) {
                    let argb = self.format.to_argb([i[0], i[1], i[2], i[3]]);
                    o.copy_from_slice(&argb.to_le_bytes());
                }
            }
        }
    }
}

/// The guest's pointer image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CursorImage {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// Hot spot, from the left.
    pub hot_x: u32,
    /// Hot spot, from the top.
    pub hot_y: u32,
    /// ARGB8888 pixels, row-major, `width * height` of them.
    pub pixels: Vec<u32>,
}

/// Where the virtio-gpu device shows what the guest draws. Called from the device's
/// worker thread: implementations must return quickly (record and wake the presenter).
pub trait DisplaySink: Send + Sync {
    /// The guest showed a new image on the scanout (or disabled it: None).
    fn set_scanout(&self, fb: Option<Arc<Framebuffer>>);
    /// The guest flushed this rectangle of the scanout image (scanout coordinates).
    fn flush(&self, rect: Rect);
    /// The guest's pointer image changed (None: hidden), at (x, y).
    fn cursor(&self, image: Option<Arc<CursorImage>>, x: u32, y: u32);
    /// The guest moved its pointer image.
    fn move_cursor(&self, x: u32, y: u32);
}

/// The display a VM gets: the monitor's initial mode and where images go.
pub struct DisplayConfig {
    /// Mode width in pixels (1..=16384).
    pub width: u32,
    /// Mode height in pixels (1..=16384).
    pub height: u32,
    /// The monitor's EDID (at most 1024 bytes); `None` synthesizes one for the mode.
    pub edid: Option<Vec<u8>>,
    /// Receives scanout changes, flushes and the cursor.
    pub sink: Arc<dyn DisplaySink>,
}

impl std::fmt::Debug for DisplayConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DisplayConfig")
            .field("width", &self.width)
            .field("height", &self.height)
            .field("edid_bytes", &self.edid.as_ref().map(Vec::len))
            .finish_non_exhaustive()
    }
}

/// The monitor's current mode, as the guest reads it with GET_DISPLAY_INFO and GET_EDID.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DisplayMode {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// The monitor's EDID, if it has one (else the device synthesizes one).
    pub edid: Option<Vec<u8>>,
}

struct DisplayShared {
    mode: Mutex<DisplayMode>,
    /// `virtio_gpu_config::events_read`.
    events: AtomicU32,
    /// The device's interrupt while a driver runs it.
    interrupt: Mutex<Option<Arc<Interrupt>>>,
}

/// Changes the display mode the guest sees at run time (thread-safe, cheap to clone).
#[derive(Clone)]
pub struct DisplayControl {
    shared: Arc<DisplayShared>,
}

impl std::fmt::Debug for DisplayControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DisplayControl")
            .field("mode", &self.mode())
            .finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// `mode` with its size brought into 1..=[`MAX_DIMENSION`] and an oversized EDID dropped.
fn sanitize(width: u32, height: u32, edid: Option<Vec<u8>>) -> DisplayMode {
    let edid = match edid {
        Some(e) if e.len() > MAX_EDID_BYTES || e.is_empty() => {
            log::warn!(
                "display: ignoring a {}-byte EDID (1..={MAX_EDID_BYTES}); synthesizing one",
                e.len()
            );
            None
        }
        e => e,
    };
    DisplayMode {
        width: width.clamp(1, MAX_DIMENSION),
        height: height.clamp(1, MAX_DIMENSION),
        edid,
    }
}

impl DisplayControl {
    /// A display of `width` x `height` (clamped to 1..=16384) with `edid` (ignored if
    /// larger than 1024 bytes). Machines create theirs from [`DisplayConfig`].
    pub fn new(width: u32, height: u32, edid: Option<Vec<u8>>) -> Self {
        Self {
            shared: Arc::new(DisplayShared {
                mode: Mutex::new(sanitize(width, height, edid)),
                events: AtomicU32::new(0),
                interrupt: Mutex::new(None),
            }),
        }
    }

    /// The monitor changed: the guest is told (display event + configuration-change
    /// interrupt) and reads the new mode and EDID. Sizes are clamped to 1..=16384; an
    /// EDID over 1024 bytes is replaced by a synthesized one.
    pub fn resize(&self, width: u32, height: u32, edid: Option<Vec<u8>>) {
        *lock(&self.shared.mode) = sanitize(width, height, edid);
        self.shared.events.fetch_or(
            virtio_bindings::virtio_gpu::VIRTIO_GPU_EVENT_DISPLAY,
            Ordering::SeqCst,
        );
        if let Some(irq) = lock(&self.shared.interrupt).as_ref() {
            irq.signal_config_change();
        }
        log::info!("display: resized to {width}x{height}");
    }

    /// The current mode.
    pub fn mode(&self) -> DisplayMode {
        lock(&self.shared.mode).clone()
    }

    /// `events_read` of the configuration space.
    pub(crate) fn events(&self) -> u32 {
        self.shared.events.load(Ordering::SeqCst)
    }

    /// A driver write to `events_clear`.
    pub(crate) fn clear_events(&self, bits: u32) {
        self.shared.events.fetch_and(!bits, Ordering::SeqCst);
    }

    /// Where to raise configuration-change interrupts (None: no driver running).
    pub(crate) fn set_interrupt(&self, irq: Option<Arc<Interrupt>>) {
        *lock(&self.shared.interrupt) = irq;
    }
}
