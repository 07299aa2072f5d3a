//! [`CudaStorage`]: a buffer of f32 on one GPU, and its [`BackendStorage`] implementation.
//!
//! The buffer is a `cudarc` [`CudaSlice<f32>`] over a block of the device's caching allocator;
//! dropping the storage gives the block back to the allocator (the slice is leaked, never
//! freed by cudarc). Copies, GEMM and convolutions are implemented here and in `blas` and
//! `cudnn`; every other kernel is delegated to `kernels::ops`, whose functions take the
//! storage as their first argument and otherwise mirror the trait methods.

use std::mem::ManuallyDrop;

use cudarc::driver::CudaSlice;

use super::allocator::Block;
use super::device::CudaDevice;
use super::error::CudaResultExt;
use super::kernels::ops;
use crate::backend::*;
use crate::dtype::DType;
use crate::error::{Error, Result};

/// A contiguous buffer of f32 on one CUDA device.
pub struct CudaStorage {
    slice: ManuallyDrop<CudaSlice<f32>>,
    block: Block,
    device: CudaDevice,
}

impl CudaStorage {
    /// Wraps a block of the device's pool holding at least `len` f32.
    pub(crate) fn from_block(device: CudaDevice, block: Block, len: usize) -> CudaStorage {
        // SAFETY: the block is a live allocation of at least len*4 bytes owned by this storage
        // until drop; event tracking is off on this context, so no event is created.
        let slice = unsafe { device.stream().upgrade_device_ptr::<f32>(block.ptr, len) };
        CudaStorage { slice: ManuallyDrop::new(slice), block, device }
    }

    /// The device holding the buffer.
    pub fn device(&self) -> &CudaDevice {
        &self.device
    }

    /// The buffer, for kernel launches (`launch_builder(..).arg(x.slice())`).
    pub fn slice(&self) -> &CudaSlice<f32> {
        &self.slice
    }

    /// The buffer, mutably (for outputs of kernel launches and copies). Write through it; never
    /// replace or swap the slice itself: it is a view of an allocator block.
    pub fn slice_mut(&mut self) -> &mut CudaSlice<f32> {
        &mut self.slice
    }

    /// Number of f32 elements.
    pub fn len(&self) -> usize {
        self.slice.len()
    }

    /// True when the buffer holds no element.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The device address of the first element (for cuBLAS, cuDNN and pointer tables).
    pub fn raw_ptr(&self) -> u64 {
        self.block.ptr
    }

    /// Overwrites this buffer with `src` (same length, same device), queued on the stream.
    pub fn copy_from(&mut self, src: &CudaStorage) -> Result<()> {
        if src.len() != self.len() {
            return Err(Error::bad_shape("copy_from", format!("{} elements into {}", src.len(), self.len())));
        }
        if !self.device.same_device(&src.device) {
            return Err(Error::DeviceMismatch {
                op: "copy_from",
                lhs: format!("cuda:{}", self.device.ordinal()),
                rhs: format!("cuda:{}", src.device.ordinal()),
            });
        }
        if !self.is_empty() {
            let stream = self.device.stream().clone();
            self.device.count_call();
            stream.memcpy_dtod(src.slice(), self.slice_mut()).ctx("device to device copy")?;
        }
        Ok(())
    }

    /// Bytes reserved for this buffer (its allocator size class).
    pub fn reserved_bytes(&self) -> usize {
        self.block.bytes
    }
}

impl Drop for CudaStorage {
    fn drop(&mut self) {
        // SAFETY: the slice is taken exactly once, here; leaking it keeps cudarc from freeing
        // the block, which goes back to the pool instead.
        let slice = unsafe { ManuallyDrop::take(&mut self.slice) };
        let _ = slice.leak();
        self.device.free_block(self.block);
    }
}

impl std::fmt::Debug for CudaStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CudaStorage(cuda:{}, {} x f32)", self.device.ordinal(), self.len())
    }
}

impl BackendStorage for CudaStorage {
    fn dtype(&self) -> DType {
        DType::F32
    }

    fn len(&self) -> usize {
        self.slice.len()
    }

    fn to_host_f32(&self) -> Result<Vec<f32>> {
        if self.is_empty() {
            return Ok(Vec::new());
        }
        self.device.refuse_capture("a copy to the host (it waits for the device)")?;
        let stream = self.device.stream();
        let v = stream.clone_dtoh(self.slice()).ctx("copy to host")?;
        // A copy into pageable memory has finished when the call returns; synchronising also
        // reports any error left by earlier asynchronous work.
        stream.synchronize().ctx("copy to host")?;
        Ok(v)
    }

    fn try_clone(&self) -> Result<Self> {
        let mut out = self.device.alloc(self.len())?;
        if !self.is_empty() {
            self.device.count_call();
            self.device.stream().memcpy_dtod(self.slice(), out.slice_mut()).ctx("device to device copy")?;
        }
        Ok(out)
    }

