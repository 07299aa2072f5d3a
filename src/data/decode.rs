//! Decoding and resizing: reads an image or mask file, squashes it to the square model size (image bilinear, mask
//! nearest neighbour), binarises the mask and turns pixels into the model's normalised CHW input.
//!
//! Rules for untrusted files (every error or warning names the file):
//! - Size limits, checked from the header BEFORE any pixel is decoded: a picture wider or taller than
//!   [`MAX_IMAGE_SIDE`] pixels, or whose decoded pixels would take more than [`MAX_DECODE_BYTES`], is refused with
//!   an error giving its dimensions. The decoders also run under that allocation cap.
//! - Non-image files, files larger than [`MAX_DECODE_BYTES`], pictures with a zero dimension and truncated PNGs
//!   are errors. A JPEG cut short (no end-of-image marker after its last scan) still decodes, the missing part
//!   filled by the decoder, with ONE warning per file naming it.
//! - A mask whose size differs from its image's is an error naming both files.
//! - Masks are binarised: a grey value `> 127` is lesion, the rest background (colour masks are converted to grey
//!   first). A mask holding any value other than 0 and 255 is still used that way, with ONE warning per file and
//!   process (see [`super::warn`]) naming it, the number of such pixels and its largest value; a 0/1 mask, which
//!   this rule reads as all background, is called out in that warning.

use std::path::Path;

use image::imageops::{self, FilterType};
use image::{DynamicImage, GrayImage, ImageDecoder, ImageError, ImageReader, Limits, RgbImage};

use super::discover::Sample;
use super::warn::warn_once;
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

/// Largest width or height of a picture the pipeline decodes.
pub const MAX_IMAGE_SIDE: u32 = 16384;

/// Largest decoded size of a picture (its pixels at their native depth), and the decoders' allocation cap: 1 GiB.
pub const MAX_DECODE_BYTES: u64 = 1 << 30;

/// The decoders' limits: the allocation cap only; the sides are checked by [`check_dimensions`] so that the
/// error can give them.
fn decode_limits() -> Limits {
    let mut limits = Limits::default();
    limits.max_alloc = Some(MAX_DECODE_BYTES);
    limits
}

/// A reader for `path` with the format guessed from the contents (not the extension) and the limits set.
fn reader(path: &Path) -> Result<ImageReader<std::io::BufReader<std::fs::File>>> {
    let mut reader = ImageReader::open(path).map_err(|e| Error::io(path, e))?.with_guessed_format().map_err(|e| Error::io(path, e))?;
    reader.limits(decode_limits());
    Ok(reader)
}

/// The whole file, refusing one larger than [`MAX_DECODE_BYTES`] (the JPEG decoder reads its input whole).
fn read_file(path: &Path) -> Result<Vec<u8>> {
    let len = std::fs::metadata(path).map_err(|e| Error::io(path, e))?.len();
    if len > MAX_DECODE_BYTES {
        return Err(Error::bad_file(path, format!("file is {len} bytes, over the {MAX_DECODE_BYTES}-byte limit for a picture")));
    }
    std::fs::read(path).map_err(|e| Error::io(path, e))
}

/// Whether JPEG data runs to its end-of-image marker. Walks the segments by their lengths (so the markers of an
/// embedded EXIF thumbnail do not count) and the entropy-coded data of each scan; data after the marker is
/// ignored. `true` for data that is not a JPEG or is malformed in ways the decoder already judged.
fn jpeg_is_complete(b: &[u8]) -> bool {
    if !b.starts_with(&[0xFF, 0xD8]) {
        return true;
    }
    let mut i = 2;
    loop {
        // The next marker: 0xFF, optional fill bytes 0xFF, then its code.
        match b.get(i..).and_then(|rest| rest.iter().position(|&x| x == 0xFF)) {
            Some(p) => i += p,
            None => return false,
        }
        while b.get(i) == Some(&0xFF) {
            i += 1;
        }
        let Some(&code) = b.get(i) else { return false };
        i += 1;
        match code {
            0xD9 => return true,
            0x00 | 0x01 | 0xD0..=0xD8 => continue,
            _ => {}
        }
        let Some(len) = b.get(i..i + 2).map(|l| u16::from_be_bytes([l[0], l[1]]) as usize) else { return false };
        if len < 2 {
            return true;
        }
        i += len;
        if i > b.len() {
            return false;
        }
        if code == 0xDA {
            // Entropy-coded data: ends at the first 0xFF that is neither stuffing (0xFF00) nor a restart marker.
            loop {
                match b[i..].iter().position(|&x| x == 0xFF) {
                    Some(p) => i += p,
                    None => return false,
                }
                let mut j = i + 1;
                while b.get(j) == Some(&0xFF) {
                    j += 1;
                }
                match b.get(j) {
                    None => return false,
                    Some(0x00 | 0xD0..=0xD7) => i = j + 1,
                    Some(_) => break,
                }
            }
        }
    }
}

/// Refuses a picture of `w x h` (as its header says) larger than [`MAX_IMAGE_SIDE`] or empty.
fn check_dimensions(path: &Path, (w, h): (u32, u32)) -> Result<()> {
    if w > MAX_IMAGE_SIDE || h > MAX_IMAGE_SIDE {
        return Err(Error::bad_file(
            path,
            format!("image is {w}x{h} pixels, larger than the {MAX_IMAGE_SIDE}x{MAX_IMAGE_SIDE} limit; refusing to decode it (downscale it first)"),
        ));
    }
    if w == 0 || h == 0 {
        return Err(Error::bad_file(path, format!("image is {w}x{h} pixels: it has no pixels")));
    }
    Ok(())
}

