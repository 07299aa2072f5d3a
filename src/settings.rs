//! Process-wide engine settings: deterministic mode and TF32.

use std::sync::atomic::{AtomicBool, Ordering};

static DETERMINISTIC: AtomicBool = AtomicBool::new(false);
static ALLOW_TF32: AtomicBool = AtomicBool::new(false);

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
