//! 2-D convolution on the host, forward and both backwards, by im2col + GEMM per image:
//! the CPU reference for the cuDNN convolutions. A 1x1, stride-1, unpadded convolution skips
//! the im2col copy (the image already is the column matrix). [`with_bf16_mode`] adds the bf16
//! convolution mode's roundings.

use std::ops::Range;

use rayon::prelude::*;

use super::buffer::zeros;
use super::gemm::{gemm_f32, gemm_f32_strided_serial, round_to_bf16};
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

/// The outputs `o` of `0..n_out` whose input `o * stride + k - pad` falls inside `0..n_in`: a
/// range, since that input grows with `o` (stride >= 1).
fn inside(n_out: usize, k: usize, stride: usize, pad: usize, n_in: usize) -> Range<usize> {
    let lo = pad.saturating_sub(k).div_ceil(stride);
    let hi = (n_in + pad).saturating_sub(k).div_ceil(stride).min(n_out);
    lo.min(hi)..hi
}

/// Unfolds one image `[c_in, h, w]` into columns `[c_in*kh*kw, out_h*out_w]`: per row of the
/// column matrix, the padding's zeros at both ends and the inside copied (one slice copy at
/// stride 1).
pub fn im2col(x: &[f32], s: &ConvSpec, col: &mut [f32]) {
    let (oh, ow) = (s.out_h(), s.out_w());
    let same_width = s.stride == 1 && ow == s.w;
    col.par_chunks_mut(oh * ow).enumerate().for_each(|(row, out)| {
        let c = row / (s.kh * s.kw);
        let ky = (row / s.kw) % s.kh;
        let kx = row % s.kw;
        let plane = &x[c * s.h * s.w..(c + 1) * s.h * s.w];
        let (rows, cols) = (inside(oh, ky, s.stride, s.pad, s.h), inside(ow, kx, s.stride, s.pad, s.w));
        if same_width {
            let shift = (ky as isize - s.pad as isize) * s.w as isize + kx as isize - s.pad as isize;
            unfold_tap_same_width(plane, s.w, rows, cols, shift, out);
            return;
        }
        for oy in 0..oh {
            let dst = &mut out[oy * ow..(oy + 1) * ow];
            if !rows.contains(&oy) {
                dst.fill(0.0);
                continue;
            }
            let iy = oy * s.stride + ky - s.pad;
            let src = &plane[iy * s.w..(iy + 1) * s.w];
            dst[..cols.start].fill(0.0);
            dst[cols.end..].fill(0.0);
            if cols.is_empty() {
                continue;
            }
            let first = cols.start * s.stride + kx - s.pad;
            if s.stride == 1 {
                dst[cols.clone()].copy_from_slice(&src[first..first + cols.len()]);
            } else {
                for (d, &v) in dst[cols.clone()].iter_mut().zip(src[first..].iter().step_by(s.stride)) {
                    *d = v;
                }
            }
        }
    });
}

/// One tap's row of [`im2col`] for a stride-1 convolution whose output is as wide as its input
/// (`kw = 2*pad + 1`: every VGG layer), where output pixel `i` reads input pixel `i + shift`.
/// The inside (`rows` x `cols`) is one copy of the plane from its first to its last pixel;
/// the pixels in between that wrapped around to a neighbouring row, and the padding rows, are
/// then zeroed. Deep layers' rows are a few pixels wide, so this is far fewer copies than one
/// per row.
fn unfold_tap_same_width(plane: &[f32], w: usize, rows: Range<usize>, cols: Range<usize>, shift: isize, out: &mut [f32]) {
    if rows.is_empty() || cols.is_empty() {
        out.fill(0.0);
        return;
    }
    out[..rows.start * w].fill(0.0);
    out[rows.end * w..].fill(0.0);
    let (first, last) = (rows.start * w + cols.start, (rows.end - 1) * w + cols.end);
    let from = first.wrapping_add_signed(shift);
    out[first..last].copy_from_slice(&plane[from..from + (last - first)]);
    for ox in (0..cols.start).chain(cols.end..w) {
        for v in out[rows.start * w + ox..rows.end * w].iter_mut().step_by(w) {
            *v = 0.0;
        }
    }
}

