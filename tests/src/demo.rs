//! The demo world the end-to-end tests and `make demo` share: a repository with two
//! appliances on one appliance network, a user, `collective-repo serve` on loopback, and
//! a firmware that trusts the repository's publisher key and boots over PXE.
//!
//! The appliances are small but real: Debian's cloud kernel, an initramfs that loads the
//! virtio drivers and switches to the system disk, and a system disk (ext4) with
//! busybox. `desk` gives a shell and keeps the user's files on its user disk; `web` serves
//! a page on the `office` network that `desk` can fetch.

use anyhow::{bail, Context, Result};
use image_builder::initramfs::{self, Tree};
use image_builder::{binaries, debian, image};
use std::fs::{self, File};
use std::io::{BufRead, BufReader, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;

use crate::firmware::{build_variant, workspace, Firmware};

/// The demo user.
pub const USER: &str = "alice";
pub const PASSWORD: &str = "walk-up-and-work";
/// The appliance network both appliances join.
pub const NETWORK: &str = "office";
/// What the desk appliance prints when its shell is ready, and its prompt.
pub const DESK_READY: &str = "desk appliance ready";
pub const DESK_PROMPT: &str = "desk:";
/// The web appliance's page.
pub const WEB_PAGE: &str = "Hello from the web appliance";

/// The appliance command line: the VMM's defaults, quiet.
const APPLIANCE_CMDLINE: &str = "console=ttyS0 reboot=a panic=-1 i8042.noaux i8042.nomux i8042.nopnp i8042.dumbkbd 8250.nr_uarts=1 cryptomgr.notests swiotlb=noforce tsc=reliable pci=off quiet";

/// Tools built once per run: the repository command, the publisher key, the appliance
/// kernel, initramfs and busybox.
pub struct DemoTools {
    pub repo_bin: PathBuf,
    pub secret_key: PathBuf,
    pub public_key: PathBuf,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub busybox: PathBuf,
    pub dir: PathBuf,
    /// Debian's generic kernel (the cloud kernel has no DRM) for appliances with a display.
    pub display_kernel: PathBuf,
    /// Its initramfs: the virtio, graphics and input drivers.
    pub display_initrd: PathBuf,
    /// The display test appliance's program (static).
    pub display_probe: PathBuf,
}

/// Builds (or reuses) the demo tools in `target/system-tests/demo-tools`.
pub fn tools() -> Result<&'static DemoTools> {
    static TOOLS: OnceLock<DemoTools> = OnceLock::new();
    if let Some(t) = TOOLS.get() {
        return Ok(t);
    }
    let t = build_tools()?;
    Ok(TOOLS.get_or_init(|| t))
}

