//! The counters the pool reports ([`MemoryStats`]: bytes in use, peak, cap, reserved, driver
//! allocations) and the peak's reset.

use super::pool::Pool;

/// Bytes the allocator has handed out, at most, and may hand out.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemoryStats {
    /// Bytes in live buffers (rounded up to their size class).
    pub current_bytes: usize,
    /// The most `current_bytes` has been since the device was made or [`reset_peak`](crate::backend::cuda::CudaDevice::reset_peak).
    pub peak_bytes: usize,
    /// The cap on reserved bytes.
    pub cap_bytes: usize,
    /// Bytes held from the driver: live buffers plus cached free blocks.
    pub reserved_bytes: usize,
    /// Blocks obtained from the driver so far (requests the cache could not serve). Constant
    /// across a run of steps when those steps allocate nothing new from the driver.
    pub driver_allocs: u64,
}

impl Pool {
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cuda::allocator::fake::Fake;

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
}
