//! Launch wrappers for the hand-written PTX kernels: one free function per
//! [`BackendStorage`] method (same name, the storage first),
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

use cudarc::driver::LaunchConfig;
use rayon::prelude::*;

use super::entry;
use crate::backend::cuda::graph::FeedKind;
use crate::backend::cuda::{nvtx, CudaDevice, CudaStorage};
use crate::backend::*;
use crate::error::{Error, Result};

/// Threads per block of the 1-D and reduction kernels.
const BLOCK: u32 = 256;
/// Cap on the blocks of a 1-D grid-stride launch.
const MAX_GRID_1D: u32 = 65535;
/// Cap on gridDim.y (the kernels loop over y by gridDim.y beyond it).
pub(crate) const MAX_GRID_Y: u32 = 65535;
/// Blocks of the first pass of sum_all / softmax cross-entropy (fixed, so sums are reproducible).
const MAX_SUM_BLOCKS: u32 = 1024;
/// Elements one block reduces in the per-channel partial kernels (batch norm, reduce_to_mid).
const PLANE_CHUNK: u32 = 2048;
/// Elements of one tensor one block of the multi-tensor Adam updates.
const ADAM_CHUNK: u32 = 16384;
/// Largest element count any kernel indexes (u32 indices, grid-stride steps that never wrap).
const MAX_ELEMS: usize = i32::MAX as usize;

// ---- helpers -------------------------------------------------------------------------------

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

pub(crate) fn cfg(grid: (u32, u32, u32), block: u32) -> LaunchConfig {
    LaunchConfig { grid_dim: grid, block_dim: (block, 1, 1), shared_mem_bytes: 0 }
}

/// A 1-D grid-stride launch over `n > 0` elements: block 256, up to 65535 blocks.
pub(crate) fn grid_1d(n: u32) -> LaunchConfig {
    cfg((n.div_ceil(BLOCK).clamp(1, MAX_GRID_1D), 1, 1), BLOCK)
}

