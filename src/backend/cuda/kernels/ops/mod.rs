//! Launch wrappers for the hand-written PTX kernels, one file per `kernels/*.ptx` file: one free
//! function per [`BackendStorage`] method (same name, the storage first),
//! plus fused extras for the MLP ([`bias_relu_forward`], [`bias_relu_backward`]) and the
//! optimiser ([`adam_step_multi`]).
//!
//! Every wrapper checks lengths the way the CPU backend does (`backend::cpu`), refuses buffers
//! of 2^31 elements or more (the kernels index with u32), and launches on the device's one
//! stream. Launch shapes are documented per function and must match the header comment of the
//! kernel's `.ptx` file. Scratch buffers for f64 partial sums come from the device's pool (a
//! buffer of `2 k` f32 holds `k` f64; pool blocks are whole driver allocations, so 8-byte
//! alignment holds); small integer tables (points, labels, orders) are copied into pool
//! buffers as raw u32/u64 bits.
//!
//! The launch shapes (constants, [`cfg()`], [`grid_1d`], [`block_for`]) and the host-built tables
//! ([`plane_table`], [`gather_csr_table`], ...) are public so that `tests/ptx_kernels` runs each
//! kernel in the PTX simulator with the very shape and table its wrapper uses.

use cudarc::driver::LaunchConfig;

use super::entry;
use crate::backend::cuda::graph::FeedKind;
use crate::backend::cuda::{nvtx, CudaDevice, CudaStorage};
use crate::backend::*;
use crate::error::{Error, Result};

mod adam;
mod batch_norm;
mod elementwise;
mod finite;
mod gather;
mod mlp;
mod plane_sum;
mod pool;
mod reduce;
mod upsample;

pub use adam::*;
pub use batch_norm::*;
pub use elementwise::*;
pub use finite::*;
pub use gather::*;
pub use mlp::*;
pub use plane_sum::*;
pub use pool::*;
pub use reduce::*;
pub use upsample::*;

/// Threads per block of the 1-D and reduction kernels.
pub const BLOCK: u32 = 256;

/// Cap on the blocks of a 1-D grid-stride launch.
pub const MAX_GRID_1D: u32 = 65535;

/// Cap on gridDim.y (the kernels loop over y by gridDim.y beyond it).
pub const MAX_GRID_Y: u32 = 65535;

/// Blocks of the first pass of sum_all / softmax cross-entropy (fixed, so sums are reproducible).
pub const MAX_SUM_BLOCKS: u32 = 1024;

/// Elements one block reduces in the per-channel partial kernels (batch norm, reduce_to_mid).
pub const PLANE_CHUNK: u32 = 2048;

/// Elements of one tensor one block of the multi-tensor Adam updates.
pub const ADAM_CHUNK: u32 = 16384;

/// Largest element count any kernel indexes (u32 indices, grid-stride steps that never wrap).
const MAX_ELEMS: usize = i32::MAX as usize;

pub(crate) fn check_len(op: &'static str, what: &str, got: usize, want: usize) -> Result<()> {
    if got != want {
        return Err(Error::bad_shape(op, format!("{what} has {got} elements, expected {want}")));
    }
    Ok(())
}

/// `n` as a kernel element count (< 2^31).
pub(crate) fn count(op: &'static str, n: usize) -> Result<u32> {
    if n > MAX_ELEMS {
        return Err(Error::bad_shape(op, format!("{n} elements: the CUDA kernels take at most {MAX_ELEMS}")));
    }
    Ok(n as u32)
}

pub(crate) fn same_device(op: &'static str, a: &CudaStorage, b: &CudaStorage) -> Result<()> {
    if !a.device().same_device(b.device()) {
        return Err(Error::DeviceMismatch {
            op,
            lhs: format!("cuda:{}", a.device().ordinal()),
            rhs: format!("cuda:{}", b.device().ordinal()),
        });
    }
    Ok(())
}

/// A launch of `grid` blocks of `block` threads along x, no dynamic shared memory.
pub fn cfg(grid: (u32, u32, u32), block: u32) -> LaunchConfig {
    LaunchConfig { grid_dim: grid, block_dim: (block, 1, 1), shared_mem_bytes: 0 }
}

/// A 1-D grid-stride launch over `n > 0` elements: block 256, up to 65535 blocks.
pub fn grid_1d(n: u32) -> LaunchConfig {
    cfg((n.div_ceil(BLOCK).clamp(1, MAX_GRID_1D), 1, 1), BLOCK)
}

