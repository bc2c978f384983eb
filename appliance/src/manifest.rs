//! The appliance manifest: everything a terminal needs to run one version of an appliance.
//!
//! A manifest is immutable once published and is only ever used after its signature
//! verified (see [`crate::sign`]). Disk contents, kernel and initrd are chunk lists, so a
//! new version costs only the chunks that changed.

use serde::{Deserialize, Serialize};

use crate::chunk::ChunkId;
use crate::chunking::ChunkList;
use crate::error::{Error, Result};
use crate::names::validate_name;

/// Current manifest format version.
pub const MANIFEST_FORMAT: u32 = 1;
/// Longest kernel command line accepted (Linux's x86 COMMAND_LINE_SIZE).
pub const MAX_CMDLINE: usize = 2048;

/// What a disk holds and what happens to its writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DiskRole {
    /// Published by the publisher; read-only base plus a throw-away overlay on the terminal.
    System,
    /// The user's data; its content is per user (see [`crate::user::UserDiskManifest`]) and
    /// written back to the repository. The manifest's chunk list is the initial content a
    /// user starts with (often all zeros).
    User,
}

impl std::fmt::Display for DiskRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DiskRole::System => "system",
            DiskRole::User => "user",
        })
    }
}

/// One virtual disk of the appliance, in the order the guest sees them (vda, vdb, ...).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Disk {
    /// Name, unique within the appliance ("system", "user", ...): names the user disk's
    /// record in the repository.
    pub name: String,
    /// System or user.
    pub role: DiskRole,
    /// Content (for a user disk: the initial content).
    pub image: ChunkList,
}

/// An appliance network the appliance joins: one virtio-net device per attachment, in order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkAttachment {
    /// Network name; appliances attached to the same name share a bridge on the terminal.
    /// The name `uplink` is the terminal's physical network.
    pub network: String,
    /// Fixed MAC address (`xx:xx:xx:xx:xx:xx`), or `None` to let the terminal derive one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
}

/// One version of one appliance.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// [`MANIFEST_FORMAT`].
    pub format: u32,
    /// Appliance name.
    pub name: String,
    /// Version number, 1, 2, ... assigned by the repository at publish time.
    pub version: u64,
    /// Publish time, seconds since the Unix epoch (informational).
    pub created_unix: u64,
    /// Number of virtual CPUs.
    pub vcpus: u32,
    /// Guest memory in MiB.
    pub memory_mib: u64,
    /// The guest kernel (bzImage), chunked.
    pub kernel: ChunkList,
    /// The guest initrd, chunked, if any.
    #[serde(default)]
    pub initrd: Option<ChunkList>,
    /// The guest kernel command line.
    pub cmdline: String,
    /// Virtual disks, in guest order.
    pub disks: Vec<Disk>,
    /// Appliance networks joined, in guest NIC order.
    #[serde(default)]
    pub networks: Vec<NetworkAttachment>,
    /// The chunks first read while booting, in first-read order: fetch these first.
    /// Every id must appear in the kernel, initrd or a disk.
    #[serde(default)]
    pub boot_profile: Option<Vec<ChunkId>>,
    /// A screen, keyboard and pointer (virtio-gpu, a virtio keyboard and a virtio tablet)
    /// besides the serial console: the terminal shows it on the PC's monitor. Absent in
    /// manifests from before displays existed (and left out when false, so their bytes,
    /// and signatures, are unchanged).
    #[serde(default, skip_serializing_if = "is_false")]
    pub display: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

impl Manifest {
    /// Checks everything a reader relies on: format, names, sizes, chunk-list lengths,
    /// unique disk names, boot profile only naming chunks of this manifest.
    pub fn validate(&self) -> Result<()> {
        if self.format != MANIFEST_FORMAT {
            return Err(Error::UnsupportedFormat {
                what: "manifest",
                found: self.format,
                supported: MANIFEST_FORMAT,
            });
        }
        validate_name("appliance name", &self.name)?;
        if self.version == 0 {
            return Err(Error::invalid("manifest", "version must be 1 or more"));
        }
        if self.vcpus == 0 || self.vcpus > 256 {
            return Err(Error::invalid(
                "manifest",
                format!("vcpus {} must be 1 to 256", self.vcpus),
            ));
        }
        if self.memory_mib < 16 {
            return Err(Error::invalid(
                "manifest",
                format!("memory {} MiB is too small (at least 16)", self.memory_mib),
            ));
        }
        if self.cmdline.len() > MAX_CMDLINE || self.cmdline.contains('\0') {
            return Err(Error::invalid(
                "manifest",
                format!("command line must be under {MAX_CMDLINE} bytes without NUL"),
            ));
        }
        self.kernel.validate()?;
        if self.kernel.size == 0 {
            return Err(Error::invalid("manifest", "the kernel is empty"));
        }
        if let Some(initrd) = &self.initrd {
            initrd.validate()?;
        }
        let mut names = std::collections::HashSet::new();
        for disk in &self.disks {
            validate_name("disk name", &disk.name)?;
            if !names.insert(disk.name.as_str()) {
                return Err(Error::invalid(
                    "manifest",
                    format!("disk name {:?} appears twice", disk.name),
                ));
            }
            disk.image.validate()?;
        }
        for net in &self.networks {
            validate_name("network name", &net.network)?;
            if let Some(mac) = &net.mac {
                validate_mac(mac)?;
            }
        }
        if let Some(profile) = &self.boot_profile {
            let all: std::collections::HashSet<ChunkId> = self.all_chunks().into_iter().collect();
            if let Some(bad) = profile.iter().find(|id| !all.contains(id)) {
                return Err(Error::invalid(
                    "manifest",
                    format!("boot profile names chunk {bad}, which no kernel, initrd or disk uses"),
                ));
            }
        }
        Ok(())
    }

