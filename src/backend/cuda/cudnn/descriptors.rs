//! The cuDNN descriptors of one convolution (input, filter, output, convolution), each
//! destroyed when dropped: NCHW f32 or NHWC bf16 tensors ([`ConvData`]), cross-correlation with
//! symmetric padding and stride, fp32 accumulation, and the math type of the algorithm about to
//! run.

use std::ffi::c_int;

use cudarc::cudnn::{result, sys};

use super::algo::math_type;
use crate::backend::cuda::error::CudaResultExt;
use crate::backend::ConvSpec;
use crate::error::{Error, Result};

pub(super) struct TensorDesc(pub(super) sys::cudnnTensorDescriptor_t);
pub(super) struct FilterDesc(pub(super) sys::cudnnFilterDescriptor_t);
pub(super) struct ConvDesc(pub(super) sys::cudnnConvolutionDescriptor_t);

impl Drop for TensorDesc {
    fn drop(&mut self) {
        // SAFETY: created once, destroyed once.
        let _ = unsafe { result::destroy_tensor_descriptor(self.0) };
    }
}
impl Drop for FilterDesc {
    fn drop(&mut self) {
        // SAFETY: created once, destroyed once.
        let _ = unsafe { result::destroy_filter_descriptor(self.0) };
    }
}
impl Drop for ConvDesc {
    fn drop(&mut self) {
        // SAFETY: created once, destroyed once.
        let _ = unsafe { result::destroy_convolution_descriptor(self.0) };
    }
}

fn int(v: usize) -> Result<c_int> {
    c_int::try_from(v).map_err(|_| Error::bad_shape("conv2d", format!("extent {v} is beyond cuDNN's 32-bit range")))
}

/// The element type and memory layout of a convolution's three operands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum ConvData {
    /// f32, NCHW (filters KCRS): the engine's own tensors.
    NchwF32,
    /// bf16, NHWC (filters KRSC): the bf16 convolutions' copies ([`super::bf16`]), the layout
    /// cuDNN's bf16 tensor-core kernels read without a transpose of their own.
    NhwcBf16,
}

impl ConvData {
    fn format(self) -> sys::cudnnTensorFormat_t {
        match self {
            ConvData::NchwF32 => sys::cudnnTensorFormat_t::CUDNN_TENSOR_NCHW,
            ConvData::NhwcBf16 => sys::cudnnTensorFormat_t::CUDNN_TENSOR_NHWC,
        }
    }

    fn data_type(self) -> sys::cudnnDataType_t {
        match self {
            ConvData::NchwF32 => sys::cudnnDataType_t::CUDNN_DATA_FLOAT,
            ConvData::NhwcBf16 => sys::cudnnDataType_t::CUDNN_DATA_BFLOAT16,
        }
    }
}

/// A 4-d tensor descriptor; `dims` are always given as (n, c, h, w), the format places them.
fn tensor4d(dims: [usize; 4], data: ConvData) -> Result<TensorDesc> {
    let d = TensorDesc(result::create_tensor_descriptor().ctx("cudnnCreateTensorDescriptor")?);
    let dims = [int(dims[0])?, int(dims[1])?, int(dims[2])?, int(dims[3])?];
    // SAFETY: a live descriptor.
    unsafe { result::set_tensor4d_descriptor(d.0, data.format(), data.data_type(), dims) }.ctx("cudnnSetTensor4dDescriptor")?;
    Ok(d)
}

/// The four descriptors of one convolution.
pub(super) struct Descriptors {
    pub(super) x: TensorDesc,
    pub(super) w: FilterDesc,
    pub(super) y: TensorDesc,
    pub(super) conv: ConvDesc,
}

impl Descriptors {
    pub(super) fn new(s: &ConvSpec, data: ConvData) -> Result<Descriptors> {
        let x = tensor4d([s.n, s.c_in, s.h, s.w], data)?;
        let y = tensor4d([s.n, s.c_out, s.out_h(), s.out_w()], data)?;
        let w = FilterDesc(result::create_filter_descriptor().ctx("cudnnCreateFilterDescriptor")?);
        let wd = [int(s.c_out)?, int(s.c_in)?, int(s.kh)?, int(s.kw)?];
        // SAFETY: live descriptors.
        unsafe { result::set_filter4d_descriptor(w.0, data.data_type(), data.format(), wd) }.ctx("cudnnSetFilter4dDescriptor")?;
        let conv = ConvDesc(result::create_convolution_descriptor().ctx("cudnnCreateConvolutionDescriptor")?);
        let (p, st) = (int(s.pad)?, int(s.stride)?);
        // SAFETY: a live descriptor.
        unsafe {
            result::set_convolution2d_descriptor(
                conv.0,
                p,
                p,
                st,
                st,
                1,
                1,
                sys::cudnnConvolutionMode_t::CUDNN_CROSS_CORRELATION,
                sys::cudnnDataType_t::CUDNN_DATA_FLOAT, // fp32 accumulation, bf16 data included
            )
        }
        .ctx("cudnnSetConvolution2dDescriptor")?;
        Ok(Descriptors { x, w, y, conv })
    }

    pub(super) fn set_math(&self, math: u32) -> Result<()> {
        // SAFETY: a live descriptor.
        unsafe { result::set_convolution_math_type(self.conv.0, math_type(math)) }.ctx("cudnnSetConvolutionMathType")
    }
}
