//! Segmenting image files: load at the model size, dense inference, the probability map resized
//! back to the image's original size, and the binary mask (ISIC: probability > 0.5).

use std::path::Path;

use crate::data::{load_for_inference, probabilities_to_mask, resize_probabilities};
use crate::error::Result;
use crate::model::{DensePath, HypercolumnNet};
use crate::tensor::Tensor;

/// One segmented image at its original size.
pub struct Segmentation {
    pub width: u32,
    pub height: u32,
    /// Lesion probability per pixel, row-major.
    pub probability: Vec<f32>,
    /// 255 where the probability exceeds 0.5, else 0.
    pub mask: Vec<u8>,
}

/// Options of dense inference.
#[derive(Clone, Copy, Debug)]
pub struct InferOptions {
    pub path: DensePath,
    /// Pixels per tile of the dense MLP (bounds device memory).
    pub tile_pixels: usize,
}

impl Default for InferOptions {
    /// The factored path, 224 * 28 pixels per tile (about 100 MB of fp32 activations at width 4096).
    fn default() -> Self {
        InferOptions { path: DensePath::Factored, tile_pixels: 224 * 28 }
    }
}

/// Segments the image file at `path` with `model`.
pub fn segment_file(model: &HypercolumnNet, path: &Path, opts: InferOptions) -> Result<Segmentation> {
    let size = model.config.input_size;
    let input = load_for_inference(path, size as u32)?;
    let images = Tensor::from_vec(input.image, [1, 3, size, size], model.device())?;
    let prob = model.predict_dense(&images, opts.path, opts.tile_pixels)?.remove(0);
    let probability = resize_probabilities(&prob, size as u32, input.width, input.height)?;
    let mask = probabilities_to_mask(&probability, 0.5);
    Ok(Segmentation { width: input.width, height: input.height, probability, mask })
}
