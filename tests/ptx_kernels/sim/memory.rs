//! The simulated device memory: separate allocations at distinct addresses with unmapped gaps
//! between them, bounds and alignment checks, and the race check (who wrote and who read each
//! byte during a launch, on global and shared memory).

/// One buffer of the simulated device.
struct Allocation {
    base: u64,
    data: Vec<u8>,
    /// Per byte, during a launch: who last wrote it and who read it since (see [`track`]).
    writer: Vec<Mark>,
    reader: Vec<Mark>,
}

/// No thread touched the byte (a mark's `who` or `block`).
pub(super) const NOBODY: u32 = 0;
/// A writer mark's `who` when atomics wrote the byte.
pub(super) const ATOMICS: u32 = u32::MAX;
/// A reader mark's `who` when more than one thread of its block read the byte; a mark's
/// `block` when threads of more than one block did.
const MANY: u32 = u32::MAX;

/// Who touched a byte: a thread's id (> 0; or [`ATOMICS`], [`MANY`]), its block's id (> 0;
/// or [`MANY`]), and the block's barrier count at the time (the epoch). Threads of one block
/// are ordered across a barrier; threads of different blocks never are (within a launch).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Mark {
    pub who: u32,
    pub block: u32,
    pub epoch: u32,
}

impl Mark {
    const NONE: Mark = Mark { who: NOBODY, block: NOBODY, epoch: 0 };

    /// Whether an access marked `self` is ordered before one by `by` without an atomic: by the
    /// same thread, or by its block before a barrier `by` has passed.
    fn ordered_before(self, by: Mark) -> bool {
        self.who == NOBODY || (self.block == by.block && (self.epoch < by.epoch || self.who == by.who))
    }
}

/// How a thread touches global memory, for the race check.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Access {
    Load,
    /// `ld.global.nc`: the read-only cache may serve data older than any write of the launch,
    /// so such a load of bytes written during the launch (by any thread) is an error.
    LoadNc,
    Store,
    Atomic,
}

/// The simulated device memory: separate allocations at distinct, 256-byte aligned addresses
/// with unmapped gaps between them, so that an access past one buffer never lands in another.
#[derive(Default)]
pub struct Memory {
    allocations: Vec<Allocation>,
    next: u64,
}

pub(super) const FIRST_ADDRESS: u64 = 0x7f00_0000_0000;

pub(super) const GAP: u64 = 4096;

pub(super) const SHARED_BASE: u64 = 0x400;

impl Memory {
    /// A new allocation holding `bytes`; returns its device address.
    pub fn alloc_bytes(&mut self, bytes: Vec<u8>) -> u64 {
        if self.next == 0 {
            self.next = FIRST_ADDRESS;
        }
        let base = self.next;
        self.next = (base + bytes.len() as u64 + GAP).next_multiple_of(256);
        let n = bytes.len();
        self.allocations.push(Allocation { base, data: bytes, writer: vec![Mark::NONE; n], reader: vec![Mark::NONE; n] });
        base
    }

    /// A copy of `values` in a new allocation.
    pub fn upload<T: bytemuck::Pod>(&mut self, values: &[T]) -> u64 {
        self.alloc_bytes(bytemuck::cast_slice(values).to_vec())
    }

    /// `bytes` bytes of 0xFF (every f32 and bf16 a NaN): a buffer whose unwritten elements show.
    pub fn poisoned(&mut self, bytes: usize) -> u64 {
        self.alloc_bytes(vec![0xFF; bytes])
    }

    /// `n` values of type `T` read back from `address`.
    pub fn download<T: bytemuck::Pod>(&self, address: u64, n: usize) -> Vec<T> {
        let size = n * std::mem::size_of::<T>();
        let (a, off) = self.find(address, size).unwrap_or_else(|| panic!("download of {size} bytes at {address:#x}: no such allocation"));
        bytemuck::pod_collect_to_vec(&self.allocations[a].data[off..off + size])
    }

    /// The allocation holding `size` bytes at `address`, and the offset in it.
    fn find(&self, address: u64, size: usize) -> Option<(usize, usize)> {
        let i = self.allocations.partition_point(|a| a.base <= address).checked_sub(1)?;
        let a = &self.allocations[i];
        let off = (address - a.base) as usize;
        (off + size <= a.data.len()).then_some((i, off))
    }

