//! 2x2 stride-2 max pooling (floor mode) on the host, forward and backward: the CPU reference
//! for the CUDA pooling kernels. The backward routes each window's gradient to its first
//! maximum in row-major order, recomputed from the input (no index buffer is kept).

use super::buffer::filled_by_chunks;
use crate::backend::Nchw;

/// Row-major offset inside the window (0..4) of the window's first maximum.
#[inline]
fn argmax4(v: [f32; 4]) -> usize {
    let mut best = 0;
    for i in 1..4 {
        if v[i] > v[best] {
            best = i;
        }
    }
    best
}

#[inline]
fn window(plane: &[f32], w: usize, oy: usize, ox: usize) -> [f32; 4] {
    let (y, x) = (2 * oy, 2 * ox);
    [plane[y * w + x], plane[y * w + x + 1], plane[(y + 1) * w + x], plane[(y + 1) * w + x + 1]]
}

pub fn max_pool2x2(x: &[f32], d: Nchw) -> Vec<f32> {
    let (oh, ow) = (d.h / 2, d.w / 2);
    if oh * ow == 0 {
        return Vec::new();
    }
    filled_by_chunks(d.n * d.c * oh * ow, oh * ow, |p, out| {
        let plane = &x[p * d.h * d.w..(p + 1) * d.h * d.w];
        for oy in 0..oh {
            for ox in 0..ow {
                let v = window(plane, d.w, oy, ox);
                out[oy * ow + ox] = v[argmax4(v)];
            }
        }
    })
}

pub fn max_pool2x2_backward(x: &[f32], dy: &[f32], d: Nchw) -> Vec<f32> {
    let (oh, ow) = (d.h / 2, d.w / 2);
    if oh * ow == 0 {
        return vec![0.0; x.len()];
    }
    filled_by_chunks(x.len(), d.h * d.w, |p, out| {
        let plane = &x[p * d.h * d.w..(p + 1) * d.h * d.w];
        let g = &dy[p * oh * ow..(p + 1) * oh * ow];
        for oy in 0..oh {
            for ox in 0..ow {
                let a = argmax4(window(plane, d.w, oy, ox));
                out[(2 * oy + a / 2) * d.w + 2 * ox + a % 2] += g[oy * ow + ox];
            }
        }
    })
}
