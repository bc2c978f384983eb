//! An output in memory, for unit tests and the benchmark: no device, a probe to look at
//! what was presented.

use super::Output;
use crate::{pixels, Error, Rect};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Default)]
struct Shown {
    /// The presented frame (only kept when mirroring).
    frame: Vec<u8>,
    /// The damage of every present, in order.
    damage: Vec<Vec<Rect>>,
}

struct Shared {
    presents: AtomicU64,
    shown: Mutex<Shown>,
}

/// A screen in memory.
pub struct MemoryOutput {
    width: u32,
    height: u32,
    buffer: Vec<u8>,
    mirror: bool,
    interval: Option<Duration>,
    shared: Arc<Shared>,
}

/// Looks at what a [`MemoryOutput`] presented, from another thread.
#[derive(Clone)]
pub struct MemoryProbe {
    width: u32,
    shared: Arc<Shared>,
}

impl MemoryOutput {
    /// A black `width` x `height` screen paced like fbdev (a present at most every
    /// ~16 ms). Every present copies its damage into a frame the probe can read.
    pub fn new(width: u32, height: u32) -> (MemoryOutput, MemoryProbe) {
        let len = width as usize * height as usize * 4;
        let shared = Arc::new(Shared {
            presents: AtomicU64::new(0),
            shown: Mutex::new(Shown {
                frame: vec![0; len],
                damage: Vec::new(),
            }),
        });
        let probe = MemoryProbe {
            width,
            shared: shared.clone(),
        };
        let output = MemoryOutput {
            width,
            height,
            buffer: vec![0; len],
            mirror: true,
            interval: Some(super::TIMER_FRAME),
            shared,
        };
        (output, probe)
    }

    /// For the benchmark: presents copy nothing (like a page flip, which copies nothing
    /// either) and are paced by `interval` (zero: no pacing). The probe then only counts.
    pub fn unmirrored(mut self, interval: Duration) -> MemoryOutput {
        self.mirror = false;
        self.interval = Some(interval);
        self
    }
}

impl Output for MemoryOutput {
    fn size(&self) -> (u32, u32) {
        (self.width, self.height)
    }

    fn stride(&self) -> usize {
        self.width as usize * 4
    }

    fn back_buffer(&mut self) -> &mut [u8] {
        &mut self.buffer
    }

    fn present(&mut self, damage: &[Rect]) -> Result<(), Error> {
        let stride = self.stride();
        if let Ok(mut shown) = self.shared.shown.lock() {
            if self.mirror {
                for r in damage {
                    let r = r.clip(self.width, self.height);
                    pixels::copy_rect(&self.buffer, stride, &mut shown.frame, stride, r);
                }
            }
            shown.damage.push(damage.to_vec());
        }
        self.shared.presents.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    fn frame_interval(&self) -> Option<Duration> {
        self.interval
    }

    fn release(&mut self) {
        self.buffer.fill(0);
        let _ = self.present(&[Rect::new(0, 0, self.width, self.height)]);
    }
}

impl MemoryProbe {
    /// How many frames were presented.
    pub fn presents(&self) -> u64 {
        self.shared.presents.load(Ordering::SeqCst)
    }

    /// The presented frame's pixel at (x, y) (0 when out of range or not mirrored).
    pub fn pixel(&self, x: u32, y: u32) -> u32 {
        let shown = match self.shared.shown.lock() {
            Ok(s) => s,
            Err(_) => return 0,
        };
        pixels::pixel(&shown.frame, self.width as usize * 4, x, y).unwrap_or(0)
    }

    /// A copy of the presented frame.
    pub fn frame(&self) -> Vec<u8> {
        self.shared
            .shown
            .lock()
            .map(|s| s.frame.clone())
            .unwrap_or_default()
    }

    /// The damage of every present so far.
    pub fn damage(&self) -> Vec<Vec<Rect>> {
        self.shared
            .shown
            .lock()
            .map(|s| s.damage.clone())
            .unwrap_or_default()
    }
}
