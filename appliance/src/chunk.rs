//! The stored encoding of one chunk (ids are the `chunk` crate's, re-exported here).
//!
//! A chunk's id is the sha256 of its plaintext. Stored (on the repository, on the wire)
//! a chunk is an 8-byte header followed by the raw bytes, one lz4 block, or 4 KiB lz4
//! frames:
//!
//! ```text
//! offset 0: b"CK"           magic
//! offset 2: u8  version     CHUNK_FORMAT (1)
//! offset 3: u8  encoding    0 = raw, 1 = lz4 block (lz4_flex, no size prefix),
//!                           2 = 4 KiB frames (chunk::frames: u16 lengths, then frames)
//! offset 4: u32 plain_len   little-endian length of the plaintext
//! offset 8: payload
//! ```
//!
//! The encoder writes frames (2) when they save at least one 4 KiB block, raw (0)
//! otherwise, so incompressible data (already compressed files, encrypted user data)
//! costs no decompression. Frames are what the terminal's cache stores, so a terminal
//! keeps a chunk as it arrived instead of compressing it again; encoding 1 is still
//! read (chunks published before frames). Zero chunks are never encoded: chunk lists
//! record them as absent (see [`crate::chunking`]).

use crate::error::{Error, Result};

pub use ::chunk::{is_zero, ChunkId, Error as ChunkError, MAX_CHUNK_SIZE};

/// Version byte of the stored chunk encoding.
pub const CHUNK_FORMAT: u8 = 1;
/// Size of the stored chunk header.
pub const CHUNK_HEADER_LEN: usize = 8;

/// How a stored chunk's payload is encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChunkEncoding {
    /// The plaintext as is.
    Raw = 0,
    /// One lz4 block (no longer written; read for chunks published before frames).
    Lz4 = 1,
    /// Independent 4 KiB lz4 frames behind a table of their lengths ([`::chunk::frames`]).
    Frames = 2,
}

/// A stored chunk checked against its id: its plaintext, and its frames when it arrived
/// in them (the cache stores those as they are).
#[derive(Debug)]
pub struct VerifiedChunk {
    /// The plaintext; it hashes to the id.
    pub plain: Vec<u8>,
    /// The encoding-2 payload, if that is how it was stored.
    pub frames: Option<Vec<u8>>,
    /// How it was stored: raw means its publisher found it incompressible.
    pub encoding: ChunkEncoding,
}

/// Encodes a plaintext chunk for storage: 4 KiB lz4 frames if they save at least one
/// 4 KiB block, raw otherwise.
pub fn encode_chunk(plain: &[u8]) -> Vec<u8> {
    assert!(
        plain.len() <= MAX_CHUNK_SIZE,
        "chunk larger than MAX_CHUNK_SIZE"
    );
    let framed = ::chunk::frames::compress(plain);
    let (encoding, payload): (ChunkEncoding, &[u8]) = match &framed {
        Some(f) => (ChunkEncoding::Frames, f),
        None => (ChunkEncoding::Raw, plain),
    };
    let mut out = Vec::with_capacity(CHUNK_HEADER_LEN + payload.len());
    out.extend_from_slice(b"CK");
    out.push(CHUNK_FORMAT);
    out.push(encoding as u8);
    out.extend_from_slice(&(plain.len() as u32).to_le_bytes());
    out.extend_from_slice(payload);
    out
}

/// Parses a stored chunk's header: (encoding, plaintext length).
pub fn chunk_header(stored: &[u8]) -> Result<(ChunkEncoding, usize)> {
    if stored.len() < CHUNK_HEADER_LEN || &stored[0..2] != b"CK" {
        return Err(Error::invalid(
            "stored chunk",
            "missing the \"CK\" header (truncated or not a chunk)",
        ));
    }
    if stored[2] != CHUNK_FORMAT {
        return Err(Error::UnsupportedFormat {
            what: "stored chunk",
            found: stored[2] as u32,
            supported: CHUNK_FORMAT as u32,
        });
    }
    let encoding = match stored[3] {
        0 => ChunkEncoding::Raw,
        1 => ChunkEncoding::Lz4,
        2 => ChunkEncoding::Frames,
        other => {
            return Err(Error::invalid(
                "stored chunk",
                format!("unknown encoding {other}"),
            ))
        }
    };
    let len = u32::from_le_bytes([stored[4], stored[5], stored[6], stored[7]]) as usize;
    if len > MAX_CHUNK_SIZE {
        return Err(Error::invalid(
            "stored chunk",
            format!("plaintext length {len} exceeds the {MAX_CHUNK_SIZE}-byte limit"),
        ));
    }
    Ok((encoding, len))
}

/// Decodes a stored chunk and checks that its plaintext hashes to `id`.
/// This is the only way a reader should turn stored bytes into data.
pub fn decode_chunk(id: &ChunkId, stored: &[u8]) -> Result<Vec<u8>> {
    let plain = decode_chunk_unverified(stored)?;
    id.verify(&plain)?;
    Ok(plain)
}

