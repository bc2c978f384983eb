//! Chunk lists: an image cut into fixed-size, offset-aligned chunks.
//!
//! Chunk `i` covers bytes `[i*chunk_size, (i+1)*chunk_size)`; the last chunk may be
//! shorter. The chunk size is a per-image parameter (a power of two, 4 KiB to 4 MiB), 64 KiB
//! by default; docs/formats.md says why fixed and why 64 KiB.
//!
//! The zero-chunk rule, the same everywhere: a chunk whose bytes are all zero is `None`
//! (JSON `null`). It is never stored, fetched, cached or pinned, and reads of it are
//! answered with zeros. About 30 % of a typical ext4 image, and all of a fresh user disk.

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::id::ChunkId;

/// Default chunk size: 64 KiB.
pub const DEFAULT_CHUNK_SIZE: u32 = 64 * 1024;
/// Smallest allowed chunk size: one filesystem block.
pub const MIN_CHUNK_SIZE: u32 = 4096;
/// Largest plaintext chunk any reader accepts (guards decompression against bombs).
pub const MAX_CHUNK_SIZE: usize = 4 << 20;

/// Checks that `chunk_size` is a power of two between 4 KiB and 4 MiB.
pub fn validate_chunk_size(chunk_size: u32) -> Result<()> {
    if !chunk_size.is_power_of_two()
        || chunk_size < MIN_CHUNK_SIZE
        || chunk_size as usize > MAX_CHUNK_SIZE
    {
        return Err(Error::invalid(
            "chunk size",
            format!(
                "{chunk_size} must be a power of two between {MIN_CHUNK_SIZE} and {MAX_CHUNK_SIZE}"
            ),
        ));
    }
    Ok(())
}

/// True if every byte is zero: such a chunk is `None` in a chunk list.
pub fn is_zero(data: &[u8]) -> bool {
    // OR-fold 64-byte blocks without early exit inside a block: the compiler vectorizes
    // this, and a non-zero chunk usually fails in the first block anyway.
    let mut blocks = data.chunks_exact(64);
    for block in &mut blocks {
        if block.iter().fold(0u8, |acc, &b| acc | b) != 0 {
            return false;
        }
    }
    blocks.remainder().iter().all(|&b| b == 0)
}

/// An image described as a list of chunks. `chunks[i]` is `None` for an all-zero chunk.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Serialize, serde::Deserialize),
    serde(deny_unknown_fields)
)]
pub struct ChunkList {
    /// Size of the image in bytes.
    pub size: u64,
    /// Chunk size in bytes (power of two).
    pub chunk_size: u32,
    /// One entry per chunk, in offset order; `None` is an all-zero chunk.
    pub chunks: Vec<Option<ChunkId>>,
}

impl ChunkList {
    /// An all-zero image of `size` bytes (for example a fresh user disk).
    pub fn zeros(size: u64, chunk_size: u32) -> Result<ChunkList> {
        validate_chunk_size(chunk_size)?;
        let n = usize::try_from(size.div_ceil(u64::from(chunk_size)))
            .map_err(|_| Error::invalid("chunk list", format!("{size} bytes is too large")))?;
        Ok(ChunkList {
            size,
            chunk_size,
            chunks: vec![None; n],
        })
    }

    /// Cuts `data` held in memory (small images, tests).
    pub fn of_data(data: &[u8], chunk_size: u32) -> Result<ChunkList> {
        validate_chunk_size(chunk_size)?;
        let chunks = data
            .chunks(chunk_size as usize)
            .map(|c| (!is_zero(c)).then(|| ChunkId::of(c)))
            .collect();
        Ok(ChunkList {
            size: data.len() as u64,
            chunk_size,
            chunks,
        })
    }

    /// A list naming every chunk (none of them treated as zero): tests, and images cut
    /// elsewhere. Call [`ChunkList::validate`] before trusting it.
    pub fn of_ids(ids: impl IntoIterator<Item = ChunkId>, chunk_size: u32, size: u64) -> ChunkList {
        ChunkList {
            size,
            chunk_size,
            chunks: ids.into_iter().map(Some).collect(),
        }
    }

    /// Number of chunks `size` needs.
    pub fn expected_chunks(&self) -> u64 {
        self.size.div_ceil(u64::from(self.chunk_size))
    }

    /// Number of entries (zero chunks included).
    pub fn len(&self) -> usize {
        self.chunks.len()
    }

    /// True for an image of no bytes.
    pub fn is_empty(&self) -> bool {
        self.chunks.is_empty()
    }

    /// Checks chunk size and that the list length matches the size. Every list that comes
    /// from outside the process passes through here before it is used.
    pub fn validate(&self) -> Result<()> {
        validate_chunk_size(self.chunk_size)?;
        if self.chunks.len() as u64 != self.expected_chunks() {
            return Err(Error::invalid(
                "chunk list",
                format!(
                    "{} chunks listed, but a {}-byte image in {}-byte chunks has {}",
                    self.chunks.len(),
                    self.size,
                    self.chunk_size,
                    self.expected_chunks()
                ),
            ));
        }
        Ok(())
    }

    /// Index of the chunk holding byte `offset`.
    pub fn chunk_index(&self, offset: u64) -> u64 {
        offset / u64::from(self.chunk_size)
    }

