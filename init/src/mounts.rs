//! The file systems every later step needs, mounted before anything else runs.
//!
//! Debian's kernel does not mount devtmpfs into an initramfs by itself
//! (`CONFIG_DEVTMPFS_MOUNT` never applies there), so without this there is no `/dev/kvm`,
//! no disks and no consoles beyond the one the kernel opened for us.

use log::error;
use nix::errno::Errno;
use nix::mount::{mount, MsFlags};
use std::fs;

struct Mount {
    source: &'static str,
    target: &'static str,
    fstype: &'static str,
    flags: MsFlags,
    data: Option<&'static str>,
}

const NOSUID_NODEV_NOEXEC: MsFlags = MsFlags::MS_NOSUID
    .union(MsFlags::MS_NODEV)
    .union(MsFlags::MS_NOEXEC);

const MOUNTS: &[Mount] = &[
    Mount {
        source: "devtmpfs",
        target: "/dev",
        fstype: "devtmpfs",
        flags: MsFlags::MS_NOSUID,
        data: Some("mode=0755"),
    },
    Mount {
        source: "proc",
        target: "/proc",
        fstype: "proc",
        flags: NOSUID_NODEV_NOEXEC,
        data: None,
    },
    Mount {
        source: "sysfs",
        target: "/sys",
        fstype: "sysfs",
        flags: NOSUID_NODEV_NOEXEC,
        data: None,
    },
    Mount {
        source: "devpts",
        target: "/dev/pts",
        fstype: "devpts",
        flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NOEXEC),
        data: Some("mode=0620,ptmxmode=0666"),
    },
    Mount {
        source: "tmpfs",
        target: "/run",
        fstype: "tmpfs",
        flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV),
        data: Some("mode=0755"),
    },
    Mount {
        source: "tmpfs",
        target: "/tmp",
        fstype: "tmpfs",
        flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV),
        data: Some("mode=1777"),
    },
];

/// Mounts what is missing; returns the failures so the login screen can show them.
pub fn mount_early_filesystems() -> Vec<String> {
    let mut failures = Vec::new();
    for m in MOUNTS {
        if let Err(e) = fs::create_dir_all(m.target) {
            failures.push(format!("creating {}: {e}", m.target));
            continue;
        }
        match mount(Some(m.source), m.target, Some(m.fstype), m.flags, m.data) {
            Ok(()) | Err(Errno::EBUSY) => {}
            Err(e) => {
                error!("mounting {} on {}: {e}", m.fstype, m.target);
                failures.push(format!("mounting {} on {}: {e}", m.fstype, m.target));
            }
        }
    }
    failures
}