/// Decodes a stored chunk, checks it against `id`, and keeps its frames when it came in
/// them: what a terminal hands its cache.
pub fn decode_chunk_keeping_frames(id: &ChunkId, mut stored: Vec<u8>) -> Result<VerifiedChunk> {
    let plain = decode_chunk(id, &stored)?;
    let encoding = chunk_header(&stored)?.0;
    let frames = match encoding {
        ChunkEncoding::Frames => Some(stored.split_off(CHUNK_HEADER_LEN)),
        ChunkEncoding::Raw | ChunkEncoding::Lz4 => None,
    };
    Ok(VerifiedChunk {
        plain,
        frames,
        encoding,
    })
}

/// Checks stored bytes against their id whatever they are: a `CK` chunk must decode to
/// plaintext hashing to `id`; a sealed user chunk ([`crate::sealed`]) must have a valid
/// header and hash to `id` itself (the repository has no key to open it).
pub fn check_stored(id: &ChunkId, stored: &[u8]) -> Result<()> {
    if crate::sealed::is_sealed(stored) {
        crate::sealed::check_sealed(id, stored)
    } else {
        decode_chunk(id, stored).map(|_| ())
    }
}

/// Decodes a stored chunk without checking its id. Only for tools that compute the id
/// themselves afterwards.
pub fn decode_chunk_unverified(stored: &[u8]) -> Result<Vec<u8>> {
    let (encoding, len) = chunk_header(stored)?;
    let payload = &stored[CHUNK_HEADER_LEN..];
    match encoding {
        ChunkEncoding::Raw => {
            if payload.len() != len {
                return Err(Error::invalid(
                    "stored chunk",
                    format!("raw payload is {} bytes, header says {len}", payload.len()),
                ));
            }
            Ok(payload.to_vec())
        }
        ChunkEncoding::Lz4 => {
            let plain = lz4_flex::block::decompress(payload, len).map_err(|e| {
                Error::invalid(
                    "stored chunk",
                    format!("lz4 payload does not decompress: {e}"),
                )
            })?;
            if plain.len() != len {
                return Err(Error::invalid(
                    "stored chunk",
                    format!("lz4 payload gives {} bytes, header says {len}", plain.len()),
                ));
            }
            Ok(plain)
        }
        ChunkEncoding::Frames => ::chunk::frames::decompress_all(payload, len)
            .map(|(plain, _)| plain)
            .map_err(|e| Error::invalid("stored chunk", format!("frames do not decompress: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_published_as_one_lz4_block_still_decode() {
        let text: Vec<u8> = (0..65536u32).map(|i| (i % 7) as u8).collect();
        let mut stored = b"CK\x01\x01".to_vec();
        stored.extend_from_slice(&(text.len() as u32).to_le_bytes());
        stored.extend_from_slice(&lz4_flex::block::compress(&text));
        let id = ChunkId::of(&text);
        assert_eq!(decode_chunk(&id, &stored).unwrap(), text);
        let kept = decode_chunk_keeping_frames(&id, stored).unwrap();
        assert_eq!((kept.plain, kept.frames), (text, None));
    }

    #[test]
    fn frames_are_kept_as_they_arrived() {
        let text: Vec<u8> = (0..65536u32).map(|i| (i / 5 % 11) as u8).collect();
        let enc = encode_chunk(&text);
        let kept = decode_chunk_keeping_frames(&ChunkId::of(&text), enc.clone()).unwrap();
        assert_eq!(kept.plain, text);
        assert_eq!(kept.frames.as_deref(), Some(&enc[CHUNK_HEADER_LEN..]));
        assert!(decode_chunk_keeping_frames(&ChunkId::of(b"other"), enc).is_err());
    }

    #[test]
    fn encoding_picks_frames_or_raw_and_roundtrips() {
        let text: Vec<u8> = (0..65536u32)
            .map(|i| b"hello world "[(i % 12) as usize])
            .collect();
        let enc = encode_chunk(&text);
        assert_eq!(enc[3], ChunkEncoding::Frames as u8);
        assert!(enc.len() < text.len() / 4);
        assert_eq!(decode_chunk(&ChunkId::of(&text), &enc).unwrap(), text);

        // Pseudo-random bytes do not compress: stored raw.
        let mut x = 0x1234_5678_9abc_def0u64;
        let noise: Vec<u8> = (0..65536)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let enc = encode_chunk(&noise);
        assert_eq!(enc[3], ChunkEncoding::Raw as u8);
        assert_eq!(enc.len(), noise.len() + CHUNK_HEADER_LEN);
        assert_eq!(decode_chunk(&ChunkId::of(&noise), &enc).unwrap(), noise);
    }

    #[test]
    fn decode_rejects_corruption() {
        let data = vec![7u8; 4096];
        let id = ChunkId::of(&data);
        let mut enc = encode_chunk(&data);
        // Truncated, wrong magic, unknown version, flipped payload bit, lying length.
        assert!(decode_chunk(&id, &enc[..5]).is_err());
        let mut bad = enc.clone();
        bad[0] = b'X';
        assert!(decode_chunk(&id, &bad).is_err());
        let mut bad = enc.clone();
        bad[2] = 9;
        assert!(matches!(
            decode_chunk(&id, &bad),
            Err(Error::UnsupportedFormat { .. })
        ));
        let mut bad = enc.clone();
        bad[4..8].copy_from_slice(&(u32::MAX).to_le_bytes());
        assert!(decode_chunk(&id, &bad).is_err());
        let last = enc.len() - 1;
        enc[last] ^= 1;
        assert!(decode_chunk(&id, &enc).is_err());
    }
}
