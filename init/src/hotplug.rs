//! Finding hardware and loading its drivers: coldplug at boot, hotplug afterwards.
//!
//! There is no udev in the terminal. At boot we walk `/sys/devices` and load the driver
//! for every `modalias` we find; from then on a netlink listener on the kernel's uevents
//! loads drivers for what appears later: devices behind a bus driver we just loaded
//! (USB sticks behind xHCI, disks behind AHCI), a NIC plugged in after boot.

use crate::kmod::Loader;
use log::{debug, info, warn};
use nix::sys::socket::{
    bind, recv, socket, AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType,
};
use std::collections::HashMap;
use std::fs;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;
use std::sync::Arc;

/// One kernel uevent, as key/value pairs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Uevent {
    pub action: String,
    pub devpath: String,
    pub vars: HashMap<String, String>,
}

impl Uevent {
    /// Parses a netlink uevent datagram: `ACTION@DEVPATH\0KEY=VALUE\0...`. Messages from
    /// udev (which start `libudev`) and malformed ones give `None`.
    pub fn parse(datagram: &[u8]) -> Option<Uevent> {
        let mut parts = datagram.split(|&b| b == 0).filter(|p| !p.is_empty());
        let header = std::str::from_utf8(parts.next()?).ok()?;
        let (action, devpath) = header.split_once('@')?;
        let mut event = Uevent {
            action: action.to_string(),
            devpath: devpath.to_string(),
            vars: HashMap::new(),
        };
        for part in parts {
            let text = String::from_utf8_lossy(part);
            if let Some((k, v)) = text.split_once('=') {
                event.vars.insert(k.to_string(), v.to_string());
            }
        }
        Some(event)
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.vars.get(key).map(String::as_str)
    }
}

/// Opens the uevent socket. Do this before coldplug so nothing that appears in between
/// is missed.
pub fn open_uevent_socket() -> nix::Result<OwnedFd> {
    let fd = socket(
        AddressFamily::Netlink,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::NetlinkKObjectUEvent,
    )?;
    // Group 1 carries the kernel's own events.
    bind(fd.as_raw_fd(), &NetlinkAddr::new(0, 1))?;
    // A burst of uevents (a USB hub with many devices) must not overflow the queue.
    let _ = nix::sys::socket::setsockopt(&fd, nix::sys::socket::sockopt::RcvBuf, &(4 << 20));
    Ok(fd)
}

/// Every `modalias` under `/sys/devices`, in a stable order.
pub fn coldplug_modaliases(sys_devices: &Path) -> Vec<String> {
    let mut found = Vec::new();
    let mut stack = vec![sys_devices.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        let mut children = Vec::new();
        for entry in entries.flatten() {
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            // Symlinks in sysfs point back up the tree (subsystem, driver): never follow.
            if kind.is_dir() {
                children.push(entry.path());
            } else if kind.is_file() && entry.file_name() == "modalias" {
                if let Ok(text) = fs::read_to_string(entry.path()) {
                    let alias = text.trim();
                    if !alias.is_empty() {
                        found.push(alias.to_string());
                    }
                }
            }
        }
        children.sort();
        stack.extend(children.into_iter().rev());
    }
    found
}

/// The drivers the devices present now ask for, without duplicates.
pub fn coldplug_modules(loader: &Loader) -> Vec<String> {
    let aliases = coldplug_modaliases(Path::new("/sys/devices"));
    let mut modules: Vec<String> = Vec::new();
    for alias in &aliases {
        for module in loader.index().modules_for_alias(alias) {
            if !modules.contains(&module) {
                modules.push(module);
            }
        }
    }
    debug!(
        "coldplug: {} devices with a modalias want {}",
        aliases.len(),
        modules.join(" ")
    );
    modules
}

/// Loads drivers for every device present now, in parallel; returns the modules loaded.
pub fn coldplug(loader: &Loader) -> Vec<String> {
    let modules = coldplug_modules(loader);
    let (loaded, failed) = loader.load_parallel(&modules, 8);
    for failure in failed {
        debug!("coldplug: {failure}");
    }
    loaded
}

/// Reads uevents forever, loading drivers and telling `on_event` about every event.
pub fn listen(fd: OwnedFd, loader: Arc<Loader>, on_event: impl Fn(&Uevent)) -> ! {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match recv(fd.as_raw_fd(), &mut buf, MsgFlags::empty()) {
            Ok(n) => n,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(nix::errno::Errno::ENOBUFS) => {
                // We lost events; a fresh coldplug pass catches up.
                warn!("uevent queue overflowed; rescanning devices");
                coldplug(&loader);
                continue;
            }
            Err(e) => {
                warn!("reading uevents: {e}; retrying in 1 s");
                std::thread::sleep(std::time::Duration::from_secs(1));
                continue;
            }
        };
        let Some(event) = Uevent::parse(&buf[..n]) else {
            continue;
        };
        if event.action == "add" {
            if let Some(alias) = event.get("MODALIAS") {
                for module in loader.load_for_modalias(alias) {
                    info!("loaded {module} for {}", event.devpath);
                }
            }
        }
        on_event(&event);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_kernel_uevent() {
        let msg = b"add@/devices/pci0000:00/0000:00:03.0\0ACTION=add\0DEVPATH=/devices/pci0000:00/0000:00:03.0\0SUBSYSTEM=pci\0MODALIAS=pci:v00008086d0000100Esv*\0SEQNUM=812\0";
        let e = Uevent::parse(msg).unwrap();
        assert_eq!(e.action, "add");
        assert_eq!(e.get("SUBSYSTEM"), Some("pci"));
        assert_eq!(e.get("MODALIAS"), Some("pci:v00008086d0000100Esv*"));
    }

    #[test]
    fn rejects_garbage_and_udev_messages() {
        assert_eq!(Uevent::parse(b""), None);
        assert_eq!(Uevent::parse(b"libudev\0\xfe\xed"), None);
        assert_eq!(Uevent::parse(b"\xff\xfe@\0"), None);
    }

    #[test]
    fn coldplug_walk_finds_nested_modaliases() {
        let dir = std::env::temp_dir().join(format!("coldplug-test-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("pci0000:00/0000:00:03.0/virtio0")).unwrap();
        fs::write(
            dir.join("pci0000:00/0000:00:03.0/modalias"),
            "pci:v00001AF4d00001000\n",
        )
        .unwrap();
        fs::write(
            dir.join("pci0000:00/0000:00:03.0/virtio0/modalias"),
            "virtio:d00000001v00001AF4\n",
        )
        .unwrap();
        fs::write(dir.join("pci0000:00/modalias"), "\n").unwrap();
        let found = coldplug_modaliases(&dir);
        let _ = fs::remove_dir_all(&dir);
        assert_eq!(
            found,
            vec!["pci:v00001AF4d00001000", "virtio:d00000001v00001AF4"]
        );
    }
}
