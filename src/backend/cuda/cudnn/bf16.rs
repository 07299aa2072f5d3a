//! The bf16 convolution mode ([`crate::settings::bf16_conv`]), as PyTorch's bf16 autocast runs a
//! convolution: bf16 operands, fp32 accumulation, a bf16 result, on bf16 tensor cores.
//!
//! The engine's tensors stay NCHW f32. Each computation makes NHWC bf16 copies of its two
//! operands (filters KCRS to KRSC) with one transposing cast each (`transpose_f32_to_bf16` in
//! `kernels/bf16.ptx`), runs cuDNN on them ([`ConvData::Bf16`]: NHWC, the layout its bf16
//! tensor-core kernels read without transposing), and widens the bf16 result back to NCHW f32
//! (`transpose_bf16_to_f32`). Every value therefore goes through the same roundings as on the CPU
//! ([`crate::backend::cpu::conv::with_bf16_mode`]): operands to bf16, products exact in f32,
//! sums in f32, the result to bf16; only the order of the sums differs.
//!
//! The copies are pool blocks freed when the call returns (a training step's saved input is
//! cast again for the weight gradient: one more pass over it instead of keeping a bf16 copy
//! alive from the forward to the backward pass).

use super::descriptors::ConvData;
use super::{run, Direction, Operands};
use crate::backend::cuda::{CudaBf16, CudaStorage};
use crate::backend::ConvSpec;
use crate::error::Result;

/// `[n, c, h w]` f32 as `[n, h w, c]` bf16 (filters: `[k, c, r s]` as `[k, r s, c]`).
fn nhwc(t: &CudaStorage, n: usize, c: usize, hw: usize) -> Result<CudaBf16> {
    CudaBf16::transposed_from_f32(t, n, c, hw)
}

/// `[n, h w, c]` bf16 as `[n, c, h w]` f32.
fn nchw(t: &CudaBf16, n: usize, c: usize, hw: usize) -> Result<CudaStorage> {
    t.transposed_to_f32(n, hw, c)
}

/// `y = conv(x, w)` on bf16 copies; the caller checked the operands and that no extent is 0.
pub(super) fn forward(x: &CudaStorage, w: &CudaStorage, s: &ConvSpec) -> Result<CudaStorage> {
    let (ohw, khw) = (s.out_h() * s.out_w(), s.kh * s.kw);
    let xb = nhwc(x, s.n, s.c_in, s.h * s.w)?;
    let wb = nhwc(w, s.c_out, s.c_in, khw)?;
    let yb = CudaBf16::alloc(x.device(), s.n * s.c_out * ohw)?;
    run(x.device(), Direction::Forward, s, Operands { x: xb.raw_ptr(), w: wb.raw_ptr(), y: yb.raw_ptr() }, ConvData::Bf16)?;
    nchw(&yb, s.n, s.c_out, ohw)
}

/// `dx` from `dy` and `w` on bf16 copies.
pub(super) fn backward_data(dy: &CudaStorage, w: &CudaStorage, s: &ConvSpec) -> Result<CudaStorage> {
    let (ohw, khw) = (s.out_h() * s.out_w(), s.kh * s.kw);
    let dyb = nhwc(dy, s.n, s.c_out, ohw)?;
    let wb = nhwc(w, s.c_out, s.c_in, khw)?;
    let dxb = CudaBf16::alloc(dy.device(), s.n * s.c_in * s.h * s.w)?;
    run(dy.device(), Direction::BackwardData, s, Operands { x: dxb.raw_ptr(), w: wb.raw_ptr(), y: dyb.raw_ptr() }, ConvData::Bf16)?;
    nchw(&dxb, s.n, s.c_in, s.h * s.w)
}

/// `dw` from `x` and `dy` on bf16 copies (the gradient rounded to bf16, then widened).
pub(super) fn backward_filter(x: &CudaStorage, dy: &CudaStorage, s: &ConvSpec) -> Result<CudaStorage> {
    let (ohw, khw) = (s.out_h() * s.out_w(), s.kh * s.kw);
    let xb = nhwc(x, s.n, s.c_in, s.h * s.w)?;
    let dyb = nhwc(dy, s.n, s.c_out, ohw)?;
    let dwb = CudaBf16::alloc(x.device(), s.c_out * s.c_in * khw)?;
    run(x.device(), Direction::BackwardFilter, s, Operands { x: xb.raw_ptr(), w: dwb.raw_ptr(), y: dyb.raw_ptr() }, ConvData::Bf16)?;
    nchw(&dwb, s.c_out, s.c_in, khw)
}
