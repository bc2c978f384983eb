//! Formats shared by every part of the Collective terminal: chunk ids, how images are cut
//! into chunks and how chunks are stored, appliance manifests and their ed25519 signatures,
//! user records and appliance sets, and the types and URL paths of the repository's wire API.
//!
//! `docs/formats.md` is the normative description; this crate is its reference
//! implementation. Every persisted or transmitted structure carries a format version, and
//! code that meets a version it does not know refuses it rather than guessing.

pub mod canonical;
pub mod chunk;
pub mod chunking;
pub mod error;
pub mod manifest;
pub mod names;
pub mod sealed;
pub mod sign;
pub mod user;
pub mod userkey;
pub mod wire;

pub use ::chunk::boot_trace;
pub use chunk::{
    check_stored, decode_chunk, decode_chunk_keeping_frames, encode_chunk, is_zero, ChunkEncoding,
    ChunkId, VerifiedChunk,
};
pub use chunking::{ChunkList, Chunker, DEFAULT_CHUNK_SIZE};
pub use error::{Error, Result};
pub use manifest::{Disk, DiskRole, Manifest, NetworkAttachment, MANIFEST_FORMAT};
pub use sealed::{SealedIndex, UserSealer};
pub use sign::{PublicKey, SecretKey, SignedManifest};
pub use user::{
    hash_password, kdf_params_of, verify_password, KdfParams, UserDiskManifest, UserRecord,
};
pub use userkey::{DataKey, RecoveryPublicKey, RecoverySecretKey, WrappedKey};
