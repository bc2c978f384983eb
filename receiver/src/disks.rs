//! Turning the set's chunk lists into what the VMM reads: cachefs views (misses go to the
//! [`crate::Fetcher`]) and user-disk overlays under stable names.

use std::sync::Arc;

use appliance::ChunkedBlob;
use cachefs::{Cache, ChunkSource, DiskView, Overlay};

use crate::error::Result;
use crate::set::cid;

/// The cache's chunk list for a blob (zero chunks become cachefs's zero ids, which views
/// serve without reading anything).
pub fn chunk_list(blob: &ChunkedBlob) -> Vec<cachefs::ChunkId> {
    blob.chunks
        .iter()
        .enumerate()
        .map(|(i, id)| match id {
            Some(id) => cid(id),
            None => cachefs::ChunkId::zero(blob.chunk_len(i as u64)),
        })
        .collect()
}

/// The inverse of [`chunk_list`]: cachefs ids back to a blob (zero ids become `None`).
pub fn blob_of(list: &[cachefs::ChunkId], size: u64, chunk_size: u32) -> ChunkedBlob {
    let mut blob = ChunkedBlob {
        size,
        chunk_size,
        chunks: Vec::with_capacity(list.len()),
    };
    for (i, id) in list.iter().enumerate() {
        let zero = cachefs::ChunkId::zero(blob.chunk_len(i as u64));
        blob.chunks.push(if *id == zero {
            None
        } else {
            Some(appliance::ChunkId(id.0))
        });
    }
    blob
}

/// A read-only view of `blob`; misses are fetched from `source` (the session's fetcher,
/// or `cachefs::NoSource` offline).
pub fn view(
    cache: &Arc<Cache>,
    blob: &ChunkedBlob,
    source: Arc<dyn ChunkSource>,
) -> Result<Arc<DiskView>> {
    Ok(Arc::new(DiskView::new(
        cache.clone(),
        chunk_list(blob),
        blob.chunk_size,
        blob.size,
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
    blob: &ChunkedBlob,
    source: Arc<dyn ChunkSource>,
) -> Result<Overlay> {
    let v = view(cache, blob, source)?;
    Ok(Overlay::user(v, &user_overlay_name(user, appliance, disk))?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_lists_round_trip_with_zero_chunks() {
        let a = appliance::ChunkId::of(b"x");
        // 3 chunks of 64 KiB and a short last one of 4 KiB; chunks 1 and 3 are zero.
        let blob = ChunkedBlob {
            size: 3 * 65536 + 4096,
            chunk_size: 65536,
            chunks: vec![Some(a), None, Some(a), None],
        };
        let list = chunk_list(&blob);
        assert_eq!(list[1], cachefs::ChunkId::zero(65536));
        assert_eq!(
            list[3],
            cachefs::ChunkId::zero(4096),
            "the short last zero chunk has its own id"
        );
        assert_eq!(blob_of(&list, blob.size, blob.chunk_size), blob);
    }
}
