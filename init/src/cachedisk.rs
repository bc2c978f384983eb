//! Finding, checking and (on first use) formatting the cache disk.
//!
//! `collective.cache=` names the disk by path, partition label or serial number, or
//! `auto` picks our own cache partition (see [`crate::cachepart`]), else the first disk
//! that already holds a cache, else the first empty one. A
//! disk that holds anything else is never formatted unless `collective.cache_force=1`
//! says so: wiping a stranger's data is worse than running from memory. Without a disk
//! the terminal runs from memory and says so.
//!
//! init opens the cache only to check it and report on it, then closes it: the session
//! that fills and serves it is the only one to keep it open.

use cachefs::{Cache, CreateOptions, Error as CacheError, FileStorage};
use log::{info, warn};
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How a disk is named on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CacheSpec {
    Path(PathBuf),
    Label(String),
    Serial(String),
    Auto,
}

impl CacheSpec {
    pub fn parse(text: &str) -> CacheSpec {
        if text == "auto" {
            CacheSpec::Auto
        } else if let Some(label) = text
            .strip_prefix("LABEL=")
            .or_else(|| text.strip_prefix("PARTLABEL="))
        {
            CacheSpec::Label(label.to_string())
        } else if let Some(serial) = text.strip_prefix("SERIAL=") {
            CacheSpec::Serial(serial.to_string())
        } else if text.starts_with('/') {
            CacheSpec::Path(PathBuf::from(text))
        } else {
            CacheSpec::Path(Path::new("/dev").join(text))
        }
    }
}

/// The result, for the login screen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheReport {
    pub device: Option<PathBuf>,
    pub line: String,
    /// Whether a problem a person must act on occurred.
    pub problem: Option<String>,
}

