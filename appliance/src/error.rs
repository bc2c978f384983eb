//! One error type for every format in this crate. Messages say what is wrong with the input
//! and, where there is one, what to do about it.

use thiserror::Error;

/// Errors from parsing, validating, encoding or verifying the shared formats.
#[derive(Debug, Error)]
pub enum Error {
    /// A field or structure violates the format (wrong length, bad hex, bad name...).
    #[error("invalid {what}: {why}")]
    Invalid { what: &'static str, why: String },
    /// The input declares a format version this build does not understand.
    #[error("unsupported {what} format version {found} (this build understands {supported}); upgrade this program")]
    UnsupportedFormat {
        what: &'static str,
        found: u32,
        supported: u32,
    },
    /// A chunk's content does not hash to its id: corrupt or tampered.
    #[error("chunk {expected} is corrupt: its content hashes to {actual}; fetch it again")]
    ChunkMismatch { expected: String, actual: String },
    /// A signature does not verify against any trusted key.
    #[error("manifest signature does not verify: {0}. The manifest was tampered with or signed by a key this terminal does not trust")]
    BadSignature(String),
    /// A password did not match its verifier.
    #[error("wrong password")]
    WrongPassword,
    /// JSON that does not parse or does not match the schema.
    #[error("malformed {what}: {source}")]
    Json {
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
    /// I/O while reading an image.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
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

impl From<::chunk::Error> for Error {
    fn from(e: ::chunk::Error) -> Self {
        match e {
            ::chunk::Error::Invalid { what, why } => Error::Invalid { what, why },
            ::chunk::Error::Mismatch { expected, actual } => {
                Error::ChunkMismatch { expected, actual }
            }
        }
    }
}
