//! How the VM ends: devices and vCPUs report an [`ExitReason`] through a shared
//! [`ExitSignal`]; the thread that runs the VM waits on it and stops everything.

use std::sync::Mutex;

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// Why a VM stopped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExitReason {
    /// The guest powered off (ACPI S5, or KVM's system-event shutdown).
    PowerOff,
    /// The guest asked for a reset (i8042 pulse, ACPI reset register, triple fault).
    Reset,
    /// The vCPUs halted with interrupts off: nothing more will happen.
    Halt,
    /// The guest or KVM failed (internal error, failed entry, unexpected exit).
    Crash(String),
    /// The host asked the VM to stop (e.g. the user's console escape, a signal).
    Stopped,
}

impl ExitReason {
    /// Process exit code for the `vmm` command: 0 power-off, 2 reset, 3 crash, 4 stopped/halt.
    pub fn exit_code(&self) -> i32 {
        match self {
            ExitReason::PowerOff => 0,
            ExitReason::Reset => 2,
            ExitReason::Crash(_) => 3,
            ExitReason::Halt | ExitReason::Stopped => 4,
        }
    }
}

/// The first reason reported wins; later reports are ignored.
pub struct ExitSignal {
    reason: Mutex<Option<ExitReason>>,
    evt: EventFd,
}

impl ExitSignal {
    /// A fresh signal.
    pub fn new() -> std::io::Result<Self> {
        Ok(Self {
            reason: Mutex::new(None),
            evt: EventFd::new(EFD_NONBLOCK)?,
        })
    }

    /// Records `reason` (if none yet) and wakes the waiter.
    pub fn request(&self, reason: ExitReason) {
        let mut r = crate::bus::lock(&self.reason);
        if r.is_none() {
            log::info!("VM exit requested: {reason:?}");
            *r = Some(reason);
        }
        // An eventfd write only fails when the counter would overflow: already signalled.
        let _ = self.evt.write(1);
    }

    /// The reason, if one was reported.
    pub fn reason(&self) -> Option<ExitReason> {
        crate::bus::lock(&self.reason).clone()
    }

    /// The eventfd that becomes readable when a reason is reported.
    pub fn eventfd(&self) -> &EventFd {
        &self.evt
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_reason_wins() {
        let s = ExitSignal::new().unwrap();
        assert_eq!(s.reason(), None);
        s.request(ExitReason::PowerOff);
        s.request(ExitReason::Reset);
        assert_eq!(s.reason(), Some(ExitReason::PowerOff));
        assert_eq!(s.eventfd().read().unwrap(), 2);
        assert_eq!(ExitReason::PowerOff.exit_code(), 0);
        assert_ne!(ExitReason::Reset.exit_code(), 0);
    }
}
