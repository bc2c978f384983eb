//! The on-disk format: geometry, superblocks, journal commits, metadata
//! records and checkpoints. Pure encode/decode, no I/O, so that the fuzz
//! tests can drive every decoder directly with garbage.
//!
//! Device layout (all offsets multiples of [`BLOCK`]):
//!
//! ```text
//! [superblock A 4K][superblock B 4K][journal][checkpoint A][checkpoint B][arena: N x 4K blocks]
//! ```
//! Every integer is little-endian. See docs/cachefs.md for the byte layout.

use crate::codec::{crc32, Reader, Writer};
use crate::error::{Error, Result};
use chunk::ChunkId;

/// Allocation and alignment unit of the arena and of journal commits.
pub const BLOCK: u64 = 4096;
pub const SB_MAGIC: &[u8; 8] = b"CACHEFS\x01";
pub const CKPT_MAGIC: &[u8; 8] = b"CFSCKPT1";
pub const JOURNAL_MAGIC: u32 = 0x314A_4643; // "CFJ1"
/// The one on-disk format version this build reads and writes. Bump it on
/// any change to any persisted structure; an unknown version is refused.
pub const FORMAT_VERSION: u32 = 1;
/// Smallest device we format: room for the metadata plus 16 arena blocks.
pub const MIN_DEVICE: u64 = 2 * BLOCK + 64 * 1024 + 2 * 64 * 1024 + 16 * BLOCK;
/// Journal commit header: magic u32, seq u64, payload_len u32, crc u32.
pub const JOURNAL_HDR: usize = 20;

/// Where each region lives on the device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    pub device_size: u64,
    pub journal_off: u64,
    pub journal_len: u64,
    pub ckpt_off: [u64; 2],
    pub ckpt_len: u64,
    pub arena_off: u64,
    pub arena_blocks: u64,
}

fn clamp_align(v: u64, lo: u64, hi: u64) -> u64 {
    v.clamp(lo, hi) / BLOCK * BLOCK
}

impl Geometry {
    /// The layout for a device of `size` bytes. The checkpoint slots get
    /// 1/64 of the device each: 64 B per 4 KiB block, more than the 49 B
    /// entry the smallest possible chunk needs, so the index always fits.
    pub fn for_size(size: u64) -> Result<Geometry> {
        if size < MIN_DEVICE {
            return Err(Error::TooSmall(size, MIN_DEVICE));
        }
        let journal_len = clamp_align(size / 128, 64 * 1024, 64 << 20);
        let ckpt_len = clamp_align(size / 64, 64 * 1024, 1 << 30);
        let journal_off = 2 * BLOCK;
        let c0 = journal_off + journal_len;
        let c1 = c0 + ckpt_len;
        let arena_off = c1 + ckpt_len;
        let arena_blocks = ((size - arena_off) / BLOCK).min(u32::MAX as u64);
        let g = Geometry {
            device_size: size,
            journal_off,
            journal_len,
            ckpt_off: [c0, c1],
            ckpt_len,
            arena_off,
            arena_blocks,
        };
        g.validate()?;
        Ok(g)
    }

    /// Checks a geometry read from disk: regions in order, aligned, inside the device.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: &str| Err(Error::Corrupt(format!("bad geometry: {m}")));
        let aligned = [
            self.journal_off,
            self.journal_len,
            self.ckpt_off[0],
            self.ckpt_off[1],
            self.ckpt_len,
            self.arena_off,
        ]
        .iter()
        .all(|v| v % BLOCK == 0);
        if !aligned {
            return bad("unaligned region");
        }
        if self.journal_off < 2 * BLOCK
            || self.journal_len < BLOCK
            || self.ckpt_len < BLOCK
            || self.arena_blocks == 0
            || self.arena_blocks > u32::MAX as u64
        {
            return bad("region too small");
        }
        let j_end = self.journal_off.checked_add(self.journal_len);
        let c0_end = self.ckpt_off[0].checked_add(self.ckpt_len);
        let c1_end = self.ckpt_off[1].checked_add(self.ckpt_len);
        let a_end = self
            .arena_blocks
            .checked_mul(BLOCK)
            .and_then(|b| b.checked_add(self.arena_off));
        match (j_end, c0_end, c1_end, a_end) {
            (Some(j), Some(c0), Some(c1), Some(a))
                if j <= self.ckpt_off[0]
                    && c0 <= self.ckpt_off[1]
                    && c1 <= self.arena_off
                    && a <= self.device_size =>
            {
                Ok(())
            }
            _ => bad("regions overlap or exceed the device"),
        }
    }

    pub fn block_off(&self, block: u32) -> u64 {
        self.arena_off + block as u64 * BLOCK
    }
}

