//! Chunk ids: the sha256 of a chunk's plaintext, the only name a chunk has.

use std::fmt;
use std::str::FromStr;

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// The sha256 of a chunk's plaintext. Displayed (and serialized, with the `serde` feature)
/// as 64 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct ChunkId(pub [u8; 32]);

impl ChunkId {
    /// The id of `data`.
    pub fn of(data: &[u8]) -> ChunkId {
        ChunkId(Sha256::digest(data).into())
    }

    /// The id of `len` zero bytes. Chunk lists never name zero chunks (they are `None`);
    /// this exists for [`crate::ChunkList::digest`], which must stay what caches already
    /// recorded, and for tools that check stored data.
    pub fn zero(len: usize) -> ChunkId {
        let zeros = [0u8; 4096];
        let mut h = Sha256::new();
        let mut left = len;
        while left > 0 {
            let n = left.min(zeros.len());
            h.update(&zeros[..n]);
            left -= n;
        }
        ChunkId(h.finalize().into())
    }

    /// The raw 32 bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// 64 lowercase hex digits.
    pub fn to_hex(&self) -> String {
        self.to_string()
    }

    /// Checks that `data` hashes to this id.
    pub fn verify(&self, data: &[u8]) -> Result<()> {
        let actual = ChunkId::of(data);
        if actual == *self {
            Ok(())
        } else {
            Err(Error::Mismatch {
                expected: self.to_hex(),
                actual: actual.to_hex(),
            })
        }
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

impl FromStr for ChunkId {
    type Err = Error;

    /// Only the canonical form: 64 lowercase hex digits (ids are file names on the
    /// repository, so two spellings of one id would be two files).
    fn from_str(s: &str) -> Result<ChunkId> {
        let digit = |c: u8| match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            _ => None,
        };
        let bad = || Error::invalid("chunk id", format!("{s:?} is not 64 lowercase hex digits"));
        let bytes = s.as_bytes();
        if bytes.len() != 64 {
            return Err(bad());
        }
        let mut out = [0u8; 32];
        for (byte, pair) in out.iter_mut().zip(bytes.chunks_exact(2)) {
            match (digit(pair[0]), digit(pair[1])) {
                (Some(hi), Some(lo)) => *byte = hi << 4 | lo,
                _ => return Err(bad()),
            }
        }
        Ok(ChunkId(out))
    }
}

#[cfg(feature = "serde")]
impl serde::Serialize for ChunkId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(feature = "serde")]
impl<'de> serde::Deserialize<'de> for ChunkId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<ChunkId, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
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
        assert!(id.to_string().to_uppercase().parse::<ChunkId>().is_err());
        assert!("abc".parse::<ChunkId>().is_err());
        assert!("zz".repeat(32).parse::<ChunkId>().is_err());
        assert!(id.verify(b"abc").is_ok());
        assert!(matches!(id.verify(b"abd"), Err(Error::Mismatch { .. })));
    }

    #[test]
    fn zero_ids_match_hashed_zeros() {
        for len in [0, 1, 4096, 10000, 65536] {
            assert_eq!(ChunkId::zero(len), ChunkId::of(&vec![0u8; len]));
        }
    }

    #[cfg(feature = "serde")]
    #[test]
    fn json_is_a_hex_string() {
        let id = ChunkId::of(b"abc");
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(json, format!("\"{id}\""));
        assert_eq!(serde_json::from_str::<ChunkId>(&json).unwrap(), id);
        assert!(serde_json::from_str::<ChunkId>("\"ABC\"").is_err());
    }
}
