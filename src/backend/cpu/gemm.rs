//! Row-major SGEMM on the host through the `gemm` crate (blocked, SIMD, rayon-parallel): the
//! CPU reference for every cuBLAS call.

use crate::backend::GemmSpec;

/// `x` rounded to bf16 (to nearest, ties to even; the `half` crate's conversion) and back to
/// f32: the operands of a GEMM in bf16 mode ([`crate::settings::bf16_gemm`]).
pub fn round_to_bf16(x: &[f32]) -> Vec<f32> {
    use rayon::prelude::*;
    x.par_iter().map(|&v| half::bf16::from_f32(v).to_f32()).collect()
}

/// `C = op(A) * op(B) + beta * C` for row-major buffers (see [`GemmSpec`]).
pub fn gemm_f32(a: &[f32], b: &[f32], c: &mut [f32], g: GemmSpec, beta: f32) {
    let (lda, ldb) = (if g.trans_a { g.m } else { g.k }, if g.trans_b { g.k } else { g.n });
    let threads = rayon::current_num_threads();
    let parallel = g.m * g.n * g.k > 64 * 64 * 64 && threads > 1;
    gemm_strided(a, lda, b, ldb, c, g, beta, parallel);
}

/// [`gemm_f32`] of operands stored with row strides `lda` and `ldb` (the stored matrices' rows:
/// `a` is stored `m x k`, or `k x m` when `trans_a`; `b` `k x n`, or `n x k` when `trans_b`), on
/// the calling thread alone: a block of columns of larger row-major matrices.
pub fn gemm_f32_strided_serial(a: &[f32], lda: usize, b: &[f32], ldb: usize, c: &mut [f32], g: GemmSpec, beta: f32) {
    gemm_strided(a, lda, b, ldb, c, g, beta, false);
}

#[allow(clippy::too_many_arguments)]
fn gemm_strided(a: &[f32], lda: usize, b: &[f32], ldb: usize, c: &mut [f32], g: GemmSpec, beta: f32, parallel: bool) {
    let GemmSpec { m, n, k, trans_a, trans_b } = g;
    if m == 0 || n == 0 {
        return;
    }
    // Row-major strides: element (i, j) of a stored matrix with row stride ld is at i*ld + j, so
    // its column stride is 1 and its row stride ld. A transposed operand swaps them.
    let (a_rows, a_cols) = if trans_a { (k, m) } else { (m, k) };
    let (b_rows, b_cols) = if trans_b { (n, k) } else { (k, n) };
    let fits = |len: usize, rows: usize, cols: usize, ld: usize| cols <= ld && (rows == 0 || cols == 0 || (rows - 1) * ld + cols <= len);
    assert!(fits(a.len(), a_rows, a_cols, lda) && fits(b.len(), b_rows, b_cols, ldb) && c.len() >= m * n, "GEMM operands too short");
    let (a_cs, a_rs) = if trans_a { (lda as isize, 1) } else { (1, lda as isize) };
    let (b_cs, b_rs) = if trans_b { (ldb as isize, 1) } else { (1, ldb as isize) };
    let par = if parallel { gemm::Parallelism::Rayon(rayon::current_num_threads()) } else { gemm::Parallelism::None };
    // SAFETY: the assertion above bounds every element the strides address inside the slices.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            1,
            n as isize,
            beta != 0.0,
            a.as_ptr(),
            a_cs,
            a_rs,
            b.as_ptr(),
            b_cs,
            b_rs,
            beta,
            1.0,
            false,
            false,
            false,
            par,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(a: &[f32], b: &[f32], g: GemmSpec) -> Vec<f32> {
        let mut c = vec![0.0; g.m * g.n];
        for i in 0..g.m {
            for j in 0..g.n {
                let mut s = 0.0f64;
                for p in 0..g.k {
                    let x = if g.trans_a { a[p * g.m + i] } else { a[i * g.k + p] };
                    let y = if g.trans_b { b[j * g.k + p] } else { b[p * g.n + j] };
                    s += (x * y) as f64;
                }
                c[i * g.n + j] = s as f32;
            }
        }
        c
    }

    #[test]
    fn gemm_matches_naive_for_every_transpose() {
        let (m, n, k) = (7, 5, 9);
        let a: Vec<f32> = (0..m * k).map(|i| ((i * 37 % 11) as f32 - 5.0) * 0.1).collect();
        let b: Vec<f32> = (0..k * n).map(|i| ((i * 53 % 13) as f32 - 6.0) * 0.1).collect();
        for ta in [false, true] {
            for tb in [false, true] {
                let g = GemmSpec { m, n, k, trans_a: ta, trans_b: tb };
                let mut c = vec![0.0; m * n];
                gemm_f32(&a, &b, &mut c, g, 0.0);
                let want = naive(&a, &b, g);
                for (x, y) in c.iter().zip(&want) {
                    assert!((x - y).abs() < 1e-5, "ta={ta} tb={tb}: {x} vs {y}");
                }
            }
        }
    }

    #[test]
    fn a_block_of_columns_is_the_gemm_of_that_block() {
        // dy [3 x 10] times col^T, col [4 x 10]: columns 2..9 of both, as the pieced weight
        // gradient reads them.
        let (rows_a, rows_b, len) = (3, 4, 10);
        let a: Vec<f32> = (0..rows_a * len).map(|i| ((i * 37 % 11) as f32 - 5.0) * 0.1).collect();
        let b: Vec<f32> = (0..rows_b * len).map(|i| ((i * 53 % 13) as f32 - 6.0) * 0.1).collect();
        let (lo, hi) = (2, 9);
        let block = |m: &[f32], rows: usize| -> Vec<f32> { (0..rows).flat_map(|r| m[r * len + lo..r * len + hi].to_vec()).collect() };
        let g = GemmSpec { m: rows_a, n: rows_b, k: hi - lo, trans_a: false, trans_b: true };
        let mut got = vec![f32::NAN; rows_a * rows_b];
        gemm_f32_strided_serial(&a[lo..], len, &b[lo..], len, &mut got, g, 0.0);
        let want = naive(&block(&a, rows_a), &block(&b, rows_b), g);
        for (x, y) in got.iter().zip(&want) {
            assert!((x - y).abs() < 1e-5, "{x} vs {y}");
        }
    }

    #[test]
    #[should_panic(expected = "too short")]
    fn a_stride_past_the_end_is_refused() {
        let g = GemmSpec { m: 2, n: 2, k: 3, trans_a: false, trans_b: false };
        gemm_f32_strided_serial(&[0.0; 6], 4, &[0.0; 6], 2, &mut [0.0; 4], g, 0.0);
    }
}
