//! `receiver`: the repository client as a command, for administrators and tests.
//!
//! ```text
//! echo "$PASSWORD" | receiver fill --repo http://repo:8080/ --cache /dev/sda3 --user alice --trusted-keys keys.pub
//! receiver status --cache /dev/sda3
//! ```

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use receiver::{progress, Error, FillOptions, RepoConfig};
use support::size::human;

#[derive(Parser)]
#[command(
    name = "receiver",
    version,
    about = "Log in to a Collective repository and fill the terminal's cache"
)]
struct Cli {
    /// More log output (-v info, -vv debug).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Log in (password on standard input) and fill the user's appliance set into the cache.
    Fill {
        /// Repository base URL.
        #[arg(long, env = "COLLECTIVE_REPO_URL")]
        repo: String,
        /// Cache device or file (formatted if it holds no cache).
        #[arg(long)]
        cache: PathBuf,
        /// Create the cache file with this size if it does not exist (e.g. 20G).
        #[arg(long)]
        cache_size: Option<String>,
        /// User name.
        #[arg(long)]
        user: String,
        /// File of trusted publisher keys (`ed25519:<hex>` per line).
        #[arg(
            long,
            env = "COLLECTIVE_TRUSTED_KEYS",
            default_value = "/etc/collective/trusted-keys"
        )]
        trusted_keys: PathBuf,
        /// PEM file of the CA that HTTPS repositories must chain to (default: webpki roots).
        #[arg(long, env = "COLLECTIVE_CA")]
        ca: Option<PathBuf>,
        /// Parallel connections.
        #[arg(long, default_value_t = 4)]
        connections: usize,
        /// Store chunks uncompressed (faster fill, more disk).
        #[arg(long)]
        no_compress: bool,
        /// Seconds between progress lines.
        #[arg(long, default_value_t = 1.0)]
        interval: f64,
    },
    /// Show what the cache holds: usage, users with an offline record, appliance versions.
    Status {
        /// Cache device or file.
        #[arg(long)]
        cache: PathBuf,
    },
}

/// Exit codes: documented in docs/receiver.md.
const EXIT_FAILED: u8 = 1;
const EXIT_USAGE: u8 = 2;
const EXIT_CREDENTIALS: u8 = 3;
const EXIT_OFFLINE_INCOMPLETE: u8 = 4;
const EXIT_REFUSED: u8 = 5;

fn read_password() -> Result<String, String> {
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .map_err(|e| format!("cannot read the password from standard input: {e}"))?;
    let pw = line.trim_end_matches(['\r', '\n']).to_owned();
    if pw.is_empty() {
        return Err("no password on standard input (give it as the first line)".into());
    }
    Ok(pw)
}

fn open_cache(
    path: &Path,
    size: Option<&str>,
    compress: bool,
) -> Result<std::sync::Arc<cachefs::Cache>, String> {
    if !path.exists() {
        let Some(size) = size else {
            return Err(format!(
                "{} does not exist; give --cache-size to create a cache file",
                path.display()
            ));
        };
        let bytes = support::size::parse(size)
            .map_err(|_| format!("--cache-size {size:?}: write e.g. 512M or 20G"))?;
        cachefs::FileStorage::create_file(path, bytes)
            .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
    }
    receiver::open_cache(path, compress).map_err(|e| e.to_string())
}