fn build_tools() -> Result<DemoTools> {
    let ws = workspace();
    let dir = ws.join("target/system-tests/demo-tools");
    fs::create_dir_all(&dir)?;
    let lock = File::create(dir.join("build.lock"))?;
    // SAFETY: flock on an fd we own; released when `lock` is dropped.
    if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } != 0 {
        bail!("cannot lock {}", dir.display());
    }
    let repo_bin = binaries::build_static(&ws, &[], &[("repository", "collective-repo")])?
        .pop()
        .context("no collective-repo binary")?;
    let secret_key = dir.join("publisher.key");
    let public_key = dir.join("publisher.pub");
    if !secret_key.exists() || !public_key.exists() {
        run(Command::new(&repo_bin)
            .arg("keygen")
            .arg("--out")
            .arg(dir.join("publisher")))?;
    }
    let cache = image::default_cache_dir();
    let kernel = debian::fetch_kernel(&cache, "linux-image-cloud-amd64", None)?;
    let busybox = debian::fetch_package(&cache, "busybox-static")?.join("bin/busybox");
    anyhow::ensure!(busybox.exists(), "busybox-static has no bin/busybox");

    let initrd = dir.join("appliance-initrd.img");
    let mut tree = Tree::new();
    for d in ["bin", "proc", "sys", "dev", "newroot"] {
        tree.dir(d);
    }
    tree.char_device("dev/console", 0o600, 5, 1);
    tree.file("bin/busybox", 0o755, fs::read(&busybox)?);
    tree.file(
        "init",
        0o755,
        INITRD_INIT
            .replace(MODULES, "virtio_mmio virtio_blk virtio_net virtio_rng ext4")
            .into_bytes(),
    );
    image::add_modules(
        &mut tree,
        &kernel,
        &[
            "virtio_mmio",
            "virtio_blk",
            "virtio_net",
            "virtio_rng",
            "ext4",
        ],
    )?;
    fs::write(&initrd, initramfs::compress(&tree.to_cpio()?)?)?;

    let generic = debian::fetch_kernel(&cache, "linux-image-amd64", None)?;
    let display_initrd = dir.join("display-initrd.img");
    let display_modules = [
        "virtio_mmio",
        "virtio_blk",
        "virtio_net",
        "virtio_rng",
        "ext4",
        // ext4's checksums: a softdep, which modules.dep does not list.
        "crc32c_generic",
        "virtio_gpu",
        "virtio_input",
        "evdev",
    ];
    let mut tree = Tree::new();
    for d in ["bin", "proc", "sys", "dev", "newroot"] {
        tree.dir(d);
    }
    tree.char_device("dev/console", 0o600, 5, 1);
    tree.file("bin/busybox", 0o755, fs::read(&busybox)?);
    tree.file(
        "init",
        0o755,
        INITRD_INIT
            .replace(MODULES, &display_modules.join(" "))
            .into_bytes(),
    );
    image::add_modules(&mut tree, &generic, &display_modules)?;
    fs::write(&display_initrd, initramfs::compress(&tree.to_cpio()?)?)?;
    let display_probe = binaries::build_static(&ws, &[], &[("collective-init", "display-probe")])?
        .pop()
        .context("no display-probe binary")?;
    Ok(DemoTools {
        display_kernel: generic.vmlinuz(),
        display_initrd,
        display_probe,
        repo_bin,
        secret_key,
        public_key,
        kernel: kernel.vmlinuz(),
        initrd,
        busybox,
        dir,
    })
}

/// Where [`INITRD_INIT`] lists the modules it loads.
const MODULES: &str = "@MODULES@";

/// The appliances' initramfs: drivers, then the system disk becomes the root.
const INITRD_INIT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for m in @MODULES@; do modprobe $m 2>/dev/null; done
n=0
while [ ! -b /dev/vda ] && [ $n -lt 200 ]; do sleep 0.05; n=$((n+1)); done
if ! mount -t ext4 -o ro /dev/vda /newroot; then
    echo "appliance: cannot mount the system disk /dev/vda"
    poweroff -f
fi
mount --move /dev /newroot/dev
umount /proc /sys
exec switch_root /newroot /sbin/init
"#;

const DESK_INIT: &str = r#"#!/bin/sh
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /run
hostname desk
ip link set lo up
ip link set eth0 up && ip addr add 10.0.0.2/24 dev eth0
if ! mount -t ext4 /dev/vdb /home 2>/dev/null; then
    echo "desk: preparing your user disk"
    mke2fs -q -L home /dev/vdb >/dev/null 2>&1 && mount -t ext4 /dev/vdb /home
fi
echo "desk appliance ready (version $(cat /etc/appliance-version), $(cut -d' ' -f1 /proc/uptime) s after its kernel started)"
cd /home
setsid cttyhack sh -l
cd /
sync
umount /home
echo "desk: powering off"
poweroff -f
"#;

const WEB_INIT: &str = r#"#!/bin/sh
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t tmpfs tmpfs /tmp
hostname web
ip link set lo up
ip link set eth0 up && ip addr add 10.0.0.1/24 dev eth0
httpd -p 80 -h /www
echo "web appliance ready (version $(cat /etc/appliance-version)), serving http://10.0.0.1/"
setsid cttyhack sh -l
poweroff -f
"#;

