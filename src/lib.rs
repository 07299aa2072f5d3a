//! # hyperseg-engine
//!
//! A from-first-principles deep-learning engine that trains and runs the deep-hypercolumn
//! skin-lesion segmentation model (VGG16-BN, hypercolumns of six taps, a per-pixel MLP).
//!
//! The layers, bottom up:
//! - [`backend`]: every kernel, on raw storage, once per device (`cpu` reference, `cuda`).
//! - [`storage`], [`tensor`]: a shape and a device buffer; devices never mix silently.
//! - [`autograd`]: the tape of backward closures and `Tensor::backward`.
//! - [`ops`]: differentiable ops (conv, batch norm, pooling, gather, upsample, linear, loss...).
//! - [`optim`][]: Adam.
//! - [`bf16`]: bf16 activation matrices for the dense path's bf16 mode.

pub mod autograd;
pub mod backend;
pub mod bench;
pub mod bf16;
pub mod data;
pub mod device;
pub mod dtype;
pub mod error;
pub mod fsutil;
pub mod infer;
pub mod metrics;
pub mod model;
pub mod nn;
pub mod ops;
pub mod optim;
pub mod settings;
pub mod shape;
pub mod storage;
pub mod tensor;
pub mod train;

pub use autograd::{no_grad, NoGradGuard};
pub use backend::cpu::use_calling_thread;
pub use backend::SamplePoint;
pub use device::Device;
pub use dtype::DType;
pub use error::{Error, Result};
pub use ops::{concat, gather_hypercolumns};
pub use shape::Shape;
pub use tensor::Tensor;
