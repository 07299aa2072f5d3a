//! Softmax cross-entropy over classes on the host, returning the loss and its gradient
//! together: the CPU reference for the fused last-layer kernel in `kernels/mlp.ptx`.

use rayon::prelude::*;

/// `loss = sum_r w[y_r] * (logsumexp(z_r) - z_r[y_r]) / sum_r w[y_r]` and
/// `dz_r = w[y_r] * (softmax(z_r) - onehot(y_r)) / sum_r w[y_r]`.
pub fn softmax_cross_entropy(z: &[f32], labels: &[u32], k: usize, weights: Option<&[f32]>) -> (f32, Vec<f32>) {
    let wt = |y: u32| weights.map_or(1.0, |w| w[y as usize]);
    let norm: f64 = labels.iter().map(|&y| wt(y) as f64).sum();
    let inv = if norm > 0.0 { 1.0 / norm } else { 0.0 };
    let mut grad = vec![0.0; z.len()];
    let loss: f64 = grad
        .par_chunks_mut(k)
        .zip(z.par_chunks(k))
        .zip(labels.par_iter())
        .map(|((g, row), &y)| {
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let sum: f32 = row.iter().map(|&v| (v - max).exp()).sum();
            let lse = max + sum.ln();
            let w = wt(y);
            for (j, (gj, &v)) in g.iter_mut().zip(row).enumerate() {
                let p = (v - lse).exp();
                *gj = ((w as f64 * inv) as f32) * (p - if j == y as usize { 1.0 } else { 0.0 });
            }
            w as f64 * (lse - row[y as usize]) as f64
        })
        .sum();
    ((loss * inv) as f32, grad)
}
