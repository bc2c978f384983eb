//! Fetching and unpacking Debian kernel packages.
//!
//! The firmware's kernel is Debian's own, so that it drives the hardware Debian drives
//! and gets Debian's security updates. We resolve the `linux-image-amd64` metapackage to
//! the exact kernel package it names, download both with `apt-get download` into a cache
//! that outlives builds, and unpack the kernel once per version. Nothing here needs root
//! beyond what `apt-get download` needs.

use anyhow::{bail, Context, Result};
use log::{debug, info};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A kernel package unpacked in the download cache, with `modules.dep` generated.
#[derive(Debug, Clone)]
pub struct UnpackedKernel {
    /// The package that was asked for (usually the metapackage `linux-image-amd64`).
    pub requested_package: String,
    /// The version of the requested package.
    pub requested_version: String,
    /// The concrete kernel package, for example `linux-image-6.1.0-56-amd64`.
    pub package: String,
    /// Its Debian version, for example `6.1.192-2`.
    pub version: String,
    /// The kernel release (`uname -r`), for example `6.1.0-56-amd64`.
    pub release: String,
    /// The unpacked tree: `boot/vmlinuz-<release>` and `lib/modules/<release>/`.
    pub root: PathBuf,
}

impl UnpackedKernel {
    pub fn vmlinuz(&self) -> PathBuf {
        self.root
            .join("boot")
            .join(format!("vmlinuz-{}", self.release))
    }

    pub fn modules_dir(&self) -> PathBuf {
        self.root.join("lib/modules").join(&self.release)
    }
}

/// Downloads (if not cached) and unpacks the kernel that `package` resolves to.
///
/// `version` pins the requested package's version; `None` takes the candidate apt knows.
pub fn fetch_kernel(
    cache_dir: &Path,
    package: &str,
    version: Option<&str>,
) -> Result<UnpackedKernel> {
    let debs = cache_dir.join("debs");
    fs::create_dir_all(&debs)
        .with_context(|| format!("creating download cache {}", debs.display()))?;

    let requested_version = match version {
        Some(v) => v.to_string(),
        None => candidate_version(package)?,
    };
    let meta_deb = download(&debs, package, &requested_version)?;
    let (kernel_package, kernel_version) = if deb_field(&meta_deb, "Package")?
        .starts_with("linux-image-")
        && has_vmlinuz(&meta_deb)?
    {
        (package.to_string(), requested_version.clone())
    } else {
        resolve_kernel_dependency(&meta_deb)?
    };
    let kernel_deb = download(&debs, &kernel_package, &kernel_version)?;
    let release = kernel_package
        .strip_prefix("linux-image-")
        .map(|r| r.trim_end_matches("-unsigned").to_string())
        .with_context(|| format!("{kernel_package} is not a linux-image package"))?;

    let root = cache_dir
        .join("unpacked")
        .join(format!("{kernel_package}_{kernel_version}"));
    if !root.join(".complete").exists() {
        unpack(&kernel_deb, &root, &release)?;
    } else {
        debug!(
            "kernel {kernel_package} {kernel_version} already unpacked in {}",
            root.display()
        );
    }
    Ok(UnpackedKernel {
        requested_package: package.to_string(),
        requested_version,
        package: kernel_package,
        version: kernel_version,
        release,
        root,
    })
}

/// Downloads (if not cached) and unpacks any Debian package (busybox-static for test
/// appliances, say); returns the folder it was unpacked into.
pub fn fetch_package(cache_dir: &Path, package: &str) -> Result<PathBuf> {
    let debs = cache_dir.join("debs");
    fs::create_dir_all(&debs)
        .with_context(|| format!("creating download cache {}", debs.display()))?;
    let version = candidate_version(package)?;
    let deb = download(&debs, package, &version)?;
    let root = cache_dir
        .join("unpacked")
        .join(format!("{package}_{}", version.replace(':', "%3a")));
    if root.join(".complete").exists() {
        return Ok(root);
    }
    let tmp = root.with_extension(format!("tmp-{}", std::process::id()));
    let _ = fs::remove_dir_all(&tmp);
    fs::create_dir_all(&tmp)?;
    extract(&deb, &tmp)?;
    fs::write(tmp.join(".complete"), b"")?;
    let _ = fs::remove_dir_all(&root);
    fs::rename(&tmp, &root)?;
    Ok(root)
}

/// The version apt would install now.
fn candidate_version(package: &str) -> Result<String> {
    let out = run_capture(Command::new("apt-cache").args(["policy", package]))?;
    out.lines()
        .find_map(|l| l.trim().strip_prefix("Candidate:").map(|v| v.trim().to_string()))
        .filter(|v| v != "(none)")
        .with_context(|| {
            format!("apt knows no candidate for {package}: run `apt-get update`, or check that the Debian archive is in your sources")
        })
}

