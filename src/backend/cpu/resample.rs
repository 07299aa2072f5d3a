//! Bilinear resampling on the host with the centre-aligned rule (`align_corners=False`):
//! dense upsampling forward and backward, and the sparse hypercolumn gather forward and its
//! backward scatter. The CPU reference for `kernels/upsample.ptx` and `kernels/gather.ptx`.

use super::buffer::filled_by_chunks;
use crate::backend::{GatherSpec, Nchw, PlaneSumSpec, SamplePoint};
use crate::error::{Error, Result};

/// The two source indices and weights of one output coordinate.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Lerp {
    pub i0: usize,
    pub i1: usize,
    pub w0: f32,
    pub w1: f32,
}

impl Lerp {
    /// Output coordinate `dst` of an axis resampled from `in_len` to `out_len` samples:
    /// `src = (dst + 0.5) * in_len / out_len - 0.5`, clamped below at 0, the upper neighbour
    /// clamped to the last sample.
    #[inline]
    pub fn new(dst: usize, in_len: usize, out_len: usize) -> Lerp {
        let scale = in_len as f32 / out_len as f32;
        let src = ((dst as f32 + 0.5) * scale - 0.5).max(0.0);
        let i0 = (src as usize).min(in_len - 1);
        let i1 = if i0 + 1 < in_len { i0 + 1 } else { i0 };
        let w1 = src - i0 as f32;
        Lerp { i0, i1, w0: 1.0 - w1, w1 }
    }
}

fn axis(in_len: usize, out_len: usize) -> Vec<Lerp> {
    (0..out_len).map(|d| Lerp::new(d, in_len, out_len)).collect()
}

pub fn upsample_forward(x: &[f32], d: Nchw, out_h: usize, out_w: usize) -> Vec<f32> {
    let (ly, lx) = (axis(d.h, out_h), axis(d.w, out_w));
    if out_h * out_w == 0 {
        return Vec::new();
    }
    filled_by_chunks(d.n * d.c * out_h * out_w, out_h * out_w, |p, out| {
        let plane = &x[p * d.h * d.w..(p + 1) * d.h * d.w];
        for (oy, a) in ly.iter().enumerate() {
            let (r0, r1) = (&plane[a.i0 * d.w..(a.i0 + 1) * d.w], &plane[a.i1 * d.w..(a.i1 + 1) * d.w]);
            for (ox, b) in lx.iter().enumerate() {
                out[oy * out_w + ox] = a.w0 * (b.w0 * r0[b.i0] + b.w1 * r0[b.i1]) + a.w1 * (b.w0 * r1[b.i0] + b.w1 * r1[b.i1]);
            }
        }
    })
}

pub fn upsample_backward(dy: &[f32], d: Nchw, out_h: usize, out_w: usize) -> Vec<f32> {
    let (ly, lx) = (axis(d.h, out_h), axis(d.w, out_w));
    if d.h * d.w == 0 {
        return vec![0.0; d.len()];
    }
    filled_by_chunks(d.len(), d.h * d.w, |p, plane| {
        let g = &dy[p * out_h * out_w..(p + 1) * out_h * out_w];
        for (oy, a) in ly.iter().enumerate() {
            for (ox, b) in lx.iter().enumerate() {
                let v = g[oy * out_w + ox];
                plane[a.i0 * d.w + b.i0] += a.w0 * b.w0 * v;
                plane[a.i0 * d.w + b.i1] += a.w0 * b.w1 * v;
                plane[a.i1 * d.w + b.i0] += a.w1 * b.w0 * v;
                plane[a.i1 * d.w + b.i1] += a.w1 * b.w1 * v;
            }
        }
    })
}

