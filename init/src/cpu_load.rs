//! How busy the terminal itself is, apart from its appliances: what `status` shows.
//!
//! The kernel counts time spent running a guest (KVM's guest mode) as `guest` in
//! `/proc/stat`, and also inside `user`. So the terminal's own work (session, seat, the
//! VMM's device threads and exits, the kernel's drivers) is every busy tick that is not
//! guest time. An idle desktop appliance should cost the terminal almost nothing; this is
//! where an operator (and a benchmark) reads whether it does.

use std::time::{Duration, Instant};

/// `/proc/stat` counts in USER_HZ, which is 100 on every Linux architecture we run on.
const TICKS_PER_SECOND: f64 = 100.0;

/// How often the load is measured.
pub const WINDOW: Duration = Duration::from_secs(10);

/// Cumulative CPU ticks of all cores.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CpuTicks {
    /// Busy ticks that were not spent running a guest.
    pub own: u64,
    /// Ticks spent running guests (appliances).
    pub guest: u64,
}

/// The first line of `/proc/stat`: `cpu user nice system idle iowait irq softirq steal
/// guest guest_nice`. Older kernels without the guest columns count no guest time.
pub fn parse_proc_stat(text: &str) -> Option<CpuTicks> {
    let line = text.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse().ok())
        .collect::<Option<_>>()?;
    let at = |i: usize| v.get(i).copied().unwrap_or(0);
    let (user, nice, system, irq, softirq) = (at(0), at(1), at(2), at(5), at(6));
    let guest = at(8) + at(9);
    let busy = user + nice + system + irq + softirq;
    Some(CpuTicks {
        own: busy.saturating_sub(guest),
        guest,
    })
}

/// The load over one window, in percent of one core (200 % is two busy cores).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CpuLoad {
    pub own_percent: f64,
    pub guest_percent: f64,
    pub window: Duration,
}

impl CpuLoad {
    /// The load between two readings taken `elapsed` apart.
    pub fn between(before: CpuTicks, after: CpuTicks, elapsed: Duration) -> Option<CpuLoad> {
        let secs = elapsed.as_secs_f64();
        if secs <= 0.0 {
            return None;
        }
        let percent = |a: u64, b: u64| b.saturating_sub(a) as f64 / TICKS_PER_SECOND / secs * 100.0;
        Some(CpuLoad {
            own_percent: percent(before.own, after.own),
            guest_percent: percent(before.guest, after.guest),
            window: elapsed,
        })
    }

    /// The `status` line's text.
    pub fn describe(&self) -> String {
        format!(
            "terminal {:.1} % of a core, appliances {:.1} % (last {:.0} s)",
            self.own_percent,
            self.guest_percent,
            self.window.as_secs_f64()
        )
    }
}

/// Measures the load every [`WINDOW`] for as long as the terminal runs, handing each
/// result to `publish`.
pub fn start_sampler(publish: impl Fn(CpuLoad) + Send + 'static) {
    let read = || {
        std::fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|t| parse_proc_stat(&t))
    };
    let spawned = std::thread::Builder::new()
        .name("cpu-load".into())
        .spawn(move || {
            let Some(mut before) = read() else {
                log::warn!("cpu load: /proc/stat is unreadable; status shows no cpu line");
                return;
            };
            let mut at = Instant::now();
            loop {
                std::thread::sleep(WINDOW);
                let Some(now) = read() else { continue };
                if let Some(load) = CpuLoad::between(before, now, at.elapsed()) {
                    publish(load);
                }
                (before, at) = (now, Instant::now());
            }
        });
    if let Err(e) = spawned {
        log::warn!("cpu load: cannot start its thread: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_time_is_not_the_terminal_s_own() {
        let t = parse_proc_stat("cpu  100 5 50 1000 3 2 1 0 40 0\ncpu0 1 2 3\n").unwrap();
        // user+nice+system+irq+softirq = 158, of which 40 ran a guest.
        assert_eq!(
            t,
            CpuTicks {
                own: 118,
                guest: 40
            }
        );
    }

    #[test]
    fn old_kernels_without_guest_columns_count_everything_as_own() {
        let t = parse_proc_stat("cpu  10 0 5 100 0 0 0\n").unwrap();
        assert_eq!(t, CpuTicks { own: 15, guest: 0 });
        assert!(parse_proc_stat("intr 1 2 3\n").is_none());
        assert!(parse_proc_stat("cpu  a b c\n").is_none());
    }

    #[test]
    fn load_is_in_percent_of_one_core() {
        let a = CpuTicks { own: 0, guest: 0 };
        let b = CpuTicks { own: 5, guest: 150 };
        let l = CpuLoad::between(a, b, Duration::from_secs(10)).unwrap();
        assert!((l.own_percent - 0.5).abs() < 1e-9);
        assert!((l.guest_percent - 15.0).abs() < 1e-9);
        assert!(l
            .describe()
            .starts_with("terminal 0.5 % of a core, appliances 15.0 %"));
        assert!(CpuLoad::between(a, b, Duration::ZERO).is_none());
    }
}
