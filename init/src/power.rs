//! Power: turning requests (prompt, Ctrl-Alt-Del, power button) into one orderly shutdown.
//!
//! Every request becomes a signal to PID 1 (the convention busybox and sysvinit use:
//! SIGINT from the kernel for Ctrl-Alt-Del, SIGTERM reboot, SIGUSR2 power off, SIGUSR1
//! halt), so the supervisor loop is the only place that shuts down, whoever asked.

use log::{info, warn};
use nix::sys::reboot::{reboot, RebootMode};
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use std::fs::{self, OpenOptions};
use std::io::{Read, Write};
use std::path::Path;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PowerAction {
    PowerOff,
    Reboot,
    Halt,
}

impl PowerAction {
    pub fn from_signal(signal: Signal) -> Option<PowerAction> {
        match signal {
            Signal::SIGINT | Signal::SIGTERM => Some(PowerAction::Reboot),
            Signal::SIGUSR2 | Signal::SIGPWR => Some(PowerAction::PowerOff),
            Signal::SIGUSR1 => Some(PowerAction::Halt),
            _ => None,
        }
    }

    fn signal(self) -> Signal {
        match self {
            PowerAction::PowerOff => Signal::SIGUSR2,
            PowerAction::Reboot => Signal::SIGTERM,
            PowerAction::Halt => Signal::SIGUSR1,
        }
    }

    fn words(self) -> &'static str {
        match self {
            PowerAction::PowerOff => "powering off",
            PowerAction::Reboot => "rebooting",
            PowerAction::Halt => "halting",
        }
    }
}

/// Asks PID 1 (ourselves, from another thread) to shut down.
pub fn request(action: PowerAction) {
    if let Err(e) = kill(nix::unistd::getpid(), action.signal()) {
        warn!("cannot request {}: {e}", action.words());
    }
}

/// Reaps every exited child; PID 1 inherits every orphan in the system.
pub fn reap_children() {
    loop {
        match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) | Err(_) => return,
            Ok(WaitStatus::Exited(pid, code)) => crate::children::record(pid.as_raw(), code),
            Ok(WaitStatus::Signaled(pid, signal, _)) => {
                crate::children::record(pid.as_raw(), 128 + signal as i32)
            }
            Ok(status) => log::debug!("reaped {status:?}"),
        }
    }
}

/// Stops everything and powers off, reboots or halts. Never returns.
pub fn shutdown(action: PowerAction, consoles: &[String]) -> ! {
    let message = format!("\r\nThe terminal is {}.\r\n", action.words());
    for console in consoles {
        if let Ok(mut tty) = OpenOptions::new()
            .write(true)
            .custom_flags_noctty()
            .open(format!("/dev/{console}"))
        {
            let _ = tty.write_all(message.as_bytes());
        }
    }
    info!("{}", action.words());
    // Give programs (the VMM, later) the chance to flush, then insist.
    let _ = kill(Pid::from_raw(-1), Signal::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline && has_children() {
        reap_children();
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = kill(Pid::from_raw(-1), Signal::SIGKILL);
    reap_children();
    crate::network::release_all();
    nix::unistd::sync();
    let mode = match action {
        PowerAction::PowerOff => RebootMode::RB_POWER_OFF,
        PowerAction::Reboot => RebootMode::RB_AUTOBOOT,
        PowerAction::Halt => RebootMode::RB_HALT_SYSTEM,
    };
    loop {
        let err = reboot(mode);
        // Only reached if the kernel refused; nothing else can be done but wait.
        warn!("reboot({mode:?}) failed: {err:?}");
        std::thread::sleep(Duration::from_secs(5));
    }
}

fn has_children() -> bool {
    let Ok(entries) = fs::read_dir("/proc") else {
        return false;
    };
    let me = std::process::id().to_string();
    entries.flatten().any(|e| {
        fs::read_to_string(e.path().join("stat"))
            .ok()
            .and_then(|stat| {
                stat.rsplit_once(") ")
                    .map(|(_, rest)| rest.split_whitespace().nth(1) == Some(me.as_str()))
            })
            .unwrap_or(false)
    })
}

trait NoCtty {
    fn custom_flags_noctty(&mut self) -> &mut Self;
}

impl NoCtty for OpenOptions {
    fn custom_flags_noctty(&mut self) -> &mut Self {
        use std::os::unix::fs::OpenOptionsExt;
        self.custom_flags(libc::O_NOCTTY)
    }
}

/// `struct input_event` on x86-64: timeval (16 bytes), type, code (u16 each), value (i32).
const INPUT_EVENT_SIZE: usize = 24;
const EV_KEY: u16 = 1;
const KEY_POWER: u16 = 116;

/// Whether an input device (`/sys/class/input/eventN`) is a power button.
pub fn is_power_button(sys_input_event: &Path) -> bool {
    fs::read_to_string(sys_input_event.join("device/name"))
        .map(|n| n.trim() == "Power Button")
        .unwrap_or(false)
}

/// Watches `/dev/input/eventN` for a press of the power key, then requests power-off.
pub fn watch_power_button(dev: String) {
    static WATCHED: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    match WATCHED.lock() {
        Ok(watched) if watched.contains(&dev) => return,
        Ok(mut watched) => watched.push(dev.clone()),
        Err(_) => {}
    }
    let spawned = std::thread::Builder::new()
        .name(format!("power-{dev}"))
        .spawn(move || {
            let mut file = match fs::File::open(format!("/dev/input/{dev}")) {
                Ok(f) => f,
                Err(e) => {
                    warn!("power button {dev}: {e}");
                    return;
                }
            };
            info!("watching power button /dev/input/{dev}");
            let mut event = [0u8; INPUT_EVENT_SIZE];
            while file.read_exact(&mut event).is_ok() {
                let kind = u16::from_ne_bytes([event[16], event[17]]);
                let code = u16::from_ne_bytes([event[18], event[19]]);
                let value = i32::from_ne_bytes([event[20], event[21], event[22], event[23]]);
                if kind == EV_KEY && code == KEY_POWER && value == 1 {
                    info!("power button pressed");
                    request(PowerAction::PowerOff);
                }
            }
        });
    if let Err(e) = spawned {
        warn!("cannot watch the power button: {e}");
    }
}

/// Finds power buttons present now and watches each.
pub fn watch_power_buttons() -> usize {
    let Ok(entries) = fs::read_dir("/sys/class/input") else {
        return 0;
    };
    let mut n = 0;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with("event") && is_power_button(&entry.path()) {
            watch_power_button(name);
            n += 1;
        }
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_map_to_the_conventional_actions() {
        assert_eq!(
            PowerAction::from_signal(Signal::SIGINT),
            Some(PowerAction::Reboot)
        );
        assert_eq!(
            PowerAction::from_signal(Signal::SIGUSR2),
            Some(PowerAction::PowerOff)
        );
        assert_eq!(
            PowerAction::from_signal(Signal::SIGUSR1),
            Some(PowerAction::Halt)
        );
        assert_eq!(PowerAction::from_signal(Signal::SIGCHLD), None);
        for action in [
            PowerAction::PowerOff,
            PowerAction::Reboot,
            PowerAction::Halt,
        ] {
            assert_eq!(PowerAction::from_signal(action.signal()), Some(action));
        }
    }
}