/// One of the two superblocks. The newer valid one (by `seq`) is live; the
/// cache writes the other one, flushes, and only then treats it as live, so a
/// torn superblock write leaves the previous one intact.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Superblock {
    pub uuid: [u8; 16],
    pub seq: u64,
    pub geometry: Geometry,
    /// Which checkpoint slot holds the live checkpoint.
    pub ckpt_slot: u8,
    pub ckpt_len_used: u64,
    pub ckpt_crc: u32,
    /// Sequence number the first journal commit after that checkpoint carries.
    pub journal_seq: u64,
}

/// What a superblock slot holds.
#[derive(Debug)]
pub enum SbSlot {
    Valid(Superblock),
    /// No magic: not ours (or never written).
    Foreign,
    /// Our magic, a version we do not know.
    Unsupported(u32),
    /// Our magic, but the checksum or contents are wrong.
    Damaged(String),
}

impl Superblock {
    pub fn encode(&self) -> Vec<u8> {
        let g = &self.geometry;
        let mut w = Writer::new();
        w.bytes(SB_MAGIC);
        w.u32(FORMAT_VERSION);
        w.bytes(&self.uuid);
        w.u64(self.seq);
        w.u64(g.device_size);
        w.u32(BLOCK as u32);
        w.u64(g.journal_off);
        w.u64(g.journal_len);
        w.u64(g.ckpt_off[0]);
        w.u64(g.ckpt_off[1]);
        w.u64(g.ckpt_len);
        w.u64(g.arena_off);
        w.u64(g.arena_blocks);
        w.u8(self.ckpt_slot);
        w.u64(self.ckpt_len_used);
        w.u32(self.ckpt_crc);
        w.u64(self.journal_seq);
        let c = crc32(&[&w.buf]);
        w.u32(c);
        w.buf.resize(BLOCK as usize, 0);
        w.buf
    }

    pub fn decode(b: &[u8]) -> SbSlot {
        match Self::decode_inner(b) {
            Ok(s) => s,
            Err(e) => SbSlot::Damaged(e.to_string()),
        }
    }

    fn decode_inner(b: &[u8]) -> Result<SbSlot> {
        let mut r = Reader::new(b);
        if r.take(8)? != SB_MAGIC {
            return Ok(SbSlot::Foreign);
        }
        let version = r.u32()?;
        if version != FORMAT_VERSION {
            return Ok(SbSlot::Unsupported(version));
        }
        let mut uuid = [0u8; 16];
        uuid.copy_from_slice(r.take(16)?);
        let seq = r.u64()?;
        let device_size = r.u64()?;
        let bs = r.u32()?;
        let journal_off = r.u64()?;
        let journal_len = r.u64()?;
        let c0 = r.u64()?;
        let c1 = r.u64()?;
        let ckpt_len = r.u64()?;
        let arena_off = r.u64()?;
        let arena_blocks = r.u64()?;
        let ckpt_slot = r.u8()?;
        let ckpt_len_used = r.u64()?;
        let ckpt_crc = r.u32()?;
        let journal_seq = r.u64()?;
        let body_len = b.len() - r.remaining();
        let crc = r.u32()?;
        if crc32(&[&b[..body_len]]) != crc {
            return Ok(SbSlot::Damaged("superblock checksum mismatch".into()));
        }
        if bs as u64 != BLOCK {
            return Ok(SbSlot::Damaged(format!("block size {bs}")));
        }
        let geometry = Geometry {
            device_size,
            journal_off,
            journal_len,
            ckpt_off: [c0, c1],
            ckpt_len,
            arena_off,
            arena_blocks,
        };
        geometry.validate()?;
        // Sequence numbers only count up by one per commit; anything near the
        // top of the range is damage, and would overflow later.
        if seq > 1 << 62 || journal_seq > 1 << 62 {
            return Ok(SbSlot::Damaged("implausible sequence number".into()));
        }
        if ckpt_slot > 1 || ckpt_len_used > ckpt_len {
            return Ok(SbSlot::Damaged("bad checkpoint pointer".into()));
        }
        Ok(SbSlot::Valid(Superblock {
            uuid,
            seq,
            geometry,
            ckpt_slot,
            ckpt_len_used,
            ckpt_crc,
            journal_seq,
        }))
    }
}

