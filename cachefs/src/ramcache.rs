//! A small RAM cache of decompressed, verified chunks, keyed by id.
//!
//! Why: a guest's 4 KiB reads inside a compressed 64 KiB chunk would
//! otherwise decompress and hash the whole chunk every time. Entries are
//! keyed by content id, so they can never be stale: no invalidation needed.

use crate::id::ChunkId;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

pub struct RamCache {
    inner: Mutex<Inner>,
    cap: usize,
}

struct Inner {
    map: HashMap<ChunkId, Arc<Vec<u8>>>,
    /// Insertion order (FIFO eviction: cheap, and good enough for a second tier).
    order: VecDeque<ChunkId>,
    bytes: usize,
}

impl RamCache {
    pub fn new(cap: usize) -> RamCache {
        RamCache {
            inner: Mutex::new(Inner { map: HashMap::new(), order: VecDeque::new(), bytes: 0 }),
            cap,
        }
    }

    pub fn get(&self, id: &ChunkId) -> Option<Arc<Vec<u8>>> {
        let g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        g.map.get(id).cloned()
    }

    pub fn put(&self, id: ChunkId, data: Vec<u8>) {
        if data.len() > self.cap {
            return;
        }
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if g.map.contains_key(&id) {
            return;
        }
        g.bytes += data.len();
        g.map.insert(id, Arc::new(data));
        g.order.push_back(id);
        while g.bytes > self.cap {
            let Some(old) = g.order.pop_front() else { break };
            if let Some(d) = g.map.remove(&old) {
                g.bytes -= d.len();
            }
        }
    }

    pub fn remove(&self, id: &ChunkId) {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(d) = g.map.remove(id) {
            g.bytes -= d.len();
            g.order.retain(|x| x != id);
        }
    }
}
