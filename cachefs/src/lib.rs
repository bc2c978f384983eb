//! The terminal's on-disk cache: a crash-safe, content-addressed chunk store
//! with disk-image views and copy-on-write overlays.
//!
//! * [`Cache`]: chunks keyed by sha256 ([`ChunkId`]) on a [`Storage`] (a raw
//!   partition or a fixed-size file), LRU eviction, named pins, crash
//!   recovery (journal + A/B checkpoints).
//! * [`DiskView`]: a disk image as a chunk list; missing chunks come from a
//!   [`ChunkSource`] and are verified before use.
//! * [`Overlay`]: copy-on-write writes over a view, thrown away (system
//!   disks) or persistent with write-back (user disks).
//!
//! See `docs/cachefs.md` for the on-disk format and the crash-consistency argument.

pub mod alloc;
pub mod cache;
pub mod codec;
pub mod error;
/// Crash-test devices and a seeded PRNG: for cachefs's own tests and benches only, so not
/// in the library other crates build (the `test-support` feature, which cachefs's
/// dev-dependency on itself turns on).
#[cfg(any(test, feature = "test-support"))]
#[doc(hidden)]
pub mod fault;
pub mod format;
pub mod overlay;
pub mod storage;
pub mod view;

pub use cache::{Cache, CreateOptions, OpenOptions, RecoveryReport, Stats, VerifyReport};
pub use chunk::{ChunkId, ChunkList};
pub use error::{Error, Result};
pub use overlay::{Overlay, OverlayKind, WriteBack};
pub use storage::{FileStorage, MemStorage, Storage};
pub use view::{ChunkSource, DirSource, DiskView, MemSource, NoSource, SourceError};