    /// Forgets who touched what: a launch begins.
    pub(super) fn begin_launch(&mut self) {
        for a in &mut self.allocations {
            a.writer.fill(Mark::NONE);
            a.reader.fill(Mark::NONE);
        }
    }

    /// The bytes at `address` for the thread `by`, after the race check of [`track`]: two
    /// threads touching one location, one of them writing, without an atomic or a barrier
    /// between them, are a data race on a GPU, whatever order the simulator runs them in.
    /// The access must be aligned to its size, as on a GPU.
    pub(super) fn access(&mut self, address: u64, size: usize, by: Mark, how: Access) -> Result<&mut [u8], String> {
        if !address.is_multiple_of(size as u64) {
            return Err(format!("misaligned {size}-byte access at {address:#x}"));
        }
        let (i, off) = self.find(address, size).ok_or_else(|| format!("{size}-byte access at {address:#x} is outside every allocation"))?;
        let a = &mut self.allocations[i];
        track(&mut a.writer[off..off + size], &mut a.reader[off..off + size], by, how)
            .map_err(|what| format!("data race at {address:#x}: {what}"))?;
        Ok(&mut a.data[off..off + size])
    }
}

/// Records an access by `by` to bytes whose last writer and readers are `writer` and `reader`;
/// the error says what made it a race: a write not ordered before this access (see
/// [`Mark::ordered_before`]) unless both are atomics, a plain store and atomics in the same
/// epoch, a read not ordered before this write, or any write before an `ld.global.nc`.
pub(super) fn track(writer: &mut [Mark], reader: &mut [Mark], by: Mark, how: Access) -> Result<(), &'static str> {
    for (w, r) in writer.iter_mut().zip(reader.iter_mut()) {
        let atomics_before = w.who == ATOMICS;
        if how == Access::LoadNc && w.who != NOBODY {
            return Err("written during the launch, then loaded through the non-coherent cache (`ld.global.nc`)");
        }
        let both_atomic = how == Access::Atomic && atomics_before;
        if !(w.ordered_before(by) || both_atomic) {
            return Err("written by another thread, with no atomic or barrier between");
        }
        if how == Access::Atomic && w.who != NOBODY && !atomics_before && !(w.block == by.block && w.epoch < by.epoch) {
            return Err("written by a plain store, then updated by an atomic with no barrier between");
        }
        if matches!(how, Access::Store | Access::Atomic) && !r.ordered_before(by) {
            return Err("read by another thread before this write, with no barrier between");
        }
        match how {
            Access::Load => {
                *r = if r.who == NOBODY || (r.block == by.block && r.epoch < by.epoch) {
                    by
                } else if r.block == by.block {
                    Mark { who: if r.who == by.who { by.who } else { MANY }, ..by }
                } else {
                    Mark { who: MANY, block: MANY, epoch: by.epoch }
                }
            }
            // A later write by any thread, this one included, may leave the read-only cache
            // stale for other reads of the launch: count it as read by every block.
            Access::LoadNc => *r = Mark { who: MANY, block: MANY, epoch: by.epoch },
            Access::Store => *w = by,
            Access::Atomic => {
                let block = if atomics_before && w.block != by.block { MANY } else { by.block };
                *w = Mark { who: ATOMICS, block, epoch: by.epoch };
            }
        }
    }
    Ok(())
}

pub(super) fn shared_offset(declared: usize, a: u64, size: usize) -> Result<usize, String> {
    if !a.is_multiple_of(size as u64) {
        return Err(format!("misaligned {size}-byte shared access at {a:#x}"));
    }
    let off = a.checked_sub(SHARED_BASE).ok_or_else(|| format!("shared address {a:#x} below the window"))? as usize;
    if off + size > declared {
        return Err(format!("shared access at {a:#x} outside the {declared} declared bytes"));
    }
    Ok(off)
}

pub(super) fn le(bytes: &[u8]) -> u64 {
    let mut v = 0u64;
    for (i, b) in bytes.iter().enumerate() {
        v |= (*b as u64) << (8 * i);
    }
    v
}

pub(super) fn set_le(bytes: &mut [u8], v: u64) {
    for (i, b) in bytes.iter_mut().enumerate() {
        *b = (v >> (8 * i)) as u8;
    }
}
