//! Arena block allocator: a bitmap of 4 KiB blocks held only in RAM.
//!
//! Nothing about free space is persisted: at open, every block referenced by
//! the recovered index or a persistent overlay is marked used and the rest is
//! free. So space can never leak across a crash (the bazel-remote#176 class of
//! bug), and in-flight fills own their blocks from allocation onward.

pub struct Allocator {
    bits: Vec<u64>,
    nblocks: u32,
    free: u64,
    /// Next-fit cursor: fills are sequential, so the next run is usually right here.
    cursor: u32,
}

impl Allocator {
    pub fn new(nblocks: u32) -> Allocator {
        Allocator {
            bits: vec![0; (nblocks as usize).div_ceil(64)],
            nblocks,
            free: nblocks as u64,
            cursor: 0,
        }
    }

    pub fn nblocks(&self) -> u32 {
        self.nblocks
    }

    pub fn free_blocks(&self) -> u64 {
        self.free
    }

    pub fn is_used(&self, b: u32) -> bool {
        self.bits[(b / 64) as usize] & (1 << (b % 64)) != 0
    }

    /// True if `[start, start+n)` lies in the arena and is entirely free.
    pub fn range_free(&self, start: u32, n: u32) -> bool {
        match start.checked_add(n) {
            Some(end) if end <= self.nblocks => (start..end).all(|b| !self.is_used(b)),
            _ => false,
        }
    }

    /// Marks a range used (recovery). The caller checked `range_free`.
    pub fn mark_used(&mut self, start: u32, n: u32) {
        for b in start..start + n {
            debug_assert!(!self.is_used(b));
            self.bits[(b / 64) as usize] |= 1 << (b % 64);
        }
        self.free -= n as u64;
    }

    pub fn release(&mut self, start: u32, n: u32) {
        for b in start..start + n {
            if self.is_used(b) {
                self.bits[(b / 64) as usize] &= !(1 << (b % 64));
                self.free += 1;
            } else {
                log::error!("double free of arena block {b}");
            }
        }
    }

    /// Finds and takes `n` contiguous free blocks, next-fit from the cursor.
    pub fn alloc(&mut self, n: u32) -> Option<u32> {
        if n == 0 || n as u64 > self.free {
            return None;
        }
        let total = self.nblocks;
        let mut run_start = self.cursor;
        let mut run = 0u32;
        let mut scanned = 0u64;
        let mut b = self.cursor;
        // Scan at most one full lap plus the run length.
        while scanned < total as u64 + n as u64 {
            if b >= total {
                b = 0;
                run = 0;
                run_start = 0;
            }
            // Skip whole used words quickly.
            if run == 0 && b % 64 == 0 && self.bits[(b / 64) as usize] == u64::MAX {
                b += 64;
                scanned += 64;
                run_start = b;
                continue;
            }
            if self.is_used(b) {
                run = 0;
                run_start = b + 1;
            } else {
                run += 1;
                if run == n {
                    self.mark_used(run_start, n);
                    self.cursor = run_start + n;
                    if self.cursor >= total {
                        self.cursor = 0;
                    }
                    return Some(run_start);
                }
            }
            b += 1;
            scanned += 1;
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alloc_release_and_fragmentation() {
        let mut a = Allocator::new(130);
        let x = a.alloc(64).unwrap();
        let y = a.alloc(64).unwrap();
        assert_eq!((x, y), (0, 64));
        assert_eq!(a.alloc(3), None);
        assert_eq!(a.alloc(2), Some(128));
        a.release(10, 5);
        a.release(40, 2);
        assert_eq!(a.alloc(6), None);
        assert_eq!(a.alloc(5), Some(10));
        assert_eq!(a.alloc(2), Some(40));
        assert_eq!(a.free_blocks(), 0);
    }
}