    fn zeros_like_len(&self, len: usize) -> Result<Self> {
        self.device.zeros(len)
    }

    fn fill(&mut self, value: f32) -> Result<()> {
        ops::fill(self, value)
    }

    fn unary(&self, op: UnaryOp) -> Result<Self> {
        ops::unary(self, op)
    }

    fn affine(&self, mul: f32, add: f32) -> Result<Self> {
        ops::affine(self, mul, add)
    }

    fn binary(&self, rhs: &Self, op: BinaryOp) -> Result<Self> {
        ops::binary(self, rhs, op)
    }

    fn relu_backward(&self, grad: &Self) -> Result<Self> {
        ops::relu_backward(self, grad)
    }

    fn add_scaled_assign(&mut self, rhs: &Self, alpha: f32) -> Result<()> {
        ops::add_scaled_assign(self, rhs, alpha)
    }

    fn sum_all(&self) -> Result<Self> {
        ops::sum_all(self)
    }

    fn broadcast_add(&self, v: &Self, s: BroadcastSpec) -> Result<Self> {
        ops::broadcast_add(self, v, s)
    }

    fn broadcast_mul(&self, v: &Self, s: BroadcastSpec) -> Result<Self> {
        ops::broadcast_mul(self, v, s)
    }

    fn reduce_to_mid(&self, s: BroadcastSpec) -> Result<Self> {
        ops::reduce_to_mid(self, s)
    }

    fn copy_blocks_into(&self, dst: &mut Self, c: BlockCopy) -> Result<()> {
        ops::copy_blocks_into(self, dst, c)
    }

    fn gemm(&self, b: &Self, g: GemmSpec) -> Result<Self> {
        super::blas::gemm(self, b, g)
    }

    /// The bf16 mode's operand copies (see `cudnn/bf16.rs`).
    type ConvKept = super::cudnn::KeptOperands;

    fn conv2d_keeping(&self, w: &Self, s: &ConvSpec, keep: ConvKeep) -> Result<(Self, Self::ConvKept)> {
        super::cudnn::conv2d_keeping(self, w, s, keep)
    }

    fn conv2d(&self, w: &Self, s: &ConvSpec) -> Result<Self> {
        super::cudnn::conv2d(self, w, s)
    }

    fn conv2d_backward_input(&self, w: &Self, s: &ConvSpec) -> Result<Self> {
        super::cudnn::conv2d_backward_input(self, w, s)
    }

    fn conv2d_backward_weight(&self, dy: &Self, s: &ConvSpec) -> Result<Self> {
        super::cudnn::conv2d_backward_weight(self, dy, s)
    }

    /// The NHWC bf16 copy of the input (the bf16 mode, when the forward pass kept it).
    fn kept_input(kept: &Self::ConvKept) -> bool {
        kept.input.is_some()
    }

    fn conv2d_backward(
        &self,
        x: Option<&Self>,
        w: &Self,
        s: &ConvSpec,
        kept: &Self::ConvKept,
        need: [bool; 2],
    ) -> Result<[Option<Self>; 2]> {
        super::cudnn::conv2d_backward(self, x, w, s, kept, need)
    }

    fn batch_norm_train(&self, gamma: &Self, beta: &Self, d: Nchw, eps: f32, relu: bool) -> Result<BatchNormForward<Self>> {
        ops::batch_norm_train(ops::BnInput::F32(self), gamma, beta, d, eps, relu)
    }

    fn batch_norm_eval(
        &self,
        gamma: &Self,
        beta: &Self,
        running_mean: &Self,
        running_var: &Self,
        d: Nchw,
        eps: f32,
        relu: bool,
    ) -> Result<Self> {
        ops::batch_norm_eval(ops::BnInput::F32(self), gamma, beta, running_mean, running_var, d, eps, relu)
    }

    fn batch_norm_backward(
        &self,
        dy: &Self,
        gamma: &Self,
        beta: &Self,
        mean: &Self,
        invstd: &Self,
        d: Nchw,
        relu: bool,
    ) -> Result<BatchNormBackward<Self>> {
        ops::batch_norm_backward(ops::BnInput::F32(self), dy, gamma, beta, mean, invstd, d, relu)
    }

    /// NHWC bf16 in the bf16 convolution mode (see `conv_bn.rs`).
    type ConvGrad = super::CudaConvGrad;

    fn conv2d_backward_from(
        dy: &Self::ConvGrad,
        x: Option<&Self>,
        w: &Self,
        s: &ConvSpec,
        kept: &Self::ConvKept,
        need: [bool; 2],
    ) -> Result<[Option<Self>; 2]> {
        match dy {
            super::CudaConvGrad::F32(dy) => super::cudnn::conv2d_backward(dy, x, w, s, kept, need),
            super::CudaConvGrad::Bf16Nhwc(dy) => super::cudnn::conv2d_backward_from_bf16(dy, x, w, s, kept, need),
        }
    }