/// The display test appliance: draws the test pattern (seed from the version file's
/// neighbour `/etc/pattern-seed`) and prints the input events it gets.
const DISPLAY_INIT: &str = r#"#!/bin/sh
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t tmpfs tmpfs /tmp
hostname $(cat /etc/appliance-name)
ip link set lo up
if ip link set eth0 up 2>/dev/null; then
    udhcpc -q -n -t 10 -i eth0 -s /etc/udhcpc.script >/dev/null 2>&1 &
fi
echo "$(cat /etc/appliance-name) appliance ready (version $(cat /etc/appliance-version))"
/bin/display-probe $(cat /etc/pattern-seed) $(cat /etc/report-to 2>/dev/null || echo -) $(cat /etc/fetch-url 2>/dev/null || echo -) $(cat /etc/mark-keys 2>/dev/null)
poweroff -f
"#;

/// A display test appliance: draws `collective_init::test_pattern` with `seed` on its
/// screen and prints every input event it gets (`DISPLAY-PROBE input TYPE CODE VALUE`).
#[derive(Clone, Debug, Default)]
pub struct DisplayAppliance {
    pub name: String,
    pub seed: u32,
    /// Appliance networks joined (`uplink` for the terminal's own network).
    pub networks: Vec<String>,
    /// `HOST:PORT/PATH`, fetched over HTTP once the appliance has an address; the probe
    /// reports `UPLINK-FETCH <first line of the body>`.
    pub fetch_url: Option<String>,
    /// `HOST:PORT`: every probe line also goes there by UDP (over `uplink`).
    pub report_to: Option<String>,
    /// Repaint the top-left corner at every key press (a latency benchmark's target).
    pub mark_keys: bool,
}

/// busybox udhcpc's hook: configures the lease it got.
const UDHCPC_SCRIPT: &str = r#"#!/bin/sh
case "$1" in
bound|renew)
    ifconfig $interface $ip netmask ${subnet:-255.255.255.0}
    [ -n "$router" ] && route add default gw $router dev $interface
    ;;
esac
"#;

/// A system disk's directory: busybox with a link per applet, an init, a version file.
fn system_tree(tools: &DemoTools, dir: &Path, name: &str, init: &str, version: u32) -> Result<()> {
    let _ = fs::remove_dir_all(dir);
    for d in [
        "bin", "sbin", "etc", "proc", "sys", "dev", "tmp", "run", "home", "www",
    ] {
        fs::create_dir_all(dir.join(d))?;
    }
    fs::copy(&tools.busybox, dir.join("bin/busybox"))?;
    let list = Command::new(&tools.busybox).arg("--list").output()?;
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        if applet != "busybox" && !applet.is_empty() {
            let _ = std::os::unix::fs::symlink("busybox", dir.join("bin").join(applet));
        }
    }
    write_exec(&dir.join("sbin/init"), init)?;
    fs::write(dir.join("etc/appliance-version"), format!("{version}\n"))?;
    fs::write(
        dir.join("etc/profile"),
        format!("export PATH=/bin\nexport PS1='{name}:$PWD# '\n"),
    )?;
    fs::write(
        dir.join("www/index.html"),
        format!("{WEB_PAGE} (version {version})\n"),
    )?;
    Ok(())
}

/// The chunk size the demo publishes with (`collective-repo publish`'s default).
const CHUNK: u64 = 64 << 10;

