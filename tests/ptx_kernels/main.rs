//! Every hand-written PTX kernel (`kernels/*.ptx`) run in a PTX simulator on the CPU and
//! compared with its CPU reference (`backend::cpu`), with the launch shape and host-built tables
//! of its wrapper (`backend::cuda::kernels::ops`). This runs everywhere, CI included, and checks
//! what `tests/cuda_kernels.rs` checks on a GPU, minus timing, the JIT and cuBLAS/cuDNN (see
//! `sim/mod.rs` for what the simulator models). One module per `.ptx` file.
//!
//! Tolerances: bit-exact where the kernel's header promises it; otherwise stated per check.

mod access;
mod common;
mod sim;

mod adam;
mod batch_norm;
mod batch_norm_eval;
mod bf16;
mod elementwise;
mod finite;
mod gather;
mod hypercolumn_sum;
mod mlp;
mod pool;
mod reduce;
mod sim_checks;
mod upsample;

pub use common::*;