/// Where and how a chunk is stored in the arena.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Loc {
    pub block: u32,
    /// Bytes stored (compressed size if compressed).
    pub stored_len: u32,
    /// Plaintext length.
    pub raw_len: u32,
    pub compressed: bool,
    /// crc32 of the stored bytes: detects torn or rotted records cheaply.
    pub crc: u32,
}

impl Loc {
    pub fn nblocks(&self) -> u32 {
        (self.stored_len as u64).div_ceil(BLOCK) as u32
    }
    fn encode(&self, w: &mut Writer) {
        w.u32(self.block);
        w.u32(self.stored_len);
        w.u32(self.raw_len);
        w.u8(self.compressed as u8);
        w.u32(self.crc);
    }
    fn decode(r: &mut Reader) -> Result<Loc> {
        let block = r.u32()?;
        let stored_len = r.u32()?;
        let raw_len = r.u32()?;
        let flags = r.u8()?;
        let crc = r.u32()?;
        if flags > 1 || stored_len == 0 || raw_len == 0 || raw_len > MAX_CHUNK {
            return Err(Error::Corrupt("bad chunk location".into()));
        }
        if flags == 0 && stored_len != raw_len {
            return Err(Error::Corrupt("uncompressed length mismatch".into()));
        }
        Ok(Loc {
            block,
            stored_len,
            raw_len,
            compressed: flags == 1,
            crc,
        })
    }
}

/// Largest chunk the cache stores (16 MiB): bounds every allocation made
/// from a length read off the disk.
pub const MAX_CHUNK: u32 = 16 << 20;
const LOC_SIZE: usize = 17;

/// One overlay block: a 4 KiB block of the disk, where its copy lives and its crc.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OvBlock {
    pub disk_block: u64,
    pub arena_block: u32,
    pub crc: u32,
}

/// The persistent part of a user-disk overlay.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct OverlayMeta {
    pub chunk_size: u32,
    pub disk_size: u64,
    /// sha256 over the base chunk list: the overlay only applies to that base.
    pub base_digest: [u8; 32],
    pub blocks: std::collections::BTreeMap<u64, (u32, u32)>,
}

/// A metadata change, as journaled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Record {
    Put(ChunkId, Loc),
    Del(ChunkId),
    Pin(String, Vec<ChunkId>),
    Unpin(String),
    OvCreate {
        name: String,
        chunk_size: u32,
        disk_size: u64,
        base_digest: [u8; 32],
    },
    OvMap(String, Vec<OvBlock>),
    OvUnmap(String, Vec<u64>),
    OvRebase(String, [u8; 32]),
    OvDelete(String),
}

impl Record {
    pub fn encode(&self, w: &mut Writer) {
        match self {
            Record::Put(id, loc) => {
                w.u8(1);
                w.id(id);
                loc.encode(w);
            }
            Record::Del(id) => {
                w.u8(2);
                w.id(id);
            }
            Record::Pin(name, ids) => {
                w.u8(3);
                w.str(name);
                w.u32(ids.len() as u32);
                for id in ids {
                    w.id(id);
                }
            }
            Record::Unpin(name) => {
                w.u8(4);
                w.str(name);
            }
            Record::OvCreate {
                name,
                chunk_size,
                disk_size,
                base_digest,
            } => {
                w.u8(5);
                w.str(name);
                w.u32(*chunk_size);
                w.u64(*disk_size);
                w.bytes(base_digest);
            }
            Record::OvMap(name, blocks) => {
                w.u8(6);
                w.str(name);
                w.u32(blocks.len() as u32);
                for b in blocks {
                    w.u64(b.disk_block);
                    w.u32(b.arena_block);
                    w.u32(b.crc);
                }
            }
            Record::OvUnmap(name, blocks) => {
                w.u8(7);
                w.str(name);
                w.u32(blocks.len() as u32);
                for b in blocks {
                    w.u64(*b);
                }
            }
            Record::OvRebase(name, d) => {
                w.u8(8);
                w.str(name);
                w.bytes(d);
            }
            Record::OvDelete(name) => {
                w.u8(9);
                w.str(name);
            }
        }
    }