/// A boot profile for an appliance with ballast: kernel, initrd, then every chunk of the
/// system disk that holds anything but `/ballast.bin`, in disk order. A stand-in for a
/// trace of a real boot (recording one needs the VMM to log first reads, not written
/// yet): the demo's system disk holds nothing else its boot could skip.
fn write_boot_profile(path: &Path, kernel: &Path, initrd: &Path, system: &Path) -> Result<()> {
    let mut lines = String::new();
    for (blob, file) in [("kernel", kernel), ("initrd", initrd)] {
        for off in (0..fs::metadata(file)?.len()).step_by(CHUNK as usize) {
            lines.push_str(&format!("{blob} {off}\n"));
        }
    }
    let out = run(Command::new("debugfs")
        .args(["-R", "blocks /ballast.bin"])
        .arg(system))?;
    let ballast: std::collections::HashSet<u64> = out
        .split_whitespace()
        .filter_map(|b| b.parse().ok())
        .collect();
    anyhow::ensure!(
        !ballast.is_empty(),
        "debugfs found no blocks of /ballast.bin"
    );
    let blocks_per_chunk = CHUNK / 4096;
    for chunk in 0..fs::metadata(system)?.len().div_ceil(CHUNK) {
        let first = chunk * blocks_per_chunk;
        if (first..first + blocks_per_chunk).any(|b| !ballast.contains(&b)) {
            lines.push_str(&format!("system {}\n", chunk * CHUNK));
        }
    }
    fs::write(path, lines)?;
    Ok(())
}

/// Deterministic incompressible bytes (xorshift), so every build makes the same image.
fn write_ballast(path: &Path, bytes: u64) -> Result<()> {
    let mut out = std::io::BufWriter::new(File::create(path)?);
    let mut x: u64 = 0x9e3779b97f4a7c15;
    for _ in 0..bytes / 8 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.write_all(&x.to_le_bytes())?;
    }
    out.flush()?;
    Ok(())
}

fn write_exec(path: &Path, text: &str) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::write(path, text)?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o755))?;
    Ok(())
}