/// Threads for a kernel whose block covers `n` items along x: a multiple of 32, at most 256.
pub(crate) fn block_for(n: u32) -> u32 {
    n.clamp(1, BLOCK).next_multiple_of(32)
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

/// The integer threshold a hash is compared with for a keep probability (as
/// `cpu::elementwise::keep_threshold`).
fn keep_threshold(keep: f32) -> u64 {
    ((keep as f64) * 4294967296.0) as u64
}

// ---- fill and elementwise --------------------------------------------------------------------

/// `x[i] = value`. Kernel `fill_f32`, 1-D grid (block 256).
pub fn fill(x: &mut CudaStorage, value: f32) -> Result<()> {
    let _r = nvtx::range("fill");
    let n = count("fill", x.len())?;
    if n == 0 {
        return Ok(());
    }
    let dev = x.device().clone();
    launch!(dev, entry::FILL_F32, grid_1d(n), x.slice_mut(), &n, &value)
}

/// Elementwise unary map. Kernels `{neg,sqr,sqrt,exp,log,relu}_f32`, 1-D grid (block 256).
pub fn unary(x: &CudaStorage, op: UnaryOp) -> Result<CudaStorage> {
    let _r = nvtx::range("unary");
    let n = count("unary", x.len())?;
    let dev = x.device().clone();
    let mut out = dev.alloc(x.len())?;
    if n == 0 {
        return Ok(out);
    }
    let k = match op {
        UnaryOp::Neg => entry::NEG_F32,
        UnaryOp::Sqr => entry::SQR_F32,
        UnaryOp::Sqrt => entry::SQRT_F32,
        UnaryOp::Exp => entry::EXP_F32,
        UnaryOp::Log => entry::LOG_F32,
        UnaryOp::Relu => entry::RELU_F32,
    };
    launch!(dev, k, grid_1d(n), out.slice_mut(), x.slice(), &n)?;
    Ok(out)
}

/// `x * mul + add`. Kernel `affine_f32`, 1-D grid.
pub fn affine(x: &CudaStorage, mul: f32, add: f32) -> Result<CudaStorage> {
    let _r = nvtx::range("affine");
    let n = count("affine", x.len())?;
    let dev = x.device().clone();
    let mut out = dev.alloc(x.len())?;
    if n == 0 {
        return Ok(out);
    }
    launch!(dev, entry::AFFINE_F32, grid_1d(n), out.slice_mut(), x.slice(), &n, &mul, &add)?;
    Ok(out)
}

/// Elementwise binary map of two equal-length buffers. Kernels `{add,sub,mul,div}_f32`.
pub fn binary(x: &CudaStorage, rhs: &CudaStorage, op: BinaryOp) -> Result<CudaStorage> {
    let _r = nvtx::range("binary");
    check_len("binary", "rhs", rhs.len(), x.len())?;
    same_device("binary", x, rhs)?;
    let n = count("binary", x.len())?;
    let dev = x.device().clone();
    let mut out = dev.alloc(x.len())?;
    if n == 0 {
        return Ok(out);
    }
    let k = match op {
        BinaryOp::Add => entry::ADD_F32,
        BinaryOp::Sub => entry::SUB_F32,
        BinaryOp::Mul => entry::MUL_F32,
        BinaryOp::Div => entry::DIV_F32,
    };
    launch!(dev, k, grid_1d(n), out.slice_mut(), x.slice(), rhs.slice(), &n)?;
    Ok(out)
}

/// `grad * (y > 0)` with `y` the ReLU output. Kernel `relu_backward_f32` (a = y, b = grad).
pub fn relu_backward(y: &CudaStorage, grad: &CudaStorage) -> Result<CudaStorage> {
    let _r = nvtx::range("relu_backward");
    check_len("relu_backward", "grad", grad.len(), y.len())?;
    same_device("relu_backward", y, grad)?;
    let n = count("relu_backward", y.len())?;
    let dev = y.device().clone();
    let mut out = dev.alloc(y.len())?;
    if n == 0 {
        return Ok(out);
    }
    launch!(dev, entry::RELU_BACKWARD_F32, grid_1d(n), out.slice_mut(), y.slice(), grad.slice(), &n)?;
    Ok(out)
}

/// `x += alpha * rhs`, in place. Kernel `add_scaled_assign_f32`, 1-D grid.
pub fn add_scaled_assign(x: &mut CudaStorage, rhs: &CudaStorage, alpha: f32) -> Result<()> {
    let _r = nvtx::range("add_scaled_assign");
    check_len("add_scaled_assign", "rhs", rhs.len(), x.len())?;
    same_device("add_scaled_assign", x, rhs)?;
    let n = count("add_scaled_assign", x.len())?;
    if n == 0 {
        return Ok(());
    }
    let dev = x.device().clone();
    launch!(dev, entry::ADD_SCALED_ASSIGN_F32, grid_1d(n), x.slice_mut(), rhs.slice(), &n, &alpha)
}

/// The sum of all elements (f64 accumulation), as a one-element buffer. Kernels
/// `sum_partial_f32` (grid G = min(ceil(n/256), 1024), block 256) then `sum_final_f64`
/// (grid 1, block 256). Deterministic.
pub fn sum_all(x: &CudaStorage) -> Result<CudaStorage> {
    let _r = nvtx::range("sum_all");
    let n = count("sum_all", x.len())?;
    let dev = x.device().clone();
    if n == 0 {
        return dev.zeros(1);
    }
    let g = n.div_ceil(BLOCK).clamp(1, MAX_SUM_BLOCKS);
    let mut partial = scratch_f64(&dev, g as usize)?;
    launch!(dev, entry::SUM_PARTIAL_F32, cfg((g, 1, 1), BLOCK), partial.slice_mut(), x.slice(), &n)?;
    let mut out = dev.alloc(1)?;
    let scale = 1.0f64;
    launch!(dev, entry::SUM_FINAL_F64, cfg((1, 1, 1), BLOCK), out.slice_mut(), partial.slice(), &g, &scale)?;
    Ok(out)
}

// ---- broadcasts and reductions along the middle axis -----------------------------------------

fn broadcast(op: &'static str, k: &'static str, x: &CudaStorage, v: &CudaStorage, s: BroadcastSpec) -> Result<CudaStorage> {
    let _r = nvtx::range(op);
    check_len(op, "input", x.len(), s.outer * s.mid * s.inner)?;
    check_len(op, "vector", v.len(), s.mid)?;
    same_device(op, x, v)?;
    let n = count(op, x.len())?;
    let dev = x.device().clone();
    let mut out = dev.alloc(x.len())?;
    if n == 0 {
        return Ok(out);
    }
    let (mid, inner) = (s.mid as u32, s.inner as u32);
    launch!(dev, k, grid_1d(n), out.slice_mut(), x.slice(), v.slice(), &n, &mid, &inner)?;
    Ok(out)
}

/// `out[o, m, i] = x[o, m, i] + v[m]`. Kernel `broadcast_add_f32`, 1-D grid.
pub fn broadcast_add(x: &CudaStorage, v: &CudaStorage, s: BroadcastSpec) -> Result<CudaStorage> {
    broadcast("broadcast_add", entry::BROADCAST_ADD_F32, x, v, s)
}

/// `out[o, m, i] = x[o, m, i] * v[m]`. Kernel `broadcast_mul_f32`, 1-D grid.
pub fn broadcast_mul(x: &CudaStorage, v: &CudaStorage, s: BroadcastSpec) -> Result<CudaStorage> {
    broadcast("broadcast_mul", entry::BROADCAST_MUL_F32, x, v, s)
}

/// Column sums of `x [rows, cols]` (f64, deterministic) into `out [cols]`:
/// `reduce_cols_partial_f32` on grid (ceil(cols/256), chunks), then `reduce_cols_final_f64`.
fn column_sums(dev: &CudaDevice, out: &mut CudaStorage, x: &CudaStorage, rows: u32, cols: u32) -> Result<()> {
    let (chunks, rpc) = row_chunks(rows, cols);
    let mut partial = scratch_f64(dev, chunks as usize * cols as usize)?;
    let colblocks = cols.div_ceil(BLOCK);
    launch!(dev, entry::REDUCE_COLS_PARTIAL_F32, cfg((colblocks, chunks, 1), BLOCK), partial.slice_mut(), x.slice(), &rows, &cols, &rpc)?;
    launch!(
        dev,
        entry::REDUCE_COLS_FINAL_F64,
        cfg((colblocks.min(MAX_GRID_1D), 1, 1), BLOCK),
        out.slice_mut(),
        partial.slice(),
        &cols,
        &chunks
    )
}

/// How to cut `rows` into chunks for a column reduction: (chunks, rows per chunk), aiming at
/// about 1024 blocks in all, chunks <= 65535.
fn row_chunks(rows: u32, cols: u32) -> (u32, u32) {
    let colblocks = cols.div_ceil(BLOCK).max(1);
    let want = (1024 / colblocks).max(1);
    let chunks0 = want.min(rows).clamp(1, MAX_GRID_Y);
    let rpc = rows.div_ceil(chunks0).max(1);
    (rows.div_ceil(rpc).max(1), rpc)
}

/// `out[m] = sum over o, i of x[o, m, i]` (f64, deterministic). inner == 1: the column
/// reduction above; inner > 1: `reduce_mid_partial_f32` on grid (outer * nchunk, min(mid, 65535))
/// with nchunk = ceil(inner / 2048), block min(256, inner rounded up to 32), then
/// `reduce_cols_final_f64` over the [outer * nchunk, mid] partials.
pub fn reduce_to_mid(x: &CudaStorage, s: BroadcastSpec) -> Result<CudaStorage> {
    let _r = nvtx::range("reduce_to_mid");
    check_len("reduce_to_mid", "input", x.len(), s.outer * s.mid * s.inner)?;
    count("reduce_to_mid", x.len())?;
    let dev = x.device().clone();
    if s.mid == 0 {
        return dev.alloc(0);
    }
    if s.outer == 0 || s.inner == 0 {
        return dev.zeros(s.mid);
    }
    let mut out = dev.alloc(s.mid)?;
    let (outer, mid, inner) = (s.outer as u32, s.mid as u32, s.inner as u32);
    if inner == 1 {
        column_sums(&dev, &mut out, x, outer, mid)?;
        return Ok(out);
    }
    let nchunk = inner.div_ceil(PLANE_CHUNK);
    let pieces = count("reduce_to_mid", outer as usize * nchunk as usize)?;
    count("reduce_to_mid", pieces as usize * mid as usize)?;
    let mut partial = scratch_f64(&dev, pieces as usize * mid as usize)?;
    let block = block_for(inner.min(PLANE_CHUNK));
    let chunk = PLANE_CHUNK;
    launch!(
        dev,
        entry::REDUCE_MID_PARTIAL_F32,
        cfg((pieces, mid.min(MAX_GRID_Y), 1), block),
        partial.slice_mut(),
        x.slice(),
        &outer,
        &mid,
        &inner,
        &chunk,
        &nchunk
    )?;
    launch!(
        dev,
        entry::REDUCE_COLS_FINAL_F64,
        cfg((mid.div_ceil(BLOCK).min(MAX_GRID_1D), 1, 1), BLOCK),
        out.slice_mut(),
        partial.slice(),
        &mid,
        &pieces
    )?;
    Ok(out)
}

// ---- data movement -------------------------------------------------------------------------

/// Copies `c.outer` blocks of `c.block` elements from `src` into `dst`. Kernel
/// `copy_blocks_f32`, 1-D grid over outer * block elements.
pub fn copy_blocks_into(src: &CudaStorage, dst: &mut CudaStorage, c: BlockCopy) -> Result<()> {
    let _r = nvtx::range("copy_blocks");
    same_device("copy", src, dst)?;
    if c.outer == 0 || c.block == 0 {
        return Ok(());
    }
    let src_end = c.src_offset + (c.outer - 1) * c.src_stride + c.block;
    let dst_end = c.dst_offset + (c.outer - 1) * c.dst_stride + c.block;
    if src_end > src.len() || dst_end > dst.len() {
        return Err(Error::bad_shape("copy", format!("{c:?} out of bounds")));
    }
    count("copy", src.len())?;
    count("copy", dst.len())?;
    let total = count("copy", c.outer * c.block)?;
    let (block, ss, so, ds, dof) = (c.block as u32, c.src_stride as u32, c.src_offset as u32, c.dst_stride as u32, c.dst_offset as u32);
    let dev = src.device().clone();
    launch!(dev, entry::COPY_BLOCKS_F32, grid_1d(total), dst.slice_mut(), src.slice(), &total, &block, &ss, &so, &ds, &dof)
}

// ---- batch norm ----------------------------------------------------------------------------

/// The per-channel work split of the batch-norm partial kernels: (nchunk, pieces P, block).
fn bn_split(op: &'static str, d: Nchw) -> Result<(u32, u32, u32)> {
    let hw = count(op, d.h * d.w)?;
    let nchunk = hw.div_ceil(PLANE_CHUNK);
    let pieces = count(op, d.n * nchunk as usize)?;
    count(op, pieces as usize * d.c)?;
    Ok((nchunk, pieces, block_for(hw.min(PLANE_CHUNK))))
}

/// The launch of the per-plane kernels (normalise, dx): grid (ceil(HW/B) capped, planes capped).
fn plane_cfg(hw: u32, planes: u32) -> LaunchConfig {
    let block = block_for(hw);
    cfg((hw.div_ceil(block).clamp(1, MAX_GRID_1D), planes.clamp(1, MAX_GRID_Y), 1), block)
}

/// Training-mode batch norm over `[n, c, h, w]`. Kernels: `bn_stats_partial_f32`
/// (grid (N * nchunk, min(C, 65535)), block min(256, HW rounded up to 32), nchunk =
/// ceil(HW / 2048)), `bn_stats_final_f32` (grid ceil(C/256), block 256), `bn_normalize_f32`
/// (grid (ceil(HW/B), min(N*C, 65535)), block B = min(256, HW rounded up to 32)).
///
/// With `relu`, the ReLU that follows is fused into `bn_normalize_f32`: `y = max(bn(x), 0)`
/// (the statistics are those of x, unchanged). Pass that `y` as `relu_out` to
/// [`batch_norm_backward`].
pub fn batch_norm_train(
    x: &CudaStorage,
    gamma: &CudaStorage,
    beta: &CudaStorage,
    d: Nchw,
    eps: f32,
    relu: bool,
) -> Result<BatchNormForward<CudaStorage>> {
    let _r = nvtx::range("batch_norm");
    check_len("batch_norm", "input", x.len(), d.len())?;
    check_len("batch_norm", "gamma", gamma.len(), d.c)?;
    check_len("batch_norm", "beta", beta.len(), d.c)?;
    same_device("batch_norm", x, gamma)?;
    same_device("batch_norm", x, beta)?;
    count("batch_norm", x.len())?;
    let dev = x.device().clone();
    let mut y = dev.alloc(x.len())?;
    let mut mean = dev.alloc(d.c)?;
    let mut invstd = dev.alloc(d.c)?;
    let mut var_unbiased = dev.alloc(d.c)?;
    if d.c == 0 {
        return Ok(BatchNormForward { y, mean, invstd, var_unbiased });
    }
    if d.n * d.h * d.w == 0 {
        // No sample: the CPU's statistics are 0/0.
        for s in [&mut mean, &mut invstd, &mut var_unbiased] {
            fill(s, f32::NAN)?;
        }
        return Ok(BatchNormForward { y, mean, invstd, var_unbiased });
    }
    let (c, hw) = (d.c as u32, (d.h * d.w) as u32);
    let planes = count("batch_norm", d.n * d.c)?;
    let (nchunk, pieces, block) = bn_split("batch_norm", d)?;
    let chunk = PLANE_CHUNK;
    let mut partial = scratch_f64(&dev, pieces as usize * d.c * 2)?;
    launch!(
        dev,
        entry::BN_STATS_PARTIAL_F32,
        cfg((pieces, c.min(MAX_GRID_Y), 1), block),
        partial.slice_mut(),
        x.slice(),
        &c,
        &hw,
        &chunk,
        &nchunk
    )?;
    let count_f = (d.n * d.h * d.w) as f64;
    launch!(
        dev,
        entry::BN_STATS_FINAL_F32,
        cfg((c.div_ceil(BLOCK).min(MAX_GRID_1D), 1, 1), BLOCK),
        mean.slice_mut(),
        invstd.slice_mut(),
        var_unbiased.slice_mut(),
        partial.slice(),
        x.slice(),
        &c,
        &hw,
        &pieces,
        &count_f,
        &eps
    )?;
    let relu = relu as u32;
    launch!(
        dev,
        entry::BN_NORMALIZE_F32,
        plane_cfg(hw, planes),
        y.slice_mut(),
        x.slice(),
        mean.slice(),
        invstd.slice(),
        gamma.slice(),
        beta.slice(),
        &c,
        &hw,
        &planes,
        &relu
    )?;
    Ok(BatchNormForward { y, mean, invstd, var_unbiased })
}

/// Backward of [`batch_norm_train`]. Kernels: `bn_bwd_partial_f32` (grid as the stats),
/// `bn_bwd_final_f32` (grid ceil(C/256), block 256; writes dgamma, dbeta and an f64
/// coefficient table [C, 8]), `bn_bwd_dx_f32` (grid as the normalisation).
///
/// `relu_out` is the output `y` of a forward with `relu` (the fused ReLU): then both
/// `bn_bwd_partial_f32` and `bn_bwd_dx_f32` read the gradient as `y > 0 ? dy : 0`, which gives
/// bit for bit the result of passing `relu_backward(y, dy)` with `relu_out = None`. `None`:
/// plain batch norm (`dy` is the gradient of the normalised output).
pub fn batch_norm_backward(
    x: &CudaStorage,
    dy: &CudaStorage,
    gamma: &CudaStorage,
    mean: &CudaStorage,
    invstd: &CudaStorage,
    d: Nchw,
    relu_out: Option<&CudaStorage>,
) -> Result<BatchNormBackward<CudaStorage>> {
    let _r = nvtx::range("batch_norm_backward");
    check_len("batch_norm_backward", "input", x.len(), d.len())?;
    check_len("batch_norm_backward", "dy", dy.len(), d.len())?;
    check_len("batch_norm_backward", "gamma", gamma.len(), d.c)?;
    check_len("batch_norm_backward", "mean", mean.len(), d.c)?;
    check_len("batch_norm_backward", "invstd", invstd.len(), d.c)?;
    for o in [dy, gamma, mean, invstd] {
        same_device("batch_norm_backward", x, o)?;
    }
    if let Some(y) = relu_out {
        check_len("batch_norm_backward", "relu output", y.len(), d.len())?;
        same_device("batch_norm_backward", x, y)?;
    }
    count("batch_norm_backward", x.len())?;
    let dev = x.device().clone();
    let mut dx = dev.alloc(x.len())?;
    if d.c == 0 {
        return Ok(BatchNormBackward { dx, dgamma: dev.alloc(0)?, dbeta: dev.alloc(0)? });
    }
    if d.n * d.h * d.w == 0 {
        return Ok(BatchNormBackward { dx, dgamma: dev.zeros(d.c)?, dbeta: dev.zeros(d.c)? });
    }
    let mut dgamma = dev.alloc(d.c)?;
    let mut dbeta = dev.alloc(d.c)?;
    let (c, hw) = (d.c as u32, (d.h * d.w) as u32);
    let planes = count("batch_norm_backward", d.n * d.c)?;
    let (nchunk, pieces, block) = bn_split("batch_norm_backward", d)?;
    let chunk = PLANE_CHUNK;
    let mut partial = scratch_f64(&dev, pieces as usize * d.c * 2)?;
    let mut coef = scratch_f64(&dev, d.c * 8)?;
    // The fused ReLU's output as a raw device pointer (0: no ReLU). `relu_out` stays borrowed
    // until the launches are queued; when its owner drops it later, the pool hands its block
    // only to work queued after them on the same stream.
    let ymask: u64 = relu_out.map_or(0, |y| y.raw_ptr());
    launch!(
        dev,
        entry::BN_BWD_PARTIAL_F32,
        cfg((pieces, c.min(MAX_GRID_Y), 1), block),
        partial.slice_mut(),
        x.slice(),
        dy.slice(),
        mean.slice(),
        &c,
        &hw,
        &chunk,
        &nchunk,
        &ymask
    )?;
    let count_f = (d.n * d.h * d.w) as f64;
    launch!(
        dev,
        entry::BN_BWD_FINAL_F32,
        cfg((c.div_ceil(BLOCK).min(MAX_GRID_1D), 1, 1), BLOCK),
        dgamma.slice_mut(),
        dbeta.slice_mut(),
        coef.slice_mut(),
        partial.slice(),
        mean.slice(),
        invstd.slice(),
        gamma.slice(),
        &c,
        &pieces,
        &count_f
    )?;
    launch!(
        dev,
        entry::BN_BWD_DX_F32,
        plane_cfg(hw, planes),
        dx.slice_mut(),
        x.slice(),
        dy.slice(),
        coef.slice(),
        &c,
        &hw,
        &planes,
        &count_f,
        &ymask
    )?;
    Ok(BatchNormBackward { dx, dgamma, dbeta })
}

// ---- pooling ---------------------------------------------------------------------------------

/// 2x2 max pooling, stride 2, floor mode. Kernel `max_pool2x2_f32`, one thread per output,
/// 1-D grid.
pub fn max_pool2x2(x: &CudaStorage, d: Nchw) -> Result<CudaStorage> {
    let _r = nvtx::range("max_pool2x2");
    check_len("max_pool2x2", "input", x.len(), d.len())?;
    count("max_pool2x2", x.len())?;
    let (oh, ow) = (d.h / 2, d.w / 2);
    let dev = x.device().clone();
    let total = count("max_pool2x2", d.n * d.c * oh * ow)?;
    let mut y = dev.alloc(total as usize)?;
    if total == 0 {
        return Ok(y);
    }
    let (h, w, oh, ow) = (d.h as u32, d.w as u32, oh as u32, ow as u32);
    launch!(dev, entry::MAX_POOL2X2_F32, grid_1d(total), y.slice_mut(), x.slice(), &total, &h, &w, &oh, &ow)?;
    Ok(y)
}

/// Gradient of 2x2 max pooling (first maximum in row-major order). Kernel
/// `max_pool2x2_backward_f32`, one thread per window, 1-D grid; dx is zero-filled first only
/// when h or w is odd (otherwise the windows cover it).
pub fn max_pool2x2_backward(x: &CudaStorage, dy: &CudaStorage, d: Nchw) -> Result<CudaStorage> {
    let _r = nvtx::range("max_pool2x2_backward");
    check_len("max_pool2x2_backward", "input", x.len(), d.len())?;
    check_len("max_pool2x2_backward", "dy", dy.len(), d.n * d.c * (d.h / 2) * (d.w / 2))?;
    same_device("max_pool2x2_backward", x, dy)?;
    count("max_pool2x2_backward", x.len())?;
    let (oh, ow) = (d.h / 2, d.w / 2);
    let dev = x.device().clone();
    let total = count("max_pool2x2_backward", d.n * d.c * oh * ow)?;
    let mut dx = if total == 0 || d.h % 2 == 1 || d.w % 2 == 1 { dev.zeros(x.len())? } else { dev.alloc(x.len())? };
    if total == 0 {
        return Ok(dx);
    }
    let (h, w, oh, ow) = (d.h as u32, d.w as u32, oh as u32, ow as u32);
    launch!(dev, entry::MAX_POOL2X2_BACKWARD_F32, grid_1d(total), dx.slice_mut(), x.slice(), dy.slice(), &total, &h, &w, &oh, &ow)?;
    Ok(dx)
}

// ---- bilinear resampling -----------------------------------------------------------------------

/// Bilinear upsampling (align_corners = false). Kernel `upsample_bilinear_f32`, one thread per
/// output, 1-D grid; scale = in / out as f32, computed here exactly as `Lerp::new` does.
pub fn upsample_bilinear(x: &CudaStorage, d: Nchw, out_h: usize, out_w: usize) -> Result<CudaStorage> {
    let _r = nvtx::range("upsample_bilinear");
    check_len("upsample_bilinear", "input", x.len(), d.len())?;
    count("upsample_bilinear", x.len())?;
    let dev = x.device().clone();
    let total = count("upsample_bilinear", d.n * d.c * out_h * out_w)?;
    let mut y = dev.alloc(total as usize)?;
    if total == 0 {
        return Ok(y);
    }
    if d.h == 0 || d.w == 0 {
        return Err(Error::bad_shape("upsample_bilinear", format!("cannot upsample an empty {}x{} map", d.h, d.w)));
    }
    let (h, w, oh, ow) = (d.h as u32, d.w as u32, out_h as u32, out_w as u32);
    let scale_h = d.h as f32 / out_h as f32;
    let scale_w = d.w as f32 / out_w as f32;
    launch!(dev, entry::UPSAMPLE_BILINEAR_F32, grid_1d(total), y.slice_mut(), x.slice(), &total, &h, &w, &oh, &ow, &scale_h, &scale_w)?;
    Ok(y)
}

/// Gradient of [`upsample_bilinear`], `dy` being `[n, c, out_h, out_w]`: a deterministic
/// gather in two separable passes of `upsample_bwd_axis_f32` (1-D grids): along x into a
/// `[n*c, out_h, w]` temporary, then along y into dx.
pub fn upsample_bilinear_backward(dy: &CudaStorage, d: Nchw, out_h: usize, out_w: usize) -> Result<CudaStorage> {
    let _r = nvtx::range("upsample_bilinear_backward");
    check_len("upsample_bilinear_backward", "dy", dy.len(), d.n * d.c * out_h * out_w)?;
    count("upsample_bilinear_backward", dy.len())?;
    let dev = dy.device().clone();
    let planes = d.n * d.c;
    let total_dx = count("upsample_bilinear_backward", d.len())?;
    if total_dx == 0 || out_h * out_w == 0 {
        return dev.zeros(d.len());
    }
    let total_tmp = count("upsample_bilinear_backward", planes * out_h * d.w)?;
    let mut tmp = dev.alloc(total_tmp as usize)?;
    let mut dx = dev.alloc(d.len())?;
    let (h, w, oh, ow) = (d.h as u32, d.w as u32, out_h as u32, out_w as u32);
    // Pass 1, along x: src [planes*out_h, out_w] -> tmp [planes*out_h, w].
    let (inner1, scale1, ratio1) = (1u32, d.w as f32 / out_w as f32, out_w as f32 / d.w as f32);
    launch!(
        dev,
        entry::UPSAMPLE_BWD_AXIS_F32,
        grid_1d(total_tmp),
        tmp.slice_mut(),
        dy.slice(),
        &total_tmp,
        &w,
        &ow,
        &inner1,
        &scale1,
        &ratio1
    )?;
    // Pass 2, along y: tmp [planes, out_h, w] -> dx [planes, h, w].
    let (scale2, ratio2) = (d.h as f32 / out_h as f32, out_h as f32 / d.h as f32);
    launch!(dev, entry::UPSAMPLE_BWD_AXIS_F32, grid_1d(total_dx), dx.slice_mut(), tmp.slice(), &total_dx, &h, &oh, &w, &scale2, &ratio2)?;
    Ok(dx)
}

// ---- sparse hypercolumn gather -----------------------------------------------------------------

/// Checks tap lengths and point coordinates against a gather spec (as
/// `cpu::resample::check_gather`).
fn check_gather(tap_lens: &[usize], points: &[SamplePoint], g: &GatherSpec) -> Result<()> {
    if tap_lens.len() != g.taps.len() {
        return Err(Error::bad_shape("gather", format!("{} taps given, spec has {}", tap_lens.len(), g.taps.len())));
    }
    for (i, (&len, &(c, h, w))) in tap_lens.iter().zip(&g.taps).enumerate() {
        if len != g.n * c * h * w || h == 0 || w == 0 {
            return Err(Error::bad_shape("gather", format!("tap {i} has {len} elements, expected {}x{c}x{h}x{w}", g.n)));
        }
    }
    check_points(points, g)
}

fn check_points(points: &[SamplePoint], g: &GatherSpec) -> Result<()> {
    check_points_in("gather", points, g.n, g.in_h, g.in_w)
}

/// The points as u32 triples (image, y, x).
pub(crate) fn points_u32(points: &[SamplePoint]) -> &[u32] {
    SamplePoint::words(points)
}

/// Per-tap launch geometry shared by the gather kernels.
struct TapGeom {
    col_off: u32,
    c: u32,
    h: u32,
    w: u32,
    scale_h: f32,
    scale_w: f32,
}

fn tap_geoms(g: &GatherSpec) -> Result<Vec<TapGeom>> {
    let mut col = 0usize;
    let mut out = Vec::with_capacity(g.taps.len());
    for &(c, h, w) in &g.taps {
        count("gather", g.n * c * h * w)?;
        out.push(TapGeom {
            col_off: col as u32,
            c: c as u32,
            h: h as u32,
            w: w as u32,
            // As Lerp::new(y, h, in_h): h as f32 / in_h as f32.
            scale_h: h as f32 / g.in_h as f32,
            scale_w: w as f32 / g.in_w as f32,
        });
        col += c;
    }
    Ok(out)
}

/// Sparse hypercolumn gather: `[points, total_channels]`. Kernel `gather_fwd_f32`, one launch
/// per tap: grid (ceil(c/B), min(P, 65535)), block B = min(256, c rounded up to 32); thread =
/// (point, channel), consecutive threads write consecutive columns.
pub fn gather_hypercolumns(taps: &[&CudaStorage], points: &[SamplePoint], g: &GatherSpec) -> Result<CudaStorage> {
    let _r = nvtx::range("gather_hypercolumns");
    let Some(first) = taps.first() else {
        return Err(Error::bad_shape("gather", "no taps"));
    };
    let lens: Vec<usize> = taps.iter().map(|t| t.len()).collect();
    check_gather(&lens, points, g)?;
    for t in taps {
        same_device("gather", first, t)?;
    }
    let dev = first.device().clone();
    let ctot = g.total_channels();
    let total = count("gather", points.len() * ctot)?;
    let mut out = dev.alloc(total as usize)?;
    if total == 0 {
        return Ok(out);
    }
    let pts = upload_u32(&dev, points_u32(points), FeedKind::Points)?;
    let (np, ctot) = (points.len() as u32, ctot as u32);
    for (tap, t) in taps.iter().zip(tap_geoms(g)?) {
        if t.c == 0 {
            continue;
        }
        let block = block_for(t.c);
        launch!(
            dev,
            entry::GATHER_FWD_F32,
            cfg((t.c.div_ceil(block), np.min(MAX_GRID_Y), 1), block),
            out.slice_mut(),
            tap.slice(),
            pts.slice(),
            &np,
            &ctot,
            &t.col_off,
            &t.c,
            &t.h,
            &t.w,
            &t.scale_h,
            &t.scale_w
        )?;
    }
    Ok(out)
}

/// `Lerp::new(dst, len, out_len)` of `cpu::resample`, operation by operation in f32 (Rust never
/// contracts into fma), so the host reproduces the CPU's indices and weights bit for bit:
/// (i0, i1, w0, w1).
fn lerp(dst: u32, len: usize, out_len: usize) -> (usize, usize, f32, f32) {
    let scale = len as f32 / out_len as f32;
    let src = ((dst as f32 + 0.5) * scale - 0.5).max(0.0);
    let i0 = (src as usize).min(len - 1);
    let i1 = if i0 + 1 < len { i0 + 1 } else { i0 };
    let w1 = src - i0 as f32;
    (i0, i1, 1.0 - w1, w1)
}

/// The contributions of the points to one tap of `h x w` as CSR over the touched locations:
/// (locs: image, offset pairs; starts: L + 1 entries; entries: point index, weight bits pairs),
/// each location's entries in (point, corner) order, as `cpu::resample::gather_backward` adds
/// them.
fn tap_csr(points: &[SamplePoint], h: usize, w: usize, in_h: usize, in_w: usize) -> (Vec<u32>, Vec<u32>, Vec<u32>) {
    // One key per contribution: (image * hw + offset) << 32 | (point * 4 + corner). Sorting the
    // keys groups the locations and keeps each location's contributions in (point, corner)
    // order. Locations fit 31 bits (a tap has < 2^31 elements) and the sequence numbers 32
    // (the wrapper checks points.len() < 2^30).
    let hw = (h * w) as u64;
    let mut keys: Vec<u64> = Vec::with_capacity(points.len() * 4);
    let mut weights: Vec<f32> = Vec::with_capacity(points.len() * 4);
    for (pi, p) in points.iter().enumerate() {
        let (a0, a1, aw0, aw1) = lerp(p.y, h, in_h);
        let (b0, b1, bw0, bw1) = lerp(p.x, w, in_w);
        let corners = [(a0 * w + b0, aw0 * bw0), (a0 * w + b1, aw0 * bw1), (a1 * w + b0, aw1 * bw0), (a1 * w + b1, aw1 * bw1)];
        for (k, (o, wt)) in corners.into_iter().enumerate() {
            let loc = p.image as u64 * hw + o as u64;
            keys.push(loc << 32 | (pi * 4 + k) as u64);
            weights.push(wt);
        }
    }
    // The keys are generated in (point, corner) order, so a stable sort on the location bits
    // alone suffices: an LSD radix sort, 11 bits a pass (one or two passes for the model's taps).
    let loc_bits = 64 - ((hw * (max_image(points) + 1)).max(2) - 1).leading_zeros();
    radix_sort_high(&mut keys, loc_bits);
    let mut locs = Vec::new();
    let mut starts = Vec::new();
    let mut entries = Vec::with_capacity(keys.len() * 2);
    let mut prev = u64::MAX;
    for (i, &key) in keys.iter().enumerate() {
        let (loc, seq) = (key >> 32, (key & 0xFFFF_FFFF) as usize);
        if loc != prev {
            locs.extend([(loc / hw) as u32, (loc % hw) as u32]);
            starts.push(i as u32);
            prev = loc;
        }
        entries.extend([(seq / 4) as u32, weights[seq].to_bits()]);
    }
    starts.push(keys.len() as u32);
    (locs, starts, entries)
}

/// The largest image index of the points (0 when there are none).
fn max_image(points: &[SamplePoint]) -> u64 {
    points.iter().map(|p| p.image as u64).max().unwrap_or(0)
}

/// Stable LSD radix sort of `keys` by their bits `32 .. 32 + bits` (the low 32 bits ride along
/// in their original order).
fn radix_sort_high(keys: &mut Vec<u64>, bits: u32) {
    const DIGIT: u32 = 11;
    const BUCKETS: usize = 1 << DIGIT;
    let mut tmp = vec![0u64; keys.len()];
    let mut shift = 32;
    while shift < 32 + bits {
        let mut at = [0usize; BUCKETS + 1];
        for &k in keys.iter() {
            at[((k >> shift) as usize & (BUCKETS - 1)) + 1] += 1;
        }
        for i in 0..BUCKETS {
            at[i + 1] += at[i];
        }
        for &k in keys.iter() {
            let b = (k >> shift) as usize & (BUCKETS - 1);
            tmp[at[b]] = k;
            at[b] += 1;
        }
        std::mem::swap(keys, &mut tmp);
        shift += DIGIT;
    }
}

/// The most locations of an `n x h x w` tap that `points` points can touch (4 each).
fn csr_max_locations(points: usize, n: usize, h: usize, w: usize) -> usize {
    (4 * points).min(n * h * w)
}

/// The deterministic gather backward's table for every tap of `g`, as `gather_bwd_csr_f32`
/// reads it (kernels/gather.ptx): a 4-word header per tap, (L, locs, starts, entries) = the
/// tap's location count and the word offsets of its three CSR arrays ([`tap_csr`]), then the
/// arrays, each starting at an even offset (8-byte aligned: the kernel reads locs and entries
/// as u32 pairs; pool blocks are 256-byte aligned). Also returns the most words the table can
/// take for this many points (the buffer's size, the same at every step, so that the allocator
/// serves the same size class and a captured graph's buffer always fits).
pub(crate) fn gather_csr_table(points: &[SamplePoint], g: &GatherSpec) -> (Vec<u32>, usize) {
    let csrs: Vec<_> = g.taps.par_iter().map(|&(_, h, w)| tap_csr(points, h, w, g.in_h, g.in_w)).collect();
    let mut table: Vec<u32> = vec![0; 4 * g.taps.len()];
    let push_even = |table: &mut Vec<u32>, part: &[u32]| {
        let at = table.len() as u32;
        table.extend_from_slice(part);
        if table.len() % 2 == 1 {
            table.push(0);
        }
        at
    };
    for (tap, (locs, starts, entries)) in csrs.iter().enumerate() {
        let n_locs = (starts.len() - 1) as u32;
        let l_at = push_even(&mut table, locs);
        let s_at = push_even(&mut table, starts);
        let e_at = push_even(&mut table, entries);
        table[4 * tap..4 * tap + 4].copy_from_slice(&[n_locs, l_at, s_at, e_at]);
    }
    let bound: usize = 4 * g.taps.len()
        + g.taps
            .iter()
            .map(|&(_, h, w)| {
                let locs = csr_max_locations(points.len(), g.n, h, w);
                // locs, starts and entries, each rounded up to an even length.
                (2 * locs + 1) + (locs + 2) + (8 * points.len() + 1)
            })
            .sum::<usize>();
    (table, bound)
}

/// Scatter of the gathered gradient back into one zero-initialised gradient per tap.
/// `deterministic == false`: `gather_bwd_atomic_f32` (red.global.add.f32), grid as the forward.
/// `deterministic == true`: `gather_bwd_csr_f32`, no atomics, bit-exact with the CPU: the host
/// lists each tap's touched locations and their ordered (point, weight) contributions
/// (`tap_csr`, the CPU's f32 lerp), uploaded once for all taps (`gather_csr_table`, a
/// [`FeedKind::GatherCsr`] feed); grid (ceil(c/B), min(most locations, 65535)), block B =
/// min(256, c rounded up to 32), one thread per (location, channel) summing in a register and
/// writing once.
pub fn gather_hypercolumns_backward(
    grad: &CudaStorage,
    points: &[SamplePoint],
    g: &GatherSpec,
    deterministic: bool,
) -> Result<Vec<CudaStorage>> {
    let _r = nvtx::range(if deterministic { "gather_backward_deterministic" } else { "gather_backward" });
    check_len("gather_backward", "grad", grad.len(), points.len() * g.total_channels())?;
    check_points(points, g)?;
    count("gather_backward", grad.len())?;
    if points.len() >= 1 << 30 {
        return Err(Error::bad_shape("gather_backward", format!("{} points: at most 2^30", points.len())));
    }
    let dev = grad.device().clone();
    let geoms = tap_geoms(g)?;
    let mut outs = Vec::with_capacity(g.taps.len());
    for &(c, h, w) in &g.taps {
        outs.push(dev.zeros(g.n * c * h * w)?);
    }
    if points.is_empty() || g.n == 0 {
        return Ok(outs);
    }
    let ctot = g.total_channels() as u32;
    if deterministic {
        let (table, bound) = gather_csr_table(points, g);
        let table_d = dev.upload_words(&table, bound, FeedKind::GatherCsr(g.clone()))?;
        for (tap, ((dtap, t), &(_, h, w))) in outs.iter_mut().zip(&geoms).zip(&g.taps).enumerate() {
            // Launched for the most locations the points can touch, whatever this step's
            // count (in the table's header), so that the launch is the same at every step.
            let max_locs = csr_max_locations(points.len(), g.n, h, w) as u32;
            if t.c == 0 || max_locs == 0 {
                continue;
            }
            let (tap, hw) = (tap as u32, t.h * t.w);
            let block = block_for(t.c);
            launch!(
                dev,
                entry::GATHER_BWD_CSR_F32,
                cfg((t.c.div_ceil(block), max_locs.min(MAX_GRID_Y), 1), block),
                dtap.slice_mut(),
                grad.slice(),
                table_d.slice(),
                &tap,
                &ctot,
                &t.col_off,
                &t.c,
                &hw
            )?;
        }
        // Dropping the table returns its pool block; later users of the block are queued after
        // these launches on the same stream.
        drop(table_d);
    } else {
        let pts = upload_u32(&dev, points_u32(points), FeedKind::Points)?;
        let np = points.len() as u32;
        for (dtap, t) in outs.iter_mut().zip(&geoms) {
            if t.c == 0 || t.h * t.w == 0 {
                continue;
            }
            let block = block_for(t.c);
            launch!(
                dev,
                entry::GATHER_BWD_ATOMIC_F32,
                cfg((t.c.div_ceil(block), np.min(MAX_GRID_Y), 1), block),
                dtap.slice_mut(),
                grad.slice(),
                pts.slice(),
                &np,
                &ctot,
                &t.col_off,
                &t.c,
                &t.h,
                &t.w,
                &t.scale_h,
                &t.scale_w
            )?;
        }
    }
    Ok(outs)
}

// ---- loss --------------------------------------------------------------------------------------

/// Softmax cross-entropy with its gradient, fused: kernel `softmax_xent_f32` (grid
/// G = min(ceil(rows/256), 1024), block 256, one thread per row) writes the gradient and per-block
/// f64 loss sums; `sum_final_f64` (grid 1, block 256, scale = 1 / sum of weights) gives the
/// loss. Returns `(loss [1], dlogits [rows, classes])`.
pub fn softmax_cross_entropy(
    logits: &CudaStorage,
    labels: &[u32],
    classes: usize,
    class_weights: Option<&[f32]>,
) -> Result<(CudaStorage, CudaStorage)> {
    let _r = nvtx::range("softmax_cross_entropy");
    crate::backend::check_softmax_xent(logits.len(), labels, classes, class_weights)?;
    count("softmax_cross_entropy", logits.len())?;
    let dev = logits.device().clone();
    let rows = labels.len();
    let mut grad = dev.alloc(logits.len())?;
    if rows == 0 {
        return Ok((dev.zeros(1)?, grad));
    }
    let wt = |y: u32| class_weights.map_or(1.0, |w| w[y as usize]);
    let norm: f64 = labels.iter().map(|&y| wt(y) as f64).sum();
    let inv = if norm > 0.0 { 1.0 / norm } else { 0.0 };
    if class_weights.is_some() {
        // The normalisation (a launch parameter) changes with the labels.
        dev.refuse_capture("a class-weighted loss")?;
    }
    let ones = vec![1.0f32; classes];
    let weights = upload_u32(&dev, bytemuck::cast_slice(class_weights.unwrap_or(&ones)), FeedKind::Constant)?;
    let labels_d = upload_u32(&dev, labels, FeedKind::Labels)?;
    let (rows32, k) = (rows as u32, classes as u32);
    let g = rows32.div_ceil(BLOCK).clamp(1, MAX_SUM_BLOCKS);
    let mut partial = scratch_f64(&dev, g as usize)?;
    launch!(
        dev,
        entry::SOFTMAX_XENT_F32,
        cfg((g, 1, 1), BLOCK),
        grad.slice_mut(),
        partial.slice_mut(),
        logits.slice(),
        labels_d.slice(),
        weights.slice(),
        &rows32,
        &k,
        &inv
    )?;
    let mut loss = dev.alloc(1)?;
    launch!(dev, entry::SUM_FINAL_F64, cfg((1, 1, 1), BLOCK), loss.slice_mut(), partial.slice(), &g, &inv)?;
    Ok((loss, grad))
}

// ---- MLP pieces (not in the backend contract) --------------------------------------------------

/// `y = max(y + b[col], 0)` in place on `y [rows, cols]`. Kernel `bias_relu_fwd_f32`, 1-D grid.
pub fn bias_relu_forward(y: &mut CudaStorage, b: &CudaStorage, rows: usize, cols: usize) -> Result<()> {
    let _r = nvtx::range("bias_relu_forward");
    check_len("bias_relu_forward", "input", y.len(), rows * cols)?;
    check_len("bias_relu_forward", "bias", b.len(), cols)?;
    same_device("bias_relu_forward", y, b)?;
    let n = count("bias_relu_forward", y.len())?;
    if n == 0 {
        return Ok(());
    }
    let cols = cols as u32;
    let dev = y.device().clone();
    launch!(dev, entry::BIAS_RELU_FWD_F32, grid_1d(n), y.slice_mut(), b.slice(), &n, &cols)
}

/// Backward of [`bias_relu_forward`] given its output `y` and the incoming gradient `dy`:
/// returns (dz = dy * (y > 0), db = column sums of dz). Kernels `bias_relu_bwd_partial_f32`
/// (grid (ceil(cols/256), chunks), block 256) and `reduce_cols_final_f64`.
pub fn bias_relu_backward(y: &CudaStorage, dy: &CudaStorage, rows: usize, cols: usize) -> Result<(CudaStorage, CudaStorage)> {
    let _r = nvtx::range("bias_relu_backward");
    check_len("bias_relu_backward", "output", y.len(), rows * cols)?;
    check_len("bias_relu_backward", "dy", dy.len(), rows * cols)?;
    same_device("bias_relu_backward", y, dy)?;
    count("bias_relu_backward", y.len())?;
    let dev = y.device().clone();
    let mut dz = dev.alloc(y.len())?;
    if cols == 0 {
        return Ok((dz, dev.alloc(0)?));
    }
    if rows == 0 {
        return Ok((dz, dev.zeros(cols)?));
    }
    let mut db = dev.alloc(cols)?;
    let (rows, cols) = (rows as u32, cols as u32);
    let (chunks, rpc) = row_chunks(rows, cols);
    let mut partial = scratch_f64(&dev, chunks as usize * cols as usize)?;
    let colblocks = cols.div_ceil(BLOCK);
    launch!(
        dev,
        entry::BIAS_RELU_BWD_PARTIAL_F32,
        cfg((colblocks, chunks, 1), BLOCK),
        dz.slice_mut(),
        partial.slice_mut(),
        dy.slice(),
        y.slice(),
        &rows,
        &cols,
        &rpc
    )?;
    launch!(
        dev,
        entry::REDUCE_COLS_FINAL_F64,
        cfg((colblocks.min(MAX_GRID_1D), 1, 1), BLOCK),
        db.slice_mut(),
        partial.slice(),
        &cols,
        &chunks
    )?;
    Ok((dz, db))
}

// ---- regularisation and optimiser -------------------------------------------------------------

/// A dropout mask of `len` elements: `1/keep` where `hash_u32(seed, i) < keep * 2^32`, else 0.
/// Kernel `dropout_mask_f32` (the seed uploaded as a one-word [`FeedKind::StepSeed`]), 1-D grid.
pub fn dropout_mask(like: &CudaStorage, len: usize, keep: f32, seed: u32) -> Result<CudaStorage> {
    let _r = nvtx::range("dropout_mask");
    let n = count("dropout_mask", len)?;
    let dev = like.device().clone();
    let mut out = dev.alloc(len)?;
    if n == 0 {
        return Ok(out);
    }
    let threshold = keep_threshold(keep);
    let scale = 1.0f32 / keep;
    // The seed is read from device memory, so that a captured graph draws a new mask per step.
    let seed_d = upload_u32(&dev, &[seed], FeedKind::StepSeed)?;
    launch!(dev, entry::DROPOUT_MASK_F32, grid_1d(n), out.slice_mut(), &n, seed_d.slice(), &threshold, &scale)?;
    Ok(out)
}

/// One Adam step on one parameter buffer. Kernel `adam_f32`, 1-D grid.
pub fn adam_step(p: &mut CudaStorage, grad: &CudaStorage, m: &mut CudaStorage, v: &mut CudaStorage, h: &AdamStep) -> Result<()> {
    let _r = nvtx::range("adam_step");
    check_len("adam", "grad", grad.len(), p.len())?;
    check_len("adam", "m", m.len(), p.len())?;
    check_len("adam", "v", v.len(), p.len())?;
    same_device("adam", p, grad)?;
    same_device("adam", p, m)?;
    same_device("adam", p, v)?;
    let n = count("adam", p.len())?;
    if n == 0 {
        return Ok(());
    }
    let dev = p.device().clone();
    // Its bias corrections are launch parameters: a captured graph would freeze them.
    dev.refuse_capture("the single-buffer Adam update")?;
    launch!(
        dev,
        entry::ADAM_F32,
        grid_1d(n),
        p.slice_mut(),
        grad.slice(),
        m.slice_mut(),
        v.slice_mut(),
        &n,
        &h.lr,
        &h.beta1,
        &h.beta2,
        &h.eps,
        &h.weight_decay,
        &h.bias_correction1,
        &h.bias_correction2
    )
}

/// One parameter buffer of a multi-tensor Adam step.
pub struct AdamGroup<'a> {
    pub p: &'a mut CudaStorage,
    pub grad: &'a CudaStorage,
    pub m: &'a mut CudaStorage,
    pub v: &'a mut CudaStorage,
}

