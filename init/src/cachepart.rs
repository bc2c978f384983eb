//! The cache partition of a disk written by `collective-image` (`disk.img`): GPT partition
//! name `collective-cache` and our own partition type [`CACHE_TYPE_GUID`], both required,
//! so a partition of anyone else's is never taken. In the image the partition is small
//! (1 MiB) and last; before it is formatted for the first time it is grown to the end of
//! whatever disk the image was written to (primary and backup GPT rewritten, the kernel
//! told with `BLKPG_RESIZE_PARTITION`).

use log::{info, warn};
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Must match `image_builder::disk::CACHE_TYPE_GUID`
/// (3d25008c-effd-42ec-8136-07c4ed8c4a53), as GPT stores it (mixed-endian).
pub const CACHE_TYPE_GUID: [u8; 16] = [
    0x8c, 0x00, 0x25, 0x3d, 0xfd, 0xef, 0xec, 0x42, 0x81, 0x36, 0x07, 0xc4, 0xed, 0x8c, 0x4a, 0x53,
];
pub const CACHE_PARTITION_NAME: &str = "collective-cache";

/// A cache partition found through sysfs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachePartition {
    /// `/dev/sda3`
    pub device: PathBuf,
    /// `/dev/sda`
    pub disk: PathBuf,
    /// Partition number (1-based), as in the GPT.
    pub number: u32,
}

fn uevent_value(sys_dev: &Path, key: &str) -> Option<String> {
    let uevent = fs::read_to_string(sys_dev.join("uevent")).ok()?;
    uevent
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
        .map(str::to_string)
}

/// Partitions under `sys_class_block` named `collective-cache`, with their disks. The
/// type GUID is checked separately ([`has_our_type`]), on the disk itself.
pub fn named_partitions(sys_class_block: &Path) -> Vec<CachePartition> {
    let mut names: Vec<String> = fs::read_dir(sys_class_block)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
        .into_iter()
        .filter_map(|n| {
            let dir = sys_class_block.join(&n);
            let number: u32 = fs::read_to_string(dir.join("partition"))
                .ok()?
                .trim()
                .parse()
                .ok()?;
            if uevent_value(&dir, "PARTNAME").as_deref() != Some(CACHE_PARTITION_NAME) {
                return None;
            }
            // /sys/class/block/sda3 links to .../block/sda/sda3: the parent is the disk.
            let real = fs::canonicalize(&dir).ok()?;
            let disk = real.parent()?.file_name()?.to_string_lossy().into_owned();
            Some(CachePartition {
                device: Path::new("/dev").join(&n),
                disk: Path::new("/dev").join(disk),
                number,
            })
        })
        .collect()
}

/// The disk's logical sector size (GPT counts in it).
pub fn sector_size(disk: &Path) -> u64 {
    disk.file_name()
        .and_then(|n| {
            fs::read_to_string(
                Path::new("/sys/class/block")
                    .join(n)
                    .join("queue/logical_block_size"),
            )
            .ok()
        })
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(512)
}

/// A GPT read from a disk: the primary header and the entry array.
struct Gpt {
    header: Vec<u8>,
    entries: Vec<u8>,
    entry_size: usize,
}

