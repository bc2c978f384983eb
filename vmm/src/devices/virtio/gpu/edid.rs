//! A synthesized EDID 1.4 for a display mode, used when the monitor's own is not known.
//!
//! Linux's virtio-gpu driver builds its mode list from the EDID when the device offers
//! `VIRTIO_GPU_F_EDID`; one detailed timing descriptor with the mode at 60 Hz (CVT reduced
//! blanking figures) makes that mode the preferred one. Fields a DTD cannot hold (more
//! than 4095 pixels, a pixel clock over 655.35 MHz) are clamped: GET_DISPLAY_INFO still
//! reports the true size.

/// Bytes in an EDID base block.
pub const EDID_LEN: usize = 128;
/// Refresh rate of the synthesized preferred mode.
pub const REFRESH_HZ: u32 = 60;

const H_FRONT: u32 = 48;
const H_SYNC: u32 = 32;
const H_BLANK: u32 = 160;
const V_FRONT: u32 = 3;
const V_SYNC: u32 = 5;
/// Millimetres per 100 pixels at 96 DPI.
const MM_PER_100_PX: u32 = 26;

/// The vertical blanking lines for `height` active lines (CVT-RB asks for ≥ 460 µs).
fn v_blank(height: u32) -> u32 {
    // 460 µs of a 60 Hz frame is 2.76 % of it.
    (height * 3 / 100 + 1).max(V_FRONT + V_SYNC + 6)
}

/// The EDID checksum byte: makes the block's bytes sum to 0 mod 256.
pub fn checksum(block: &[u8]) -> u8 {
    0u8.wrapping_sub(block.iter().fold(0u8, |a, b| a.wrapping_add(*b)))
}

/// An EDID 1.4 base block whose preferred mode is `width` x `height` at 60 Hz.
pub fn synthesize(width: u32, height: u32) -> [u8; EDID_LEN] {
    let mut e = [0u8; EDID_LEN];
    e[0..8].copy_from_slice(&[0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x00]);
    // Manufacturer "CLT" (5-bit letters, big-endian), product 1, no serial.
    let id =
        (u16::from(b'C' - b'@') << 10) | (u16::from(b'L' - b'@') << 5) | u16::from(b'T' - b'@');
    e[8..10].copy_from_slice(&id.to_be_bytes());
    e[10..12].copy_from_slice(&1u16.to_le_bytes());
    e[16] = 1; // week
    e[17] = 34; // 2024
    e[18] = 1; // EDID 1.4
    e[19] = 4;
    e[20] = 0xa5; // digital, 8 bits per colour, DisplayPort
    let w = width.clamp(1, 4095);
    let h = height.clamp(1, 4095);
    let w_mm = (w * MM_PER_100_PX / 100).min(4095);
    let h_mm = (h * MM_PER_100_PX / 100).min(4095);
    e[21] = (w_mm / 10).clamp(1, 255) as u8;
    e[22] = (h_mm / 10).clamp(1, 255) as u8;
    e[23] = 120; // gamma 2.2
    e[24] = 0x06; // sRGB default, preferred timing is native, RGB 4:4:4
                  // sRGB chromaticity.
    e[25..35].copy_from_slice(&[0xee, 0x91, 0xa3, 0x54, 0x4c, 0x99, 0x26, 0x0f, 0x50, 0x54]);
    // No established timings; standard timings unused.
    for i in 0..8 {
        e[38 + 2 * i] = 1;
        e[39 + 2 * i] = 1;
    }
    dtd(&mut e[54..72], w, h, w_mm, h_mm);
    // Monitor name.
    e[72..77].copy_from_slice(&[0, 0, 0, 0xfc, 0]);
    e[77..90].copy_from_slice(b"Collective\n  ");
    // Two dummy descriptors.
    e[93] = 0x10;
    e[111] = 0x10;
    e[126] = 0; // no extensions
    e[127] = checksum(&e[..127]);
    e
}