/// Checks tap lengths and point coordinates against a gather spec.
pub fn check_gather(tap_lens: impl ExactSizeIterator<Item = usize>, points: &[SamplePoint], g: &GatherSpec) -> Result<()> {
    if tap_lens.len() != g.taps.len() {
        return Err(Error::bad_shape("gather", format!("{} taps given, spec has {}", tap_lens.len(), g.taps.len())));
    }
    for (i, (len, &(c, h, w))) in tap_lens.zip(&g.taps).enumerate() {
        if len != g.n * c * h * w || h == 0 || w == 0 {
            return Err(Error::bad_shape("gather", format!("tap {i} has {len} elements, expected {}x{c}x{h}x{w}", g.n)));
        }
    }
    if let Some(p) = points.iter().find(|p| p.image as usize >= g.n || p.y as usize >= g.in_h || p.x as usize >= g.in_w) {
        return Err(Error::bad_shape("gather", format!("point {p:?} outside a batch of {} images of {}x{}", g.n, g.in_h, g.in_w)));
    }
    Ok(())
}

/// The four taps of point `p` in a map of `h x w` inside an input frame of `in_h x in_w`:
/// `(offset in the plane, weight)`.
#[inline]
pub fn point_weights(p: &SamplePoint, h: usize, w: usize, in_h: usize, in_w: usize) -> [(usize, f32); 4] {
    let a = Lerp::new(p.y as usize, h, in_h);
    let b = Lerp::new(p.x as usize, w, in_w);
    [(a.i0 * w + b.i0, a.w0 * b.w0), (a.i0 * w + b.i1, a.w0 * b.w1), (a.i1 * w + b.i0, a.w1 * b.w0), (a.i1 * w + b.i1, a.w1 * b.w1)]
}

/// `[points, total_channels]`: row `p` holds every tap bilinearly sampled at point `p`.
pub fn gather_forward(taps: &[&[f32]], points: &[SamplePoint], g: &GatherSpec) -> Vec<f32> {
    let ctot = g.total_channels();
    if ctot == 0 {
        return Vec::new();
    }
    filled_by_chunks(points.len() * ctot, ctot, |i, row| {
        let p = &points[i];
        let mut col = 0;
        for (tap, &(c, h, w)) in taps.iter().zip(&g.taps) {
            let wts = point_weights(p, h, w, g.in_h, g.in_w);
            let img = &tap[p.image as usize * c * h * w..(p.image as usize + 1) * c * h * w];
            for ch in 0..c {
                let plane = &img[ch * h * w..(ch + 1) * h * w];
                row[col + ch] = wts.iter().map(|&(o, wt)| wt * plane[o]).sum();
            }
            col += c;
        }
    })
}

/// `[points, cols]`: `relu(bias + sum_i z_i)`, `z_i` being pixel-major plane `i`
/// (`[n, h_i, w_i, cols]`) sampled at the point with the gather's four weights and order
/// ([`point_weights`]); the planes are added in order starting from `z_0`. The CPU reference
/// for `kernels/hypercolumn_sum.ptx` and the factored dense path's first layer.
pub fn plane_sum_forward(planes: &[&[f32]], bias: &[f32], points: &[SamplePoint], s: &PlaneSumSpec) -> Vec<f32> {
    plane_sum_with(planes, bias, points, s, |v| v)
}

/// [`plane_sum_forward`] over planes of any element type, each element widened to f32 by
/// `widen` as it is read (the bf16 planes of the dense path's bf16 mode).
pub(crate) fn plane_sum_with<T: Copy + Sync>(
    planes: &[&[T]],
    bias: &[f32],
    points: &[SamplePoint],
    s: &PlaneSumSpec,
    widen: impl Fn(T) -> f32 + Sync,
) -> Vec<f32> {
    let cols = s.cols;
    if cols == 0 {
        return Vec::new();
    }
    filled_by_chunks(points.len() * cols, cols, |i, row| {
        let p = &points[i];
        for (i, (plane, &(h, w))) in planes.iter().zip(&s.planes).enumerate() {
            let img = &plane[p.image as usize * h * w * cols..(p.image as usize + 1) * h * w * cols];
            let [(o0, w0), (o1, w1), (o2, w2), (o3, w3)] = point_weights(p, h, w, s.in_h, s.in_w);
            // The four pixels' rows, walked together so the loop over columns vectorises.
            let at = |o: usize| &img[o * cols..(o + 1) * cols];
            let pixels = at(o0).iter().zip(at(o1)).zip(at(o2)).zip(at(o3));
            for (acc, (((&a0, &a1), &a2), &a3)) in row.iter_mut().zip(pixels) {
                // The four terms added left to right in point_weights' order.
                let z = w0 * widen(a0) + w1 * widen(a1) + w2 * widen(a2) + w3 * widen(a3);
                *acc = if i == 0 { z } else { *acc + z };
            }
        }
        for (v, &b) in row.iter_mut().zip(bias) {
            *v = super::relu(*v + b);
        }
    })
}

