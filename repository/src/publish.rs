//! Publishing a new version of an appliance.
//!
//! Order of operations, which is what makes a publish crash-safe and safe against a
//! concurrent `gc`:
//! 1. check every input (files exist, sizes, VM shape) before writing anything;
//! 2. cut each image into chunks; store each new chunk (temp file, fsync, rename) and
//!    refresh the mtime of each chunk that already exists;
//! 3. refresh every referenced chunk's mtime once more and check it is still there, then
//!    fsync the chunk directories: data is durable before anything refers to it;
//! 4. sign the manifest and create `manifests/<name>/<version>.json` with a create-only
//!    link, so two concurrent publishes of one appliance get different versions.
//!
//! A crash or a full disk before step 4 leaves only unreferenced chunks (reused by the next
//! publish, or removed by `gc`) and no visible version.

use std::collections::HashSet;
use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::sync_channel;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use appliance::boot_trace::{self, TraceBlob};
use appliance::chunking::{validate_chunk_size, Chunker};
use appliance::manifest::MANIFEST_FORMAT;
use appliance::{
    ChunkId, ChunkList, Disk, DiskRole, Manifest, NetworkAttachment, SecretKey, SignedManifest,
};

use crate::error::{Error, Result};
use crate::fsutil;
use crate::store::{Repo, Stored};

/// Where a disk's content comes from.
#[derive(Clone, Debug)]
pub enum DiskSource {
    /// A raw image file.
    Image(PathBuf),
    /// An all-zero disk of this many bytes (typical for a fresh user disk).
    Empty(u64),
}

/// One `--disk ROLE=IMG|SIZE`.
#[derive(Clone, Debug)]
pub struct DiskSpec {
    /// System or user.
    pub role: DiskRole,
    /// Content.
    pub source: DiskSource,
}

impl std::str::FromStr for DiskSpec {
    type Err = Error;
    /// `system=IMG`, `user=SIZE` (e.g. `1G`, `512M`) or `user=IMG`.
    fn from_str(s: &str) -> Result<DiskSpec> {
        let (role, rest) = s.split_once('=').ok_or_else(|| {
            Error::Usage(format!(
                "--disk {s:?}: write ROLE=IMAGE or ROLE=SIZE, e.g. system=root.img or user=1G"
            ))
        })?;
        let role = match role {
            "system" => DiskRole::System,
            "user" => DiskRole::User,
            other => {
                return Err(Error::Usage(format!(
                    "--disk {s:?}: role {other:?} must be system or user"
                )))
            }
        };
        let source = match support::size::parse(rest) {
            Ok(size) if !Path::new(rest).exists() => DiskSource::Empty(size),
            _ => DiskSource::Image(PathBuf::from(rest)),
        };
        Ok(DiskSpec { role, source })
    }
}

/// Everything `publish` needs.
#[derive(Clone, Debug)]
pub struct PublishRequest {
    /// Appliance name.
    pub name: String,
    /// Kernel image.
    pub kernel: PathBuf,
    /// Initrd, if any.
    pub initrd: Option<PathBuf>,
    /// Kernel command line.
    pub cmdline: String,
    /// Disks in guest order.
    pub disks: Vec<DiskSpec>,
    /// Guest memory, MiB.
    pub memory_mib: u64,
    /// vCPUs.
    pub vcpus: u32,
    /// Networks joined.
    pub networks: Vec<NetworkAttachment>,
    /// Chunk size for every image of this version.
    pub chunk_size: u32,
    /// A boot trace: lines `BLOB OFFSET` (BLOB = kernel, initrd or a disk name), in the
    /// order first read. Without it the profile is the kernel's and initrd's chunks.
    pub boot_trace: Option<PathBuf>,
    /// Give the appliance a screen, keyboard and pointer (`Manifest::display`).
    pub display: bool,
}