/// A detailed timing descriptor for `w` x `h` at 60 Hz.
fn dtd(d: &mut [u8], w: u32, h: u32, w_mm: u32, h_mm: u32) {
    let vb = v_blank(h);
    let clock = (u64::from(w + H_BLANK) * u64::from(h + vb) * u64::from(REFRESH_HZ) / 10_000)
        .clamp(1, u64::from(u16::MAX)) as u16;
    d[0..2].copy_from_slice(&clock.to_le_bytes());
    d[2] = w as u8;
    d[3] = H_BLANK as u8;
    d[4] = (((w >> 8) & 0xf) << 4 | ((H_BLANK >> 8) & 0xf)) as u8;
    d[5] = h as u8;
    d[6] = vb as u8;
    d[7] = (((h >> 8) & 0xf) << 4 | ((vb >> 8) & 0xf)) as u8;
    d[8] = H_FRONT as u8;
    d[9] = H_SYNC as u8;
    d[10] = (((V_FRONT & 0xf) << 4) | (V_SYNC & 0xf)) as u8;
    d[11] = ((((H_FRONT >> 8) & 3) << 6)
        | (((H_SYNC >> 8) & 3) << 4)
        | (((V_FRONT >> 4) & 3) << 2)
        | ((V_SYNC >> 4) & 3)) as u8;
    d[12] = w_mm as u8;
    d[13] = h_mm as u8;
    d[14] = (((w_mm >> 8) & 0xf) << 4 | ((h_mm >> 8) & 0xf)) as u8;
    d[15] = 0;
    d[16] = 0;
    d[17] = 0x1a; // digital separate sync, +hsync, -vsync
}

/// The first detailed timing of an EDID: (width, height, refresh in Hz rounded).
pub fn preferred_mode(edid: &[u8]) -> Option<(u32, u32, u32)> {
    let d = edid.get(54..72)?;
    let clock = u64::from(u16::from_le_bytes([d[0], d[1]])) * 10_000;
    if clock == 0 {
        return None;
    }
    let w = u32::from(d[2]) | (u32::from(d[4] >> 4) << 8);
    let hb = u32::from(d[3]) | (u32::from(d[4] & 0xf) << 8);
    let h = u32::from(d[5]) | (u32::from(d[7] >> 4) << 8);
    let vb = u32::from(d[6]) | (u32::from(d[7] & 0xf) << 8);
    let total = u64::from(w + hb) * u64::from(h + vb);
    let hz = ((clock + total / 2) / total.max(1)) as u32;
    Some((w, h, hz))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_and_header_are_valid() {
        for (w, h) in [
            (1024, 768),
            (1920, 1080),
            (3840, 2160),
            (1, 1),
            (9000, 9000),
        ] {
            let e = synthesize(w, h);
            assert_eq!(
                e.iter().fold(0u8, |a, b| a.wrapping_add(*b)),
                0,
                "{w}x{h}: bytes sum to 0"
            );
            assert_eq!(&e[..8], &[0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0]);
            assert_eq!((e[18], e[19]), (1, 4));
        }
        assert_eq!(checksum(&[1, 2, 3]), 250);
    }

    #[test]
    fn preferred_mode_round_trips() {
        for (w, h) in [
            (640, 480),
            (1024, 768),
            (1280, 800),
            (1920, 1080),
            (2560, 1440),
        ] {
            assert_eq!(
                preferred_mode(&synthesize(w, h)),
                Some((w, h, 60)),
                "{w}x{h}"
            );
        }
        // 4K still fits the 16-bit pixel clock.
        assert_eq!(
            preferred_mode(&synthesize(3840, 2160)),
            Some((3840, 2160, 60))
        );
        // Beyond a DTD's 12 bits the size is clamped, never wrapped.
        let (w, h, _) = preferred_mode(&synthesize(9000, 5000)).unwrap();
        assert_eq!((w, h), (4095, 4095));
    }
}
