//! A picture to look at a prediction with: the original image with the predicted lesion tinted green and the
//! lesion's boundary drawn in solid yellow, written as a PNG.

use std::path::Path;

use image::codecs::png::PngEncoder;
use image::{ExtendedColorType, ImageEncoder, Rgb, RgbImage};

use super::decode::read_rgb;
use crate::error::{Error, Result};
use crate::fsutil::write_atomic;

/// Colour mixed into lesion pixels.
pub const TINT: [u8; 3] = [0, 255, 0];
/// Share of [`TINT`] in a lesion pixel (the rest is the original pixel).
pub const TINT_ALPHA: f32 = 0.4;
/// Colour of the boundary pixels.
pub const BOUNDARY: [u8; 3] = [255, 230, 0];

/// Writes to `path` (atomically) the picture at `image_path` with the lesion of `mask` overlaid: every lesion pixel
/// mixed 40% with [`TINT`], and the lesion's boundary (lesion pixels with a background 4-neighbour inside the
/// image) in solid [`BOUNDARY`].
///
/// `mask` is row-major at the image's original `width x height`, 0 for background and 255 (any non-zero value)
/// for lesion. A picture or mask of another size is an [`Error::BadFile`] naming `image_path`.
pub fn write_overlay_png(path: &Path, image_path: &Path, mask: &[u8], width: u32, height: u32) -> Result<()> {
    let mut img = read_rgb(image_path)?;
    if img.dimensions() != (width, height) {
        return Err(Error::bad_file(
            image_path,
            format!("image is {}x{} but the mask to overlay is {width}x{height}", img.width(), img.height()),
        ));
    }
    if mask.len() != width as usize * height as usize {
        return Err(Error::bad_file(image_path, format!("the mask to overlay has {} values, not {width}x{height}", mask.len())));
    }
    overlay(&mut img, mask);
    write_atomic(path, |w| {
        PngEncoder::new(w).write_image(img.as_raw(), width, height, ExtendedColorType::Rgb8).map_err(std::io::Error::other)
    })
}

/// Tints and outlines `img` in place with `mask` (same size, checked by the caller).
fn overlay(img: &mut RgbImage, mask: &[u8]) {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let lesion = |x: usize, y: usize| mask[y * w + x] != 0;
    for y in 0..h {
        for x in 0..w {
            if !lesion(x, y) {
                continue;
            }
            let boundary = (x > 0 && !lesion(x - 1, y))
                || (x + 1 < w && !lesion(x + 1, y))
                || (y > 0 && !lesion(x, y - 1))
                || (y + 1 < h && !lesion(x, y + 1));
            let px = img.get_pixel_mut(x as u32, y as u32);
            *px = if boundary {
                Rgb(BOUNDARY)
            } else {
                Rgb(std::array::from_fn(|c| (px.0[c] as f32 * (1.0 - TINT_ALPHA) + TINT[c] as f32 * TINT_ALPHA).round() as u8))
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tints_only_the_lesion_and_outlines_it() {
        let dir = tempfile::tempdir().unwrap();
        let (w, h) = (9u32, 7u32);
        let src = RgbImage::from_fn(w, h, |x, y| Rgb([10 * x as u8, 20 * y as u8, 100]));
        let image_path = dir.path().join("ISIC_0000001.png");
        src.save(&image_path).unwrap();
        // A 5x3 lesion block at x 2..7, y 2..5, plus a lesion column touching the right edge at x 8, y 0..7.
        let mut mask = vec![0u8; (w * h) as usize];
        for y in 0..h {
            for x in 0..w {
                if ((2..7).contains(&x) && (2..5).contains(&y)) || x == 8 {
                    mask[(y * w + x) as usize] = 255;
                }
            }
        }
        let out = dir.path().join("out/overlay.png");
        write_overlay_png(&out, &image_path, &mask, w, h).unwrap();
        let got = image::open(&out).unwrap().into_rgb8();
        assert_eq!(got.dimensions(), (w, h));
        for (x, y, p) in got.enumerate_pixels() {
            let orig = src.get_pixel(x, y).0;
            let in_block = (2..7).contains(&x) && (2..5).contains(&y);
            let interior = (3..6).contains(&x) && y == 3;
            let want = if x == 8 {
                // Its left neighbour is background on every row; the image edge does not count.
                BOUNDARY
            } else if in_block && !interior {
                BOUNDARY
            } else if interior {
                std::array::from_fn(|c| (orig[c] as f32 * 0.6 + TINT[c] as f32 * 0.4).round() as u8)
            } else {
                orig
            };
            assert_eq!(p.0, want, "pixel ({x}, {y})");
        }
        // A lesion filling the whole image has no boundary: all of it is tinted.
        write_overlay_png(&out, &image_path, &vec![255; (w * h) as usize], w, h).unwrap();
        let full = image::open(&out).unwrap().into_rgb8();
        assert!(full.pixels().all(|p| p.0 != BOUNDARY));
        assert_eq!(full.get_pixel(0, 0).0, [0, 102, 60]);
    }

    #[test]
    fn size_mismatch_names_the_image() {
        let dir = tempfile::tempdir().unwrap();
        let image_path = dir.path().join("ISIC_0000002.png");
        RgbImage::new(4, 3).save(&image_path).unwrap();
        let out = dir.path().join("o.png");
        for (mask_len, w, h) in [(12, 3, 4), (20, 5, 4), (11, 4, 3)] {
            let err = write_overlay_png(&out, &image_path, &vec![0; mask_len], w, h).unwrap_err();
            assert!(matches!(err, Error::BadFile { .. }), "{err}");
            assert!(err.to_string().contains("ISIC_0000002.png"), "{err}");
        }
        assert!(!out.exists());
        let missing = write_overlay_png(&out, &dir.path().join("nope.png"), &[0; 12], 4, 3).unwrap_err();
        assert!(missing.to_string().contains("nope.png"), "{missing}");
    }
}
