//! Launch wrappers of `kernels/batch_norm.ptx`: training-mode batch norm forward (statistics, then
//! normalise, ReLU fused when asked) and backward, and eval-mode batch norm (running statistics,
//! one normalising pass).

use super::*;
use crate::backend::cuda::{CudaBf16, CudaConvGrad};

/// The input `x` of the batch-norm kernels: f32, or bf16 (their trailing `xbf16` flag; each
/// value widened exactly as it is read, so the results are bit for bit those of the f32 kernels
/// on the widened values). Only `x` changes type: `dy`, the outputs and the statistics stay f32.
#[derive(Clone, Copy, Debug)]
pub enum BnInput<'a> {
    F32(&'a CudaStorage),
    Bf16(&'a CudaBf16),
}

impl BnInput<'_> {
    /// Number of elements.
    pub fn len(self) -> usize {
        match self {
            BnInput::F32(x) => x.len(),
            BnInput::Bf16(x) => x.len(),
        }
    }

    /// True when there is no element.
    pub fn is_empty(self) -> bool {
        self.len() == 0
    }

    /// The device address of the first element.
    pub fn raw_ptr(self) -> u64 {
        match self {
            BnInput::F32(x) => x.raw_ptr(),
            BnInput::Bf16(x) => x.raw_ptr(),
        }
    }

    /// The kernels' `xbf16` argument.
    pub fn xbf16(self) -> u32 {
        matches!(self, BnInput::Bf16(_)) as u32
    }

    /// The device holding the buffer.
    pub fn device(&self) -> &CudaDevice {
        match self {
            BnInput::F32(x) => x.device(),
            BnInput::Bf16(x) => x.device(),
        }
    }

    /// An error unless `other` is on this input's device.
    fn same_device(self, op: &'static str, other: &CudaStorage) -> Result<()> {
        match self {
            BnInput::F32(x) => same_device(op, x, other),
            BnInput::Bf16(x) => same_device(op, x.words(), other),
        }
    }
}

/// The launch of the per-plane kernels (normalise, dx): grid (ceil(HW/B) capped, planes capped).
pub fn plane_cfg(hw: u32, planes: u32) -> LaunchConfig {
    let block = block_for(hw);
    cfg((hw.div_ceil(block).clamp(1, MAX_GRID_1D), planes.clamp(1, MAX_GRID_Y), 1), block)
}

/// Training-mode batch norm over `[n, c, h, w]` of `x`, f32 or bf16 ([`BnInput`]). Kernels: `bn_stats_partial_f32`
/// (grid (N * nchunk, min(C, 65535)), block min(256, HW rounded up to 32), nchunk =
/// ceil(HW / 2048)), `bn_stats_final_f32` (grid ceil(C/256), block 256), `bn_normalize_f32`
/// (grid (ceil(HW/B), min(N*C, 65535)), block B = min(256, HW rounded up to 32)).
///
/// With `relu`, the ReLU that follows is fused into `bn_normalize_f32`: `y = max(bn(x), 0)`
/// (the statistics are those of x, unchanged). Its backward is [`batch_norm_backward`] with
/// `relu`, which needs x, gamma, beta and the statistics, not `y`.
pub fn batch_norm_train(
    x: BnInput,
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
    x.same_device("batch_norm", gamma)?;
    x.same_device("batch_norm", beta)?;
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
    let (nchunk, pieces, block) = plane_split("batch_norm", d.n, d.c, d.h * d.w)?;
    let chunk = PLANE_CHUNK;
    let (x_ptr, xbf16) = (x.raw_ptr(), x.xbf16());
    let mut partial = scratch_f64(&dev, pieces as usize * d.c * 2)?;
    launch!(
        dev,
        entry::BN_STATS_PARTIAL_F32,
        partial_cfg(pieces, c, block),
        partial.slice_mut(),
        &x_ptr,
        &c,
        &hw,
        &chunk,
        &nchunk,
        &xbf16
    )?;
    let count_f = (d.n * d.h * d.w) as f64;
    launch!(
        dev,
        entry::BN_STATS_FINAL_F32,
        grid_1d(c),
        mean.slice_mut(),
        invstd.slice_mut(),
        var_unbiased.slice_mut(),
        partial.slice(),
        &x_ptr,
        &c,
        &hw,
        &pieces,
        &count_f,
        &eps,
        &xbf16
    )?;
    normalize(&mut y, x, &mean, &invstd, gamma, beta, d, relu)?;
    Ok(BatchNormForward { y, mean, invstd, var_unbiased })
}