/// Folds columns `[c_in*kh*kw, out_h*out_w]` back into one image `[c_in, h, w]`, summing
/// overlaps (in the order of the kernel's taps, as [`im2col`] lays them out).
pub fn col2im(col: &[f32], s: &ConvSpec, x: &mut [f32]) {
    let (oh, ow) = (s.out_h(), s.out_w());
    let k2 = s.kh * s.kw;
    x.par_chunks_mut(s.h * s.w).enumerate().for_each(|(c, plane)| {
        plane.fill(0.0);
        for r in 0..k2 {
            let (ky, kx) = (r / s.kw, r % s.kw);
            let src = &col[(c * k2 + r) * oh * ow..(c * k2 + r + 1) * oh * ow];
            let cols = inside(ow, kx, s.stride, s.pad, s.w);
            if cols.is_empty() {
                continue;
            }
            for oy in inside(oh, ky, s.stride, s.pad, s.h) {
                let iy = oy * s.stride + ky - s.pad;
                let row = &mut plane[iy * s.w..(iy + 1) * s.w];
                let first = cols.start * s.stride + kx - s.pad;
                let from = &src[oy * ow + cols.start..oy * ow + cols.end];
                if s.stride == 1 {
                    for (d, &v) in row[first..first + from.len()].iter_mut().zip(from) {
                        *d += v;
                    }
                } else {
                    for (d, &v) in row[first..].iter_mut().step_by(s.stride).zip(from) {
                        *d += v;
                    }
                }
            }
        }
    });
}

/// `y[n] = W * im2col(x[n])`: `[n, c_out, out_h, out_w]`.
pub fn forward(x: &[f32], w: &[f32], s: &ConvSpec) -> Vec<f32> {
    let (ohw, kdim, in_len) = (s.out_h() * s.out_w(), s.c_in * s.kh * s.kw, s.c_in * s.h * s.w);
    let mut y = zeros(s.n * s.c_out * ohw);
    let mut col = if is_pointwise(s) { Vec::new() } else { zeros(kdim * ohw) };
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
    let mut dx = zeros(s.n * in_len);
    let mut col = zeros(kdim * ohw);
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
    let mut col = if is_pointwise(s) { Vec::new() } else { zeros(kdim * ohw) };
    for img in 0..s.n {
        let xi = &x[img * in_len..(img + 1) * in_len];
        let dyi = &dy[img * s.c_out * ohw..(img + 1) * s.c_out * ohw];
        if is_pointwise(s) {
            add_weight_grad(&mut dw, dyi, xi, s, img == 0);
        } else {
            im2col(xi, s, &mut col);
            add_weight_grad(&mut dw, dyi, &col, s, img == 0);
        }
    }
    dw
}

/// Pixels per piece of a pieced weight gradient ([`add_weight_grad`]).
const PIECE_PIXELS: usize = 512;
/// The largest weight gradient (in floats) that is computed in pieces: the gemm crate spreads
/// a GEMM over threads by its output only, and runs one this small on one thread however long
/// its sum.
const PIECED_MAX_OUTPUT: usize = 4096;

