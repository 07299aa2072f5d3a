//! Row-major GEMM on the GPU through cuBLAS `sgemm` (or `cublasGemmEx` in bf16 mode).
//!
//! cuBLAS is column-major. A row-major `r x c` buffer read column-major is its transpose
//! (`c x r`, leading dimension `c`), so the row-major product `C = op(A) op(B)` is computed as
//! the column-major product `C^T = op(B)^T op(A)^T`: cuBLAS's first operand is our B, its
//! second our A, its output `n x m` with `ldc = n` (see [`column_major_args`], unit-tested).
//!
//! TF32 tensor cores are used only when [`crate::settings::allow_tf32`] is on (math mode set
//! on the handle when the setting changes); otherwise `CUBLAS_DEFAULT_MATH`, which in cuBLAS
//! 11+ keeps fp32 GEMMs in full fp32. With [`crate::settings::bf16_gemm`] the product goes
//! through `cublasGemmEx` with `CUBLAS_COMPUTE_32F_FAST_16BF`: the same fp32 buffers, the
//! operands converted to bf16 inside cuBLAS, bf16 tensor cores, fp32 accumulation. The bf16
//! activation buffers of [`super::CudaBf16`] multiply through `gemm_raw` with
//! `GemmKind::Bf16`: bf16 operands, `CUBLAS_COMPUTE_32F`, a bf16 or fp32 output.

use std::ffi::c_int;
use std::sync::Arc;

use cudarc::cublas::{sys, CudaBlas};
use cudarc::driver::CudaStream;

use super::device::CudaDevice;
use super::error::{cuda_error, CudaResultExt};
use super::storage::CudaStorage;
use crate::backend::GemmSpec;
use crate::error::{Error, Result};

/// The cuBLAS handle (bound to the device's stream) and the math mode last set on it.
pub(crate) struct Blas {
    handle: CudaBlas,
    tf32: Option<bool>,
}

impl Blas {
    /// A handle on `stream`.
    pub(crate) fn new(stream: Arc<CudaStream>) -> Result<Blas> {
        let handle = CudaBlas::new(stream).ctx("cublasCreate")?;
        Ok(Blas { handle, tf32: None })
    }

    /// Gives cuBLAS a workspace (device address and size) so that it allocates none itself.
    pub(crate) fn set_workspace(&mut self, ptr: u64, bytes: usize) -> Result<()> {
        // SAFETY: the block is owned by the device for the handle's whole life.
        unsafe { sys::cublasSetWorkspace_v2(*self.handle.handle(), ptr as *mut std::ffi::c_void, bytes) }.result().ctx("cublasSetWorkspace")
    }

    fn set_tf32(&mut self, tf32: bool) -> Result<()> {
        if self.tf32 == Some(tf32) {
            return Ok(());
        }
        let mode = if tf32 { sys::cublasMath_t::CUBLAS_TF32_TENSOR_OP_MATH } else { sys::cublasMath_t::CUBLAS_DEFAULT_MATH };
        // SAFETY: a valid handle and a valid mode.
        unsafe { sys::cublasSetMathMode(*self.handle.handle(), mode) }.result().ctx("cublasSetMathMode")?;
        self.tf32 = Some(tf32);
        Ok(())
    }
}

/// The arguments of one column-major `sgemm` call computing a row-major [`GemmSpec`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ColumnMajorGemm {
    /// Transpose the first cuBLAS operand (our B).
    pub trans_first: bool,
    /// Transpose the second cuBLAS operand (our A).
    pub trans_second: bool,
    /// Rows of the column-major output (= our n).
    pub m: usize,
    /// Columns of the column-major output (= our m).
    pub n: usize,
    /// The shared dimension.
    pub k: usize,
    /// Leading dimension of the first operand (our B).
    pub ld_first: usize,
    /// Leading dimension of the second operand (our A).
    pub ld_second: usize,
    /// Leading dimension of the output.
    pub ldc: usize,
}

