//! The session's sealed user chunks: which plaintext chunk of a user disk is stored on the
//! repository under which sealed id, and the user's sealer to open and make them.
//!
//! The cache, the overlays and the VMM only know plaintext ids (a chunk must hash to its
//! id before a guest sees it). The repository only knows sealed ids. This map joins the
//! two: it is filled from the committed user-disk manifests at login (their sealed index
//! opened with the user's key) and from each write-back, and the [`crate::Fetcher`] looks
//! every chunk up in it, so the fill and demand reads fetch a user chunk sealed and open it
//! without any caller knowing.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use appliance::{ChunkId, ChunkList, UserDiskManifest, UserSealer};

use crate::error::{Error, Result};

/// Plaintext id to sealed id, for one user's session, and the user's sealer.
#[derive(Debug)]
pub struct SealedChunks {
    sealer: Arc<UserSealer>,
    map: RwLock<HashMap<ChunkId, ChunkId>>,
}

impl SealedChunks {
    /// An empty index for the user whose sealer this is.
    pub fn new(sealer: Arc<UserSealer>) -> SealedChunks {
        SealedChunks {
            sealer,
            map: RwLock::new(HashMap::new()),
        }
    }

    /// The user's sealer.
    pub fn sealer(&self) -> &UserSealer {
        &self.sealer
    }

    /// The sealed id of plaintext chunk `plain`, if it is a sealed user chunk.
    pub fn sealed_id(&self, plain: &ChunkId) -> Option<ChunkId> {
        self.map.read().ok().and_then(|m| m.get(plain).copied())
    }

    /// Records that `plain` is stored sealed as `sealed`.
    pub fn insert(&self, plain: ChunkId, sealed: ChunkId) {
        if let Ok(mut m) = self.map.write() {
            m.insert(plain, sealed);
        }
    }

    /// Records every pair of two chunk lists of the same shape.
    pub fn insert_lists(&self, plain: &ChunkList, sealed: &ChunkList) {
        if let Ok(mut m) = self.map.write() {
            for (p, s) in plain.chunks.iter().zip(&sealed.chunks) {
                if let (Some(p), Some(s)) = (p, s) {
                    m.insert(*p, *s);
                }
            }
        }
    }

    /// Checks a committed manifest's seal, learns its chunks, and returns the disk's
    /// plaintext content. A format-1 manifest (committed before sealing) is plaintext and
    /// is returned as it is: the next write-back seals it.
    pub fn open_manifest(&self, m: &UserDiskManifest) -> Result<ChunkList> {
        let plain = self
            .sealer
            .open_manifest(m)
            .map_err(|e| Error::BadUserDisk {
                appliance: m.appliance.clone(),
                disk: m.disk.clone(),
                why: e.to_string(),
            })?;
        if m.is_sealed() {
            self.insert_lists(&plain, &m.image);
        }
        Ok(plain)
    }
}
