//! Children PID 1 starts and waits for, beside the orphans it merely reaps.
//!
//! PID 1 must reap every exited process (`waitpid(-1)`), which would steal the exit
//! status of a child some thread is waiting for (a VMM, say). So the reaper records every
//! exit here, and a thread waiting for its own child reads the status from here instead
//! of calling `waitpid` itself.

use std::collections::HashMap;
use std::sync::{Condvar, Mutex};
use std::time::Duration;

/// Exit statuses by pid: a shell-style code (`128 + signal` for a signal).
static EXITS: Mutex<Option<HashMap<i32, i32>>> = Mutex::new(None);
static EXITED: Condvar = Condvar::new();

/// Most statuses nobody asks for (orphans); keep a bounded number.
const KEEP: usize = 256;

/// Called by the reaper for every exited process.
pub fn record(pid: i32, code: i32) {
    if let Ok(mut exits) = EXITS.lock() {
        let map = exits.get_or_insert_with(HashMap::new);
        if map.len() >= KEEP {
            map.clear();
        }
        map.insert(pid, code);
    }
    EXITED.notify_all();
}

/// Waits until `pid` has exited and returns its code; `None` on timeout.
pub fn wait(pid: i32, timeout: Option<Duration>) -> Option<i32> {
    let deadline = timeout.map(|t| std::time::Instant::now() + t);
    let mut exits = EXITS.lock().ok()?;
    loop {
        if let Some(code) = exits.as_mut().and_then(|m| m.remove(&pid)) {
            return Some(code);
        }
        exits = match deadline {
            None => EXITED.wait(exits).ok()?,
            Some(d) => {
                let left = d.saturating_duration_since(std::time::Instant::now());
                if left.is_zero() {
                    return None;
                }
                EXITED.wait_timeout(exits, left).ok()?.0
            }
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_recorded_exit_is_found_once() {
        record(424242, 3);
        assert_eq!(wait(424242, Some(Duration::from_millis(10))), Some(3));
        assert_eq!(wait(424242, Some(Duration::from_millis(10))), None);
    }

    #[test]
    fn a_waiter_is_woken_by_a_later_exit() {
        let waiter = std::thread::spawn(|| wait(515151, Some(Duration::from_secs(5))));
        std::thread::sleep(Duration::from_millis(50));
        record(515151, 0);
        assert_eq!(waiter.join().unwrap(), Some(0));
    }
}
