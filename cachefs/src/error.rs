//! The crate's error type: every failure a caller can act on has its own variant.

use chunk::ChunkId;
use std::io;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("I/O error: {0}")]
    Io(#[from] io::Error),
    #[error("device does not hold a cachefs (no valid superblock); format it first")]
    NotCacheFs,
    #[error("device holds data that is not a cachefs; refusing to format without force")]
    DeviceNotEmpty,
    #[error("cachefs format version {0} is not supported (this build reads version {1})")]
    UnsupportedVersion(u32, u32),
    #[error("cachefs metadata is corrupt: {0}")]
    Corrupt(String),
    #[error("device too small: {0} bytes (need at least {1})")]
    TooSmall(u64, u64),
    #[error("cache full: {needed} bytes needed and every remaining chunk is pinned or in use")]
    Full { needed: u64 },
    #[error("cache metadata full: {0}")]
    MetadataFull(String),
    #[error("chunk {0} is not in the cache")]
    Missing(ChunkId),
    #[error("chunk data does not hash to its id {0}")]
    HashMismatch(ChunkId),
    #[error("chunk source failed for {0}: {1}")]
    Source(ChunkId, String),
    #[error("invalid argument: {0}")]
    Invalid(String),
    #[error("overlay data corrupt at disk offset {0}")]
    OverlayCorrupt(u64),
}

pub type Result<T> = std::result::Result<T, Error>;
