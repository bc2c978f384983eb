//! `collective-image`: the firmware builder's command line.

use anyhow::Result;
use clap::{Parser, Subcommand};
use image_builder::{binaries, image, BuildOptions, ProgramSource};
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "collective-image",
    version,
    about = "Builds the Collective terminal firmware"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Build vmlinuz, initrd.img, boot.ipxe and disk.img into a folder.
    Build {
        /// Output folder; created if missing.
        #[arg(long)]
        out: PathBuf,
        /// Kernel package to take vmlinuz and modules from.
        #[arg(long, default_value = "linux-image-amd64")]
        kernel_package: String,
        /// Pin the kernel package's Debian version (default: apt's candidate).
        #[arg(long)]
        kernel_version: Option<String>,
        /// Download cache (default: $COLLECTIVE_CACHE or ~/.cache/collective).
        #[arg(long)]
        cache_dir: Option<PathBuf>,
        /// Prebuilt static `init`, `vmm` and `session` instead of building them from
        /// this workspace (all three or none).
        #[arg(long, requires_all = ["vmm", "session"])]
        init: Option<PathBuf>,
        /// The `vmm` program to install as /bin/vmm (with --init and --session).
        #[arg(long, requires_all = ["init", "session"])]
        vmm: Option<PathBuf>,
        /// The `session` program to install as /bin/session (with --init and --vmm).
        #[arg(long, requires_all = ["init", "vmm"])]
        session: Option<PathBuf>,
        /// The publishers' public keys the terminal trusts (`collective-repo keygen`
        /// output, one per line); installed as /etc/collective/trusted-keys.
        #[arg(long)]
        trusted_keys: Option<PathBuf>,
        /// The CA certificate (PEM) of an https repository whose certificate no public CA
        /// signed; installed as /etc/collective/ca.pem.
        #[arg(long)]
        ca: Option<PathBuf>,
        /// Repository URL built into the kernel command line (collective.repo=).
        #[arg(long)]
        repo: Option<String>,
        /// Extra kernel command-line argument; repeat for several.
        #[arg(long = "cmdline")]
        cmdline: Vec<String>,
        /// Add a file to the initramfs: SRC:PATH (for example a site's CA certificate);
        /// repeat for several.
        #[arg(long = "add", value_name = "SRC:PATH")]
        add: Vec<String>,
        /// Display drivers to carry, comma-separated: qemu (bochs, virtio-gpu), intel
        /// (i915), amd (amdgpu, needs firmware files via --add), nvidia (nouveau). The
        /// report prints what each costs. Without a driver that binds, the terminal uses
        /// the firmware's framebuffer, else the serial console.
        #[arg(long, value_delimiter = ',', default_values_t = image_builder::modules::DEFAULT_GPUS.iter().map(|g| g.to_string()))]
        gpu: Vec<String>,
        /// Do not write disk.img (the firmware on a GPT disk for BIOS and UEFI).
        #[arg(long)]
        no_disk_image: bool,
    },
}

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    if let Err(e) = run(Cli::parse()) {
        eprintln!("collective-image: error: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Build {
            out,
            kernel_package,
            kernel_version,
            cache_dir,
            init,
            vmm,
            session,
            trusted_keys,
            ca,
            repo,
            cmdline,
            add,
            gpu,
            no_disk_image,
        } => {
            let mut extra_files = add
                .iter()
                .map(|a| match a.split_once(':') {
                    Some((src, dest)) if !src.is_empty() && !dest.is_empty() => {
                        Ok((PathBuf::from(src), dest.trim_start_matches('/').to_string()))
                    }
                    _ => Err(anyhow::anyhow!("--add {a:?}: expected SRC:PATH")),
                })
                .collect::<Result<Vec<_>>>()?;
            if let Some(keys) = trusted_keys {
                extra_files.push((keys, "etc/collective/trusted-keys".into()));
            } else {
                log::warn!("no --trusted-keys: terminals booted from this image cannot verify any appliance, so no one can log in");
            }
            if let Some(ca) = ca {
                extra_files.push((ca, "etc/collective/ca.pem".into()));
            }
            let programs = match (init, vmm, session) {
                (Some(init), Some(vmm), Some(session)) => {
                    ProgramSource::Prebuilt(vec![init, vmm, session])
                }
                _ => ProgramSource::Workspace(binaries::default_workspace().ok_or_else(|| {
                    anyhow::anyhow!("not run from a checkout of the project: pass --init with a static init binary")
                })?),
            };
            let opts = BuildOptions {
                out,
                cache_dir: cache_dir.unwrap_or_else(image::default_cache_dir),
                kernel_package,
                kernel_version,
                programs,
                repo_url: repo,
                extra_cmdline: cmdline,
                extra_files,
                zstd_level: image_builder::initramfs::ZSTD_LEVEL,
                gpus: gpu,
                disk_image: !no_disk_image,
            };
            let report = image_builder::build(&opts)?;
            println!("{}", report.summary());
            Ok(())
        }
    }
}
