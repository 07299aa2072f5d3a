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

/// Launches `$entry` on `$dev`'s stream with `$cfg` and the given arguments, in order.
/// Scalar arguments must be references to locals (the launch reads them through pointers).
macro_rules! launch {
    ($dev:expr, $entry:expr, $cfg:expr, $($arg:expr),+ $(,)?) => {{
        let func = $dev.function($entry)?;
        $dev.count_call();
        let stream = $dev.stream();
        let mut builder = stream.launch_builder(&func);
        $( cudarc::driver::PushKernelArg::arg(&mut builder, $arg); )+
        // SAFETY: the argument list matches the kernel's .param list (see its .ptx header),
        // buffers are live for the launch (stream-ordered pool) and sized by the checks above.
        $crate::backend::cuda::error::CudaResultExt::ctx(unsafe { builder.launch($cfg) }, $entry).map(|_| ())
    }};
}
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
