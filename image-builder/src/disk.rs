//! `disk.img`: the firmware on a GPT disk that boots on BIOS and on UEFI, with the rest of
//! the disk left to the terminal's cache.
//!
//! Layout (512-byte sectors):
//!
//! | where | what |
//! | --- | --- |
//! | LBA 0 | protective MBR whose boot code is GRUB's `boot.img` (BIOS) |
//! | LBA 1-33 | primary GPT header and 128 partition entries |
//! | 1 MiB, 1 MiB | partition 1 `collective-bios-boot`, a BIOS boot partition holding GRUB's `core.img` |
//! | 2 MiB, ESP size | partition 2 `collective-boot`, the EFI system partition (FAT32): `EFI/BOOT/BOOTX64.EFI` (GRUB), `boot/grub/grub.cfg`, `vmlinuz`, `initrd.img` |
//! | then, 1 MiB in the file | partition 3 `collective-cache`, type [`CACHE_TYPE_GUID`]: left zeroed; `init` grows it to the end of the disk and formats it on first boot |
//! | last 33 sectors | backup GPT |
//!
//! Nothing here needs root or a loop device: the partition table is written by this
//! module, the FAT32 file system by mtools into a file, GRUB's core images come from
//! `grub-mkimage` (Debian's `grub-common`, `grub-pc-bin`, `grub-efi-amd64-bin`), and the
//! BIOS boot sector is GRUB's `boot.img` patched as `grub-bios-setup` would. The same
//! inputs give the same bytes: GUIDs and the FAT serial are derived from the initrd's
//! hash, FAT times are 1980-01-01.

use anyhow::{bail, ensure, Context, Result};
use sha2::{Digest, Sha256};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

pub const SECTOR: u64 = 512;
const MIB: u64 = 1 << 20;
/// GPT partition type of the cache partition: ours, so `init` never formats a partition it
/// does not own. (Partition name `collective-cache` as well.)
pub const CACHE_TYPE_GUID: &str = "3d25008c-effd-42ec-8136-07c4ed8c4a53";
pub const CACHE_PARTITION_NAME: &str = "collective-cache";
pub const BOOT_PARTITION_NAME: &str = "collective-boot";
pub const BIOS_BOOT_PARTITION_NAME: &str = "collective-bios-boot";
const ESP_TYPE_GUID: &str = "c12a7328-f81f-11d2-ba4b-00a0c93ec93b";
const BIOS_BOOT_TYPE_GUID: &str = "21686148-6449-6e6f-744e-656564454649";
/// The cache partition's size in the image file; `init` grows it on first boot.
pub const CACHE_BYTES_IN_FILE: u64 = MIB;
/// GRUB modules in both core images.
const GRUB_MODULES: &[&str] = &[
    "part_gpt",
    "part_msdos",
    "fat",
    "search",
    "search_fs_uuid",
    "configfile",
    "normal",
    "linux",
    "echo",
    "test",
    "sleep",
];

/// Where GRUB's platform folders are (`i386-pc`, `x86_64-efi`).
pub const GRUB_LIB: &str = "/usr/lib/grub";

/// What went into the disk image.
#[derive(Debug, Clone)]
pub struct DiskReport {
    pub path: PathBuf,
    pub bytes: u64,
    pub esp_bytes: u64,
    /// The kernel command line the boot entry uses.
    pub cmdline: String,
    /// The FAT volume serial of the boot partition, as GRUB's `search --fs-uuid` spells it.
    pub fs_uuid: String,
}

/// The command line a disk boot uses: the firmware's, plus `collective.cache=auto` unless
/// it names a cache already (a terminal booted from this disk caches on it).
pub fn disk_cmdline(cmdline: &str) -> String {
    if cmdline
        .split_whitespace()
        .any(|a| a.starts_with("collective.cache="))
    {
        cmdline.to_string()
    } else {
        format!("{cmdline} collective.cache=auto")
    }
}

/// The GRUB configuration on the boot partition.
pub fn grub_cfg(cmdline: &str) -> String {
    format!(
        "# Collective terminal firmware, written by collective-image. Press Esc while it\n\
         # starts for the menu; `e` edits the kernel command line for one boot.\n\
         set default=0\n\
         set timeout_style=hidden\n\
         set timeout=1\n\
         menuentry \"Collective terminal\" {{\n\
         \x20   echo \"Collective terminal: loading firmware\"\n\
         \x20   linux /vmlinuz {cmdline}\n\
         \x20   initrd /initrd.img\n\
         }}\n"
    )
}

