//! 2-D convolution on the host, forward and both backwards, by im2col + GEMM per image:
//! the CPU reference for the cuDNN convolutions. A 1x1, stride-1, unpadded convolution skips
//! the im2col copy (the image already is the column matrix). [`with_bf16_mode`] adds the bf16
//! convolution mode's roundings.

use rayon::prelude::*;

use super::gemm::{gemm_f32, round_to_bf16};
use crate::backend::{ConvSpec, GemmSpec};

/// Runs one convolution computation `f` on its two operands, with the bf16 convolution mode's
/// roundings when [`crate::settings::bf16_conv`] is on: both operands rounded to bf16 before, the
/// result after (to nearest, ties to even), the computation itself in f32. That is what cuDNN
/// computes on bf16 tensors with fp32 accumulation, up to the order of the sums.
pub fn with_bf16_mode(a: &[f32], b: &[f32], f: impl FnOnce(&[f32], &[f32]) -> Vec<f32>) -> Vec<f32> {
    if !crate::settings::bf16_conv() {
        return f(a, b);
    }
    let mut out = f(&round_to_bf16(a), &round_to_bf16(b));
    out.par_iter_mut().for_each(|v| *v = super::bf16::widen(half::bf16::from_f32(*v)));
    out
}

fn is_pointwise(s: &ConvSpec) -> bool {
    s.kh == 1 && s.kw == 1 && s.stride == 1 && s.pad == 0
}

/// Unfolds one image `[c_in, h, w]` into columns `[c_in*kh*kw, out_h*out_w]`.
pub fn im2col(x: &[f32], s: &ConvSpec, col: &mut [f32]) {
    let (oh, ow) = (s.out_h(), s.out_w());
    col.par_chunks_mut(oh * ow).enumerate().for_each(|(row, out)| {
        let c = row / (s.kh * s.kw);
        let ky = (row / s.kw) % s.kh;
        let kx = row % s.kw;
        let plane = &x[c * s.h * s.w..(c + 1) * s.h * s.w];
        for oy in 0..oh {
            let iy = (oy * s.stride + ky) as isize - s.pad as isize;
            let dst = &mut out[oy * ow..(oy + 1) * ow];
            if iy < 0 || iy >= s.h as isize {
                dst.fill(0.0);
                continue;
            }
            let src = &plane[iy as usize * s.w..(iy as usize + 1) * s.w];
            for (ox, d) in dst.iter_mut().enumerate() {
                let ix = (ox * s.stride + kx) as isize - s.pad as isize;
                *d = if ix < 0 || ix >= s.w as isize { 0.0 } else { src[ix as usize] };
            }
        }
    });
}

/// Folds columns `[c_in*kh*kw, out_h*out_w]` back into one image `[c_in, h, w]`, summing overlaps.
pub fn col2im(col: &[f32], s: &ConvSpec, x: &mut [f32]) {
    let (oh, ow) = (s.out_h(), s.out_w());
    let k2 = s.kh * s.kw;
    x.par_chunks_mut(s.h * s.w).enumerate().for_each(|(c, plane)| {
        plane.fill(0.0);
        for r in 0..k2 {
            let (ky, kx) = (r / s.kw, r % s.kw);
            let src = &col[(c * k2 + r) * oh * ow..(c * k2 + r + 1) * oh * ow];
            for oy in 0..oh {
                let iy = (oy * s.stride + ky) as isize - s.pad as isize;
                if iy < 0 || iy >= s.h as isize {
                    continue;
                }
                let row = &mut plane[iy as usize * s.w..(iy as usize + 1) * s.w];
                for ox in 0..ow {
                    let ix = (ox * s.stride + kx) as isize - s.pad as isize;
                    if ix >= 0 && ix < s.w as isize {
                        row[ix as usize] += src[oy * ow + ox];
                    }
                }
            }
        }
    });
}

/// `y[n] = W * im2col(x[n])`: `[n, c_out, out_h, out_w]`.
pub fn forward(x: &[f32], w: &[f32], s: &ConvSpec) -> Vec<f32> {
    let (ohw, kdim, in_len) = (s.out_h() * s.out_w(), s.c_in * s.kh * s.kw, s.c_in * s.h * s.w);
    let mut y = vec![0.0; s.n * s.c_out * ohw];
    let mut col = if is_pointwise(s) { Vec::new() } else { vec![0.0; kdim * ohw] };
    let g = GemmSpec { m: s.c_out, n: ohw, k: kdim, trans_a: false, trans_b: false };
    for (img, out) in y.chunks_mut(s.c_out * ohw).enumerate() {
        let xi = &x[img * in_len..(img + 1) * in_len];
        if is_pointwise(s) {
            gemm_f32(w, xi, out, g, 0.0);
        } else {
            im2col(xi, s, &mut col);
            gemm_f32(w, &col, out, g, 0.0);
        }
    }
    y
}

/// `dx[n] = col2im(W^T * dy[n])`.
pub fn backward_input(dy: &[f32], w: &[f32], s: &ConvSpec) -> Vec<f32> {
    let (ohw, kdim, in_len) = (s.out_h() * s.out_w(), s.c_in * s.kh * s.kw, s.c_in * s.h * s.w);
    let mut dx = vec![0.0; s.n * in_len];
    let mut col = vec![0.0; kdim * ohw];
    let g = GemmSpec { m: kdim, n: ohw, k: s.c_out, trans_a: true, trans_b: false };
    for (img, out) in dx.chunks_mut(in_len).enumerate() {
        let dyi = &dy[img * s.c_out * ohw..(img + 1) * s.c_out * ohw];
        if is_pointwise(s) {
            gemm_f32(w, dyi, out, g, 0.0);
        } else {
            gemm_f32(w, dyi, &mut col, g, 0.0);
            col2im(&col, s, out);
        }
    }
    dx
}

/// `dW = sum over n of dy[n] * im2col(x[n])^T`.
pub fn backward_weight(x: &[f32], dy: &[f32], s: &ConvSpec) -> Vec<f32> {
    let (ohw, kdim, in_len) = (s.out_h() * s.out_w(), s.c_in * s.kh * s.kw, s.c_in * s.h * s.w);
    let mut dw = vec![0.0; s.c_out * kdim];
    let mut col = if is_pointwise(s) { Vec::new() } else { vec![0.0; kdim * ohw] };
    let g = GemmSpec { m: s.c_out, n: kdim, k: ohw, trans_a: false, trans_b: true };
    for img in 0..s.n {
        let xi = &x[img * in_len..(img + 1) * in_len];
        let dyi = &dy[img * s.c_out * ohw..(img + 1) * s.c_out * ohw];
        let beta = if img == 0 { 0.0 } else { 1.0 };
        if is_pointwise(s) {
            gemm_f32(dyi, xi, &mut dw, g, beta);
        } else {
            im2col(xi, s, &mut col);
            gemm_f32(dyi, &col, &mut dw, g, beta);
        }
    }
    dw
}
