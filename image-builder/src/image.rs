//! Putting the firmware together: kernel, initramfs, iPXE script and a build record.

use crate::binaries::{self, FirmwareProgram};
use crate::debian::{self, UnpackedKernel};
use crate::initramfs::{self, Tree};
use crate::modules::{self, DepIndex};
use anyhow::{Context, Result};
use log::info;
use sha2::{Digest, Sha256};
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use support::size::human;

/// Where the firmware's programs come from.
#[derive(Debug, Clone)]
pub enum ProgramSource {
    /// Build them with cargo from this workspace.
    Workspace(PathBuf),
    /// Already built static binaries, one per entry of [`binaries::PROGRAMS`], in order.
    Prebuilt(Vec<PathBuf>),
}

#[derive(Debug, Clone)]
pub struct BuildOptions {
    pub out: PathBuf,
    /// Downloaded packages and unpacked kernels, kept between builds.
    pub cache_dir: PathBuf,
    /// The kernel package, usually the metapackage `linux-image-amd64`.
    pub kernel_package: String,
    /// Pins the kernel package's version; `None` takes apt's candidate.
    pub kernel_version: Option<String>,
    pub programs: ProgramSource,
    /// The repository URL built into the kernel command line.
    pub repo_url: Option<String>,
    /// More kernel command-line arguments.
    pub extra_cmdline: Vec<String>,
    /// More files for the initramfs: (file on the build machine, path in the initramfs).
    pub extra_files: Vec<(PathBuf, String)>,
    /// zstd level of the initramfs (default [`initramfs::ZSTD_LEVEL`]).
    pub zstd_level: i32,
    /// The display drivers carried, by group name ([`modules::GPUS`]).
    pub gpus: Vec<String>,
    /// Also write `disk.img`, the firmware on a disk that boots on BIOS and UEFI.
    pub disk_image: bool,
}

impl BuildOptions {
    /// Defaults a developer gets from the workspace: newest Debian kernel, programs
    /// built from this checkout, download cache under `~/.cache`.
    pub fn for_workspace(out: PathBuf) -> Result<BuildOptions> {
        let workspace = binaries::default_workspace()
            .context("the workspace this builder came from is gone; pass --init")?;
        Ok(BuildOptions {
            out,
            cache_dir: default_cache_dir(),
            kernel_package: "linux-image-amd64".into(),
            kernel_version: None,
            programs: ProgramSource::Workspace(workspace),
            repo_url: None,
            extra_cmdline: Vec::new(),
            extra_files: Vec::new(),
            zstd_level: initramfs::ZSTD_LEVEL,
            gpus: modules::DEFAULT_GPUS
                .iter()
                .map(|g| g.to_string())
                .collect(),
            disk_image: true,
        })
    }
}

/// `$COLLECTIVE_CACHE`, else `$XDG_CACHE_HOME/collective`, else `~/.cache/collective`.
pub fn default_cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("COLLECTIVE_CACHE") {
        return dir.into();
    }
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(dir).join("collective");
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
    PathBuf::from(home).join(".cache/collective")
}

/// What a build produced, for the report and for tests.
#[derive(Debug, Clone)]
pub struct BuildReport {
    pub kernel: UnpackedKernel,
    pub vmlinuz: PathBuf,
    pub initrd: PathBuf,
    pub ipxe: PathBuf,
    pub cmdline: String,
    pub vmlinuz_bytes: u64,
    pub initrd_bytes: u64,
    pub cpio_bytes: u64,
    pub initrd_sha256: String,
    pub modules: Vec<String>,
    pub programs: Vec<(String, u64)>,
    /// Each chosen display-driver group and the bytes of module files it adds (its
    /// modules and what only they depend on, uncompressed).
    pub gpus: Vec<(String, u64)>,
    /// `disk.img`, if it was asked for.
    pub disk: Option<crate::disk::DiskReport>,
}

