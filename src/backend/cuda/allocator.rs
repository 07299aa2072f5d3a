//! The caching device allocator: size-bucketed free lists under a hard byte cap.
//!
//! Every [`CudaStorage`](super::CudaStorage) takes its memory from here and gives it back on
//! drop; blocks are kept in per-size-class free lists and handed out again without a driver
//! call (a training step allocates the same sizes every iteration). All device work runs on
//! the device's single stream, so a block freed by the host can be reused by the next kernel
//! in stream order without synchronising.
//!
//! Size classes ([`size_class`]): up to 1 MiB, multiples of 512 B; above, eight classes per
//! power of two (at most 12.5 % waste).
//!
//! The cap (default: the smaller of the card's memory and 12 GiB; the environment variable
//! `HYPERSEG_MEM_LIMIT` overrides it, in bytes or with a unit such as `12GiB`, `800MiB`,
//! `1.5GB`, see [`parse_bytes`]; [`CudaDevice::set_memory_cap`](super::CudaDevice::set_memory_cap)
//! changes it at run time) bounds the bytes reserved from the driver (in use plus cached).
//! A request that would pass it first releases cached blocks; if the bytes in use alone would
//! pass it, or the driver itself runs out, the request fails with
//! [`Error::OutOfMemory`].
//!
//! **Graph arenas.** While a CUDA graph is being captured ([`Pool::begin_arena`]), every block
//! handed out belongs to that graph's arena: the graph replays kernels on those addresses, so
//! such a block, once freed, goes back to its arena's own free list and is never handed to
//! work outside the graph (during the capture it is reused by later work of the same capture,
//! which the graph replays in the same order). A capture first takes blocks from its arena,
//! then adopts free blocks of the shared cache (the warm-up steps left exactly the sizes a
//! step needs), and only then asks the driver; it never returns cached blocks to the driver
//! (that would wait on the stream, which a capture forbids) and fails instead. A block in use
//! when the capture began and freed during it joins the arena too (captured work may have used
//! it). A graph feed, a buffer the host rewrites before every replay, gets a block no work of
//! the graph touches ([`Pool::allocate_feed`]: from the shared cache or the driver, never from
//! the arena's free list, whose blocks earlier nodes of the graph use), held until the graph is
//! dropped. When the graph is dropped ([`Pool::retire_arena`]) its free blocks join the shared
//! cache, and its blocks still in use join it when they are freed.
//!
//! [`Pool`] holds the pure accounting and is generic over [`RawMemory`] (the driver calls),
//! so the logic is unit-tested on the CPU with a fake.

use std::collections::{BTreeMap, HashMap};

use crate::error::{Error, Result};

/// Granularity of the small size classes.
pub const SMALL_GRANULE: usize = 512;
/// Requests up to this size use [`SMALL_GRANULE`] classes; larger ones use octave classes.
pub const LARGE_THRESHOLD: usize = 1 << 20;
/// log2 of the number of classes per power of two above [`LARGE_THRESHOLD`].
const CLASS_BITS: u32 = 3;
/// The largest cap applied by default.
pub const DEFAULT_CAP_LIMIT: usize = 12 << 30;
/// The environment variable that overrides the cap.
pub const MEM_LIMIT_ENV: &str = "HYPERSEG_MEM_LIMIT";

/// Bytes the allocator has handed out, at most, and may hand out.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemoryStats {
    /// Bytes in live buffers (rounded up to their size class).
    pub current_bytes: usize,
    /// The most `current_bytes` has been since the device was made or [`reset_peak`](super::CudaDevice::reset_peak).
    pub peak_bytes: usize,
    /// The cap on reserved bytes.
    pub cap_bytes: usize,
    /// Bytes held from the driver: live buffers plus cached free blocks.
    pub reserved_bytes: usize,
    /// Blocks obtained from the driver so far (requests the cache could not serve). Constant
    /// across a run of steps when those steps allocate nothing new from the driver.
    pub driver_allocs: u64,
}