/// What a publish did.
#[derive(Clone, Debug, Default)]
pub struct PublishStats {
    /// The version created.
    pub version: u64,
    /// Bytes of all images read.
    pub image_bytes: u64,
    /// Bytes in all-zero chunks (not stored).
    pub zero_bytes: u64,
    /// Chunks stored by this publish.
    pub new_chunks: u64,
    /// Their plaintext bytes.
    pub new_bytes: u64,
    /// Their stored (lz4) bytes.
    pub new_stored_bytes: u64,
    /// Distinct non-zero chunks that were stored already.
    pub existing_chunks: u64,
    /// Their plaintext bytes.
    pub existing_bytes: u64,
    /// Bytes of non-zero chunks repeated within this version (stored once).
    pub repeated_bytes: u64,
    /// Wall time.
    pub elapsed: Duration,
}

impl std::fmt::Display for PublishStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mib = |b: u64| b as f64 / (1 << 20) as f64;
        write!(
            f,
            "version {}: {:.1} MiB read in {:.2} s; new: {} chunks, {:.1} MiB ({:.1} MiB stored after lz4); already stored: {} chunks, {:.1} MiB; zero: {:.1} MiB; repeated within this version: {:.1} MiB",
            self.version,
            mib(self.image_bytes),
            self.elapsed.as_secs_f64(),
            self.new_chunks,
            mib(self.new_bytes),
            mib(self.new_stored_bytes),
            self.existing_chunks,
            mib(self.existing_bytes),
            mib(self.zero_bytes),
            mib(self.repeated_bytes)
        )
    }
}

#[derive(Default)]
struct Counters {
    new_chunks: AtomicU64,
    new_bytes: AtomicU64,
    new_stored: AtomicU64,
    existing_chunks: AtomicU64,
    existing_bytes: AtomicU64,
}

/// Number of threads encoding and writing chunks while the caller's thread reads and hashes.
const WRITERS: usize = 3;

/// Publishes a new version of an appliance signed with `key`.
pub fn publish(repo: &Repo, req: &PublishRequest, key: &SecretKey) -> Result<PublishStats> {
    let start = Instant::now();
    check_inputs(req)?;
    let mut stats = PublishStats::default();
    let counters = Counters::default();
    let mut seen: HashSet<ChunkId> = HashSet::new();

    let kernel = store_file(
        repo,
        "kernel",
        &req.kernel,
        req.chunk_size,
        &mut seen,
        &mut stats,
        &counters,
    )?;
    let initrd = match &req.initrd {
        Some(p) => Some(store_file(
            repo,
            "initrd",
            p,
            req.chunk_size,
            &mut seen,
            &mut stats,
            &counters,
        )?),
        None => None,
    };
    let mut disks = Vec::new();
    let (mut n_system, mut n_user) = (0, 0);
    for spec in &req.disks {
        let name = match spec.role {
            DiskRole::System => {
                n_system += 1;
                if n_system == 1 {
                    "system".to_string()
                } else {
                    format!("system{n_system}")
                }
            }
            DiskRole::User => {
                n_user += 1;
                if n_user == 1 {
                    "user".to_string()
                } else {
                    format!("user{n_user}")
                }
            }
        };
        let image = match &spec.source {
            DiskSource::Image(path) => store_file(
                repo,
                "disk image",
                path,
                req.chunk_size,
                &mut seen,
                &mut stats,
                &counters,
            )?,
            DiskSource::Empty(size) => {
                stats.image_bytes += size;
                stats.zero_bytes += size;
                ChunkList::zeros(*size, req.chunk_size)?
            }
        };
        disks.push(Disk {
            name,
            role: spec.role,
            image,
        });
    }
    stats.new_chunks = counters.new_chunks.load(Ordering::Relaxed);
    stats.new_bytes = counters.new_bytes.load(Ordering::Relaxed);
    stats.new_stored_bytes = counters.new_stored.load(Ordering::Relaxed);
    stats.existing_chunks = counters.existing_chunks.load(Ordering::Relaxed);
    stats.existing_bytes = counters.existing_bytes.load(Ordering::Relaxed);

    let boot_profile = Some(match &req.boot_trace {
        Some(path) => profile_from_trace(path, &kernel, initrd.as_ref(), &disks)?,
        None => kernel
            .distinct_chunks()
            .into_iter()
            .chain(initrd.iter().flat_map(|i| i.distinct_chunks()))
            .collect::<Vec<_>>(),
    });

    // Step 3: everything referenced is (still) there and durable.
    for id in &seen {
        if !repo.touch_chunk(id)? {
            return Err(Error::Usage(format!("chunk {id} disappeared while publishing (a `gc` with a very short --grace ran at the same time?); run the publish again")));
        }
    }
    repo.sync_chunk_dirs()?;

    // Step 4: claim the next version number with a create-only link.
    let created_unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    loop {
        let version = repo.latest(&req.name)?.unwrap_or(0) + 1;
        let manifest = Manifest {
            format: MANIFEST_FORMAT,
            name: req.name.clone(),
            version,
            created_unix,
            vcpus: req.vcpus,
            memory_mib: req.memory_mib,
            kernel: kernel.clone(),
            initrd: initrd.clone(),
            cmdline: req.cmdline.clone(),
            disks: disks.clone(),
            networks: req.networks.clone(),
            boot_profile: boot_profile.clone(),
            display: req.display,
        };
        let bytes = SignedManifest::sign(manifest, key)?.to_bytes()?;
        let path = repo.manifest_file(&req.name, version);
        if let Some(dir) = path.parent() {
            fsutil::create_dir_all(dir)?;
        }
        if fsutil::write_new(&repo.tmp_dir(), &path, &bytes)? {
            stats.version = version;
            break;
        }
        log::info!(
            "version {version} of {} was taken by a concurrent publish; trying the next",
            req.name
        );
    }
    stats.elapsed = start.elapsed();
    log::info!("published {} {}", req.name, stats);
    Ok(stats)
}

