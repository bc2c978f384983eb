//! A display with no screen behind it, for `vmm run --display`: a publisher boots a
//! graphical appliance exactly as a terminal's seat would show it (virtio-gpu, a keyboard
//! and a tablet), to record its boot trace or to check that its desktop comes up, on a
//! machine where nobody looks at the picture.
//!
//! It keeps the last picture the guest showed, notes when the guest last changed it, and
//! can write it to a file. "Last shown" rather than "shown now": when the VM stops, the
//! VMM resets its devices and the scanout goes away with them, while the picture the
//! publisher wants is the one on the screen just before. Knowing when the picture stopped changing is what
//! lets a recording end when the desktop has settled instead of after a guessed time.

use std::io::{self, Write};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use vmm::display::{CursorImage, DisplaySink, Framebuffer, Rect};

/// The picture and its history: what [`HeadlessDisplay`] knows of the guest's screen.
#[derive(Default)]
struct Screen {
    /// The last scanout the guest set (kept when it is turned off; see the module doc).
    last_shown: Option<Arc<Framebuffer>>,
    first_flush: Option<Instant>,
    last_flush: Option<Instant>,
    flushes: u64,
}

/// A [`DisplaySink`] that shows nothing and remembers the picture.
#[derive(Default)]
pub struct HeadlessDisplay {
    screen: Mutex<Screen>,
}

impl HeadlessDisplay {
    /// How long ago the guest last changed its picture; `None` before its first change.
    pub fn idle_for(&self) -> Option<Duration> {
        let screen = self.screen.lock().ok()?;
        screen.last_flush.map(|t| t.elapsed())
    }

    /// When the guest first drew, and how many flushes it made.
    pub fn activity(&self) -> (Option<Instant>, u64) {
        match self.screen.lock() {
            Ok(s) => (s.first_flush, s.flushes),
            Err(_) => (None, 0),
        }
    }

    /// The last picture the guest showed as a binary PPM (P6); `None` if it never showed one.
    pub fn snapshot_ppm(&self) -> Option<Vec<u8>> {
        let fb = self.screen.lock().ok()?.last_shown.clone()?;
        let (w, h) = (fb.width(), fb.height());
        let stride = w as usize * 4;
        let mut xrgb = vec![0u8; stride * h as usize];
        fb.copy_rect(Rect::new(0, 0, w, h), &mut xrgb, stride);
        let mut ppm = format!("P6\n{w} {h}\n255\n").into_bytes();
        ppm.reserve(w as usize * h as usize * 3);
        for px in xrgb.chunks_exact(4) {
            // XRGB8888 in memory is B, G, R, X.
            ppm.extend_from_slice(&[px[2], px[1], px[0]]);
        }
        Some(ppm)
    }

    /// The share of the last picture's pixels (sampled on a grid) that are not nearly
    /// black: a desktop is lit, a server between its start and its first window is not.
    pub fn lit_share(&self) -> f64 {
        let Some(fb) = self.screen.lock().ok().and_then(|s| s.last_shown.clone()) else {
            return 0.0;
        };
        let (w, h) = (fb.width(), fb.height());
        let mut row = vec![0u8; w as usize * 4];
        let (mut lit, mut all) = (0u64, 0u64);
        for y in (0..h).step_by(8) {
            fb.copy_rect_to(Rect::new(0, y, w, 1), &mut row, w as usize * 4);
            for px in row.chunks_exact(4).step_by(8) {
                let brightness = u32::from(px[0]) + u32::from(px[1]) + u32::from(px[2]);
                lit += u64::from(brightness > 48);
                all += 1;
            }
        }
        lit as f64 / all.max(1) as f64
    }

    /// Writes [`HeadlessDisplay::snapshot_ppm`] to `path`; an error if there is no picture.
    pub fn write_snapshot(&self, path: &Path) -> io::Result<()> {
        let ppm = self
            .snapshot_ppm()
            .ok_or_else(|| io::Error::other("the guest never showed a picture"))?;
        let mut f = std::fs::File::create(path)?;
        f.write_all(&ppm)?;
        f.flush()
    }
}

impl DisplaySink for HeadlessDisplay {
    fn set_scanout(&self, fb: Option<Arc<Framebuffer>>) {
        if let (Some(fb), Ok(mut s)) = (fb, self.screen.lock()) {
            s.last_shown = Some(fb);
        }
    }

    fn flush(&self, _rect: Rect) {
        if let Ok(mut s) = self.screen.lock() {
            let now = Instant::now();
            s.first_flush.get_or_insert(now);
            s.last_flush = Some(now);
            s.flushes += 1;
        }
    }

    fn cursor(&self, _image: Option<Arc<CursorImage>>, _x: u32, _y: u32) {}

    fn move_cursor(&self, _x: u32, _y: u32) {}
}

/// Parses `WIDTHxHEIGHT` (each 1..=16384), as `--display` takes it.
pub fn parse_mode(s: &str) -> Result<(u32, u32), String> {
    let bad = || format!("bad display mode {s:?}: expected WIDTHxHEIGHT, e.g. 1280x800");
    let (w, h) = s.split_once(['x', 'X']).ok_or_else(bad)?;
    let w: u32 = w.trim().parse().map_err(|_| bad())?;
    let h: u32 = h.trim().parse().map_err(|_| bad())?;
    let max = vmm::display::MAX_DIMENSION;
    if w == 0 || h == 0 || w > max || h > max {
        return Err(format!(
            "display mode {w}x{h} out of range: each side must be 1 to {max}"
        ));
    }
    Ok((w, h))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_parse_and_bad_ones_say_what_is_expected() {
        assert_eq!(parse_mode("1280x800"), Ok((1280, 800)));
        assert_eq!(parse_mode("640X480"), Ok((640, 480)));
        for bad in ["", "1280", "x800", "0x10", "1280x-1", "99999x10", "ax b"] {
            let e = parse_mode(bad).unwrap_err();
            assert!(e.contains("display mode"), "{bad}: {e}");
        }
    }

    #[test]
    fn idle_time_counts_from_the_last_flush_only() {
        let d = HeadlessDisplay::default();
        assert_eq!(d.idle_for(), None, "no picture yet: not idle, not busy");
        d.flush(Rect::new(0, 0, 1, 1));
        std::thread::sleep(Duration::from_millis(30));
        let before = d.idle_for().unwrap();
        assert!(before >= Duration::from_millis(30));
        d.flush(Rect::new(0, 0, 1, 1));
        assert!(d.idle_for().unwrap() < before);
        assert_eq!(d.activity().1, 2);
        assert!(d.snapshot_ppm().is_none(), "never shown a picture");
    }
}