/// The size class of a request of `bytes` bytes: the block size actually reserved. `None`
/// when the rounding overflows `usize`.
pub fn size_class(bytes: usize) -> Option<usize> {
    let b = bytes.max(1);
    if b <= LARGE_THRESHOLD {
        return Some(b.div_ceil(SMALL_GRANULE) * SMALL_GRANULE);
    }
    let top = usize::BITS - 1 - b.leading_zeros(); // floor(log2 b) >= 20
    let step = 1usize << (top - CLASS_BITS);
    b.checked_next_multiple_of(step)
}

/// Parses a byte count: a plain integer (`12884901888`), or a number with a unit: `KiB`,
/// `MiB`, `GiB`, `TiB` (and `K`, `M`, `G`, `T`) are powers of 1024; `KB`, `MB`, `GB`, `TB` are
/// powers of 1000; `B` is bytes. Case-insensitive, spaces allowed, decimals allowed
/// (`1.5GiB`).
pub fn parse_bytes(s: &str) -> Option<usize> {
    let t = s.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    if num.is_empty() {
        return None;
    }
    let mult: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kib" => 1024.0,
        "m" | "mib" => 1024f64.powi(2),
        "g" | "gib" => 1024f64.powi(3),
        "t" | "tib" => 1024f64.powi(4),
        "kb" => 1e3,
        "mb" => 1e6,
        "gb" => 1e9,
        "tb" => 1e12,
        _ => return None,
    };
    if unit.is_empty() {
        return num.parse::<usize>().ok();
    }
    let v: f64 = num.parse().ok()?;
    let bytes = (v * mult).round();
    (bytes.is_finite() && bytes >= 0.0 && bytes < usize::MAX as f64).then_some(bytes as usize)
}

/// The cap to apply on a card with `total_mem` bytes: `HYPERSEG_MEM_LIMIT` when set (an error
/// when it cannot be parsed), else the smaller of the card's memory and 12 GiB.
pub fn default_cap(total_mem: usize) -> Result<usize> {
    match std::env::var(MEM_LIMIT_ENV) {
        Ok(v) => parse_bytes(&v).ok_or_else(|| Error::InvalidValue {
            name: MEM_LIMIT_ENV,
            msg: format!("cannot read {v:?} as a byte count (examples: 12GiB, 800MiB, 1.5GB, 4294967296)"),
        }),
        Err(_) => Ok(total_mem.min(DEFAULT_CAP_LIMIT)),
    }
}

/// A block of device memory: its address and its size class in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Block {
    /// The device address (`CUdeviceptr`).
    pub ptr: u64,
    /// The reserved size (the size class), in bytes.
    pub bytes: usize,
}

/// Why a raw allocation failed.
#[derive(Debug)]
pub enum RawError {
    /// The driver is out of memory.
    OutOfMemory,
    /// Any other failure, already turned into an engine error.
    Other(Error),
}

/// The driver calls the pool needs.
pub trait RawMemory {
    /// Reserves `bytes` bytes from the driver.
    fn alloc(&mut self, bytes: usize) -> std::result::Result<u64, RawError>;
    /// Returns cached blocks to the driver (after waiting for queued work that may use them).
    fn free(&mut self, blocks: &[Block]);
}

/// Free blocks by size class.
type FreeLists = BTreeMap<usize, Vec<u64>>;

/// Identifies the arena of one captured CUDA graph (see the module doc).
pub type ArenaId = u32;

/// Accounting of one device's memory: the free lists and the byte counters.
#[derive(Debug)]
pub struct Pool {
    /// The shared cache.
    free: FreeLists,
    /// The free lists of live graph arenas.
    arenas: HashMap<ArenaId, FreeLists>,
    /// The arena of every block a live graph arena owns.
    owner: HashMap<u64, ArenaId>,
    /// Blocks of live arenas that are never handed out again while their arena lives.
    held: std::collections::HashSet<u64>,
    /// Held blocks already freed, per arena (they join the shared cache on retirement).
    held_free: HashMap<ArenaId, Vec<Block>>,
    /// The arena being captured into, if any.
    active: Option<ArenaId>,
    next_arena: ArenaId,
    cached: usize,
    in_use: usize,
    peak: usize,
    cap: usize,
    driver_allocs: u64,
}