/// Writes `out` (normally `disk.img` beside the other files). `seed` makes the GUIDs and
/// the FAT serial (the initrd's sha256 does: a new firmware gets new ones).
pub fn write_disk_image(
    out: &Path,
    vmlinuz: &Path,
    initrd: &Path,
    cmdline: &str,
    seed: &[u8],
) -> Result<DiskReport> {
    let grub_lib = Path::new(GRUB_LIB);
    let seed_hash = Sha256::digest(seed);
    let volume_id = u32::from_le_bytes(seed_hash[..4].try_into().unwrap());
    let fs_uuid = format!("{:04X}-{:04X}", volume_id >> 16, volume_id & 0xffff);
    let cmdline = disk_cmdline(cmdline);

    let early = format!(
        "search --no-floppy --fs-uuid --set=root {fs_uuid}\n\
         set prefix=($root)/boot/grub\n\
         configfile ($root)/boot/grub/grub.cfg\n"
    );
    let (core_img, efi_img) = grub_images(grub_lib, &early)?;
    let boot_img = fs::read(grub_lib.join("i386-pc/boot.img")).with_context(|| {
        format!(
            "reading {}/i386-pc/boot.img (install grub-pc-bin)",
            grub_lib.display()
        )
    })?;
    ensure!(
        boot_img.len() == 512,
        "boot.img is {} bytes, not 512",
        boot_img.len()
    );

    let staged = crate::image::TempDir::new("collective-esp-files")?;
    let efi_path = staged.path().join("BOOTX64.EFI");
    fs::write(&efi_path, &efi_img)?;
    let cfg_path = staged.path().join("grub.cfg");
    fs::write(&cfg_path, grub_cfg(&cmdline))?;
    let files: Vec<(&str, PathBuf)> = vec![
        ("EFI/BOOT/BOOTX64.EFI", efi_path),
        ("boot/grub/grub.cfg", cfg_path),
        ("vmlinuz", vmlinuz.to_path_buf()),
        ("initrd.img", initrd.to_path_buf()),
    ];
    let mut content = 0;
    for (_, src) in &files {
        content += fs::metadata(src)
            .with_context(|| format!("reading {}", src.display()))?
            .len();
    }
    let esp_bytes = esp_size(content);
    let esp = fat_image(esp_bytes, volume_id, &files)?;

    // Partition extents in sectors.
    let bios_start = MIB / SECTOR;
    let bios_sectors = MIB / SECTOR;
    let esp_start = bios_start + bios_sectors;
    let esp_sectors = esp_bytes / SECTOR;
    let cache_start = esp_start + esp_sectors;
    let cache_sectors = CACHE_BYTES_IN_FILE / SECTOR;
    let total_sectors = cache_start + cache_sectors + 33;
    ensure!(
        core_img.len() as u64 <= bios_sectors * SECTOR,
        "GRUB's core.img ({} bytes) does not fit the BIOS boot partition",
        core_img.len()
    );

    let guid = |n: u8| -> [u8; 16] {
        let mut h = Sha256::new();
        h.update(seed_hash);
        h.update([n]);
        let mut g: [u8; 16] = h.finalize()[..16].try_into().unwrap();
        g[7] = (g[7] & 0x0f) | 0x40; // version 4 (mixed-endian: byte 7 is the high byte)
        g[8] = (g[8] & 0x3f) | 0x80; // variant
        g
    };
    let partitions = [
        GptEntry {
            type_guid: parse_guid(BIOS_BOOT_TYPE_GUID),
            unique_guid: guid(1),
            first_lba: bios_start,
            last_lba: bios_start + bios_sectors - 1,
            attributes: 0,
            name: BIOS_BOOT_PARTITION_NAME.into(),
        },
        GptEntry {
            type_guid: parse_guid(ESP_TYPE_GUID),
            unique_guid: guid(2),
            first_lba: esp_start,
            last_lba: esp_start + esp_sectors - 1,
            attributes: 0,
            name: BOOT_PARTITION_NAME.into(),
        },
        GptEntry {
            type_guid: parse_guid(CACHE_TYPE_GUID),
            unique_guid: guid(3),
            first_lba: cache_start,
            last_lba: cache_start + cache_sectors - 1,
            attributes: 0,
            name: CACHE_PARTITION_NAME.into(),
        },
    ];

    let mut disk = vec![0u8; (total_sectors * SECTOR) as usize];
    disk[..512].copy_from_slice(&bios_mbr(&boot_img, bios_start, total_sectors)?);
    write_gpt(&mut disk, total_sectors, guid(0), &partitions);
    // core.img in the BIOS boot partition, its first sector told where the rest is.
    let core = patch_core_img(core_img, bios_start)?;
    let at = (bios_start * SECTOR) as usize;
    disk[at..at + core.len()].copy_from_slice(&core);
    let at = (esp_start * SECTOR) as usize;
    disk[at..at + esp.len()].copy_from_slice(&esp);

    let tmp = out.with_extension("partial");
    let mut f = fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    f.write_all(&disk)?;
    f.sync_all()?;
    fs::rename(&tmp, out).with_context(|| format!("renaming into {}", out.display()))?;
    Ok(DiskReport {
        path: out.to_path_buf(),
        bytes: disk.len() as u64,
        esp_bytes,
        cmdline,
        fs_uuid,
    })
}

