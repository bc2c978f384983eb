//! Making `/dev/kvm` ready: the KVM module that fits this CPU, then a check that the
//! device answers.
//!
//! A terminal without working KVM cannot run appliances, so the login screen says exactly
//! which step failed: no virtualization in the CPU (or disabled in the BIOS), the module
//! refused to load, or the device never appeared.

use crate::kmod::Loader;
use log::{info, warn};
use std::fmt;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::{Duration, Instant};

/// The CPU's hardware virtualization, from `/proc/cpuinfo` flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CpuVirtualization {
    /// AMD-V: flag `svm`, module `kvm_amd`.
    Svm,
    /// Intel VT-x: flag `vmx`, module `kvm_intel`.
    Vmx,
    None,
}

impl CpuVirtualization {
    pub fn from_cpuinfo(cpuinfo: &str) -> CpuVirtualization {
        for line in cpuinfo.lines() {
            let Some((key, value)) = line.split_once(':') else {
                continue;
            };
            if key.trim() != "flags" {
                continue;
            }
            let flags: Vec<&str> = value.split_whitespace().collect();
            if flags.contains(&"svm") {
                return CpuVirtualization::Svm;
            }
            if flags.contains(&"vmx") {
                return CpuVirtualization::Vmx;
            }
            return CpuVirtualization::None;
        }
        CpuVirtualization::None
    }

    pub fn module(self) -> Option<&'static str> {
        match self {
            CpuVirtualization::Svm => Some("kvm_amd"),
            CpuVirtualization::Vmx => Some("kvm_intel"),
            CpuVirtualization::None => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvmStatus {
    Pending,
    Ready { module: String, api_version: i32 },
    NoCpuSupport,
    ModuleFailed { module: String, reason: String },
    DeviceFailed { module: String, reason: String },
}

impl fmt::Display for KvmStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KvmStatus::Pending => write!(f, "starting (loading the KVM module)"),
            KvmStatus::Ready {
                module,
                api_version,
            } => write!(f, "ready: /dev/kvm ({module}, API {api_version})"),
            KvmStatus::NoCpuSupport => {
                write!(f, "unavailable: this CPU reports no VT-x or AMD-V (turn virtualization on in the BIOS setup)")
            }
            KvmStatus::ModuleFailed { module, reason } => {
                write!(f, "unavailable: {module} did not load: {reason}")
            }
            KvmStatus::DeviceFailed { module, reason } => {
                write!(f, "unavailable: {module} loaded but /dev/kvm {reason}")
            }
        }
    }
}

nix::ioctl_none!(kvm_get_api_version, 0xAE, 0x00);

/// Loads the KVM module for this CPU and waits (briefly) for `/dev/kvm` to answer.
pub fn bring_up(loader: &Loader) -> KvmStatus {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let Some(module) = CpuVirtualization::from_cpuinfo(&cpuinfo).module() else {
        warn!("KVM: CPU has no virtualization extensions");
        return KvmStatus::NoCpuSupport;
    };
    if let Err(reason) = loader.load(module) {
        warn!("KVM: {reason}");
        return KvmStatus::ModuleFailed {
            module: module.into(),
            reason,
        };
    }
    let status = match wait_for_device(Path::new("/dev/kvm"), Duration::from_secs(3)) {
        Ok(api_version) => KvmStatus::Ready {
            module: module.into(),
            api_version,
        },
        Err(reason) => KvmStatus::DeviceFailed {
            module: module.into(),
            reason,
        },
    };
    info!("KVM: {status}");
    status
}

/// devtmpfs creates the node asynchronously after the module registers it.
fn wait_for_device(path: &Path, timeout: Duration) -> Result<i32, String> {
    let started = Instant::now();
    loop {
        match File::options().read(true).write(true).open(path) {
            Ok(file) => {
                // SAFETY: KVM_GET_API_VERSION takes no argument and only returns a number.
                return match unsafe { kvm_get_api_version(file.as_raw_fd()) } {
                    Ok(12) => Ok(12),
                    Ok(v) => Err(format!("speaks API {v}, not 12")),
                    Err(e) => Err(format!("does not answer KVM_GET_API_VERSION: {e}")),
                };
            }
            Err(e) if started.elapsed() >= timeout => return Err(format!("did not open: {e}")),
            Err(_) => std::thread::sleep(Duration::from_millis(5)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_the_module_for_the_cpu() {
        let amd = "processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu vme svm lm\n";
        let intel = "flags\t\t: fpu vmx sse\n";
        let none = "flags\t\t: fpu sse\n";
        assert_eq!(
            CpuVirtualization::from_cpuinfo(amd).module(),
            Some("kvm_amd")
        );
        assert_eq!(
            CpuVirtualization::from_cpuinfo(intel).module(),
            Some("kvm_intel")
        );
        assert_eq!(CpuVirtualization::from_cpuinfo(none).module(), None);
        assert_eq!(CpuVirtualization::from_cpuinfo(""), CpuVirtualization::None);
    }
}
