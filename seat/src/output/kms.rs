//! The monitor through KMS with two dumb buffers, presented by page flip.
//!
//! Opening: the first `/dev/dri/card*` with a connected connector; that connector's
//! preferred mode; a CRTC one of its encoders can drive; two XRGB8888 dumb buffers with
//! framebuffers; one `set_crtc`. Opening the card node makes us DRM master (nobody else
//! holds it while the session runs).
//!
//! Presenting: `page_flip` with an event, at most one in flight. While it is in flight
//! [`Output::can_present`] is false and the seat keeps accumulating damage; the flip
//! event (the DRM fd turns readable) ends it. The buffer that just left the screen then
//! lacks what the last frame changed: each buffer keeps the rectangles it is missing,
//! and those are copied from the front before the seat draws again, so only damaged
//! rectangles are ever copied. (That copy reads the front dumb buffer, which is slow on
//! VRAM; it is bounded by the damage of one frame.)
//!
//! Drivers that cannot flip (`EINVAL`, `EOPNOTSUPP`) get one buffer: the seat draws into
//! what is on screen and `DIRTYFB` with clip rectangles tells the driver what changed
//! (virtio-gpu needs it; bochs answers `ENOSYS`, which is ignored). That mode is paced by
//! a timer. The pointer is drawn in software by the seat (no cursor plane is used).

use super::Output;
use crate::rect::Damage;
use crate::{pixels, Error, Rect};
use drm::buffer::DrmFourcc;
use drm::control::dumbbuffer::DumbBuffer;
use drm::control::{
    connector, crtc, framebuffer, ClipRect, Device as ControlDevice, Mode, ModeTypeFlags,
    PageFlipFlags,
};
use drm::Device;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The DRM card node as the `drm` crate's device traits want it.
struct Card(File);

impl AsFd for Card {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}
impl Device for Card {}
impl ControlDevice for Card {}

/// `struct drm_mode_map_dumb` (the `drm` crate's mapping borrows the buffer, which does
/// not fit an output that owns both).
#[repr(C)]
struct MapDumb {
    handle: u32,
    pad: u32,
    offset: u64,
}
/// `DRM_IOWR(0xB3, struct drm_mode_map_dumb)`.
const DRM_IOCTL_MODE_MAP_DUMB: libc::c_ulong = 0xC010_64B3;

/// How long a page flip may go without its completion event before the seat stops
/// waiting for it (fifteen frames at 60 Hz). Without a bound, one lost event would freeze
/// the screen for the rest of the session, the terminal's own menu included: seen once
/// in several nested runs of the Debian desktop test, cause not found.
const FLIP_TIMEOUT: Duration = Duration::from_millis(250);

/// One scanout buffer: the dumb buffer, its framebuffer, its mapping, and the
/// rectangles it lacks compared with what is on screen.
struct Buffer {
    dumb: DumbBuffer,
    fb: framebuffer::Handle,
    map: *mut u8,
    len: usize,
    stale: Damage,
}

impl Buffer {
    fn bytes(&mut self) -> &mut [u8] {
        // SAFETY: `map` is a live MAP_SHARED mapping of `len` bytes owned by this buffer
        // (unmapped only in KmsOutput::drop), and `&mut self` makes this the only view.
        unsafe { std::slice::from_raw_parts_mut(self.map, self.len) }
    }
}

/// A KMS output; see the module documentation.
pub struct KmsOutput {
    card: Card,
    path: PathBuf,
    crtc: crtc::Handle,
    size: (u32, u32),
    pitch: usize,
    buffers: Vec<Buffer>,
    /// Index of the buffer on screen (or about to be, while a flip is in flight).
    front: usize,
    flipping: bool,
    flip_pending: bool,
    /// When the flip in flight was asked for.
    flip_sent: Instant,
    /// Flips whose event never came (logged at warn the first time).
    lost_flips: u64,
    edid: Option<Vec<u8>>,
}

// SAFETY: the raw mapping pointers are owned by the output and only used through
// `&mut self`; moving the output to the seat thread moves them with it.
unsafe impl Send for KmsOutput {}

fn io_err(what: String) -> impl FnOnce(io::Error) -> Error {
    move |source| Error::Io { what, source }
}