/// The boot partition: what it holds plus 16 MiB for a larger kernel, in whole 4 MiB,
/// at least 40 MiB (FAT32 needs 65525 clusters: 33 MiB of 512-byte ones).
pub fn esp_size(content: u64) -> u64 {
    let want = content + content / 16 + 16 * MIB;
    (want.div_ceil(4 * MIB) * 4 * MIB).max(40 * MIB)
}

/// Runs `grub-mkimage` for BIOS (`core.img`) and UEFI (`BOOTX64.EFI`), both with `early`
/// as their embedded configuration.
fn grub_images(grub_lib: &Path, early: &str) -> Result<(Vec<u8>, Vec<u8>)> {
    let tmp = crate::image::TempDir::new("collective-grub")?;
    let cfg = tmp.path().join("early.cfg");
    fs::write(&cfg, early)?;
    let mut images = Vec::new();
    for (format, platform, extra) in [
        ("i386-pc", "i386-pc", &["biosdisk"][..]),
        ("x86_64-efi", "x86_64-efi", &["efi_gop", "efi_uga"][..]),
    ] {
        let dir = grub_lib.join(platform);
        if !dir.join("moddep.lst").exists() {
            bail!(
                "no GRUB modules in {} (install Debian's {})",
                dir.display(),
                if platform == "i386-pc" {
                    "grub-pc-bin"
                } else {
                    "grub-efi-amd64-bin"
                }
            );
        }
        let out = tmp.path().join(format!("{platform}.img"));
        let status = Command::new("grub-mkimage")
            .arg("-O")
            .arg(format)
            .arg("-d")
            .arg(&dir)
            .arg("-o")
            .arg(&out)
            .arg("-p")
            .arg("/boot/grub")
            .arg("-c")
            .arg(&cfg)
            .args(GRUB_MODULES)
            .args(extra)
            .status()
            .context("running grub-mkimage (install Debian's grub-common)")?;
        ensure!(
            status.success(),
            "grub-mkimage -O {format} failed: {status}"
        );
        images.push(fs::read(&out)?);
    }
    let efi = images.pop().unwrap();
    let core = images.pop().unwrap();
    Ok((core, efi))
}

/// GRUB's `boot.img` as a protective MBR: told where `core.img` starts (`kernel_sector`
/// at 0x5c), with the boot-drive check turned off as `grub-bios-setup` does for hard
/// disks (0x66), and one partition of type 0xEE over the disk.
pub fn bios_mbr(boot_img: &[u8], core_lba: u64, total_sectors: u64) -> Result<[u8; 512]> {
    ensure!(
        boot_img[0x66..0x68] == [0xeb, 0x05],
        "unexpected GRUB boot.img (no drive-check jump at 0x66)"
    );
    let mut mbr = [0u8; 512];
    mbr[..0x1b8].copy_from_slice(&boot_img[..0x1b8]);
    mbr[0x5c..0x64].copy_from_slice(&core_lba.to_le_bytes());
    mbr[0x66] = 0x90;
    mbr[0x67] = 0x90;
    let p = 0x1be;
    mbr[p] = 0; // not active: GPT
    mbr[p + 1..p + 4].copy_from_slice(&[0x00, 0x02, 0x00]);
    mbr[p + 4] = 0xee;
    mbr[p + 5..p + 8].copy_from_slice(&[0xff, 0xff, 0xff]);
    mbr[p + 8..p + 12].copy_from_slice(&1u32.to_le_bytes());
    let size = (total_sectors - 1).min(u32::MAX as u64) as u32;
    mbr[p + 12..p + 16].copy_from_slice(&size.to_le_bytes());
    mbr[510] = 0x55;
    mbr[511] = 0xaa;
    Ok(mbr)
}

