//! Launch wrappers of `kernels/elementwise.ptx`: fill, unary and binary maps, the ReLU mask, scaled
//! accumulation, per-channel broadcasts, block copies and the dropout mask.

use super::*;

/// The `threshold` argument of `dropout_mask_f32`: the CPU reference's own threshold.
pub use crate::backend::cpu::keep_threshold;

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
    launch!(dev, k as NEG_F32 | SQR_F32 | SQRT_F32 | EXP_F32 | LOG_F32 | RELU_F32, grid_1d(n), out.slice_mut(), x.slice(), &n)?;
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
    launch!(dev, k as ADD_F32 | SUB_F32 | MUL_F32 | DIV_F32, grid_1d(n), out.slice_mut(), x.slice(), rhs.slice(), &n)?;
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
    launch!(dev, k as BROADCAST_ADD_F32 | BROADCAST_MUL_F32, grid_1d(n), out.slice_mut(), x.slice(), v.slice(), &n, &mid, &inner)?;
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
