//! The pool: the shared cache's free lists by size class and the byte counters under the cap;
//! allocation (cache, else driver, releasing cached blocks when the cap or the driver demands
//! it), release back to the right free list, and the return of cached blocks to the driver.

use std::collections::{BTreeMap, HashMap};

use super::arena::ArenaId;
use super::raw::{Block, RawError, RawMemory};
use super::size_classes::size_class;
use crate::error::{Error, Result};

/// Free blocks by size class.
pub(super) type FreeLists = BTreeMap<usize, Vec<u64>>;

/// Accounting of one device's memory: the free lists and the byte counters.
#[derive(Debug)]
pub struct Pool {
    /// The shared cache.
    pub(super) free: FreeLists,
    /// The free lists of live graph arenas.
    pub(super) arenas: HashMap<ArenaId, FreeLists>,
    /// The arena of every block a live graph arena owns.
    pub(super) owner: HashMap<u64, ArenaId>,
    /// Blocks of live arenas that are never handed out again while their arena lives.
    pub(super) held: std::collections::HashSet<u64>,
    /// Held blocks already freed, per arena (they join the shared cache on retirement).
    pub(super) held_free: HashMap<ArenaId, Vec<Block>>,
    /// The arena being captured into, if any.
    pub(super) active: Option<ArenaId>,
    pub(super) next_arena: ArenaId,
    pub(super) cached: usize,
    pub(super) in_use: usize,
    pub(super) peak: usize,
    pub(super) cap: usize,
    pub(super) driver_allocs: u64,
}

/// Pops a block of `class` from `lists`.
pub(super) fn pop(lists: &mut FreeLists, class: usize) -> Option<u64> {
    let list = lists.get_mut(&class)?;
    let ptr = list.pop();
    if list.is_empty() {
        lists.remove(&class);
    }
    ptr
}

impl Pool {
    /// An empty pool with this cap.
    pub fn new(cap: usize) -> Pool {
        Pool {
            free: BTreeMap::new(),
            arenas: HashMap::new(),
            owner: HashMap::new(),
            held: Default::default(),
            held_free: HashMap::new(),
            active: None,
            next_arena: 1,
            cached: 0,
            in_use: 0,
            peak: 0,
            cap,
            driver_allocs: 0,
        }
    }

    /// Sets the cap; cached blocks above it are released at the next allocation.
    pub fn set_cap(&mut self, cap: usize) {
        self.cap = cap;
    }

    pub(super) fn oom(&self, requested: usize) -> Error {
        Error::OutOfMemory { requested, cap: self.cap, in_use: self.in_use }
    }

    /// A block for `bytes` bytes: from the cache when a block of its class is free, else from
    /// the driver, releasing cached blocks first when the cap or the driver demands it.
    pub fn allocate(&mut self, raw: &mut impl RawMemory, bytes: usize) -> Result<Block> {
        let class = size_class(bytes).ok_or_else(|| self.oom(bytes))?;
        if self.in_use.saturating_add(class) > self.cap {
            return Err(self.oom(bytes));
        }
        if let Some(arena) = self.active {
            // A capture: its own free blocks, then the shared cache's, then the driver.
            let ptr = self.take_in_capture(raw, bytes, class, Some(arena))?;
            self.owner.insert(ptr, arena);
            return Ok(self.hand_out(ptr, class));
        }
        if let Some(ptr) = pop(&mut self.free, class) {
            self.cached -= class;
            return Ok(self.hand_out(ptr, class));
        }
        let over = (self.in_use + self.cached + class).saturating_sub(self.cap);
        if over > 0 {
            self.release_cached(raw, over);
        }
        let ptr = match raw.alloc(class) {
            Ok(p) => p,
            Err(RawError::OutOfMemory) if self.cached > 0 => {
                self.release_cached(raw, usize::MAX);
                match raw.alloc(class) {
                    Ok(p) => p,
                    Err(RawError::OutOfMemory) => return Err(self.oom(bytes)),
                    Err(RawError::Other(e)) => return Err(e),
                }
            }
            Err(RawError::OutOfMemory) => return Err(self.oom(bytes)),
            Err(RawError::Other(e)) => return Err(e),
        };
        self.driver_allocs += 1;
        Ok(self.hand_out(ptr, class))
    }

    pub(super) fn hand_out(&mut self, ptr: u64, class: usize) -> Block {
        self.in_use += class;
        self.peak = self.peak.max(self.in_use);
        Block { ptr, bytes: class }
    }

