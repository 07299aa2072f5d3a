//! The CPU reference of bf16 activation storage (`kernels/bf16.ptx` and the bf16 entry of
//! `kernels/hypercolumn_sum.ptx`, bit for bit; cuBLAS's bf16 GEMMs to accumulation order).
//!
//! A bf16 value is stored as `half::bf16`. Widening to f32 is exact ([`widen`]: the bits
//! shifted up, as the PTX does); narrowing rounds to nearest, ties to even
//! (`half::bf16::from_f32`, which the PTX reproduces with integer instructions). Arithmetic is always f32: a value is widened when read and rounded once when
//! written.

use half::bf16;
use rayon::prelude::*;

use super::gemm::gemm_f32;
use super::resample::plane_sum_with;
use crate::backend::{GemmSpec, PlaneSumSpec, SamplePoint};

/// `x` rounded to bf16.
pub fn to_bf16(x: &[f32]) -> Vec<bf16> {
    x.par_iter().map(|&v| bf16::from_f32(v)).collect()
}

/// `v` widened to f32 exactly: its bits shifted up by 16, as the kernels do. (`half`'s
/// `to_f32` also quiets a signalling NaN, which the kernels do not.)
pub fn widen(v: bf16) -> f32 {
    f32::from_bits(u32::from(v.to_bits()) << 16)
}

/// `x` widened to f32 (exact, [`widen`]).
pub fn to_f32(x: &[bf16]) -> Vec<f32> {
    x.par_iter().map(|&v| widen(v)).collect()
}

/// The transposes of `batch` row-major matrices `[rows, cols]`, rounded to bf16: `out[b, j, i] =
/// bf16(x[b, i, j])` (NCHW f32 to NHWC bf16 with rows = C, cols = H W). Reference of
/// `transpose_f32_to_bf16`.
pub fn transpose_to_bf16(x: &[f32], batch: usize, rows: usize, cols: usize) -> Vec<bf16> {
    transpose_with(x, batch, rows, cols, bf16::from_f32)
}

/// The transposes of `batch` row-major bf16 matrices `[rows, cols]`, widened to f32 (NHWC bf16
/// to NCHW f32 with rows = H W, cols = C). Reference of `transpose_bf16_to_f32`.
pub fn transpose_to_f32(x: &[bf16], batch: usize, rows: usize, cols: usize) -> Vec<f32> {
    transpose_with(x, batch, rows, cols, widen)
}

fn transpose_with<T: Copy + Sync, U: Copy + Send + Default>(
    x: &[T],
    batch: usize,
    rows: usize,
    cols: usize,
    f: impl Fn(T) -> U + Sync,
) -> Vec<U> {
    assert_eq!(x.len(), batch * rows * cols, "transpose: {} elements for {batch} matrices [{rows}, {cols}]", x.len());
    let mut out = vec![U::default(); x.len()];
    if x.is_empty() {
        return out;
    }
    out.par_chunks_mut(rows).enumerate().for_each(|(bj, dst)| {
        let (b, j) = (bj / cols, bj % cols);
        let src = &x[b * rows * cols..(b + 1) * rows * cols];
        for (i, d) in dst.iter_mut().enumerate() {
            *d = f(src[i * cols + j]);
        }
    });
    out
}

/// `y[r, c] = bf16(max(y[r, c] + b[c], 0))` in place on a row-major `[rows, b.len()]` matrix.
pub fn bias_relu_assign(y: &mut [bf16], b: &[f32]) {
    if b.is_empty() {
        return;
    }
    y.par_chunks_mut(b.len()).for_each(|row| {
        for (v, &bias) in row.iter_mut().zip(b) {
            *v = bf16::from_f32(super::relu(widen(*v) + bias));
        }
    });
}

/// `op(A) op(B)` of two bf16 matrices, accumulated in f32 (as cuBLAS with
/// `CUBLAS_COMPUTE_32F`), f32 result; the caller rounds it when the output is bf16.
pub fn gemm(a: &[bf16], b: &[bf16], g: GemmSpec) -> Vec<f32> {
    let mut c = super::buffer::zeros(g.m * g.n);
    gemm_f32(&to_f32(a), &to_f32(b), &mut c, g, 0.0);
    c
}

/// The factored dense first layer on bf16 planes, bf16 result: `resample::plane_sum_forward`
/// with every plane element widened as it is read and the output rounded to bf16.
pub fn plane_sum_forward_bf16(planes: &[&[bf16]], bias: &[f32], points: &[SamplePoint], s: &PlaneSumSpec) -> Vec<bf16> {
    to_bf16(&plane_sum_with(planes, bias, points, s, widen))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounding_is_to_nearest_even_and_matches_the_integer_formula_of_the_ptx() {
        // The PTX computes (bits + 0x7FFF + lsb) >> 16 for every non-NaN input.
        let ptx = |x: f32| {
            let b = x.to_bits();
            if b & 0x7FFF_FFFF > 0x7F80_0000 {
                ((b >> 16) | 0x40) as u16
            } else {
                ((b + 0x7FFF + ((b >> 16) & 1)) >> 16) as u16
            }
        };
        let mut rng = 0x1234_5678_u64;
        let mut bits: Vec<u32> = vec![
            0,
            0x8000_0000,
            0x3F80_8000,
            0x3F81_8000,
            0x3F80_8001,
            0x3F80_7FFF,
            0x7F7F_FFFF,
            0xFF7F_FFFF,
            0x7F80_0000,
            0xFF80_0000,
            0x7FC0_0000,
            0x7F80_0001,
            0xFF80_0001,
            0x0000_8000,
            0x0001_8000,
        ];
        for _ in 0..100_000 {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            bits.push(rng as u32);
        }
        for b in bits {
            let x = f32::from_bits(b);
            assert_eq!(bf16::from_f32(x).to_bits(), ptx(x), "bits {b:#010x}");
        }
        // Ties go to even: 1 + 2^-8 is halfway between 1 and 1 + 2^-7.
        assert_eq!(bf16::from_f32(1.0 + 1.0 / 256.0).to_f32(), 1.0);
        assert_eq!(bf16::from_f32(1.0 + 3.0 / 256.0).to_f32(), 1.0 + 4.0 / 256.0);
    }

    #[test]
    fn bias_relu_rounds_once_after_the_f32_sum() {
        let mut y = to_bf16(&[1.0, -2.0, 0.5, 3.0]);
        bias_relu_assign(&mut y, &[0.00390625, 1.0]);
        // 1 + 2^-8 ties to 1; -2 + 1 clamps; 0.5 + 2^-8 is exact in bf16; 3 + 1.
        assert_eq!(to_f32(&y), vec![1.0, 0.0, 0.50390625, 4.0]);
    }
}
