//! A PTX simulator for the tests: runs the engine's hand-written kernels (`kernels/*.ptx`, the
//! exact text the CUDA backend embeds) on the CPU, so that every kernel is checked against its
//! CPU reference on machines without a GPU, CI included.
//!
//! It models the subset of PTX the kernels are written in (see [`parse`]) with the GPU's
//! arithmetic: IEEE f32/f64 with round-to-nearest-even (`.rn`), fused multiply-add rounded once,
//! saturating float-to-integer conversions, PTX's `min`/`max` NaN rules, `shfl.sync.down`'s
//! clamp, and `bar.sync` (see [`exec`]). It is strict where a GPU is forgiving: out-of-bounds or
//! misaligned accesses, reads of unwritten registers, partial-warp shuffles and barriers not
//! reached by every thread are errors. What it cannot show: timing, races between blocks (blocks
//! run one after another), the JIT's acceptance of the text (`kernels/check.sh` runs ptxas for
//! that), and anything cuBLAS or cuDNN does.
//!
//! Used by `tests/ptx_kernels.rs`:
//!
//! ```ignore
//! let k = ptx_sim::load("bf16");
//! let mut mem = ptx_sim::Memory::default();
//! let x = mem.upload(&[1.0f32, 2.0]);
//! let y = mem.poisoned(4);
//! k.launch(&mut mem, "cast_f32_to_bf16", grid_1d(2), &[Arg::U64(y), Arg::U64(x), Arg::U32(2)])?;
//! ```

mod arith;
pub mod exec;
mod memory;
pub mod parse;
pub mod profile;

pub use exec::{Arg, Dims, Kernels, Stats};
pub use memory::Memory;
pub use profile::Profile;

/// The embedded module `name` (`kernels/NAME.ptx`), parsed.
pub fn load(name: &str) -> Kernels {
    let m = hyperseg_engine::backend::cuda::kernels::MODULES
        .iter()
        .find(|m| m.name == name)
        .unwrap_or_else(|| panic!("no kernel module `{name}`"));
    let module = parse::Module::parse(m.ptx).unwrap_or_else(|e| panic!("kernels/{name}.ptx: {e}"));
    Kernels::new(module)
}

/// The embedded module `name` with `edit` applied to its text first: for checks that a test
/// notices a broken kernel (`edit` plants the fault).
pub fn load_edited(name: &str, edit: impl FnOnce(&str) -> String) -> Kernels {
    let m = hyperseg_engine::backend::cuda::kernels::MODULES
        .iter()
        .find(|m| m.name == name)
        .unwrap_or_else(|| panic!("no kernel module `{name}`"));
    let text = edit(m.ptx);
    assert_ne!(text, m.ptx, "the edit of kernels/{name}.ptx changed nothing");
    let module = parse::Module::parse(&text).unwrap_or_else(|e| panic!("kernels/{name}.ptx (edited): {e}"));
    Kernels::new(module)
}
