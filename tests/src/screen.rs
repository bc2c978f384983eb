//! The PC's screen, keyboard and pointer of a QEMU machine, through its monitor: the
//! screen as QEMU shows it (`screendump`, exactly what the guest's display holds), keys
//! as a person would type them (`sendkey`), and an absolute pointer such as
//! `virtio-tablet-pci` (QMP `input-send-event`: HMP's `mouse_move` is relative and goes to
//! the PS/2 mouse, in steps).

use crate::qemu::Machine;
use anyhow::{bail, Context, Result};
use std::time::{Duration, Instant};

/// A screenshot: XRGB8888 pixels, row after row.
#[derive(Clone, Debug)]
pub struct Screenshot {
    pub width: u32,
    pub height: u32,
    pub pixels: Vec<u32>,
}

impl Screenshot {
    /// Parses a binary PPM (P6, maxval 255), as QEMU's `screendump` writes it.
    pub fn parse_ppm(bytes: &[u8]) -> Result<Screenshot> {
        let mut fields = Vec::new();
        let mut at = 0;
        while fields.len() < 4 {
            while at < bytes.len() && bytes[at].is_ascii_whitespace() {
                at += 1;
            }
            if bytes.get(at) == Some(&b'#') {
                while at < bytes.len() && bytes[at] != b'\n' {
                    at += 1;
                }
                continue;
            }
            let start = at;
            while at < bytes.len() && !bytes[at].is_ascii_whitespace() {
                at += 1;
            }
            anyhow::ensure!(at > start, "truncated PPM header");
            fields.push(String::from_utf8_lossy(&bytes[start..at]).into_owned());
        }
        at += 1;
        anyhow::ensure!(fields[0] == "P6", "not a binary PPM: {}", fields[0]);
        let width: u32 = fields[1].parse()?;
        let height: u32 = fields[2].parse()?;
        anyhow::ensure!(fields[3] == "255", "PPM maxval {} is not 255", fields[3]);
        let data = bytes.get(at..).context("PPM without pixels")?;
        let n = width as usize * height as usize;
        anyhow::ensure!(
            data.len() >= n * 3,
            "PPM has {} bytes for {n} pixels",
            data.len()
        );
        let pixels = data[..n * 3]
            .chunks_exact(3)
            .map(|p| u32::from(p[0]) << 16 | u32::from(p[1]) << 8 | u32::from(p[2]))
            .collect();
        Ok(Screenshot {
            width,
            height,
            pixels,
        })
    }

    pub fn pixel(&self, x: u32, y: u32) -> u32 {
        self.pixels[(y * self.width + x) as usize]
    }

    /// Pixels (sampled on a grid of `step`) that differ from `expected(x, y)`, with the
    /// first few for the failure message.
    pub fn mismatches(&self, step: u32, expected: impl Fn(u32, u32) -> u32) -> (usize, String) {
        let (mut count, mut first) = (0, String::new());
        for y in (0..self.height).step_by(step as usize) {
            for x in (0..self.width).step_by(step as usize) {
                let (got, want) = (self.pixel(x, y), expected(x, y));
                if got != want {
                    count += 1;
                    if count <= 5 {
                        first.push_str(&format!(" ({x},{y}) {got:06x}!={want:06x}"));
                    }
                }
            }
        }
        (count, first)
    }

    /// How many sampled pixels equal `expected(x, y)`.
    pub fn matches(&self, step: u32, expected: impl Fn(u32, u32) -> u32) -> usize {
        let total = (self.width.div_ceil(step) * self.height.div_ceil(step)) as usize;
        total - self.mismatches(step, expected).0
    }
}

/// QEMU's key name (qcode) for a character, with shift when it needs one.
fn qcode(c: char) -> Option<String> {
    let plain = |s: &str| Some(s.to_string());
    match c {
        'a'..='z' | '0'..='9' => plain(&c.to_string()),
        'A'..='Z' => Some(format!("shift-{}", c.to_ascii_lowercase())),
        ' ' => plain("spc"),
        '\n' => plain("ret"),
        '-' => plain("minus"),
        '.' => plain("dot"),
        '/' => plain("slash"),
        '_' => plain("shift-minus"),
        '=' => plain("equal"),
        ',' => plain("comma"),
        ':' => plain("shift-semicolon"),
        _ => None,
    }
}