/// Pops a block of `class` from `lists`.
fn pop(lists: &mut FreeLists, class: usize) -> Option<u64> {
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

    /// The counters.
    pub fn stats(&self) -> MemoryStats {
        MemoryStats {
            current_bytes: self.in_use,
            peak_bytes: self.peak,
            cap_bytes: self.cap,
            reserved_bytes: self.in_use + self.cached,
            driver_allocs: self.driver_allocs,
        }
    }

    /// Restarts the peak from the bytes in use now.
    pub fn reset_peak(&mut self) {
        self.peak = self.in_use;
    }

    /// Sets the cap; cached blocks above it are released at the next allocation.
    pub fn set_cap(&mut self, cap: usize) {
        self.cap = cap;
    }

    fn oom(&self, requested: usize) -> Error {
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

    /// During a capture, a free block of `class` from the free list of `arena` (when given),
    /// else from the shared cache, else from the driver; never by releasing cached blocks (that
    /// waits on the stream, which a capture forbids).
    fn take_in_capture(&mut self, raw: &mut impl RawMemory, bytes: usize, class: usize, arena: Option<ArenaId>) -> Result<u64> {
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

    fn hand_out(&mut self, ptr: u64, class: usize) -> Block {
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

    /// A fake driver with `capacity` bytes.
    struct Fake {
        next: u64,
        live: usize,
        capacity: usize,
        allocs: usize,
        frees: usize,
    }

    impl Fake {
        fn new(capacity: usize) -> Fake {
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

    #[test]
    fn small_classes_round_to_512_bytes() {
        assert_eq!(size_class(0), Some(512));
        assert_eq!(size_class(1), Some(512));
        assert_eq!(size_class(512), Some(512));
        assert_eq!(size_class(513), Some(1024));
        assert_eq!(size_class(1 << 20), Some(1 << 20));
    }

    #[test]
    fn large_classes_waste_at_most_an_eighth() {
        assert_eq!(size_class((1 << 20) + 1), Some((1 << 20) + (1 << 17)));
        assert_eq!(size_class(3 << 29), Some(3 << 29));
        for b in [(1usize << 20) + 1, 5_000_000, 123_456_789, 802_816 * 4096, (1 << 33) - 1] {
            let c = size_class(b).unwrap();
            assert!(c >= b && (c - b) * 8 <= b, "{b} -> {c}");
            assert_eq!(c % SMALL_GRANULE, 0);
            assert_eq!(size_class(c), Some(c), "classes are fixed points");
        }
        assert_eq!(size_class(usize::MAX), None);
    }

    #[test]
    fn parses_byte_counts_with_units() {
        assert_eq!(parse_bytes("4096"), Some(4096));
        assert_eq!(parse_bytes("12GiB"), Some(12 << 30));
        assert_eq!(parse_bytes(" 12 gib "), Some(12 << 30));
        assert_eq!(parse_bytes("800MiB"), Some(800 << 20));
        assert_eq!(parse_bytes("1.5G"), Some(3 << 29));
        assert_eq!(parse_bytes("2GB"), Some(2_000_000_000));
        assert_eq!(parse_bytes("64k"), Some(65536));
        assert_eq!(parse_bytes("12 bananas"), None);
        assert_eq!(parse_bytes("GiB"), None);
        assert_eq!(parse_bytes(""), None);
    }

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
    fn counts_current_and_peak() {
        let mut raw = Fake::new(1 << 30);
        let mut pool = Pool::new(1 << 30);
        let a = pool.allocate(&mut raw, 4 << 20).unwrap();
        let b = pool.allocate(&mut raw, 2 << 20).unwrap();
        pool.release(a);
        let s = pool.stats();
        assert_eq!(s.current_bytes, 2 << 20);
        assert_eq!(s.peak_bytes, 6 << 20);
        assert_eq!(s.reserved_bytes, 6 << 20);
        pool.reset_peak();
        assert_eq!(pool.stats().peak_bytes, 2 << 20);
        pool.release(b);
        assert_eq!(pool.stats().current_bytes, 0);
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
