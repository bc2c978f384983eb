//! What the person at the terminal sees before the appliances take over the screen: the
//! login result, a progress bar per appliance while the cache fills, and what happened at
//! logout.

use receiver::fill::Progress;
use receiver::progress::duration;
use std::io::Write;
use std::sync::{Arc, Mutex};
use support::size::human;

/// Width of a progress bar in characters.
const BAR_WIDTH: usize = 24;

/// `[#########...............]`
pub fn bar(done: u64, total: u64) -> String {
    let filled = if total == 0 {
        BAR_WIDTH
    } else {
        ((done.min(total) as u128 * BAR_WIDTH as u128) / total as u128) as usize
    };
    format!("[{}{}]", "#".repeat(filled), ".".repeat(BAR_WIDTH - filled))
}

/// One line per appliance: bar, bytes, state, time left; then a total line with the rate.
pub fn progress_lines(p: &Progress) -> Vec<String> {
    let mut lines = Vec::new();
    for a in &p.appliances {
        let state = if a.complete() {
            "complete".to_string()
        } else if a.boot_ready() {
            "booting; the rest follows".to_string()
        } else {
            format!(
                "boot chunks {} / {}",
                human(a.boot_done_bytes),
                human(a.boot_total_bytes)
            )
        };
        let left = match a.eta {
            Some(d) if !a.complete() => format!(", {} left", duration(d)),
            _ => String::new(),
        };
        lines.push(format!(
            "  {:<12} v{:<3} {} {:>9} / {:<9} {state}{left}",
            a.name,
            a.version,
            bar(a.done_bytes, a.total_bytes),
            human(a.done_bytes),
            human(a.total_bytes),
        ));
    }
    lines.push(format!(
        "  {:<17} {} {:>9} / {:<9} {}/s, {} left",
        "total",
        bar(p.done_bytes, p.total_bytes),
        human(p.done_bytes),
        human(p.total_bytes),
        human(p.rate as u64),
        p.eta.map(duration).unwrap_or_else(|| "?".into()),
    ));
    lines
}

/// Redraws a block of lines in place (ANSI cursor-up on a VT or a serial terminal).
#[derive(Default)]
pub struct LiveBlock {
    drawn: usize,
}

impl LiveBlock {
    /// Draws `lines` over the previous block.
    pub fn draw(&mut self, out: &mut dyn Write, lines: &[String]) {
        let mut text = String::new();
        if self.drawn > 0 {
            text.push_str(&format!("\x1b[{}A", self.drawn));
        }
        for l in lines {
            text.push_str(&format!("\r\x1b[K{l}\r\n"));
        }
        let _ = out.write_all(text.as_bytes());
        let _ = out.flush();
        self.drawn = lines.len();
    }
}

/// A writer that holds what is written until it is opened: the console switcher writes
/// through it, so an appliance that boots while other appliances' bars are still drawn
/// does not scribble over them; its output appears when the screen is handed over.
#[derive(Clone)]
pub struct Gate {
    inner: Arc<Mutex<GateState>>,
}

struct GateState {
    open: bool,
    held: Vec<u8>,
    out: Box<dyn Write + Send>,
}

/// Most bytes held back; the consoles' own backlogs keep more.
const HELD_MAX: usize = 256 * 1024;

impl Gate {
    /// A closed gate in front of `out`.
    pub fn new(out: Box<dyn Write + Send>) -> Gate {
        Gate {
            inner: Arc::new(Mutex::new(GateState {
                open: false,
                held: Vec::new(),
                out,
            })),
        }
    }

    /// Lets held and future output through.
    pub fn open(&self) {
        if let Ok(mut s) = self.inner.lock() {
            s.open = true;
            let held = std::mem::take(&mut s.held);
            let _ = s.out.write_all(&held);
            let _ = s.out.flush();
        }
    }
}

impl Write for Gate {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut s = self
            .inner
            .lock()
            .map_err(|_| std::io::Error::other("screen lock poisoned"))?;
        if s.open {
            s.out.write_all(buf)?;
        } else {
            s.held.extend_from_slice(buf);
            let excess = s.held.len().saturating_sub(HELD_MAX);
            s.held.drain(..excess);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self.inner.lock() {
            Ok(mut s) if s.open => s.out.flush(),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use receiver::fill::ApplianceProgress;

    #[test]
    fn bars_are_proportional_and_bounded() {
        assert_eq!(bar(0, 100), format!("[{}]", ".".repeat(BAR_WIDTH)));
        assert_eq!(bar(100, 100), format!("[{}]", "#".repeat(BAR_WIDTH)));
        assert_eq!(bar(50, 100).matches('#').count(), BAR_WIDTH / 2);
        assert_eq!(bar(500, 100).matches('#').count(), BAR_WIDTH);
        assert_eq!(bar(0, 0).matches('#').count(), BAR_WIDTH);
    }

    #[test]
    fn progress_names_each_appliance_with_bytes_and_time_left() {
        let p = Progress {
            appliances: vec![ApplianceProgress {
                name: "desk".into(),
                version: 2,
                total_bytes: 4 << 20,
                done_bytes: 1 << 20,
                boot_total_bytes: 1 << 20,
                boot_done_bytes: 1 << 20,
                eta: Some(std::time::Duration::from_secs(75)),
            }],
            total_bytes: 4 << 20,
            done_bytes: 1 << 20,
            rate: 1048576.0,
            ..Default::default()
        };
        let lines = progress_lines(&p);
        assert!(lines[0].contains("desk"), "{}", lines[0]);
        assert!(lines[0].contains("v2"), "{}", lines[0]);
        assert!(lines[0].contains("1:15 left"), "{}", lines[0]);
        assert!(lines[0].contains("booting"), "{}", lines[0]);
        assert!(lines[1].contains("/s"), "{}", lines[1]);
    }

    #[test]
    fn the_gate_holds_output_until_opened() {
        #[derive(Clone, Default)]
        struct Sink(Arc<Mutex<Vec<u8>>>);
        impl Write for Sink {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let sink = Sink::default();
        let mut gate = Gate::new(Box::new(sink.clone()));
        gate.write_all(b"early ").unwrap();
        assert!(sink.0.lock().unwrap().is_empty());
        gate.open();
        gate.write_all(b"late").unwrap();
        assert_eq!(&sink.0.lock().unwrap()[..], b"early late");
    }
}