/// Side of the square tile of the batched transposes (`transpose_*` in `kernels/bf16.ptx`).
pub const TRANSPOSE_TILE: u32 = 32;

/// The launch of the batched transposes over `batch` matrices `[rows, cols]` (all non-zero):
/// block (32, 8), one block per 32 x 32 tile, grid (ceil(cols / 32), min(ceil(rows / 32),
/// 65535), min(batch, 65535)); the kernels walk the rest of y and z.
pub fn transpose_cfg(rows: u32, cols: u32, batch: u32) -> LaunchConfig {
    let grid = (cols.div_ceil(TRANSPOSE_TILE), rows.div_ceil(TRANSPOSE_TILE).min(MAX_GRID_Y), batch.min(MAX_GRID_Y));
    LaunchConfig { grid_dim: grid, block_dim: (TRANSPOSE_TILE, 8, 1), shared_mem_bytes: 0 }
}

/// Threads for a kernel whose block covers `n` items along x: a multiple of 32, at most 256.
pub fn block_for(n: u32) -> u32 {
    n.clamp(1, BLOCK).next_multiple_of(32)
}

/// A launch whose threads take `cols` columns along x (block [`block_for`]`(cols)`) and whose
/// blocks take `rows` rows along y, at most 65535 of them (the kernels stride over the rest by
/// gridDim.y): the gathers (a tap's channels over points or locations) and the fused first
/// layer (columns over points).
pub fn column_rows_cfg(cols: u32, rows: u32) -> LaunchConfig {
    let block = block_for(cols);
    cfg((cols.div_ceil(block), rows.min(MAX_GRID_Y), 1), block)
}

/// The work split of the per-channel partial kernels (batch norm's statistics and backward,
/// `reduce_mid_partial_f32`) over `x [outer, mid, inner]`: each of the `outer` planes of
/// `inner` contiguous values of one middle index is cut into nchunk = ceil(inner / 2048)
/// pieces. Returns (nchunk, pieces P = outer * nchunk, block min(256, inner rounded up to 32));
/// an error naming `op` if inner, P or P * mid reaches 2^31. Launch with [`partial_cfg`].
pub fn plane_split(op: &'static str, outer: usize, mid: usize, inner: usize) -> Result<(u32, u32, u32)> {
    let inner = count(op, inner)?;
    let nchunk = inner.div_ceil(PLANE_CHUNK);
    let pieces = count(op, outer * nchunk as usize)?;
    count(op, pieces as usize * mid)?;
    Ok((nchunk, pieces, block_for(inner.min(PLANE_CHUNK))))
}

/// The launch of a per-channel partial kernel split by [`plane_split`]: grid (pieces,
/// min(mid, 65535)), block `block`; blocks walk the middle index by gridDim.y.
pub fn partial_cfg(pieces: u32, mid: u32, block: u32) -> LaunchConfig {
    cfg((pieces, mid.min(MAX_GRID_Y), 1), block)
}

/// A pool buffer holding `k` f64 (as `2 k` f32).
fn scratch_f64(dev: &CudaDevice, k: usize) -> Result<CudaStorage> {
    let s = dev.alloc(2 * k.max(1))?;
    if s.raw_ptr() % 8 != 0 {
        return Err(crate::backend::cuda::error::cuda_error("scratch buffer", "pool block is not 8-byte aligned"));
    }
    Ok(s)
}

/// A pool buffer holding a copy of `data` as raw u32 bits, whose values are of `kind` (a
/// captured graph rebuilds them for each replay, see `backend::cuda::graph`).
pub(crate) fn upload_u32(dev: &CudaDevice, data: &[u32], kind: FeedKind) -> Result<CudaStorage> {
    dev.upload_words(data, 0, kind)
}

/// A pool buffer holding a copy of `data` as raw u64 bits (pool blocks are 256-byte aligned).
pub(crate) fn upload_u64(dev: &CudaDevice, data: &[u64], kind: FeedKind) -> Result<CudaStorage> {
    let s = dev.upload_words(bytemuck::cast_slice(data), 0, kind)?;
    if s.raw_ptr() % 8 != 0 {
        return Err(crate::backend::cuda::error::cuda_error("upload u64", "pool block is not 8-byte aligned"));
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_sizes_are_warp_multiples() {
        for n in [1u32, 31, 32, 33, 49, 64, 255, 256, 257, 100_000] {
            let b = block_for(n);
            assert!(b & 31 == 0 && (32..=256).contains(&b));
        }
        assert_eq!(keep_threshold(1.0), 1 << 32);
        assert_eq!(keep_threshold(0.5), 1 << 31);
    }
}