#[allow(clippy::too_many_arguments)]
fn fill(
    repo: String,
    cache: PathBuf,
    cache_size: Option<String>,
    user: String,
    trusted_keys: PathBuf,
    ca: Option<PathBuf>,
    connections: usize,
    no_compress: bool,
    interval: f64,
) -> ExitCode {
    let keys = match std::fs::read_to_string(&trusted_keys)
        .map_err(|e| e.to_string())
        .and_then(|t| appliance::PublicKey::parse_trusted(&t).map_err(|e| e.to_string()))
    {
        Ok(k) if !k.is_empty() => k,
        Ok(_) => return usage(&format!("{} holds no trusted key", trusted_keys.display())),
        Err(e) => return usage(&format!("trusted keys {}: {e}", trusted_keys.display())),
    };
    let password = match read_password() {
        Ok(p) => p,
        Err(e) => return usage(&e),
    };
    let cache = match open_cache(&cache, cache_size.as_deref(), !no_compress) {
        Ok(c) => c,
        Err(e) => return usage(&e),
    };
    let mut config = RepoConfig::new(&repo, keys);
    config.ca_pem = ca;
    config.connections = connections.max(1);
    let mut session = match receiver::login(cache.clone(), &config, &user, &password) {
        Ok(s) => s,
        Err(e @ (Error::BadCredentials | Error::RateLimited { .. })) => {
            eprintln!("receiver: login refused: {e}");
            return ExitCode::from(EXIT_CREDENTIALS);
        }
        Err(e @ (Error::Config(_) | Error::NoOfflineRecord(_))) => return usage(&e.to_string()),
        Err(e) => {
            eprintln!("receiver: login failed: {e}");
            return ExitCode::from(EXIT_FAILED);
        }
    };
    println!("{}", session.status_line());
    for r in &session.set.refused {
        println!("REFUSED {} v{}: {}", r.name, r.version, r.reason);
    }
    for u in &session.set.unavailable {
        println!("unavailable {u}: no version published yet");
    }
    let refused = !session.set.refused.is_empty();
    let Some(client) = session.client.clone() else {
        let mut incomplete = false;
        for a in &session.set.appliances {
            let complete = receiver::set::is_complete(&cache, a);
            incomplete |= !complete;
            println!(
                "  {} v{}: {}",
                a.name(),
                a.manifest.version,
                if complete {
                    "complete in the cache"
                } else {
                    "INCOMPLETE in the cache: cannot be filled offline"
                }
            );
        }
        return ExitCode::from(if incomplete {
            EXIT_OFFLINE_INCOMPLETE
        } else if refused {
            EXIT_REFUSED
        } else {
            0
        });
    };
    let fetcher = receiver::Fetcher::new(client);
    let opts = FillOptions {
        connections: config.connections,
        ..Default::default()
    };
    let result = receiver::fill::fill(
        cache.clone(),
        fetcher,
        &session.set,
        opts,
        Duration::from_secs_f64(interval.max(0.05)),
        |p| {
            for l in progress::lines(p) {
                eprintln!("{l}");
            }
        },
    );
    let code = match result {
        Ok(p) => {
            println!(
                "filled: {} needed, {} already cached, {} fetched ({} on the wire) in {}, {} corrupt chunk(s) refetched",
                human(p.total_bytes),
                human(p.cached_at_start),
                human(p.fetch.plain_bytes),
                human(p.fetch.wire_bytes),
                progress::duration(p.elapsed),
                p.fetch.corrupt
            );
            match session.release_previous() {
                Ok(r) if !r.is_empty() => println!("previous versions released: {}", r.join(", ")),
                Ok(_) => {}
                Err(e) => eprintln!("receiver: releasing previous versions: {e}"),
            }
            if refused {
                EXIT_REFUSED
            } else {
                0
            }
        }
        Err(e) => {
            eprintln!("receiver: fill stopped: {e}; what arrived is kept, run the command again to resume");
            EXIT_FAILED
        }
    };
    session.logout();
    ExitCode::from(code)
}

fn status(cache: PathBuf) -> ExitCode {
    let cache = match cachefs::FileStorage::open(&cache)
        .map_err(|e| e.to_string())
        .and_then(|d| cachefs::Cache::open(Box::new(d)).map_err(|e| e.to_string()))
    {
        Ok(c) => c,
        Err(e) => return usage(&format!("cannot open the cache {}: {e}", cache.display())),
    };
    let s = cache.stats();
    println!(
        "cache {}: {} used of {} ({} chunks, {} of plaintext)",
        s.uuid,
        human(s.used_bytes),
        human(s.arena_bytes),
        s.chunks,
        human(s.plain_bytes)
    );
    for user in receiver::store::users(&cache) {
        match receiver::store::load(&cache, &user) {
            Ok(Some(rec)) => {
                // The command does not know the terminal's setting: the default.
                let until =
                    receiver::offline::expires_unix(&rec, receiver::client::DEFAULT_OFFLINE_DAYS)
                        .map(receiver::offline::date)
                        .unwrap_or_default();
                println!(
                    "user {user}: offline record (last online login {}, last login {}; with the default {} days offline login works until {until})",
                    receiver::offline::date(rec.online_unix),
                    receiver::offline::date(rec.last_login_unix),
                    receiver::client::DEFAULT_OFFLINE_DAYS,
                );
                for a in &rec.appliances {
                    println!(
                        "  {} v{}{}",
                        a.name,
                        a.version,
                        a.previous
                            .as_ref()
                            .map(|(v, _)| format!(" (v{v} kept until it is complete)"))
                            .unwrap_or_default()
                    );
                }
                for d in &rec.user_disks {
                    println!(
                        "  user disk {}/{}: version {}",
                        d.appliance, d.disk, d.version
                    );
                }
            }
            Ok(None) => {
                println!("user {user}: record damaged or incomplete (offline login not possible)")
            }
            Err(e) => println!("user {user}: {e}"),
        }
    }
    for (name, total, present) in &s.pins {
        if !name.starts_with(receiver::store::USER_PIN_PREFIX) {
            println!(
                "pin {name}: {present}/{total} chunks present{}",
                if present == total { " (complete)" } else { "" }
            );
        }
    }
    for (name, blocks) in &s.overlays {
        println!(
            "overlay {name}: {} of local changes",
            human(*blocks as u64 * 4096)
        );
    }
    ExitCode::SUCCESS
}

fn usage(msg: &str) -> ExitCode {
    eprintln!("receiver: {msg}");
    ExitCode::from(EXIT_USAGE)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let level = match cli.verbose {
        0 => log::LevelFilter::Warn,
        1 => log::LevelFilter::Info,
        _ => log::LevelFilter::Debug,
    };
    env_logger::Builder::new()
        .filter_level(level)
        .parse_default_env()
        .init();
    match cli.cmd {
        Cmd::Fill {
            repo,
            cache,
            cache_size,
            user,
            trusted_keys,
            ca,
            connections,
            no_compress,
            interval,
        } => fill(
            repo,
            cache,
            cache_size,
            user,
            trusted_keys,
            ca,
            connections,
            no_compress,
            interval,
        ),
        Cmd::Status { cache } => status(cache),
    }
}
