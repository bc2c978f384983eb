//! The one chunk identity that every part of the terminal shares.
//!
//! * [`ChunkId`]: a chunk's name, the sha256 of its plaintext.
//! * [`ChunkList`]: an image (disk, kernel, initrd) as fixed-size chunks, with the one
//!   zero-chunk rule: an all-zero chunk is `None`, never stored, fetched or cached.
//! * [`boot_trace`]: the order in which a guest first reads its blobs, as `vmm run
//!   --trace-reads` writes it and `collective-repo publish --boot-trace` reads it.
//!
//! A leaf crate on purpose: the cache (`cachefs`) and `init` use ids and lists without
//! linking the signature, password and JSON crates that `appliance` needs for manifests.
//! `appliance` re-exports everything here. docs/formats.md is the normative description.

pub mod boot_trace;
mod error;
mod id;
mod list;

pub use error::{Error, Result};
pub use id::ChunkId;
pub use list::{
    is_zero, validate_chunk_size, ChunkList, DEFAULT_CHUNK_SIZE, MAX_CHUNK_SIZE, MIN_CHUNK_SIZE,
};