/// Adds one image's term of the weight gradient, `dy_i * col_i^T` (`dy_i` `[c_out, out_hw]`,
/// `col_i` `[c_in*kh*kw, out_hw]`), to `dw`, or writes it there when `first`. A small gradient
/// of many pixels (the first layers') is summed in pieces of [`PIECE_PIXELS`] pixels, one GEMM
/// each on all threads, then added piece by piece in order: the pieces are fixed, so the result
/// is the same on any number of threads.
fn add_weight_grad(dw: &mut [f32], dyi: &[f32], col: &[f32], s: &ConvSpec, first: bool) {
    let (ohw, kdim) = (s.out_h() * s.out_w(), s.c_in * s.kh * s.kw);
    if s.c_out * kdim > PIECED_MAX_OUTPUT || ohw < 2 * PIECE_PIXELS {
        let g = GemmSpec { m: s.c_out, n: kdim, k: ohw, trans_a: false, trans_b: true };
        gemm_f32(dyi, col, dw, g, if first { 0.0 } else { 1.0 });
        return;
    }
    let pieces: Vec<Vec<f32>> = (0..ohw.div_ceil(PIECE_PIXELS))
        .into_par_iter()
        .map(|p| {
            let (lo, hi) = (p * PIECE_PIXELS, ((p + 1) * PIECE_PIXELS).min(ohw));
            let mut part = vec![0.0; s.c_out * kdim];
            let g = GemmSpec { m: s.c_out, n: kdim, k: hi - lo, trans_a: false, trans_b: true };
            gemm_f32_strided_serial(&dyi[lo..], ohw, &col[lo..], ohw, &mut part, g, 0.0);
            part
        })
        .collect();
    for (p, part) in pieces.iter().enumerate() {
        if first && p == 0 {
            dw.copy_from_slice(part);
        } else {
            dw.iter_mut().zip(part).for_each(|(d, &v)| *d += v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// im2col by its definition, element by element.
    fn im2col_by_definition(x: &[f32], s: &ConvSpec) -> Vec<f32> {
        let (oh, ow) = (s.out_h(), s.out_w());
        let mut col = vec![f32::NAN; s.c_in * s.kh * s.kw * oh * ow];
        for c in 0..s.c_in {
            for ky in 0..s.kh {
                for kx in 0..s.kw {
                    for oy in 0..oh {
                        for ox in 0..ow {
                            let (iy, ix) = ((oy * s.stride + ky) as isize - s.pad as isize, (ox * s.stride + kx) as isize - s.pad as isize);
                            let inside = (0..s.h as isize).contains(&iy) && (0..s.w as isize).contains(&ix);
                            col[(((c * s.kh + ky) * s.kw + kx) * oh + oy) * ow + ox] =
                                if inside { x[(c * s.h + iy as usize) * s.w + ix as usize] } else { 0.0 };
                        }
                    }
                }
            }
        }
        col
    }

    /// col2im by its definition: each column element added to its input pixel, taps in order.
    fn col2im_by_definition(col: &[f32], s: &ConvSpec) -> Vec<f32> {
        let (oh, ow) = (s.out_h(), s.out_w());
        let mut x = vec![0.0f32; s.c_in * s.h * s.w];
        for c in 0..s.c_in {
            for ky in 0..s.kh {
                for kx in 0..s.kw {
                    for oy in 0..oh {
                        for ox in 0..ow {
                            let (iy, ix) = ((oy * s.stride + ky) as isize - s.pad as isize, (ox * s.stride + kx) as isize - s.pad as isize);
                            if (0..s.h as isize).contains(&iy) && (0..s.w as isize).contains(&ix) {
                                x[(c * s.h + iy as usize) * s.w + ix as usize] += col[(((c * s.kh + ky) * s.kw + kx) * oh + oy) * ow + ox];
                            }
                        }
                    }
                }
            }
        }
        x
    }

    /// Kernels, strides and paddings of the model and around it: 3x3 pad 1, 1x1, 7x7 pad 3 on
    /// a smaller image (fc6), padding wider than the kernel reaches, strides 2 and 3, odd sizes,
    /// a 1x1 image with pad 2 and stride 2 (the middle tap reads only padding), and "same"
    /// stride-1 convolutions (output as wide as the input, im2col's one-copy path) on images
    /// narrower than the kernel, one pixel wide, or a single pixel.
    const SPECS: [(usize, usize, usize, usize, usize, usize); 13] = [
        (3, 9, 7, 3, 1, 1),
        (2, 5, 5, 1, 1, 0),
        (2, 3, 3, 7, 1, 3),
        (1, 4, 6, 3, 1, 4),
        (2, 9, 8, 3, 2, 1),
        (2, 10, 11, 5, 3, 2),
        (1, 7, 7, 2, 2, 0),
        (3, 1, 6, 3, 1, 1),
        (1, 1, 1, 3, 2, 2),
        (2, 4, 6, 5, 1, 2),
        (2, 6, 2, 5, 1, 2),
        (1, 2, 1, 3, 1, 1),
        (1, 1, 1, 3, 1, 1),
    ];

    /// Uniform values in [-1, 1) from a seeded linear congruential generator.
    fn uniform(seed: u64) -> impl FnMut() -> f32 {
        let mut state = seed;
        move || {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        }
    }

    #[test]
    fn im2col_and_col2im_are_their_definitions_bit_for_bit() {
        let mut next = uniform(0x9E37_79B9_7F4A_7C15);
        for (c_in, h, w, k, stride, pad) in SPECS {
            let s = ConvSpec { n: 1, c_in, h, w, c_out: 1, kh: k, kw: k, stride, pad };
            let x: Vec<f32> = (0..c_in * h * w).map(|_| next()).collect();
            let mut col = vec![f32::NAN; c_in * k * k * s.out_h() * s.out_w()];
            im2col(&x, &s, &mut col);
            let want = im2col_by_definition(&x, &s);
            assert!(col.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits()), "im2col of {s:?}");
            let col: Vec<f32> = (0..col.len()).map(|_| next()).collect();
            let mut back = vec![f32::NAN; x.len()];
            col2im(&col, &s, &mut back);
            let want = col2im_by_definition(&col, &s);
            assert!(back.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits()), "col2im of {s:?}");
        }
    }

    /// The weight gradient by its definition, in f64.
    fn weight_grad_by_definition(x: &[f32], dy: &[f32], s: &ConvSpec) -> Vec<f64> {
        let (oh, ow) = (s.out_h(), s.out_w());
        let mut dw = vec![0.0f64; s.c_out * s.c_in * s.kh * s.kw];
        for n in 0..s.n {
            let col = im2col_by_definition(&x[n * s.c_in * s.h * s.w..(n + 1) * s.c_in * s.h * s.w], s);
            for co in 0..s.c_out {
                for (r, row) in col.chunks(oh * ow).enumerate() {
                    let g = &dy[(n * s.c_out + co) * oh * ow..(n * s.c_out + co + 1) * oh * ow];
                    dw[co * s.c_in * s.kh * s.kw + r] += row.iter().zip(g).map(|(&a, &b)| a as f64 * b as f64).sum::<f64>();
                }
            }
        }
        dw
    }

    /// Weight gradients small enough to be summed in pixel pieces (two whole pieces and a
    /// partial one; the first layer of the tiny preset), and one just too large for it: the
    /// definition, and the same bits on one thread as on three.
    #[test]
    fn a_pieced_weight_gradient_is_the_definition_on_any_number_of_threads() {
        let mut next = uniform(0x2545_F491_4F6C_DD1D);
        let specs = [
            ConvSpec { n: 2, c_in: 2, h: 40, w: 29, c_out: 3, kh: 3, kw: 3, stride: 1, pad: 1 },
            ConvSpec { n: 1, c_in: 3, h: 64, w: 64, c_out: 8, kh: 3, kw: 3, stride: 1, pad: 1 },
            ConvSpec { n: 2, c_in: 5, h: 32, w: 33, c_out: 1, kh: 1, kw: 1, stride: 1, pad: 0 },
            ConvSpec { n: 1, c_in: 57, h: 32, w: 32, c_out: 8, kh: 3, kw: 3, stride: 1, pad: 1 },
        ];
        for s in specs {
            let x: Vec<f32> = (0..s.n * s.c_in * s.h * s.w).map(|_| next()).collect();
            let dy: Vec<f32> = (0..s.n * s.c_out * s.out_h() * s.out_w()).map(|_| next()).collect();
            let on =
                |threads| rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap().install(|| backward_weight(&x, &dy, &s));
            let (one, three) = (on(1), on(3));
            assert!(one.iter().zip(&three).all(|(a, b)| a.to_bits() == b.to_bits()), "{s:?}: 1 and 3 threads differ");
            for (a, b) in one.iter().zip(weight_grad_by_definition(&x, &dy, &s)) {
                assert!((*a as f64 - b).abs() <= 1e-5 * (1.0 + b.abs()) * (s.out_h() * s.out_w()) as f64 / 64.0, "{s:?}: {a} vs {b}");
            }
        }
    }
}
