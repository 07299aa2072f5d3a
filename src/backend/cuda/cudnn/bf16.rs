//! The bf16 convolution mode ([`crate::settings::bf16_conv`]), as PyTorch's bf16 autocast runs a
//! convolution: bf16 operands, fp32 accumulation, a bf16 result, on bf16 tensor cores.
//!
//! The engine's tensors stay NCHW f32. Each computation makes NHWC bf16 copies of its two
//! operands (filters KCRS to KRSC) with one transposing cast each (`transpose_f32_to_bf16` in
//! `kernels/bf16.ptx`), runs cuDNN on them ([`ConvData::NhwcBf16`]: NHWC, the layout its bf16
//! tensor-core kernels read without transposing), and widens the bf16 result back to NCHW f32
//! (`transpose_bf16_to_f32`), or, for a convolution whose output only a training-mode batch
//! norm reads (`conv2d_for_norm`), transposes it to NCHW bf16 (`transpose_bf16`), which the
//! batch-norm kernels read as is ([`CudaNormInput`]). Every value therefore goes through the same roundings as on the CPU
//! ([`crate::backend::cpu::conv::with_bf16_mode`]): operands to bf16, products exact in f32,
//! sums in f32, the result to bf16; only the order of the sums differs.
//!
//! cuDNN's NHWC bf16 tensor-core kernels need channel counts that are multiples of 8; the first
//! layer's 3 input channels are not. Such a convolution runs in f32 on operands rounded to bf16
//! in place of the copies (their products are exact in f32 and in TF32 alike), its result rounded
//! to bf16: the same values up to the order of the sums, at a cost that does not matter for a
//! layer of 3 channels. So does any convolution for which cuDNN does not support the bf16
//! computation (`run`'s [`Error::UnsupportedDType`]; a workspace that does not fit or a failed
//! launch stays an error): the device remembers the shape, direction and deterministic mode
//! (warm-up steps thus decide it before a CUDA-graph capture), says so once on stderr, and
//! counts it ([`bf16_refusals`]).
//!
//! The copies are pool blocks. A computation returns those it made, so that a training step
//! casts each operand once: the forward pass keeps x's and w's copies for the backward pass
//! (`conv2d_keeping`; 2 bytes per element of each convolution's input and weight, about
//! 0.16 GB at the paper's batch of 5), and the backward pass casts dy once for both
//! gradients (`conv2d_backward`). Per layer and step that is 3 casts to bf16 instead of 6
//! (x, w; dy; where the separate computations cast x, w; dy, w; x, dy); 2 when a batch norm's
//! backward wrote dy as its NHWC bf16 copy (`conv2d_backward_from_bf16`, the fused VGG layer).

use super::descriptors::ConvData;
use super::{place, run, Computed, Direction, Form, Operand};
use crate::backend::cuda::{CudaBf16, CudaDevice, CudaNormInput, CudaStorage};
use crate::backend::ConvSpec;
use crate::error::{Error, Result};

/// An error unless `dev` can run cuDNN's bf16 convolutions: compute capability 8.0 (Ampere) or
/// newer. The CLI checks it when `--bf16` or `--precision bf16` opens a GPU, and every bf16
/// convolution again.
pub fn check_bf16_conv(dev: &CudaDevice) -> Result<()> {
    let (major, minor) = dev.compute_capability();
    if major >= 8 {
        return Ok(());
    }
    Err(Error::CudaUnavailable(format!(
        "{} (compute capability {major}.{minor}) cannot run bf16 convolutions, which need compute capability 8.0 (Ampere) or newer; turn them off (no --bf16, or bench --precision bf16-gemm: the bf16 GEMMs alone work)",
        dev.name()
    )))
}

/// How many convolutions (shape, direction, deterministic mode) cuDNN did not support in bf16
/// on `dev` so far, each computed by the f32 fallback instead.
pub fn bf16_refusals(dev: &CudaDevice) -> usize {
    dev.dnn().bf16_refused.len()
}

/// A tensor of the convolution as `batch` matrices `[c, hw]` in NCHW (filters: `batch` = output
/// channels, `c` = input channels, `hw` = kernel taps).
#[derive(Clone, Copy)]
struct Planes {
    batch: usize,
    c: usize,
    hw: usize,
}

impl Planes {
    fn len(self) -> usize {
        self.batch * self.c * self.hw
    }
}

/// `x`, `w` and `y` of `s` as [`Planes`], indexed as [`Direction::roles`].
fn planes(s: &ConvSpec) -> [Planes; 3] {
    [
        Planes { batch: s.n, c: s.c_in, hw: s.h * s.w },
        Planes { batch: s.c_out, c: s.c_in, hw: s.kh * s.kw },
        Planes { batch: s.n, c: s.c_out, hw: s.out_h() * s.out_w() },
    ]
}

/// `t` with every value rounded to bf16 (and widened back: f32 holding bf16 values).
fn rounded(t: &CudaStorage) -> Result<CudaStorage> {
    CudaBf16::from_f32(t)?.to_f32()
}

/// An operand's NCHW f32 values: its tensor, or, when it came as its NHWC bf16 copy alone, that
/// copy widened (exactly).
pub(super) enum F32Values<'a> {
    Tensor(&'a CudaStorage),
    Widened(CudaStorage),
}