/// Returns the cached `.deb` for `package` at `version`, downloading it if needed.
fn download(debs: &Path, package: &str, version: &str) -> Result<PathBuf> {
    let file_version = version.replace(':', "%3a");
    let path = debs.join(format!("{package}_{file_version}_amd64.deb"));
    if path.exists() {
        debug!("using cached {}", path.display());
        return Ok(path);
    }
    info!("downloading {package} {version}");
    // apt-get download writes into the current directory; give it a private one so a
    // half-downloaded file never takes the cached name.
    let partial = debs.join(format!(".partial-{}", std::process::id()));
    fs::create_dir_all(&partial)?;
    let status = Command::new("apt-get")
        .args([
            "-q",
            "-o",
            "APT::Sandbox::User=root",
            "download",
            &format!("{package}={version}"),
        ])
        .current_dir(&partial)
        .status()
        .context("running apt-get download (is apt installed?)")?;
    if !status.success() {
        let _ = fs::remove_dir_all(&partial);
        bail!("apt-get download {package}={version} failed: run `apt-get update`, or pin a version the archive still has (--kernel-version)");
    }
    let got = fs::read_dir(&partial)?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .with_context(|| format!("apt-get download {package} produced no .deb"))?;
    fs::rename(&got, &path)?;
    fs::remove_dir_all(&partial)?;
    Ok(path)
}

fn deb_field(deb: &Path, field: &str) -> Result<String> {
    Ok(
        run_capture(Command::new("dpkg-deb").arg("-f").arg(deb).arg(field))?
            .trim()
            .to_string(),
    )
}

fn has_vmlinuz(deb: &Path) -> Result<bool> {
    let listing = run_capture(Command::new("dpkg-deb").arg("-c").arg(deb))?;
    Ok(listing.lines().any(|l| l.contains("/boot/vmlinuz-")))
}

/// The metapackage depends on exactly one `linux-image-<release> (= <version>)`.
fn resolve_kernel_dependency(meta_deb: &Path) -> Result<(String, String)> {
    let depends = deb_field(meta_deb, "Depends")?;
    for dep in depends.split(',') {
        let dep = dep.trim();
        let Some((name, rest)) = dep.split_once(' ') else {
            continue;
        };
        if !name.starts_with("linux-image-") {
            continue;
        }
        if let Some(version) = rest
            .trim()
            .strip_prefix("(=")
            .and_then(|v| v.strip_suffix(')'))
        {
            return Ok((name.to_string(), version.trim().to_string()));
        }
    }
    bail!(
        "{} depends on no exact linux-image package (Depends: {depends})",
        meta_deb.display()
    )
}

/// Unpacks into a temporary folder and renames it into place, so an interrupted unpack
/// is never mistaken for a complete one.
fn unpack(deb: &Path, root: &Path, release: &str) -> Result<()> {
    info!("unpacking {}", deb.display());
    let tmp = root.with_extension(format!("tmp-{}", std::process::id()));
    let _ = fs::remove_dir_all(&tmp);
    fs::create_dir_all(&tmp)?;
    extract(deb, &tmp)?;
    // The package's postinst makes modules.dep; we have no postinst, so run depmod.
    depmod(&tmp, release)?;
    fs::write(tmp.join(".complete"), b"")?;
    let _ = fs::remove_dir_all(root);
    fs::rename(&tmp, root)?;
    Ok(())
}

/// `dpkg-deb -x DEB DIR`: a package's files, without running any of its scripts.
fn extract(deb: &Path, dir: &Path) -> Result<()> {
    let status = Command::new("dpkg-deb")
        .arg("-x")
        .arg(deb)
        .arg(dir)
        .status()
        .context("running dpkg-deb")?;
    if !status.success() {
        bail!(
            "dpkg-deb -x {} failed; delete the file so it is downloaded again",
            deb.display()
        );
    }
    Ok(())
}

/// Runs `depmod -b ROOT RELEASE`, which writes `modules.dep` and `modules.alias`.
pub fn depmod(root: &Path, release: &str) -> Result<()> {
    let depmod = ["/usr/sbin/depmod", "/sbin/depmod"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .context("depmod not found: install Debian's kmod package")?;
    let status = Command::new(depmod)
        .arg("-b")
        .arg(root)
        .arg(release)
        .status()
        .context("running depmod")?;
    if !status.success() {
        bail!("depmod -b {} {release} failed", root.display());
    }
    Ok(())
}

fn run_capture(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
