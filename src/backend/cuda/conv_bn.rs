//! What a convolution and the training-mode batch norm after it hand each other on the GPU:
//! [`CudaNormInput`], the convolution's output as the batch norm reads it
//! ([`crate::backend::BackendStorage::conv2d_for_norm`]), and [`CudaConvGrad`], the batch norm's
//! input gradient as the convolution's backward pass reads it
//! ([`crate::backend::BackendStorage::conv2d_backward_from`]).
//!
//! In the bf16 convolution mode ([`crate::settings::bf16_conv`]) cuDNN's result is bf16, so the
//! f32 tensor the engine used to make of it held bf16 values at twice their size. Here it stays
//! NCHW bf16 (`transpose_bf16`): the batch-norm kernels read it as such (`xbf16`; the widening is
//! exact, so every result is bit for bit the f32 path's), and the backward pass keeps it at half
//! the memory and reads half the bytes. In the f32 modes it is the f32 output.

use super::kernels::ops::BnInput;
use super::{CudaBf16, CudaDevice, CudaStorage};
use crate::backend::{BackendStorage, Nchw};
use crate::dtype::DType;
use crate::error::Result;

/// A convolution's NCHW output as the batch norm after it reads it.
#[derive(Debug)]
pub enum CudaNormInput {
    /// f32, as every other tensor.
    F32(CudaStorage),
    /// bf16 (the bf16 convolution mode): the values an f32 output would hold, exactly.
    Bf16(CudaBf16),
}

impl CudaNormInput {
    /// The element type held.
    pub fn dtype(&self) -> DType {
        match self {
            CudaNormInput::F32(_) => DType::F32,
            CudaNormInput::Bf16(_) => DType::BF16,
        }
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.view().len()
    }

    /// True when there is no element.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The device holding the buffer.
    pub fn device(&self) -> &CudaDevice {
        match self {
            CudaNormInput::F32(x) => x.device(),
            CudaNormInput::Bf16(x) => x.device(),
        }
    }

    /// The buffer as the batch-norm kernels take it.
    pub fn view(&self) -> BnInput<'_> {
        match self {
            CudaNormInput::F32(x) => BnInput::F32(x),
            CudaNormInput::Bf16(x) => BnInput::Bf16(x),
        }
    }

    /// The values as f32: the buffer itself, or bf16 widened exactly.
    pub fn into_f32(self) -> Result<CudaStorage> {
        match self {
            CudaNormInput::F32(x) => Ok(x),
            CudaNormInput::Bf16(x) => x.to_f32(),
        }
    }

    /// The values as f32 (a copy; bf16 widened exactly).
    pub fn to_f32(&self) -> Result<CudaStorage> {
        match self {
            CudaNormInput::F32(x) => x.try_clone(),
            CudaNormInput::Bf16(x) => x.to_f32(),
        }
    }
}

/// A convolution's upstream gradient as the batch norm after it hands it over.
#[derive(Debug)]
pub enum CudaConvGrad {
    /// NCHW f32, as every other tensor.
    F32(CudaStorage),
    /// NHWC bf16 (the bf16 convolution mode): the copy the bf16 convolution reads, the f32
    /// gradient's values rounded to bf16 (`bn_bwd_dx_nhwc_bf16` writes it, in place of an f32
    /// gradient and the convolution's transposing cast of it).
    Bf16Nhwc(CudaBf16),
}

impl CudaConvGrad {
    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            CudaConvGrad::F32(g) => g.len(),
            CudaConvGrad::Bf16Nhwc(g) => g.len(),
        }
    }

    /// True when there is no element.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The values as NCHW f32 (`d` the batch norm's dimensions): the f32 buffer itself, or the
    /// bf16 copy widened exactly and transposed back.
    pub fn into_f32_nchw(self, d: Nchw) -> Result<CudaStorage> {
        match self {
            CudaConvGrad::F32(g) => Ok(g),
            CudaConvGrad::Bf16Nhwc(g) => g.transposed_to_f32(d.n, d.h * d.w, d.c),
        }
    }

    /// The element type held.
    pub fn dtype(&self) -> DType {
        match self {
            CudaConvGrad::F32(_) => DType::F32,
            CudaConvGrad::Bf16Nhwc(_) => DType::BF16,
        }
    }
}