impl BuildReport {
    /// The human summary `collective-image build` prints.
    pub fn summary(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "built the Collective terminal firmware in {}",
            self.vmlinuz
                .parent()
                .map(|p| p.display().to_string())
                .unwrap_or_default()
        );
        let _ = writeln!(
            s,
            "  kernel     {} {} ({} {})",
            self.kernel.package,
            self.kernel.version,
            self.kernel.requested_package,
            self.kernel.requested_version
        );
        let _ = writeln!(
            s,
            "  vmlinuz    {:>10}  {}",
            human(self.vmlinuz_bytes),
            self.vmlinuz.display()
        );
        let _ = writeln!(
            s,
            "  initrd.img {:>10}  {} (cpio {}, zstd)",
            human(self.initrd_bytes),
            self.initrd.display(),
            human(self.cpio_bytes),
        );
        let _ = writeln!(s, "  boot.ipxe             {}", self.ipxe.display());
        if let Some(d) = &self.disk {
            let _ = writeln!(
                s,
                "  disk.img   {:>10}  {} (GPT, BIOS and UEFI; boot partition {})",
                human(d.bytes),
                d.path.display(),
                human(d.esp_bytes)
            );
        }
        for (name, size) in &self.programs {
            let _ = writeln!(s, "  program    {:>10}  /{name}", human(*size));
        }
        let _ = writeln!(
            s,
            "  modules    {} ({})",
            self.modules.len(),
            self.modules.join(" ")
        );
        for (name, bytes) in &self.gpus {
            let _ = writeln!(s, "  display    {:>10}  --gpu {name}", human(*bytes));
        }
        let _ = writeln!(s, "  cmdline    {}", self.cmdline);
        let _ = write!(s, "  initrd sha256 {}", self.initrd_sha256);
        s
    }
}

/// The default kernel command line. Both the first VT and the serial port get a login
/// prompt; the last `console=` is where the kernel's own messages and `/dev/console` go.
/// `loglevel=3` keeps the kernel quiet so the login screen stays readable (and boot is
/// faster on slow serial lines); our own errors still reach the consoles.
pub fn default_cmdline(repo_url: Option<&str>, extra: &[String]) -> String {
    let mut args = vec![
        "console=tty1".to_string(),
        "console=ttyS0,115200n8".into(),
        "loglevel=3".into(),
    ];
    if let Some(url) = repo_url {
        args.push(format!("collective.repo={url}"));
    }
    args.extend(extra.iter().cloned());
    args.join(" ")
}

/// The iPXE script. Paths are relative, so iPXE fetches the kernel and initramfs from
/// wherever it fetched the script (TFTP or HTTP). `initrd=` is needed by EFI boots.
pub fn ipxe_script(kernel_release: &str, cmdline: &str) -> String {
    format!(
        "#!ipxe\n\
         # Collective terminal firmware (kernel {kernel_release}), written by collective-image.\n\
         # Serve this folder over TFTP or HTTP and point DHCP (or a chain) at this script.\n\
         echo Collective terminal: loading firmware\n\
         :retry\n\
         kernel vmlinuz initrd=initrd.img {cmdline} || goto failed\n\
         initrd initrd.img || goto failed\n\
         boot || goto failed\n\
         :failed\n\
         echo Collective terminal: could not load the firmware; retrying in 5 seconds\n\
         sleep 5\n\
         goto retry\n"
    )
}

/// Builds everything into `opts.out`.
pub fn build(opts: &BuildOptions) -> Result<BuildReport> {
    let kernel = debian::fetch_kernel(
        &opts.cache_dir,
        &opts.kernel_package,
        opts.kernel_version.as_deref(),
    )?;
    let program_paths = match &opts.programs {
        ProgramSource::Workspace(ws) => binaries::build_static(ws, binaries::PROGRAMS, &[])?,
        ProgramSource::Prebuilt(paths) => paths.clone(),
    };
    anyhow::ensure!(
        program_paths.len() == binaries::PROGRAMS.len(),
        "expected {} prebuilt programs, got {}",
        binaries::PROGRAMS.len(),
        program_paths.len()
    );
    let cmdline = default_cmdline(opts.repo_url.as_deref(), &opts.extra_cmdline);

    let gpu_modules = modules::gpu_modules(&opts.gpus)?;
    let (mut tree, module_names) = firmware_tree(
        &kernel,
        binaries::PROGRAMS,
        &program_paths,
        &cmdline,
        &gpu_modules,
    )?;
    let gpus = gpu_sizes(&kernel, &opts.gpus)?;
    for (src, dest) in &opts.extra_files {
        let data =
            fs::read(src).with_context(|| format!("reading {} (for /{dest})", src.display()))?;
        tree.file(dest, 0o755, data);
    }
    let cpio = tree.to_cpio()?;
    let initrd_bytes = initramfs::compress_level(&cpio, opts.zstd_level)?;

    fs::create_dir_all(&opts.out).with_context(|| format!("creating {}", opts.out.display()))?;
    let vmlinuz = opts.out.join("vmlinuz");
    let initrd = opts.out.join("initrd.img");
    let ipxe = opts.out.join("boot.ipxe");
    write_atomically(
        &vmlinuz,
        &fs::read(kernel.vmlinuz())
            .with_context(|| format!("reading {}", kernel.vmlinuz().display()))?,
    )?;
    write_atomically(&initrd, &initrd_bytes)?;
    write_atomically(&ipxe, ipxe_script(&kernel.release, &cmdline).as_bytes())?;
    write_atomically(&opts.out.join("cmdline"), cmdline.as_bytes())?;

    let mut report = BuildReport {
        vmlinuz_bytes: fs::metadata(&vmlinuz)?.len(),
        initrd_bytes: initrd_bytes.len() as u64,
        cpio_bytes: cpio.len() as u64,
        initrd_sha256: hex(&Sha256::digest(&initrd_bytes)),
        programs: binaries::PROGRAMS
            .iter()
            .zip(&program_paths)
            .map(|(p, path)| Ok((p.install_path.to_string(), fs::metadata(path)?.len())))
            .collect::<Result<_>>()?,
        kernel,
        vmlinuz,
        initrd,
        ipxe,
        cmdline,
        modules: module_names,
        gpus,
        disk: None,
    };
    if opts.disk_image {
        report.disk = Some(crate::disk::write_disk_image(
            &opts.out.join("disk.img"),
            &report.vmlinuz,
            &report.initrd,
            &report.cmdline,
            &initrd_bytes,
        )?);
    }
    write_atomically(&opts.out.join("BUILD-INFO"), build_info(&report).as_bytes())?;
    info!("firmware written to {}", opts.out.display());
    Ok(report)
}

