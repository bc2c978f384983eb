//! The virtio-gpu executor: the resource table, the scanout and the cursor, and every check
//! a parsed [`Command`] must pass against them before it has any effect.
//!
//! A resource is its size, format and backing (a scatter list of guest pages); there is no
//! host copy of its pixels. TRANSFER_TO_HOST_2D therefore only validates; RESOURCE_FLUSH on
//! the scanned-out resource tells the [`DisplaySink`] which rectangle changed, and the
//! presenter reads the pixels from guest RAM through the [`Framebuffer`] it got with
//! SET_SCANOUT.
//!
//! Host memory is bounded whatever the guest does: at most [`MAX_RESOURCES`] resources,
//! each of at most [`MAX_RESOURCE_BYTES`] and together [`MAX_TOTAL_BYTES`] (declared
//! sizes: nothing is allocated for pixels), at most
//! [`MAX_BACKING_ENTRIES`](super::protocol::MAX_BACKING_ENTRIES) scatter-list entries per
//! resource and [`MAX_TOTAL_BACKING_ENTRIES`] in all, cursors of at most
//! [`MAX_CURSOR_SIZE`] squared.

use std::collections::HashMap;
use std::sync::Arc;

use vm_memory::{GuestAddress, GuestMemoryBackend};

use super::edid;
use super::protocol::{
    encode, parse, Command, CursorPos, ErrorCode, MemEntry, QueueKind, Response,
};
use crate::display::{
    Backing, CursorImage, DisplayControl, DisplaySink, Framebuffer, PixelFormat, Rect,
    BYTES_PER_PIXEL, MAX_DIMENSION,
};
use crate::vstate::memory::GuestMemoryMmap;

/// Most resources alive at once.
pub const MAX_RESOURCES: usize = 1024;
/// Largest resource (width * height * 4): a 8192 x 4096 image.
pub const MAX_RESOURCE_BYTES: u64 = 128 << 20;
/// Sum of all resources' declared sizes.
pub const MAX_TOTAL_BYTES: u64 = 512 << 20;
/// Scatter-list entries of all resources together (16 bytes of host memory each).
pub const MAX_TOTAL_BACKING_ENTRIES: usize = 256 * 1024;
/// Largest cursor image side (Linux uses 64).
pub const MAX_CURSOR_SIZE: u32 = 256;

struct Resource {
    format: PixelFormat,
    width: u32,
    height: u32,
    backing: Option<Arc<Backing>>,
}

impl Resource {
    /// width * height * 4 (at most 16384 * 16384 * 4: no overflow in u64).
    fn bytes(&self) -> u64 {
        u64::from(self.width) * u64::from(self.height) * BYTES_PER_PIXEL
    }

    /// The backing, if it holds every pixel.
    fn full_backing(&self) -> Result<&Arc<Backing>, ErrorCode> {
        match &self.backing {
            Some(b) if b.len() >= self.bytes() => Ok(b),
            _ => Err(ErrorCode::Unspec),
        }
    }
}

/// The device's state for one driver session (created at activation).
pub struct GpuState {
    mem: Arc<GuestMemoryMmap>,
    control: DisplayControl,
    sink: Arc<dyn DisplaySink>,
    resources: HashMap<u32, Resource>,
    declared_bytes: u64,
    backing_entries: usize,
    /// Resource shown on scanout 0 and the part of it shown.
    scanout: Option<(u32, Rect)>,
}

