//! [`CudaBf16`]: a buffer of bf16 on one GPU, and the kernels the bf16 paths run on it: casts,
//! the transposing casts of the bf16 convolutions and bias + ReLU (`kernels/bf16.ptx`), the
//! fused factored first layer (`upsample_sum_bias_relu_bf16` in `kernels/hypercolumn_sum.ptx`)
//! and GEMMs on bf16 operands (`cublasGemmEx`, fp32 accumulation).
//!
//! The buffer is an ordinary pool block of the device's caching allocator, held as a
//! [`CudaStorage`] of `ceil(len / 2)` f32 words that no f32 kernel ever sees: bf16 data is only
//! reachable through this type. CPU reference: `backend::cpu::bf16` (bit for bit, GEMMs to
//! accumulation order).

use half::bf16;

use super::blas::{gemm_raw, GemmKind};
use super::kernels::ops::{check_len, count, grid_1d, plane_sum_launch, same_device, transpose_cfg, PlaneBuf};
use super::kernels::{entry, launch};
use super::{nvtx, CudaDevice, CudaStorage};
use crate::backend::{BackendStorage, GemmSpec, PlaneSumSpec, SamplePoint};
use crate::error::Result;

/// A contiguous buffer of `len` bf16 on one CUDA device.
pub struct CudaBf16 {
    words: CudaStorage,
    len: usize,
}

impl CudaBf16 {
    /// An uninitialised buffer of `len` bf16 from the device's pool.
    pub fn alloc(device: &CudaDevice, len: usize) -> Result<CudaBf16> {
        Ok(CudaBf16 { words: device.alloc(len.div_ceil(2))?, len })
    }

    /// A buffer of `len` zeros (all-zero bits are bf16 zeros).
    pub fn zeros(device: &CudaDevice, len: usize) -> Result<CudaBf16> {
        Ok(CudaBf16 { words: device.zeros(len.div_ceil(2))?, len })
    }

    /// `x` rounded to bf16 (to nearest, ties to even). Kernel `cast_f32_to_bf16`, 1-D grid.
    pub fn from_f32(x: &CudaStorage) -> Result<CudaBf16> {
        let _r = nvtx::range("cast_f32_to_bf16");
        let n = count("cast_f32_to_bf16", x.len())?;
        let dev = x.device().clone();
        let out = CudaBf16::alloc(&dev, x.len())?;
        if n > 0 {
            let out_ptr = out.raw_ptr();
            launch!(dev, entry::CAST_F32_TO_BF16, grid_1d(n), &out_ptr, x.slice(), &n)?;
        }
        Ok(out)
    }

    /// The values widened to f32 (exact). Kernel `cast_bf16_to_f32`, 1-D grid.
    pub fn to_f32(&self) -> Result<CudaStorage> {
        let _r = nvtx::range("cast_bf16_to_f32");
        let n = count("cast_bf16_to_f32", self.len)?;
        let dev = self.device().clone();
        let mut out = dev.alloc(self.len)?;
        if n > 0 {
            let x_ptr = self.raw_ptr();
            launch!(dev, entry::CAST_BF16_TO_F32, grid_1d(n), out.slice_mut(), &x_ptr, &n)?;
        }
        Ok(out)
    }

    /// The transposes of `batch` row-major f32 matrices `[rows, cols]` in `x`, rounded to bf16:
    /// `out[b, j, i] = bf16(x[b, i, j])`. NCHW f32 to NHWC bf16 with rows = C, cols = H W.
    /// Kernel `transpose_f32_to_bf16`, launch [`transpose_cfg`].
    pub fn transposed_from_f32(x: &CudaStorage, batch: usize, rows: usize, cols: usize) -> Result<CudaBf16> {
        const OP: &str = "transpose_f32_to_bf16";
        let _r = nvtx::range(OP);
        check_len(OP, "input", x.len(), batch * rows * cols)?;
        let dev = x.device().clone();
        let out = CudaBf16::alloc(&dev, x.len())?;
        if count(OP, x.len())? > 0 {
            let (rows, cols, batch) = (count(OP, rows)?, count(OP, cols)?, count(OP, batch)?);
            let out_ptr = out.raw_ptr();
            launch!(dev, entry::TRANSPOSE_F32_TO_BF16, transpose_cfg(rows, cols, batch), &out_ptr, x.slice(), &rows, &cols, &batch)?;
        }
        Ok(out)
    }

