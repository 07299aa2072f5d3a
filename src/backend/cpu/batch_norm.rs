//! Batch norm over NCHW on the host: training mode forward and backward, with statistics
//! accumulated in f64, and eval mode (running statistics); the CPU reference for the CUDA
//! batch-norm kernels.

use rayon::prelude::*;

use super::buffer::filled_by_chunks;
use crate::backend::Nchw;

pub struct Forward {
    pub y: Vec<f32>,
    pub mean: Vec<f32>,
    pub invstd: Vec<f32>,
    pub var_unbiased: Vec<f32>,
}

pub struct Backward {
    pub dx: Vec<f32>,
    pub dgamma: Vec<f32>,
    pub dbeta: Vec<f32>,
}

fn planes(d: Nchw, c: usize) -> impl Iterator<Item = std::ops::Range<usize>> {
    let hw = d.h * d.w;
    (0..d.n).map(move |n| (n * d.c + c) * hw..(n * d.c + c + 1) * hw)
}

/// The sums over `i` of the `K` terms `f(a[i], b[i])` (`a` and `b` of one length), in f64, each
/// accumulated in eight interleaved lanes (element `i` in lane `i % 8`, the lanes then added in
/// order), so that the loop vectorises instead of waiting on every add.
#[inline]
fn lane_sums<const K: usize>(a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> [f64; K]) -> [f64; K] {
    let mut acc = [[0.0f64; 8]; K];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (xa, xb) in ca.zip(cb) {
        for l in 0..8 {
            let t = f(xa[l], xb[l]);
            for k in 0..K {
                acc[k][l] += t[k];
            }
        }
    }
    for (l, (&va, &vb)) in ra.iter().zip(rb).enumerate() {
        let t = f(va, vb);
        for k in 0..K {
            acc[k][l] += t[k];
        }
    }
    acc.map(|lanes| lanes.iter().sum())
}

/// [`lane_sums`] of one slice and one term: the sum over `i` of `f(a[i])`.
#[inline]
fn lane_sum(a: &[f32], f: impl Fn(f32) -> f64) -> f64 {
    lane_sums(a, a, |v, _| [f(v)])[0]
}

/// Per-channel statistics over N, H, W, then `y = gamma * (x - mean) * invstd + beta`, clamped
/// at 0 when `relu`.
pub fn forward_train(x: &[f32], gamma: &[f32], beta: &[f32], d: Nchw, eps: f32, relu: bool) -> Forward {
    let count = (d.n * d.h * d.w) as f64;
    let stats: Vec<(f32, f32, f32)> = (0..d.c)
        .into_par_iter()
        .map(|c| {
            let sum: f64 = planes(d, c).map(|r| lane_sum(&x[r], |v| v as f64)).sum();
            let mean = sum / count;
            let sq: f64 = planes(d, c).map(|r| lane_sum(&x[r], |v| (v as f64 - mean).powi(2))).sum();
            let var = sq / count;
            let unbiased = if count > 1.0 { sq / (count - 1.0) } else { var };
            (mean as f32, invstd(var, eps), unbiased as f32)
        })
        .collect();
    let mean: Vec<f32> = stats.iter().map(|s| s.0).collect();
    let invstd: Vec<f32> = stats.iter().map(|s| s.1).collect();
    let y = normalize(x, gamma, beta, &mean, &invstd, d, relu);
    Forward { y, mean, invstd, var_unbiased: stats.iter().map(|s| s.2).collect() }
}

/// The normalising pass of [`forward_train`] with the given statistics: `y = ((gamma *
/// (x - mean)) * invstd) + beta`, each op rounded to f32 in that order (no fused multiply-add),
/// clamped at 0 when `relu`. The backward of the fused ReLU recomputes the forward's output
/// with it, bit for bit.
pub fn normalize(x: &[f32], gamma: &[f32], beta: &[f32], mean: &[f32], invstd: &[f32], d: Nchw, relu: bool) -> Vec<f32> {
    let hw = d.h * d.w;
    filled_by_chunks(x.len(), hw, |plane, out| {
        let c = plane % d.c;
        let (m, is, g, b) = (mean[c], invstd[c], gamma[c], beta[c]);
        for (o, &v) in out.iter_mut().zip(&x[plane * hw..(plane + 1) * hw]) {
            let y = g * (v - m) * is + b;
            *o = if relu { super::relu(y) } else { y };
        }
    })
}

/// `1 / sqrt(var + eps)` in f64, rounded once to f32: a channel's invstd in both modes.
fn invstd(var: f64, eps: f32) -> f32 {
    (1.0 / (var + eps as f64).sqrt()) as f32
}

/// Eval mode's `invstd` of each channel from its running variance, formed as [`forward_train`]
/// forms the batch's.
pub fn eval_invstd(running_var: &[f32], eps: f32) -> Vec<f32> {
    running_var.iter().map(|&v| invstd(v as f64, eps)).collect()
}

/// Eval-mode batch norm: [`normalize`] with the running mean and [`eval_invstd`] of the
/// running variance, one pass.
#[allow(clippy::too_many_arguments)]
pub fn forward_eval(
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    running_mean: &[f32],
    running_var: &[f32],
    d: Nchw,
    eps: f32,
    relu: bool,
) -> Vec<f32> {
    normalize(x, gamma, beta, running_mean, &eval_invstd(running_var, eps), d, relu)
}

