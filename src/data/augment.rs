//! Seeded data augmentation: rotations by multiples of 90 degrees and flips, applied identically to image and
//! mask, and small brightness, contrast and hue changes applied to the image only.
//!
//! Drawing ([`Augment::sample`]) is separate from applying ([`AugmentParams::apply`]); [`augment_seed`] derives
//! each sample's generator from `(seed, epoch, index)`, so results do not depend on thread scheduling.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::decode::{Decoded, IMAGENET_MEAN};

/// What augmentation to draw from.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Augment {
    /// Rotate by k*90 degrees, k uniform in 0..4.
    pub rotate90: bool,
    /// Flip horizontally and, independently, vertically, each with probability 1/2.
    pub flip: bool,
    /// Brightness factor drawn uniformly from `[1 - brightness, 1 + brightness]`, multiplying every value.
    pub brightness: f32,
    /// Contrast factor drawn uniformly from `[1 - contrast, 1 + contrast]`, scaling the distance from the image's
    /// mean luminance.
    pub contrast: f32,
    /// Hue rotation, as a fraction of a full turn, drawn uniformly from `[-hue, hue]` (rotation of the chroma
    /// plane in YIQ space).
    pub hue: f32,
}

impl Augment {
    /// No augmentation at all (evaluation).
    pub fn none() -> Augment {
        Augment { rotate90: false, flip: false, brightness: 0.0, contrast: 0.0, hue: 0.0 }
    }

    /// The paper's training augmentation: rotations by k*90 degrees, flips, and small brightness (+-10%), contrast
    /// (+-10%) and hue (+-0.02 turn, about 7 degrees) changes.
    pub fn paper() -> Augment {
        Augment { rotate90: true, flip: true, brightness: 0.1, contrast: 0.1, hue: 0.02 }
    }

    /// Whether this draws nothing but the identity.
    pub fn is_none(&self) -> bool {
        !self.rotate90 && !self.flip && self.brightness == 0.0 && self.contrast == 0.0 && self.hue == 0.0
    }

    /// Draws one sample's parameters. Always consumes the same numbers from `rng`, whatever is enabled.
    pub fn sample<R: Rng + ?Sized>(&self, rng: &mut R) -> AugmentParams {
        let k: u8 = rng.random_range(0..4);
        let hflip = rng.random_bool(0.5);
        let vflip = rng.random_bool(0.5);
        let mut sym = |amount: f32| -> f32 {
            let u: f32 = rng.random_range(-1.0..=1.0);
            u * amount
        };
        let (b, c, h) = (sym(self.brightness), sym(self.contrast), sym(self.hue));
        AugmentParams {
            rot90: if self.rotate90 { k } else { 0 },
            hflip: self.flip && hflip,
            vflip: self.flip && vflip,
            brightness: 1.0 + b,
            contrast: 1.0 + c,
            hue: h,
        }
    }
}

/// The generator seed of sample `index` in epoch `epoch` of a run seeded `seed` (SplitMix64 mixing).
pub fn augment_seed(seed: u64, epoch: u64, index: u64) -> u64 {
    splitmix(splitmix(splitmix(seed) ^ epoch) ^ index)
}

/// A seeded ChaCha8 generator for sample `index` of epoch `epoch`.
pub fn sample_rng(seed: u64, epoch: u64, index: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(augment_seed(seed, epoch, index))
}

fn splitmix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// One drawn augmentation.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AugmentParams {
    /// Clockwise quarter turns, 0..4, applied first.
    pub rot90: u8,
    /// Mirror left-right after rotating.
    pub hflip: bool,
    /// Mirror top-bottom after rotating.
    pub vflip: bool,
    /// Brightness factor (1 = unchanged).
    pub brightness: f32,
    /// Contrast factor (1 = unchanged).
    pub contrast: f32,
    /// Hue rotation in turns (0 = unchanged).
    pub hue: f32,
}

impl AugmentParams {
    /// The identity.
    pub fn identity() -> AugmentParams {
        AugmentParams { rot90: 0, hflip: false, vflip: false, brightness: 1.0, contrast: 1.0, hue: 0.0 }
    }

    /// Where output pixel `(x, y)` of a `size x size` square is read from in the input.
    pub fn source_of(&self, x: usize, y: usize, size: usize) -> (usize, usize) {
        let m = size - 1;
        // Undo the flips (applied last), then the rotation.
        let x = if self.hflip { m - x } else { x };
        let y = if self.vflip { m - y } else { y };
        match self.rot90 % 4 {
            0 => (x, y),
            1 => (y, m - x),
            2 => (m - x, m - y),
            _ => (m - y, x),
        }
    }

    /// Applies this augmentation to a decoded sample: returns the model input (CHW `f32`, 0-255 minus the
    /// ImageNet means) and the mask (labels), both `size x size`.
    pub fn apply(&self, d: &Decoded) -> (Vec<f32>, Vec<u8>) {
        let s = d.size as usize;
        let n = s * s;
        let mut hwc = vec![0f32; 3 * n];
        let mut mask = vec![0u8; n];
        for y in 0..s {
            for x in 0..s {
                let (sx, sy) = self.source_of(x, y, s);
                let (src, dst) = (sy * s + sx, y * s + x);
                mask[dst] = d.mask[src];
                for c in 0..3 {
                    hwc[3 * dst + c] = d.rgb[3 * src + c] as f32;
                }
            }
        }
        self.photometric(&mut hwc);
        let mut chw = vec![0f32; 3 * n];
        for (p, px) in hwc.chunks_exact(3).enumerate() {
            for c in 0..3 {
                chw[c * n + p] = px[c] - IMAGENET_MEAN[c];
            }
        }
        (chw, mask)
    }