    /// The transposes of `batch` row-major bf16 matrices `[rows, cols]` in `self`, widened to
    /// f32: `out[b, j, i] = f32(self[b, i, j])`. NHWC bf16 to NCHW f32 with rows = H W, cols = C.
    /// Kernel `transpose_bf16_to_f32`, launch [`transpose_cfg`].
    pub fn transposed_to_f32(&self, batch: usize, rows: usize, cols: usize) -> Result<CudaStorage> {
        const OP: &str = "transpose_bf16_to_f32";
        let _r = nvtx::range(OP);
        check_len(OP, "input", self.len, batch * rows * cols)?;
        let dev = self.device().clone();
        let mut out = dev.alloc(self.len)?;
        if count(OP, self.len)? > 0 {
            let (rows, cols, batch) = (count(OP, rows)?, count(OP, cols)?, count(OP, batch)?);
            let x_ptr = self.raw_ptr();
            launch!(dev, entry::TRANSPOSE_BF16_TO_F32, transpose_cfg(rows, cols, batch), out.slice_mut(), &x_ptr, &rows, &cols, &batch)?;
        }
        Ok(out)
    }

    /// The transposes of `batch` row-major bf16 matrices `[rows, cols]` in `self`, still bf16
    /// (a bit copy): `out[b, j, i] = self[b, i, j]`. NHWC bf16 to NCHW bf16 with rows = H W,
    /// cols = C: a bf16 convolution's output as the batch norm after it reads it. Kernel
    /// `transpose_bf16`, launch [`transpose_cfg`].
    pub fn transposed(&self, batch: usize, rows: usize, cols: usize) -> Result<CudaBf16> {
        const OP: &str = "transpose_bf16";
        let _r = nvtx::range(OP);
        check_len(OP, "input", self.len, batch * rows * cols)?;
        let dev = self.device().clone();
        let out = CudaBf16::alloc(&dev, self.len)?;
        if count(OP, self.len)? > 0 {
            let (rows, cols, batch) = (count(OP, rows)?, count(OP, cols)?, count(OP, batch)?);
            let (out_ptr, x_ptr) = (out.raw_ptr(), self.raw_ptr());
            launch!(dev, entry::TRANSPOSE_BF16, transpose_cfg(rows, cols, batch), &out_ptr, &x_ptr, &rows, &cols, &batch)?;
        }
        Ok(out)
    }

    /// A copy of the values on the host (waits for the device).
    pub fn to_host(&self) -> Result<Vec<bf16>> {
        // The f32 words are copied bit for bit; two bf16 each.
        let words = self.words.to_host_f32()?;
        let halves: &[bf16] = bytemuck::cast_slice(&words);
        Ok(halves[..self.len].to_vec())
    }

    /// Number of bf16 elements.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when the buffer holds no element.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The device holding the buffer.
    pub fn device(&self) -> &CudaDevice {
        self.words.device()
    }

    /// The pool buffer holding the values (`ceil(len / 2)` f32 words no f32 kernel reads).
    pub(crate) fn words(&self) -> &CudaStorage {
        &self.words
    }

    /// The device address of the first element.
    pub fn raw_ptr(&self) -> u64 {
        self.words.raw_ptr()
    }