/// Tells `core.img`'s first sector (GRUB's `diskboot.img`) where the rest of it is: one
/// contiguous run right after it. `grub-mkimage` already wrote the run's length.
pub fn patch_core_img(mut core: Vec<u8>, core_lba: u64) -> Result<Vec<u8>> {
    ensure!(core.len() > 512, "core.img too small");
    let sectors = core.len().div_ceil(512) as u64;
    core.resize((sectors * 512) as usize, 0);
    let len = u16::from_le_bytes([core[0x1fc], core[0x1fd]]) as u64;
    ensure!(
        len == sectors - 1,
        "core.img's block list says {len} sectors, the image has {}",
        sectors - 1
    );
    core[0x1f4..0x1fc].copy_from_slice(&(core_lba + 1).to_le_bytes());
    Ok(core)
}

/// A FAT32 file system of `bytes` holding `files` (path in the file system, file on this
/// machine), with volume serial `volume_id` and label `COLLECTIVE`, made with mtools (no
/// root, no mount). Time stamps are the FAT epoch (`SOURCE_DATE_EPOCH` 1980-01-01 UTC),
/// so the same inputs give the same bytes.
fn fat_image(bytes: u64, volume_id: u32, files: &[(&str, PathBuf)]) -> Result<Vec<u8>> {
    use std::ffi::OsStr;
    let tmp = crate::image::TempDir::new("collective-esp")?;
    let img = tmp.path().join("esp.img");
    fs::File::create(&img)?.set_len(bytes)?;
    let mtools = |program: &str, args: &[&OsStr]| -> Result<()> {
        let out = Command::new(program)
            .arg("-i")
            .arg(&img)
            .args(args)
            .env("TZ", "UTC")
            .env("SOURCE_DATE_EPOCH", "315532800")
            .env("MTOOLS_SKIP_CHECK", "1")
            .env_remove("MTOOLSRC")
            .output()
            .with_context(|| format!("running {program} (install Debian's mtools)"))?;
        ensure!(
            out.status.success(),
            "{program} {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(())
    };
    let sectors = (bytes / SECTOR).to_string();
    let serial = format!("{volume_id:08X}");
    // Small partitions need one-sector clusters to have enough of them for FAT32 (what
    // the UEFI specification asks of a system partition); larger ones get mformat's choice.
    let cluster = if bytes < 128 * MIB { "1" } else { "8" };
    let words = [
        "-c",
        cluster,
        "-F",
        "-T",
        &sectors,
        "-h",
        "64",
        "-s",
        "32",
        "-H",
        "0",
        "-N",
        &serial,
        "-v",
        "COLLECTIVE",
        "::",
    ];
    let args: Vec<&OsStr> = words.iter().map(OsStr::new).collect();
    mtools("mformat", &args).context("formatting the boot partition")?;
    let mut dirs = std::collections::BTreeSet::new();
    for (path, _) in files {
        let parts: Vec<&str> = path.split('/').collect();
        for n in 1..parts.len() {
            dirs.insert(format!("::/{}", parts[..n].join("/")));
        }
    }
    for dir in &dirs {
        mtools("mmd", &[OsStr::new(dir)])?;
    }
    for (path, src) in files {
        let dest = format!("::/{path}");
        mtools("mcopy", &[src.as_os_str(), OsStr::new(&dest)])
            .with_context(|| format!("copying {} to the boot partition", src.display()))?;
    }
    Ok(fs::read(&img)?)
}

/// One GPT partition entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GptEntry {
    pub type_guid: [u8; 16],
    pub unique_guid: [u8; 16],
    pub first_lba: u64,
    pub last_lba: u64,
    pub attributes: u64,
    pub name: String,
}

const GPT_ENTRIES: usize = 128;
const GPT_ENTRY_SIZE: usize = 128;