    /// Brightness, then contrast, then hue, on interleaved 0-255 values; clamps to 0-255 if anything changed.
    fn photometric(&self, hwc: &mut [f32]) {
        if self.brightness == 1.0 && self.contrast == 1.0 && self.hue == 0.0 {
            return;
        }
        if self.brightness != 1.0 {
            hwc.iter_mut().for_each(|v| *v *= self.brightness);
        }
        if self.contrast != 1.0 {
            let n = (hwc.len() / 3).max(1) as f64;
            let mean = hwc.chunks_exact(3).map(|p| luma(p) as f64).sum::<f64>() / n;
            let (c, m) = (self.contrast, mean as f32);
            hwc.iter_mut().for_each(|v| *v = m + c * (*v - m));
        }
        if self.hue != 0.0 {
            let t = hue_matrix(self.hue);
            for p in hwc.chunks_exact_mut(3) {
                let (r, g, b) = (p[0], p[1], p[2]);
                for (o, row) in p.iter_mut().zip(&t) {
                    *o = row[0] * r + row[1] * g + row[2] * b;
                }
            }
        }
        hwc.iter_mut().for_each(|v| *v = v.clamp(0.0, 255.0));
    }
}

/// Rec. 601 luminance.
fn luma(p: &[f32]) -> f32 {
    0.299 * p[0] + 0.587 * p[1] + 0.114 * p[2]
}

/// RGB -> RGB matrix rotating the (I, Q) chroma plane of YIQ by `turns` of a full circle.
fn hue_matrix(turns: f32) -> [[f32; 3]; 3] {
    const YIQ: [[f64; 3]; 3] = [[0.299, 0.587, 0.114], [0.595_716, -0.274_453, -0.321_263], [0.211_456, -0.522_591, 0.311_135]];
    let inv = invert3(YIQ);
    let (s, c) = (turns as f64 * std::f64::consts::TAU).sin_cos();
    let rot = [[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]];
    let m = mul3(inv, mul3(rot, YIQ));
    m.map(|row| row.map(|v| v as f32))
}

fn mul3(a: [[f64; 3]; 3], b: [[f64; 3]; 3]) -> [[f64; 3]; 3] {
    let mut out = [[0.0; 3]; 3];
    for i in 0..3 {
        for j in 0..3 {
            out[i][j] = (0..3).map(|k| a[i][k] * b[k][j]).sum();
        }
    }
    out
}

fn invert3(m: [[f64; 3]; 3]) -> [[f64; 3]; 3] {
    let cof = |r0: usize, r1: usize, c0: usize, c1: usize| m[r0][c0] * m[r1][c1] - m[r0][c1] * m[r1][c0];
    let adj = [
        [cof(1, 2, 1, 2), -cof(0, 2, 1, 2), cof(0, 1, 1, 2)],
        [-cof(1, 2, 0, 2), cof(0, 2, 0, 2), -cof(0, 1, 0, 2)],
        [cof(1, 2, 0, 1), -cof(0, 2, 0, 1), cof(0, 1, 0, 1)],
    ];
    let det = m[0][0] * adj[0][0] + m[0][1] * adj[1][0] + m[0][2] * adj[2][0];
    adj.map(|row| row.map(|v| v / det))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hue_matrix_is_identity_at_zero_and_keeps_grey() {
        let m = hue_matrix(0.0);
        for (i, row) in m.iter().enumerate() {
            for (j, v) in row.iter().enumerate() {
                assert!((v - if i == j { 1.0 } else { 0.0 }).abs() < 1e-5, "{m:?}");
            }
        }
        let m = hue_matrix(0.1);
        for row in m {
            assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-4, "grey must stay grey: {m:?}");
        }
    }

    #[test]
    fn quarter_turn_is_clockwise() {
        let p = AugmentParams { rot90: 1, ..AugmentParams::identity() };
        // Clockwise: the input's top-left corner (0,0) lands at the top-right (size-1, 0).
        assert_eq!(p.source_of(3, 0, 4), (0, 0));
        // Four quarter turns are the identity.
        for x in 0..4 {
            for y in 0..4 {
                let mut q = (x, y);
                for _ in 0..4 {
                    q = p.source_of(q.0, q.1, 4);
                }
                assert_eq!(q, (x, y));
            }
        }
    }

    #[test]
    fn sampling_respects_switches() {
        let mut rng = sample_rng(1, 2, 3);
        for _ in 0..50 {
            assert_eq!(Augment::none().sample(&mut rng), AugmentParams::identity());
            let p = Augment::paper().sample(&mut rng);
            assert!((0.9..=1.1).contains(&p.brightness) && (-0.02..=0.02).contains(&p.hue));
        }
    }
}
