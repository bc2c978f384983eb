//! Chunk ids: the sha256 of a chunk's plaintext.
//!
//! Kept in its own small module because the `appliance` crate will own the
//! shared `ChunkId` type later; this module then becomes a re-export.

use sha2::{Digest, Sha256};
use std::fmt;
use std::str::FromStr;

/// The sha256 of a chunk's plaintext: the only name a chunk has.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct ChunkId(pub [u8; 32]);

impl ChunkId {
    /// Hashes `data` (the chunk's plaintext).
    pub fn of(data: &[u8]) -> ChunkId {
        ChunkId(Sha256::digest(data).into())
    }

    /// The id of a chunk of `len` zero bytes.
    pub fn zero(len: usize) -> ChunkId {
        let mut h = Sha256::new();
        let z = [0u8; 4096];
        let mut left = len;
        while left > 0 {
            let n = left.min(z.len());
            h.update(&z[..n]);
            left -= n;
        }
        ChunkId(h.finalize().into())
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Display for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChunkId({self})")
    }
}

/// Why a string is not a chunk id.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("not a chunk id (want 64 hex digits): {0:?}")]
pub struct ParseChunkIdError(pub String);

impl FromStr for ChunkId {
    type Err = ParseChunkIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let b = s.as_bytes();
        if b.len() != 64 {
            return Err(ParseChunkIdError(s.to_string()));
        }
        let mut out = [0u8; 32];
        for (i, pair) in b.chunks(2).enumerate() {
            let hex = |c: u8| match c {
                b'0'..=b'9' => Some(c - b'0'),
                b'a'..=b'f' => Some(c - b'a' + 10),
                b'A'..=b'F' => Some(c - b'A' + 10),
                _ => None,
            };
            match (hex(pair[0]), hex(pair[1])) {
                (Some(h), Some(l)) => out[i] = h << 4 | l,
                _ => return Err(ParseChunkIdError(s.to_string())),
            }
        }
        Ok(ChunkId(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip_and_known_value() {
        let id = ChunkId::of(b"abc");
        assert_eq!(
            id.to_string(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(id.to_string().parse::<ChunkId>().unwrap(), id);
        assert!("xyz".parse::<ChunkId>().is_err());
        assert!("zz".repeat(32).parse::<ChunkId>().is_err());
        assert_eq!(ChunkId::zero(10000), ChunkId::of(&vec![0u8; 10000]));
    }
}