    /// Takes a block back into the cache: its graph arena's free list when a live arena owns it,
    /// else the shared one.
    pub fn release(&mut self, block: Block) {
        self.in_use -= block.bytes.min(self.in_use);
        self.cached += block.bytes;
        if self.held.contains(&block.ptr) {
            if let Some(&arena) = self.owner.get(&block.ptr) {
                self.held_free.entry(arena).or_default().push(block);
                return;
            }
        }
        if let (None, Some(arena)) = (self.owner.get(&block.ptr), self.active) {
            // In use when the capture began and freed during it: captured work may have used
            // it, so it stays with the graph (reused only by later work of the capture), and
            // the shared cache keeps only blocks no captured work touched (feeds come from
            // there, see `allocate_feed`).
            self.owner.insert(block.ptr, arena);
        }
        let lists = match self.owner.get(&block.ptr).and_then(|a| self.arenas.get_mut(a)) {
            Some(lists) => lists,
            None => &mut self.free,
        };
        lists.entry(block.bytes).or_default().push(block.ptr);
    }

    /// Returns at least `want` cached bytes of the shared cache to the driver (all of them for
    /// `usize::MAX`), largest blocks first; graph arenas keep theirs. Returns the bytes
    /// released. Does nothing during a capture (a release waits on the stream).
    pub fn release_cached(&mut self, raw: &mut impl RawMemory, want: usize) -> usize {
        if self.active.is_some() {
            return 0;
        }
        let mut blocks = Vec::new();
        let mut released = 0;
        while released < want {
            let Some(mut entry) = self.free.last_entry() else { break };
            let class = *entry.key();
            match entry.get_mut().pop() {
                Some(ptr) => {
                    blocks.push(Block { ptr, bytes: class });
                    released += class;
                }
                None => {
                    entry.remove();
                }
            }
        }
        self.free.retain(|_, v| !v.is_empty());
        self.cached -= released;
        if !blocks.is_empty() {
            raw.free(&blocks);
        }
        released
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cuda::allocator::fake::Fake;

    #[test]
    fn freed_blocks_are_reused_without_a_driver_call() {
        let mut raw = Fake::new(1 << 30);
        let mut pool = Pool::new(1 << 30);
        let a = pool.allocate(&mut raw, 1000).unwrap();
        assert_eq!(a.bytes, 1024);
        pool.release(a);
        let b = pool.allocate(&mut raw, 600).unwrap();
        assert_eq!(b.ptr, a.ptr);
        assert_eq!(raw.allocs, 1);
        let s = pool.stats();
        assert_eq!((s.current_bytes, s.peak_bytes, s.reserved_bytes), (1024, 1024, 1024));
        assert_eq!(s.driver_allocs, 1);
        let c = pool.allocate(&mut raw, 600).unwrap();
        assert_ne!(c.ptr, b.ptr);
        assert_eq!((raw.allocs, pool.stats().driver_allocs), (2, 2));
    }

    #[test]
    fn exceeding_the_cap_with_live_buffers_is_out_of_memory() {
        let mut raw = Fake::new(1 << 30);
        let mut pool = Pool::new(8 << 20);
        let _a = pool.allocate(&mut raw, 6 << 20).unwrap();
        match pool.allocate(&mut raw, 4 << 20) {
            Err(Error::OutOfMemory { requested, cap, in_use }) => {
                assert_eq!((requested, cap, in_use), (4 << 20, 8 << 20, 6 << 20));
            }
            other => panic!("expected OutOfMemory, got {other:?}"),
        }
    }

    #[test]
    fn the_cap_releases_cached_blocks_before_failing() {
        let mut raw = Fake::new(1 << 30);
        let mut pool = Pool::new(8 << 20);
        let a = pool.allocate(&mut raw, 6 << 20).unwrap();
        pool.release(a);
        let b = pool.allocate(&mut raw, 4 << 20).unwrap();
        assert_eq!(raw.frees, 1, "the cached 6 MiB block went back to the driver");
        assert_eq!(pool.stats().reserved_bytes, 4 << 20);
        assert_eq!(b.bytes, 4 << 20);
    }

    #[test]
    fn driver_out_of_memory_retries_after_emptying_the_cache() {
        let mut raw = Fake::new(10 << 20);
        let mut pool = Pool::new(1 << 30);
        let a = pool.allocate(&mut raw, 6 << 20).unwrap();
        pool.release(a);
        let _b = pool.allocate(&mut raw, 5 << 20).unwrap();
        assert_eq!(raw.frees, 1);
        assert!(matches!(pool.allocate(&mut raw, 6 << 20), Err(Error::OutOfMemory { .. })));
    }

    #[test]
    fn lowering_the_cap_trims_the_cache_on_the_next_allocation() {
        let mut raw = Fake::new(1 << 30);
        let mut pool = Pool::new(1 << 30);
        let blocks: Vec<_> = (0..4).map(|_| pool.allocate(&mut raw, 2 << 20).unwrap()).collect();
        for b in blocks {
            pool.release(b);
        }
        pool.set_cap(3 << 20);
        let _c = pool.allocate(&mut raw, 1 << 20).unwrap();
        let reserved = pool.stats().reserved_bytes;
        assert!(reserved <= 3 << 20);
        assert_eq!(pool.release_cached(&mut raw, usize::MAX), reserved - (1 << 20));
        assert_eq!(pool.stats().reserved_bytes, 1 << 20);
    }
}