impl Machine {
    /// The screen as the PC's monitor shows it now.
    pub fn screendump(&mut self) -> Result<Screenshot> {
        let path = self.scratch_path("screen.ppm");
        let _ = std::fs::remove_file(&path);
        self.monitor(&format!("screendump {}", path.display()))?;
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Ok(bytes) = std::fs::read(&path) {
                if let Ok(shot) = Screenshot::parse_ppm(&bytes) {
                    return Ok(shot);
                }
            }
            if Instant::now() > deadline {
                bail!("screendump wrote no complete image to {}", path.display());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Takes screenshots until `ok` holds for one (returned) or `timeout` passes (the last
    /// one is returned in the error's message as its size).
    pub fn wait_for_screen(
        &mut self,
        timeout: Duration,
        mut ok: impl FnMut(&Screenshot) -> bool,
    ) -> Result<Screenshot> {
        let deadline = Instant::now() + timeout.mul_f64(crate::qemu::timeout_scale());
        loop {
            let shot = self.screendump()?;
            if ok(&shot) {
                return Ok(shot);
            }
            if Instant::now() > deadline {
                // Kept for a person to look at: the machine's scratch folder goes with it.
                let keep = std::env::temp_dir()
                    .join(format!("collective-screen-{}.ppm", std::process::id()));
                let _ = std::fs::copy(self.scratch_path("screen.ppm"), &keep);
                bail!(
                    "the screen ({}x{}) did not show what was expected within {:.0} s; the last screenshot is {}",
                    shot.width,
                    shot.height,
                    timeout.as_secs_f64(),
                    keep.display()
                );
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    /// Presses a key combination on the PC's keyboard, e.g. `a`, `ret`, `ctrl-alt-delete`.
    pub fn send_key(&mut self, keys: &str) -> Result<()> {
        let reply = self.monitor(&format!("sendkey {keys}"))?;
        anyhow::ensure!(!reply.contains("rror"), "sendkey {keys}: {reply}");
        Ok(())
    }

    /// Types `text` on the PC's keyboard, one key at a time.
    pub fn type_text(&mut self, text: &str) -> Result<()> {
        for c in text.chars() {
            let key = qcode(c).with_context(|| format!("no key for {c:?}"))?;
            self.send_key(&key)?;
        }
        Ok(())
    }

    /// Puts the PC's pointer at (x, y) in 0..=32767 on both axes, as an absolute pointing
    /// device (QEMU's tablet) reports it.
    pub fn pointer_to(&mut self, x: i32, y: i32) -> Result<()> {
        let axis = |axis: &str, value: i32| serde_json::json!({"type": "abs", "data": {"axis": axis, "value": value}});
        self.qmp(&serde_json::json!({
            "execute": "input-send-event",
            "arguments": {"events": [axis("x", x), axis("y", y)]}
        }))?;
        Ok(())
    }

    /// Presses (`down`) or releases the pointer's left button.
    pub fn pointer_button(&mut self, down: bool) -> Result<()> {
        self.qmp(&serde_json::json!({
            "execute": "input-send-event",
            "arguments": {"events": [
                {"type": "btn", "data": {"down": down, "button": "left"}}
            ]}
        }))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_qemus_ppm() {
        let mut ppm = b"P6\n2 1\n255\n".to_vec();
        ppm.extend_from_slice(&[255, 0, 0, 1, 2, 3]);
        let s = Screenshot::parse_ppm(&ppm).unwrap();
        assert_eq!((s.width, s.height), (2, 1));
        assert_eq!(s.pixels, vec![0xff0000, 0x010203]);
        assert!(Screenshot::parse_ppm(b"P6\n2 1\n255\n\x00").is_err());
    }

    #[test]
    fn keys_for_a_user_name_and_password() {
        assert_eq!(qcode('a').as_deref(), Some("a"));
        assert_eq!(qcode('W').as_deref(), Some("shift-w"));
        assert_eq!(qcode('-').as_deref(), Some("minus"));
        assert!("walk-up-and-work".chars().all(|c| qcode(c).is_some()));
    }
}
