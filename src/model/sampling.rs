//! Uniform sampling of training pixels from a batch, with their labels.

use rand::Rng;

use crate::backend::SamplePoint;

/// `count` pixels drawn uniformly (with replacement) from `n` images of `size x size`, the same
/// number from each image as far as possible (the paper: 1600 pixels from 5 images, 320 each),
/// and their labels read from `masks` (`n * size * size` class indices 0/1, row-major).
///
/// The points come grouped by image (image `i * n / count` for point `i`): the GPU gather of a
/// small tap (`gather_fwd_tiled_f32`) gives 32 consecutive points to one warp, which then reads
/// one image's plane of each channel rather than up to `n` of them.
pub fn sample_points(n: usize, size: usize, count: usize, masks: &[u8], rng: &mut impl Rng) -> (Vec<SamplePoint>, Vec<u32>) {
    let mut points = Vec::with_capacity(count);
    let mut labels = Vec::with_capacity(count);
    for i in 0..count {
        let image = i * n / count;
        let (y, x) = (rng.random_range(0..size), rng.random_range(0..size));
        points.push(SamplePoint { image: image as u32, y: y as u32, x: x as u32 });
        labels.push(masks[(image * size + y) * size + x] as u32);
    }
    (points, labels)
}