/// One gradient per tap: each point's row scattered back with the forward's weights, points
/// taken in order (deterministic).
pub fn gather_backward(grad: &[f32], points: &[SamplePoint], g: &GatherSpec) -> Vec<Vec<f32>> {
    let ctot = g.total_channels();
    let mut col = 0;
    let mut out = Vec::with_capacity(g.taps.len());
    // Each image's points, in order (a point outside the batch lands nowhere).
    let mut by_image = vec![Vec::new(); g.n];
    for (pi, p) in points.iter().enumerate() {
        if let Some(list) = by_image.get_mut(p.image as usize) {
            list.push(pi);
        }
    }
    for &(c, h, w) in &g.taps {
        let wts: Vec<[(usize, f32); 4]> = points.iter().map(|p| point_weights(p, h, w, g.in_h, g.in_w)).collect();
        let dtap = filled_by_chunks(g.n * c * h * w, h * w, |plane_idx, plane| {
            let (img, ch) = (plane_idx / c, plane_idx % c);
            for &pi in &by_image[img] {
                let v = grad[pi * ctot + col + ch];
                for &(o, wt) in &wts[pi] {
                    plane[o] += wt * v;
                }
            }
        });
        out.push(dtap);
        col += c;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lerp_matches_pytorch_align_corners_false() {
        // 2 -> 4: src = (d + 0.5) / 2 - 0.5 = -0.25, 0.25, 0.75, 1.25.
        let l: Vec<_> = (0..4).map(|d| Lerp::new(d, 2, 4)).collect();
        assert_eq!((l[0].i0, l[0].i1, l[0].w1), (0, 1, 0.0));
        assert_eq!((l[1].i0, l[1].i1, l[1].w1), (0, 1, 0.25));
        assert_eq!((l[2].i0, l[2].i1, l[2].w1), (0, 1, 0.75));
        assert_eq!((l[3].i0, l[3].i1), (1, 1));
    }

    /// Random values on widely different scales (so a change of summation order shows in the
    /// last bits), with zeros of both signs.
    fn values(n: usize, rng: &mut impl rand::Rng) -> Vec<f32> {
        (0..n)
            .map(|i| match i % 11 {
                0 => 0.0,
                1 => -0.0,
                _ => rng.random_range(-1.0f32..1.0) * 10f32.powi(rng.random_range(-3..4)),
            })
            .collect()
    }

    /// Points of a batch of `n` images of `in_h x in_w`, images shuffled, the frame's corners
    /// included and some points repeated (so the scatter's accumulation order matters).
    fn points(n: usize, in_h: usize, in_w: usize, count: usize, rng: &mut impl rand::Rng) -> Vec<SamplePoint> {
        let mut pts: Vec<SamplePoint> = (0..count)
            .map(|_| SamplePoint {
                image: rng.random_range(0..n as u32),
                y: rng.random_range(0..in_h as u32),
                x: rng.random_range(0..in_w as u32),
            })
            .collect();
        pts.push(SamplePoint { image: 0, y: 0, x: 0 });
        pts.push(SamplePoint { image: n as u32 - 1, y: in_h as u32 - 1, x: in_w as u32 - 1 });
        let repeats: Vec<SamplePoint> = pts.iter().step_by(3).copied().collect();
        pts.extend(repeats);
        pts
    }

    #[test]
    fn plane_sum_is_its_definition_bit_for_bit() {
        use rand::SeedableRng;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        // 13 columns: the vectorised loop's tail is exercised too.
        let s = PlaneSumSpec { n: 3, in_h: 16, in_w: 12, cols: 13, planes: vec![(16, 12), (8, 6), (5, 7), (1, 1)] };
        let planes: Vec<Vec<f32>> = s.planes.iter().map(|&(h, w)| values(s.n * h * w * s.cols, &mut rng)).collect();
        let slices: Vec<&[f32]> = planes.iter().map(|p| p.as_slice()).collect();
        let bias = values(s.cols, &mut rng);
        let pts = points(s.n, s.in_h, s.in_w, 200, &mut rng);
        let got = plane_sum_forward(&slices, &bias, &pts, &s);
        // The definition: per column, each plane's four weighted pixels summed in
        // point_weights' order, the planes added in order from the first, then bias and ReLU.
        let mut want = Vec::new();
        for p in &pts {
            let mut row = vec![0.0f32; s.cols];
            for (i, (plane, &(h, w))) in slices.iter().zip(&s.planes).enumerate() {
                let img = &plane[p.image as usize * h * w * s.cols..];
                let wts = point_weights(p, h, w, s.in_h, s.in_w);
                for (j, acc) in row.iter_mut().enumerate() {
                    let z: f32 = wts.iter().map(|&(o, wt)| wt * img[o * s.cols + j]).sum();
                    *acc = if i == 0 { z } else { *acc + z };
                }
            }
            want.extend(row.iter().zip(&bias).map(|(&v, &b)| crate::backend::cpu::relu(v + b)));
        }
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&got), bits(&want));
    }

    #[test]
    fn gather_forward_is_its_definition_bit_for_bit() {
        use rand::SeedableRng;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
        // 11 channels: the vectorised loop's tail is exercised too.
        let g = GatherSpec { n: 3, in_h: 16, in_w: 12, taps: vec![(4, 16, 12), (11, 8, 6), (3, 5, 7), (2, 1, 1)] };
        let taps: Vec<Vec<f32>> = g.taps.iter().map(|&(c, h, w)| values(g.n * c * h * w, &mut rng)).collect();
        let slices: Vec<&[f32]> = taps.iter().map(|t| t.as_slice()).collect();
        let pts = points(g.n, g.in_h, g.in_w, 300, &mut rng);
        let got = gather_forward(&slices, &pts, &g);
        // The definition: per channel of every tap, its plane's four weighted pixels summed in
        // point_weights' order (a sum that starts from -0).
        let mut want = Vec::new();
        for p in &pts {
            for (tap, &(c, h, w)) in slices.iter().zip(&g.taps) {
                for ch in 0..c {
                    let plane = &tap[(p.image as usize * c + ch) * h * w..][..h * w];
                    want.push(point_weights(p, h, w, g.in_h, g.in_w).iter().map(|&(o, wt)| wt * plane[o]).sum::<f32>());
                }
            }
        }
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&got), bits(&want));
    }

    #[test]
    fn gather_backward_is_its_definition_bit_for_bit() {
        use rand::SeedableRng;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(8);
        let g = GatherSpec { n: 3, in_h: 16, in_w: 12, taps: vec![(4, 16, 12), (5, 8, 6), (3, 1, 1)] };
        let pts = points(g.n, g.in_h, g.in_w, 300, &mut rng);
        let ctot = g.total_channels();
        let grad = values(pts.len() * ctot, &mut rng);
        let got = gather_backward(&grad, &pts, &g);
        // The definition: every point in order, its gradient row scattered with the forward's weights.
        let mut col = 0;
        for (dtap, &(c, h, w)) in got.iter().zip(&g.taps) {
            let mut want = vec![0.0f32; g.n * c * h * w];
            for (pi, p) in pts.iter().enumerate() {
                for ch in 0..c {
                    let plane = &mut want[(p.image as usize * c + ch) * h * w..][..h * w];
                    for (o, wt) in point_weights(p, h, w, g.in_h, g.in_w) {
                        plane[o] += wt * grad[pi * ctot + col + ch];
                    }
                }
            }
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(dtap), bits(&want), "tap {c}x{h}x{w}");
            col += c;
        }
    }
}
