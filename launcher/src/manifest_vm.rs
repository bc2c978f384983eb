//! A VM description from an appliance manifest (the repository's signed format).
//!
//! The manifest says what the publisher wants (shape, command line, disks in order,
//! networks); the terminal says where things are (the kernel and initrd it materialized
//! from the cache, a block backend per disk). Keeping this mapping in one place means the
//! session and `vmm run` agree on device order and names.

use appliance::Manifest;
use std::path::PathBuf;
use std::sync::Arc;
use vmm::config::{
    ConsoleConfig, DiskConfig, DiskSource, KernelConfig, MachineConfig, NetConfig, VmConfig,
    DEFAULT_CMDLINE,
};
use vmm::BlockBackend;

use crate::network::Attachment;

/// Why a manifest cannot become a VM here.
#[allow(missing_docs)] // the messages say it
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ApplianceVmError {
    #[error("appliance {name}: {disks} disks in the manifest but {backends} given")]
    DiskCount {
        name: String,
        disks: usize,
        backends: usize,
    },
    #[error("appliance {name}: {vcpus} vCPUs is more than this VMM supports (254)")]
    TooManyVcpus { name: String, vcpus: u32 },
    #[error("appliance {name}: network {network}: bad MAC address {mac:?}")]
    BadMac {
        name: String,
        network: String,
        mac: String,
    },
}

/// The network that is the terminal's own network card: init puts the card behind a
/// bridge of this name at bring-up (docs/formats.md, docs/init.md).
pub const UPLINK: &str = "uplink";

/// The bridge that carries appliance network `network` on this terminal. Interface
/// names are at most 15 bytes, so long network names are cut (and hashed to stay apart).
pub fn bridge_for_network(network: &str) -> String {
    if network == UPLINK {
        return UPLINK.to_string();
    }
    let clean: String = network
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
        .collect();
    if clean.len() <= 12 && clean == network {
        return format!("ca-{clean}");
    }
    let hash = network
        .bytes()
        .fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(u32::from(b)));
    format!("ca-{}{:04x}", &clean[..clean.len().min(8)], hash & 0xffff)
}

/// A stable, locally administered MAC for an appliance on a network, so DHCP servers
/// and firewalls in other appliances see the same address every session.
pub fn derived_mac(appliance: &str, network: &str) -> [u8; 6] {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in appliance.bytes().chain([0]).chain(network.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x100000001b3);
    }
    let b = h.to_be_bytes();
    // 0x52: locally administered, unicast.
    [0x52, 0x54, b[0], b[1], b[2], b[3]]
}

/// An appliance's VM and where its network cards plug in on this terminal.
#[derive(Debug)]
pub struct ApplianceVm {
    /// What the VMM builds.
    pub config: VmConfig,
    /// The bridge of each network card, in card order, for [`crate::network::plug`].
    pub attachments: Vec<Attachment>,
}

