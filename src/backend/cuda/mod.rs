//! The CUDA backend: [`CudaDevice`] and [`CudaStorage`], through `cudarc` 0.19 with every
//! library loaded at run time (a machine without CUDA builds, runs on the CPU, and gets a
//! clear error from [`CudaDevice::new`], never a panic).
//!
//! Who owns what:
//! - [`device`]: the context, the single stream, cuBLAS/cuDNN handles, the PTX module cache;
//! - [`allocator`]: the capped caching allocator ([`MemoryStats`], `HYPERSEG_MEM_LIMIT`) and
//!   the arenas of captured graphs;
//! - [`graph`]: CUDA-graph capture and replay, and the feeds (host-to-device copies of
//!   per-step values) that ops make through [`CudaDevice::upload_words`];
//! - [`storage`]: [`CudaStorage`] and `impl BackendStorage` (copies here, GEMM in [`blas`],
//!   convolutions in [`cudnn`], every other kernel in `kernels::ops`);
//! - [`staging`]: uploads through a pinned buffer, queued without waiting for the device;
//! - [`nvtx`]: profiling ranges; [`info`]: what `hyperseg-engine info` prints;
//! - [`error`]: cudarc errors into [`Error::Cuda`](crate::error::Error::Cuda);
//! - `kernels` (PTX sources, their table and launch wrappers) is written separately.
//!
//! # Contract for `kernels`
//! - `kernels::module_for_entry(entry: &str) -> Option<(&'static str, &'static str)>` gives
//!   the module name and PTX text defining a kernel; [`CudaDevice::function`]`(entry)` loads
//!   that module once (JIT by the driver, error log in the error) and returns the cached
//!   [`cudarc::driver::CudaFunction`].
//! - `kernels::ops::*`: one free function per [`BackendStorage`](crate::backend::BackendStorage)
//!   method other than dtype/len/to_host_f32/try_clone/zeros_like_len/gemm/conv2d*, with the
//!   storage as first argument (`ops::unary(x: &CudaStorage, op) -> Result<CudaStorage>`).
//! - Buffers: [`CudaStorage::slice`] is a `&CudaSlice<f32>` (pass it to
//!   `launch_builder(..).arg(..)`), [`CudaStorage::slice_mut`] a `&mut CudaSlice<f32>` for
//!   outputs; never replace or `mem::swap` the slice itself (it belongs to the allocator).
//!   [`CudaStorage::raw_ptr`] is the device address. Outputs come from
//!   [`CudaDevice::alloc`] (uninitialised) or [`CudaDevice::zeros`]; small host arrays (sample
//!   points, labels, seeds, pointer tables) go up with [`CudaDevice::upload_words`], naming
//!   what they are ([`graph::FeedKind`]) so that a captured graph can rebuild them.
//! - Launch everything on [`CudaDevice::stream`]: there is one stream per device and event
//!   tracking is off, so stream order is the only synchronisation.
//! - Wrap launches in [`nvtx::range`]`("op name")` for profiles.
//! - Errors: `use super::error::CudaResultExt; launch(..).ctx("unary")?` turns any cudarc
//!   error into [`Error::Cuda`](crate::error::Error::Cuda).

pub mod allocator;
pub mod bf16;
pub mod blas;
pub mod conv_bn;
pub mod cudnn;
pub mod device;
pub mod error;
pub mod graph;
pub mod info;
pub mod kernels;
pub mod nvtx;
pub mod staging;
pub mod storage;

pub use allocator::MemoryStats;
pub use bf16::CudaBf16;
pub use conv_bn::{CudaConvGrad, CudaNormInput};
pub use device::CudaDevice;
pub use storage::CudaStorage;
