//! The pool's interface to the driver: a [`Block`] of device memory, and the allocations and
//! releases ([`RawMemory`]) the pool asks of the driver, or of a fake in the unit tests.

use crate::error::Error;

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
