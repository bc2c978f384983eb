//! What can be wrong with an id, a chunk or a chunk list.

/// Errors from parsing or checking chunk ids and chunk lists.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// A field violates the format (bad hex, bad chunk size, list of the wrong length).
    #[error("invalid {what}: {why}")]
    Invalid {
        /// What was being read.
        what: &'static str,
        /// What is wrong with it.
        why: String,
    },
    /// A chunk's content does not hash to its id: corrupt or tampered.
    #[error("chunk {expected} is corrupt: its content hashes to {actual}; fetch it again")]
    Mismatch {
        /// The id the chunk was asked for by.
        expected: String,
        /// The id its content has.
        actual: String,
    },
}

/// Result with this crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub(crate) fn invalid(what: &'static str, why: impl Into<String>) -> Self {
        Error::Invalid {
            what,
            why: why.into(),
        }
    }
}