fn check_inputs(req: &PublishRequest) -> Result<()> {
    appliance::names::validate_name("appliance name", &req.name)?;
    validate_chunk_size(req.chunk_size)?;
    if req.vcpus == 0 || req.vcpus > 256 {
        return Err(Error::Usage(format!(
            "--vcpus {} must be 1 to 256",
            req.vcpus
        )));
    }
    if req.memory_mib < 16 {
        return Err(Error::Usage(format!(
            "--memory {} MiB is too small: give at least 16",
            req.memory_mib
        )));
    }
    let mut files: Vec<(&'static str, &Path)> = vec![("kernel", &req.kernel)];
    if let Some(i) = &req.initrd {
        files.push(("initrd", i));
    }
    for d in &req.disks {
        if let DiskSource::Image(p) = &d.source {
            files.push(("disk image", p));
        }
    }
    for (what, path) in files {
        match std::fs::metadata(path) {
            Ok(m) if m.is_file() => {
                if m.len() == 0 {
                    return Err(Error::Input {
                        what,
                        path: path.into(),
                        why: "is empty".into(),
                    });
                }
            }
            Ok(_) => {
                return Err(Error::Input {
                    what,
                    path: path.into(),
                    why: "is not a regular file".into(),
                })
            }
            Err(e) => {
                return Err(Error::Input {
                    what,
                    path: path.into(),
                    why: e.to_string(),
                })
            }
        }
        File::open(path).map_err(|e| Error::Input {
            what,
            path: path.into(),
            why: e.to_string(),
        })?;
    }
    if !req.disks.iter().any(|d| d.role == DiskRole::System) {
        return Err(Error::Usage("give at least one --disk system=IMAGE".into()));
    }
    Ok(())
}

/// Chunks one file, storing new chunks on writer threads while this thread reads and hashes.
fn store_file(
    repo: &Repo,
    what: &'static str,
    path: &Path,
    chunk_size: u32,
    seen: &mut HashSet<ChunkId>,
    stats: &mut PublishStats,
    counters: &Counters,
) -> Result<ChunkList> {
    let file = File::open(path).map_err(|e| Error::Input {
        what,
        path: path.into(),
        why: e.to_string(),
    })?;
    let mut chunker = Chunker::new(BufReader::with_capacity(1 << 20, file), chunk_size)?;
    let failure: Mutex<Option<Error>> = Mutex::new(None);
    let mut chunks = Vec::new();
    let (tx, rx) = sync_channel::<(ChunkId, Vec<u8>)>(WRITERS * 4);
    let rx = Mutex::new(rx);
    std::thread::scope(|s| -> Result<()> {
        for _ in 0..WRITERS {
            s.spawn(|| loop {
                let next = rx.lock().map(|r| r.recv());
                let Ok(Ok((id, data))) = next else { break };
                match repo.put_chunk(&id, &data) {
                    Ok(Stored::New(n)) => {
                        counters.new_chunks.fetch_add(1, Ordering::Relaxed);
                        counters
                            .new_bytes
                            .fetch_add(data.len() as u64, Ordering::Relaxed);
                        counters.new_stored.fetch_add(n, Ordering::Relaxed);
                    }
                    Ok(Stored::Existing) => {
                        counters.existing_chunks.fetch_add(1, Ordering::Relaxed);
                        counters
                            .existing_bytes
                            .fetch_add(data.len() as u64, Ordering::Relaxed);
                    }
                    Err(e) => {
                        if let Ok(mut f) = failure.lock() {
                            f.get_or_insert(e);
                        }
                        break;
                    }
                }
            });
        }
        let result = (|| {
            while let Some(cut) = chunker.next_chunk().map_err(|e| Error::Input {
                what,
                path: path.into(),
                why: e.to_string(),
            })? {
                chunks.push(cut.id);
                match cut.id {
                    None => stats.zero_bytes += cut.data.len() as u64,
                    Some(id) if !seen.insert(id) => stats.repeated_bytes += cut.data.len() as u64,
                    Some(id) => {
                        if failure.lock().map(|f| f.is_some()).unwrap_or(true)
                            || tx.send((id, cut.data)).is_err()
                        {
                            break;
                        }
                    }
                }
            }
            Ok(())
        })();
        drop(tx);
        result
    })?;
    if let Some(e) = failure.into_inner().ok().flatten() {
        return Err(e);
    }
    stats.image_bytes += chunker.bytes_read();
    Ok(ChunkList {
        size: chunker.bytes_read(),
        chunk_size,
        chunks,
    })
}

/// Turns a boot trace (see [`appliance::boot_trace`]) into an ordered, de-duplicated
/// chunk list. Disks are named by guest device (`vda` is the first) or by their name.
fn profile_from_trace(
    path: &Path,
    kernel: &ChunkList,
    initrd: Option<&ChunkList>,
    disks: &[Disk],
) -> Result<Vec<ChunkId>> {
    let bad = |why: String| Error::Input {
        what: "boot trace",
        path: path.into(),
        why,
    };
    let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
    let reads = boot_trace::parse(&text).map_err(|e| bad(e.to_string()))?;
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for read in reads {
        let blob = match &read.blob {
            TraceBlob::Kernel => Some(kernel),
            TraceBlob::Initrd => initrd,
            // A disk literally named like a device wins over the device of that name.
            TraceBlob::Disk(i) => disks
                .iter()
                .find(|d| d.name == boot_trace::device_name(*i))
                .or_else(|| disks.get(*i))
                .map(|d| &d.image),
            TraceBlob::Named(name) => disks.iter().find(|d| &d.name == name).map(|d| &d.image),
        }
        .ok_or_else(|| {
            bad(format!(
                "line {}: no blob named {:?}",
                read.line,
                read.blob.to_string()
            ))
        })?;
        if read.offset >= blob.size {
            return Err(bad(format!(
                "line {}: offset {} is beyond the end of {}",
                read.line, read.offset, read.blob
            )));
        }
        if let Some(id) = blob.chunks[blob.chunk_index(read.offset) as usize] {
            if seen.insert(id) {
                out.push(id);
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_specs() {
        assert!(
            matches!("user=1G".parse::<DiskSpec>().unwrap().source, DiskSource::Empty(s) if s == 1 << 30)
        );
        assert!(matches!(
            "system=/x/root.img".parse::<DiskSpec>().unwrap().source,
            DiskSource::Image(_)
        ));
        assert!("swap=1G".parse::<DiskSpec>().is_err());
        assert!("system".parse::<DiskSpec>().is_err());
    }
}
