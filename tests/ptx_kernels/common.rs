//! What every module of `tests/ptx_kernels` shares: launch shapes taken from the wrappers, a
//! runner that turns simulator faults into panics, a deterministic generator and the comparisons.

use crate::sim::{self, Arg, Dims, Kernels, Memory};
use hyperseg_engine::backend::cuda::kernels::ops;

thread_local! {
    static GRID_Y_CAP: std::cell::Cell<u32> = const { std::cell::Cell::new(u32::MAX) };
}

/// The source of every kernel module's tests (one per `.ptx` file), for the checks that each
/// kernel entry has a simulator test and an access profile.
pub const MODULE_SOURCES: [&str; 12] = [
    include_str!("adam.rs"),
    include_str!("batch_norm.rs"),
    include_str!("batch_norm_eval.rs"),
    include_str!("bf16.rs"),
    include_str!("elementwise.rs"),
    include_str!("finite.rs"),
    include_str!("gather.rs"),
    include_str!("hypercolumn_sum.rs"),
    include_str!("mlp.rs"),
    include_str!("pool.rs"),
    include_str!("reduce.rs"),
    include_str!("upsample.rs"),
];

/// The kernel entries (of every module) whose name appears in none of `texts` in quotes: what a
/// coverage check reports missing.
pub fn entries_not_quoted_in(texts: &[&str]) -> Vec<&'static str> {
    hyperseg_engine::backend::cuda::kernels::MODULES
        .iter()
        .flat_map(|m| m.entries.iter().copied())
        .filter(|e| !texts.iter().any(|t| t.contains(&format!("\"{e}\""))))
        .collect()
}

/// The simulator's launch shape of a cudarc launch config (the wrapper's own), with gridDim.y
/// cut to the cap of [`with_grid_y_cap`] when one is set.
pub fn dims(c: cudarc::driver::LaunchConfig) -> Dims {
    let (x, y, z) = c.grid_dim;
    Dims { grid: (x, y.min(GRID_Y_CAP.get()), z), block: c.block_dim }
}

/// Runs `f` with every launch shape made by [`dims`] cut to `cap` blocks along y. The kernels
/// that walk points or planes by gridDim.y take that loop past 65535 on a GPU; with a small cap
/// they take it at a size the simulator runs in milliseconds, with the wrapper's shape otherwise.
pub fn with_grid_y_cap<T>(cap: u32, f: impl FnOnce() -> T) -> T {
    struct Reset(u32);
    impl Drop for Reset {
        fn drop(&mut self) {
            GRID_Y_CAP.set(self.0);
        }
    }
    let _reset = Reset(GRID_Y_CAP.replace(cap));
    f()
}

/// `ops::grid_1d(n)`, the 1-D grid-stride shape of most elementwise kernels.
pub fn grid_1d(n: usize) -> Dims {
    dims(ops::grid_1d(n as u32))
}

/// Runs `entry` of `k`, panicking with the simulator's message on any fault.
pub fn run(k: &Kernels, mem: &mut Memory, entry: &str, d: Dims, args: &[Arg]) -> sim::Stats {
    k.launch(mem, entry, d, args).unwrap_or_else(|e| panic!("{e}"))
}

/// The simulator's message when `f` runs a launch that faults (`run` panics with it); panics
/// if `f` completes. For planted faults that the simulator itself must refuse (races,
/// out-of-bounds accesses).
pub fn launch_error(f: impl FnOnce() + std::panic::UnwindSafe) -> String {
    match std::panic::catch_unwind(f) {
        Ok(()) => panic!("the launch completed; a fault was expected"),
        Err(payload) => {
            payload.downcast_ref::<String>().cloned().or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string())).unwrap_or_default()
        }
    }
}

/// A deterministic xorshift generator (no all-zero inputs).
pub struct Rng(pub u64);

impl Rng {
    pub fn bits(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    /// Uniform in [lo, hi).
    pub fn f(&mut self, lo: f32, hi: f32) -> f32 {
        lo + (hi - lo) * ((self.bits() >> 40) as f32 / (1u64 << 24) as f32)
    }
    pub fn vec(&mut self, n: usize, lo: f32, hi: f32) -> Vec<f32> {
        (0..n).map(|_| self.f(lo, hi)).collect()
    }
    pub fn below(&mut self, n: u32) -> u32 {
        (self.bits() % n as u64) as u32
    }
}

/// The bits of [`Memory::poisoned`]'s f32: no input of these tests holds this NaN and
/// arithmetic does not make it, so an output element with these bits was never written.
pub const POISON: u32 = u32::MAX;

fn assert_written(what: &str, i: usize, g: f32) {
    assert_ne!(g.to_bits(), POISON, "{what}: element {i} was never written (it still holds the poison)");
}

/// Asserts bit equality, NaNs of any payload being equal (but never the poison of an unwritten
/// element); names the first difference.
pub fn assert_bits(what: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert_written(what, i, *g);
        let same = g.to_bits() == w.to_bits() || (g.is_nan() && w.is_nan());
        assert!(same, "{what}: element {i} is {g:e} ({:#010x}), the CPU reference has {w:e} ({:#010x})", g.to_bits(), w.to_bits());
    }
}

/// Asserts |got - want| <= atol + rtol |want| element-wise, and equality where the reference
/// is infinite or NaN (never the poison); names the first element outside.
pub fn assert_close(what: &str, got: &[f32], want: &[f32], rtol: f32, atol: f32) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert_written(what, i, *g);
        let ok = if w.is_finite() { (g - w).abs() <= atol + rtol * w.abs() } else { g == w || (g.is_nan() && w.is_nan()) };
        assert!(ok, "{what}: element {i} is {g:e}, the CPU reference has {w:e} (rtol {rtol:e}, atol {atol:e})");
    }
}

/// The values every map has to carry through: signed zeros, infinities, NaN, the extremes of
/// the range, subnormals, +-1.
pub const SPECIAL: [f32; 13] = [
    0.0,
    -0.0,
    f32::INFINITY,
    f32::NEG_INFINITY,
    f32::NAN,
    f32::MAX,
    -f32::MAX,
    f32::MIN_POSITIVE,
    -f32::MIN_POSITIVE,
    1.0e-40,
    -1.0e-40,
    1.0,
    -1.0,
];
