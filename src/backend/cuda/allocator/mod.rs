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
//! [`Error::OutOfMemory`](crate::error::Error::OutOfMemory).
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
//!
//! Files:
//! - `pool.rs`: [`Pool`], its free lists and byte counters: allocation, release, and the return
//!   of cached blocks to the driver;
//! - `size_classes.rs`: [`size_class`] and its granules;
//! - `cap.rs`: the default cap and `HYPERSEG_MEM_LIMIT` ([`default_cap`], [`parse_bytes`]);
//! - `arena.rs`: graph arenas ([`ArenaId`], [`Pool::begin_arena`], [`Pool::retire_arena`]) and
//!   the allocation order during a capture;
//! - `feed.rs`: the blocks of graph feeds ([`Pool::allocate_feed`]);
//! - `stats.rs`: [`MemoryStats`] and the peak's reset;
//! - `raw.rs`: the driver interface ([`Block`], [`RawError`], [`RawMemory`]);
//! - `fake.rs` (tests only): a fake driver for the unit tests.

mod arena;
mod cap;
#[cfg(test)]
mod fake;
mod feed;
mod pool;
mod raw;
mod size_classes;
mod stats;

pub use arena::ArenaId;
pub use cap::{default_cap, parse_bytes, DEFAULT_CAP_LIMIT, MEM_LIMIT_ENV};
pub use pool::Pool;
pub use raw::{Block, RawError, RawMemory};
pub use size_classes::{size_class, LARGE_THRESHOLD, SMALL_GRANULE};
pub use stats::MemoryStats;
