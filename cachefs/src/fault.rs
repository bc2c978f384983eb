//! A fault-injecting in-memory device for crash tests.
//!
//! It models a disk with a volatile write cache (dm-log-writes semantics):
//! a write is only durable after a later `flush` completes. At a chosen
//! operation the power is cut: the write in flight is torn (a random subset
//! of its 512-byte sectors reaches the media), and the writes not yet flushed
//! are dropped, or, in [`CutMode::Reorder`], a random subset of them survives
//! (a volatile cache may write back in any order). After the cut every call
//! fails, and [`FaultStorage::durable_image`] is what a reboot would find.

use crate::storage::Storage;
use std::io;
use std::sync::Mutex;

/// What survives of the writes that were not flushed when the power went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CutMode {
    /// Every unflushed write is lost; only the in-flight one is torn.
    DropUnflushed,
    /// Each unflushed write independently survives or not (reordering).
    Reorder,
}

/// Tiny deterministic PRNG (splitmix64), so crash tests replay exactly from a seed.
#[derive(Clone, Debug)]
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
    pub fn fill(&mut self, buf: &mut [u8]) {
        for c in buf.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            c.copy_from_slice(&v[..c.len()]);
        }
    }
}

struct Inner {
    durable: Vec<u8>,
    /// What reads see: durable plus every write since the last flush.
    current: Vec<u8>,
    unflushed: Vec<(u64, Vec<u8>)>,
    /// Write/flush operations left before the cut; `None` = never cut.
    ops_left: Option<u64>,
    ops_done: u64,
    cut: bool,
    rng: Rng,
    mode: CutMode,
}

pub struct FaultStorage {
    inner: Mutex<Inner>,
}

fn power_cut() -> io::Error {
    io::Error::other("power cut (simulated)")
}

impl FaultStorage {
    /// A device holding `image`, which loses power at the `cut_after`-th
    /// write or flush (counting from 0), if given.
    pub fn new(image: Vec<u8>, cut_after: Option<u64>, mode: CutMode, seed: u64) -> FaultStorage {
        FaultStorage {
            inner: Mutex::new(Inner {
                current: image.clone(),
                durable: image,
                unflushed: Vec::new(),
                ops_left: cut_after,
                ops_done: 0,
                cut: false,
                rng: Rng(seed),
                mode,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// What the media holds (after a cut: what a reboot finds).
    pub fn durable_image(&self) -> Vec<u8> {
        self.lock().durable.clone()
    }

    pub fn is_cut(&self) -> bool {
        self.lock().cut
    }

    /// Write and flush operations performed so far.
    pub fn ops(&self) -> u64 {
        self.lock().ops_done
    }

    /// Cuts the power now (the in-flight write, if any, is `torn`).
    fn cut(g: &mut Inner, torn: Option<(u64, &[u8])>) {
        let pending = std::mem::take(&mut g.unflushed);
        if g.mode == CutMode::Reorder {
            for (off, data) in pending {
                if g.rng.chance(50) {
                    let o = off as usize;
                    g.durable[o..o + data.len()].copy_from_slice(&data);
                }
            }
        }
        if let Some((off, data)) = torn {
            // A random subset of 512-byte sectors lands; a sector is atomic.
            for (i, sector) in data.chunks(512).enumerate() {
                if g.rng.chance(50) {
                    let o = off as usize + i * 512;
                    g.durable[o..o + sector.len()].copy_from_slice(sector);
                }
            }
        }
        g.current = g.durable.clone();
        g.cut = true;
    }

    /// Counts one operation; true if the power goes out on it.
    fn step(g: &mut Inner) -> bool {
        g.ops_done += 1;
        match g.ops_left {
            Some(0) => true,
            Some(n) => {
                g.ops_left = Some(n - 1);
                false
            }
            None => false,
        }
    }
}

impl Storage for FaultStorage {
    fn len(&self) -> u64 {
        self.lock().durable.len() as u64
    }

    fn read_at(&self, off: u64, buf: &mut [u8]) -> io::Result<()> {
        let g = self.lock();
        if g.cut {
            return Err(power_cut());
        }
        let end = off
            .checked_add(buf.len() as u64)
            .filter(|&e| e <= g.current.len() as u64);
        let Some(end) = end else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "read beyond end",
            ));
        };
        buf.copy_from_slice(&g.current[off as usize..end as usize]);
        Ok(())
    }

    fn write_at(&self, off: u64, buf: &[u8]) -> io::Result<()> {
        let mut g = self.lock();
        if g.cut {
            return Err(power_cut());
        }
        let end = off
            .checked_add(buf.len() as u64)
            .filter(|&e| e <= g.current.len() as u64);
        let Some(end) = end else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "write beyond end",
            ));
        };
        if Self::step(&mut g) {
            Self::cut(&mut g, Some((off, buf)));
            return Err(power_cut());
        }
        g.current[off as usize..end as usize].copy_from_slice(buf);
        g.unflushed.push((off, buf.to_vec()));
        Ok(())
    }

    fn flush(&self) -> io::Result<()> {
        let mut g = self.lock();
        if g.cut {
            return Err(power_cut());
        }
        if Self::step(&mut g) {
            // A flush that never completed: any subset may have landed.
            let m = g.mode;
            g.mode = CutMode::Reorder;
            Self::cut(&mut g, None);
            g.mode = m;
            return Err(power_cut());
        }
        g.durable = g.current.clone();
        g.unflushed.clear();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unflushed_writes_are_lost_flushed_survive() {
        let f = FaultStorage::new(vec![0; 4096], Some(3), CutMode::DropUnflushed, 1);
        f.write_at(0, &[1; 512]).unwrap();
        f.flush().unwrap();
        f.write_at(512, &[2; 512]).unwrap();
        assert!(f.write_at(1024, &[3; 512]).is_err());
        let img = f.durable_image();
        assert_eq!(&img[..512], &[1; 512][..]);
        assert_eq!(&img[512..1024], &[0; 512][..]);
        assert!(f.read_at(0, &mut [0; 1]).is_err());
    }
}
