//! Process-wide engine settings: deterministic mode, TF32, bf16 GEMMs and bf16 activations.

use std::sync::atomic::{AtomicBool, Ordering};

static DETERMINISTIC: AtomicBool = AtomicBool::new(false);
static ALLOW_TF32: AtomicBool = AtomicBool::new(false);
static BF16_GEMM: AtomicBool = AtomicBool::new(false);
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

/// Stores the activations of factored dense inference in bf16 ([`crate::bf16::Bf16Matrix`]):
/// the taps as they enter the first layer, the per-tap planes and every hidden layer, with every
/// GEMM on bf16 buffers (fp32 accumulation) and every sum, bias and ReLU computed in fp32 and
/// rounded once. Halves the memory and traffic of the planes, the largest buffers of dense
/// inference. The backbone, the naive dense path and training keep fp32 activations; weights
/// stay fp32 (rounded copies are made per call). Off by default.
pub fn set_bf16_activations(on: bool) {
    BF16_ACTIVATIONS.store(on, Ordering::Relaxed);
}

/// Whether dense inference keeps its activations in bf16.
pub fn bf16_activations() -> bool {
    BF16_ACTIVATIONS.load(Ordering::Relaxed)
}
