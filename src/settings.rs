//! Process-wide engine settings: deterministic mode, TF32, bf16 GEMMs, bf16 convolutions and bf16
//! activations; [`save`] keeps them to be restored.

use std::sync::atomic::{AtomicBool, Ordering};

static DETERMINISTIC: AtomicBool = AtomicBool::new(false);
static ALLOW_TF32: AtomicBool = AtomicBool::new(false);
static BF16_GEMM: AtomicBool = AtomicBool::new(false);
static BF16_CONV: AtomicBool = AtomicBool::new(false);
static BF16_ACTIVATIONS: AtomicBool = AtomicBool::new(false);

/// Asks every backend for bitwise-reproducible results: deterministic cuDNN algorithms and the
/// deterministic gather backward (no atomics). Off by default (slower when on).
pub fn set_deterministic(on: bool) {
    DETERMINISTIC.store(on, Ordering::Relaxed);
}

/// Whether deterministic mode is on.
pub fn deterministic() -> bool {
    DETERMINISTIC.load(Ordering::Relaxed)
}

/// Allows TF32 tensor cores in cuBLAS and cuDNN (faster, about 1e-3 relative error). Off by
/// default: fp32 results match the CPU reference to 1e-5.
pub fn set_allow_tf32(on: bool) {
    ALLOW_TF32.store(on, Ordering::Relaxed);
}

/// Whether TF32 is allowed.
pub fn allow_tf32() -> bool {
    ALLOW_TF32.load(Ordering::Relaxed)
}

/// Makes every GEMM (the linear layers, `matmul`, the factored path's per-tap products; not the
/// convolutions) round its two operands to bf16 and accumulate in fp32: bf16 tensor cores on
/// the GPU (cuBLAS `CUBLAS_COMPUTE_32F_FAST_16BF` on the fp32 buffers), the same rounding
/// (to nearest, ties to even) then an fp32 GEMM on the CPU. Storage, weights, gradients and the
/// optimizer state stay fp32. Off by default; about 4e-3 relative error per operand.
pub fn set_bf16_gemm(on: bool) {
    BF16_GEMM.store(on, Ordering::Relaxed);
}

/// Whether GEMMs round their operands to bf16.
pub fn bf16_gemm() -> bool {
    BF16_GEMM.load(Ordering::Relaxed)
}

/// Runs every convolution (forward, input gradient and weight gradient) on bf16 operands with
/// fp32 accumulation, its result rounded to bf16, as PyTorch's bf16 autocast does: on the GPU,
/// cuDNN on NHWC bf16 copies of the NCHW f32 tensors (bf16 tensor cores; the copies are made and
/// widened back by the transposing casts of `kernels/bf16.ptx`); on the CPU, the same roundings
/// around an fp32 convolution. The tensors between the layers, the weights, the gradients and
/// the optimizer state stay fp32 buffers (the convolutions' outputs and weight gradients hold
/// bf16-rounded values). Off by default.
pub fn set_bf16_conv(on: bool) {
    BF16_CONV.store(on, Ordering::Relaxed);
}

/// Whether convolutions run on bf16 operands.
pub fn bf16_conv() -> bool {
    BF16_CONV.load(Ordering::Relaxed)
}

/// Stores the activations of factored dense inference in bf16 ([`crate::bf16::Bf16Matrix`]):
/// the taps as they enter the first layer, the per-tap planes and every hidden layer, with every
/// GEMM on bf16 buffers (fp32 accumulation) and every sum, bias and ReLU computed in fp32 and
/// rounded once. Halves the memory and traffic of the planes, the largest buffers of dense
/// inference. The backbone, the naive dense path and training keep fp32 activations (the
/// backbone's convolutions round theirs with [`bf16_conv`], which `--bf16` also turns on);
/// weights stay fp32 (rounded copies are made per call). Off by default.
pub fn set_bf16_activations(on: bool) {
    BF16_ACTIVATIONS.store(on, Ordering::Relaxed);
}

/// Whether dense inference keeps its activations in bf16.
pub fn bf16_activations() -> bool {
    BF16_ACTIVATIONS.load(Ordering::Relaxed)
}

/// Every setting of this module as it was when [`save`] was called, put back when dropped (also
/// when the code between returns early or panics).
#[must_use = "the settings are restored when this is dropped"]
pub struct Saved {
    deterministic: bool,
    tf32: bool,
    bf16_gemm: bool,
    bf16_conv: bool,
    bf16_activations: bool,
}

/// Saves every setting, to be restored when the returned guard is dropped.
pub fn save() -> Saved {
    Saved {
        deterministic: deterministic(),
        tf32: allow_tf32(),
        bf16_gemm: bf16_gemm(),
        bf16_conv: bf16_conv(),
        bf16_activations: bf16_activations(),
    }
}

impl Drop for Saved {
    fn drop(&mut self) {
        set_deterministic(self.deterministic);
        set_allow_tf32(self.tf32);
        set_bf16_gemm(self.bf16_gemm);
        set_bf16_conv(self.bf16_conv);
        set_bf16_activations(self.bf16_activations);
    }
}
