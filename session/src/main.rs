//! `session`: one user's session on the terminal. init starts it on the console where the
//! person logged in, with the password on a pipe (`--password-fd`); it can also be run by
//! hand on any Linux machine with KVM, for testing an appliance set:
//!
//! ```text
//! echo "$PASSWORD" | session --user alice --repo http://repo:8080/ --cache memory:2G \
//!     --trusted-keys keys.pub --password-fd 0
//! ```
//!
//! Exit codes: 0 logged out, 1 the session could not start (the message says why),
//! 2 usage, 3 login refused (wrong user name or password, rate-limited).

use clap::Parser;
use session::cache::CacheLocation;
use session::{Outcome, Settings};
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::os::fd::FromRawFd;
use std::path::PathBuf;
use std::process::ExitCode;
use support::logger::Logger;

#[derive(Parser)]
#[command(
    name = "session",
    version,
    about = "Run a user's appliance set on this terminal"
)]
struct Cli {
    /// The user logging in.
    #[arg(long)]
    user: String,
    /// The repository's URL.
    #[arg(long)]
    repo: Option<String>,
    /// The cache: a device or file holding a cachefs cache, or memory[:SIZE].
    #[arg(long, default_value = "memory")]
    cache: String,
    /// The publishers' keys this terminal trusts.
    #[arg(long, default_value = "/etc/collective/trusted-keys")]
    trusted_keys: PathBuf,
    /// The CA certificate (PEM) of an https repository, if not a public CA.
    #[arg(long)]
    ca: Option<PathBuf>,
    /// File descriptor to read the password from (its first line).
    #[arg(long, default_value_t = 3)]
    password_fd: i32,
    /// Where the session keeps its files (a memory file system).
    #[arg(long, default_value = "/run/session")]
    run_dir: PathBuf,
    /// Parallel connections of the fill.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Days an offline login works after the user's last online login here; 0 turns
    /// offline login off (init passes `collective.offline-days`).
    #[arg(long, default_value_t = receiver::client::DEFAULT_OFFLINE_DAYS)]
    offline_days: u32,
    /// Users whose offline record and user disks this terminal keeps once written back
    /// (init passes `collective.offline-users`).
    #[arg(long, default_value_t = receiver::client::DEFAULT_OFFLINE_USERS)]
    offline_users: usize,
    /// Log level for the kernel log (error, warn, info, debug).
    #[arg(long, default_value = "info")]
    log: log::LevelFilter,
}

const EXIT_FAILED: u8 = 1;
const EXIT_USAGE: u8 = 2;
const EXIT_REFUSED: u8 = 3;

fn read_password(fd: i32) -> Result<String, String> {
    // SAFETY: the fd was handed to us for this purpose; File owns and closes it.
    let file = unsafe { File::from_raw_fd(fd) };
    let mut line = String::new();
    BufReader::new(file)
        .read_line(&mut line)
        .map_err(|e| format!("cannot read the password from fd {fd}: {e}"))?;
    Ok(line.trim_end_matches(['\r', '\n']).to_string())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The kernel log, where init's messages go too; the console belongs to the person and
    // the appliances (run by hand without a kernel log, warnings go to stderr).
    Logger::kmsg("session")
        .warnings_to_stderr_without_kmsg()
        .raw_terminal()
        .install(cli.log);
    let cache = match CacheLocation::parse(&cli.cache, &cli.run_dir) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("session: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let password = match read_password(cli.password_fd) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("session: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let settings = Settings {
        user: cli.user,
        repo: cli.repo,
        cache,
        trusted_keys: cli.trusted_keys,
        ca: cli.ca,
        run_dir: cli.run_dir.clone(),
        connections: cli.connections,
        offline_days: cli.offline_days,
        offline_users: cli.offline_users,
    };
    // SAFETY: fds 0 and 1 are the console init gave us; dup them so the session's own
    // handles close independently of the standard streams.
    let (tty_in, tty_out) = unsafe { (libc::dup(0), libc::dup(1)) };
    if tty_in < 0 || tty_out < 0 {
        eprintln!("session: no console on standard input/output");
        return ExitCode::from(EXIT_USAGE);
    }
    // SAFETY: both fds were just created by dup and are owned by these Files.
    let (tty_in, tty_out) = unsafe { (File::from_raw_fd(tty_in), File::from_raw_fd(tty_out)) };
    let outcome = session::run(&settings, &password, tty_in, tty_out);
    drop(password);
    let _ = std::fs::remove_dir_all(&cli.run_dir);
    match outcome {
        Outcome::LoggedOut => ExitCode::SUCCESS,
        Outcome::Refused(why) => {
            print!("Login failed: {why}\r\n");
            ExitCode::from(EXIT_REFUSED)
        }
        Outcome::Failed(why) => {
            print!("Cannot start your session: {why}\r\n");
            ExitCode::from(EXIT_FAILED)
        }
    }
}