/// The build record kept next to the images: what went in, pinned exactly.
fn build_info(r: &BuildReport) -> String {
    let disk = match &r.disk {
        Some(d) => format!(
            "disk_bytes={}\ndisk_boot_partition_bytes={}\ndisk_fs_uuid={}\ndisk_cmdline={}\n",
            d.bytes, d.esp_bytes, d.fs_uuid, d.cmdline
        ),
        None => String::new(),
    };
    format!(
        "kernel_package={}\nkernel_version={}\nkernel_release={}\nrequested_package={}\nrequested_version={}\n\
         vmlinuz_bytes={}\ninitrd_bytes={}\ninitrd_sha256={}\ncmdline={}\nmodules={}\n",
        r.kernel.package,
        r.kernel.version,
        r.kernel.release,
        r.kernel.requested_package,
        r.kernel.requested_version,
        r.vmlinuz_bytes,
        r.initrd_bytes,
        r.initrd_sha256,
        r.cmdline,
        r.modules.join(",")
    ) + &disk
}

/// The initramfs contents: programs, modules with their indexes, device nodes, and the
/// firmware's identity in `/etc/collective/firmware`.
pub fn firmware_tree(
    kernel: &UnpackedKernel,
    programs: &[FirmwareProgram],
    program_paths: &[PathBuf],
    cmdline: &str,
    extra_modules: &[&str],
) -> Result<(Tree, Vec<String>)> {
    let mut tree = Tree::new();
    for dir in [
        "dev",
        "proc",
        "sys",
        "run",
        "tmp",
        "etc/collective",
        "var/cache",
        "root",
    ] {
        tree.dir(dir);
    }
    // The kernel opens /dev/console for PID 1 before anyone can mount devtmpfs.
    tree.char_device("dev/console", 0o600, 5, 1);
    tree.char_device("dev/null", 0o666, 1, 3);
    // The kernel runs /sbin/modprobe for request_module(); init answers to that name.
    tree.symlink("sbin/modprobe", "/init");
    for (program, path) in programs.iter().zip(program_paths) {
        let data = fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        tree.file(program.install_path, 0o755, data);
    }

    let mut wanted = modules::wanted_names();
    wanted.extend_from_slice(extra_modules);
    let chosen = add_modules(&mut tree, kernel, &wanted)?;
    let release = &kernel.release;
    tree.file(
        "etc/collective/firmware",
        0o644,
        format!("kernel_package={}\nkernel_version={}\nkernel_release={release}\ndefault_cmdline={cmdline}\n", kernel.package, kernel.version)
            .into_bytes(),
    );
    let mut names: Vec<String> = chosen
        .iter()
        .map(|p| modules::module_name_of_path(p))
        .collect();
    names.sort();
    Ok((tree, names))
}