type Outcome = Result<Response, (ErrorCode, &'static str)>;

fn fail<T>(e: ErrorCode, why: &'static str) -> Result<T, (ErrorCode, &'static str)> {
    Err((e, why))
}

impl GpuState {
    /// A fresh state (no resources, scanout off) over guest memory `mem`, reporting the
    /// mode of `control` and showing images on `sink`.
    pub fn new(
        mem: Arc<GuestMemoryMmap>,
        control: DisplayControl,
        sink: Arc<dyn DisplaySink>,
    ) -> Self {
        Self {
            mem,
            control,
            sink,
            resources: HashMap::new(),
            declared_bytes: 0,
            backing_entries: 0,
            scanout: None,
        }
    }

    /// Serves one request that came on `queue` (its readable bytes): parses, executes, and
    /// appends the response to `out`. Returns the response type.
    pub fn process(&mut self, queue: QueueKind, request: &[u8], out: &mut Vec<u8>) -> u32 {
        let (header, response) = match parse(queue, request) {
            Ok(req) => {
                let r = self.execute(req.command);
                (Some(req.header), r)
            }
            Err(refusal) => {
                log::debug!(
                    "virtio-gpu: refused request {:#x}: {}",
                    refusal.header.map_or(0, |h| h.kind),
                    refusal.reason
                );
                (refusal.header, Response::Error(refusal.error))
            }
        };
        encode(header.as_ref(), &response, out);
        response.code()
    }

    /// Carries out `command`; every refusal leaves the state as it was.
    pub fn execute(&mut self, command: Command) -> Response {
        match self.run(command) {
            Ok(r) => r,
            Err((e, why)) => {
                // Debug only: a guest can repeat a bad request as often as it likes.
                log::debug!("virtio-gpu: refused ({e:?}): {why}");
                Response::Error(e)
            }
        }
    }

    fn run(&mut self, command: Command) -> Outcome {
        match command {
            Command::GetDisplayInfo => {
                let m = self.control.mode();
                Ok(Response::DisplayInfo {
                    width: m.width,
                    height: m.height,
                })
            }
            Command::GetEdid { scanout } => {
                if scanout != 0 {
                    return fail(
                        ErrorCode::InvalidParameter,
                        "EDID of a scanout other than 0",
                    );
                }
                let m = self.control.mode();
                Ok(Response::Edid(m.edid.unwrap_or_else(|| {
                    edid::synthesize(m.width, m.height).to_vec()
                })))
            }
            Command::ResourceCreate2d {
                resource_id,
                format,
                width,
                height,
            } => self.create(resource_id, format, width, height),
            Command::ResourceUnref { resource_id } => {
                let r = self.resource(resource_id)?;
                let (bytes, entries) = (r.bytes(), r.backing.as_ref().map_or(0, |b| b.entries()));
                self.hide_if_shown(resource_id);
                self.resources.remove(&resource_id);
                self.declared_bytes -= bytes;
                self.backing_entries -= entries;
                Ok(Response::NoData)
            }
            Command::SetScanout {
                scanout_id,
                resource_id,
                rect,
            } => self.set_scanout(scanout_id, resource_id, rect),
            Command::ResourceFlush { resource_id, rect } => {
                let r = self.resource(resource_id)?;
                if !rect.fits_in(r.width, r.height) {
                    return fail(
                        ErrorCode::InvalidParameter,
                        "flush rectangle outside the resource",
                    );
                }
                if let Some((id, src)) = self.scanout {
                    let hit = rect.intersect(&src);
                    if id == resource_id && !hit.is_empty() {
                        // In scanout coordinates: hit lies inside src.
                        self.sink.flush(Rect::new(
                            hit.x - src.x,
                            hit.y - src.y,
                            hit.width,
                            hit.height,
                        ));
                    }
                }
                Ok(Response::NoData)
            }
            Command::TransferToHost2d {
                resource_id,
                rect,
                offset,
            } => {
                let r = self.resource(resource_id)?;
                if !rect.fits_in(r.width, r.height) {
                    return fail(
                        ErrorCode::InvalidParameter,
                        "transfer rectangle outside the resource",
                    );
                }
                let backing = r
                    .full_backing()
                    .map_err(|e| (e, "transfer without a backing covering the resource"))?;
                // The last byte the transfer would read: offset + (h - 1) * stride + w * 4.
                let stride = u64::from(r.width) * BYTES_PER_PIXEL;
                let end = u64::from(rect.height.saturating_sub(1))
                    .checked_mul(stride)
                    .and_then(|v| v.checked_add(u64::from(rect.width) * BYTES_PER_PIXEL))
                    .and_then(|v| v.checked_add(offset));
                if end.is_none_or(|e| e > backing.len()) {
                    return fail(ErrorCode::InvalidParameter, "transfer beyond the backing");
                }
                // Nothing to copy: the presenter reads the backing itself.
                Ok(Response::NoData)
            }
            Command::AttachBacking {
                resource_id,
                entries,
            } => self.attach(resource_id, entries),
            Command::DetachBacking { resource_id } => {
                let r = self.resource(resource_id)?;
                let Some(n) = r.backing.as_ref().map(|b| b.entries()) else {
                    return fail(ErrorCode::Unspec, "detach of a resource without backing");
                };
                self.hide_if_shown(resource_id);
                if let Some(r) = self.resources.get_mut(&resource_id) {
                    r.backing = None;
                }
                self.backing_entries -= n;
                Ok(Response::NoData)
            }
            Command::UpdateCursor {
                pos,
                resource_id,
                hot_x,
                hot_y,
            } => self.update_cursor(pos, resource_id, hot_x, hot_y),
            Command::MoveCursor { pos } => {
                check_scanout(pos.scanout_id)?;
                self.sink.move_cursor(pos.x, pos.y);
                Ok(Response::NoData)
            }
        }
    }

    fn resource(&self, id: u32) -> Result<&Resource, (ErrorCode, &'static str)> {
        if id == 0 {
            return fail(ErrorCode::InvalidResourceId, "resource id 0");
        }
        self.resources
            .get(&id)
            .ok_or((ErrorCode::InvalidResourceId, "unknown resource id"))
    }

    fn create(&mut self, id: u32, format: u32, width: u32, height: u32) -> Outcome {
        if id == 0 {
            return fail(ErrorCode::InvalidResourceId, "resource id 0");
        }
        if self.resources.contains_key(&id) {
            return fail(ErrorCode::InvalidResourceId, "resource id already in use");
        }
        let Some(format) = PixelFormat::from_virtio(format) else {
            return fail(ErrorCode::InvalidParameter, "not a 2D pixel format");
        };
        if !(1..=MAX_DIMENSION).contains(&width) || !(1..=MAX_DIMENSION).contains(&height) {
            return fail(
                ErrorCode::InvalidParameter,
                "width or height outside 1..=16384",
            );
        }
        let r = Resource {
            format,
            width,
            height,
            backing: None,
        };
        if r.bytes() > MAX_RESOURCE_BYTES {
            return fail(ErrorCode::InvalidParameter, "resource larger than 128 MiB");
        }
        if self.resources.len() >= MAX_RESOURCES {
            return fail(ErrorCode::OutOfMemory, "too many resources");
        }
        if self.declared_bytes + r.bytes() > MAX_TOTAL_BYTES {
            return fail(
                ErrorCode::OutOfMemory,
                "resources would exceed 512 MiB in all",
            );
        }
        self.declared_bytes += r.bytes();
        self.resources.insert(id, r);
        Ok(Response::NoData)
    }

    fn attach(&mut self, id: u32, entries: Vec<MemEntry>) -> Outcome {
        let r = self.resource(id)?;
        if r.backing.is_some() {
            return fail(ErrorCode::Unspec, "resource already has a backing");
        }
        if self.backing_entries + entries.len() > MAX_TOTAL_BACKING_ENTRIES {
            return fail(ErrorCode::OutOfMemory, "too many backing entries in all");
        }
        let mut list = Vec::with_capacity(entries.len());
        for e in entries {
            if e.len == 0 {
                return fail(ErrorCode::InvalidParameter, "empty backing entry");
            }
            if e.addr.checked_add(u64::from(e.len)).is_none()
                || !self.mem.check_range(GuestAddress(e.addr), e.len as usize)
            {
                return fail(ErrorCode::Unspec, "backing entry outside guest RAM");
            }
            list.push((GuestAddress(e.addr), e.len));
        }
        let n = list.len();
        if let Some(r) = self.resources.get_mut(&id) {
            r.backing = Some(Arc::new(Backing::new(list)));
            self.backing_entries += n;
        }
        Ok(Response::NoData)
    }

    fn set_scanout(&mut self, scanout_id: u32, resource_id: u32, rect: Rect) -> Outcome {
        check_scanout(scanout_id)?;
        if resource_id == 0 {
            log::debug!("virtio-gpu: the guest turned its scanout off");
            self.scanout = None;
            self.sink.set_scanout(None);
            return Ok(Response::NoData);
        }
        let r = self.resource(resource_id)?;
        if rect.is_empty() || !rect.fits_in(r.width, r.height) {
            return fail(
                ErrorCode::InvalidParameter,
                "scanout rectangle outside the resource",
            );
        }
        let backing = r
            .full_backing()
            .map_err(|e| (e, "scanout of a resource without a backing covering it"))?;
        let fb = Framebuffer::new(self.mem.clone(), backing.clone(), r.format, r.width, rect);
        // Debug only: a guest may switch scanouts at every frame (page flips).
        log::debug!(
            "virtio-gpu: scanout shows resource {resource_id} ({}x{} at {},{} of {}x{} {:?})",
            rect.width,
            rect.height,
            rect.x,
            rect.y,
            r.width,
            r.height,
            r.format
        );
        self.scanout = Some((resource_id, rect));
        self.sink.set_scanout(Some(Arc::new(fb)));
        Ok(Response::NoData)
    }

    /// Turns the scanout off if it shows resource `id` (about to lose its backing).
    fn hide_if_shown(&mut self, id: u32) {
        if self.scanout.is_some_and(|(shown, _)| shown == id) {
            log::debug!("virtio-gpu: resource {id} lost its backing while shown: scanout off");
            self.scanout = None;
            self.sink.set_scanout(None);
        }
    }

    fn update_cursor(&mut self, pos: CursorPos, id: u32, hot_x: u32, hot_y: u32) -> Outcome {
        check_scanout(pos.scanout_id)?;
        if id == 0 {
            self.sink.cursor(None, pos.x, pos.y);
            return Ok(Response::NoData);
        }
        let r = self.resource(id)?;
        if r.width > MAX_CURSOR_SIZE || r.height > MAX_CURSOR_SIZE {
            return fail(ErrorCode::InvalidParameter, "cursor larger than 256x256");
        }
        let backing = r
            .full_backing()
            .map_err(|e| (e, "cursor without a backing covering it"))?;
        // At most 256 * 256 * 4 bytes.
        let mut raw = vec![0u8; r.bytes() as usize];
        if !backing.read(&self.mem, 0, &mut raw) {
            return fail(ErrorCode::Unspec, "cursor backing unreadable");
        }
        // The padding byte is the pointer's alpha: see PixelFormat::with_alpha.
        let format = r.format.with_alpha();
        let pixels = raw
            .chunks_exact(4)
            .map(|p| format.to_argb([p[0], p[1], p[2], p[3]]))
            .collect();
        let image = CursorImage {
            width: r.width,
            height: r.height,
            hot_x: hot_x.min(r.width - 1),
            hot_y: hot_y.min(r.height - 1),
            pixels,
        };
        self.sink.cursor(Some(Arc::new(image)), pos.x, pos.y);
        Ok(Response::NoData)
    }

    /// Number of live resources (for tests and logs).
    pub fn resource_count(&self) -> usize {
        self.resources.len()
    }

    /// Sum of the live resources' declared sizes.
    pub fn declared_bytes(&self) -> u64 {
        self.declared_bytes
    }
}

fn check_scanout(id: u32) -> Result<(), (ErrorCode, &'static str)> {
    if id != 0 {
        return fail(ErrorCode::InvalidScanoutId, "scanout other than 0");
    }
    Ok(())
}
