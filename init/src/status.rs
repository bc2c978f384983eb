//! What the login screen shows: the terminal's state, shared between bring-up and the
//! console threads.

use crate::kvm::KvmStatus;
use crate::net::Nic;
use std::fmt::Write as _;
use std::sync::{Condvar, Mutex};
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct TerminalStatus {
    pub name: String,
    /// Kernel release and package, from `/etc/collective/firmware`.
    pub firmware: String,
    pub nics: Vec<Nic>,
    pub kvm: KvmStatus,
    pub cache: String,
    /// The cache disk init checked, for the session; `None`: run from memory.
    pub cache_device: Option<std::path::PathBuf>,
    pub repo: Option<String>,
    /// Things that went wrong during bring-up, each a line a person can act on.
    pub problems: Vec<String>,
    /// Seconds from kernel start to the end of bring-up.
    pub boot_seconds: Option<f64>,
    /// Whether bring-up has finished; until then KVM and network show as starting.
    pub complete: bool,
    /// Each NIC's address, or what DHCP is doing about it.
    pub addresses: std::collections::BTreeMap<String, String>,
    /// The last measured CPU load (none until the first window has passed).
    pub cpu: Option<crate::cpu_load::CpuLoad>,
}

impl Default for TerminalStatus {
    fn default() -> Self {
        TerminalStatus {
            // Unknown until the network cards are up: the banner then leaves it out.
            name: String::new(),
            firmware: String::new(),
            nics: Vec::new(),
            kvm: KvmStatus::Pending,
            cache: String::new(),
            cache_device: None,
            repo: None,
            problems: Vec::new(),
            boot_seconds: None,
            complete: false,
            addresses: Default::default(),
            cpu: None,
        }
    }
}

impl TerminalStatus {
    /// The banner above `login:`. Plain ASCII: serial terminals and the VGA font both
    /// show it. Lines end in CRLF because the tty may be in raw output mode.
    pub fn banner(&self) -> String {
        let mut s = String::new();
        s.push_str("\r\nCollective terminal");
        if !self.name.is_empty() {
            let _ = write!(s, " {}", self.name);
        }
        if !self.firmware.is_empty() {
            let _ = write!(s, "  (firmware: {})", self.firmware);
        }
        s.push_str("\r\n");
        s.push_str(&self.hardware_lines());
        let _ = write!(s, "  cache       {}\r\n", self.cache);
        match &self.repo {
            Some(url) => {
                let _ = write!(s, "  repository  {url}\r\n");
            }
            None => s.push_str("  repository  none configured (add collective.repo=URL to the kernel command line)\r\n"),
        }
        for problem in &self.problems {
            let _ = write!(s, "  problem     {problem}\r\n");
        }
        if let Some(secs) = self.boot_seconds {
            let _ = write!(s, "  ready in    {secs:.2} s after the kernel started\r\n");
        }
        if let Some(cpu) = &self.cpu {
            let _ = write!(s, "  cpu         {}\r\n", cpu.describe());
        }
        s.push_str("\r\nLog in with your user name, or type help, status, reboot or poweroff.\r\n");
        s
    }

    /// The lines that change when drivers finish loading: network cards and KVM.
    pub fn hardware_lines(&self) -> String {
        let mut s = String::new();
        if self.nics.is_empty() {
            s.push_str(if self.complete {
                "  network     no network card found\r\n"
            } else {
                "  network     starting (loading drivers)\r\n"
            });
        }
        for nic in &self.nics {
            let link = match nic.link {
                Some(true) => "link up",
                Some(false) => "no link yet (is the cable in?)",
                None => "link unknown",
            };
            let address = self
                .addresses
                .get(&nic.name)
                .map(String::as_str)
                .unwrap_or("none yet");
            let _ = write!(
                s,
                "  network     {} {}, {}, address: {address}\r\n",
                nic.name, nic.mac, link
            );
        }
        let _ = write!(s, "  kvm         {}\r\n", self.kvm);
        s
    }
}

/// The status plus a latch that opens when bring-up has finished, so consoles do not
/// draw a half-known screen.
pub struct StatusBoard {
    status: Mutex<TerminalStatus>,
    ready: Mutex<bool>,
    ready_signal: Condvar,
}

impl StatusBoard {
    pub fn new(status: TerminalStatus) -> StatusBoard {
        StatusBoard {
            status: Mutex::new(status),
            ready: Mutex::new(false),
            ready_signal: Condvar::new(),
        }
    }

    pub fn snapshot(&self) -> TerminalStatus {
        match self.status.lock() {
            Ok(s) => s.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    pub fn update(&self, change: impl FnOnce(&mut TerminalStatus)) {
        match self.status.lock() {
            Ok(mut s) => change(&mut s),
            Err(poisoned) => change(&mut poisoned.into_inner()),
        }
    }

    pub fn mark_ready(&self) {
        if let Ok(mut ready) = self.ready.lock() {
            *ready = true;
        }
        self.ready_signal.notify_all();
    }

    /// Waits for bring-up, but never forever: a stuck step must not hide the prompt.
    pub fn wait_ready(&self, timeout: Duration) {
        let Ok(guard) = self.ready.lock() else { return };
        let _ = self
            .ready_signal
            .wait_timeout_while(guard, timeout, |ready| !*ready);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn banner_shows_identity_kvm_cache_and_repository() {
        let status = TerminalStatus {
            name: "terminal-525400123456".into(),
            nics: vec![Nic {
                name: "eth0".into(),
                mac: "52:54:00:12:34:56".into(),
                link: Some(true),
            }],
            kvm: KvmStatus::Ready {
                module: "kvm_amd".into(),
                api_version: 12,
            },
            cache: "none: running from memory".into(),
            repo: Some("http://10.0.2.2:8080".into()),
            ..TerminalStatus::default()
        };
        let banner = status.banner();
        for needle in [
            "52:54:00:12:34:56",
            "ready: /dev/kvm (kvm_amd, API 12)",
            "running from memory",
            "http://10.0.2.2:8080",
        ] {
            assert!(banner.contains(needle), "{needle} missing from {banner}");
        }
    }

    #[test]
    fn banner_explains_a_missing_repository() {
        let banner = TerminalStatus::default().banner();
        assert!(banner.contains("collective.repo=URL"));
        // No name yet: never "Collective terminal terminal".
        assert!(
            banner.starts_with("\r\nCollective terminal\r\n"),
            "{banner}"
        );
        assert!(banner.contains("network     starting"));
        let done = TerminalStatus {
            complete: true,
            ..TerminalStatus::default()
        };
        assert!(done.banner().contains("no network card"));
    }
}