impl KmsOutput {
    /// Opens the first card with a connected monitor.
    pub fn open() -> Result<KmsOutput, Error> {
        let mut cards: Vec<PathBuf> = std::fs::read_dir("/dev/dri")
            .map_err(io_err("listing /dev/dri".into()))?
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("card"))
            })
            .collect();
        cards.sort();
        let mut last = Error::NoDisplay;
        for path in cards {
            match KmsOutput::open_card(&path) {
                Ok(out) => return Ok(out),
                Err(e) => {
                    log::info!("seat: {}: {e}", path.display());
                    last = e;
                }
            }
        }
        Err(last)
    }

    /// Opens one card: a connected connector, its preferred mode, a CRTC, two buffers.
    pub fn open_card(path: &Path) -> Result<KmsOutput, Error> {
        let shown = path.display().to_string();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_CLOEXEC | libc::O_NONBLOCK)
            .open(path)
            .map_err(io_err(format!("opening {shown}")))?;
        let card = Card(file);
        let res = card
            .resource_handles()
            .map_err(io_err(format!("{shown}: reading resources")))?;
        let mut chosen = None;
        for &handle in res.connectors() {
            let info = match card.get_connector(handle, true) {
                Ok(i) => i,
                Err(e) => {
                    log::debug!("seat: {shown}: connector {handle:?}: {e}");
                    continue;
                }
            };
            if info.state() != connector::State::Connected || info.modes().is_empty() {
                continue;
            }
            let mode = info
                .modes()
                .iter()
                .find(|m| m.mode_type().contains(ModeTypeFlags::PREFERRED))
                .unwrap_or(&info.modes()[0]);
            let crtc = info
                .current_encoder()
                .into_iter()
                .chain(info.encoders().iter().copied())
                .filter_map(|e| card.get_encoder(e).ok())
                .find_map(|enc| {
                    enc.crtc()
                        .or_else(|| res.filter_crtcs(enc.possible_crtcs()).first().copied())
                });
            if let Some(crtc) = crtc {
                chosen = Some((handle, *mode, crtc));
                break;
            }
            log::info!("seat: {shown}: connector {handle:?} has no usable CRTC");
        }
        let Some((connector, mode, crtc)) = chosen else {
            return Err(Error::NoDisplay);
        };
        let (w, h) = mode.size();
        let size = (u32::from(w), u32::from(h));
        log::info!(
            "seat: {shown}: {}x{}@{} on connector {connector:?}, crtc {crtc:?}",
            size.0,
            size.1,
            mode.vrefresh()
        );
        let edid = read_edid(&card, connector);
        let mut out = KmsOutput {
            card,
            path: path.to_path_buf(),
            crtc,
            size,
            pitch: 0,
            buffers: Vec::new(),
            front: 0,
            flipping: true,
            flip_pending: false,
            flip_sent: Instant::now(),
            lost_flips: 0,
            edid,
        };
        for _ in 0..2 {
            let buffer = out.create_buffer()?;
            out.pitch = buffer.dumb_pitch();
            out.buffers.push(buffer);
        }
        if out.buffers[0].dumb_pitch() != out.buffers[1].dumb_pitch() {
            return Err(Error::Unsupported(format!(
                "{shown}: the two dumb buffers have different pitches"
            )));
        }
        out.set_crtc(0, connector, mode)?;
        Ok(out)
    }

    fn create_buffer(&mut self) -> Result<Buffer, Error> {
        let shown = self.path.display().to_string();
        let dumb = self
            .card
            .create_dumb_buffer(self.size, DrmFourcc::Xrgb8888, 32)
            .map_err(io_err(format!("{shown}: creating a dumb buffer")))?;
        let fb = match self.card.add_framebuffer(&dumb, 24, 32) {
            Ok(fb) => fb,
            Err(e) => {
                let _ = self.card.destroy_dumb_buffer(dumb);
                return Err(Error::Io {
                    what: format!("{shown}: adding a framebuffer"),
                    source: e,
                });
            }
        };
        use drm::buffer::Buffer as _;
        let len = dumb.pitch() as usize * self.size.1 as usize;
        let mut req = MapDumb {
            handle: u32::from(dumb.handle()),
            pad: 0,
            offset: 0,
        };
        // SAFETY: MAP_DUMB reads and writes exactly one `drm_mode_map_dumb`.
        let r = unsafe {
            libc::ioctl(
                self.card.0.as_raw_fd(),
                DRM_IOCTL_MODE_MAP_DUMB as _,
                &mut req as *mut MapDumb,
            )
        };
        let map = if r == 0 {
            // SAFETY: mapping `len` bytes of the buffer at the offset the kernel gave.
            unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    len,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_SHARED,
                    self.card.0.as_raw_fd(),
                    req.offset as libc::off_t,
                )
            }
        } else {
            libc::MAP_FAILED
        };
        if map == libc::MAP_FAILED {
            let source = io::Error::last_os_error();
            let _ = self.card.destroy_framebuffer(fb);
            let _ = self.card.destroy_dumb_buffer(dumb);
            return Err(Error::Io {
                what: format!("{shown}: mapping a dumb buffer"),
                source,
            });
        }
        let mut buffer = Buffer {
            dumb,
            fb,
            map: map as *mut u8,
            len,
            stale: Damage::new(),
        };
        buffer.bytes().fill(0);
        Ok(buffer)
    }

    fn set_crtc(&mut self, index: usize, conn: connector::Handle, mode: Mode) -> Result<(), Error> {
        self.card
            .set_crtc(
                self.crtc,
                Some(self.buffers[index].fb),
                (0, 0),
                &[conn],
                Some(mode),
            )
            .map_err(io_err(format!("{}: set_crtc", self.path.display())))?;
        self.front = index;
        Ok(())
    }

    fn back(&self) -> usize {
        if self.flipping {
            1 - self.front
        } else {
            self.front
        }
    }

    /// Front-buffer mode: tell the driver which rectangles changed.
    fn dirty(&self, damage: &[Rect]) -> Result<(), Error> {
        let clips: Vec<ClipRect> = damage
            .iter()
            .map(|r| r.clip(self.size.0, self.size.1))
            .filter(|r| !r.is_empty())
            .map(|r| {
                let c = |v: u32| v.min(u32::from(u16::MAX)) as u16;
                ClipRect::new(c(r.x), c(r.y), c(r.right()), c(r.bottom()))
            })
            .collect();
        if clips.is_empty() {
            return Ok(());
        }
        match self
            .card
            .dirty_framebuffer(self.buffers[self.front].fb, &clips)
        {
            Ok(()) => Ok(()),
            // Drivers that scan out the buffer directly need no hint.
            Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => Ok(()),
            Err(e) => Err(Error::Io {
                what: format!("{}: DIRTYFB", self.path.display()),
                source: e,
            }),
        }
    }

    /// The two buffers at once: (`src`, `dst`), which must differ.
    fn pair(&mut self, src: usize, dst: usize) -> (&mut Buffer, &mut Buffer) {
        let (a, b) = self.buffers.split_at_mut(1);
        if src == 0 && dst == 1 {
            (&mut a[0], &mut b[0])
        } else {
            (&mut b[0], &mut a[0])
        }
    }

    /// The flip in flight has completed (or is taken as lost): bring the new back buffer
    /// up to date, only what it lacks.
    fn flip_done(&mut self) {
        if !self.flipping {
            return;
        }
        let (front, back) = (self.front, self.back());
        let pitch = self.pitch;
        let stale = self.buffers[back].stale.take();
        if !stale.is_empty() {
            let (src, dst) = self.pair(front, back);
            let src: &[u8] = src.bytes();
            for r in stale {
                pixels::copy_rect(src, pitch, dst.bytes(), pitch, r);
            }
        }
    }

    /// Waits (a bounded time) for the flip in flight, at shutdown.
    fn finish_flip(&mut self) {
        for _ in 0..10 {
            if !self.flip_pending {
                return;
            }
            let mut pfd = libc::pollfd {
                fd: self.card.0.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            unsafe { libc::poll(&mut pfd, 1, 20) };
            let _ = self.dispatch();
        }
        self.flip_pending = false;
    }
}