/// Maps a row-major GEMM onto column-major cuBLAS arguments: `C^T = op(B)^T op(A)^T`.
///
/// Our B read column-major is `B^T` (`n x k`, ld `n`) when not transposed, and the stored
/// `n x k` matrix's transpose (`k x n`, ld `k`) when `trans_b`, so cuBLAS must transpose it
/// exactly when we do; likewise for A (`k x m` with ld `k`, or ld `m` when `trans_a`).
pub fn column_major_args(g: GemmSpec) -> ColumnMajorGemm {
    ColumnMajorGemm {
        trans_first: g.trans_b,
        trans_second: g.trans_a,
        m: g.n,
        n: g.m,
        k: g.k,
        ld_first: if g.trans_b { g.k } else { g.n },
        ld_second: if g.trans_a { g.m } else { g.k },
        ldc: g.n,
    }
}

fn to_int(what: &str, v: usize) -> Result<c_int> {
    c_int::try_from(v.max(1)).map_err(|_| Error::bad_shape("matmul", format!("{what} = {v} is beyond cuBLAS's 32-bit range")))
}

fn op(t: bool) -> sys::cublasOperation_t {
    if t {
        sys::cublasOperation_t::CUBLAS_OP_T
    } else {
        sys::cublasOperation_t::CUBLAS_OP_N
    }
}

/// `C = op(A) op(B)` for row-major buffers; returns C (`m x n`).
pub fn gemm(a: &CudaStorage, b: &CudaStorage, g: GemmSpec) -> Result<CudaStorage> {
    let dev = a.device();
    if !dev.same_device(b.device()) {
        return Err(cuda_error("matmul", "operands on different CUDA devices"));
    }
    check_len("lhs", a.len(), g.m * g.k)?;
    check_len("rhs", b.len(), g.k * g.n)?;
    if g.m == 0 || g.n == 0 || g.k == 0 {
        // Nothing to multiply (k = 0 is an all-zero product).
        return dev.zeros(g.m * g.n);
    }
    let c = dev.alloc(g.m * g.n)?;
    let bf16 = crate::settings::bf16_gemm();
    let _r = super::nvtx::range(if bf16 { "cublas.gemm_bf16" } else { "cublas.sgemm" });
    let kind = if bf16 { GemmKind::F32OnBf16Cores } else { GemmKind::F32 };
    // SAFETY: a, b and c hold m*k, k*n and m*n floats (checked and allocated above).
    unsafe { gemm_raw(dev, a.raw_ptr(), b.raw_ptr(), c.raw_ptr(), g, kind)? };
    Ok(c)
}

/// Element types and compute mode of one GEMM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum GemmKind {
    /// fp32 operands and output: `cublasSgemm` (TF32 tensor cores when allowed).
    F32,
    /// fp32 operands and output, converted to bf16 inside cuBLAS (`cublasGemmEx`,
    /// `CUBLAS_COMPUTE_32F_FAST_16BF`).
    F32OnBf16Cores,
    /// bf16 operands, fp32 accumulation (`CUBLAS_COMPUTE_32F`), the output in bf16 (`true`,
    /// rounded once by cuBLAS) or fp32 (`false`).
    Bf16 { bf16_out: bool },
}

