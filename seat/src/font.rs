//! Text for the seat's own screens: Noto Sans Mono, pre-rasterised at 20 px (one byte of
//! coverage a pixel, so edges are smooth), from the `noto-sans-mono-bitmap` crate: no
//! font files, no C library. Characters it lacks are drawn as close ASCII stand-ins.

use crate::pixels;
use noto_sans_mono_bitmap::{get_raster, get_raster_width, FontWeight, RasterHeight};

const WEIGHT: FontWeight = FontWeight::Regular;
const HEIGHT: RasterHeight = RasterHeight::Size20;

/// Height of a text cell in pixels.
pub const CELL_HEIGHT: u32 = 20;

/// Width of a text cell in pixels.
pub fn cell_width() -> u32 {
    get_raster_width(WEIGHT, HEIGHT) as u32
}

/// The character drawn for `ch`: itself when the font has it, else a stand-in.
fn drawable(ch: char) -> char {
    if get_raster(ch, WEIGHT, HEIGHT).is_some() {
        return ch;
    }
    match ch {
        '\u{2012}'..='\u{2015}' | '\u{2212}' => '-',
        '\u{2018}' | '\u{2019}' => '\'',
        '\u{201c}' | '\u{201d}' => '"',
        '\u{2022}' | '\u{25cf}' => '*',
        _ => '?',
    }
}

/// Draws one cell (background, then the glyph blended over it) with its top-left corner
/// at pixel (`x`, `y`) of `buf`. Pixels outside `buf` are skipped.
pub fn draw_cell(buf: &mut [u8], stride: usize, x: u32, y: u32, ch: char, fg: u32, bg: u32) {
    let width = cell_width();
    pixels::fill_rect(buf, stride, crate::Rect::new(x, y, width, CELL_HEIGHT), bg);
    if ch == ' ' {
        return;
    }
    let Some(glyph) = get_raster(drawable(ch), WEIGHT, HEIGHT) else {
        return;
    };
    for (row, coverage) in glyph.rows().enumerate() {
        let py = y as usize + row;
        for (col, &alpha) in coverage.iter().enumerate() {
            if alpha == 0 {
                continue;
            }
            let at = py * stride + (x as usize + col) * 4;
            if let Some(px) = buf.get_mut(at..at + 4) {
                let color = pixels::blend(fg, bg, u32::from(alpha));
                px.copy_from_slice(&color.to_le_bytes());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_glyph_has_ink_and_a_space_has_none() {
        let w = cell_width();
        assert!((8..=14).contains(&w), "cell width {w}");
        let stride = w as usize * 4;
        let mut buf = vec![0u8; stride * CELL_HEIGHT as usize];
        draw_cell(&mut buf, stride, 0, 0, 'A', 0xffffff, 0);
        let ink = buf.chunks(4).filter(|p| p[0] > 128).count();
        assert!(ink > 20, "ink {ink}");
        draw_cell(&mut buf, stride, 0, 0, ' ', 0xffffff, 0x123456);
        assert!(buf.chunks(4).all(|p| p == [0x56, 0x34, 0x12, 0]));
        assert_eq!(drawable('\u{2014}'), '-');
    }
}
