//! Running a user's session once the console has the user name and password.
//!
//! The session is its own program (`/bin/session`, crate `session`): it logs in through
//! the receiver, fills the cache, runs the appliances and writes the user disks back. init
//! starts it on the console where the person sits, hands it the password on a pipe
//! (never on the command line or in the environment, which other processes can read),
//! waits for it, and shows the login prompt again. When it exits, everything of the
//! session goes with it.

use crate::status::StatusBoard;
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::sync::Arc;

/// How a login attempt ended.
#[derive(Debug, PartialEq, Eq)]
pub enum LoginOutcome {
    /// The person worked and logged out.
    Ended,
    /// Wrong user name or password (the session already said so, unless `reason`).
    Refused { reason: Option<String> },
    /// The session could not run (the session already said why, unless `reason`).
    Failed { reason: Option<String> },
}

/// Runs sessions; the console asks it after reading a user name and a password.
pub trait Sessions: Send + Sync {
    fn run(&self, console: &str, user: &str, password: &str) -> LoginOutcome;
}

/// Where the firmware keeps what it trusts, put there by `collective-image build`.
pub const TRUSTED_KEYS: &str = "/etc/collective/trusted-keys";
pub const REPOSITORY_CA: &str = "/etc/collective/ca.pem";

/// The session program of the firmware.
pub struct SessionProgram {
    pub program: PathBuf,
    pub board: Arc<StatusBoard>,
    /// `collective.log`: the session logs at the same level as init.
    pub log_level: log::LevelFilter,
    /// `collective.offline-days`, passed on when set (the session has the default).
    pub offline_days: Option<u32>,
    /// `collective.offline-users`, passed on when set.
    pub offline_users: Option<u32>,
}

impl SessionProgram {
    fn arguments(&self, user: &str) -> Vec<String> {
        let status = self.board.snapshot();
        let mut args = vec!["--user".to_string(), user.to_string()];
        if let Some(repo) = status.repo {
            args.extend(["--repo".to_string(), repo]);
        }
        args.push("--cache".into());
        args.push(match &status.cache_device {
            Some(dev) => dev.display().to_string(),
            None => "memory".into(),
        });
        args.extend(["--trusted-keys".to_string(), TRUSTED_KEYS.to_string()]);
        if std::path::Path::new(REPOSITORY_CA).exists() {
            args.extend(["--ca".to_string(), REPOSITORY_CA.to_string()]);
        }
        if let Some(days) = self.offline_days {
            args.extend(["--offline-days".to_string(), days.to_string()]);
        }
        if let Some(users) = self.offline_users {
            args.extend(["--offline-users".to_string(), users.to_string()]);
        }
        args.extend(["--password-fd".to_string(), "3".to_string()]);
        args.extend([
            "--log".to_string(),
            self.log_level.as_str().to_ascii_lowercase(),
        ]);
        args
    }
}

impl Sessions for SessionProgram {
    fn run(&self, console: &str, user: &str, password: &str) -> LoginOutcome {
        let failed = |reason: String| LoginOutcome::Failed {
            reason: Some(reason),
        };
        let tty = || crate::console::open_tty(console);
        let (Ok(stdin), Ok(stdout), Ok(stderr)) = (tty(), tty(), tty()) else {
            return failed(format!("cannot open /dev/{console} for the session"));
        };
        let (pw_read, mut pw_write) = match std::io::pipe() {
            Ok(p) => p,
            Err(e) => return failed(format!("cannot create a pipe: {e}")),
        };
        let pw_fd = std::os::fd::AsRawFd::as_raw_fd(&pw_read);
        let mut command = std::process::Command::new(&self.program);
        command
            .args(self.arguments(user))
            .stdin(stdin)
            .stdout(stdout)
            .stderr(stderr);
        // SAFETY: between fork and exec only async-signal-safe calls: dup2, fcntl, setsid.
        unsafe {
            command.pre_exec(move || {
                if pw_fd == 3 {
                    // dup2 onto itself keeps close-on-exec: clear it instead.
                    if libc::fcntl(3, libc::F_SETFD, 0) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                } else if libc::dup2(pw_fd, 3) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                libc::setsid();
                Ok(())
            });
        }
        let child = match command.spawn() {
            Ok(c) => c,
            Err(e) => {
                return failed(format!(
                    "cannot start the session ({}): {e}",
                    self.program.display()
                ))
            }
        };
        drop(pw_read);
        let _ = pw_write.write_all(format!("{password}\n").as_bytes());
        drop(pw_write);
        log::info!(
            "session of {user} started on {console} (pid {})",
            child.id()
        );
        match crate::children::wait(child.id() as i32, None) {
            Some(0) => LoginOutcome::Ended,
            Some(3) => LoginOutcome::Refused { reason: None },
            Some(1) | Some(2) => LoginOutcome::Failed { reason: None },
            Some(code) => failed(format!(
                "the session ended unexpectedly (code {code}); your user data stays in the cache"
            )),
            None => failed("lost track of the session".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::TerminalStatus;

    #[test]
    fn the_session_gets_the_user_repository_cache_and_log_level() {
        let board = Arc::new(StatusBoard::new(TerminalStatus {
            repo: Some("http://10.0.2.2:8080".into()),
            ..TerminalStatus::default()
        }));
        let program = SessionProgram {
            program: PathBuf::from("/bin/session"),
            board,
            log_level: log::LevelFilter::Debug,
            offline_days: None,
            offline_users: None,
        };
        let args = program.arguments("alice").join(" ");
        assert!(
            args.starts_with("--user alice --repo http://10.0.2.2:8080 --cache memory"),
            "{args}"
        );
        assert!(args.ends_with("--log debug"), "{args}");
        assert!(
            !args.contains("--offline"),
            "defaults are the session's: {args}"
        );
    }

    #[test]
    fn offline_settings_reach_the_session() {
        let settings = crate::settings::Settings::parse(
            "collective.offline-days=0 collective.offline-users=5",
        );
        let program = SessionProgram {
            program: PathBuf::from("/bin/session"),
            board: Arc::new(StatusBoard::new(TerminalStatus::default())),
            log_level: log::LevelFilter::Info,
            offline_days: settings.offline_days,
            offline_users: settings.offline_users,
        };
        let args = program.arguments("alice").join(" ");
        assert!(
            args.contains("--offline-days 0 --offline-users 5 --password-fd 3"),
            "{args}"
        );
    }
}
