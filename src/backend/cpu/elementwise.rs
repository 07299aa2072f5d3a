//! Elementwise maps, broadcasts along a middle axis, reductions, block copies and dropout
//! masks on host slices: the CPU reference for `kernels/elementwise.ptx`.

use rayon::prelude::*;

use super::buffer::filled_by_chunks;
use crate::backend::{hash_u32, BinaryOp, BlockCopy, BroadcastSpec, UnaryOp};

/// Below this many elements a loop is cheaper than waking rayon's threads.
const PAR_MIN: usize = 1 << 15;

fn map(x: &[f32], f: impl Fn(f32) -> f32 + Sync) -> Vec<f32> {
    if x.len() < PAR_MIN {
        x.iter().map(|&v| f(v)).collect()
    } else {
        x.par_iter().map(|&v| f(v)).collect()
    }
}

fn zip(a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32 + Sync) -> Vec<f32> {
    if a.len() < PAR_MIN {
        a.iter().zip(b).map(|(&x, &y)| f(x, y)).collect()
    } else {
        a.par_iter().zip(b).map(|(&x, &y)| f(x, y)).collect()
    }
}

/// `max(v, 0)` as the GPU's `max.f32` computes it, with every case defined: NaN gives +0 (the
/// non-NaN operand) and -0 gives +0. Rust's `f32::max(-0.0, 0.0)` may return either zero (it
/// differs between opt-levels), so every ReLU of the CPU reference goes through this.
#[inline]
pub fn relu(v: f32) -> f32 {
    if v > 0.0 {
        v
    } else {
        0.0
    }
}

pub fn unary(x: &[f32], op: UnaryOp) -> Vec<f32> {
    match op {
        UnaryOp::Neg => map(x, |v| -v),
        UnaryOp::Sqr => map(x, |v| v * v),
        UnaryOp::Sqrt => map(x, f32::sqrt),
        UnaryOp::Exp => map(x, f32::exp),
        UnaryOp::Log => map(x, f32::ln),
        UnaryOp::Relu => map(x, relu),
    }
}

pub fn affine(x: &[f32], mul: f32, add: f32) -> Vec<f32> {
    map(x, |v| v * mul + add)
}

pub fn binary(a: &[f32], b: &[f32], op: BinaryOp) -> Vec<f32> {
    match op {
        BinaryOp::Add => zip(a, b, |x, y| x + y),
        BinaryOp::Sub => zip(a, b, |x, y| x - y),
        BinaryOp::Mul => zip(a, b, |x, y| x * y),
        BinaryOp::Div => zip(a, b, |x, y| x / y),
    }
}

/// `grad * (y > 0)`.
pub fn relu_backward(y: &[f32], grad: &[f32]) -> Vec<f32> {
    zip(y, grad, |y, g| if y > 0.0 { g } else { 0.0 })
}

/// `y[r, c] = max(y[r, c] + bias[c], 0)` in place (the fused bias + ReLU after a linear
/// layer's GEMM).
pub fn bias_relu_assign(y: &mut [f32], bias: &[f32]) {
    let cols = bias.len();
    if cols == 0 {
        return;
    }
    y.par_chunks_mut(cols).for_each(|row| {
        for (v, &b) in row.iter_mut().zip(bias) {
            *v = relu(*v + b);
        }
    });
}

pub fn add_scaled_assign(dst: &mut [f32], src: &[f32], alpha: f32) {
    if dst.len() < PAR_MIN {
        dst.iter_mut().zip(src).for_each(|(d, &s)| *d += alpha * s);
    } else {
        dst.par_iter_mut().zip(src).for_each(|(d, &s)| *d += alpha * s);
    }
}

/// The OR over every element of every buffer of `0x7FC00000` (NaN) or `0x7F800000`
/// (infinity), as f32: `+0.0`, `+inf` or `NaN` (see `BackendStorage::non_finite`).
pub fn non_finite(buffers: &[&[f32]]) -> f32 {
    let flags = buffers
        .par_iter()
        .flat_map(|b| b.par_chunks(1 << 14))
        .map(|c| {
            c.iter().fold(0u32, |acc, v| {
                acc | if v.is_nan() {
                    0x7FC0_0000
                } else if v.is_infinite() {
                    0x7F80_0000
                } else {
                    0
                }
            })
        })
        .reduce(|| 0, |a, b| a | b);
    f32::from_bits(flags)
}

/// Sum in f64 chunks: accurate and independent of the thread count.
/// The sum in f64, rounded once. Sums start from +0.0, as the GPU's do (Rust's `f64: Sum`
/// starts from -0.0, which would make a sum of only -0.0 differ in sign).
pub fn sum(x: &[f32]) -> f32 {
    let add = |a: f64, b: f64| a + b;
    x.par_chunks(1 << 14).map(|c| c.iter().map(|&v| v as f64).fold(0.0, add)).collect::<Vec<_>>().into_iter().fold(0.0, add) as f32
}

/// `out[o, m, i] = f(x[o, m, i], v[m])`.
pub fn broadcast(x: &[f32], v: &[f32], s: BroadcastSpec, f: impl Fn(f32, f32) -> f32 + Sync) -> Vec<f32> {
    let inner = s.inner.max(1);
    filled_by_chunks(x.len(), inner, |row, o| {
        let b = v[row % s.mid];
        for (d, &a) in o.iter_mut().zip(&x[row * inner..]) {
            *d = f(a, b);
        }
    })
}

/// `out[m] = sum over o, i of x[o, m, i]`, accumulated in f64.
pub fn reduce_to_mid(x: &[f32], s: BroadcastSpec) -> Vec<f32> {
    (0..s.mid)
        .into_par_iter()
        .map(|m| {
            let mut acc = 0.0f64;
            for o in 0..s.outer {
                let base = (o * s.mid + m) * s.inner;
                acc += x[base..base + s.inner].iter().map(|&v| v as f64).sum::<f64>();
            }
            acc as f32
        })
        .collect()
}

pub fn copy_blocks(src: &[f32], dst: &mut [f32], c: BlockCopy) {
    for o in 0..c.outer {
        let s = c.src_offset + o * c.src_stride;
        let d = c.dst_offset + o * c.dst_stride;
        dst[d..d + c.block].copy_from_slice(&src[s..s + c.block]);
    }
}

/// `1/keep` where `hash_u32(seed, i) < keep * 2^32`, else 0.
pub fn dropout_mask(len: usize, keep: f32, seed: u32) -> Vec<f32> {
    let threshold = keep_threshold(keep);
    let scale = 1.0 / keep;
    (0..len).into_par_iter().map(|i| if (hash_u32(seed, i as u32) as u64) < threshold { scale } else { 0.0 }).collect()
}

/// The integer threshold a hash is compared with for a keep probability (shared with CUDA).
pub fn keep_threshold(keep: f32) -> u64 {
    ((keep as f64) * 4294967296.0) as u64
}