impl Buffer {
    fn dumb_pitch(&self) -> usize {
        use drm::buffer::Buffer as _;
        self.dumb.pitch() as usize
    }
}

/// The connector's EDID property blob, if it has one.
fn read_edid(card: &Card, conn: connector::Handle) -> Option<Vec<u8>> {
    let props = card.get_properties(conn).ok()?;
    for (handle, value) in props.iter() {
        let Ok(info) = card.get_property(*handle) else {
            continue;
        };
        if info.name().to_bytes() == b"EDID" && *value != 0 {
            return card.get_property_blob(*value).ok();
        }
    }
    None
}

impl Output for KmsOutput {
    fn size(&self) -> (u32, u32) {
        self.size
    }

    fn stride(&self) -> usize {
        self.pitch
    }

    fn back_buffer(&mut self) -> &mut [u8] {
        let back = self.back();
        self.buffers[back].bytes()
    }

    fn present(&mut self, damage: &[Rect]) -> Result<(), Error> {
        if !self.flipping {
            return self.dirty(damage);
        }
        if self.flip_pending {
            // Only after FLIP_TIMEOUT (can_present): the event is taken as lost.
            self.lost_flips += 1;
            if self.lost_flips == 1 {
                log::warn!(
                    "seat: {}: no page-flip event after {} ms; presenting without it",
                    self.path.display(),
                    FLIP_TIMEOUT.as_millis()
                );
            } else {
                log::debug!("seat: page-flip events lost: {}", self.lost_flips);
            }
            self.flip_pending = false;
            self.flip_done();
        }
        let back = self.back();
        let mut flip =
            self.card
                .page_flip(self.crtc, self.buffers[back].fb, PageFlipFlags::EVENT, None);
        if flip
            .as_ref()
            .is_err_and(|e| e.raw_os_error() == Some(libc::EBUSY))
        {
            // The kernel still has the old flip: give it one more frame, then retry.
            self.flip_pending = true;
            self.finish_flip();
            flip =
                self.card
                    .page_flip(self.crtc, self.buffers[back].fb, PageFlipFlags::EVENT, None);
        }
        match flip {
            Ok(()) => {
                self.flip_sent = Instant::now();
                let old = self.front;
                for r in damage {
                    self.buffers[old].stale.add(*r);
                }
                self.front = back;
                self.flip_pending = true;
                Ok(())
            }
            Err(e)
                if e.raw_os_error() == Some(libc::EINVAL)
                    || e.raw_os_error() == Some(libc::EOPNOTSUPP) =>
            {
                log::warn!(
                    "seat: {}: page flip unsupported ({e}); drawing into the front buffer with DIRTYFB",
                    self.path.display()
                );
                // Bring the frame just drawn on screen, then keep drawing into it.
                let front = self.front;
                self.buffers[front].stale.take();
                self.buffers[back].stale.take();
                let pitch = self.pitch;
                let full = Rect::new(0, 0, self.size.0, self.size.1);
                let (src, dst) = self.pair(back, front);
                pixels::copy_rect(src.bytes(), pitch, dst.bytes(), pitch, full);
                self.flipping = false;
                self.dirty(&[full])
            }
            Err(e) => Err(Error::Io {
                what: format!("{}: page flip", self.path.display()),
                source: e,
            }),
        }
    }

