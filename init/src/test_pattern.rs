//! The picture the display test appliance draws, shared with the system test that checks
//! the terminal's screen for it pixel by pixel.
//!
//! Eight vertical colour bars with a square in the middle whose colour depends on a seed,
//! so two appliances draw different screens and a test can tell which one is shown.

/// The XRGB8888 colour of pixel (x, y) on a `width` x `height` screen.
pub fn pixel(x: u32, y: u32, width: u32, height: u32, seed: u32) -> u32 {
    const BARS: [u32; 8] = [
        0x00ff_ffff,
        0x00ff_ff00,
        0x0000_ffff,
        0x0000_ff00,
        0x00ff_00ff,
        0x00ff_0000,
        0x0000_00ff,
        0x0000_0000,
    ];
    let (cx, cy, half) = (width / 2, height / 2, width.min(height) / 6);
    if x.abs_diff(cx) < half && y.abs_diff(cy) < half {
        // A colour no bar has, different per seed.
        return 0x0010_2030 ^ seed.wrapping_mul(0x0009_e377) & 0x00ff_ffff;
    }
    BARS[(x * 8 / width.max(1)).min(7) as usize]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_differ_in_the_square_only() {
        let (w, h) = (1024, 768);
        assert_ne!(pixel(512, 384, w, h, 1), pixel(512, 384, w, h, 2));
        assert_eq!(pixel(5, 5, w, h, 1), pixel(5, 5, w, h, 2));
        assert_eq!(pixel(0, 0, w, h, 1), 0x00ff_ffff);
        assert_eq!(pixel(w - 1, 0, w, h, 1), 0);
    }
}

/// Side of the square at the top-left corner that the display probe repaints at every key
/// press when asked to (`mark-keys`).
pub const KEY_MARK: u32 = 64;

/// The colour of that square after `presses` key presses (XRGB): white and red in turn,
/// so every press changes the corner.
pub fn key_mark_colour(presses: u64) -> u32 {
    if presses % 2 == 1 {
        0x00ff_ffff
    } else {
        0x00ff_0000
    }
}