/// The module bytes each GPU group adds beyond the base set and the groups before it.
fn gpu_sizes(kernel: &UnpackedKernel, groups: &[String]) -> Result<Vec<(String, u64)>> {
    let modules_dir = kernel.modules_dir();
    let index = DepIndex::load(&modules_dir)?;
    let builtin = modules::builtin_names(&modules_dir)?;
    let mut have = index.closure(&modules::wanted_names(), &builtin)?;
    let mut sizes = Vec::new();
    for group in groups {
        let names = modules::gpu_modules(std::slice::from_ref(group))?;
        let mut bytes = 0;
        for rel in index.closure(&names, &builtin)? {
            if have.insert(rel.clone()) {
                bytes += fs::metadata(modules_dir.join(&rel))
                    .with_context(|| format!("module {rel}"))?
                    .len();
            }
        }
        sizes.push((group.clone(), bytes));
    }
    Ok(sizes)
}

/// Adds `wanted` modules of `kernel`, everything they depend on, and indexes
/// (`modules.dep`, `modules.alias`, ...) regenerated for exactly those, so init never
/// looks for a file that is not there. Returns the modules' relative paths.
pub fn add_modules(
    tree: &mut Tree,
    kernel: &UnpackedKernel,
    wanted: &[&str],
) -> Result<std::collections::BTreeSet<String>> {
    let modules_dir = kernel.modules_dir();
    let index = DepIndex::load(&modules_dir)?;
    let builtin = modules::builtin_names(&modules_dir)?;
    let chosen = index.closure(wanted, &builtin)?;
    let staged = stage_modules(kernel, &chosen)?;
    let release = &kernel.release;
    for rel in &chosen {
        let data =
            fs::read(modules_dir.join(rel)).with_context(|| format!("reading module {rel}"))?;
        tree.file(&format!("lib/modules/{release}/{rel}"), 0o644, data);
    }
    for name in [
        "modules.dep",
        "modules.alias",
        "modules.softdep",
        "modules.builtin",
    ] {
        let path = staged.path().join("lib/modules").join(release).join(name);
        if let Ok(data) = fs::read(&path) {
            tree.file(&format!("lib/modules/{release}/{name}"), 0o644, data);
        }
    }
    Ok(chosen)
}

/// A scratch copy of the chosen modules on which `depmod` writes the indexes.
fn stage_modules(
    kernel: &UnpackedKernel,
    chosen: &std::collections::BTreeSet<String>,
) -> Result<TempDir> {
    let stage = TempDir::new("collective-modules")?;
    let dst_root = stage.path().join("lib/modules").join(&kernel.release);
    let src_root = kernel.modules_dir();
    for rel in chosen {
        let dst = dst_root.join(rel);
        if let Some(parent) = dst.parent() {
            fs::create_dir_all(parent)?;
        }
        // A hard link would do, but the cache may be on another file system.
        fs::copy(src_root.join(rel), &dst).with_context(|| format!("staging module {rel}"))?;
    }
    for name in [
        "modules.builtin",
        "modules.builtin.modinfo",
        "modules.order",
    ] {
        let src = src_root.join(name);
        if src.exists() {
            fs::copy(&src, dst_root.join(name))?;
        }
    }
    debian::depmod(stage.path(), &kernel.release)?;
    Ok(stage)
}

/// Writes to a temporary name and renames, so a reader never sees half a file.
pub fn write_atomically(path: &Path, data: &[u8]) -> Result<()> {
    let tmp = path.with_extension("partial");
    fs::write(&tmp, data).with_context(|| format!("writing {}", tmp.display()))?;
    fs::rename(&tmp, path).with_context(|| format!("renaming into {}", path.display()))?;
    Ok(())
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A folder removed when dropped.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(prefix: &str) -> Result<TempDir> {
        use std::sync::atomic::{AtomicU32, Ordering};
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("{prefix}-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(TempDir(path))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// The boot benchmark's baseline: the same kernel with an initramfs holding only an
/// init that prints a marker and powers off.
pub fn marker_initramfs(marker_init: &Path, out: &Path) -> Result<u64> {
    let mut tree = Tree::new();
    tree.dir("dev");
    tree.dir("proc");
    tree.char_device("dev/console", 0o600, 5, 1);
    tree.file(
        "init",
        0o755,
        fs::read(marker_init).with_context(|| format!("reading {}", marker_init.display()))?,
    );
    let data = initramfs::compress(&tree.to_cpio()?)?;
    write_atomically(out, &data)?;
    Ok(data.len() as u64)
}