fn invalid(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

fn header_crc(header: &[u8]) -> u32 {
    let size = (u32_at(header, 12) as usize).clamp(92, header.len());
    let mut h = header[..size].to_vec();
    h[16..20].fill(0);
    crc32fast::hash(&h)
}

fn read_gpt(disk: &File, sector: u64) -> io::Result<Gpt> {
    let mut header = vec![0u8; sector as usize];
    disk.read_exact_at(&mut header, sector)?;
    if &header[0..8] != b"EFI PART" {
        return Err(invalid("no GPT"));
    }
    if header_crc(&header) != u32_at(&header, 16) {
        return Err(invalid("GPT header checksum mismatch"));
    }
    let entries_lba = u64_at(&header, 72);
    let count = u32_at(&header, 80) as usize;
    let entry_size = u32_at(&header, 84) as usize;
    if entry_size < 128 || count == 0 || count * entry_size > 1 << 20 {
        return Err(invalid("implausible GPT entry array"));
    }
    let mut entries = vec![0u8; count * entry_size];
    disk.read_exact_at(&mut entries, entries_lba * sector)?;
    if crc32fast::hash(&entries) != u32_at(&header, 88) {
        return Err(invalid("GPT entries checksum mismatch"));
    }
    Ok(Gpt {
        header,
        entries,
        entry_size,
    })
}

/// Whether partition `number` of `disk` has our partition type.
pub fn has_our_type(disk: &File, sector: u64, number: u32) -> bool {
    let Ok(gpt) = read_gpt(disk, sector) else {
        return false;
    };
    let i = number as usize - 1;
    gpt.entries
        .get(i * gpt.entry_size..i * gpt.entry_size + 16)
        .is_some_and(|t| t == CACHE_TYPE_GUID)
}

/// Grows partition `number` (ours, and the last on the disk) to the end of a disk of
/// `disk_bytes`: rewrites the backup GPT at the new end, then the primary, then the
/// protective MBR's size. Returns the partition's new (start, length) in bytes, or `None`
/// if it already reaches the end.
pub fn grow_to_end(
    disk: &File,
    sector: u64,
    disk_bytes: u64,
    number: u32,
) -> io::Result<Option<(u64, u64)>> {
    let mut gpt = read_gpt(disk, sector)?;
    let size = gpt.entry_size;
    let i = number as usize - 1;
    if gpt.entries.len() < (i + 1) * size || gpt.entries[i * size..i * size + 16] != CACHE_TYPE_GUID
    {
        return Err(invalid(format!(
            "partition {number} is not a Collective cache partition"
        )));
    }
    let first = u64_at(&gpt.entries, i * size + 32);
    let last = u64_at(&gpt.entries, i * size + 40);
    for (j, e) in gpt.entries.chunks(size).enumerate() {
        if j != i && e[..16].iter().any(|&b| b != 0) && u64_at(e, 40) > last {
            return Err(invalid(format!(
                "partition {number} is not the last on the disk"
            )));
        }
    }
    let total = disk_bytes / sector;
    let entry_sectors = (gpt.entries.len() as u64).div_ceil(sector);
    let backup_lba = total - 1;
    let backup_entries_lba = backup_lba - entry_sectors;
    let new_last = backup_entries_lba - 1;
    if new_last <= last {
        return Ok(None);
    }
    let old_backup_lba = u64_at(&gpt.header, 32);

    gpt.entries[i * size + 40..i * size + 48].copy_from_slice(&new_last.to_le_bytes());
    let entries_crc = crc32fast::hash(&gpt.entries);
    let mut primary = gpt.header.clone();
    primary[32..40].copy_from_slice(&backup_lba.to_le_bytes());
    primary[48..56].copy_from_slice(&new_last.to_le_bytes());
    primary[88..92].copy_from_slice(&entries_crc.to_le_bytes());
    let crc = header_crc(&primary);
    primary[16..20].copy_from_slice(&crc.to_le_bytes());
    let mut backup = primary.clone();
    backup[24..32].copy_from_slice(&backup_lba.to_le_bytes());
    backup[32..40].copy_from_slice(&1u64.to_le_bytes());
    backup[72..80].copy_from_slice(&backup_entries_lba.to_le_bytes());
    let crc = header_crc(&backup);
    backup[16..20].copy_from_slice(&crc.to_le_bytes());

    // Backup first: until the primary is rewritten, the old table still stands.
    disk.write_all_at(&gpt.entries, backup_entries_lba * sector)?;
    disk.write_all_at(&backup, backup_lba * sector)?;
    disk.sync_data()?;
    let primary_entries_lba = u64_at(&primary, 72);
    disk.write_all_at(&gpt.entries, primary_entries_lba * sector)?;
    disk.write_all_at(&primary, sector)?;
    // The image's old backup header is now inside the cache partition: wipe it, so no
    // tool mistakes it for a table.
    if old_backup_lba > last && old_backup_lba < backup_entries_lba {
        disk.write_all_at(&vec![0u8; sector as usize], old_backup_lba * sector)?;
    }
    let mut mbr = [0u8; 512];
    disk.read_exact_at(&mut mbr, 0)?;
    if mbr[510..] == [0x55, 0xaa] && mbr[0x1be + 4] == 0xee {
        let covered = (total - 1).min(u32::MAX as u64) as u32;
        disk.write_all_at(&covered.to_le_bytes(), 0x1be + 12)?;
    }
    disk.sync_data()?;
    Ok(Some((first * sector, (new_last + 1 - first) * sector)))
}

/// Tells the kernel the partition's new extent (the disk is in use, so re-reading the
/// whole table may be refused; resizing one partition is not).
fn tell_kernel(disk: &File, number: u32, start: u64, length: u64) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    #[repr(C)]
    struct BlkpgPartition {
        start: i64,
        length: i64,
        pno: i32,
        devname: [u8; 64],
        volname: [u8; 64],
    }
    #[repr(C)]
    struct BlkpgIoctlArg {
        op: i32,
        flags: i32,
        datalen: i32,
        data: *mut libc::c_void,
    }
    const BLKPG: libc::c_ulong = 0x1269;
    const BLKPG_RESIZE_PARTITION: i32 = 3;
    const BLKRRPART: libc::c_ulong = 0x125f;
    let mut part = BlkpgPartition {
        start: start as i64,
        length: length as i64,
        pno: number as i32,
        devname: [0; 64],
        volname: [0; 64],
    };
    let mut arg = BlkpgIoctlArg {
        op: BLKPG_RESIZE_PARTITION,
        flags: 0,
        datalen: std::mem::size_of::<BlkpgPartition>() as i32,
        data: &mut part as *mut BlkpgPartition as *mut libc::c_void,
    };
    // SAFETY: both structs live across the call and match the kernel's layout.
    if unsafe { libc::ioctl(disk.as_raw_fd(), BLKPG, &mut arg) } == 0 {
        return Ok(());
    }
    let resize = io::Error::last_os_error();
    // SAFETY: BLKRRPART takes no argument.
    if unsafe { libc::ioctl(disk.as_raw_fd(), BLKRRPART, 0) } == 0 {
        return Ok(());
    }
    Err(resize)
}