/// `bn_normalize_f32` (launch [`plane_cfg`]) of `x` into `y` with the given per-channel
/// statistics: `y = ((gamma * (x - mean)) * invstd) + beta`, clamped at 0 when `relu`.
#[allow(clippy::too_many_arguments)]
fn normalize(
    y: &mut CudaStorage,
    x: BnInput,
    mean: &CudaStorage,
    invstd: &CudaStorage,
    gamma: &CudaStorage,
    beta: &CudaStorage,
    d: Nchw,
    relu: bool,
) -> Result<()> {
    let (c, hw) = (d.c as u32, (d.h * d.w) as u32);
    let planes = count("batch_norm", d.n * d.c)?;
    let (x_ptr, xbf16, relu) = (x.raw_ptr(), x.xbf16(), relu as u32);
    launch!(
        x.device(),
        entry::BN_NORMALIZE_F32,
        plane_cfg(hw, planes),
        y.slice_mut(),
        &x_ptr,
        mean.slice(),
        invstd.slice(),
        gamma.slice(),
        beta.slice(),
        &c,
        &hw,
        &planes,
        &relu,
        &xbf16
    )
}

/// Eval-mode batch norm over `[n, c, h, w]` of `x`, f32 or bf16 ([`BnInput`]), with the running
/// statistics: `bn_eval_invstd_f32` (grid ceil(C/256), block 256) forms `invstd = 1 / sqrt(var +
/// eps)` per channel as the training statistics' kernel forms its own, then `bn_normalize_f32`
/// (launch [`plane_cfg`]) normalises with `running_mean` and it, clamping at 0 when `relu`: one
/// pass over the activation, bit for bit the CPU's `cpu::batch_norm::forward_eval`.
#[allow(clippy::too_many_arguments)]
pub fn batch_norm_eval(
    x: BnInput,
    gamma: &CudaStorage,
    beta: &CudaStorage,
    running_mean: &CudaStorage,
    running_var: &CudaStorage,
    d: Nchw,
    eps: f32,
    relu: bool,
) -> Result<CudaStorage> {
    let _r = nvtx::range("batch_norm_eval");
    check_len("batch_norm_eval", "input", x.len(), d.len())?;
    for (name, p) in [("gamma", gamma), ("beta", beta), ("running mean", running_mean), ("running variance", running_var)] {
        check_len("batch_norm_eval", name, p.len(), d.c)?;
        x.same_device("batch_norm_eval", p)?;
    }
    count("batch_norm_eval", x.len())?;
    let dev = x.device().clone();
    let mut y = dev.alloc(x.len())?;
    if x.is_empty() {
        return Ok(y);
    }
    let c = d.c as u32;
    let mut invstd = dev.alloc(d.c)?;
    launch!(dev, entry::BN_EVAL_INVSTD_F32, grid_1d(c), invstd.slice_mut(), running_var.slice(), &eps, &c)?;
    normalize(&mut y, x, running_mean, &invstd, gamma, beta, d, relu)?;
    Ok(y)
}

/// The form of the input gradient [`batch_norm_backward_to`] writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DxForm {
    /// NCHW f32 (`bn_bwd_dx_f32`).
    F32,
    /// NHWC bf16, rounded as `transpose_f32_to_bf16` rounds (`bn_bwd_dx_nhwc_bf16`): the
    /// upstream gradient of the convolution before the batch norm as the bf16 convolution reads
    /// it.
    Bf16Nhwc,
}

/// Backward of [`batch_norm_train`], `x` its input as it was given there and `gamma`, `beta`,
/// `mean`, `invstd` the parameters and statistics it used. Kernels: `bn_bwd_partial_f32` (grid
/// as the stats), `bn_bwd_final_f32` (grid ceil(C/256), block 256; writes dgamma, dbeta and an
/// f64 coefficient table [C, 8]), `bn_bwd_dx_f32` (grid as the normalisation).
///
/// `relu`: the forward had the fused ReLU. Then both `bn_bwd_partial_f32` and `bn_bwd_dx_f32`
/// read the gradient as `yhat > 0 ? dy : 0`, with `yhat` the forward's output before its clamp
/// recomputed from x, gamma, beta and the statistics by `bn_normalize_f32`'s own instruction
/// sequence: bit for bit the result of passing `relu_backward(y, dy)` (y the stored output)
/// without `relu`, and without reading y. Without it: plain batch norm (`dy` is the gradient
/// of the normalised output; beta is not read).
#[allow(clippy::too_many_arguments)]
pub fn batch_norm_backward(
    x: BnInput,
    dy: &CudaStorage,
    gamma: &CudaStorage,
    beta: &CudaStorage,
    mean: &CudaStorage,
    invstd: &CudaStorage,
    d: Nchw,
    relu: bool,
) -> Result<BatchNormBackward<CudaStorage>> {
    let b = batch_norm_backward_to(x, dy, gamma, beta, mean, invstd, d, relu, DxForm::F32)?;
    Ok(BatchNormBackward { dx: b.dx.into_f32_nchw(d)?, dgamma: b.dgamma, dbeta: b.dbeta })
}