fn run(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A demo repository in a folder.
pub struct DemoRepo {
    pub dir: PathBuf,
    work: PathBuf,
    tools: &'static DemoTools,
    /// MiB of data on desk's system disk that its boot never reads (applications a
    /// person may start later): what the fill brings in behind the running appliance.
    ballast_mib: u64,
}

/// `OUT/boot.trace` (written by `collective-boot-trace OUT`) if it was recorded from the
/// current `system.img`; a trace older than the image describes another layout.
pub fn boot_trace_for(out: &Path) -> Option<PathBuf> {
    let trace = out.join("boot.trace");
    let modified = |p: &Path| fs::metadata(p).and_then(|m| m.modified()).ok();
    match (modified(&trace), modified(&out.join("system.img"))) {
        (Some(t), Some(img)) if t >= img => Some(trace),
        (Some(_), _) => {
            eprintln!(
                "demo: {} is older than the system image: publishing without it \
                 (record it again with collective-boot-trace {})",
                trace.display(),
                out.display()
            );
            None
        }
        _ => None,
    }
}

impl DemoRepo {
    /// Creates the repository with `desk` v1 and `web` v1, and the demo user.
    pub fn create(work: &Path) -> Result<DemoRepo> {
        Self::create_with_ballast(work, 0)
    }

    /// [`DemoRepo::create`] with `ballast_mib` MiB of incompressible data on desk's system
    /// disk that its boot does not read.
    pub fn create_with_ballast(work: &Path, ballast_mib: u64) -> Result<DemoRepo> {
        let tools = tools()?;
        fs::create_dir_all(work)?;
        let dir = work.join("repo");
        let _ = fs::remove_dir_all(&dir);
        run(Command::new(&tools.repo_bin).arg("init").arg(&dir))?;
        let repo = DemoRepo {
            dir,
            work: work.to_path_buf(),
            tools,
            ballast_mib,
        };
        repo.publish("desk", DESK_INIT, 1, true)?;
        repo.publish("web", WEB_INIT, 1, false)?;
        let mut add = Command::new(&tools.repo_bin)
            .args(["user", "add", USER, "--repo"])
            .arg(&repo.dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        if let Some(mut stdin) = add.stdin.take() {
            writeln!(stdin, "{PASSWORD}")?;
        }
        let out = add.wait_with_output()?;
        anyhow::ensure!(
            out.status.success(),
            "user add: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        run(Command::new(&tools.repo_bin)
            .args(["set", "assign", USER, "desk", "web", "--repo"])
            .arg(&repo.dir))?;
        Ok(repo)
    }

    fn image_path(&self, name: &str, version: u32) -> PathBuf {
        self.work.join(format!("{name}-v{version}.img"))
    }

    /// Publishes `name` at `version`. Version 1 is made from a directory; later versions
    /// update the previous image in place (unchanged files keep their blocks, so only
    /// the changed chunks are new), as docs/repository.md recommends.
    fn publish(&self, name: &str, init: &str, version: u32, user_disk: bool) -> Result<String> {
        let img = self.image_path(name, version);
        let tree = self.work.join(format!("{name}-v{version}-root"));
        system_tree(self.tools, &tree, name, init, version)?;
        let ballast = if name == "desk" { self.ballast_mib } else { 0 };
        if ballast > 0 {
            write_ballast(&tree.join("ballast.bin"), ballast << 20)?;
        }
        if version == 1 {
            let _ = fs::remove_file(&img);
            run(Command::new(&self.tools.repo_bin)
                .args(["image", "create", "--size"])
                .arg(format!("{}M", 24 + ballast + ballast / 8))
                .arg("--out")
                .arg(&img)
                .arg(&tree))?;
        } else {
            fs::copy(self.image_path(name, version - 1), &img)?;
            for file in ["etc/appliance-version", "www/index.html"] {
                run(Command::new(&self.tools.repo_bin)
                    .args(["image", "update"])
                    .arg(&img)
                    .arg("--add")
                    .arg(format!("{}=/{file}", tree.join(file).display())))?;
            }
        }
        let mut cmd = Command::new(&self.tools.repo_bin);
        cmd.arg("publish")
            .arg(&self.dir)
            .args(["--name", name, "--kernel"])
            .arg(&self.tools.kernel)
            .arg("--initrd")
            .arg(&self.tools.initrd)
            .args(["--cmdline", APPLIANCE_CMDLINE])
            .arg("--disk")
            .arg(format!("system={}", img.display()));
        if user_disk {
            cmd.args(["--disk", "user=16M"]);
        }
        if ballast > 0 {
            let trace = self.work.join(format!("{name}-v{version}.boot-trace"));
            write_boot_profile(&trace, &self.tools.kernel, &self.tools.initrd, &img)?;
            cmd.arg("--boot-trace").arg(&trace);
        }
        cmd.args(["--memory", if user_disk { "192" } else { "128" }])
            .args(["--vcpus", "1", "--network", NETWORK, "--key"])
            .arg(&self.tools.secret_key);
        run(&mut cmd)
    }

    /// Publishes a display test appliance (see [`DisplayAppliance`]).
    pub fn publish_display(&self, app: &DisplayAppliance) -> Result<String> {
        let out = self.work.join(format!("{}-appliance", app.name));
        self.write_display_appliance(app, &out)?;
        self.publish_display_from(app, &out, None)
    }

    /// Writes a display test appliance as `scripts/desktop-appliance.sh` writes the
    /// desktop: `vmlinuz`, `initrd.img`, `cmdline` and `system.img` in `out`.
    pub fn write_display_appliance(&self, app: &DisplayAppliance, out: &Path) -> Result<()> {
        let name = app.name.as_str();
        fs::create_dir_all(out)?;
        let img = out.join("system.img");
        let tree = self.work.join(format!("{name}-v1-root"));
        system_tree(self.tools, &tree, name, DISPLAY_INIT, 1)?;
        fs::copy(&self.tools.display_probe, tree.join("bin/display-probe"))?;
        fs::write(tree.join("etc/appliance-name"), format!("{name}\n"))?;
        fs::write(tree.join("etc/pattern-seed"), format!("{}\n", app.seed))?;
        write_exec(&tree.join("etc/udhcpc.script"), UDHCPC_SCRIPT)?;
        if let Some(url) = &app.fetch_url {
            fs::write(tree.join("etc/fetch-url"), format!("{url}\n"))?;
        }
        if let Some(to) = &app.report_to {
            fs::write(tree.join("etc/report-to"), format!("{to}\n"))?;
        }
        if app.mark_keys {
            fs::write(tree.join("etc/mark-keys"), "mark-keys\n")?;
        }
        let _ = fs::remove_file(&img);
        run(Command::new(&self.tools.repo_bin)
            .args(["image", "create", "--size", "24M", "--out"])
            .arg(&img)
            .arg(&tree))?;
        fs::copy(&self.tools.display_kernel, out.join("vmlinuz"))?;
        fs::copy(&self.tools.display_initrd, out.join("initrd.img"))?;
        fs::write(out.join("cmdline"), format!("{APPLIANCE_CMDLINE}\n"))?;
        Ok(())
    }

    /// Publishes the display appliance [`DemoRepo::write_display_appliance`] wrote in
    /// `out`, with `boot_trace` as its boot trace if given.
    pub fn publish_display_from(
        &self,
        app: &DisplayAppliance,
        out: &Path,
        boot_trace: Option<&Path>,
    ) -> Result<String> {
        let mut cmd = Command::new(&self.tools.repo_bin);
        cmd.arg("publish")
            .arg(&self.dir)
            .args(["--name", &app.name, "--kernel"])
            .arg(out.join("vmlinuz"))
            .arg("--initrd")
            .arg(out.join("initrd.img"))
            .args(["--cmdline", APPLIANCE_CMDLINE])
            .arg("--disk")
            .arg(format!("system={}", out.join("system.img").display()))
            .args(["--memory", "256", "--vcpus", "1", "--display", "--key"])
            .arg(&self.tools.secret_key);
        for n in &app.networks {
            cmd.args(["--network", n]);
        }
        if let Some(trace) = boot_trace {
            cmd.arg("--boot-trace").arg(trace);
        }
        run(&mut cmd)
    }

    /// Publishes the Debian desktop appliance that `scripts/desktop-appliance.sh OUT`
    /// built in `out` (its `vmlinuz`, `initrd.img`, `system.img`, `cmdline`) as `desktop`
    /// with the demo's key: a display, the `uplink` network, a 2 GiB user disk.
    pub fn publish_desktop(&self, out: &Path) -> Result<String> {
        for f in ["vmlinuz", "initrd.img", "system.img", "cmdline"] {
            anyhow::ensure!(
                out.join(f).is_file(),
                "{} has no {f}: build it with scripts/desktop-appliance.sh {}",
                out.display(),
                out.display()
            );
        }
        let cmdline = fs::read_to_string(out.join("cmdline"))?;
        let mut publish = Command::new(&self.tools.repo_bin);
        publish
            .arg("publish")
            .arg(&self.dir)
            .args(["--name", "desktop", "--kernel"])
            .arg(out.join("vmlinuz"))
            .arg("--initrd")
            .arg(out.join("initrd.img"))
            .args(["--cmdline", cmdline.trim()])
            .arg("--disk")
            .arg(format!("system={}", out.join("system.img").display()))
            .args(["--disk", "user=2G"])
            .args(["--memory", "1024", "--vcpus", "2", "--display"])
            .args(["--network", "uplink", "--key"])
            .arg(&self.tools.secret_key);
        if let Some(trace) = boot_trace_for(out) {
            publish.arg("--boot-trace").arg(trace);
        }
        run(&mut publish)
    }

    /// Assigns exactly `appliances` to the demo user.
    pub fn assign(&self, appliances: &[&str]) -> Result<()> {
        run(Command::new(&self.tools.repo_bin)
            .args(["set", "assign", USER])
            .args(appliances)
            .arg("--repo")
            .arg(&self.dir))?;
        Ok(())
    }

    /// Publishes the next version of `desk` (its version file changes).
    pub fn publish_desk(&self, version: u32) -> Result<String> {
        self.publish("desk", DESK_INIT, version, true)
    }

    /// Starts `collective-repo serve` on a free loopback port.
    pub fn serve(&self) -> Result<RepoServer> {
        RepoServer::start(&self.tools.repo_bin, &self.dir, 0)
    }

    /// Starts `collective-repo serve` again on `port` (after [`RepoServer::stop`]).
    pub fn serve_on(&self, port: u16) -> Result<RepoServer> {
        RepoServer::start(&self.tools.repo_bin, &self.dir, port)
    }

    /// The verified manifest of `name` at `version`.
    pub fn manifest(&self, name: &str, version: u64) -> Result<appliance::Manifest> {
        let bytes = fs::read(
            self.dir
                .join("public")
                .join(appliance::wire::manifest_path(name, version).trim_start_matches('/')),
        )?;
        let keys =
            appliance::PublicKey::parse_trusted(&fs::read_to_string(&self.tools.public_key)?)?;
        Ok(appliance::SignedManifest::verify_bytes(&bytes, &keys)?)
    }
}

/// A running `collective-repo serve`.
pub struct RepoServer {
    child: Child,
    pub port: u16,
    pub access_log: PathBuf,
}

impl RepoServer {
    fn start(repo_bin: &Path, dir: &Path, port: u16) -> Result<RepoServer> {
        let mut child = Command::new(repo_bin)
            .arg("serve")
            .arg(dir)
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?;
        let stdout = child.stdout.take().context("no stdout")?;
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        let port = line
            .trim()
            .rsplit(':')
            .next()
            .and_then(|p| p.trim_end_matches('/').parse().ok())
            .with_context(|| format!("unexpected first line from serve: {line:?}"))?;
        Ok(RepoServer {
            child,
            port,
            access_log: dir.join("logs/access.log"),
        })
    }

    /// The URL a QEMU guest (user-mode network) uses.
    pub fn guest_url(&self) -> String {
        format!("http://10.0.2.2:{}/", self.port)
    }

    /// Chunk ids fetched so far, in order.
    pub fn chunk_gets(&self) -> Vec<String> {
        self.chunk_transfers()
            .into_iter()
            .map(|(id, _)| id)
            .collect()
    }

    /// Chunks fetched so far, in order, with the bytes sent for each.
    pub fn chunk_transfers(&self) -> Vec<(String, u64)> {
        fs::read_to_string(&self.access_log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (f.len() >= 6 && f[2] == "GET" && f[3].starts_with("/chunks/") && f[4] == "200")
                    .then(|| {
                        (
                            f[3].rsplit('/').next().unwrap_or("").to_owned(),
                            f[5].parse().unwrap_or(0),
                        )
                    })
            })
            .collect()
    }

    /// Stops the server (the repository becomes unreachable).
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for RepoServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The terminal firmware for the demo: trusts the demo publisher, finds or formats its
/// cache disk by itself.
pub fn terminal_firmware() -> Result<Firmware> {
    let tools = tools()?;
    build_variant(
        "terminal",
        &["collective.cache=auto".to_string()],
        &[(
            tools.public_key.clone(),
            "etc/collective/trusted-keys".to_string(),
        )],
    )
}

/// A PXE folder for one terminal: the firmware's files and a `boot.ipxe` whose command
/// line names `repo_url` (what an office's boot server would hold).
pub fn pxe_folder(firmware: &Firmware, dir: &Path, repo_url: &str) -> Result<Firmware> {
    fs::create_dir_all(dir)?;
    for f in ["vmlinuz", "initrd.img"] {
        let dst = dir.join(f);
        let _ = fs::remove_file(&dst);
        if fs::hard_link(firmware.dir.join(f), &dst).is_err() {
            fs::copy(firmware.dir.join(f), &dst)?;
        }
    }
    let cmdline = format!("{} collective.repo={repo_url}", firmware.cmdline);
    let script =
        fs::read_to_string(firmware.dir.join("boot.ipxe"))?.replace(&firmware.cmdline, &cmdline);
    anyhow::ensure!(
        script.contains(&cmdline),
        "boot.ipxe does not carry the command line"
    );
    fs::write(dir.join("boot.ipxe"), script)?;
    fs::write(dir.join("cmdline"), &cmdline)?;
    Firmware::from_dir(dir)
}

/// An empty cache disk for a terminal.
pub fn empty_disk(path: &Path, bytes: u64) -> Result<PathBuf> {
    let f = File::create(path)?;
    f.set_len(bytes)?;
    Ok(path.to_path_buf())
}

/// Hex ids of the chunks of the kernel, initrd and system disks of `m`: what a terminal
/// must fetch once and never again.
pub fn system_chunks(m: &appliance::Manifest) -> std::collections::BTreeSet<String> {
    system_chunk_lengths(m).into_keys().collect()
}

/// [`system_chunks`] with each chunk's plaintext length.
pub fn system_chunk_lengths(m: &appliance::Manifest) -> std::collections::BTreeMap<String, u64> {
    let mut out = std::collections::BTreeMap::new();
    for b in m.system_blobs() {
        for (i, c) in b.chunks.iter().enumerate() {
            if let Some(id) = c {
                out.insert(id.to_hex(), b.chunk_len(i as u64) as u64);
            }
        }
    }
    out
}

/// PXE-boots a terminal (with `disk` as its cache disk, or none) and waits for its login
/// screen and its DHCP address.
pub fn boot_terminal(
    pxe: &Firmware,
    nic: crate::Nic,
    disk: Option<&Path>,
) -> Result<crate::Machine> {
    let boot = std::time::Duration::from_secs(240);
    let config = crate::MachineConfig {
        nic,
        pxe: true,
        disks: disk.into_iter().map(Path::to_path_buf).collect(),
        memory_mib: 2048,
        ..Default::default()
    };
    let mut m = crate::Machine::boot(pxe, &config)?;
    m.expect("ready in", boot)?;
    m.expect("address: 10.0.2.15/24 via 10.0.2.2", boot)?;
    m.expect("login:", std::time::Duration::from_secs(60))?;
    Ok(m)
}

/// A TCP proxy that passes the server's replies at most `bytes_per_sec` (shared by every
/// connection, like one office link), for measuring what a terminal fetches before its
/// appliance runs when the network is not loopback-fast.
pub struct Throttle {
    pub port: u16,
}

impl Throttle {
    /// Listens on a free loopback port and forwards to `127.0.0.1:target`.
    pub fn start(target: u16, bytes_per_sec: u64) -> Result<Throttle> {
        use std::io::Read;
        use std::net::{TcpListener, TcpStream};
        use std::sync::{Arc, Mutex};
        use std::time::{Duration, Instant};
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        let link: Arc<Mutex<Instant>> = Arc::new(Mutex::new(Instant::now()));
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let Ok(server) = TcpStream::connect(("127.0.0.1", target)) else {
                    continue;
                };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                let (Ok(mut c_in), Ok(mut s_out)) = (client.try_clone(), server.try_clone()) else {
                    continue;
                };
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut c_in, &mut s_out);
                    let _ = s_out.shutdown(std::net::Shutdown::Write);
                });
                let (mut s_in, mut c_out) = (server, client);
                let link = link.clone();
                std::thread::spawn(move || {
                    let mut buf = [0u8; 16 * 1024];
                    while let Ok(n) = s_in.read(&mut buf) {
                        if n == 0 {
                            break;
                        }
                        // Reserve the link for n bytes, then wait for our turn to end.
                        let done = {
                            let Ok(mut free_at) = link.lock() else { break };
                            let start = (*free_at).max(Instant::now());
                            *free_at =
                                start + Duration::from_secs_f64(n as f64 / bytes_per_sec as f64);
                            *free_at
                        };
                        std::thread::sleep(done.saturating_duration_since(Instant::now()));
                        if c_out.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                    let _ = c_out.shutdown(std::net::Shutdown::Write);
                });
            }
        });
        Ok(Throttle { port })
    }

    /// The URL a QEMU guest uses to reach the repository through the throttle.
    pub fn guest_url(&self) -> String {
        format!("http://10.0.2.2:{}/", self.port)
    }
}