    pub fn decode(r: &mut Reader) -> Result<Record> {
        Ok(match r.u8()? {
            1 => Record::Put(r.id()?, Loc::decode(r)?),
            2 => Record::Del(r.id()?),
            3 => {
                let name = r.str()?;
                let n = r.count(32)?;
                let mut ids = Vec::with_capacity(n);
                for _ in 0..n {
                    ids.push(r.id()?);
                }
                Record::Pin(name, ids)
            }
            4 => Record::Unpin(r.str()?),
            5 => {
                let name = r.str()?;
                let chunk_size = r.u32()?;
                let disk_size = r.u64()?;
                let mut d = [0u8; 32];
                d.copy_from_slice(r.take(32)?);
                Record::OvCreate {
                    name,
                    chunk_size,
                    disk_size,
                    base_digest: d,
                }
            }
            6 => {
                let name = r.str()?;
                let n = r.count(16)?;
                let mut v = Vec::with_capacity(n);
                for _ in 0..n {
                    v.push(OvBlock {
                        disk_block: r.u64()?,
                        arena_block: r.u32()?,
                        crc: r.u32()?,
                    });
                }
                Record::OvMap(name, v)
            }
            7 => {
                let name = r.str()?;
                let n = r.count(8)?;
                let mut v = Vec::with_capacity(n);
                for _ in 0..n {
                    v.push(r.u64()?);
                }
                Record::OvUnmap(name, v)
            }
            8 => {
                let name = r.str()?;
                let mut d = [0u8; 32];
                d.copy_from_slice(r.take(32)?);
                Record::OvRebase(name, d)
            }
            9 => Record::OvDelete(r.str()?),
            t => return Err(Error::Corrupt(format!("unknown record type {t}"))),
        })
    }

    /// Bytes this record adds to a checkpoint (for metadata budgeting).
    pub fn encoded_len(&self) -> usize {
        let mut w = Writer::new();
        self.encode(&mut w);
        w.buf.len()
    }
}

pub fn encode_records(recs: &[Record]) -> Vec<u8> {
    let mut w = Writer::new();
    for r in recs {
        r.encode(&mut w);
    }
    w.buf
}

pub fn decode_records(b: &[u8]) -> Result<Vec<Record>> {
    let mut r = Reader::new(b);
    let mut out = Vec::new();
    while r.remaining() > 0 {
        out.push(Record::decode(&mut r)?);
    }
    Ok(out)
}

/// A journal commit: header plus payload, padded to whole blocks so that a
/// commit never shares a sector with the one before it.
///
/// The crc also covers the cache's uuid, so commits left in the journal
/// region by an earlier format of the same device never replay.
pub fn encode_commit(uuid: &[u8; 16], seq: u64, payload: &[u8]) -> Vec<u8> {
    let mut w = Writer::new();
    w.u32(JOURNAL_MAGIC);
    w.u64(seq);
    w.u32(payload.len() as u32);
    let c = crc32(&[uuid, &w.buf, payload]);
    w.u32(c);
    w.bytes(payload);
    let len = (w.buf.len() as u64).div_ceil(BLOCK) * BLOCK;
    w.buf.resize(len as usize, 0);
    w.buf
}

/// Parses a commit header; returns (seq, payload_len, crc) or None if this
/// is not a commit header.
pub fn decode_commit_header(b: &[u8]) -> Option<(u64, u32, u32)> {
    let mut r = Reader::new(b);
    if r.u32().ok()? != JOURNAL_MAGIC {
        return None;
    }
    Some((r.u64().ok()?, r.u32().ok()?, r.u32().ok()?))
}

pub fn commit_crc_ok(uuid: &[u8; 16], hdr: &[u8], payload: &[u8], crc: u32) -> bool {
    hdr.len() >= 16 && crc32(&[uuid, &hdr[..16], payload]) == crc
}

/// The full metadata state, as written to a checkpoint slot.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Checkpoint {
    pub seq: u64,
    /// Chunks, least recently used first (LRU order is a hint).
    pub chunks: Vec<(ChunkId, Loc)>,
    pub pins: Vec<(String, Vec<ChunkId>)>,
    pub overlays: Vec<(String, OverlayMeta)>,
}

