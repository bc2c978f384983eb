//! One user's session on the terminal, from the accepted password to the logout.
//!
//! init asks for the user name and password and starts the `session` program on the
//! console where the person sits. The session logs in through the receiver (online, or
//! offline from the cache), shows a progress bar per appliance while the cache fills,
//! starts each appliance as soon as its boot chunks are in, lets the person switch
//! between the appliances' consoles, and at the end (the last appliance powered off, or
//! the logout key) writes the user disks back and exits. Being a process of its own is
//! the point: when it exits, every VM, overlay, key and password of the session is gone
//! with it, and a crash in it cannot take PID 1 down.

pub mod bridges;
pub mod cache;
pub mod desktop;
pub mod logout;
pub mod network_wait;
pub mod runner;
pub mod screen;
pub mod terminal;

use cache::CacheLocation;
use receiver::{Error as RepoError, FillOptions, RepoConfig};
use std::fs::File;
use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// What the session needs to know; init passes it on the command line.
#[derive(Clone, Debug)]
pub struct Settings {
    pub user: String,
    /// The repository; `None` when the terminal has none configured.
    pub repo: Option<String>,
    pub cache: CacheLocation,
    /// The publishers' public keys this firmware trusts (built into the image).
    pub trusted_keys: PathBuf,
    /// The CA that signs the repository's certificate, if not a public one.
    pub ca: Option<PathBuf>,
    /// A directory on a memory file system for the session's files (kernels, initrds).
    pub run_dir: PathBuf,
    /// Parallel connections of the fill.
    pub connections: usize,
    /// Days an offline login works after the last online login here (0: never);
    /// `collective.offline-days`, through init.
    pub offline_days: u32,
    /// Users kept for offline login once written back; `collective.offline-users`.
    pub offline_users: usize,
}

/// How the session ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The person worked and logged out (or every appliance powered off).
    LoggedOut,
    /// The login was refused (wrong user name or password, too many attempts).
    Refused(String),
    /// The session could not start; the message says why and what to do.
    Failed(String),
}

/// What the person sees, written straight to their console.
pub struct Screen {
    out: File,
}

impl Screen {
    pub fn new(out: File) -> Screen {
        Screen { out }
    }
    /// Writes a line (CR LF: the console may be in raw mode).
    pub fn line(&mut self, text: &str) {
        let _ = self
            .out
            .write_all(format!("{}\r\n", text.replace('\n', "\r\n")).as_bytes());
        let _ = self.out.flush();
    }
    fn writer(&mut self) -> &mut File {
        &mut self.out
    }
}

fn trusted_keys(path: &std::path::Path) -> Result<Vec<appliance::PublicKey>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        format!(
            "this firmware carries no trusted publisher keys ({}: {e}); rebuild it with collective-image build --trusted-keys FILE",
            path.display()
        )
    })?;
    let keys = appliance::PublicKey::parse_trusted(&text)
        .map_err(|e| format!("the trusted keys in {} are damaged: {e}", path.display()))?;
    if keys.is_empty() {
        return Err(format!("{} holds no trusted key", path.display()));
    }
    Ok(keys)
}

/// Runs the session of `settings.user` on the console `tty_in`/`tty_out`.
pub fn run(settings: &Settings, password: &str, tty_in: File, tty_out: File) -> Outcome {
    let mut screen = Screen::new(match tty_out.try_clone() {
        Ok(f) => f,
        Err(e) => return Outcome::Failed(format!("cannot write to the console: {e}")),
    });
    let Some(repo) = settings.repo.clone() else {
        return Outcome::Failed(
            "this terminal has no repository configured; add collective.repo=URL to the kernel command line (boot.ipxe) or build the image with --repo".into(),
        );
    };
    let keys = match trusted_keys(&settings.trusted_keys) {
        Ok(k) => k,
        Err(e) => return Outcome::Failed(e),
    };
    if let Err(e) = std::fs::create_dir_all(&settings.run_dir) {
        return Outcome::Failed(format!("cannot create {}: {e}", settings.run_dir.display()));
    }
    let cache = match cache::open(&settings.cache) {
        Ok(c) => c,
        Err(e) => return Outcome::Failed(e),
    };
    let mut config = RepoConfig::new(&repo, keys);
    config.ca_pem = settings.ca.clone();
    config.connections = settings.connections.max(1);
    config.offline_days = settings.offline_days;
    config.offline_users = settings.offline_users;

    network_wait::wait_for_repository(&repo, network_wait::NETWORK_WAIT, |s| screen.line(s));
    screen.line(&format!("Logging in to {repo} ..."));
    let started = Instant::now();
    let session = match receiver::login(cache.clone(), &config, &settings.user, password) {
        Ok(s) => s,
        Err(RepoError::BadCredentials) => {
            return Outcome::Refused("wrong user name or password".into())
        }
        Err(RepoError::RateLimited { retry_after_secs }) => {
            return Outcome::Refused(format!(
                "too many failed logins; try again in {retry_after_secs} s"
            ))
        }
        // Its field is the user's name (the receiver's message), not why it is offline.
        Err(RepoError::NoOfflineRecord(_)) => {
            return Outcome::Failed(format!(
                "the repository cannot be reached and {} has never logged in on this terminal, so there is nothing to work from; check the network cable and the repository",
                settings.user
            ))
        }
        // The receiver's message says until when, why, and to connect the terminal.
        Err(e @ (RepoError::OfflineExpired { .. } | RepoError::OfflineDisabled { .. })) => {
            return Outcome::Failed(e.to_string())
        }
        Err(e @ RepoError::BadUserDisk { .. }) => {
            return Outcome::Failed(format!(
                "{e}. It was not written by your terminal, so it is not used; tell your administrator"
            ))
        }
        Err(e) => return Outcome::Failed(format!("login failed: {e}")),
    };
    log::info!(
        "{} logged in ({}) in {:.2} s",
        settings.user,
        session.status_line(),
        started.elapsed().as_secs_f64()
    );
    screen.line(&session.status_line());
    for r in &session.set.refused {
        screen.line(&format!(
            "  {} v{} REFUSED: {} (the rest of the set runs)",
            r.name, r.version, r.reason
        ));
    }
    for u in &session.set.unavailable {
        screen.line(&format!("  {u}: no version published yet"));
    }
    if session.set.appliances.is_empty() {
        screen.line("No appliances are assigned to you; ask your administrator (collective-repo set assign).");
        let mut session = session;
        session.logout();
        return Outcome::LoggedOut;
    }
    let options = FillOptions {
        connections: config.connections,
        ..Default::default()
    };
    terminal::run_appliances(
        settings,
        password,
        session,
        cache,
        options,
        tty_in,
        &mut screen,
        started,
    )
}

/// How often the progress bars are redrawn and the appliances checked for a start.
pub const REDRAW: Duration = Duration::from_millis(500);