fn entries_bytes(partitions: &[GptEntry]) -> Vec<u8> {
    let mut out = vec![0u8; GPT_ENTRIES * GPT_ENTRY_SIZE];
    for (i, p) in partitions.iter().enumerate() {
        let e = &mut out[i * GPT_ENTRY_SIZE..(i + 1) * GPT_ENTRY_SIZE];
        e[0..16].copy_from_slice(&p.type_guid);
        e[16..32].copy_from_slice(&p.unique_guid);
        e[32..40].copy_from_slice(&p.first_lba.to_le_bytes());
        e[40..48].copy_from_slice(&p.last_lba.to_le_bytes());
        e[48..56].copy_from_slice(&p.attributes.to_le_bytes());
        for (j, unit) in p.name.encode_utf16().take(36).enumerate() {
            e[56 + 2 * j..58 + 2 * j].copy_from_slice(&unit.to_le_bytes());
        }
    }
    out
}

fn gpt_header(
    my_lba: u64,
    alternate_lba: u64,
    last_usable: u64,
    entries_lba: u64,
    disk_guid: [u8; 16],
    entries_crc: u32,
) -> [u8; 512] {
    let mut h = [0u8; 512];
    h[0..8].copy_from_slice(b"EFI PART");
    h[8..12].copy_from_slice(&0x0001_0000u32.to_le_bytes());
    h[12..16].copy_from_slice(&92u32.to_le_bytes());
    h[24..32].copy_from_slice(&my_lba.to_le_bytes());
    h[32..40].copy_from_slice(&alternate_lba.to_le_bytes());
    h[40..48].copy_from_slice(&34u64.to_le_bytes());
    h[48..56].copy_from_slice(&last_usable.to_le_bytes());
    h[56..72].copy_from_slice(&disk_guid);
    h[72..80].copy_from_slice(&entries_lba.to_le_bytes());
    h[80..84].copy_from_slice(&(GPT_ENTRIES as u32).to_le_bytes());
    h[84..88].copy_from_slice(&(GPT_ENTRY_SIZE as u32).to_le_bytes());
    h[88..92].copy_from_slice(&entries_crc.to_le_bytes());
    let crc = crc32fast::hash(&h[..92]);
    h[16..20].copy_from_slice(&crc.to_le_bytes());
    h
}

/// Writes the primary and backup GPT of a disk of `total_sectors` into `disk`.
pub fn write_gpt(
    disk: &mut [u8],
    total_sectors: u64,
    disk_guid: [u8; 16],
    partitions: &[GptEntry],
) {
    let entries = entries_bytes(partitions);
    let crc = crc32fast::hash(&entries);
    let last = total_sectors - 1;
    let last_usable = total_sectors - 34;
    let s = SECTOR as usize;
    disk[s..2 * s].copy_from_slice(&gpt_header(1, last, last_usable, 2, disk_guid, crc));
    disk[2 * s..2 * s + entries.len()].copy_from_slice(&entries);
    let backup_entries = ((total_sectors - 33) * SECTOR) as usize;
    disk[backup_entries..backup_entries + entries.len()].copy_from_slice(&entries);
    disk[(last * SECTOR) as usize..][..s].copy_from_slice(&gpt_header(
        last,
        1,
        last_usable,
        total_sectors - 33,
        disk_guid,
        crc,
    ));
}

/// A GUID as GPT stores it (the first three fields little-endian).
pub fn parse_guid(text: &str) -> [u8; 16] {
    let hex: String = text.chars().filter(|c| *c != '-').collect();
    let mut b = [0u8; 16];
    for (i, byte) in b.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).expect("GUID constant");
    }
    b[0..4].reverse();
    b[4..6].reverse();
    b[6..8].reverse();
    b
}