    /// NCHW bf16 in the bf16 convolution mode (see `conv_bn.rs`).
    type NormInput = super::CudaNormInput;

    fn conv2d_for_norm(&self, w: &Self, s: &ConvSpec, keep: ConvKeep) -> Result<(Self::NormInput, Self::ConvKept)> {
        super::cudnn::conv2d_for_norm(self, w, s, keep)
    }

    fn batch_norm_train_of(
        x: &Self::NormInput,
        gamma: &Self,
        beta: &Self,
        d: Nchw,
        eps: f32,
        relu: bool,
    ) -> Result<BatchNormForward<Self>> {
        ops::batch_norm_train(x.view(), gamma, beta, d, eps, relu)
    }

    fn batch_norm_eval_of(
        x: &Self::NormInput,
        gamma: &Self,
        beta: &Self,
        running_mean: &Self,
        running_var: &Self,
        d: Nchw,
        eps: f32,
        relu: bool,
    ) -> Result<Self> {
        ops::batch_norm_eval(x.view(), gamma, beta, running_mean, running_var, d, eps, relu)
    }

    fn batch_norm_backward_of(
        x: &Self::NormInput,
        dy: &Self,
        gamma: &Self,
        beta: &Self,
        mean: &Self,
        invstd: &Self,
        d: Nchw,
        relu: bool,
    ) -> Result<BatchNormBackward<Self>> {
        ops::batch_norm_backward(x.view(), dy, gamma, beta, mean, invstd, d, relu)
    }

    /// NHWC bf16 in the bf16 convolution mode (`bn_bwd_dx_nhwc_bf16`), f32 otherwise.
    fn batch_norm_backward_for_conv(
        x: &Self::NormInput,
        dy: &Self,
        gamma: &Self,
        beta: &Self,
        mean: &Self,
        invstd: &Self,
        d: Nchw,
        relu: bool,
    ) -> Result<BatchNormBackward<Self, Self::ConvGrad>> {
        let form = if crate::settings::bf16_conv() { ops::DxForm::Bf16Nhwc } else { ops::DxForm::F32 };
        ops::batch_norm_backward_to(x.view(), dy, gamma, beta, mean, invstd, d, relu, form)
    }

    fn max_pool2x2(&self, d: Nchw) -> Result<Self> {
        ops::max_pool2x2(self, d)
    }

    fn max_pool2x2_backward(&self, dy: &Self, d: Nchw) -> Result<Self> {
        ops::max_pool2x2_backward(self, dy, d)
    }

    fn upsample_bilinear(&self, d: Nchw, out_h: usize, out_w: usize) -> Result<Self> {
        ops::upsample_bilinear(self, d, out_h, out_w)
    }

    fn upsample_bilinear_backward(&self, d: Nchw, out_h: usize, out_w: usize) -> Result<Self> {
        ops::upsample_bilinear_backward(self, d, out_h, out_w)
    }

    fn gather_hypercolumns(taps: &[&Self], points: &[SamplePoint], g: &GatherSpec) -> Result<Self> {
        if taps.is_empty() {
            return Err(Error::bad_shape("gather", "no taps"));
        }
        ops::gather_hypercolumns(taps, points, g)
    }

    fn gather_hypercolumns_backward(&self, points: &[SamplePoint], g: &GatherSpec, deterministic: bool) -> Result<Vec<Self>> {
        ops::gather_hypercolumns_backward(self, points, g, deterministic)
    }

    fn non_finite(buffers: &[&Self]) -> Result<Self> {
        ops::non_finite(buffers)
    }

    fn upsample_sum_bias_relu(planes: &[&Self], bias: &Self, points: &[SamplePoint], s: &PlaneSumSpec) -> Result<Self> {
        ops::upsample_sum_bias_relu(planes, bias, points, s)
    }

    fn bias_relu_assign(&mut self, bias: &Self, rows: usize, cols: usize) -> Result<()> {
        ops::bias_relu_forward(self, bias, rows, cols)
    }

    fn bias_relu_backward(&self, dy: &Self, rows: usize, cols: usize) -> Result<(Self, Self)> {
        ops::bias_relu_backward(self, dy, rows, cols)
    }

    fn softmax_cross_entropy(&self, labels: &[u32], classes: usize, class_weights: Option<&[f32]>) -> Result<(Self, Self)> {
        ops::softmax_cross_entropy(self, labels, classes, class_weights)
    }

    fn dropout_mask(&self, len: usize, keep: f32, seed: u32) -> Result<Self> {
        ops::dropout_mask(self, len, keep, seed)
    }

    fn adam_step(&mut self, grad: &Self, m: &mut Self, v: &mut Self, h: &AdamStep) -> Result<()> {
        ops::adam_step(self, grad, m, v, h)
    }
}
