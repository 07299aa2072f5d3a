//! Graph arenas: the blocks a CUDA-graph capture hands out stay with that graph until it is
//! dropped; a capture takes its arena's free blocks, then the shared cache's, then the
//! driver's, and never releases cached blocks (that would wait on the stream).

use super::pool::{pop, FreeLists, Pool};
use super::raw::{RawError, RawMemory};
use crate::error::{Error, Result};

/// Identifies the arena of one captured CUDA graph (see the [allocator's module doc](super)).
pub type ArenaId = u32;

impl Pool {
    /// Starts a graph arena: every block handed out from now until [`Pool::end_arena`] belongs
    /// to it. Fails when another arena is active (captures do not nest).
    pub fn begin_arena(&mut self) -> Result<ArenaId> {
        if let Some(a) = self.active {
            return Err(Error::InvalidValue { name: "graph capture", msg: format!("arena {a} is still being captured") });
        }
        let id = self.next_arena;
        self.next_arena += 1;
        self.arenas.insert(id, FreeLists::new());
        self.active = Some(id);
        Ok(id)
    }

    /// Ends the active arena's capture; its blocks stay reserved for the graph until
    /// [`Pool::retire_arena`].
    pub fn end_arena(&mut self) {
        self.active = None;
    }

    /// The arena being captured into.
    pub fn active_arena(&self) -> Option<ArenaId> {
        self.active
    }

    /// Gives a dropped graph's memory back to the shared cache: its free blocks now, its blocks
    /// in use when they are freed. Work queued on the stream before this call (the graph's last
    /// replay) still runs before any later user of those blocks.
    pub fn retire_arena(&mut self, id: ArenaId) {
        if self.active == Some(id) {
            self.active = None;
        }
        if let Some(lists) = self.arenas.remove(&id) {
            for (class, ptrs) in lists {
                self.free.entry(class).or_default().extend(ptrs);
            }
        }
        for b in self.held_free.remove(&id).unwrap_or_default() {
            self.free.entry(b.bytes).or_default().push(b.ptr);
        }
        let held = &mut self.held;
        self.owner.retain(|ptr, a| {
            let keep = *a != id;
            if !keep {
                held.remove(ptr);
            }
            keep
        });
    }

    /// During a capture, a free block of `class` from the free list of `arena` (when given),
    /// else from the shared cache, else from the driver; never by releasing cached blocks (that
    /// waits on the stream, which a capture forbids).
    pub(super) fn take_in_capture(&mut self, raw: &mut impl RawMemory, bytes: usize, class: usize, arena: Option<ArenaId>) -> Result<u64> {
        let own = arena.and_then(|a| self.arenas.get_mut(&a)).and_then(|l| pop(l, class));
        if let Some(ptr) = own.or_else(|| pop(&mut self.free, class)) {
            self.cached -= class;
            return Ok(ptr);
        }
        if self.in_use + self.cached + class > self.cap {
            return Err(self.oom(bytes));
        }
        let ptr = match raw.alloc(class) {
            Ok(p) => p,
            Err(RawError::OutOfMemory) => return Err(self.oom(bytes)),
            Err(RawError::Other(e)) => return Err(e),
        };
        self.driver_allocs += 1;
        Ok(ptr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cuda::allocator::fake::Fake;

    /// A capture takes its own free blocks first, then adopts the shared cache's; blocks it
    /// handed out go back to its arena when freed, so work outside the graph never gets them
    /// while the graph lives; retiring the arena returns everything to the shared cache.
    #[test]
    fn graph_arenas_keep_their_blocks_until_retired() {
        let mut raw = Fake::new(1 << 30);
        let mut pool = Pool::new(1 << 30);
        let warm = pool.allocate(&mut raw, 1 << 20).unwrap();
        pool.release(warm);
        let arena = pool.begin_arena().unwrap();
        assert!(pool.begin_arena().is_err(), "captures do not nest");
        let adopted = pool.allocate(&mut raw, 1 << 20).unwrap();
        assert_eq!((adopted.ptr, raw.allocs), (warm.ptr, 1), "the cached block is adopted, no driver call");
        pool.release(adopted);
        let again = pool.allocate(&mut raw, 1 << 20).unwrap();
        assert_eq!(again.ptr, warm.ptr, "reused inside the capture");
        let fresh = pool.allocate(&mut raw, 4096).unwrap();
        assert_eq!(raw.allocs, 2);
        pool.end_arena();
        assert_eq!(pool.active_arena(), None);

        // Outside the capture, freed graph blocks are not handed out again.
        pool.release(again);
        let outside = pool.allocate(&mut raw, 1 << 20).unwrap();
        assert_ne!(outside.ptr, warm.ptr);
        pool.release(outside);

        // A release of cached memory leaves the graph's blocks alone.
        let before = raw.frees;
        pool.release_cached(&mut raw, usize::MAX);
        assert_eq!(raw.frees, before + 1, "only the shared block went back to the driver");

        pool.retire_arena(arena);
        let reused = pool.allocate(&mut raw, 1 << 20).unwrap();
        assert_eq!(reused.ptr, warm.ptr, "a retired arena's free blocks join the shared cache");
        pool.release(fresh);
        let small = pool.allocate(&mut raw, 4096).unwrap();
        assert_eq!(small.ptr, fresh.ptr, "and so do its blocks freed after retirement");
        assert_eq!(pool.stats().current_bytes, (1 << 20) + 4096);
    }

    /// During a capture the cap is never met by releasing cached memory (that would wait on
    /// the stream): the request fails instead, and nothing is released.
    #[test]
    fn a_capture_over_the_cap_fails_without_releasing() {
        let mut raw = Fake::new(1 << 30);
        let mut pool = Pool::new(3 << 20);
        let cached = pool.allocate(&mut raw, 2 << 20).unwrap();
        pool.release(cached);
        pool.begin_arena().unwrap();
        assert!(matches!(pool.allocate(&mut raw, 1536 << 10), Err(Error::OutOfMemory { .. })));
        assert_eq!(pool.release_cached(&mut raw, usize::MAX), 0);
        assert_eq!(raw.frees, 0);
        pool.end_arena();
        assert!(pool.allocate(&mut raw, 1536 << 10).is_ok(), "outside the capture the cache is released");
        assert_eq!(raw.frees, 1);
    }
}