/// One Adam step on many parameter buffers in a single launch (same hyper-parameters).
/// Kernel `adam_multi_f32`: `[lr, bc1, bc2]` uploaded as [`FeedKind::AdamScalars`], a table of
/// (p, g, m, v, n) per tensor and a (tensor, chunk) pair
/// per block, uploaded here; grid (number of 16384-element chunks over all tensors), block 256.
pub fn adam_step_multi(groups: &mut [AdamGroup<'_>], h: &AdamStep) -> Result<()> {
    let _r = nvtx::range("adam_step_multi");
    let Some(first) = groups.first() else {
        return Ok(());
    };
    let dev = first.p.device().clone();
    let mut table: Vec<u64> = Vec::with_capacity(groups.len() * 5);
    let mut blocks: Vec<u32> = Vec::new();
    for (t, gr) in groups.iter().enumerate() {
        let n = gr.p.len();
        check_len("adam", "grad", gr.grad.len(), n)?;
        check_len("adam", "m", gr.m.len(), n)?;
        check_len("adam", "v", gr.v.len(), n)?;
        for o in [&*gr.p, gr.grad, &*gr.m, &*gr.v] {
            if !o.device().same_device(&dev) {
                return Err(Error::DeviceMismatch {
                    op: "adam",
                    lhs: format!("cuda:{}", dev.ordinal()),
                    rhs: format!("cuda:{}", o.device().ordinal()),
                });
            }
        }
        let n32 = count("adam", n)?;
        table.extend([gr.p.raw_ptr(), gr.grad.raw_ptr(), gr.m.raw_ptr(), gr.v.raw_ptr(), n as u64]);
        for c in 0..n32.div_ceil(ADAM_CHUNK) {
            blocks.extend([t as u32, c]);
        }
    }
    let nblocks = count("adam", blocks.len() / 2)?;
    if nblocks == 0 {
        return Ok(());
    }
    if nblocks > i32::MAX as u32 {
        return Err(Error::bad_shape("adam", "too many blocks"));
    }
    // The table and the blocks name the same buffers at every step of a captured graph; the
    // scalars that change (learning rate, bias corrections) are read from device memory.
    let table_d = upload_u64(&dev, &table, FeedKind::Constant)?;
    let blocks_d = upload_u32(&dev, &blocks, FeedKind::Constant)?;
    let scalars = [h.lr, h.bias_correction1, h.bias_correction2].map(f32::to_bits);
    let scalars_d = upload_u32(&dev, &scalars, FeedKind::AdamScalars)?;
    let chunk = ADAM_CHUNK;
    launch!(
        dev,
        entry::ADAM_MULTI_F32,
        cfg((nblocks, 1, 1), BLOCK),
        table_d.slice(),
        blocks_d.slice(),
        &chunk,
        scalars_d.slice(),
        &h.beta1,
        &h.beta2,
        &h.eps,
        &h.weight_decay
    )
}

// ---- finiteness check ------------------------------------------------------------------------

/// Elements per block of `nonfinite_multi_f32`.
const FINITE_CHUNK: u32 = 1 << 16;

/// Whether every element of every buffer is finite, in one launch: `+0.0`, `+inf` or `NaN`
/// as a one-element buffer (see `BackendStorage::non_finite`). Kernel `nonfinite_multi_f32`
/// (kernels/finite.ptx): a table of (address, n) per buffer and a (buffer, chunk) pair per
/// block, uploaded here; grid (number of 65536-element chunks over all buffers), block 256.
/// CPU reference: `cpu::elementwise::non_finite` (bit-exact: an OR of flags).
pub fn non_finite(buffers: &[&CudaStorage]) -> Result<CudaStorage> {
    let _r = nvtx::range("non_finite");
    let Some(first) = buffers.first() else {
        return Err(Error::bad_shape("non_finite", "no buffers"));
    };
    let dev = first.device().clone();
    let mut out = dev.zeros(1)?;
    let mut table: Vec<u64> = Vec::with_capacity(buffers.len() * 2);
    let mut blocks: Vec<u32> = Vec::new();
    for b in buffers {
        same_device("non_finite", first, b)?;
        let n = count("non_finite", b.len())?;
        if n == 0 {
            continue;
        }
        let t = (table.len() / 2) as u32;
        table.extend([b.raw_ptr(), n as u64]);
        for c in 0..n.div_ceil(FINITE_CHUNK) {
            blocks.extend([t, c]);
        }
    }
    let nblocks = count("non_finite", blocks.len() / 2)?;
    if nblocks == 0 {
        return Ok(out);
    }
    let table_d = upload_u64(&dev, &table, FeedKind::Constant)?;
    let blocks_d = upload_u32(&dev, &blocks, FeedKind::Constant)?;
    let chunk = FINITE_CHUNK;
    launch!(dev, entry::NONFINITE_MULTI_F32, cfg((nblocks, 1, 1), BLOCK), out.slice_mut(), table_d.slice(), blocks_d.slice(), &chunk)?;
    Ok(out)
}

// ---- factored dense first layer -------------------------------------------------------------

/// The factored dense first layer, fused: `out[p, j] = max(((z_0 + z_1) + ...) + bias[j], 0)`,
/// `z_i` being plane `i` (pixel-major `[n, h_i, w_i, cols]`) bilinearly sampled at point `p`
/// with the sparse gather's weights. `[points, cols]`. Kernel `upsample_sum_bias_relu_f32`
/// (kernels/hypercolumn_sum.ptx), one launch: grid (ceil(cols/B), min(P, 65535)), block B =
/// min(256, cols rounded up to 32); thread = (point, column), so the plane reads and the
/// stores are coalesced along the columns. The planes are passed as an uploaded table of
/// 24-byte records { ptr: u64, h: u32, w: u32, scale_h: f32, scale_w: f32 }.
/// CPU reference: `cpu::resample::plane_sum_forward` (bit-exact).
pub fn upsample_sum_bias_relu(
    planes: &[&CudaStorage],
    bias: &CudaStorage,
    points: &[SamplePoint],
    s: &PlaneSumSpec,
) -> Result<CudaStorage> {
    let _r = nvtx::range("upsample_sum_bias_relu");
    let planes: Vec<PlaneBuf> = planes.iter().map(|z| PlaneBuf { buffer: z, len: z.len(), ptr: z.raw_ptr() }).collect();
    plane_sum_launch("upsample_sum_bias_relu", entry::UPSAMPLE_SUM_BIAS_RELU_F32, &planes, bias, points, s, |dev, total| {
        let out = dev.alloc(total)?;
        let ptr = out.raw_ptr();
        Ok((out, ptr))
    })
}

/// One plane of the fused first layer: the buffer holding it (for its device), its element
/// count and its device address.
pub(crate) struct PlaneBuf<'a> {
    pub buffer: &'a CudaStorage,
    pub len: usize,
    pub ptr: u64,
}

