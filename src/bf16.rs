//! [`Bf16Matrix`]: a row-major matrix of bf16 activations on the CPU or a GPU, and the ops that
//! the dense path runs on it in bf16 mode ([`crate::settings::bf16_activations`]): casts, GEMMs
//! on bf16 operands with fp32 accumulation, the fused factored first layer, and bias + ReLU.
//!
//! Weights, gradients and optimizer state stay fp32 [`Tensor`]s; a weight enters a bf16 GEMM
//! through [`Bf16Matrix::from_tensor`] (rounded to nearest, ties to even). Arithmetic is fp32
//! throughout: each value is widened when read and rounded once when written. There is no
//! autograd here (inference only). Every op has its CPU reference in `backend::cpu::bf16`, which
//! the CUDA kernels match bit for bit (cuBLAS's GEMMs to accumulation order).
//!
//! ```
//! use hyperseg_engine::bf16::Bf16Matrix;
//! use hyperseg_engine::{Device, Tensor};
//!
//! # fn main() -> hyperseg_engine::Result<()> {
//! let dev = Device::Cpu;
//! let x = Tensor::from_vec(vec![0.5, -1.0, 2.0, 1.0 + 1.0 / 256.0], [2, 2], &dev)?;
//! let w = Tensor::from_vec(vec![1.0, 0.0, 0.0, 1.0], [2, 2], &dev)?;
//! let (xb, wb) = (Bf16Matrix::from_tensor(&x, 2, 2)?, Bf16Matrix::from_tensor(&w, 2, 2)?);
//! // x . w^T in fp32 accumulation, rounded once to bf16: 1 + 2^-8 ties to 1.
//! let mut h = xb.matmul(false, &wb, true)?;
//! h.bias_relu_assign(&Tensor::from_vec(vec![0.0, 0.5], [2], &dev)?)?;
//! assert_eq!(h.to_tensor()?.to_vec()?, vec![0.5, 0.0, 2.0, 1.5]);
//! # Ok(())
//! # }
//! ```

use half::bf16;

use crate::backend::cpu::bf16 as cpu;
use crate::backend::cuda::CudaBf16;
use crate::backend::{check_plane_sum, GemmSpec, PlaneSumSpec, SamplePoint};
use crate::device::Device;
use crate::error::{Error, Result};
use crate::storage::Storage;
use crate::tensor::Tensor;

/// A bf16 buffer on one device.
enum Bf16Storage {
    Cpu(Vec<bf16>),
    Cuda(CudaBf16),
}

/// A row-major `rows x cols` matrix of bf16.
pub struct Bf16Matrix {
    storage: Bf16Storage,
    rows: usize,
    cols: usize,
}

fn device_mismatch(op: &'static str, a: &Device, b: &Device) -> Error {
    Error::DeviceMismatch { op, lhs: a.to_string(), rhs: b.to_string() }
}

impl Bf16Matrix {
    /// `t` (which holds `rows * cols` values) rounded to bf16, as a `rows x cols` matrix on
    /// `t`'s device.
    pub fn from_tensor(t: &Tensor, rows: usize, cols: usize) -> Result<Bf16Matrix> {
        if t.elem_count() != rows * cols {
            return Err(Error::bad_shape("to_bf16", format!("{:?} has {} elements, not {rows} x {cols}", t.dims(), t.elem_count())));
        }
        let storage = match &*t.storage() {
            Storage::Cpu(s) => Bf16Storage::Cpu(cpu::to_bf16(s.as_f32())),
            Storage::Cuda(s) => Bf16Storage::Cuda(CudaBf16::from_f32(s)?),
        };
        Ok(Bf16Matrix { storage, rows, cols })
    }

    /// The values widened to f32 (exact), as a `[rows, cols]` tensor on the same device.
    pub fn to_tensor(&self) -> Result<Tensor> {
        let storage = match &self.storage {
            Bf16Storage::Cpu(v) => Storage::Cpu(crate::backend::cpu::CpuStorage::F32(cpu::to_f32(v))),
            Bf16Storage::Cuda(s) => Storage::Cuda(s.to_f32()?),
        };
        Tensor::from_storage(storage, [self.rows, self.cols])
    }

