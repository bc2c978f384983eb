//! The receiver's error type. Each variant is something a caller (init's login screen,
//! the CLI) reacts to differently, so the variants follow the reactions, not the causes:
//! "ask for the password again", "go offline", "tell the user the appliance is refused".

use thiserror::Error;

/// Everything that can go wrong talking to the repository or filling the cache.
#[derive(Debug, Error)]
pub enum Error {
    /// The repository answered: wrong user name or password (it deliberately does not say
    /// which). Ask again; never retried automatically.
    #[error("wrong user name or password")]
    BadCredentials,
    /// Too many failed logins; the repository asks to wait. A user with an offline record
    /// on this terminal logs in offline instead.
    #[error("too many failed logins: wait {retry_after_secs} s before trying again")]
    RateLimited { retry_after_secs: u64 },
    /// The repository ended the session (401 `session_revoked`): the user's password was
    /// changed or the user was removed after this login. Not retried: a new login is
    /// needed, and local changes stay where they are.
    #[error("the repository ended this session: the password was changed or the user was removed after this login; log in again")]
    SessionRevoked,
    /// The repository could not be reached (DNS, connect, TLS, timeout, reset): the
    /// terminal is offline as far as the receiver is concerned.
    #[error("the repository at {url} cannot be reached: {why}")]
    Unreachable { url: String, why: String },
    /// The repository is at one of its limits (503 or 429 with `Retry-After`): worth a
    /// retry after the time it asks for; retried automatically.
    #[error(
        "the repository at {url} is busy ({what}): it asks to try again in {retry_after_secs} s"
    )]
    Busy {
        url: String,
        what: String,
        retry_after_secs: u64,
    },
    /// The repository answered with an error status.
    #[error("the repository refused {what}: HTTP {status} {code}: {message}")]
    Repository {
        what: String,
        status: u16,
        code: String,
        message: String,
    },
    /// The repository sent something that is not what the protocol says.
    #[error("the repository sent a bad {what}: {why}")]
    Protocol { what: String, why: String },
    /// A manifest failed its checks (digest, signature, format); the appliance is refused.
    #[error("manifest of {appliance} version {version} refused: {why}")]
    BadManifest {
        appliance: String,
        version: u64,
        why: String,
    },
    /// Offline, and this user never logged in on this terminal (or the record is gone).
    #[error("the terminal is offline and user {0} has never logged in on it: connect it to the network to log in")]
    NoOfflineRecord(String),
    /// Offline, and the user's last online login on this terminal is older than
    /// `RepoConfig::offline_days`: the copy here may be of a password changed or a user
    /// removed since. Only an online login renews it.
    #[error("offline login for {user} on this terminal expired on {expired} (the last online login here was on {last_online}; offline login works for {days} day(s) after it). Connect the terminal to the network and log in online; the repository is not available now ({reason})")]
    OfflineExpired {
        user: String,
        last_online: String,
        expired: String,
        days: u32,
        reason: String,
    },
    /// Offline, and this terminal allows no offline login (`collective.offline-days=0`).
    #[error("offline login is turned off on this terminal (collective.offline-days=0) and the repository is not available ({reason}): connect the terminal to the network and log in online")]
    OfflineDisabled { reason: String },
    /// A user-disk commit lost the compare-and-swap: someone committed first.
    #[error("user disk {appliance}/{disk} was changed elsewhere (repository at version {current}, this terminal started from {expected}); the local changes are kept on this terminal, nothing was overwritten")]
    Conflict {
        appliance: String,
        disk: String,
        expected: u64,
        current: u64,
    },
    /// A chunk kept arriving corrupt or could not be fetched after every retry.
    #[error("chunk {id} could not be fetched after {attempts} attempts: {why}")]
    ChunkFailed {
        id: String,
        attempts: u32,
        why: String,
    },
    /// The cache failed.
    #[error("cache: {0}")]
    Cache(#[from] cachefs::Error),
    /// A shared format check failed.
    #[error("{0}")]
    Format(#[from] appliance::Error),
    /// Local configuration (keys, CA, URL) is unusable.
    #[error("configuration: {0}")]
    Config(String),
    /// The user's data key cannot be opened or kept (a record damaged or changed behind the
    /// terminal's back): nothing of the user's data can be read or written back.
    #[error("the data key of {user} cannot be used: {why}")]
    DataKey { user: String, why: String },
    /// A committed user-disk manifest fails its seal or does not match the session: it was
    /// not written by this user's terminal, and is not used.
    #[error("user disk {appliance}/{disk} refused: {why}")]
    BadUserDisk {
        appliance: String,
        disk: String,
        why: String,
    },
    /// The fill was stopped by its owner.
    #[error("the fill was cancelled")]
    Cancelled,
}

impl Error {
    /// True if the cause is the network or the repository being down, i.e. worth a retry
    /// later and a reason to fall back to offline mode.
    pub fn is_unreachable(&self) -> bool {
        match self {
            Error::Unreachable { .. } | Error::Busy { .. } => true,
            Error::Repository { status, .. } => *status >= 500,
            _ => false,
        }
    }
}

/// Result with [`Error`].
pub type Result<T> = std::result::Result<T, Error>;
