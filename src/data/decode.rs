//! Decoding and resizing: reads an image or mask file, squashes it to the square model size (image bilinear, mask
//! nearest neighbour), binarises the mask and turns pixels into the model's normalised CHW input.

use std::path::Path;

use image::imageops::{self, FilterType};
use image::{DynamicImage, GrayImage, ImageError, ImageReader, RgbImage};

use super::discover::Sample;
use crate::error::{Error, Result};

/// ImageNet channel means (R, G, B) on 0-255 values, subtracted from every input pixel.
pub const IMAGENET_MEAN: [f32; 3] = [123.68, 116.78, 103.94];

/// A sample decoded at the model size: RGB pixels (HWC, `size*size*3` bytes) and its mask as labels
/// (`size*size` bytes, 1 = lesion, 0 = background). This is also the unit stored in the pre-decoded cache.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decoded {
    /// Side of the square, in pixels.
    pub size: u32,
    /// Interleaved RGB, row-major, `size*size*3` bytes.
    pub rgb: Vec<u8>,
    /// Labels in {0, 1}, row-major, `size*size` bytes.
    pub mask: Vec<u8>,
}

/// Turns an `image` error about `path` into the crate's error, naming the file.
pub(crate) fn image_error(path: &Path, err: ImageError) -> Error {
    match err {
        ImageError::IoError(e) => Error::io(path, e),
        other => Error::bad_file(path, format!("cannot read image: {other}")),
    }
}

/// Opens and decodes any supported picture (format guessed from the contents, not the extension).
pub fn open_image(path: &Path) -> Result<DynamicImage> {
    let reader = ImageReader::open(path).map_err(|e| Error::io(path, e))?;
    let reader = reader
        .with_guessed_format()
        .map_err(|e| Error::io(path, e))?;
    reader.decode().map_err(|e| image_error(path, e))
}

/// Width and height of a picture, read from its header only.
pub fn image_dimensions(path: &Path) -> Result<(u32, u32)> {
    let reader = ImageReader::open(path).map_err(|e| Error::io(path, e))?;
    let reader = reader
        .with_guessed_format()
        .map_err(|e| Error::io(path, e))?;
    reader.into_dimensions().map_err(|e| image_error(path, e))
}

/// Reads a picture as 8-bit RGB.
pub fn read_rgb(path: &Path) -> Result<RgbImage> {
    Ok(open_image(path)?.into_rgb8())
}

/// Reads a picture as 8-bit grey (a mask or a prediction).
pub fn read_gray(path: &Path) -> Result<GrayImage> {
    Ok(open_image(path)?.into_luma8())
}

/// Squashes an RGB image to `size x size` with a bilinear (triangle) filter; a no-op copy at that size already.
pub fn resize_rgb(img: &RgbImage, size: u32) -> RgbImage {
    if img.dimensions() == (size, size) {
        return img.clone();
    }
    imageops::resize(img, size, size, FilterType::Triangle)
}

/// Squashes a grey mask to `size x size` by nearest neighbour (pixel centres: source index
/// `floor((x + 0.5) * w / size)`), so that labels stay labels.
pub fn resize_mask(mask: &GrayImage, size: u32) -> GrayImage {
    let (w, h) = mask.dimensions();
    if (w, h) == (size, size) {
        return mask.clone();
    }
    let src = |dst: u32, n: u32| -> u32 {
        let s = ((dst as f64 + 0.5) * n as f64 / size as f64).floor() as u32;
        s.min(n - 1)
    };
    let xs: Vec<u32> = (0..size).map(|x| src(x, w)).collect();
    GrayImage::from_fn(size, size, |x, y| {
        *mask.get_pixel(xs[x as usize], src(y, h))
    })
}

/// Mask values to labels: `> 127` is lesion (1), the rest background (0).
pub fn binarise(gray: &[u8]) -> Vec<u8> {
    gray.iter().map(|&v| u8::from(v > 127)).collect()
}

/// Interleaved RGB bytes (HWC) to planar CHW `f32` on 0-255 minus [`IMAGENET_MEAN`].
pub fn normalise_chw(rgb: &[u8]) -> Vec<f32> {
    let n = rgb.len() / 3;
    let mut out = vec![0f32; 3 * n];
    for (p, px) in rgb.chunks_exact(3).enumerate() {
        for c in 0..3 {
            out[c * n + p] = px[c] as f32 - IMAGENET_MEAN[c];
        }
    }
    out
}

/// Decodes a sample's image and mask and brings both to `size x size`. Fails, naming the files, when either
/// cannot be read or the mask's size differs from its image's.
pub fn decode_sample(sample: &Sample, size: u32) -> Result<Decoded> {
    check_size(size)?;
    let rgb = read_rgb(&sample.image_path)?;
    let mask = read_gray(&sample.mask_path)?;
    if rgb.dimensions() != mask.dimensions() {
        return Err(size_mismatch(
            &sample.mask_path,
            mask.dimensions(),
            &sample.image_path,
            rgb.dimensions(),
        ));
    }
    Ok(Decoded {
        size,
        rgb: resize_rgb(&rgb, size).into_raw(),
        mask: binarise(resize_mask(&mask, size).as_raw()),
    })
}

/// The error for a mask whose size differs from its image's; names both files.
pub(crate) fn size_mismatch(
    mask: &Path,
    mask_dims: (u32, u32),
    image: &Path,
    image_dims: (u32, u32),
) -> Error {
    Error::bad_file(
        mask,
        format!(
            "mask is {}x{} but its image {} is {}x{}",
            mask_dims.0,
            mask_dims.1,
            image.display(),
            image_dims.0,
            image_dims.1
        ),
    )
}

/// Rejects a model size of 0 or one too large to index.
pub(crate) fn check_size(size: u32) -> Result<()> {
    if size == 0 || size > 16384 {
        return Err(Error::InvalidValue {
            name: "size",
            msg: format!("model input size must be 1..=16384, got {size}"),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_keeps_labels_and_centres() {
        // 4x4 -> 2x2 picks source pixels 1 and 3 in each direction.
        let m = GrayImage::from_fn(4, 4, |x, y| image::Luma([(y * 4 + x) as u8]));
        let r = resize_mask(&m, 2);
        assert_eq!(r.as_raw(), &vec![5, 7, 13, 15]);
        // 2x2 -> 4x4 repeats each pixel twice.
        let r = resize_mask(&GrayImage::from_raw(2, 2, vec![0, 255, 255, 0]).unwrap(), 4);
        assert_eq!(&r.as_raw()[..4], &[0, 0, 255, 255]);
    }

    #[test]
    fn normalise_is_planar_minus_mean() {
        let v = normalise_chw(&[124, 117, 104, 0, 0, 0]);
        let want = [0.32, -123.68, 0.22, -116.78, 0.06, -103.94];
        for (a, b) in v.iter().zip(want) {
            assert!((a - b).abs() < 1e-4, "{v:?}");
        }
        assert_eq!(binarise(&[0, 127, 128, 255]), vec![0, 0, 1, 1]);
    }
}