    /// `self[r, c] = bf16(max(self[r, c] + bias[c], 0))` in place on `[rows, cols]`, the sum in
    /// f32. Kernel `bias_relu_fwd_bf16`, 1-D grid.
    pub fn bias_relu_assign(&mut self, bias: &CudaStorage, rows: usize, cols: usize) -> Result<()> {
        const OP: &str = "bias_relu_bf16";
        let _r = nvtx::range(OP);
        check_len(OP, "input", self.len, rows * cols)?;
        check_len(OP, "bias", bias.len(), cols)?;
        same_device(OP, &self.words, bias)?;
        let n = count(OP, self.len)?;
        if n == 0 {
            return Ok(());
        }
        let cols = cols as u32;
        let dev = self.device().clone();
        let y_ptr = self.raw_ptr();
        launch!(dev, entry::BIAS_RELU_FWD_BF16, grid_1d(n), &y_ptr, bias.slice(), &n, &cols)
    }

    /// `op(A) op(B)` for row-major bf16 `a` (`m x k`) and `b` (`k x n`), accumulated in fp32
    /// (`cublasGemmEx`, `CUBLAS_COMPUTE_32F`, bf16 tensor cores), the result rounded to bf16
    /// once by cuBLAS.
    pub fn gemm(a: &CudaBf16, b: &CudaBf16, g: GemmSpec) -> Result<CudaBf16> {
        let dev = a.device().clone();
        if g.k == 0 {
            // An empty sum: zeros.
            return CudaBf16::zeros(&dev, g.m * g.n);
        }
        let c = CudaBf16::alloc(&dev, g.m * g.n)?;
        Self::gemm_into(a, b, g, c.raw_ptr(), true)?;
        Ok(c)
    }

    /// [`CudaBf16::gemm`] with an fp32 result (not rounded).
    pub fn gemm_f32(a: &CudaBf16, b: &CudaBf16, g: GemmSpec) -> Result<CudaStorage> {
        let dev = a.device().clone();
        if g.k == 0 {
            return dev.zeros(g.m * g.n);
        }
        let c = dev.alloc(g.m * g.n)?;
        Self::gemm_into(a, b, g, c.raw_ptr(), false)?;
        Ok(c)
    }

    fn gemm_into(a: &CudaBf16, b: &CudaBf16, g: GemmSpec, c: u64, bf16_out: bool) -> Result<()> {
        const OP: &str = "matmul_bf16";
        let _r = nvtx::range(if bf16_out { "cublas.gemm_bf16_bf16" } else { "cublas.gemm_bf16_f32" });
        same_device(OP, &a.words, &b.words)?;
        check_len(OP, "lhs", a.len, g.m * g.k)?;
        check_len(OP, "rhs", b.len, g.k * g.n)?;
        if g.m == 0 || g.n == 0 || g.k == 0 {
            return Ok(());
        }
        // SAFETY: a, b hold m*k and k*n bf16 (checked above); the caller allocated c for m*n
        // elements of the output type on the same device.
        unsafe { gemm_raw(a.device(), a.raw_ptr(), b.raw_ptr(), c, g, GemmKind::Bf16 { bf16_out }) }
    }

    /// The factored dense first layer on bf16 planes (pixel-major `[n, h_i, w_i, cols]`), bf16
    /// result `[points, cols]`: each plane element widened to f32, sampled, summed, biased
    /// (f32 `bias`) and clamped in f32, then rounded once. Kernel `upsample_sum_bias_relu_bf16`,
    /// the launch of `kernels::ops::upsample_sum_bias_relu`.
    pub fn plane_sum(planes: &[&CudaBf16], bias: &CudaStorage, points: &[SamplePoint], s: &PlaneSumSpec) -> Result<CudaBf16> {
        let _r = nvtx::range("upsample_sum_bias_relu_bf16");
        let planes: Vec<PlaneBuf> = planes.iter().map(|z| PlaneBuf { buffer: &z.words, len: z.len, ptr: z.raw_ptr() }).collect();
        plane_sum_launch("upsample_sum_bias_relu_bf16", entry::UPSAMPLE_SUM_BIAS_RELU_BF16, &planes, bias, points, s, |dev, total| {
            let out = CudaBf16::alloc(dev, total)?;
            let ptr = out.raw_ptr();
            Ok((out, ptr))
        })
    }
}

impl std::fmt::Debug for CudaBf16 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CudaBf16(cuda:{}, {} x bf16)", self.device().ordinal(), self.len)
    }
}
