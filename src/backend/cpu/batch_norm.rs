//! Training-mode batch norm over NCHW on the host, forward and backward, with statistics
//! accumulated in f64: the CPU reference for the CUDA batch-norm kernels.

use rayon::prelude::*;

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

/// Per-channel statistics over N, H, W, then `y = gamma * (x - mean) * invstd + beta`, clamped
/// at 0 when `relu`.
pub fn forward_train(x: &[f32], gamma: &[f32], beta: &[f32], d: Nchw, eps: f32, relu: bool) -> Forward {
    let count = (d.n * d.h * d.w) as f64;
    let stats: Vec<(f32, f32, f32)> = (0..d.c)
        .into_par_iter()
        .map(|c| {
            let sum: f64 = planes(d, c).map(|r| x[r].iter().map(|&v| v as f64).sum::<f64>()).sum();
            let mean = sum / count;
            let sq: f64 = planes(d, c).map(|r| x[r].iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>()).sum();
            let var = sq / count;
            let unbiased = if count > 1.0 { sq / (count - 1.0) } else { var };
            (mean as f32, (1.0 / (var + eps as f64).sqrt()) as f32, unbiased as f32)
        })
        .collect();
    let hw = d.h * d.w;
    let mut y = vec![0.0; x.len()];
    y.par_chunks_mut(hw.max(1)).enumerate().for_each(|(plane, out)| {
        let c = plane % d.c;
        let (mean, invstd, _) = stats[c];
        let (g, b) = (gamma[c], beta[c]);
        for (o, &v) in out.iter_mut().zip(&x[plane * hw..(plane + 1) * hw]) {
            let y = g * (v - mean) * invstd + b;
            *o = if relu { super::relu(y) } else { y };
        }
    });
    Forward {
        y,
        mean: stats.iter().map(|s| s.0).collect(),
        invstd: stats.iter().map(|s| s.1).collect(),
        var_unbiased: stats.iter().map(|s| s.2).collect(),
    }
}

/// `dx = gamma * invstd / M * (M dy - sum(dy) - xhat * sum(dy * xhat))`, with M = N*H*W.
pub fn backward(x: &[f32], dy: &[f32], gamma: &[f32], mean: &[f32], invstd: &[f32], d: Nchw) -> Backward {
    let count = (d.n * d.h * d.w) as f64;
    let sums: Vec<(f64, f64)> = (0..d.c)
        .into_par_iter()
        .map(|c| {
            let (m, is) = (mean[c] as f64, invstd[c] as f64);
            let mut sdy = 0.0;
            let mut sdyx = 0.0;
            for r in planes(d, c) {
                for (&g, &v) in dy[r.clone()].iter().zip(&x[r]) {
                    sdy += g as f64;
                    sdyx += g as f64 * (v as f64 - m) * is;
                }
            }
            (sdy, sdyx)
        })
        .collect();
    let hw = d.h * d.w;
    let mut dx = vec![0.0; x.len()];
    dx.par_chunks_mut(hw.max(1)).enumerate().for_each(|(plane, out)| {
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