impl F32Values<'_> {
    pub(super) fn get(&self) -> &CudaStorage {
        match self {
            F32Values::Tensor(t) => t,
            F32Values::Widened(t) => t,
        }
    }
}

/// The NCHW f32 values of `op`, the operand of role `role` ([`Direction::roles`]) of `s`.
pub(super) fn f32_values<'a>(op: Operand<'a>, s: &ConvSpec, role: usize) -> Result<F32Values<'a>> {
    match op {
        Operand::F32(f) | Operand::WithCopy(f, _) => Ok(F32Values::Tensor(f)),
        Operand::Bf16(copy) => {
            let p = planes(s)[role];
            copy.transposed_to_f32(p.batch, p.hw, p.c).map(F32Values::Widened)
        }
    }
}

/// `op` (role `role` of `s`) with every value rounded to bf16, NCHW f32: its f32 tensor rounded,
/// or its NHWC bf16 copy widened when it came as that alone (the same values).
fn rounded_operand(op: Operand, s: &ConvSpec, role: usize) -> Result<CudaStorage> {
    match f32_values(op, s, role)? {
        F32Values::Tensor(f) => rounded(f),
        F32Values::Widened(w) => Ok(w),
    }
}

/// An operand's NHWC bf16 copy: the one it came with, or one made here.
enum OperandCopy<'a> {
    Given(&'a CudaBf16),
    Made(CudaBf16),
}

impl<'a> OperandCopy<'a> {
    /// `op`'s copy (role `role` of `s`), made from its f32 tensor unless it came with one.
    fn of(op: Operand<'a>, s: &ConvSpec, role: usize) -> Result<OperandCopy<'a>> {
        let p = planes(s)[role];
        match op.bf16() {
            Some(c) => Ok(OperandCopy::Given(c)),
            None => CudaBf16::transposed_from_f32(f32_values(op, s, role)?.get(), p.batch, p.c, p.hw).map(OperandCopy::Made),
        }
    }

    fn ptr(&self) -> u64 {
        match self {
            OperandCopy::Given(c) => c.raw_ptr(),
            OperandCopy::Made(c) => c.raw_ptr(),
        }
    }

    /// The copy when it was made here (for the caller to keep).
    fn made(self) -> Option<CudaBf16> {
        match self {
            OperandCopy::Given(_) => None,
            OperandCopy::Made(c) => Some(c),
        }
    }
}

/// One convolution computation `dir` of `s` in bf16 mode, on its two operands `a` and `b`
/// (forward: x, w; backward data: dy, w; backward filter: x, dy), each with its NHWC bf16 copy
/// when an earlier computation made one. Returns the result (NCHW, bf16 when `form` asks for
/// it: the values the f32 result holds) and the copies made here. The caller checked the
/// lengths and that no extent is 0.
pub(super) fn convolve(dir: Direction, s: &ConvSpec, a: Operand, b: Operand, form: Form) -> Result<Computed> {
    let dev = a.device();
    check_bf16_conv(dev)?;
    let p = planes(s);
    let [ia, ib, io] = dir.roles();
    let channels_aligned = s.c_in.is_multiple_of(8) && s.c_out.is_multiple_of(8);
    let key = (*s, dir, crate::settings::deterministic());
    // (The device's cuDNN lock, taken here and released at once: `run` takes it again.)
    let refused = dev.dnn().bf16_refused.contains(&key);
    if channels_aligned && !refused {
        let (ca, cb) = (OperandCopy::of(a, s, ia)?, OperandCopy::of(b, s, ib)?);
        let out = CudaBf16::alloc(dev, p[io].len())?;
        match run(dev, dir, s, place(dir, ca.ptr(), cb.ptr(), out.raw_ptr()), ConvData::NhwcBf16) {
            Ok(()) => {
                let (batch, hw, c) = (p[io].batch, p[io].hw, p[io].c);
                let out = match form {
                    Form::F32 => CudaNormInput::F32(out.transposed_to_f32(batch, hw, c)?),
                    Form::Bf16 => CudaNormInput::Bf16(out.transposed(batch, hw, c)?),
                };
                return Ok(Computed { out, copies: [ca.made(), cb.made()] });
            }
            // Not supported (decided outside a capture: within one, only a plan made before runs).
            Err(Error::UnsupportedDType { .. }) if !dev.is_capturing() => {
                dev.dnn().bf16_refused.insert(key);
                eprintln!(
                    "warning: cuDNN does not support {} of {s:?} in bf16; it runs in f32 on bf16-rounded operands (the same values up to summation order)",
                    dir.name()
                );
            }
            Err(e) => return Err(e),
        }
    }
    let (ar, br) = (rounded_operand(a, s, ia)?, rounded_operand(b, s, ib)?);
    let out = dev.alloc(p[io].len())?;
    run(dev, dir, s, place(dir, ar.raw_ptr(), br.raw_ptr(), out.raw_ptr()), ConvData::NchwF32)?;
    let out = match form {
        Form::F32 => CudaNormInput::F32(rounded(&out)?),
        Form::Bf16 => CudaNormInput::Bf16(CudaBf16::from_f32(&out)?),
    };
    Ok(Computed { out, copies: [None, None] })
}
