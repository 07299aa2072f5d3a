//! A fake driver for the unit tests: [`RawMemory`] over a byte budget, counting its
//! allocations and releases.

use super::raw::{Block, RawError, RawMemory};

/// A fake driver with `capacity` bytes.
pub(super) struct Fake {
    next: u64,
    live: usize,
    capacity: usize,
    pub(super) allocs: usize,
    pub(super) frees: usize,
}

impl Fake {
    pub(super) fn new(capacity: usize) -> Fake {
        Fake { next: 0x1000, live: 0, capacity, allocs: 0, frees: 0 }
    }
}

impl RawMemory for Fake {
    fn alloc(&mut self, bytes: usize) -> std::result::Result<u64, RawError> {
        if self.live + bytes > self.capacity {
            return Err(RawError::OutOfMemory);
        }
        self.live += bytes;
        self.allocs += 1;
        self.next += bytes as u64;
        Ok(self.next)
    }
    fn free(&mut self, blocks: &[Block]) {
        for b in blocks {
            self.live -= b.bytes;
            self.frees += 1;
        }
    }
}
