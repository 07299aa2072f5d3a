//! Graph feeds: a buffer the host rewrites before every replay gets a block no earlier work of
//! the capture touched, held (never handed out again) until the graph is dropped.

use super::pool::Pool;
use super::raw::{Block, RawMemory};
use super::size_classes::size_class;
use crate::error::Result;

impl Pool {
    /// A block for a graph feed of `bytes` bytes: during a capture, a block no work of the
    /// capture has touched (from the shared cache, whose blocks have been free since before the
    /// capture, or from the driver; never one of the arena's own free blocks, which earlier
    /// nodes of the graph use), held for the arena's life. The host writes a feed before each
    /// replay, so a node replayed before the feed's reader must not share its memory. Outside
    /// a capture, a plain [`Pool::allocate`].
    pub fn allocate_feed(&mut self, raw: &mut impl RawMemory, bytes: usize) -> Result<Block> {
        let Some(arena) = self.active else {
            return self.allocate(raw, bytes);
        };
        let class = size_class(bytes).ok_or_else(|| self.oom(bytes))?;
        if self.in_use.saturating_add(class) > self.cap {
            return Err(self.oom(bytes));
        }
        let ptr = self.take_in_capture(raw, bytes, class, None)?;
        self.owner.insert(ptr, arena);
        self.held.insert(ptr);
        Ok(self.hand_out(ptr, class))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cuda::allocator::fake::Fake;

    /// A held block (a feed's buffer) is not reused even inside its capture, and joins the
    /// shared cache when the arena retires.
    #[test]
    fn held_blocks_are_not_reused_until_the_arena_retires() {
        let mut raw = Fake::new(1 << 30);
        let mut pool = Pool::new(1 << 30);
        let arena = pool.begin_arena().unwrap();
        let feed = pool.allocate_feed(&mut raw, 100).unwrap();
        pool.release(feed);
        let next = pool.allocate(&mut raw, 100).unwrap();
        assert_ne!(next.ptr, feed.ptr, "a held block is not handed out within the capture");
        pool.release(next);
        assert_eq!(pool.allocate(&mut raw, 100).unwrap().ptr, next.ptr, "an unheld one is");
        pool.end_arena();
        pool.retire_arena(arena);
        assert_eq!(pool.allocate(&mut raw, 100).unwrap().ptr, feed.ptr, "the held block joined the shared cache");
        // Outside a capture, a feed's block is a plain one.
        let plain = pool.allocate_feed(&mut raw, 100).unwrap();
        pool.release(plain);
        assert_eq!(pool.allocate(&mut raw, 100).unwrap().ptr, plain.ptr);
    }

    /// A feed's block is never one the capture used and freed (a node replayed before the
    /// feed's reader would overwrite what the host wrote), nor one in use when the capture began
    /// and freed during it; it comes from blocks idle since before the capture, or the driver.
    #[test]
    fn feeds_never_share_memory_with_earlier_work_of_the_capture() {
        let mut raw = Fake::new(1 << 30);
        let mut pool = Pool::new(1 << 30);
        let idle = pool.allocate(&mut raw, 100).unwrap();
        let busy = pool.allocate(&mut raw, 100).unwrap();
        pool.release(idle);
        let arena = pool.begin_arena().unwrap();
        let temp = pool.allocate(&mut raw, 100).unwrap(); // adopts `idle`
        assert_eq!(temp.ptr, idle.ptr);
        pool.release(temp); // a temporary of an earlier node
        pool.release(busy); // a pre-capture buffer freed by the capture
        let feed = pool.allocate_feed(&mut raw, 12).unwrap();
        assert!(feed.ptr != temp.ptr && feed.ptr != busy.ptr, "the feed reuses memory of earlier captured work");
        assert_eq!(pool.stats().driver_allocs, 3, "it came from the driver");
        // Work of the capture still reuses its own blocks; the feed stays held.
        let later = pool.allocate(&mut raw, 100).unwrap();
        assert!(later.ptr == temp.ptr || later.ptr == busy.ptr);
        pool.release(feed);
        let again = pool.allocate(&mut raw, 12).unwrap();
        assert_ne!(again.ptr, feed.ptr, "a freed feed is not reused within its graph");
        pool.end_arena();
        // After the capture, the graph's blocks (the pre-capture one included) stay out of the
        // shared cache until it retires.
        let eager = pool.allocate(&mut raw, 100).unwrap();
        assert!(eager.ptr != busy.ptr && eager.ptr != temp.ptr);
        pool.retire_arena(arena);
    }
}