    /// Indices of the chunks covering bytes `[offset, offset + len)`, clipped to the image
    /// (what a block device read of that range needs).
    pub fn chunks_covering(&self, offset: u64, len: u64) -> std::ops::Range<u64> {
        let end = offset.saturating_add(len).min(self.size);
        if len == 0 || offset >= end {
            return 0..0;
        }
        self.chunk_index(offset)..(end - 1) / u64::from(self.chunk_size) + 1
    }

    /// Length of chunk `index` (the last one may be short; 0 past the end).
    pub fn chunk_len(&self, index: u64) -> usize {
        let start = index.saturating_mul(u64::from(self.chunk_size));
        self.size
            .saturating_sub(start)
            .min(u64::from(self.chunk_size)) as usize
    }

    /// The distinct non-zero chunk ids, in first-use order: what a cache pins and a
    /// terminal fetches for this image.
    pub fn distinct_chunks(&self) -> Vec<ChunkId> {
        let mut seen = std::collections::HashSet::new();
        self.chunks
            .iter()
            .flatten()
            .filter(|id| seen.insert(**id))
            .copied()
            .collect()
    }

    /// sha256 over the list: names the exact base a copy-on-write overlay applies to.
    ///
    /// Hashes each entry's 32 id bytes in order, a zero chunk as the id of its zero bytes:
    /// the digest caches recorded before lists had `None` entries, so overlays kept in an
    /// existing cache still find their base.
    pub fn digest(&self) -> [u8; 32] {
        let full = ChunkId::zero(self.chunk_size as usize);
        let last_index = self.chunks.len().saturating_sub(1) as u64;
        let last = ChunkId::zero(self.chunk_len(last_index));
        let mut h = Sha256::new();
        for (i, entry) in self.chunks.iter().enumerate() {
            let id = match entry {
                Some(id) => id,
                None if i as u64 == last_index => &last,
                None => &full,
            };
            h.update(id.0);
        }
        h.finalize().into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuts_with_short_tail_and_zero_chunks() {
        let mut img = vec![0u8; 3 * 4096 + 100];
        img[5000] = 1;
        img[3 * 4096 + 5] = 2;
        let list = ChunkList::of_data(&img, 4096).unwrap();
        assert_eq!(list.size, img.len() as u64);
        assert_eq!(
            list.chunks,
            [
                None,
                Some(ChunkId::of(&img[4096..8192])),
                None,
                Some(ChunkId::of(&img[3 * 4096..]))
            ]
        );
        assert_eq!(list.chunk_len(3), 100);
        assert_eq!(list.chunk_len(9), 0);
        list.validate().unwrap();
        assert_eq!(list.distinct_chunks().len(), 2);
        assert_eq!(list.chunks_covering(0, 4096), 0..1);
        assert_eq!(list.chunks_covering(4095, 2), 0..2);
        assert_eq!(list.chunks_covering(3 * 4096, 1 << 20), 3..4);
        assert_eq!(list.chunks_covering(1 << 20, 10), 0..0);
        assert_eq!(list.chunks_covering(5, 0), 0..0);
    }

    #[test]
    fn rejects_bad_sizes_and_lengths() {
        assert!(validate_chunk_size(1000).is_err());
        assert!(validate_chunk_size(8 << 20).is_err());
        assert!(ChunkList::zeros(10, 12288).is_err());
        let mut list = ChunkList::zeros(10 * 65536, DEFAULT_CHUNK_SIZE).unwrap();
        list.validate().unwrap();
        list.chunks.pop();
        assert!(list.validate().is_err());
    }

    #[test]
    fn digest_counts_zero_chunks_as_their_zero_ids() {
        let mut img = vec![0u8; 2 * 4096 + 10];
        img[4096] = 7;
        let list = ChunkList::of_data(&img, 4096).unwrap();
        let mut h = Sha256::new();
        h.update(ChunkId::zero(4096).0);
        h.update(ChunkId::of(&img[4096..8192]).0);
        h.update(ChunkId::zero(10).0);
        assert_eq!(list.digest(), <[u8; 32]>::from(h.finalize()));
        let mut other = list.clone();
        other.chunks[0] = Some(ChunkId::of(b"x"));
        assert_ne!(other.digest(), list.digest());
    }

    #[test]
    fn zero_detection() {
        assert!(is_zero(&[0u8; 65536]));
        let mut v = vec![0u8; 65537];
        assert!(is_zero(&v[1..]));
        v[65536] = 1;
        assert!(!is_zero(&v[1..]));
        assert!(is_zero(&[]));
    }

    #[cfg(feature = "serde")]
    #[test]
    fn json_shape() {
        let list = ChunkList::of_data(&[1u8; 5000], 4096).unwrap();
        let json = serde_json::to_string(&ChunkList::zeros(4096, 4096).unwrap()).unwrap();
        assert_eq!(json, r#"{"size":4096,"chunk_size":4096,"chunks":[null]}"#);
        let back: ChunkList = serde_json::from_str(&serde_json::to_string(&list).unwrap()).unwrap();
        assert_eq!(back, list);
        assert!(serde_json::from_str::<ChunkList>(
            r#"{"size":1,"chunk_size":4096,"chunks":[],"x":1}"#
        )
        .is_err());
    }
}
