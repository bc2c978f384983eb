//! The seat's pointer model: an absolute position in tablet units (0..=32767 on both
//! axes, what the appliances' virtio tablets report), one per appliance so each keeps
//! its pointer where it was left.
//!
//! Relative mice move it through a simple acceleration curve: slow motions move one
//! screen pixel per count (precise), fast ones up to [`MAX_GAIN`] times that. Absolute
//! devices (QEMU's usb-tablet, touchscreens) map their own range onto 0..=32767.

/// The largest tablet coordinate.
pub const TABLET_MAX: i32 = 32767;
/// Counts per event below which motion is not accelerated.
const SLOW: f64 = 4.0;
/// Counts per event at which the gain reaches its maximum.
const FAST: f64 = 24.0;
/// The largest gain.
pub const MAX_GAIN: f64 = 3.0;

/// An absolute pointer position in tablet units, with the fractions relative motion
/// leaves over.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Pointer {
    x: f64,
    y: f64,
}

impl Default for Pointer {
    /// The middle of the screen.
    fn default() -> Pointer {
        Pointer {
            x: f64::from(TABLET_MAX / 2),
            y: f64::from(TABLET_MAX / 2),
        }
    }
}

/// The gain for a motion of `speed` counts in one event.
pub fn gain(speed: f64) -> f64 {
    if speed <= SLOW {
        1.0
    } else if speed >= FAST {
        MAX_GAIN
    } else {
        1.0 + (MAX_GAIN - 1.0) * (speed - SLOW) / (FAST - SLOW)
    }
}

/// Maps `value` from a device's `min..=max` onto 0..=32767 (clamped).
pub fn map_absolute(value: i32, min: i32, max: i32) -> i32 {
    if max <= min {
        return 0;
    }
    let v = i64::from(value.clamp(min, max)) - i64::from(min);
    (v * i64::from(TABLET_MAX) / (i64::from(max) - i64::from(min))) as i32
}

impl Pointer {
    /// The position in tablet units.
    pub fn position(&self) -> (i32, i32) {
        (self.x.round() as i32, self.y.round() as i32)
    }

    /// Moves by a relative motion of (`dx`, `dy`) counts on a `width` x `height`
    /// screen, accelerated, clamped to the screen.
    pub fn move_relative(&mut self, dx: i32, dy: i32, width: u32, height: u32) {
        let speed = f64::from(dx).hypot(f64::from(dy));
        let g = gain(speed);
        let per_px_x = f64::from(TABLET_MAX + 1) / f64::from(width.max(1));
        let per_px_y = f64::from(TABLET_MAX + 1) / f64::from(height.max(1));
        self.x = (self.x + f64::from(dx) * g * per_px_x).clamp(0.0, f64::from(TABLET_MAX));
        self.y = (self.y + f64::from(dy) * g * per_px_y).clamp(0.0, f64::from(TABLET_MAX));
    }

    /// Sets one axis from an absolute value already in tablet units.
    pub fn set_x(&mut self, x: i32) {
        self.x = f64::from(x.clamp(0, TABLET_MAX));
    }

    /// See [`Pointer::set_x`].
    pub fn set_y(&mut self, y: i32) {
        self.y = f64::from(y.clamp(0, TABLET_MAX));
    }

    /// The screen pixel under the pointer on a `width` x `height` screen.
    pub fn on_screen(&self, width: u32, height: u32) -> (u32, u32) {
        let (x, y) = self.position();
        let px = (i64::from(x) * i64::from(width) / i64::from(TABLET_MAX + 1)) as u32;
        let py = (i64::from(y) * i64::from(height) / i64::from(TABLET_MAX + 1)) as u32;
        (px, py)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slow_motion_moves_one_pixel_per_count() {
        let mut p = Pointer::default();
        let before = p.on_screen(1024, 768);
        p.move_relative(3, -2, 1024, 768);
        let after = p.on_screen(1024, 768);
        assert_eq!(after.0 as i32 - before.0 as i32, 3);
        assert_eq!(after.1 as i32 - before.1 as i32, -2);
    }

    #[test]
    fn fast_motion_is_accelerated_and_clamped() {
        let mut p = Pointer::default();
        let before = p.on_screen(1024, 768).0;
        p.move_relative(30, 0, 1024, 768);
        assert_eq!(p.on_screen(1024, 768).0 - before, 90);
        for _ in 0..100 {
            p.move_relative(100, 100, 1024, 768);
        }
        assert_eq!(p.position(), (TABLET_MAX, TABLET_MAX));
        assert_eq!(p.on_screen(1024, 768), (1023, 767));
        for _ in 0..100 {
            p.move_relative(-100, -100, 1024, 768);
        }
        assert_eq!(p.position(), (0, 0));
        assert!(gain(10.0) > 1.0 && gain(10.0) < MAX_GAIN);
    }

    #[test]
    fn absolute_ranges_map_onto_the_tablet() {
        assert_eq!(map_absolute(0, 0, 32767), 0);
        assert_eq!(map_absolute(32767, 0, 32767), TABLET_MAX);
        assert_eq!(map_absolute(50, 0, 100), 16383);
        assert_eq!(map_absolute(-5, 0, 100), 0);
        assert_eq!(map_absolute(500, 0, 100), TABLET_MAX);
        assert_eq!(map_absolute(-100, -100, 100), 0);
        assert_eq!(map_absolute(5, 7, 7), 0);
        let mut p = Pointer::default();
        p.set_x(40000);
        p.set_y(-3);
        assert_eq!(p.position(), (TABLET_MAX, 0));
    }
}
