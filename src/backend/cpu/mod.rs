//! The CPU reference backend: every kernel of [`BackendStorage`] on host memory.
//!
//! This is the backend that runs the engine where there is no GPU (CI, laptops, the demo) and
//! the reference every CUDA kernel is checked against. The kernels live one family per file
//! and work on plain slices; this module only unwraps the storage and checks lengths.
//! Heavy work is spread across cores with rayon; GEMMs go through the `gemm` crate.

mod adam;
mod batch_norm;
pub mod bf16;
mod buffer;
mod conv;
mod elementwise;
mod gemm;
mod loss;
mod pool;
pub(crate) mod resample;
mod threads;

pub use conv::{col2im, im2col};
pub use elementwise::{keep_threshold, relu};
pub use gemm::gemm_f32;
pub use threads::use_calling_thread;

use crate::backend::*;
use crate::dtype::DType;
use crate::error::{Error, Result};

/// Host-memory storage, one variant per dtype (f32 today).
#[derive(Clone, Debug, PartialEq)]
pub enum CpuStorage {
    F32(Vec<f32>),
}

impl CpuStorage {
    /// The f32 values.
    pub fn as_f32(&self) -> &[f32] {
        let CpuStorage::F32(v) = self;
        v
    }
    /// The f32 values, mutably.
    pub fn as_f32_mut(&mut self) -> &mut [f32] {
        let CpuStorage::F32(v) = self;
        v
    }
}

fn check_len(op: &'static str, what: &str, got: usize, want: usize) -> Result<()> {
    if got != want {
        return Err(Error::bad_shape(op, format!("{what} has {got} elements, expected {want}")));
    }
    Ok(())
}

impl BackendStorage for CpuStorage {
    fn dtype(&self) -> DType {
        DType::F32
    }

    fn len(&self) -> usize {
        self.as_f32().len()
    }

    fn to_host_f32(&self) -> Result<Vec<f32>> {
        Ok(self.as_f32().to_vec())
    }

    fn try_clone(&self) -> Result<Self> {
        Ok(self.clone())
    }

    fn zeros_like_len(&self, len: usize) -> Result<Self> {
        Ok(CpuStorage::F32(vec![0.0; len]))
    }

    fn fill(&mut self, value: f32) -> Result<()> {
        self.as_f32_mut().fill(value);
        Ok(())
    }

    fn unary(&self, op: UnaryOp) -> Result<Self> {
        Ok(CpuStorage::F32(elementwise::unary(self.as_f32(), op)))
    }

    fn affine(&self, mul: f32, add: f32) -> Result<Self> {
        Ok(CpuStorage::F32(elementwise::affine(self.as_f32(), mul, add)))
    }

    fn binary(&self, rhs: &Self, op: BinaryOp) -> Result<Self> {
        check_len("binary", "rhs", rhs.len(), self.len())?;
        Ok(CpuStorage::F32(elementwise::binary(self.as_f32(), rhs.as_f32(), op)))
    }

    fn relu_backward(&self, grad: &Self) -> Result<Self> {
        check_len("relu_backward", "grad", grad.len(), self.len())?;
        Ok(CpuStorage::F32(elementwise::relu_backward(self.as_f32(), grad.as_f32())))
    }

    fn non_finite(buffers: &[&Self]) -> Result<Self> {
        let slices: Vec<&[f32]> = buffers.iter().map(|b| b.as_f32()).collect();
        Ok(CpuStorage::F32(vec![elementwise::non_finite(&slices)]))
    }

    fn add_scaled_assign(&mut self, rhs: &Self, alpha: f32) -> Result<()> {
        check_len("add_scaled_assign", "rhs", rhs.len(), self.len())?;
        elementwise::add_scaled_assign(self.as_f32_mut(), rhs.as_f32(), alpha);
        Ok(())
    }

    fn sum_all(&self) -> Result<Self> {
        Ok(CpuStorage::F32(vec![elementwise::sum(self.as_f32())]))
    }

    fn broadcast_add(&self, v: &Self, s: BroadcastSpec) -> Result<Self> {
        check_len("broadcast_add", "input", self.len(), s.outer * s.mid * s.inner)?;
        check_len("broadcast_add", "vector", v.len(), s.mid)?;
        Ok(CpuStorage::F32(elementwise::broadcast(self.as_f32(), v.as_f32(), s, |a, b| a + b)))
    }

