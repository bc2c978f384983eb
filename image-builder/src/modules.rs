//! Choosing the kernel modules the terminal carries.
//!
//! The initramfs holds the drivers an office PC is likely to need and everything they
//! depend on, resolved from Debian's `modules.dep`, never from a hand-kept list. `init`
//! later loads only those whose hardware is present (by modalias), so carrying a driver
//! costs initramfs bytes, not boot time.

use anyhow::{bail, Context, Result};
use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::Path;
pub use support::kmod::{module_name_of_path, normalize};
use support::kmod::{parse_builtin, parse_dep_line};

/// The modules the terminal wants, by group, so the build report can say why each is there.
pub const WANTED: &[(&str, &[&str])] = &[
    (
        "network cards",
        &["e1000", "e1000e", "igb", "r8169", "virtio_net"],
    ),
    (
        "storage",
        &["ahci", "nvme", "virtio_blk", "usb_storage", "uas", "sd_mod"],
    ),
    (
        "usb and keyboards",
        &[
            "xhci_pci",
            "ehci_pci",
            "ohci_pci",
            "uhci_hcd",
            "usbhid",
            "hid_generic",
        ],
    ),
    (
        "virtualization",
        &["kvm", "kvm_intel", "kvm_amd", "tun", "bridge"],
    ),
    ("platform", &["button", "evdev", "virtio_pci", "virtio_rng"]),
    ("pointers", &["psmouse", "virtio_input"]),
];

/// The screens the firmware can drive with KMS, by the name `collective-image build
/// --gpu` takes. Each costs initramfs bytes (the build report prints how many); where no
/// chosen driver binds, the terminal falls back to the firmware framebuffer (efifb or
/// vesafb, built into Debian's kernel) or, without one, to text on the serial line.
pub const GPUS: &[(&str, &str, &[&str])] = &[
    (
        "qemu",
        "virtual machines: QEMU's standard VGA (bochs) and virtio-gpu",
        &["bochs", "virtio_gpu"],
    ),
    ("intel", "Intel graphics (i915)", &["i915"]),
    (
        "amd",
        "AMD graphics (amdgpu; also needs its firmware files, added with --add)",
        &["amdgpu"],
    ),
    ("nvidia", "NVIDIA graphics (nouveau)", &["nouveau"]),
];

/// What a build carries when `--gpu` is not given: virtual machines and Intel, the most
/// common office graphics, which work without extra firmware files.
pub const DEFAULT_GPUS: &[&str] = &["qemu", "intel"];

/// The modules of the named GPU groups; an unknown name is an error that lists the known.
pub fn gpu_modules(names: &[String]) -> Result<Vec<&'static str>> {
    let mut out = Vec::new();
    for name in names {
        let Some((_, _, modules)) = GPUS.iter().find(|(n, _, _)| n == name) else {
            bail!(
                "unknown --gpu {name:?}; known: {}",
                GPUS.iter()
                    .map(|(n, _, _)| *n)
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        };
        out.extend_from_slice(modules);
    }
    Ok(out)
}

/// Every wanted module name, flattened.
pub fn wanted_names() -> Vec<&'static str> {
    WANTED
        .iter()
        .flat_map(|(_, names)| names.iter().copied())
        .collect()
}

/// `modules.dep`: each module's path (relative to the modules folder) and its
/// dependencies' paths.
#[derive(Debug, Default)]
pub struct DepIndex {
    /// normalized module name -> (relative path, dependency names)
    entries: BTreeMap<String, (String, Vec<String>)>,
}

impl DepIndex {
    pub fn parse(text: &str) -> Result<DepIndex> {
        let mut entries = BTreeMap::new();
        for (n, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let (name, path, deps) = parse_dep_line(line)
                .with_context(|| format!("modules.dep line {}: no ':' in {line:?}", n + 1))?;
            entries.insert(name, (path, deps));
        }
        Ok(DepIndex { entries })
    }

    pub fn load(modules_dir: &Path) -> Result<DepIndex> {
        let path = modules_dir.join("modules.dep");
        let text =
            fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        Self::parse(&text)
    }

    pub fn path_of(&self, name: &str) -> Option<&str> {
        self.entries.get(&normalize(name)).map(|(p, _)| p.as_str())
    }

    /// The wanted modules plus everything they depend on, as relative paths, sorted.
    /// A wanted module the kernel builds in (listed in `builtin`) needs no file.
    pub fn closure(&self, wanted: &[&str], builtin: &BTreeSet<String>) -> Result<BTreeSet<String>> {
        let mut seen = BTreeSet::new();
        let mut stack: Vec<String> = Vec::new();
        for name in wanted {
            let name = normalize(name);
            if self.entries.contains_key(&name) {
                stack.push(name);
            } else if !builtin.contains(&name) {
                bail!("module {name} is neither in modules.dep nor built into this kernel");
            }
        }
        while let Some(name) = stack.pop() {
            if !seen.insert(name.clone()) {
                continue;
            }
            if let Some((_, deps)) = self.entries.get(&name) {
                stack.extend(deps.iter().cloned());
            }
        }
        Ok(seen
            .iter()
            .filter_map(|n| self.entries.get(n).map(|(p, _)| p.clone()))
            .collect())
    }
}

/// Names listed in `modules.builtin` (drivers compiled into the kernel).
pub fn builtin_names(modules_dir: &Path) -> Result<BTreeSet<String>> {
    let path = modules_dir.join("modules.builtin");
    let text = fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    Ok(parse_builtin(&text).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEP: &str = "\
kernel/arch/x86/kvm/kvm.ko: kernel/virt/lib/irqbypass.ko
kernel/arch/x86/kvm/kvm-amd.ko: kernel/arch/x86/kvm/kvm.ko kernel/drivers/crypto/ccp/ccp.ko kernel/virt/lib/irqbypass.ko
kernel/drivers/crypto/ccp/ccp.ko:
kernel/virt/lib/irqbypass.ko:
kernel/drivers/net/e1000/e1000.ko:
";

    #[test]
    fn closure_follows_dependencies_and_dash_spellings() {
        let index = DepIndex::parse(DEP).unwrap();
        let got = index.closure(&["kvm-amd"], &BTreeSet::new()).unwrap();
        let names: BTreeSet<String> = got.iter().map(|p| module_name_of_path(p)).collect();
        let want: BTreeSet<String> = ["kvm_amd", "kvm", "ccp", "irqbypass"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(names, want);
    }

    #[test]
    fn unknown_module_is_an_error_but_builtin_is_not() {
        let index = DepIndex::parse(DEP).unwrap();
        assert!(index
            .closure(&["no_such_driver"], &BTreeSet::new())
            .is_err());
        let builtin = ["af_packet".to_string()].into_iter().collect();
        assert!(index.closure(&["af_packet"], &builtin).unwrap().is_empty());
    }

    #[test]
    fn malformed_dep_line_is_reported() {
        assert!(DepIndex::parse("kernel/foo.ko kernel/bar.ko\n").is_err());
    }
}
