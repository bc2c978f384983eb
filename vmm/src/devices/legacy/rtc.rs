//! A read-only CMOS real-time clock on ports 0x70/0x71.
//!
//! Without one, Linux's `rtc_cmos` probe polls for several seconds before giving up (measured
//! 4.5 s nested); with it the guest also gets the time of day at boot. Time is reported in
//! BCD, 24-hour mode, from the host's UTC clock; writes to the clock are ignored and alarms
//! never fire.

use std::time::{SystemTime, UNIX_EPOCH};

use crate::bus::BusDevice;

/// CMOS registers served (index → value).
pub struct Rtc {
    index: u8,
}

impl Default for Rtc {
    fn default() -> Self {
        Self::new()
    }
}

fn bcd(v: u32) -> u8 {
    (((v / 10) % 10) << 4 | (v % 10)) as u8
}

/// Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

impl Rtc {
    /// A clock reading the host's time.
    pub fn new() -> Self {
        Self { index: 0 }
    }

    /// The value of CMOS register `index` at `unix` seconds.
    pub fn register(index: u8, unix: u64) -> u8 {
        let secs = unix % 86_400;
        let days = (unix / 86_400) as i64;
        let (y, m, d) = civil_from_days(days);
        match index {
            0x00 => bcd((secs % 60) as u32),
            0x02 => bcd(((secs / 60) % 60) as u32),
            0x04 => bcd((secs / 3600) as u32),
            0x06 => (((days + 4).rem_euclid(7)) + 1) as u8, // day of week, Sunday = 1
            0x07 => bcd(d),
            0x08 => bcd(m),
            0x09 => bcd((y % 100) as u32),
            0x32 => bcd((y / 100) as u32),
            0x0a => 0x26, // no update in progress, 32.768 kHz base, 1024 Hz rate
            0x0b => 0x02, // 24-hour mode, BCD, no interrupts enabled
            0x0c => 0x00,
            0x0d => 0x80, // battery good
            _ => 0x00,
        }
    }
}

impl BusDevice for Rtc {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let v = if offset == 1 {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            Self::register(self.index, now)
        } else {
            self.index
        };
        if let Some(b) = data.first_mut() {
            *b = v;
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset == 0 {
            if let Some(&v) = data.first() {
                // Bit 7 is the NMI mask on a PC, not part of the index.
                self.index = v & 0x7f;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_time_in_bcd() {
        // 2026-11-22 23:34:05 UTC, a Sunday.
        let t = 1_795_390_445;
        assert_eq!(civil_from_days(t as i64 / 86_400), (2026, 11, 22));
        assert_eq!(Rtc::register(0x00, t), 0x05);
        assert_eq!(Rtc::register(0x02, t), 0x34);
        assert_eq!(Rtc::register(0x04, t), 0x23);
        assert_eq!(Rtc::register(0x07, t), 0x22);
        assert_eq!(Rtc::register(0x08, t), 0x11);
        assert_eq!(Rtc::register(0x09, t), 0x26);
        assert_eq!(Rtc::register(0x32, t), 0x20);
        assert_eq!(Rtc::register(0x06, t), 1);
        let mut rtc = Rtc::new();
        rtc.write(0, &[0x8d]);
        let mut b = [0u8];
        rtc.read(1, &mut b);
        assert_eq!(b[0], 0x80);
    }
}
