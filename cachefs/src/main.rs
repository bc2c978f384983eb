//! `cachefs`: format, inspect and check a terminal cache device or file.

use cachefs::{Cache, CreateOptions, Error, FileStorage};
use clap::{Parser, Subcommand};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use support::logger::{level_from_verbosity, Logger};
use support::size::human;

#[derive(Parser)]
#[command(
    name = "cachefs",
    version,
    about = "Format, inspect and check a Collective terminal cache"
)]
struct Cli {
    /// Log more (repeat for debug output).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Format DEV as an empty cache. With --size, DEV is a regular file
    /// created (or truncated) at that size.
    Format {
        /// The cache's block device (or file, with --size).
        dev: PathBuf,
        /// Size of the file to create: bytes, or with a K/M/G/T suffix (powers of 1024).
        #[arg(long, value_parser = support::size::parse)]
        size: Option<u64>,
        /// Format even if DEV already holds a cache or other data.
        #[arg(long)]
        force: bool,
    },
    /// Print usage, pins, overlays and chunk counts.
    Inspect {
        /// The cache's block device or file.
        dev: PathBuf,
    },
    /// Verify every record; exits 1 if damage was found (and not repaired).
    Fsck {
        /// The cache's block device or file.
        dev: PathBuf,
        /// Drop damaged chunks and rewrite the metadata.
        #[arg(long)]
        repair: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    Logger::stderr("cachefs").install(level_from_verbosity(cli.verbose));
    let res = match cli.cmd {
        Cmd::Format { dev, size, force } => format(&dev, size, force),
        Cmd::Inspect { dev } => inspect(&dev),
        Cmd::Fsck { dev, repair } => fsck(&dev, repair),
    };
    match res {
        Ok(code) => code,
        Err(e) => {
            eprintln!("cachefs: error: {e}");
            ExitCode::from(2)
        }
    }
}

fn format(dev: &Path, size: Option<u64>, force: bool) -> Result<ExitCode, Error> {
    let storage = match size {
        Some(s) => {
            if dev.exists() && !force {
                let meta = std::fs::metadata(dev)?;
                if !meta.is_file() || meta.len() > 0 {
                    return Err(Error::Invalid(format!(
                        "{} exists; use --force to overwrite it",
                        dev.display()
                    )));
                }
            }
            FileStorage::create_file(dev, s)?
        }
        None => FileStorage::open(dev)?,
    };
    let cache = Cache::create(
        Box::new(storage),
        CreateOptions {
            force: force || size.is_some(),
        },
    )?;
    let s = cache.stats();
    println!(
        "formatted {}: {} device, {} for chunks, uuid {}",
        dev.display(),
        human(s.device_size),
        human(s.arena_bytes),
        s.uuid
    );
    Ok(ExitCode::SUCCESS)
}

fn inspect(dev: &Path) -> Result<ExitCode, Error> {
    let cache = Cache::open(Box::new(FileStorage::open_read_only(dev)?))?;
    let s = cache.stats();
    let r = cache.recovery_report();
    println!("device:      {} ({})", dev.display(), human(s.device_size));
    println!("uuid:        {}", s.uuid);
    println!("format:      version {}", cachefs::format::FORMAT_VERSION);
    println!(
        "superblock:  seq {} ({} journal commits since the checkpoint)",
        s.superblock_seq, r.journal_commits_replayed
    );
    let pct = if s.arena_bytes > 0 {
        100.0 * s.used_bytes as f64 / s.arena_bytes as f64
    } else {
        0.0
    };
    println!(
        "usage:       {} of {} ({pct:.1}%)",
        human(s.used_bytes),
        human(s.arena_bytes)
    );
    println!(
        "chunks:      {} ({} compressed), {} stored for {} of data",
        s.chunks,
        s.compressed_chunks,
        human(s.stored_bytes),
        human(s.plain_bytes)
    );
    println!("pinned:      {} chunks present", s.pinned_chunks_present);
    println!("pins:        {}", s.pins.len());
    for (name, n, present) in &s.pins {
        println!("  {name}: {n} chunks, {present} present");
    }
    println!("overlays:    {}", s.overlays.len());
    for (name, blocks) in &s.overlays {
        println!("  {name}: {} changed", human(*blocks as u64 * 4096));
    }
    Ok(ExitCode::SUCCESS)
}

fn fsck(dev: &Path, repair: bool) -> Result<ExitCode, Error> {
    let storage = if repair {
        FileStorage::open(dev)?
    } else {
        FileStorage::open_read_only(dev)?
    };
    let cache = Cache::open(Box::new(storage))?;
    let r = cache.recovery_report().clone();
    let mut problems = 0u64;
    for d in &r.damaged_superblocks {
        println!("superblock damaged ({d}); the other copy is in use");
        problems += 1;
    }
    if r.used_older_superblock {
        println!("newest checkpoint damaged; recovered from the older one");
        problems += 1;
    }
    if r.dropped_chunks > 0 {
        println!("{} chunk records with invalid locations", r.dropped_chunks);
        problems += r.dropped_chunks;
    }
    if r.dropped_overlay_blocks > 0 {
        println!(
            "{} overlay blocks with invalid locations (user data lost)",
            r.dropped_overlay_blocks
        );
        problems += r.dropped_overlay_blocks;
    }
    let (checked, bad, bad_ov) = cache.verify_all()?;
    for id in &bad {
        println!("chunk {id}: damaged record (checksum or hash mismatch)");
    }
    for (name, db) in &bad_ov {
        println!(
            "overlay {name}: block at disk offset {} damaged (user data lost)",
            db * 4096
        );
    }
    problems += bad.len() as u64 + bad_ov.len() as u64;
    println!(
        "{checked} chunk records checked, {} damaged; {} overlay blocks damaged",
        bad.len(),
        bad_ov.len()
    );
    if problems == 0 {
        println!("clean");
        return Ok(ExitCode::SUCCESS);
    }
    if repair {
        // Damaged chunks were dropped from the index while being read;
        // a checkpoint makes that durable and rewrites both superblock copies.
        cache.checkpoint()?;
        cache.checkpoint()?;
        println!("repaired: damaged chunks dropped (they will be refetched), metadata rewritten");
        if bad_ov.is_empty() && r.dropped_overlay_blocks == 0 {
            return Ok(ExitCode::SUCCESS);
        }
        println!("overlay damage cannot be repaired");
    }
    Ok(ExitCode::from(1))
}