    fn can_present(&self) -> bool {
        !self.flip_pending || self.flip_sent.elapsed() >= FLIP_TIMEOUT
    }

    fn present_retry_in(&self) -> Option<Duration> {
        self.flip_pending
            .then(|| FLIP_TIMEOUT.saturating_sub(self.flip_sent.elapsed()))
    }

    fn poll_fd(&self) -> Option<RawFd> {
        Some(self.card.0.as_raw_fd())
    }

    fn dispatch(&mut self) -> Result<(), Error> {
        let events = match self.card.receive_events() {
            Ok(events) => events,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) => {
                return Err(Error::Io {
                    what: format!("{}: reading DRM events", self.path.display()),
                    source: e,
                })
            }
        };
        for event in events {
            if let drm::control::Event::PageFlip(_) = event {
                if self.flip_pending {
                    self.flip_pending = false;
                    self.flip_done();
                }
            }
        }
        Ok(())
    }

    fn frame_interval(&self) -> Option<Duration> {
        if self.flipping {
            None
        } else {
            Some(super::TIMER_FRAME)
        }
    }

    fn edid(&self) -> Option<Vec<u8>> {
        self.edid.clone()
    }

    fn release(&mut self) {
        self.finish_flip();
        for b in &mut self.buffers {
            b.bytes().fill(0);
        }
        let full = Rect::new(0, 0, self.size.0, self.size.1);
        if self.flipping {
            if self.present(&[full]).is_ok() {
                self.finish_flip();
            }
        } else {
            let _ = self.dirty(&[full]);
        }
        if let Err(e) = self.card.release_master_lock() {
            log::debug!("seat: {}: dropping DRM master: {e}", self.path.display());
        }
    }
}

impl Drop for KmsOutput {
    fn drop(&mut self) {
        for b in self.buffers.drain(..) {
            // SAFETY: unmapping the mapping made in create_buffer, used nowhere else now.
            unsafe { libc::munmap(b.map as *mut libc::c_void, b.len) };
            let _ = self.card.destroy_framebuffer(b.fb);
            let _ = self.card.destroy_dumb_buffer(b.dumb);
        }
    }
}