/// Reads back a GPT (primary header and entries) from an image, for tests and checks.
pub fn read_gpt(disk: &[u8]) -> Result<(u64, Vec<GptEntry>)> {
    let s = SECTOR as usize;
    let h = &disk[s..2 * s];
    ensure!(&h[0..8] == b"EFI PART", "no GPT header at LBA 1");
    let mut check = h[..92].to_vec();
    check[16..20].fill(0);
    ensure!(
        crc32fast::hash(&check) == u32::from_le_bytes(h[16..20].try_into()?),
        "GPT header CRC mismatch"
    );
    let alternate = u64::from_le_bytes(h[32..40].try_into()?);
    let entries_lba = u64::from_le_bytes(h[72..80].try_into()?) as usize;
    let n = u32::from_le_bytes(h[80..84].try_into()?) as usize;
    let size = u32::from_le_bytes(h[84..88].try_into()?) as usize;
    let entries = &disk[entries_lba * s..entries_lba * s + n * size];
    ensure!(
        crc32fast::hash(entries) == u32::from_le_bytes(h[88..92].try_into()?),
        "GPT entries CRC mismatch"
    );
    let mut out = Vec::new();
    for e in entries.chunks(size) {
        if e[0..16].iter().all(|&b| b == 0) {
            continue;
        }
        let units: Vec<u16> = e[56..128]
            .chunks(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .take_while(|&u| u != 0)
            .collect();
        out.push(GptEntry {
            type_guid: e[0..16].try_into()?,
            unique_guid: e[16..32].try_into()?,
            first_lba: u64::from_le_bytes(e[32..40].try_into()?),
            last_lba: u64::from_le_bytes(e[40..48].try_into()?),
            attributes: u64::from_le_bytes(e[48..56].try_into()?),
            name: String::from_utf16_lossy(&units),
        });
    }
    Ok((alternate, out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guids_are_stored_mixed_endian() {
        // The EFI system partition's type as it appears on disk.
        assert_eq!(
            parse_guid(ESP_TYPE_GUID),
            [
                0x28, 0x73, 0x2a, 0xc1, 0x1f, 0xf8, 0xd2, 0x11, 0xba, 0x4b, 0x00, 0xa0, 0xc9, 0x3e,
                0xc9, 0x3b
            ]
        );
    }

    #[test]
    fn cache_type_is_the_one_init_looks_for() {
        // init/src/cachepart.rs, CACHE_TYPE_GUID: keep the two equal.
        assert_eq!(
            parse_guid(CACHE_TYPE_GUID),
            [
                0x8c, 0x00, 0x25, 0x3d, 0xfd, 0xef, 0xec, 0x42, 0x81, 0x36, 0x07, 0xc4, 0xed, 0x8c,
                0x4a, 0x53
            ]
        );
    }

    /// A whole image from stand-in kernel and initrd files: needs GRUB's tools and
    /// images (scripts/deps.sh installs them).
    #[test]
    fn image_is_reproducible_and_holds_the_firmware() {
        let tmp = crate::image::TempDir::new("disk-test").unwrap();
        let vmlinuz = tmp.path().join("vmlinuz");
        let initrd = tmp.path().join("initrd.img");
        fs::write(&vmlinuz, vec![0x4b; 300_000]).unwrap();
        fs::write(&initrd, b"initrd bytes").unwrap();
        let a = tmp.path().join("a.img");
        let b = tmp.path().join("b.img");
        let ra = write_disk_image(&a, &vmlinuz, &initrd, "console=ttyS0", b"seed").unwrap();
        write_disk_image(&b, &vmlinuz, &initrd, "console=ttyS0", b"seed").unwrap();
        let da = fs::read(&a).unwrap();
        assert!(da == fs::read(&b).unwrap(), "two builds differ");
        assert_eq!(ra.bytes, da.len() as u64);
        assert_eq!(ra.cmdline, "console=ttyS0 collective.cache=auto");

        let (alternate, parts) = read_gpt(&da).unwrap();
        assert_eq!(alternate, da.len() as u64 / SECTOR - 1);
        let names: Vec<&str> = parts.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(
            names,
            [
                BIOS_BOOT_PARTITION_NAME,
                BOOT_PARTITION_NAME,
                CACHE_PARTITION_NAME
            ]
        );
        let cache = &parts[2];
        assert_eq!(cache.type_guid, parse_guid(CACHE_TYPE_GUID));
        assert_eq!(
            cache.last_lba,
            da.len() as u64 / SECTOR - 34,
            "cache is last"
        );
        let cache_bytes =
            &da[(cache.first_lba * SECTOR) as usize..][..CACHE_BYTES_IN_FILE as usize];
        assert!(
            cache_bytes.iter().all(|&b| b == 0),
            "cache partition left empty"
        );
        // BIOS: boot.img points at core.img, which points at its own second sector.
        assert_eq!(u64::from_le_bytes(da[0x5c..0x64].try_into().unwrap()), 2048);
        let core = &da[2048 * 512..];
        assert_eq!(
            u64::from_le_bytes(core[0x1f4..0x1fc].try_into().unwrap()),
            2049
        );

        // UEFI: the boot partition is FAT32 with GRUB where firmware looks and the files.
        let esp = &parts[1];
        let bytes =
            da[(esp.first_lba * SECTOR) as usize..((esp.last_lba + 1) * SECTOR) as usize].to_vec();
        // dosfstools finds nothing to repair.
        let esp_file = tmp.path().join("esp.img");
        fs::write(&esp_file, &bytes).unwrap();
        let fsck = Command::new("fsck.fat")
            .arg("-n")
            .arg(&esp_file)
            .output()
            .expect("fsck.fat (Debian's dosfstools)");
        let report = String::from_utf8_lossy(&fsck.stdout);
        assert!(fsck.status.success(), "{report}");
        let fs =
            fatfs::FileSystem::new(std::io::Cursor::new(bytes), fatfs::FsOptions::new()).unwrap();
        assert_eq!(
            format!("{:08X}", fs.volume_id()),
            ra.fs_uuid.replace('-', "")
        );
        assert_eq!(fs.fat_type(), fatfs::FatType::Fat32);
        let read = |path: &str| {
            let mut data = Vec::new();
            std::io::Read::read_to_end(&mut fs.root_dir().open_file(path).unwrap(), &mut data)
                .unwrap();
            data
        };
        assert_eq!(&read("EFI/BOOT/BOOTX64.EFI")[..2], b"MZ");
        assert_eq!(read("vmlinuz"), fs::read(&vmlinuz).unwrap());
        assert_eq!(read("initrd.img"), b"initrd bytes");
        let cfg = String::from_utf8(read("boot/grub/grub.cfg")).unwrap();
        assert!(
            cfg.contains("linux /vmlinuz console=ttyS0 collective.cache=auto"),
            "{cfg}"
        );
    }

    #[test]
    fn cmdline_gets_the_cache_unless_it_names_one() {
        assert_eq!(
            disk_cmdline("console=ttyS0"),
            "console=ttyS0 collective.cache=auto"
        );
        assert_eq!(
            disk_cmdline("console=ttyS0 collective.cache=/dev/sdb"),
            "console=ttyS0 collective.cache=/dev/sdb"
        );
    }

    #[test]
    fn esp_leaves_room_and_is_whole_mebibytes() {
        assert_eq!(esp_size(0), 40 * MIB);
        let s = esp_size(20 * MIB);
        assert!(s >= 36 * MIB && s.is_multiple_of(4 * MIB), "{s}");
    }

    #[test]
    fn gpt_round_trips_with_a_backup() {
        let total = 8192u64;
        let mut disk = vec![0u8; (total * SECTOR) as usize];
        let parts = vec![GptEntry {
            type_guid: parse_guid(CACHE_TYPE_GUID),
            unique_guid: [7; 16],
            first_lba: 2048,
            last_lba: total - 34,
            attributes: 0,
            name: CACHE_PARTITION_NAME.into(),
        }];
        write_gpt(&mut disk, total, [1; 16], &parts);
        let (alternate, read) = read_gpt(&disk).unwrap();
        assert_eq!(alternate, total - 1);
        assert_eq!(read, parts);
        let backup = &disk[((total - 1) * SECTOR) as usize..];
        assert_eq!(&backup[0..8], b"EFI PART");
        assert_eq!(
            u64::from_le_bytes(backup[72..80].try_into().unwrap()),
            total - 33
        );
    }

    #[test]
    fn mbr_points_at_core_and_core_at_its_rest() {
        let mut boot = vec![0u8; 512];
        boot[0x66] = 0xeb;
        boot[0x67] = 0x05;
        let mbr = bios_mbr(&boot, 2048, 100_000).unwrap();
        assert_eq!(
            u64::from_le_bytes(mbr[0x5c..0x64].try_into().unwrap()),
            2048
        );
        assert_eq!(&mbr[0x66..0x68], &[0x90, 0x90]);
        assert_eq!(mbr[0x1be + 4], 0xee);
        assert_eq!(&mbr[510..], &[0x55, 0xaa]);

        let mut core = vec![0u8; 512 * 3 + 10];
        core[0x1fc] = 3;
        let core = patch_core_img(core, 2048).unwrap();
        assert_eq!(core.len(), 512 * 4);
        assert_eq!(
            u64::from_le_bytes(core[0x1f4..0x1fc].try_into().unwrap()),
            2049
        );
    }
}