/// Opens and decodes any supported picture (format guessed from the contents, not the extension), refusing
/// pictures over the size limits (see the module docs) before decoding any pixel.
pub fn open_image(path: &Path) -> Result<DynamicImage> {
    let bytes = read_file(path)?;
    let mut reader = ImageReader::new(std::io::Cursor::new(bytes.as_slice())).with_guessed_format().map_err(|e| Error::io(path, e))?;
    reader.limits(decode_limits());
    let is_jpeg = reader.format() == Some(image::ImageFormat::Jpeg);
    let decoder = reader.into_decoder().map_err(|e| image_error(path, e))?;
    let dims = decoder.dimensions();
    check_dimensions(path, dims)?;
    let total = decoder.total_bytes();
    if total > MAX_DECODE_BYTES {
        return Err(Error::bad_file(
            path,
            format!(
                "image is {}x{} pixels of {:?}, {total} bytes decoded, over the {MAX_DECODE_BYTES}-byte limit; refusing to decode it",
                dims.0,
                dims.1,
                decoder.color_type()
            ),
        ));
    }
    // The output buffer counts towards the cap, as in `ImageReader::decode`.
    let mut decoder = decoder;
    let mut limits = decode_limits();
    limits.reserve(total).map_err(|e| image_error(path, e))?;
    decoder.set_limits(limits).map_err(|e| image_error(path, e))?;
    let image = DynamicImage::from_decoder(decoder).map_err(|e| image_error(path, e))?;
    if is_jpeg && !jpeg_is_complete(&bytes) {
        warn_once(
            path,
            "truncated",
            "JPEG data ends before its end-of-image marker (a truncated file?): the missing part is filled in by the decoder",
        );
    }
    Ok(image)
}

/// Width and height of a picture, read from its header only; pictures over the size limits are refused here
/// already (see the module docs).
pub fn image_dimensions(path: &Path) -> Result<(u32, u32)> {
    let dims = reader(path)?.into_dimensions().map_err(|e| image_error(path, e))?;
    check_dimensions(path, dims)?;
    Ok(dims)
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
    GrayImage::from_fn(size, size, |x, y| *mask.get_pixel(xs[x as usize], src(y, h)))
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
/// cannot be read or the mask's size differs from its image's; warns once per file about a mask that is not pure
/// 0/255 (see the module docs).
pub fn decode_sample(sample: &Sample, size: u32) -> Result<Decoded> {
    check_size(size)?;
    let rgb = read_rgb(&sample.image_path)?;
    let mask = read_gray(&sample.mask_path)?;
    if rgb.dimensions() != mask.dimensions() {
        return Err(size_mismatch(&sample.mask_path, mask.dimensions(), &sample.image_path, rgb.dimensions()));
    }
    warn_if_not_binary(&sample.mask_path, mask.as_raw());
    Ok(Decoded { size, rgb: resize_rgb(&rgb, size).into_raw(), mask: binarise(resize_mask(&mask, size).as_raw()) })
}

/// Warns (once per file) when a mask holds values other than 0 and 255.
fn warn_if_not_binary(path: &Path, gray: &[u8]) {
    let odd = gray.iter().filter(|&&v| v != 0 && v != 255).count();
    if odd == 0 {
        return;
    }
    let max = gray.iter().copied().max().unwrap_or(0);
    let hint =
        if max <= 127 { " (no value is above 127, so the whole mask reads as background: is it a 0/1 mask? save it as 0/255)" } else { "" };
    warn_once(
        path,
        "mask values",
        &format!(
            "mask has {odd} of {} pixels that are neither 0 nor 255 (largest value {max}); binarised as lesion where > 127{hint}",
            gray.len()
        ),
    );
}

/// The error for a mask whose size differs from its image's; names both files.
pub(crate) fn size_mismatch(mask: &Path, mask_dims: (u32, u32), image: &Path, image_dims: (u32, u32)) -> Error {
    Error::bad_file(
        mask,
        format!("mask is {}x{} but its image {} is {}x{}", mask_dims.0, mask_dims.1, image.display(), image_dims.0, image_dims.1),
    )
}

/// Rejects a model size of 0 or one too large to index.
pub(crate) fn check_size(size: u32) -> Result<()> {
    if size == 0 || size > 16384 {
        return Err(Error::InvalidValue { name: "size", msg: format!("model input size must be 1..=16384, got {size}") });
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
    fn jpeg_completeness_follows_segments_and_scans() {
        let mut jpeg = Vec::new();
        RgbImage::from_fn(40, 30, |x, y| image::Rgb([x as u8 * 6, y as u8 * 8, 255]))
            .write_to(&mut std::io::Cursor::new(&mut jpeg), image::ImageFormat::Jpeg)
            .unwrap();
        assert!(jpeg_is_complete(&jpeg));
        let mut trailing = jpeg.clone();
        trailing.extend_from_slice(b"appended data \xFF\xDA");
        assert!(jpeg_is_complete(&trailing), "data after the end marker is ignored");
        for cut in [jpeg.len() - 2, jpeg.len() - 1, jpeg.len() * 2 / 3, 3, 2] {
            assert!(!jpeg_is_complete(&jpeg[..cut]), "cut at {cut} of {}", jpeg.len());
        }
        // An APP segment holding an end marker (as an EXIF thumbnail does) is skipped by its length.
        let mut app = vec![0xFF, 0xD8, 0xFF, 0xE1, 0x00, 0x06, 0xFF, 0xD9, 0xFF, 0xD9];
        app.extend_from_slice(&jpeg[2..jpeg.len() / 2]);
        assert!(!jpeg_is_complete(&app));
        assert!(jpeg_is_complete(b"not a jpeg"));
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
