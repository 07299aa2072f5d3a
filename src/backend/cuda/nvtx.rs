//! NVTX ranges for profiling with Nsight Systems, off unless asked for.
//!
//! [`range`] pushes a named range and pops it when the returned guard drops. It does nothing
//! (one relaxed atomic load) unless ranges are enabled, by `HYPERSEG_NVTX=1` in the
//! environment or by [`set_nvtx`], and the NVTX library (`libnvToolsExt.so.1`) can be loaded;
//! it never panics when the library is absent. Every cuBLAS and cuDNN call of the backend runs
//! inside a range named after its op; kernel launches use the same function.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::OnceLock;

/// The environment variable that turns ranges on (`1`, `true`, `on`).
pub const NVTX_ENV: &str = "HYPERSEG_NVTX";

const UNSET: u8 = 0;
const OFF: u8 = 1;
const ON: u8 = 2;

/// Whether ranges are wanted: unset until first asked, then read from the environment.
static WANTED: AtomicU8 = AtomicU8::new(UNSET);

/// Whether the NVTX library loads (checked once, only when ranges are wanted).
fn library_present() -> bool {
    static PRESENT: OnceLock<bool> = OnceLock::new();
    *PRESENT.get_or_init(|| {
        // SAFETY: only tries to dlopen the library.
        let found = std::panic::catch_unwind(|| unsafe { cudarc::nvtx::sys::is_culib_present() }).unwrap_or(false);
        // Resolving a symbol panics inside cudarc when it is missing: resolve both once here,
        // with a probe range, under catch_unwind.
        found
            && std::panic::catch_unwind(|| {
                cudarc::nvtx::result::range_push("hyperseg-nvtx-probe");
                cudarc::nvtx::result::range_pop();
            })
            .is_ok()
    })
}

/// Turns NVTX ranges on or off for the whole process (overrides `HYPERSEG_NVTX`).
pub fn set_nvtx(on: bool) {
    WANTED.store(if on { ON } else { OFF }, Ordering::Relaxed);
}

/// Whether ranges are pushed: wanted, and the library is present.
pub fn enabled() -> bool {
    let mut w = WANTED.load(Ordering::Relaxed);
    if w == UNSET {
        let on = std::env::var(NVTX_ENV)
            .map(|v| matches!(v.trim().to_ascii_lowercase().as_str(), "1" | "true" | "on" | "yes"))
            .unwrap_or(false);
        w = if on { ON } else { OFF };
        // A concurrent set_nvtx wins over the environment.
        let _ = WANTED.compare_exchange(UNSET, w, Ordering::Relaxed, Ordering::Relaxed);
        w = WANTED.load(Ordering::Relaxed);
    }
    w == ON && library_present()
}

/// An open NVTX range; dropping it ends the range.
#[must_use = "the range ends when the guard drops"]
pub struct RangeGuard {
    _not_send: std::marker::PhantomData<*const ()>,
}

impl Drop for RangeGuard {
    fn drop(&mut self) {
        cudarc::nvtx::result::range_pop();
    }
}

/// Opens a range named `name` on this thread when ranges are enabled; `None` otherwise.
/// Keep the guard alive for the extent of the range: `let _r = nvtx::range("gemm");`.
pub fn range(name: &str) -> Option<RangeGuard> {
    if !enabled() {
        return None;
    }
    // A name with an interior NUL would panic in the bindings; such names are not ours.
    if name.as_bytes().contains(&0) {
        return None;
    }
    cudarc::nvtx::result::range_push(name);
    Some(RangeGuard { _not_send: std::marker::PhantomData })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disabled_ranges_are_none_and_never_panic() {
        set_nvtx(false);
        assert!(range("gemm").is_none());
        // Enabled without the library (this machine): still no panic, just nothing.
        set_nvtx(true);
        let r = range("gemm");
        if !library_present() {
            assert!(r.is_none());
        }
        drop(r);
        set_nvtx(false);
    }
}
