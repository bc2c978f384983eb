//! The firmware framebuffer (`/dev/fb0`: efifb, vesafb, or a KMS driver's fbdev
//! emulation) for PCs whose GPU has no KMS driver in the image.
//!
//! Only 32 bits per pixel in XRGB order is accepted (anything else is a clear error, and
//! the session keeps its text console). The seat draws into a shadow buffer in RAM and
//! presenting copies the damaged rectangles into the mapped framebuffer: framebuffer
//! memory may be uncached or write-combined, so it is only ever written, never read.
//! There is no vblank event: presents are paced by a timer.

use super::Output;
use crate::{pixels, Error, Rect};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;

const FBIOGET_VSCREENINFO: libc::c_ulong = 0x4600;
const FBIOGET_FSCREENINFO: libc::c_ulong = 0x4602;

#[repr(C)]
#[derive(Default, Clone, Copy)]
struct Bitfield {
    offset: u32,
    length: u32,
    msb_right: u32,
}

/// `struct fb_var_screeninfo`.
#[repr(C)]
#[derive(Default)]
struct VarInfo {
    xres: u32,
    yres: u32,
    xres_virtual: u32,
    yres_virtual: u32,
    xoffset: u32,
    yoffset: u32,
    bits_per_pixel: u32,
    grayscale: u32,
    red: Bitfield,
    green: Bitfield,
    blue: Bitfield,
    transp: Bitfield,
    rest: [u32; 20],
}

/// `struct fb_fix_screeninfo`.
#[repr(C)]
#[derive(Default)]
struct FixInfo {
    id: [u8; 16],
    smem_start: libc::c_ulong,
    smem_len: u32,
    kind: u32,
    type_aux: u32,
    visual: u32,
    xpanstep: u16,
    ypanstep: u16,
    ywrapstep: u16,
    line_length: u32,
    mmio_start: libc::c_ulong,
    mmio_len: u32,
    accel: u32,
    capabilities: u16,
    reserved: [u16; 2],
}

/// A mapped `/dev/fb0` with a shadow buffer.
pub struct FbdevOutput {
    _file: File,
    map: *mut u8,
    map_len: usize,
    /// Byte offset of the visible area's first pixel in the mapping (panning).
    origin: usize,
    line_length: usize,
    width: u32,
    height: u32,
    shadow: Vec<u8>,
}

// SAFETY: the mapping is owned by the output and used only through `&mut self`.
unsafe impl Send for FbdevOutput {}

impl FbdevOutput {
    /// Opens and maps a framebuffer device.
    pub fn open(path: impl AsRef<Path>) -> Result<FbdevOutput, Error> {
        let path = path.as_ref();
        let shown = path.display().to_string();
        let io_err = |what: &str| {
            let what = format!("{shown}: {what}");
            move |source: io::Error| Error::Io { what, source }
        };
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(io_err("opening"))?;
        let fd = file.as_raw_fd();
        let mut var = VarInfo::default();
        let mut fix = FixInfo::default();
        // SAFETY: each ioctl fills exactly the struct it is given.
        if unsafe { libc::ioctl(fd, FBIOGET_VSCREENINFO as _, &mut var as *mut VarInfo) } != 0 {
            return Err(io_err("FBIOGET_VSCREENINFO")(io::Error::last_os_error()));
        }
        // SAFETY: as above.
        if unsafe { libc::ioctl(fd, FBIOGET_FSCREENINFO as _, &mut fix as *mut FixInfo) } != 0 {
            return Err(io_err("FBIOGET_FSCREENINFO")(io::Error::last_os_error()));
        }
        if var.bits_per_pixel != 32
            || var.red.offset != 16
            || var.green.offset != 8
            || var.blue.offset != 0
        {
            return Err(Error::Unsupported(format!(
                "{shown}: {} bits per pixel with red at bit {}, green {}, blue {}; only 32-bit XRGB is supported",
                var.bits_per_pixel, var.red.offset, var.green.offset, var.blue.offset
            )));
        }
        let line_length = fix.line_length as usize;
        let origin = var.yoffset as usize * line_length + var.xoffset as usize * 4;
        let needed = origin + line_length * var.yres as usize;
        let map_len = fix.smem_len as usize;
        if var.xres == 0 || var.yres == 0 || line_length < var.xres as usize * 4 || needed > map_len
        {
            return Err(Error::Unsupported(format!(
                "{shown}: inconsistent geometry ({}x{}, line {line_length}, memory {map_len})",
                var.xres, var.yres
            )));
        }
        // SAFETY: mapping the framebuffer memory the driver reported.
        let map = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                0,
            )
        };
        if map == libc::MAP_FAILED {
            return Err(io_err("mmap")(io::Error::last_os_error()));
        }
        log::info!(
            "seat: {shown}: {}x{} 32 bpp, line {line_length} bytes (fbdev)",
            var.xres,
            var.yres
        );
        let mut out = FbdevOutput {
            _file: file,
            map: map as *mut u8,
            map_len,
            origin,
            line_length,
            width: var.xres,
            height: var.yres,
            shadow: vec![0; var.xres as usize * var.yres as usize * 4],
        };
        let full = Rect::new(0, 0, out.width, out.height);
        out.copy_out(&[full]);
        Ok(out)
    }

    fn copy_out(&mut self, damage: &[Rect]) {
        // SAFETY: the mapping is live for the output's life and `&mut self` makes this
        // the only view of it.
        let fb = unsafe { std::slice::from_raw_parts_mut(self.map, self.map_len) };
        let fb = &mut fb[self.origin..];
        let stride = self.width as usize * 4;
        for r in damage {
            let r = r.clip(self.width, self.height);
            pixels::copy_rect(&self.shadow, stride, fb, self.line_length, r);
        }
    }
}

impl Output for FbdevOutput {
    fn size(&self) -> (u32, u32) {
        (self.width, self.height)
    }

    fn stride(&self) -> usize {
        self.width as usize * 4
    }

    fn back_buffer(&mut self) -> &mut [u8] {
        &mut self.shadow
    }

    fn present(&mut self, damage: &[Rect]) -> Result<(), Error> {
        self.copy_out(damage);
        Ok(())
    }

    fn release(&mut self) {
        self.shadow.fill(0);
        let full = Rect::new(0, 0, self.width, self.height);
        self.copy_out(&[full]);
    }
}

impl Drop for FbdevOutput {
    fn drop(&mut self) {
        // SAFETY: unmapping our own mapping; nothing uses it after this.
        unsafe { libc::munmap(self.map as *mut libc::c_void, self.map_len) };
    }
}