    /// Every blob the terminal needs locally, in fetch order: kernel, initrd, every disk (a
    /// user disk's initial content included: it is what a never-committed disk starts from).
    pub fn blobs(&self) -> Vec<&ChunkList> {
        self.blobs_with(|d| &d.image)
    }

    /// [`Manifest::blobs`] with each user disk's content chosen by `user_disk` (a session
    /// uses the user's own committed version instead of the initial content).
    pub fn blobs_with<'a>(
        &'a self,
        user_disk: impl Fn(&'a Disk) -> &'a ChunkList,
    ) -> Vec<&'a ChunkList> {
        let mut v = vec![&self.kernel];
        v.extend(self.initrd.iter());
        v.extend(self.disks.iter().map(|d| match d.role {
            DiskRole::System => &d.image,
            DiskRole::User => user_disk(d),
        }));
        v
    }

    /// The blobs every user of this version shares: kernel, initrd and system disks.
    pub fn system_blobs(&self) -> Vec<&ChunkList> {
        let mut v = vec![&self.kernel];
        v.extend(self.initrd.iter());
        v.extend(
            self.disks
                .iter()
                .filter(|d| d.role == DiskRole::System)
                .map(|d| &d.image),
        );
        v
    }

    /// Every distinct non-zero chunk the appliance uses (kernel, initrd, all disks).
    pub fn all_chunks(&self) -> Vec<ChunkId> {
        distinct_chunks(self.blobs())
    }

    /// The disk named `name`.
    pub fn disk(&self, name: &str) -> Option<&Disk> {
        self.disks.iter().find(|d| d.name == name)
    }
}

/// The distinct non-zero chunk ids of `blobs`, in first-use order.
pub fn distinct_chunks<'a>(blobs: impl IntoIterator<Item = &'a ChunkList>) -> Vec<ChunkId> {
    let mut seen = std::collections::HashSet::new();
    blobs
        .into_iter()
        .flat_map(|b| b.chunks.iter().flatten())
        .filter(|id| seen.insert(**id))
        .copied()
        .collect()
}

fn validate_mac(mac: &str) -> Result<()> {
    if support::netif::parse_mac(mac).is_none() {
        return Err(Error::invalid(
            "MAC address",
            format!("{mac:?} is not xx:xx:xx:xx:xx:xx"),
        ));
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::chunking::Chunker;

    /// A small valid manifest for tests in this crate.
    pub(crate) fn sample() -> Manifest {
        let kernel = Chunker::new(&b"not really a kernel"[..], 4096)
            .unwrap()
            .into_blob()
            .unwrap();
        let mut sys = vec![0u8; 4 * 65536];
        sys[70000] = 9;
        let system = Chunker::new(&sys[..], 65536).unwrap().into_blob().unwrap();
        Manifest {
            format: MANIFEST_FORMAT,
            name: "desktop".into(),
            version: 1,
            created_unix: 1_700_000_000,
            vcpus: 2,
            memory_mib: 512,
            boot_profile: Some(vec![kernel.chunks[0].unwrap(), system.chunks[1].unwrap()]),
            display: false,
            kernel,
            initrd: None,
            cmdline: "console=ttyS0 root=/dev/vda".into(),
            disks: vec![
                Disk {
                    name: "system".into(),
                    role: DiskRole::System,
                    image: system,
                },
                Disk {
                    name: "user".into(),
                    role: DiskRole::User,
                    image: ChunkList::zeros(1 << 20, 65536).unwrap(),
                },
            ],
            networks: vec![NetworkAttachment {
                network: "office".into(),
                mac: Some("52:54:00:12:34:56".into()),
            }],
        }
    }

    #[test]
    fn sample_validates_and_roundtrips() {
        let m = sample();
        m.validate().unwrap();
        let json = serde_json::to_string(&m).unwrap();
        assert_eq!(serde_json::from_str::<Manifest>(&json).unwrap(), m);
        assert_eq!(m.all_chunks().len(), 2);
    }

    #[test]
    fn validation_catches_mistakes() {
        let mut m = sample();
        m.format = 2;
        assert!(matches!(m.validate(), Err(Error::UnsupportedFormat { .. })));
        let mut m = sample();
        m.disks[1].name = "system".into();
        assert!(m.validate().is_err());
        let mut m = sample();
        m.boot_profile = Some(vec![ChunkId::of(b"elsewhere")]);
        assert!(m.validate().is_err());
        let mut m = sample();
        m.networks[0].mac = Some("52:54:00:12:34".into());
        assert!(m.validate().is_err());
        let mut m = sample();
        m.name = "../etc".into();
        assert!(m.validate().is_err());
        let mut json = serde_json::to_value(sample()).unwrap();
        json["surprise"] = 1.into();
        assert!(
            serde_json::from_value::<Manifest>(json).is_err(),
            "unknown fields must be refused"
        );
    }
}
