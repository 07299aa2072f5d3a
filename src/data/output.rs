//! Model outputs back to the original picture: bilinear resizing of a probability map, thresholding to a 0/255
//! mask, and writing that mask as a PNG the ISIC scorer reads.

use std::path::Path;

use image::codecs::png::PngEncoder;
use image::{ExtendedColorType, ImageEncoder};

use crate::error::{Error, Result};
use crate::fsutil::write_atomic;

/// Resizes a `src_w x src_h` map (row-major) to `dst_w x dst_h` bilinearly with centre-aligned pixels
/// (source coordinate `(x + 0.5) * src / dst - 0.5`, clamped to the edges; PyTorch's `align_corners=False`).
pub fn resize_bilinear(src: &[f32], src_w: u32, src_h: u32, dst_w: u32, dst_h: u32) -> Result<Vec<f32>> {
    if src_w == 0 || src_h == 0 || dst_w == 0 || dst_h == 0 {
        return Err(Error::InvalidValue { name: "size", msg: format!("cannot resize {src_w}x{src_h} to {dst_w}x{dst_h}") });
    }
    if src.len() != src_w as usize * src_h as usize {
        return Err(Error::InvalidValue { name: "map", msg: format!("{} values for a {src_w}x{src_h} map", src.len()) });
    }
    let taps = |dst: u32, n: u32| -> Vec<(usize, usize, f32)> {
        (0..dst)
            .map(|d| {
                let u = ((d as f64 + 0.5) * n as f64 / dst as f64 - 0.5).clamp(0.0, (n - 1) as f64);
                let i0 = u.floor() as usize;
                let i1 = (i0 + 1).min(n as usize - 1);
                (i0, i1, (u - i0 as f64) as f32)
            })
            .collect()
    };
    let (xs, ys) = (taps(dst_w, src_w), taps(dst_h, src_h));
    let sw = src_w as usize;
    let mut out = Vec::with_capacity(dst_w as usize * dst_h as usize);
    for &(y0, y1, fy) in &ys {
        let (r0, r1) = (&src[y0 * sw..(y0 + 1) * sw], &src[y1 * sw..(y1 + 1) * sw]);
        for &(x0, x1, fx) in &xs {
            let top = r0[x0] + fx * (r0[x1] - r0[x0]);
            let bottom = r1[x0] + fx * (r1[x1] - r1[x0]);
            out.push(top + fy * (bottom - top));
        }
    }
    Ok(out)
}

/// Brings a square `size x size` lesion-probability map back to the original `width x height`, bilinearly.
pub fn resize_probabilities(prob: &[f32], size: u32, width: u32, height: u32) -> Result<Vec<f32>> {
    resize_bilinear(prob, size, size, width, height)
}

/// Thresholds probabilities to a mask: 255 where `p > threshold` (lesion), else 0.
pub fn probabilities_to_mask(prob: &[f32], threshold: f32) -> Vec<u8> {
    prob.iter().map(|&p| if p > threshold { 255 } else { 0 }).collect()
}

/// Writes an 8-bit grey `width x height` mask as a PNG, atomically.
pub fn write_mask_png(path: impl AsRef<Path>, width: u32, height: u32, mask: &[u8]) -> Result<()> {
    let path = path.as_ref();
    if mask.len() != width as usize * height as usize {
        return Err(Error::InvalidValue { name: "mask", msg: format!("{} values for a {width}x{height} mask", mask.len()) });
    }
    write_atomic(path, |w| PngEncoder::new(w).write_image(mask, width, height, ExtendedColorType::L8).map_err(std::io::Error::other))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bilinear_upsamples_centre_aligned() {
        // 2 -> 4 in x: sample points at -0.25, 0.25, 0.75, 1.25 -> clamped 0, 0.25, 0.75, 1.
        let out = resize_bilinear(&[0.0, 1.0], 2, 1, 4, 1).unwrap();
        assert_eq!(out, vec![0.0, 0.25, 0.75, 1.0]);
        // Same size is the identity.
        let m: Vec<f32> = (0..12).map(|v| v as f32).collect();
        assert_eq!(resize_bilinear(&m, 4, 3, 4, 3).unwrap(), m);
        assert!(resize_bilinear(&m, 5, 3, 4, 3).is_err());
        assert_eq!(probabilities_to_mask(&[0.2, 0.5, 0.7], 0.5), vec![0, 0, 255]);
    }
}