    /// A copy of the values on the host, row-major.
    pub fn to_host(&self) -> Result<Vec<bf16>> {
        match &self.storage {
            Bf16Storage::Cpu(v) => Ok(v.clone()),
            Bf16Storage::Cuda(s) => s.to_host(),
        }
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    /// The device holding the matrix.
    pub fn device(&self) -> Device {
        match &self.storage {
            Bf16Storage::Cpu(_) => Device::Cpu,
            Bf16Storage::Cuda(s) => Device::Cuda(s.device().clone()),
        }
    }

    /// The GEMM `op(self) op(rhs)`, `op` transposing when asked, and its shape check.
    fn gemm_spec(&self, trans_a: bool, rhs: &Bf16Matrix, trans_b: bool) -> Result<GemmSpec> {
        let (m, k) = if trans_a { (self.cols, self.rows) } else { (self.rows, self.cols) };
        let (k2, n) = if trans_b { (rhs.cols, rhs.rows) } else { (rhs.rows, rhs.cols) };
        if k != k2 {
            return Err(Error::ShapeMismatch { op: "matmul_bf16", lhs: vec![m, k], rhs: vec![k2, n] });
        }
        Ok(GemmSpec { m, n, k, trans_a, trans_b })
    }

    /// `op(self) op(rhs)` (each transposed when its flag says so), accumulated in fp32 and
    /// rounded once to bf16: an `m x n` matrix.
    pub fn matmul(&self, trans_a: bool, rhs: &Bf16Matrix, trans_b: bool) -> Result<Bf16Matrix> {
        let g = self.gemm_spec(trans_a, rhs, trans_b)?;
        let storage = match (&self.storage, &rhs.storage) {
            (Bf16Storage::Cpu(a), Bf16Storage::Cpu(b)) => Bf16Storage::Cpu(cpu::to_bf16(&cpu::gemm(a, b, g))),
            (Bf16Storage::Cuda(a), Bf16Storage::Cuda(b)) => Bf16Storage::Cuda(CudaBf16::gemm(a, b, g)?),
            _ => return Err(device_mismatch("matmul_bf16", &self.device(), &rhs.device())),
        };
        Ok(Bf16Matrix { storage, rows: g.m, cols: g.n })
    }

    /// [`Bf16Matrix::matmul`] with an fp32 result (not rounded): an `[m, n]` tensor.
    pub fn matmul_f32(&self, trans_a: bool, rhs: &Bf16Matrix, trans_b: bool) -> Result<Tensor> {
        let g = self.gemm_spec(trans_a, rhs, trans_b)?;
        let storage = match (&self.storage, &rhs.storage) {
            (Bf16Storage::Cpu(a), Bf16Storage::Cpu(b)) => Storage::Cpu(crate::backend::cpu::CpuStorage::F32(cpu::gemm(a, b, g))),
            (Bf16Storage::Cuda(a), Bf16Storage::Cuda(b)) => Storage::Cuda(CudaBf16::gemm_f32(a, b, g)?),
            _ => return Err(device_mismatch("matmul_bf16", &self.device(), &rhs.device())),
        };
        Tensor::from_storage(storage, [g.m, g.n])
    }

    /// `self[r, c] = bf16(max(self[r, c] + bias[c], 0))` in place, the sum in fp32; `bias` is
    /// an fp32 tensor of `cols` values.
    pub fn bias_relu_assign(&mut self, bias: &Tensor) -> Result<()> {
        const OP: &str = "bias_relu_bf16";
        if bias.elem_count() != self.cols {
            return Err(Error::bad_shape(OP, format!("bias has {} elements for {} columns", bias.elem_count(), self.cols)));
        }
        let (rows, cols) = (self.rows, self.cols);
        let device = self.device();
        match (&mut self.storage, &*bias.storage()) {
            (Bf16Storage::Cpu(y), Storage::Cpu(b)) => {
                cpu::bias_relu_assign(y, b.as_f32());
                Ok(())
            }
            (Bf16Storage::Cuda(y), Storage::Cuda(b)) => y.bias_relu_assign(b, rows, cols),
            _ => Err(device_mismatch(OP, &device, bias.device())),
        }
    }
}

/// The factored dense first layer in bf16: `bf16(relu(bias + sum_i z_i))` at each of `points`
/// (pixels of an `in_h x in_w` frame), where `planes[i] = (Z_i, h_i, w_i)` is a pixel-major
/// plane `[n h_i w_i, cols]` and `z_i` its bilinear sample at the point (the sparse gather's
/// rule and weights), summed in fp32; `bias` is fp32. A `[points, cols]` matrix. The bf16
/// counterpart of [`crate::ops::upsample_sum_bias_relu`].
pub fn upsample_sum_bias_relu_bf16(
    planes: &[(&Bf16Matrix, usize, usize)],
    bias: &Tensor,
    points: &[SamplePoint],
    in_h: usize,
    in_w: usize,
) -> Result<Bf16Matrix> {
    const OP: &str = "upsample_sum_bias_relu_bf16";
    let &(first, h0, w0) = planes.first().ok_or_else(|| Error::bad_shape(OP, "no planes given"))?;
    let cols = first.cols;
    let n = first.rows.checked_div(h0 * w0).unwrap_or(0);
    let mut spec = PlaneSumSpec { n, in_h, in_w, cols, planes: Vec::with_capacity(planes.len()) };
    for &(z, h, w) in planes {
        if z.cols != cols || z.rows != n * h * w {
            return Err(Error::ShapeMismatch { op: OP, lhs: vec![n * h * w, cols], rhs: vec![z.rows, z.cols] });
        }
        if !z.device().same(&first.device()) {
            return Err(device_mismatch(OP, &first.device(), &z.device()));
        }
        spec.planes.push((h, w));
    }
    let lens: Vec<usize> = planes.iter().map(|(z, ..)| z.rows * z.cols).collect();
    check_plane_sum(&lens, bias.elem_count(), points, &spec)?;
    let storage = match &*bias.storage() {
        Storage::Cpu(b) => {
            let mut host = Vec::with_capacity(planes.len());
            for (z, ..) in planes {
                match &z.storage {
                    Bf16Storage::Cpu(v) => host.push(v.as_slice()),
                    Bf16Storage::Cuda(_) => return Err(device_mismatch(OP, &z.device(), bias.device())),
                }
            }
            Bf16Storage::Cpu(cpu::plane_sum_forward_bf16(&host, b.as_f32(), points, &spec))
        }
        Storage::Cuda(b) => {
            let mut dev = Vec::with_capacity(planes.len());
            for (z, ..) in planes {
                match &z.storage {
                    Bf16Storage::Cuda(s) => dev.push(s),
                    Bf16Storage::Cpu(_) => return Err(device_mismatch(OP, &z.device(), bias.device())),
                }
            }
            Bf16Storage::Cuda(CudaBf16::plane_sum(&dev, b, points, &spec)?)
        }
    };
    Ok(Bf16Matrix { storage, rows: points.len(), cols })
}

impl std::fmt::Debug for Bf16Matrix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Bf16Matrix({} x {}, {})", self.rows, self.cols, self.device())
    }
}
