//! The network as the login screen reports it: loopback up, and the terminal's NICs.
//!
//! The screen shows each NIC's MAC address and link state, which is what an
//! administrator needs to find the terminal in a switch or DHCP log; addresses come
//! from DHCP in the background (`network`, `dhcp`) and join the screen when they arrive.

use log::warn;
use std::fs;
use std::path::Path;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nic {
    pub name: String,
    pub mac: String,
    /// `Some(true)` when the cable is in and the link negotiated.
    pub link: Option<bool>,
}

/// Ethernet interfaces (ARPHRD_ETHER), sorted by name.
pub fn list_nics(sys_class_net: &Path) -> Vec<Nic> {
    let Ok(entries) = fs::read_dir(sys_class_net) else {
        return Vec::new();
    };
    let mut nics: Vec<Nic> = entries
        .flatten()
        .filter_map(|e| {
            let dir = e.path();
            let read = |f: &str| {
                fs::read_to_string(dir.join(f))
                    .ok()
                    .map(|s| s.trim().to_string())
            };
            if read("type").as_deref() != Some("1") {
                return None;
            }
            // Bridges and taps we create later are ethernet too; only real devices count.
            if !dir.join("device").exists() {
                return None;
            }
            Some(Nic {
                name: e.file_name().to_string_lossy().into_owned(),
                mac: read("address").unwrap_or_default(),
                link: read("carrier").map(|c| c == "1"),
            })
        })
        .collect();
    nics.sort_by(|a, b| a.name.cmp(&b.name));
    nics
}

/// Sets IFF_UP on an interface, so loopback works and NICs report carrier.
pub fn set_up(name: &str) -> Result<(), String> {
    support::netif::set_up(name).map_err(|e| format!("{name}: cannot bring it up: {e}"))
}

/// Loopback up (the kernel adds 127.0.0.1 itself) and every NIC up.
pub fn bring_up() -> Vec<Nic> {
    if let Err(e) = set_up("lo") {
        warn!("loopback: {e}");
    }
    for nic in list_nics(Path::new("/sys/class/net")) {
        if let Err(e) = set_up(&nic.name) {
            warn!("{e}");
        }
    }
    // Carrier is only known once the interface is up.
    list_nics(Path::new("/sys/class/net"))
}

/// A stable name for the terminal from its first MAC, for the banner and the hostname.
pub fn terminal_name(nics: &[Nic]) -> String {
    match nics.first() {
        Some(nic) if !nic.mac.is_empty() => format!("terminal-{}", nic.mac.replace(':', "")),
        _ => "terminal".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_only_real_ethernet_devices() {
        let dir = std::env::temp_dir().join(format!("net-test-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        for (name, kind, device) in [
            ("eth0", "1", true),
            ("lo", "772", false),
            ("br0", "1", false),
        ] {
            fs::create_dir_all(dir.join(name)).unwrap();
            fs::write(dir.join(name).join("type"), format!("{kind}\n")).unwrap();
            fs::write(dir.join(name).join("address"), "52:54:00:12:34:56\n").unwrap();
            if device {
                fs::create_dir_all(dir.join(name).join("device")).unwrap();
            }
        }
        let nics = list_nics(&dir);
        let _ = fs::remove_dir_all(&dir);
        assert_eq!(nics.len(), 1);
        assert_eq!(nics[0].name, "eth0");
        assert_eq!(nics[0].link, None);
        assert_eq!(terminal_name(&nics), "terminal-525400123456");
    }
}
