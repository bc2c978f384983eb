//! `disk.img` (written by `collective-image build`) boots as a USB stick would: copied onto
//! a larger disk, booted with no `-kernel` through SeaBIOS (as a virtio disk) and through
//! OVMF (UEFI, as a removable USB stick on xHCI), it
//! reaches `login:`; its cache partition grows to the end of the disk and is formatted on
//! the first boot, and is found again, not reformatted, on the second.

use image_builder::disk::{self, CACHE_PARTITION_NAME, SECTOR};
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use system_tests::firmware::firmware;
use system_tests::{Machine, MachineConfig, OVMF};

const BOOT: Duration = Duration::from_secs(240);
const SHORT: Duration = Duration::from_secs(60);
/// The disk the image is written to, as a stick or a PC's disk would be.
const DISK_BYTES: u64 = 2 << 30;

fn image() -> PathBuf {
    let path = firmware().dir.join("disk.img");
    assert!(
        path.exists(),
        "collective-image wrote no {}",
        path.display()
    );
    path
}

/// A copy of disk.img enlarged to [`DISK_BYTES`] (sparse), as after `dd` to a stick.
fn stick(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("collective-disk-{}-{name}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    let path = dir.join("stick.img");
    fs::copy(image(), &path).unwrap();
    fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(DISK_BYTES)
        .unwrap();
    path
}

/// The GPT at the start of a disk file.
fn partitions(path: &Path) -> Vec<disk::GptEntry> {
    let mut head = vec![0u8; 64 * 1024];
    fs::File::open(path).unwrap().read_exact(&mut head).unwrap();
    disk::read_gpt(&head).unwrap().1
}

/// Boots the stick, waits for bring-up and DHCP, and returns the status screen's cache
/// line; powers off.
fn boot_and_read_cache_line(stick: &Path, bios: Option<&str>, usb: bool) -> (String, Duration) {
    let config = MachineConfig {
        boot_disk: Some(stick.to_path_buf()),
        boot_disk_usb: usb,
        bios: bios.map(PathBuf::from),
        ..Default::default()
    };
    let started = Instant::now();
    let mut m = Machine::boot(firmware(), &config).expect("start QEMU");
    m.expect("Collective terminal", BOOT).unwrap();
    m.expect("login:", BOOT).unwrap();
    let to_login = started.elapsed();
    m.expect("ready in", BOOT).unwrap();
    m.expect("login:", SHORT).unwrap();
    m.expect("address: 10.0.2.15/24 via 10.0.2.2", BOOT)
        .unwrap();
    m.expect("login:", SHORT).unwrap();
    let screen = m.status_screen().unwrap();
    let line = screen
        .lines()
        .find(|l| l.trim_start().starts_with("cache "))
        .unwrap_or_else(|| panic!("no cache line on the status screen:\n{screen}"))
        .trim()
        .to_string();
    m.power_off().unwrap();
    (line, to_login)
}

/// Two boots of one stick: the first grows and formats the cache partition, the second
/// finds it as it was. `usb`: a removable USB stick (`/dev/sda`), else virtio-blk.
fn boots_twice(name: &str, bios: Option<&str>, usb: bool) {
    let stick = stick(name);
    let before = partitions(&stick);
    let cache = before
        .iter()
        .position(|p| p.name == CACHE_PARTITION_NAME)
        .expect("a cache partition in disk.img");
    let disk = if usb { "/dev/sda" } else { "/dev/vda" };
    let device = format!("{disk}{}", cache + 1);

    let (first, t1) = boot_and_read_cache_line(&stick, bios, usb);
    eprintln!(
        "{name}: first boot to login: {:.1} s; {first}",
        t1.as_secs_f64()
    );
    assert!(first.contains(&device), "{first}");
    assert!(
        first.contains("formatted it now"),
        "first boot must format: {first}"
    );
    // Grown to the end of the 2 GiB disk (the image's partition is 1 MiB).
    assert!(
        first.contains(" GiB"),
        "the cache should span the disk: {first}"
    );
    let after = partitions(&stick);
    assert_eq!(
        after[cache].last_lba,
        DISK_BYTES / SECTOR - 34,
        "cache partition ends where the disk's usable space ends"
    );
    assert_eq!(after[cache].first_lba, before[cache].first_lba);
    // An independent reader agrees: both tables valid, backup at the disk's end.
    let verify = std::process::Command::new("sgdisk")
        .arg("-v")
        .arg(&stick)
        .output()
        .expect("sgdisk (Debian's gdisk)");
    let report = String::from_utf8_lossy(&verify.stdout);
    assert!(
        verify.status.success() && report.contains("No problems found"),
        "sgdisk -v after the first boot:\n{report}"
    );
    assert_eq!(
        &after[..cache],
        &before[..cache],
        "other partitions untouched"
    );

    let (second, t2) = boot_and_read_cache_line(&stick, bios, usb);
    eprintln!(
        "{name}: second boot to login: {:.1} s; {second}",
        t2.as_secs_f64()
    );
    assert!(second.contains(&device), "{second}");
    assert!(
        !second.contains("formatted"),
        "second boot must reuse the cache: {second}"
    );
    assert_eq!(
        partitions(&stick),
        after,
        "second boot leaves the table alone"
    );
    let _ = fs::remove_dir_all(stick.parent().unwrap());
}

#[test]
fn disk_image_is_compact_and_partitioned() {
    let path = image();
    let bytes = fs::metadata(&path).unwrap().len();
    assert!(bytes < 96 << 20, "disk.img is {bytes} bytes");
    let names: Vec<String> = partitions(&path).into_iter().map(|p| p.name).collect();
    assert_eq!(
        names,
        [
            "collective-bios-boot",
            "collective-boot",
            CACHE_PARTITION_NAME
        ]
    );
}

#[test]
fn disk_image_boots_on_bios_and_keeps_its_cache() {
    boots_twice("bios", None, false);
}

/// UEFI from a removable USB stick: the path a person takes with `dd`.
#[test]
fn disk_image_boots_on_uefi_from_a_usb_stick_and_keeps_its_cache() {
    assert!(
        Path::new(OVMF).exists(),
        "{OVMF} is missing: install Debian's ovmf (scripts/deps.sh)"
    );
    boots_twice("uefi", Some(OVMF), true);
}