    fn broadcast_mul(&self, v: &Self, s: BroadcastSpec) -> Result<Self> {
        check_len("broadcast_mul", "input", self.len(), s.outer * s.mid * s.inner)?;
        check_len("broadcast_mul", "vector", v.len(), s.mid)?;
        Ok(CpuStorage::F32(elementwise::broadcast(self.as_f32(), v.as_f32(), s, |a, b| a * b)))
    }

    fn reduce_to_mid(&self, s: BroadcastSpec) -> Result<Self> {
        check_len("reduce_to_mid", "input", self.len(), s.outer * s.mid * s.inner)?;
        Ok(CpuStorage::F32(elementwise::reduce_to_mid(self.as_f32(), s)))
    }

    fn copy_blocks_into(&self, dst: &mut Self, c: BlockCopy) -> Result<()> {
        if c.outer > 0 {
            let src_end = c.src_offset + (c.outer - 1) * c.src_stride + c.block;
            let dst_end = c.dst_offset + (c.outer - 1) * c.dst_stride + c.block;
            if src_end > self.len() || dst_end > dst.len() {
                return Err(Error::bad_shape("copy", format!("{c:?} out of bounds")));
            }
        }
        elementwise::copy_blocks(self.as_f32(), dst.as_f32_mut(), c);
        Ok(())
    }

    fn gemm(&self, b: &Self, g: GemmSpec) -> Result<Self> {
        check_len("matmul", "lhs", self.len(), g.m * g.k)?;
        check_len("matmul", "rhs", b.len(), g.k * g.n)?;
        let mut c = buffer::zeros(g.m * g.n);
        if crate::settings::bf16_gemm() {
            let (a, b) = (gemm::round_to_bf16(self.as_f32()), gemm::round_to_bf16(b.as_f32()));
            gemm::gemm_f32(&a, &b, &mut c, g, 0.0);
        } else {
            gemm::gemm_f32(self.as_f32(), b.as_f32(), &mut c, g, 0.0);
        }
        Ok(CpuStorage::F32(c))
    }

    /// Nothing: the CPU's convolutions read the operands themselves.
    type ConvKept = ();

    fn conv2d_keeping(&self, w: &Self, s: &ConvSpec, _keep: ConvKeep) -> Result<(Self, ())> {
        check_len("conv2d", "input", self.len(), s.n * s.c_in * s.h * s.w)?;
        check_len("conv2d", "weight", w.len(), s.c_out * s.c_in * s.kh * s.kw)?;
        Ok((CpuStorage::F32(conv::with_bf16_mode(self.as_f32(), w.as_f32(), |x, w| conv::forward(x, w, s))), ()))
    }

    fn conv2d_backward_input(&self, w: &Self, s: &ConvSpec) -> Result<Self> {
        check_len("conv2d_backward_input", "dy", self.len(), s.n * s.c_out * s.out_h() * s.out_w())?;
        check_len("conv2d_backward_input", "weight", w.len(), s.c_out * s.c_in * s.kh * s.kw)?;
        Ok(CpuStorage::F32(conv::with_bf16_mode(self.as_f32(), w.as_f32(), |dy, w| conv::backward_input(dy, w, s))))
    }

    fn conv2d_backward_weight(&self, dy: &Self, s: &ConvSpec) -> Result<Self> {
        check_len("conv2d_backward_weight", "input", self.len(), s.n * s.c_in * s.h * s.w)?;
        check_len("conv2d_backward_weight", "dy", dy.len(), s.n * s.c_out * s.out_h() * s.out_w())?;
        Ok(CpuStorage::F32(conv::with_bf16_mode(self.as_f32(), dy.as_f32(), |x, dy| conv::backward_weight(x, dy, s))))
    }