/// [`batch_norm_backward`] writing the input gradient in the form `form`: with
/// [`DxForm::Bf16Nhwc`] the last kernel is `bn_bwd_dx_nhwc_bf16` (launch [`transpose_cfg`] with
/// rows = C, cols = H W, batch = N), which computes every value as `bn_bwd_dx_f32` does and
/// stores it rounded to bf16 in NHWC order: bit for bit `transpose_f32_to_bf16` of the f32
/// gradient, without writing or reading that.
#[allow(clippy::too_many_arguments)]
pub fn batch_norm_backward_to(
    x: BnInput,
    dy: &CudaStorage,
    gamma: &CudaStorage,
    beta: &CudaStorage,
    mean: &CudaStorage,
    invstd: &CudaStorage,
    d: Nchw,
    relu: bool,
    form: DxForm,
) -> Result<BatchNormBackward<CudaStorage, CudaConvGrad>> {
    const OP: &str = "batch_norm_backward";
    let _r = nvtx::range(OP);
    check_len(OP, "input", x.len(), d.len())?;
    check_len(OP, "dy", dy.len(), d.len())?;
    check_len(OP, "gamma", gamma.len(), d.c)?;
    check_len(OP, "beta", beta.len(), d.c)?;
    check_len(OP, "mean", mean.len(), d.c)?;
    check_len(OP, "invstd", invstd.len(), d.c)?;
    for o in [dy, gamma, beta, mean, invstd] {
        x.same_device(OP, o)?;
    }
    count(OP, x.len())?;
    let dev = x.device().clone();
    let dx = match form {
        DxForm::F32 => CudaConvGrad::F32(dev.alloc(x.len())?),
        DxForm::Bf16Nhwc => CudaConvGrad::Bf16Nhwc(CudaBf16::alloc(&dev, x.len())?),
    };
    if d.c == 0 {
        return Ok(BatchNormBackward { dx, dgamma: dev.alloc(0)?, dbeta: dev.alloc(0)? });
    }
    if d.n * d.h * d.w == 0 {
        return Ok(BatchNormBackward { dx, dgamma: dev.zeros(d.c)?, dbeta: dev.zeros(d.c)? });
    }
    let mut dgamma = dev.alloc(d.c)?;
    let mut dbeta = dev.alloc(d.c)?;
    let (c, hw) = (d.c as u32, (d.h * d.w) as u32);
    let planes = count(OP, d.n * d.c)?;
    let (nchunk, pieces, block) = plane_split(OP, d.n, d.c, d.h * d.w)?;
    let chunk = PLANE_CHUNK;
    let mut partial = scratch_f64(&dev, pieces as usize * d.c * 2)?;
    let mut coef = scratch_f64(&dev, d.c * 8)?;
    let relu = relu as u32;
    let (x_ptr, xbf16) = (x.raw_ptr(), x.xbf16());
    launch!(
        dev,
        entry::BN_BWD_PARTIAL_F32,
        partial_cfg(pieces, c, block),
        partial.slice_mut(),
        &x_ptr,
        dy.slice(),
        mean.slice(),
        invstd.slice(),
        gamma.slice(),
        beta.slice(),
        &c,
        &hw,
        &chunk,
        &nchunk,
        &relu,
        &xbf16
    )?;
    let count_f = (d.n * d.h * d.w) as f64;
    launch!(
        dev,
        entry::BN_BWD_FINAL_F32,
        grid_1d(c),
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
    // The same arguments either way but the last launch dimension: planes (N C) for the f32
    // kernel, images (N) for the transposing one.
    let (dx_entry, dx_cfg, out_ptr, outer) = match &dx {
        CudaConvGrad::F32(out) => (entry::BN_BWD_DX_F32, plane_cfg(hw, planes), out.raw_ptr(), planes),
        CudaConvGrad::Bf16Nhwc(out) => {
            let n = count(OP, d.n)?;
            (entry::BN_BWD_DX_NHWC_BF16, transpose_cfg(c, hw, n), out.raw_ptr(), n)
        }
    };
    launch!(
        dev,
        dx_entry as BN_BWD_DX_F32 | BN_BWD_DX_NHWC_BF16,
        dx_cfg,
        &out_ptr,
        &x_ptr,
        dy.slice(),
        coef.slice(),
        mean.slice(),
        invstd.slice(),
        gamma.slice(),
        beta.slice(),
        &c,
        &hw,
        &outer,
        &count_f,
        &relu,
        &xbf16
    )?;
    Ok(BatchNormBackward { dx, dgamma, dbeta })
}