/// The checks and the launch shared by the fused first layer's f32 and bf16 kernels (`kernel`,
/// with the parameter list of `kernels/hypercolumn_sum.ptx`): `alloc(dev, elements)` makes the
/// `[points, cols]` output and gives its device address.
pub(crate) fn plane_sum_launch<T>(
    op: &'static str,
    kernel: &'static str,
    planes: &[PlaneBuf<'_>],
    bias: &CudaStorage,
    points: &[SamplePoint],
    s: &PlaneSumSpec,
    alloc: impl FnOnce(&CudaDevice, usize) -> Result<(T, u64)>,
) -> Result<T> {
    let lens: Vec<usize> = planes.iter().map(|z| z.len).collect();
    crate::backend::check_plane_sum(&lens, bias.len(), points, s)?;
    let Some(first) = planes.first() else {
        return Err(Error::bad_shape(op, "no planes"));
    };
    for z in planes {
        same_device(op, first.buffer, z.buffer)?;
        count(op, z.len)?;
    }
    same_device(op, first.buffer, bias)?;
    let dev = first.buffer.device().clone();
    let total = count(op, points.len() * s.cols)?;
    let (out, out_ptr) = alloc(&dev, total as usize)?;
    if total == 0 {
        return Ok(out);
    }
    dev.refuse_capture("the factored dense first layer")?;
    let ptrs: Vec<u64> = planes.iter().map(|z| z.ptr).collect();
    let table_d = upload_u64(&dev, &plane_table(&ptrs, s), FeedKind::Constant)?;
    let pts = upload_u32(&dev, points_u32(points), FeedKind::Points)?;
    let (nt, np, cols) = (planes.len() as u32, points.len() as u32, s.cols as u32);
    let block = block_for(cols);
    // The table holds raw pointers to the planes: they are borrowed for this call and the
    // stream is in order, and table_d / pts (pool buffers) live until the launch is enqueued.
    launch!(
        dev,
        kernel,
        cfg((cols.div_ceil(block), np.min(MAX_GRID_Y), 1), block),
        &out_ptr,
        table_d.slice(),
        &nt,
        bias.slice(),
        pts.slice(),
        &np,
        &cols
    )?;
    Ok(out)
}

/// The plane descriptors of `upsample_sum_bias_relu_{f32,bf16}` for the planes at device
/// addresses `ptrs`, 24 bytes (three u64) per plane: { ptr: u64, h: u32, w: u32, scale_h: f32,
/// scale_w: f32 } (little-endian, so the low word of each u64 is the first field).
pub(crate) fn plane_table(ptrs: &[u64], s: &PlaneSumSpec) -> Vec<u64> {
    let mut table = Vec::with_capacity(ptrs.len() * 3);
    for (&ptr, &(h, w)) in ptrs.iter().zip(&s.planes) {
        // As Lerp::new(y, h, in_h): h as f32 / in_h as f32.
        let scale_h = h as f32 / s.in_h as f32;
        let scale_w = w as f32 / s.in_w as f32;
        table.extend([ptr, (h as u32 as u64) | ((w as u32 as u64) << 32), (scale_h.to_bits() as u64) | ((scale_w.to_bits() as u64) << 32)]);
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tap_csr_lists_every_contribution_in_cpu_order() {
        let pts = [
            SamplePoint { image: 1, y: 0, x: 0 },
            SamplePoint { image: 0, y: 5, x: 7 },
            SamplePoint { image: 1, y: 0, x: 0 },
            SamplePoint { image: 0, y: 15, x: 15 },
        ];
        let (locs, starts, entries) = tap_csr(&pts, 4, 4, 16, 16);
        assert_eq!(starts.len() * 2, locs.len() + 2);
        assert_eq!(*starts.last().unwrap() as usize * 2, entries.len());
        assert_eq!(entries.len(), pts.len() * 4 * 2);
        for l in 0..starts.len() - 1 {
            let e = &entries[starts[l] as usize * 2..starts[l + 1] as usize * 2];
            let pis: Vec<u32> = e.chunks(2).map(|c| c[0]).collect();
            assert!(pis.windows(2).all(|w| w[0] <= w[1]), "points out of order at location {l}");
            for c in e.chunks(2) {
                assert_eq!(pts[c[0] as usize].image, locs[2 * l]);
            }
        }
        // The bottom-right point clamps: its four corners are one location, in corner order.
        let last = lerp(15, 4, 16);
        assert_eq!((last.0, last.1), (3, 3));
    }

    /// `gather_bwd_csr_f32` emulated on the host, reading the table exactly as the kernel does
    /// (each tap's header, then its arrays at the header's offsets; threads beyond the header's
    /// location count do nothing), gives the CPU reference's gradients bit for bit, and the
    /// table always fits the buffer size the wrapper asks for.
    #[test]
    fn the_gather_table_read_as_the_kernel_reads_it_is_the_cpu_backward() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
        let g = GatherSpec { n: 3, in_h: 32, in_w: 32, taps: vec![(4, 32, 32), (3, 8, 8), (5, 1, 1), (2, 4, 4)] };
        for npoints in [1usize, 7, 200] {
            let points: Vec<SamplePoint> = (0..npoints)
                .map(|_| SamplePoint { image: rng.random_range(0..3), y: rng.random_range(0..32), x: rng.random_range(0..32) })
                .collect();
            let ctot = g.total_channels();
            let grad: Vec<f32> = (0..npoints * ctot).map(|_| rng.random_range(-1.0f32..1.0)).collect();
            let (table, bound) = gather_csr_table(&points, &g);
            assert!(table.len() <= bound, "{} words, buffer of {bound}", table.len());
            let want = crate::backend::cpu::resample::gather_backward(&grad, &points, &g);
            let mut col_off = 0;
            for (tap, &(c, h, w)) in g.taps.iter().enumerate() {
                let header = &table[4 * tap..4 * tap + 4];
                let (n_locs, l_at, s_at, e_at) = (header[0] as usize, header[1] as usize, header[2] as usize, header[3] as usize);
                assert!(n_locs <= csr_max_locations(npoints, g.n, h, w));
                assert!(l_at % 2 == 0 && e_at % 2 == 0, "u32 pairs are 8-byte aligned");
                let mut dtap = vec![0.0f32; g.n * c * h * w];
                for l in 0..csr_max_locations(npoints, g.n, h, w) {
                    if l >= n_locs {
                        continue;
                    }
                    let (image, offset) = (table[l_at + 2 * l] as usize, table[l_at + 2 * l + 1] as usize);
                    let (first, end) = (table[s_at + l] as usize, table[s_at + l + 1] as usize);
                    for ch in 0..c {
                        let mut acc = 0.0f32;
                        for k in first..end {
                            let (p, wt) = (table[e_at + 2 * k] as usize, f32::from_bits(table[e_at + 2 * k + 1]));
                            acc += wt * grad[p * ctot + col_off + ch];
                        }
                        dtap[(image * c + ch) * h * w + offset] = acc;
                    }
                }
                let same = dtap.iter().zip(&want[tap]).all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(same, "tap {tap} with {npoints} points differs from the CPU backward");
                col_off += c;
            }
        }
    }

    #[test]
    fn row_chunks_cover_every_row() {
        for &(rows, cols) in &[(1600u32, 4096u32), (1, 1), (100_000, 2), (5, 64), (7, 300_000)] {
            let (chunks, rpc) = row_chunks(rows, cols);
            assert!((1..=MAX_GRID_Y).contains(&chunks));
            assert!(chunks * rpc >= rows && (chunks - 1) * rpc < rows.max(1), "{rows} {cols}");
        }
    }

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
