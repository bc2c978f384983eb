//! The one chunk identity that every part of the terminal shares.
//!
//! * [`ChunkId`]: a chunk's name, the sha256 of its plaintext.
//! * [`ChunkList`]: an image (disk, kernel, initrd) as fixed-size chunks, with the one
//!   zero-chunk rule: an all-zero chunk is `None`, never stored, fetched or cached.
//! * [`frames`]: a chunk as independent 4 KiB lz4 frames behind a table of lengths, the
//!   encoding the repository stores and the cache keeps as it arrived (one codec, so a
//!   chunk is compressed once, by the publisher); [`lz4dec`] its fast decoder.
//! * [`boot_trace`]: the order in which a guest first reads its blobs, as `vmm run
//!   --trace-reads` writes it and `collective-repo publish --boot-trace` reads it.
//!
//! A leaf crate on purpose: the cache (`cachefs`) and `init` use ids and lists without
//! linking the signature, password and JSON crates that `appliance` needs for manifests.
//! `appliance` re-exports everything here. docs/formats.md is the normative description.

pub mod boot_trace;
mod error;
pub mod frames;
mod id;
mod list;
pub mod lz4dec;
#[cfg(test)]
mod test_rng;

pub use error::{Error, Result};
pub use id::ChunkId;
pub use list::{
    is_zero, validate_chunk_size, ChunkList, DEFAULT_CHUNK_SIZE, MAX_CHUNK_SIZE, MIN_CHUNK_SIZE,
};
