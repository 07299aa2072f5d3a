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
    let GemmSpec { m, n, k, trans_a, trans_b } = g;
    if m == 0 || n == 0 {
        return;
    }
    // Row-major strides: element (i, j) of a row-major r x cols matrix is at i*cols + j, so
    // its column stride is 1 and its row stride is cols. A transposed operand swaps them.
    let (a_cs, a_rs) = if trans_a { (m as isize, 1) } else { (1, k as isize) };
    let (b_cs, b_rs) = if trans_b { (k as isize, 1) } else { (1, n as isize) };
    let threads = rayon::current_num_threads();
    let par = if m * n * k > 64 * 64 * 64 && threads > 1 { gemm::Parallelism::Rayon(threads) } else { gemm::Parallelism::None };
    // SAFETY: the slices hold at least m*k, k*n and m*n elements (checked by the caller) and the
    // strides above address exactly those elements.
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
}