fn read_trimmed(path: &Path) -> Option<String> {
    fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

/// Block devices under `/sys/class/block` (disks and partitions), sorted.
fn block_devices(sys_class_block: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(sys_class_block)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.retain(|n| !n.starts_with("loop") && !n.starts_with("ram") && !n.starts_with("sr"));
    names.sort();
    names
}

/// The partition name of a block device (GPT PARTLABEL), from its uevent.
fn partition_label(sys_dev: &Path) -> Option<String> {
    let uevent = fs::read_to_string(sys_dev.join("uevent")).ok()?;
    uevent
        .lines()
        .find_map(|l| l.strip_prefix("PARTNAME="))
        .map(str::to_string)
}

fn serial_of(sys_dev: &Path) -> Option<String> {
    read_trimmed(&sys_dev.join("serial")).or_else(|| read_trimmed(&sys_dev.join("device/serial")))
}

/// Resolves a spec to a device node, looking in `sys_class_block`.
pub fn resolve(spec: &CacheSpec, sys_class_block: &Path) -> Option<PathBuf> {
    match spec {
        CacheSpec::Path(p) => Some(p.clone()),
        CacheSpec::Label(label) => block_devices(sys_class_block)
            .into_iter()
            .find(|n| partition_label(&sys_class_block.join(n)).as_deref() == Some(label.as_str()))
            .map(|n| Path::new("/dev").join(n)),
        CacheSpec::Serial(serial) => block_devices(sys_class_block)
            .into_iter()
            .find(|n| serial_of(&sys_class_block.join(n)).as_deref() == Some(serial.as_str()))
            .map(|n| Path::new("/dev").join(n)),
        CacheSpec::Auto => None,
    }
}

/// Whole disks that are not removable, for `auto`.
fn candidate_disks(sys_class_block: &Path) -> Vec<PathBuf> {
    block_devices(sys_class_block)
        .into_iter()
        .filter(|n| {
            let dir = sys_class_block.join(n);
            !dir.join("partition").exists()
                && read_trimmed(&dir.join("removable")).as_deref() != Some("1")
        })
        .map(|n| Path::new("/dev").join(n))
        .collect()
}

fn describe(cache: &Cache) -> String {
    let s = cache.stats();
    format!(
        "{} of {} used, {} chunks, {} pinned sets",
        support::size::human(s.used_bytes),
        support::size::human(s.arena_bytes),
        s.chunks,
        s.pins.len()
    )
}

/// The login screen's cache line for `device` as it is now (after a session filled it).
pub fn current_line(device: &Path) -> Option<String> {
    let storage = FileStorage::open(device).ok()?;
    let cache = Cache::open(Box::new(storage)).ok()?;
    Some(format!("{}: {}", device.display(), describe(&cache)))
}

/// Opens the cache on `device`, formatting it if it is empty (or if `force`).
pub fn open_or_format(device: &Path, force: bool) -> Result<(String, bool), String> {
    let storage = || FileStorage::open(device).map_err(|e| format!("{}: {e}", device.display()));
    match Cache::open(Box::new(storage()?)) {
        Ok(cache) => return Ok((describe(&cache), false)),
        Err(CacheError::NotCacheFs) => {}
        Err(e) => return Err(format!("{}: {e}", device.display())),
    }
    match Cache::create(Box::new(storage()?), CreateOptions { force }) {
        Ok(cache) => {
            info!("formatted the cache on {}", device.display());
            Ok((describe(&cache), true))
        }
        Err(CacheError::DeviceNotEmpty) => Err(format!(
            "{} holds data that is not a cache; not touching it (erase its first MiB, or add collective.cache_force=1 to format it)",
            device.display()
        )),
        Err(e) => Err(format!("{}: cannot format: {e}", device.display())),
    }
}

/// Finds and opens the cache the settings ask for; waits up to `wait` for the disk to
/// appear (USB disks enumerate late).
pub fn bring_up(setting: Option<&str>, force: bool, wait: Duration) -> CacheReport {
    bring_up_polling(setting, force, wait, &mut || {})
}

/// [`bring_up`], calling `poll` between tries: init loads the drivers that devices which
/// appeared meanwhile ask for (a USB stick's disk needs `sd_mod` only once it shows up).
pub fn bring_up_polling(
    setting: Option<&str>,
    force: bool,
    wait: Duration,
    poll: &mut dyn FnMut(),
) -> CacheReport {
    let Some(text) = setting else {
        return CacheReport {
            device: None,
            line: "none configured: running from memory".into(),
            problem: None,
        };
    };
    let spec = CacheSpec::parse(text);
    let sys = Path::new("/sys/class/block");
    let started = Instant::now();
    loop {
        let device = match &spec {
            CacheSpec::Auto => auto_pick(sys, force),
            other => resolve(other, sys).filter(|p| p.exists()),
        };
        if let Some(device) = device {
            grow_if_ours_and_new(&device, sys, force);
            return match open_or_format(&device, force) {
                Ok((line, formatted)) => {
                    let note = if formatted {
                        " (the disk was empty: formatted it now)"
                    } else {
                        ""
                    };
                    CacheReport {
                        line: format!("{}: {line}{note}", device.display()),
                        device: Some(device),
                        problem: None,
                    }
                }
                Err(e) => {
                    warn!("cache: {e}");
                    CacheReport {
                        device: None,
                        line: "not usable: running from memory".into(),
                        problem: Some(format!("cache: {e}")),
                    }
                }
            };
        }
        if started.elapsed() >= wait {
            let why = format!("no disk matches collective.cache={text}");
            warn!("cache: {why}");
            return CacheReport {
                device: None,
                line: format!("{why}: running from memory"),
                problem: Some(format!("cache: {why}")),
            };
        }
        std::thread::sleep(Duration::from_millis(100));
        poll();
    }
}

/// Before the first format of one of our cache partitions (however it was named), grows
/// it to the end of its disk.
fn grow_if_ours_and_new(device: &Path, sys: &Path, force: bool) {
    let Some(part) = crate::cachepart::find(sys)
        .into_iter()
        .find(|p| p.device == device)
    else {
        return;
    };
    if holds_cache(device) || !(force || is_empty(device)) {
        return;
    }
    if let Err(e) = crate::cachepart::grow(&part) {
        warn!(
            "cache: could not grow {} to the end of {}: {e}; using it as it is",
            part.device.display(),
            part.disk.display()
        );
    }
}

fn holds_cache(device: &Path) -> bool {
    FileStorage::open_read_only(device)
        .map(|s| Cache::open(Box::new(s)).is_ok())
        .unwrap_or(false)
}

/// `auto`: a `collective-cache` partition of ours (a disk written from `disk.img`), else a
/// disk that already holds a cache, else the first empty one.
fn auto_pick(sys: &Path, force: bool) -> Option<PathBuf> {
    for part in crate::cachepart::find(sys) {
        if holds_cache(&part.device) {
            return Some(part.device);
        }
        if force || is_empty(&part.device) {
            return Some(part.device);
        }
        warn!(
            "cache: {} holds data that is not a cache; not touching it",
            part.device.display()
        );
    }
    let disks = candidate_disks(sys);
    for disk in &disks {
        if let Ok(storage) = FileStorage::open_read_only(disk) {
            if Cache::open(Box::new(storage)).is_ok() {
                return Some(disk.clone());
            }
        }
    }
    disks.into_iter().find(|d| force || is_empty(d))
}

fn is_empty(device: &Path) -> bool {
    use std::io::Read;
    let mut head = vec![0u8; 64 * 1024];
    fs::File::open(device)
        .and_then(|mut f| f.read_exact(&mut head))
        .map(|_| head.iter().all(|&b| b == 0))
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse() {
        assert_eq!(
            CacheSpec::parse("/dev/vda"),
            CacheSpec::Path("/dev/vda".into())
        );
        assert_eq!(
            CacheSpec::parse("nvme0n1"),
            CacheSpec::Path("/dev/nvme0n1".into())
        );
        assert_eq!(
            CacheSpec::parse("LABEL=cache"),
            CacheSpec::Label("cache".into())
        );
        assert_eq!(
            CacheSpec::parse("SERIAL=CT1"),
            CacheSpec::Serial("CT1".into())
        );
        assert_eq!(CacheSpec::parse("auto"), CacheSpec::Auto);
    }

    #[test]
    fn labels_and_serials_resolve_through_sysfs() {
        let dir = std::env::temp_dir().join(format!("cachedisk-test-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("vda")).unwrap();
        fs::write(dir.join("vda/serial"), "CT-0001\n").unwrap();
        fs::create_dir_all(dir.join("sda1")).unwrap();
        fs::write(
            dir.join("sda1/uevent"),
            "MAJOR=8\nMINOR=1\nDEVNAME=sda1\nPARTNAME=collective-cache\n",
        )
        .unwrap();
        fs::write(dir.join("sda1/partition"), "1\n").unwrap();
        assert_eq!(
            resolve(&CacheSpec::Serial("CT-0001".into()), &dir),
            Some("/dev/vda".into())
        );
        assert_eq!(
            resolve(&CacheSpec::Label("collective-cache".into()), &dir),
            Some("/dev/sda1".into())
        );
        assert_eq!(resolve(&CacheSpec::Label("other".into()), &dir), None);
        assert_eq!(candidate_disks(&dir), vec![PathBuf::from("/dev/vda")]);
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn an_empty_file_is_formatted_once_and_a_foreign_one_refused() {
        let dir = std::env::temp_dir().join(format!("cachedisk-fmt-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let disk = dir.join("disk.img");
        fs::write(&disk, vec![0u8; 32 << 20]).unwrap();
        let (_, formatted) = open_or_format(&disk, false).unwrap();
        assert!(formatted);
        let (line, formatted) = open_or_format(&disk, false).unwrap();
        assert!(!formatted, "second open must not format again");
        assert!(line.contains("0 chunks"), "{line}");

        let foreign = dir.join("foreign.img");
        let mut data = vec![0u8; 32 << 20];
        data[..11].copy_from_slice(b"hello world");
        fs::write(&foreign, &data).unwrap();
        let err = open_or_format(&foreign, false).unwrap_err();
        assert!(err.contains("not a cache"), "{err}");
        assert_eq!(
            &fs::read(&foreign).unwrap()[..11],
            b"hello world",
            "nothing was written"
        );
        assert!(open_or_format(&foreign, true).unwrap().1, "force formats");
        let _ = fs::remove_dir_all(&dir);
    }
}