/// Grows `part` to the end of its disk (before its first format). Returns a line for the
/// log and the login screen, or an error that leaves the partition as it was.
pub fn grow(part: &CachePartition) -> io::Result<Option<String>> {
    let disk = OpenOptions::new().read(true).write(true).open(&part.disk)?;
    let sector = sector_size(&part.disk);
    let disk_bytes = {
        use std::io::Seek;
        (&disk).seek(io::SeekFrom::End(0))?
    };
    match grow_to_end(&disk, sector, disk_bytes, part.number)? {
        None => Ok(None),
        Some((start, length)) => {
            tell_kernel(&disk, part.number, start, length)?;
            let line = format!(
                "grew {} to the end of {} ({})",
                part.device.display(),
                part.disk.display(),
                support::size::human(length)
            );
            info!("cache: {line}");
            Ok(Some(line))
        }
    }
}

/// Our partitions (name and type both ours), in sysfs order.
pub fn find(sys_class_block: &Path) -> Vec<CachePartition> {
    named_partitions(sys_class_block)
        .into_iter()
        .filter(|p| {
            let ok = File::open(&p.disk)
                .map(|d| has_our_type(&d, sector_size(&p.disk), p.number))
                .unwrap_or(false);
            if !ok {
                warn!(
                    "cache: {} is named {CACHE_PARTITION_NAME} but its partition type is not ours; not using it",
                    p.device.display()
                );
            }
            ok
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal GPT disk image: partition 1 somewhere, partition 2 ours and last.
    fn image(path: &Path, total: u64, ours: bool) {
        let s = 512usize;
        let mut d = vec![0u8; total as usize * s];
        let mut entries = vec![0u8; 128 * 128];
        entries[0..16].copy_from_slice(&[9; 16]);
        entries[32..40].copy_from_slice(&34u64.to_le_bytes());
        entries[40..48].copy_from_slice(&99u64.to_le_bytes());
        let t = if ours { CACHE_TYPE_GUID } else { [7; 16] };
        entries[128..144].copy_from_slice(&t);
        entries[128 + 32..128 + 40].copy_from_slice(&100u64.to_le_bytes());
        entries[128 + 40..128 + 48].copy_from_slice(&199u64.to_le_bytes());
        let mut h = vec![0u8; s];
        h[0..8].copy_from_slice(b"EFI PART");
        h[8..12].copy_from_slice(&0x10000u32.to_le_bytes());
        h[12..16].copy_from_slice(&92u32.to_le_bytes());
        h[24..32].copy_from_slice(&1u64.to_le_bytes());
        h[32..40].copy_from_slice(&(total - 1).to_le_bytes());
        h[40..48].copy_from_slice(&34u64.to_le_bytes());
        h[48..56].copy_from_slice(&(total - 34).to_le_bytes());
        h[72..80].copy_from_slice(&2u64.to_le_bytes());
        h[80..84].copy_from_slice(&128u32.to_le_bytes());
        h[84..88].copy_from_slice(&128u32.to_le_bytes());
        h[88..92].copy_from_slice(&crc32fast::hash(&entries).to_le_bytes());
        let crc = header_crc(&h);
        h[16..20].copy_from_slice(&crc.to_le_bytes());
        d[s..2 * s].copy_from_slice(&h);
        d[2 * s..2 * s + entries.len()].copy_from_slice(&entries);
        d[0x1be + 4] = 0xee;
        d[510] = 0x55;
        d[511] = 0xaa;
        fs::write(path, d).unwrap();
    }

    #[test]
    fn grows_our_last_partition_to_the_end_once() {
        let dir = std::env::temp_dir().join(format!("cachepart-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("disk.img");
        image(&path, 233, true);
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        f.set_len(4096 * 512).unwrap();
        assert!(has_our_type(&f, 512, 2));
        assert!(!has_our_type(&f, 512, 1));
        let (start, len) = grow_to_end(&f, 512, 4096 * 512, 2).unwrap().unwrap();
        assert_eq!(start, 100 * 512);
        assert_eq!(len, (4096 - 33 - 100) * 512);
        // Both tables are valid and agree.
        let gpt = read_gpt(&f, 512).unwrap();
        assert_eq!(u64_at(&gpt.entries, 128 + 40), 4096 - 34);
        assert_eq!(u64_at(&gpt.header, 32), 4095);
        let mut backup = vec![0u8; 512];
        f.read_exact_at(&mut backup, 4095 * 512).unwrap();
        assert_eq!(&backup[0..8], b"EFI PART");
        assert_eq!(header_crc(&backup), u32_at(&backup, 16));
        assert_eq!(u64_at(&backup, 72), 4096 - 33);
        let mut mbr = vec![0u8; 512];
        f.read_exact_at(&mut mbr, 0).unwrap();
        assert_eq!(u32_at(&mbr, 0x1be + 12), 4095);
        // A second call finds nothing to do.
        assert_eq!(grow_to_end(&f, 512, 4096 * 512, 2).unwrap(), None);
        // Partition 1 is not ours.
        assert!(grow_to_end(&f, 512, 4096 * 512, 1).is_err());
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_foreign_partition_is_not_grown() {
        let dir = std::env::temp_dir().join(format!("cachepart-f-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("disk.img");
        image(&path, 233, false);
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        f.set_len(4096 * 512).unwrap();
        let before = fs::read(&path).unwrap();
        assert!(!has_our_type(&f, 512, 2));
        assert!(grow_to_end(&f, 512, 4096 * 512, 2).is_err());
        assert_eq!(fs::read(&path).unwrap(), before, "nothing was written");
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn partitions_are_found_by_name_through_sysfs() {
        let dir = std::env::temp_dir().join(format!("cachepart-sys-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        // /sys/class/block/vda3 -> ../../devices/.../block/vda/vda3
        let real = dir.join("devices/block/vda/vda3");
        fs::create_dir_all(&real).unwrap();
        fs::write(real.join("partition"), "3\n").unwrap();
        fs::write(
            real.join("uevent"),
            "DEVNAME=vda3\nPARTN=3\nPARTNAME=collective-cache\n",
        )
        .unwrap();
        let other = dir.join("devices/block/vda/vda2");
        fs::create_dir_all(&other).unwrap();
        fs::write(other.join("partition"), "2\n").unwrap();
        fs::write(other.join("uevent"), "PARTNAME=collective-boot\n").unwrap();
        let class = dir.join("class");
        fs::create_dir_all(&class).unwrap();
        std::os::unix::fs::symlink(&real, class.join("vda3")).unwrap();
        std::os::unix::fs::symlink(&other, class.join("vda2")).unwrap();
        assert_eq!(
            named_partitions(&class),
            vec![CachePartition {
                device: "/dev/vda3".into(),
                disk: "/dev/vda".into(),
                number: 3
            }]
        );
        let _ = fs::remove_dir_all(&dir);
    }
}