    fn batch_norm_train(&self, gamma: &Self, beta: &Self, d: Nchw, eps: f32, relu: bool) -> Result<BatchNormForward<Self>> {
        check_len("batch_norm", "input", self.len(), d.len())?;
        check_len("batch_norm", "gamma", gamma.len(), d.c)?;
        check_len("batch_norm", "beta", beta.len(), d.c)?;
        let f = batch_norm::forward_train(self.as_f32(), gamma.as_f32(), beta.as_f32(), d, eps, relu);
        Ok(BatchNormForward {
            y: CpuStorage::F32(f.y),
            mean: CpuStorage::F32(f.mean),
            invstd: CpuStorage::F32(f.invstd),
            var_unbiased: CpuStorage::F32(f.var_unbiased),
        })
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
        check_len("batch_norm_backward", "input", self.len(), d.len())?;
        check_len("batch_norm_backward", "dy", dy.len(), d.len())?;
        for (what, p) in [("gamma", gamma), ("beta", beta), ("mean", mean), ("invstd", invstd)] {
            check_len("batch_norm_backward", what, p.len(), d.c)?;
        }
        let (x, gamma, mean, invstd) = (self.as_f32(), gamma.as_f32(), mean.as_f32(), invstd.as_f32());
        // The fused ReLU's backward, materialised: the forward's output recomputed from x (the
        // same statistics and formula give it bit for bit), then the gradient masked where it
        // is not > 0; the reference for the masking GPU kernels.
        let masked = relu.then(|| {
            let y = batch_norm::normalize(x, gamma, beta.as_f32(), mean, invstd, d, true);
            elementwise::relu_backward(&y, dy.as_f32())
        });
        let dy = masked.as_deref().unwrap_or(dy.as_f32());
        let b = batch_norm::backward(x, dy, gamma, mean, invstd, d);
        Ok(BatchNormBackward { dx: CpuStorage::F32(b.dx), dgamma: CpuStorage::F32(b.dgamma), dbeta: CpuStorage::F32(b.dbeta) })
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
        check_len("batch_norm_eval", "input", self.len(), d.len())?;
        for (what, p) in [("gamma", gamma), ("beta", beta), ("running mean", running_mean), ("running variance", running_var)] {
            check_len("batch_norm_eval", what, p.len(), d.c)?;
        }
        let (gamma, beta) = (gamma.as_f32(), beta.as_f32());
        Ok(CpuStorage::F32(batch_norm::forward_eval(self.as_f32(), gamma, beta, running_mean.as_f32(), running_var.as_f32(), d, eps, relu)))
    }

    /// The f32 gradient: the CPU's bf16 mode rounds it inside the convolution
    /// (`conv::with_bf16_mode`).
    type ConvGrad = CpuStorage;

    fn conv2d_backward_from(dy: &Self, x: Option<&Self>, w: &Self, s: &ConvSpec, kept: &(), need: [bool; 2]) -> Result<[Option<Self>; 2]> {
        dy.conv2d_backward(x, w, s, kept, need)
    }

    /// The f32 output: the CPU's bf16 mode rounds it in place (`conv::with_bf16_mode`).
    type NormInput = CpuStorage;

    fn conv2d_for_norm(&self, w: &Self, s: &ConvSpec, keep: ConvKeep) -> Result<(Self, ())> {
        self.conv2d_keeping(w, s, keep)
    }

    fn batch_norm_train_of(x: &Self, gamma: &Self, beta: &Self, d: Nchw, eps: f32, relu: bool) -> Result<BatchNormForward<Self>> {
        x.batch_norm_train(gamma, beta, d, eps, relu)
    }

    fn batch_norm_eval_of(
        x: &Self,
        gamma: &Self,
        beta: &Self,
        running_mean: &Self,
        running_var: &Self,
        d: Nchw,
        eps: f32,
        relu: bool,
    ) -> Result<Self> {
        x.batch_norm_eval(gamma, beta, running_mean, running_var, d, eps, relu)
    }

    fn batch_norm_backward_of(
        x: &Self,
        dy: &Self,
        gamma: &Self,
        beta: &Self,
        mean: &Self,
        invstd: &Self,
        d: Nchw,
        relu: bool,
    ) -> Result<BatchNormBackward<Self>> {
        x.batch_norm_backward(dy, gamma, beta, mean, invstd, d, relu)
    }

    fn batch_norm_backward_for_conv(
        x: &Self,
        dy: &Self,
        gamma: &Self,
        beta: &Self,
        mean: &Self,
        invstd: &Self,
        d: Nchw,
        relu: bool,
    ) -> Result<BatchNormBackward<Self>> {
        x.batch_norm_backward(dy, gamma, beta, mean, invstd, d, relu)
    }

    fn max_pool2x2(&self, d: Nchw) -> Result<Self> {
        check_len("max_pool2x2", "input", self.len(), d.len())?;
        Ok(CpuStorage::F32(pool::max_pool2x2(self.as_f32(), d)))
    }

