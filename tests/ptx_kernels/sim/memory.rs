//! The simulated device memory: separate allocations at distinct addresses with unmapped gaps
//! between them, bounds and alignment checks, and the race check (who wrote and who read each
//! byte during a launch, on global and shared memory).

/// One buffer of the simulated device.
struct Allocation {
    base: u64,
    data: Vec<u8>,
    /// Per byte, during a launch: the thread that last wrote it ([`NOBODY`], [`ATOMICS`] or a
    /// thread's id) and the thread(s) that read it ([`NOBODY`], [`MANY`] or a thread's id).
    writer: Vec<u32>,
    reader: Vec<u32>,
}

/// No thread touched the byte (writer or reader).
pub(super) const NOBODY: u32 = 0;
/// Only atomics wrote the byte.
pub(super) const ATOMICS: u32 = u32::MAX;
/// More than one thread read the byte.
const MANY: u32 = u32::MAX;

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
        self.allocations.push(Allocation { base, data: bytes, writer: vec![NOBODY; n], reader: vec![NOBODY; n] });
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
            a.writer.fill(NOBODY);
            a.reader.fill(NOBODY);
        }
    }

    /// The bytes at `address` for `thread` (an id > 0), after checking that no other thread of
    /// the launch wrote them or (for a write) read them, unless every access is atomic: two
    /// threads touching one location without an atomic are a data race on a GPU, whatever
    /// order the simulator happens to run them in.
    pub(super) fn access(&mut self, address: u64, size: usize, thread: u32, how: Access) -> Result<&mut [u8], String> {
        let (i, off) = self.find(address, size).ok_or_else(|| format!("{size}-byte access at {address:#x} is outside every allocation"))?;
        let a = &mut self.allocations[i];
        track(&mut a.writer[off..off + size], &mut a.reader[off..off + size], thread, how)
            .map_err(|what| format!("data race at {address:#x}: {what}"))?;
        Ok(&mut a.data[off..off + size])
    }
}

/// Records an access by `thread` (an id > 0) to bytes whose last writer and readers are
/// `writer` and `reader`; the error says what made it a race: another thread's write before any
/// access (unless both are atomics), another thread's read before a write, or any write before
/// an `ld.global.nc`.
pub(super) fn track(writer: &mut [u32], reader: &mut [u32], thread: u32, how: Access) -> Result<(), &'static str> {
    for (w, r) in writer.iter_mut().zip(reader.iter_mut()) {
        if how == Access::LoadNc && *w != NOBODY {
            return Err("written during the launch, then loaded through the non-coherent cache (`ld.global.nc`)");
        }
        if *w != NOBODY && *w != thread && !(how == Access::Atomic && *w == ATOMICS) {
            return Err("written by another thread without an atomic");
        }
        if how == Access::Atomic && *w != NOBODY && *w != ATOMICS {
            return Err("written by a plain store, then updated by an atomic (other threads' atomics would race with that store)");
        }
        if matches!(how, Access::Store | Access::Atomic) && *r != NOBODY && *r != thread {
            return Err("read by another thread before this write");
        }
        match how {
            Access::Load => *r = if *r == NOBODY || *r == thread { thread } else { MANY },
            // A later write by any thread, this one included, may leave the read-only cache stale
            // for other reads of the launch: count it as read by everyone.
            Access::LoadNc => *r = MANY,
            Access::Store => *w = thread,
            Access::Atomic => *w = ATOMICS,
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
