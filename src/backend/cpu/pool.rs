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
        for (oy, row) in out.chunks_exact_mut(ow).enumerate() {
            // The window's two input rows, walked a pair of pixels at a time (a loop that
            // vectorises, unlike one indexing each window).
            let r0 = plane[2 * oy * d.w..][..2 * ow].chunks_exact(2);
            let r1 = plane[(2 * oy + 1) * d.w..][..2 * ow].chunks_exact(2);
            for ((o, a), b) in row.iter_mut().zip(r0).zip(r1) {
                *o = first_max([a[0], a[1], b[0], b[1]]);
            }
        }
    })
}

/// `v[argmax4(v)]` as a chain of selects: the value of the window's first maximum.
#[inline]
fn first_max(v: [f32; 4]) -> f32 {
    let mut m = v[0];
    for &x in &v[1..] {
        m = if x > m { x } else { m };
    }
    m
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The forward's value is that of the window's first maximum in row-major order, bit for
    /// bit (ties of -0 and +0, NaNs), on odd sizes whose last row and column are dropped.
    #[test]
    fn forward_is_the_first_maximum_of_each_window() {
        let d = Nchw { n: 2, c: 3, h: 7, w: 9 };
        let specials = [0.0, -0.0, f32::NAN, 1.5, -1.5, f32::INFINITY];
        let mut x: Vec<f32> = (0..d.len())
            .map(|i| if i % 5 == 0 { specials[i / 5 % specials.len()] } else { ((i * 37 % 23) as f32 - 11.0) * 0.25 })
            .collect();
        // Windows whose first maximum is decided by a tie of -0 and +0, or is a leading NaN.
        for (p, v) in
            [(0, [-0.0, 0.0, -1.0, -2.0]), (1, [0.0, -0.0, -0.0, -3.0]), (2, [f32::NAN, 1.0, 2.0, 3.0]), (3, [-1.0, -0.0, -2.0, 0.0])]
        {
            let at = p * d.h * d.w;
            (x[at], x[at + 1], x[at + d.w], x[at + d.w + 1]) = (v[0], v[1], v[2], v[3]);
        }
        let y = max_pool2x2(&x, d);
        let (oh, ow) = (d.h / 2, d.w / 2);
        assert_eq!(y.len(), d.n * d.c * oh * ow);
        for p in 0..d.n * d.c {
            let plane = &x[p * d.h * d.w..(p + 1) * d.h * d.w];
            for oy in 0..oh {
                for ox in 0..ow {
                    let v = window(plane, d.w, oy, ox);
                    assert_eq!(y[(p * oh + oy) * ow + ox].to_bits(), v[argmax4(v)].to_bits(), "plane {p}, window ({oy}, {ox}) of {v:?}");
                }
            }
        }
    }
}