    fn max_pool2x2_backward(&self, dy: &Self, d: Nchw) -> Result<Self> {
        check_len("max_pool2x2_backward", "input", self.len(), d.len())?;
        check_len("max_pool2x2_backward", "dy", dy.len(), d.n * d.c * (d.h / 2) * (d.w / 2))?;
        Ok(CpuStorage::F32(pool::max_pool2x2_backward(self.as_f32(), dy.as_f32(), d)))
    }

    fn upsample_bilinear(&self, d: Nchw, out_h: usize, out_w: usize) -> Result<Self> {
        check_len("upsample_bilinear", "input", self.len(), d.len())?;
        Ok(CpuStorage::F32(resample::upsample_forward(self.as_f32(), d, out_h, out_w)))
    }

    fn upsample_bilinear_backward(&self, d: Nchw, out_h: usize, out_w: usize) -> Result<Self> {
        check_len("upsample_bilinear_backward", "dy", self.len(), d.n * d.c * out_h * out_w)?;
        Ok(CpuStorage::F32(resample::upsample_backward(self.as_f32(), d, out_h, out_w)))
    }

    fn gather_hypercolumns(taps: &[&Self], points: &[SamplePoint], g: &GatherSpec) -> Result<Self> {
        resample::check_gather(taps.iter().map(|t| t.len()), points, g)?;
        let slices: Vec<&[f32]> = taps.iter().map(|t| t.as_f32()).collect();
        Ok(CpuStorage::F32(resample::gather_forward(&slices, points, g)))
    }

    fn gather_hypercolumns_backward(&self, points: &[SamplePoint], g: &GatherSpec, _deterministic: bool) -> Result<Vec<Self>> {
        check_len("gather_backward", "grad", self.len(), points.len() * g.total_channels())?;
        // The CPU scatter is always deterministic (a fixed order per tap).
        Ok(resample::gather_backward(self.as_f32(), points, g).into_iter().map(CpuStorage::F32).collect())
    }

    fn upsample_sum_bias_relu(planes: &[&Self], bias: &Self, points: &[SamplePoint], s: &PlaneSumSpec) -> Result<Self> {
        let lens: Vec<usize> = planes.iter().map(|p| p.len()).collect();
        check_plane_sum(&lens, bias.len(), points, s)?;
        let slices: Vec<&[f32]> = planes.iter().map(|p| p.as_f32()).collect();
        Ok(CpuStorage::F32(resample::plane_sum_forward(&slices, bias.as_f32(), points, s)))
    }

    fn bias_relu_assign(&mut self, bias: &Self, rows: usize, cols: usize) -> Result<()> {
        check_len("bias_relu", "input", self.len(), rows * cols)?;
        check_len("bias_relu", "bias", bias.len(), cols)?;
        elementwise::bias_relu_assign(self.as_f32_mut(), bias.as_f32());
        Ok(())
    }

    fn bias_relu_backward(&self, dy: &Self, rows: usize, cols: usize) -> Result<(Self, Self)> {
        check_len("bias_relu_backward", "output", self.len(), rows * cols)?;
        check_len("bias_relu_backward", "dy", dy.len(), rows * cols)?;
        let dz = elementwise::relu_backward(self.as_f32(), dy.as_f32());
        let db = elementwise::reduce_to_mid(&dz, BroadcastSpec { outer: rows, mid: cols, inner: 1 });
        Ok((CpuStorage::F32(dz), CpuStorage::F32(db)))
    }

    fn softmax_cross_entropy(&self, labels: &[u32], classes: usize, class_weights: Option<&[f32]>) -> Result<(Self, Self)> {
        crate::backend::check_softmax_xent(self.len(), labels, classes, class_weights)?;
        let (l, g) = loss::softmax_cross_entropy(self.as_f32(), labels, classes, class_weights);
        Ok((CpuStorage::F32(vec![l]), CpuStorage::F32(g)))
    }

    fn dropout_mask(&self, len: usize, keep: f32, seed: u32) -> Result<Self> {
        Ok(CpuStorage::F32(elementwise::dropout_mask(len, keep, seed)))
    }

    fn adam_step(&mut self, grad: &Self, m: &mut Self, v: &mut Self, h: &AdamStep) -> Result<()> {
        check_len("adam", "grad", grad.len(), self.len())?;
        check_len("adam", "m", m.len(), self.len())?;
        check_len("adam", "v", v.len(), self.len())?;
        adam::step(self.as_f32_mut(), grad.as_f32(), m.as_f32_mut(), v.as_f32_mut(), h);
        Ok(())
    }
}