/// `dx = gamma * invstd / M * (M dy - sum(dy) - xhat * sum(dy * xhat))`, with M = N*H*W.
pub fn backward(x: &[f32], dy: &[f32], gamma: &[f32], mean: &[f32], invstd: &[f32], d: Nchw) -> Backward {
    let count = (d.n * d.h * d.w) as f64;
    let sums: Vec<(f64, f64)> = (0..d.c)
        .into_par_iter()
        .map(|c| {
            let (m, is) = (mean[c] as f64, invstd[c] as f64);
            let (mut sdy, mut sdyx) = (0.0, 0.0);
            for r in planes(d, c) {
                let [a, b] = lane_sums(&dy[r.clone()], &x[r], |g, v| [g as f64, g as f64 * (v as f64 - m) * is]);
                sdy += a;
                sdyx += b;
            }
            (sdy, sdyx)
        })
        .collect();
    let hw = d.h * d.w;
    let dx = filled_by_chunks(x.len(), hw, |plane, out| {
        let c = plane % d.c;
        let (sdy, sdyx) = sums[c];
        let (m, is, g) = (mean[c] as f64, invstd[c] as f64, gamma[c] as f64);
        let r = plane * hw..(plane + 1) * hw;
        for ((o, &gy), &v) in out.iter_mut().zip(&dy[r.clone()]).zip(&x[r]) {
            let xhat = (v as f64 - m) * is;
            *o = (g * is / count * (count * gy as f64 - sdy - xhat * sdyx)) as f32;
        }
    });
    Backward { dx, dgamma: sums.iter().map(|s| s.1 as f32).collect(), dbeta: sums.iter().map(|s| s.0 as f32).collect() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::{elementwise, CpuStorage};
    use crate::backend::BackendStorage;
    use rand::{Rng, SeedableRng};

    /// Every element counted once: on integer values (exact in f64, in any order) the lane
    /// sums are the plain sums, for every length around the eight lanes.
    #[test]
    fn lane_sums_count_every_element_once() {
        for len in 0..40 {
            let a: Vec<f32> = (0..len).map(|i| (i * 7 % 11) as f32 - 5.0).collect();
            let b: Vec<f32> = (0..len).map(|i| (i * 5 % 13) as f32).collect();
            let got = lane_sums(&a, &b, |x, y| [x as f64, x as f64 * y as f64]);
            let want = [a.iter().map(|&x| x as f64).sum::<f64>(), a.iter().zip(&b).map(|(&x, &y)| x as f64 * y as f64).sum::<f64>()];
            assert_eq!(got, want, "length {len}");
        }
    }

    /// The fused ReLU's backward (`relu`: the mask recomputed from x by [`normalize`]) is bit
    /// for bit the plain backward of the gradient masked by the forward's stored output, on
    /// random inputs whose outputs include exact zeros: -0 before the clamp in a constant
    /// channel (x at its mean, gamma < 0, beta = -0), +0 where beta cancels one element's
    /// `gamma (x - mean) invstd` in every other channel.
    #[test]
    fn relu_backward_with_the_recomputed_mask_is_that_of_the_stored_output() {
        let d = Nchw { n: 3, c: 5, h: 4, w: 7 };
        let hw = d.h * d.w;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let mut vec = |n: usize, lo: f32, hi: f32| -> Vec<f32> { (0..n).map(|_| rng.random_range(lo..hi)).collect() };
        let (mut x, mut gamma, mut beta, dy) = (vec(d.len(), -2.0, 3.0), vec(d.c, 0.5, 1.5), vec(d.c, -0.5, 0.5), vec(d.len(), -1.0, 1.0));
        for n in 0..d.n {
            x[n * d.c * hw..(n * d.c + 1) * hw].fill(0.75);
        }
        (gamma[0], beta[0]) = (-gamma[0], -0.0);
        // beta changes no statistic: those of this forward are the final forward's.
        let s = forward_train(&x, &gamma, &beta, d, 1e-5, false);
        for c in 1..d.c {
            beta[c] = -(gamma[c] * (x[c * hw + 3] - s.mean[c]) * s.invstd[c]);
        }
        let f = forward_train(&x, &gamma, &beta, d, 1e-5, true);
        let plain = normalize(&x, &gamma, &beta, &f.mean, &f.invstd, d, false);
        let zeros = |bits: u32| plain.iter().filter(|v| v.to_bits() == bits).count();
        assert_eq!((zeros(0), zeros(0x8000_0000)), (d.c - 1, d.n * hw), "exact zeros before the clamp");

        let want = backward(&x, &elementwise::relu_backward(&f.y, &dy), &gamma, &f.mean, &f.invstd, d);
        let cpu = |v: &[f32]| CpuStorage::F32(v.to_vec());
        let got = cpu(&x).batch_norm_backward(&cpu(&dy), &cpu(&gamma), &cpu(&beta), &cpu(&f.mean), &cpu(&f.invstd), d, true).unwrap();
        let bits = |v: &[f32]| v.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(got.dx.as_f32()), bits(&want.dx), "dx");
        assert_eq!(bits(got.dgamma.as_f32()), bits(&want.dgamma), "dgamma");
        assert_eq!(bits(got.dbeta.as_f32()), bits(&want.dbeta), "dbeta");
        // The mask mattered: the unmasked gradient gives another dbeta.
        assert_ne!(bits(&backward(&x, &dy, &gamma, &f.mean, &f.invstd, d).dbeta), bits(&want.dbeta));
    }
}
