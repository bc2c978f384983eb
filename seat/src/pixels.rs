//! Plain pixel operations on XRGB8888 buffers (4 bytes a pixel, rows `stride` bytes
//! apart). Callers clip rectangles first; these functions only check that the rows fit,
//! and skip what does not, so a bad rectangle never panics the seat.

use crate::Rect;

/// Copies `rect` from `src` to the same place in `dst`.
pub fn copy_rect(src: &[u8], src_stride: usize, dst: &mut [u8], dst_stride: usize, rect: Rect) {
    let x = rect.x as usize * 4;
    let len = rect.width as usize * 4;
    for row in rect.y as usize..rect.bottom() as usize {
        let (s, d) = (row * src_stride + x, row * dst_stride + x);
        if let (Some(s), Some(d)) = (src.get(s..s + len), dst.get_mut(d..d + len)) {
            d.copy_from_slice(s);
        }
    }
}

/// Fills `rect` of `dst` with one colour.
pub fn fill_rect(dst: &mut [u8], stride: usize, rect: Rect, color: u32) {
    let bytes = color.to_le_bytes();
    let x = rect.x as usize * 4;
    let len = rect.width as usize * 4;
    for row in rect.y as usize..rect.bottom() as usize {
        let d = row * stride + x;
        if let Some(d) = dst.get_mut(d..d + len) {
            for px in d.chunks_exact_mut(4) {
                px.copy_from_slice(&bytes);
            }
        }
    }
}

/// Reads one pixel (tests, the cursor blend).
pub fn pixel(buf: &[u8], stride: usize, x: u32, y: u32) -> Option<u32> {
    let at = y as usize * stride + x as usize * 4;
    let b = buf.get(at..at + 4)?;
    Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

/// Blends `fg` over `bg` with coverage `alpha` (0..=255), per channel.
pub fn blend(fg: u32, bg: u32, alpha: u32) -> u32 {
    let mut out = 0;
    for shift in [0, 8, 16] {
        let f = (fg >> shift) & 0xff;
        let b = (bg >> shift) & 0xff;
        out |= ((f * alpha + b * (255 - alpha)) / 255) << shift;
    }
    out
}

/// Puts a premultiplied ARGB pixel `fg` over `bg` (Porter-Duff "over"): DRM cursor
/// planes, and so the pointer images guests give, are premultiplied.
pub fn over_premultiplied(fg: u32, bg: u32) -> u32 {
    let keep = 255 - (fg >> 24);
    let mut out = 0;
    for shift in [0, 8, 16] {
        let f = (fg >> shift) & 0xff;
        let b = (bg >> shift) & 0xff;
        out |= (f + b * keep / 255).min(255) << shift;
    }
    out
}

/// Copies a whole `rect.width` x `rect.height` buffer `src` to `rect` of `dst`.
pub fn copy_rect_at(src: &[u8], src_stride: usize, dst: &mut [u8], dst_stride: usize, rect: Rect) {
    let len = rect.width as usize * 4;
    for row in 0..rect.height as usize {
        let s = row * src_stride;
        let d = (rect.y as usize + row) * dst_stride + rect.x as usize * 4;
        if let (Some(s), Some(d)) = (src.get(s..s + len), dst.get_mut(d..d + len)) {
            d.copy_from_slice(s);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn premultiplied_over() {
        // Transparent leaves the background; opaque replaces it.
        assert_eq!(over_premultiplied(0, 0x0012_3456), 0x0012_3456);
        assert_eq!(over_premultiplied(0xff00_ff00, 0x00ff_00ff), 0x0000_ff00);
        // Half-transparent black (premultiplied: colour 0) darkens by half.
        assert_eq!(over_premultiplied(0x8000_0000, 0x00ff_ffff), 0x007f_7f7f);
        // Half-transparent white, premultiplied to 0x80, over black.
        assert_eq!(over_premultiplied(0x8080_8080, 0), 0x0080_8080);
    }

    #[test]
    fn copy_and_fill_stay_in_their_rectangle() {
        let stride = 8 * 4;
        let src = vec![0xaa; stride * 8];
        let mut dst = vec![0; stride * 8];
        copy_rect(&src, stride, &mut dst, stride, Rect::new(2, 3, 2, 2));
        let set = dst.chunks(4).filter(|p| p[0] == 0xaa).count();
        assert_eq!(set, 4);
        assert_eq!(pixel(&dst, stride, 2, 3), Some(0xaaaa_aaaa));
        assert_eq!(pixel(&dst, stride, 1, 3), Some(0));
        fill_rect(&mut dst, stride, Rect::new(6, 6, 2, 2), 0x00ff_0000);
        assert_eq!(pixel(&dst, stride, 7, 7), Some(0x00ff_0000));
        // Unclipped rows that do not fit are skipped, not a panic.
        fill_rect(&mut dst, stride, Rect::new(7, 7, 5, 5), 0x0000_ff00);
        assert_eq!(pixel(&dst, stride, 7, 7), Some(0x00ff_0000));
        assert_eq!(blend(0xffffff, 0, 255), 0xffffff);
        assert_eq!(blend(0xffffff, 0, 0), 0);
    }
}
