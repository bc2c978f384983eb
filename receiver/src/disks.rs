//! Turning the set's chunk lists into what the VMM reads: cachefs views (misses go to the
//! [`crate::Fetcher`]) and user-disk overlays under stable names.

use std::sync::Arc;

use appliance::ChunkList;
use cachefs::{Cache, ChunkSource, DiskView, Overlay};

use crate::error::Result;

/// A read-only view of `blob`; misses are fetched from `source` (the session's fetcher,
/// or `cachefs::NoSource` offline).
pub fn view(
    cache: &Arc<Cache>,
    blob: &ChunkList,
    source: Arc<dyn ChunkSource>,
) -> Result<Arc<DiskView>> {
    Ok(Arc::new(DiskView::new(
        cache.clone(),
        blob.clone(),
        source,
    )?))
}

/// Name of the persistent overlay of a user disk.
pub fn user_overlay_name(user: &str, appliance: &str, disk: &str) -> String {
    format!("user/{user}/{appliance}/{disk}")
}

/// Opens (or creates) the persistent overlay of a user disk over its session content.
pub fn open_user_disk(
    cache: &Arc<Cache>,
    user: &str,
    appliance: &str,
    disk: &str,
    blob: &ChunkList,
    source: Arc<dyn ChunkSource>,
) -> Result<Overlay> {
    let v = view(cache, blob, source)?;
    Ok(Overlay::user(v, &user_overlay_name(user, appliance, disk))?)
}
