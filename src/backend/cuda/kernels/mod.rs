//! The hand-written PTX kernels of the CUDA backend and their launch wrappers.
//!
//! The PTX lives in `kernels/*.ptx` at the crate root (each file opens with what it computes,
//! its launch shape and the CPU function it must match). `build.rs` embeds every file and
//! generates the table included below: [`MODULES`] (name, PTX text, entry names) and the
//! [`entry`] constants, one per kernel, through which Rust code names kernels (a missing or
//! misspelled entry is a compile error). [`CudaDevice::function`](super::CudaDevice::function)
//! finds a kernel's module with [`module_for_entry`] and JIT-loads it once.
//!
//! [`ops`] holds one launch wrapper per [`BackendStorage`](crate::backend::BackendStorage)
//! method that is implemented by a PTX kernel, plus a few fused extras for the MLP and the
//! optimiser.

/// Launches a kernel on `$dev`'s stream with `$cfg` and the given arguments, in order.
/// Scalar arguments must be references to locals (the launch reads them through pointers).
///
/// The kernel is named `entry::NAME`, or `VAR as NAME_A | NAME_B` for a `&str` variable holding
/// one of several entries with the same parameters. Either way the arguments are checked at
/// compile time against the `.param` list of each named entry ([`signature`]): their number, and
/// the type of each (a device buffer or `u64` for `.u64`, `u32` for `.u32`, `f32`, `f64`, `i32`),
/// so that a wrapper and its kernel cannot drift apart unnoticed on a machine without a GPU.
macro_rules! launch {
    ($dev:expr, entry::$name:ident, $cfg:expr, $($arg:expr),+ $(,)?) => {{
        $crate::backend::cuda::kernels::check_args!($name ($($arg),+));
        $crate::backend::cuda::kernels::launch!(@unchecked $dev, $crate::backend::cuda::kernels::entry::$name, $cfg, $($arg),+)
    }};
    ($dev:expr, $var:ident as $($name:ident)|+, $cfg:expr, $($arg:expr),+ $(,)?) => {{
        $crate::backend::cuda::kernels::launch!(@check_each [$($name),+] ($($arg),+));
        debug_assert!([$($crate::backend::cuda::kernels::entry::$name),+].contains(&$var), "{} is not one of the entries named", $var);
        $crate::backend::cuda::kernels::launch!(@unchecked $dev, $var, $cfg, $($arg),+)
    }};
    (@check_each [$first:ident $(, $rest:ident)*] $args:tt) => {
        $crate::backend::cuda::kernels::check_args!($first $args);
        $crate::backend::cuda::kernels::launch!(@check_each [$($rest),*] $args);
    };
    (@check_each [] $args:tt) => {};
    (@unchecked $dev:expr, $entry:expr, $cfg:expr, $($arg:expr),+) => {{
        let entry_name: &str = $entry;
        let func = $dev.function(entry_name)?;
        $dev.count_call();
        let stream = $dev.stream();
        let mut builder = stream.launch_builder(&func);
        $( cudarc::driver::PushKernelArg::arg(&mut builder, $arg); )+
        // SAFETY: the argument list matches the kernel's .param list (checked at compile time
        // by check_args!), buffers are live for the launch (stream-ordered pool) and sized by
        // the wrapper's checks.
        $crate::backend::cuda::error::CudaResultExt::ctx(unsafe { builder.launch($cfg) }, entry_name).map(|_| ())
    }};
}

/// Type-checks an argument list against `signature::$name` without evaluating it.
macro_rules! check_args {
    ($name:ident ($($arg:expr),+)) => {
        #[allow(unreachable_code, clippy::diverging_sub_expression)]
        if false {
            let _: $crate::backend::cuda::kernels::signature::$name = ($($crate::backend::cuda::kernels::param::kind(&$arg),)+);
        }
    };
}
pub(crate) use check_args;
pub(crate) use launch;

pub mod ops;

/// One embedded PTX module: a `kernels/*.ptx` file.
#[derive(Clone, Copy, Debug)]
pub struct Module {
    /// The file stem (`elementwise` for `kernels/elementwise.ptx`).
    pub name: &'static str,
    /// The PTX source text.
    pub ptx: &'static str,
    /// The `.entry` names the module defines, in file order.
    pub entries: &'static [&'static str],
}

include!(concat!(env!("OUT_DIR"), "/kernel_table.rs"));

/// Marker types of kernel parameters, for the compile-time argument checks of `launch!`.
pub mod param {
    use std::marker::PhantomData;

    use cudarc::driver::CudaSlice;

    /// A `.param .u64`: a device buffer (passed as its address) or a `u64`.
    pub struct U64;
    /// A `.param .u32` or `.b32`.
    pub struct U32;
    /// A `.param .s32`.
    pub struct S32;
    /// A `.param .f32`.
    pub struct F32;
    /// A `.param .f64`.
    pub struct F64;

    /// The parameter type a kernel argument fills.
    pub trait Param {
        type Kind;
    }
    impl<T> Param for &CudaSlice<T> {
        type Kind = U64;
    }
    impl<T> Param for &mut CudaSlice<T> {
        type Kind = U64;
    }
    impl Param for &u64 {
        type Kind = U64;
    }
    impl Param for &u32 {
        type Kind = U32;
    }
    impl Param for &i32 {
        type Kind = S32;
    }
    impl Param for &f32 {
        type Kind = F32;
    }
    impl Param for &f64 {
        type Kind = F64;
    }

    /// The marker of an argument's parameter type (never called at run time: `launch!` uses
    /// it inside `if false` to compare argument lists with [`signature`](super::signature)).
    pub fn kind<A: Param>(_: &A) -> PhantomData<A::Kind> {
        PhantomData
    }
}

/// The module name and PTX source of the module defining the kernel `entry`.
pub fn module_for_entry(entry: &str) -> Option<(&'static str, &'static str)> {
    MODULES.iter().find(|m| m.entries.contains(&entry)).map(|m| (m.name, m.ptx))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_entry_constant_resolves_to_its_module() {
        assert_eq!(module_for_entry(entry::FILL_F32).map(|m| m.0), Some("elementwise"));
        assert_eq!(module_for_entry(entry::GATHER_FWD_F32).map(|m| m.0), Some("gather"));
        assert!(module_for_entry("no_such_kernel").is_none());
        for m in MODULES {
            for e in m.entries {
                assert_eq!(module_for_entry(e).map(|x| x.0), Some(m.name));
            }
        }
    }
}