/// The VM for `manifest`: one disk backend per manifest disk, in order (`/dev/vda`
/// first). System disks are writable from the guest's side; their backend decides what
/// happens to the writes (a throw-away overlay).
pub fn vm_config(
    manifest: &Manifest,
    kernel: PathBuf,
    initrd: Option<PathBuf>,
    disks: Vec<Arc<dyn BlockBackend>>,
    console: ConsoleConfig,
) -> Result<ApplianceVm, ApplianceVmError> {
    if disks.len() != manifest.disks.len() {
        return Err(ApplianceVmError::DiskCount {
            name: manifest.name.clone(),
            disks: manifest.disks.len(),
            backends: disks.len(),
        });
    }
    let vcpus = u8::try_from(manifest.vcpus)
        .ok()
        .filter(|v| *v >= 1 && *v <= 254)
        .ok_or(ApplianceVmError::TooManyVcpus {
            name: manifest.name.clone(),
            vcpus: manifest.vcpus,
        })?;
    let disks = manifest
        .disks
        .iter()
        .zip(disks)
        .map(|(_, backend)| DiskConfig {
            source: DiskSource::Backend(backend),
            read_only: false,
        })
        .collect();
    let nets = manifest
        .networks
        .iter()
        .map(|n| {
            let mac = match &n.mac {
                Some(text) => {
                    support::netif::parse_mac(text).ok_or_else(|| ApplianceVmError::BadMac {
                        name: manifest.name.clone(),
                        network: n.network.clone(),
                        mac: text.clone(),
                    })?
                }
                None => derived_mac(&manifest.name, &n.network),
            };
            Ok(NetConfig {
                tap: None,
                mac: Some(mac),
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let cmdline = if manifest.cmdline.is_empty() {
        DEFAULT_CMDLINE.to_string()
    } else {
        manifest.cmdline.clone()
    };
    let attachments = manifest
        .networks
        .iter()
        .map(|n| Some(bridge_for_network(&n.network)))
        .collect();
    let config = VmConfig {
        machine: MachineConfig {
            memory_mib: manifest.memory_mib,
            vcpus,
            disks,
            nets,
            rng: true,
            console,
            // The session adds them when the person sits at the PC's screen.
            display: None,
            inputs: Vec::new(),
        },
        kernel: KernelConfig {
            kernel,
            initrd,
            cmdline,
            cmdline_mmio_devices: false,
        },
    };
    Ok(ApplianceVm {
        config,
        attachments,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmm::RawFile;

    fn manifest() -> Manifest {
        let text = r#"{"format":1,"name":"desk","version":3,"created_unix":0,"vcpus":2,"memory_mib":1024,
            "kernel":{"size":4096,"chunk_size":65536,"chunks":[null]},"initrd":null,"cmdline":"console=ttyS0 quiet",
            "disks":[{"name":"system","role":"system","image":{"size":65536,"chunk_size":65536,"chunks":[null]}},
                     {"name":"home","role":"user","image":{"size":65536,"chunk_size":65536,"chunks":[null]}}],
            "networks":[{"network":"office"},{"network":"uplink","mac":"52:54:00:00:00:07"}],"boot_profile":null}"#;
        serde_json::from_str(text).expect("test manifest parses")
    }

    fn raw(dir: &std::path::Path, name: &str) -> Arc<dyn BlockBackend> {
        let path = dir.join(name);
        std::fs::write(&path, vec![0u8; 65536]).unwrap();
        Arc::new(RawFile::open(&path, false).unwrap())
    }

    #[test]
    fn a_manifest_becomes_a_vm_with_disks_in_order_and_stable_macs() {
        let dir = std::env::temp_dir().join(format!("appliance-vm-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let m = manifest();
        let cfg = vm_config(
            &m,
            "/k".into(),
            None,
            vec![raw(&dir, "a"), raw(&dir, "b")],
            ConsoleConfig::Null,
        )
        .unwrap();
        assert_eq!(
            cfg.attachments,
            [Some("ca-office".to_string()), Some("uplink".to_string())]
        );
        let cfg = cfg.config;
        assert_eq!(cfg.machine.memory_mib, 1024);
        assert_eq!(cfg.machine.vcpus, 2);
        assert_eq!(cfg.machine.disks.len(), 2);
        assert_eq!(cfg.kernel.cmdline, "console=ttyS0 quiet");
        assert_eq!(cfg.machine.nets[0].mac, Some(derived_mac("desk", "office")));
        assert_eq!(cfg.machine.nets[1].mac, Some([0x52, 0x54, 0, 0, 0, 7]));
        assert_eq!(derived_mac("desk", "office"), derived_mac("desk", "office"));
        assert_ne!(
            derived_mac("desk", "office"),
            derived_mac("router", "office")
        );
        let err = vm_config(
            &m,
            "/k".into(),
            None,
            vec![raw(&dir, "c")],
            ConsoleConfig::Null,
        )
        .unwrap_err();
        assert!(matches!(err, ApplianceVmError::DiskCount { .. }));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn bridge_names_fit_in_an_interface_name() {
        assert_eq!(bridge_for_network("office"), "ca-office");
        assert_eq!(bridge_for_network("uplink"), "uplink");
        let long = bridge_for_network("a-very-long-network-name");
        assert!(long.len() <= 15, "{long}");
        assert_ne!(
            bridge_for_network("a-very-long-network-name"),
            bridge_for_network("a-very-long-network-other")
        );
        assert!(bridge_for_network("we!rd").len() <= 15);
    }
}