impl Checkpoint {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.bytes(CKPT_MAGIC);
        w.u64(self.seq);
        w.u32(self.chunks.len() as u32);
        for (id, loc) in &self.chunks {
            w.id(id);
            loc.encode(&mut w);
        }
        w.u32(self.pins.len() as u32);
        for (name, ids) in &self.pins {
            w.str(name);
            w.u32(ids.len() as u32);
            for id in ids {
                w.id(id);
            }
        }
        w.u32(self.overlays.len() as u32);
        for (name, o) in &self.overlays {
            w.str(name);
            w.u32(o.chunk_size);
            w.u64(o.disk_size);
            w.bytes(&o.base_digest);
            w.u32(o.blocks.len() as u32);
            for (db, (ab, crc)) in &o.blocks {
                w.u64(*db);
                w.u32(*ab);
                w.u32(*crc);
            }
        }
        w.buf
    }

    pub fn decode(b: &[u8]) -> Result<Checkpoint> {
        let mut r = Reader::new(b);
        if r.take(8)? != CKPT_MAGIC {
            return Err(Error::Corrupt("checkpoint magic".into()));
        }
        let seq = r.u64()?;
        let n = r.count(32 + LOC_SIZE)?;
        let mut chunks = Vec::with_capacity(n);
        for _ in 0..n {
            chunks.push((r.id()?, Loc::decode(&mut r)?));
        }
        let n = r.count(6)?;
        let mut pins = Vec::with_capacity(n);
        for _ in 0..n {
            let name = r.str()?;
            let k = r.count(32)?;
            let mut ids = Vec::with_capacity(k);
            for _ in 0..k {
                ids.push(r.id()?);
            }
            pins.push((name, ids));
        }
        let n = r.count(54)?;
        let mut overlays = Vec::with_capacity(n);
        for _ in 0..n {
            let name = r.str()?;
            let chunk_size = r.u32()?;
            let disk_size = r.u64()?;
            let mut d = [0u8; 32];
            d.copy_from_slice(r.take(32)?);
            let k = r.count(16)?;
            let mut blocks = std::collections::BTreeMap::new();
            for _ in 0..k {
                let db = r.u64()?;
                let ab = r.u32()?;
                let crc = r.u32()?;
                blocks.insert(db, (ab, crc));
            }
            overlays.push((
                name,
                OverlayMeta {
                    chunk_size,
                    disk_size,
                    base_digest: d,
                    blocks,
                },
            ));
        }
        if r.remaining() != 0 {
            return Err(Error::Corrupt("trailing bytes in checkpoint".into()));
        }
        Ok(Checkpoint {
            seq,
            chunks,
            pins,
            overlays,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn superblock_round_trip_and_damage() {
        let g = Geometry::for_size(8 << 20).unwrap();
        let sb = Superblock {
            uuid: [7; 16],
            seq: 3,
            geometry: g,
            ckpt_slot: 1,
            ckpt_len_used: 100,
            ckpt_crc: 5,
            journal_seq: 9,
        };
        let mut b = sb.encode();
        match Superblock::decode(&b) {
            SbSlot::Valid(s) => assert_eq!(s, sb),
            other => panic!("{other:?}"),
        }
        b[40] ^= 1;
        assert!(matches!(Superblock::decode(&b), SbSlot::Damaged(_)));
        assert!(matches!(Superblock::decode(&[0u8; 4096]), SbSlot::Foreign));
        let mut v = sb.encode();
        v[8] = 2;
        assert!(matches!(Superblock::decode(&v), SbSlot::Unsupported(2)));
    }

    #[test]
    fn records_round_trip() {
        let id = ChunkId::of(b"x");
        let recs = vec![
            Record::Put(
                id,
                Loc {
                    block: 3,
                    stored_len: 100,
                    raw_len: 4096,
                    compressed: true,
                    crc: 1,
                },
            ),
            Record::Del(id),
            Record::Pin("a".into(), vec![id, id]),
            Record::Unpin("a".into()),
            Record::OvCreate {
                name: "o".into(),
                chunk_size: 4096,
                disk_size: 1 << 20,
                base_digest: [1; 32],
            },
            Record::OvMap(
                "o".into(),
                vec![OvBlock {
                    disk_block: 5,
                    arena_block: 6,
                    crc: 7,
                }],
            ),
            Record::OvUnmap("o".into(), vec![5]),
            Record::OvRebase("o".into(), [2; 32]),
            Record::OvDelete("o".into()),
        ];
        let b = encode_records(&recs);
        assert_eq!(decode_records(&b).unwrap(), recs);
        assert!(decode_records(&b[..b.len() - 1]).is_err());
    }
}
