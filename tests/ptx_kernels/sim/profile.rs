//! How a kernel's warps access memory, measured by the simulator ([`Kernels::launch_profiled`]):
//! what ncu calls sectors per request and shared-memory bank conflicts, without a GPU.
//!
//! A *request* is one memory instruction run by the lanes of one warp: the n-th run of that
//! instruction by each lane (lanes that loop together issue their n-th iterations together, as
//! on a GPU; a lane that skips a guarded access is simply absent from the request).
//! - Global memory moves in 32-byte sectors. A request costs the distinct sectors its lanes'
//!   bytes fall in; the fewest it could cost is its distinct bytes over 32, rounded up. Their
//!   ratio, summed over requests ([`Sectors::overhead`]), is 1 for coalesced requests (a warp
//!   reading 128 consecutive aligned bytes: 4 sectors), 1.25 for the same bytes off a 32-byte
//!   boundary, and up to 8 for 4-byte lanes 32 bytes or more apart (a column of a row-major
//!   matrix). Lanes reading the same address share its sector, as on a GPU.
//! - Shared memory has 32 banks of 4-byte words. A request takes as many passes (wavefronts) as
//!   the most distinct words it touches in one bank; the fewest is its distinct words over 32,
//!   rounded up. Their ratio ([`Banks::conflicts`]) is 1 without bank conflicts and 32 for a
//!   warp reading a column of a 32-word-wide tile.
//!
//! These are counts, the same on every machine, so tests may assert them. They say whether a
//! kernel moves the bytes it needs and no more, not how fast it runs: caching (a sector read
//! twice by different requests is counted twice), latency and occupancy are not modelled.
//!
//! [`Kernels::launch_profiled`]: super::Kernels::launch_profiled

use std::collections::HashMap;

use super::exec::Stats;
use super::memory::SHARED_BASE;

/// What a request does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Kind {
    GlobalLoad,
    GlobalStore,
    Atomic,
    Shared,
}

/// A request: the warp, the instruction (its address) and which run of it.
type RequestKey = (u32, usize, u32);

/// The requests of one block's warps while it runs: each with its kind and the `(address,
/// bytes)` of each lane's access.
#[derive(Default)]
pub(super) struct Recorder {
    requests: HashMap<RequestKey, (Kind, Vec<(u64, usize)>)>,
}

impl Recorder {
    /// Lane access: the `n`-th run of instruction `inst` by a lane of warp `warp`.
    pub(super) fn note(&mut self, warp: u32, inst: usize, n: u32, kind: Kind, at: u64, bytes: usize) {
        self.requests.entry((warp, inst, n)).or_insert_with(|| (kind, Vec::new())).1.push((at, bytes));
    }

    /// Adds the block's requests to `p`.
    pub(super) fn add_to(self, p: &mut Profile) {
        for (kind, accesses) in self.requests.into_values() {
            match kind {
                Kind::GlobalLoad => p.load.add(&accesses),
                Kind::GlobalStore => p.store.add(&accesses),
                Kind::Atomic => p.atomic.add(&accesses),
                Kind::Shared => p.shared.add(&accesses),
            }
        }
    }
}

/// The distinct bytes the accesses touch, in increasing order.
fn distinct_bytes(accesses: &[(u64, usize)]) -> Vec<u64> {
    let mut bytes: Vec<u64> = accesses.iter().flat_map(|&(a, n)| a..a + n as u64).collect();
    bytes.sort_unstable();
    bytes.dedup();
    bytes
}

/// Global-memory requests of one kind: the 32-byte sectors they touch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Sectors {
    pub requests: u64,
    /// Distinct bytes, summed over requests.
    pub bytes: u64,
    /// Distinct sectors touched, summed over requests.
    pub sectors: u64,
    /// The fewest sectors that hold each request's bytes, summed.
    pub ideal: u64,
}

impl Sectors {
    fn add(&mut self, accesses: &[(u64, usize)]) {
        let bytes = distinct_bytes(accesses);
        let mut sectors: Vec<u64> = bytes.iter().map(|b| b / 32).collect();
        sectors.dedup();
        self.requests += 1;
        self.bytes += bytes.len() as u64;
        self.sectors += sectors.len() as u64;
        self.ideal += (bytes.len() as u64).div_ceil(32);
    }

    /// Sectors touched per sector needed: 1 when every request is coalesced (1 too when there
    /// is no request).
    pub fn overhead(&self) -> f64 {
        if self.ideal == 0 {
            1.0
        } else {
            self.sectors as f64 / self.ideal as f64
        }
    }
}

/// Shared-memory requests: the passes (wavefronts) their bank conflicts take.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Banks {
    pub requests: u64,
    /// Wavefronts: per request, the most distinct words touched in one bank; summed.
    pub wavefronts: u64,
    /// The fewest wavefronts for each request's distinct words (32 per pass), summed.
    pub ideal: u64,
}

impl Banks {
    fn add(&mut self, accesses: &[(u64, usize)]) {
        let mut words: Vec<u64> = distinct_bytes(accesses).iter().map(|b| (b - SHARED_BASE) / 4).collect();
        words.dedup();
        let mut per_bank = [0u64; 32];
        for w in &words {
            per_bank[(w % 32) as usize] += 1;
        }
        self.requests += 1;
        self.wavefronts += per_bank.iter().copied().max().unwrap_or(0).max(1);
        self.ideal += (words.len() as u64).div_ceil(32).max(1);
    }

    /// Wavefronts per wavefront needed: 1 without bank conflicts (1 too when there is no
    /// request).
    pub fn conflicts(&self) -> f64 {
        if self.ideal == 0 {
            1.0
        } else {
            self.wavefronts as f64 / self.ideal as f64
        }
    }
}

/// A profiled launch: its counters, and how its warps' requests use memory.
#[derive(Clone, Copy, Debug, Default)]
pub struct Profile {
    pub stats: Stats,
    pub load: Sectors,
    pub store: Sectors,
    pub atomic: Sectors,
    pub shared: Banks,
}

impl std::fmt::Display for Profile {
    /// One line: global bytes and sector overhead per kind, shared-memory conflicts.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut first = true;
        for (name, s) in [("loads", self.load), ("stores", self.store), ("atomics", self.atomic)] {
            if s.requests > 0 {
                write!(f, "{}{name} {} B x{:.2}", if first { "" } else { ", " }, s.bytes, s.overhead())?;
                first = false;
            }
        }
        if self.shared.requests > 0 {
            write!(f, "{}shared x{:.2}", if first { "" } else { ", " }, self.shared.conflicts())?;
        }
        Ok(())
    }
}
