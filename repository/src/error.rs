//! The repository's error type: every message names the thing and says what to do.

use std::path::PathBuf;

use thiserror::Error;

/// Errors of the repository library and CLI.
#[derive(Debug, Error)]
pub enum Error {
    /// Format violation in shared data.
    #[error(transparent)]
    Format(#[from] appliance::Error),
    /// I/O, with what was being done. A full disk gets advice.
    #[error("{context}: {source}{}", enospc_hint(source))]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// The directory is not a repository.
    #[error(
        "{0} is not a repository (no repository.json): create one with `collective-repo init {0}`"
    )]
    NotARepository(PathBuf),
    /// A file given on the command line does not exist or cannot be read.
    #[error("{what} {path}: {why}; check the path and try again")]
    Input {
        what: &'static str,
        path: PathBuf,
        why: String,
    },
    /// Anything the user asked for that cannot be done as asked.
    #[error("{0}")]
    Usage(String),
    /// A user that exists already (on add) or does not exist (on change).
    #[error("{0}")]
    User(String),
    /// A tool this command needs failed (mkfs.ext4, debugfs, ...).
    #[error("{0}")]
    Tool(String),
}

fn enospc_hint(e: &std::io::Error) -> &'static str {
    if e.raw_os_error() == Some(28) {
        " (the disk is full: free space or move the repository to a bigger disk, then run the command again; nothing half-written was made visible, and chunks already stored will be reused)"
    } else {
        ""
    }
}

/// Result with the repository's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

impl From<appliance::chunk::ChunkError> for Error {
    fn from(e: appliance::chunk::ChunkError) -> Self {
        Error::Format(e.into())
    }
}