/// `C = op(A) op(B)` for row-major buffers at device addresses `a`, `b` and `c`, element types
/// as `kind` says (see [`column_major_args`] for the mapping onto column-major cuBLAS).
///
/// # Safety
/// `a`, `b` and `c` must be live device buffers on `dev` holding `m*k`, `k*n` and `m*n`
/// elements of their types, with `m`, `n`, `k` all non-zero.
pub(crate) unsafe fn gemm_raw(dev: &CudaDevice, a: u64, b: u64, c: u64, g: GemmSpec, kind: GemmKind) -> Result<()> {
    let cm = column_major_args(g);
    let (m, n, k) = (to_int("n", cm.m)?, to_int("m", cm.n)?, to_int("k", cm.k)?);
    let (lda, ldb, ldc) = (to_int("ld", cm.ld_first)?, to_int("ld", cm.ld_second)?, to_int("ld", cm.ldc)?);
    let (alpha, beta) = (1.0f32, 0.0f32);
    dev.bind()?;
    let mut blas = dev.blas();
    blas.set_tf32(crate::settings::allow_tf32())?;
    // cuBLAS's first operand is our B, its second our A.
    let (first, second) = (b as *const std::ffi::c_void, a as *const std::ffi::c_void);
    let (alpha_p, beta_p) = (&alpha as *const f32 as *const std::ffi::c_void, &beta as *const f32 as *const std::ffi::c_void);
    let (f32_t, bf16_t) = (sys::cudaDataType::CUDA_R_32F, sys::cudaDataType::CUDA_R_16BF);
    let h = *blas.handle.handle();
    let (ta, tb) = (op(cm.trans_first), op(cm.trans_second));
    dev.count_call();
    // SAFETY: the caller's buffers, the leading dimensions of `column_major_args`, all work on
    // the handle's stream.
    let status = unsafe {
        match kind {
            GemmKind::F32 => cudarc::cublas::result::sgemm(
                h,
                ta,
                tb,
                m,
                n,
                k,
                &alpha,
                first as *const f32,
                lda,
                second as *const f32,
                ldb,
                &beta,
                c as *mut f32,
                ldc,
            ),
            GemmKind::F32OnBf16Cores | GemmKind::Bf16 { .. } => {
                let (in_t, out_t, compute) = match kind {
                    GemmKind::Bf16 { bf16_out } => {
                        (bf16_t, if bf16_out { bf16_t } else { f32_t }, sys::cublasComputeType_t::CUBLAS_COMPUTE_32F)
                    }
                    _ => (f32_t, f32_t, sys::cublasComputeType_t::CUBLAS_COMPUTE_32F_FAST_16BF),
                };
                cudarc::cublas::result::gemm_ex(
                    h,
                    ta,
                    tb,
                    m,
                    n,
                    k,
                    alpha_p,
                    first,
                    in_t,
                    lda,
                    second,
                    in_t,
                    ldb,
                    beta_p,
                    c as *mut std::ffi::c_void,
                    out_t,
                    ldc,
                    compute,
                    sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
                )
            }
        }
    };
    let what = match kind {
        GemmKind::F32 => "cublasSgemm",
        GemmKind::F32OnBf16Cores => "cublasGemmEx (fp32 on bf16 tensor cores)",
        GemmKind::Bf16 { bf16_out: true } => "cublasGemmEx (bf16 in, bf16 out)",
        GemmKind::Bf16 { bf16_out: false } => "cublasGemmEx (bf16 in, fp32 out)",
    };
    status.ctx(&format!("{what} {g:?}"))
}

fn check_len(what: &str, got: usize, want: usize) -> Result<()> {
    if got != want {
        return Err(Error::bad_shape("matmul", format!("{what} has {got} elements, expected {want}")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Column-major sgemm on host buffers, the way cuBLAS reads its arguments.
    fn host_sgemm(cm: ColumnMajorGemm, first: &[f32], second: &[f32]) -> Vec<f32> {
        let at = |buf: &[f32], trans: bool, ld: usize, r: usize, c: usize| {
            if trans {
                buf[c + r * ld]
            } else {
                buf[r + c * ld]
            }
        };
        let mut out = vec![0.0; cm.ldc * cm.n];
        for j in 0..cm.n {
            for i in 0..cm.m {
                let mut s = 0.0;
                for p in 0..cm.k {
                    s += at(first, cm.trans_first, cm.ld_first, i, p) * at(second, cm.trans_second, cm.ld_second, p, j);
                }
                out[i + j * cm.ldc] = s;
            }
        }
        out
    }

    #[test]
    fn column_major_mapping_matches_the_cpu_gemm_for_every_transpose() {
        let (m, n, k) = (7, 5, 9);
        let a: Vec<f32> = (0..m * k).map(|i| ((i * 37 % 11) as f32 - 5.0) * 0.1).collect();
        let b: Vec<f32> = (0..k * n).map(|i| ((i * 53 % 13) as f32 - 6.0) * 0.1).collect();
        for ta in [false, true] {
            for tb in [false, true] {
                let g = GemmSpec { m, n, k, trans_a: ta, trans_b: tb };
                let mut want = vec![0.0; m * n];
                crate::backend::cpu::gemm_f32(&a, &b, &mut want, g, 0.0);
                let got = host_sgemm(column_major_args(g), &b, &a);
                for (x, y) in got.iter().zip(&want) {
                    assert!((x - y).abs() < 1e-5, "ta={ta} tb={tb}: {x} vs {y}");
                }
            }
        }
    }
}
