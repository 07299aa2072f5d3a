//! Evaluation exactly as the ISIC 2017 challenge scored: predict at the model size, resize the
//! probability map to each image's original size, binarise at 0.5, score each image against its
//! mask, and average the per-image metrics.

use crate::data::decode::read_gray;
use crate::data::Dataset;
use crate::error::Result;
use crate::infer::{segment_file, InferOptions};
use crate::metrics::{ImageScore, ScoreReport};
use crate::model::HypercolumnNet;

/// Scores `model` on every sample of `dataset`.
pub fn evaluate(model: &HypercolumnNet, dataset: &Dataset, opts: InferOptions) -> Result<ScoreReport> {
    let mut scores = Vec::with_capacity(dataset.len());
    for sample in dataset.iter() {
        let seg = segment_file(model, &sample.image_path, opts)?;
        let truth = read_gray(&sample.mask_path)?;
        if truth.width() != seg.width || truth.height() != seg.height {
            return Err(crate::error::Error::bad_file(
                &sample.mask_path,
                format!("mask is {}x{}, its image is {}x{}", truth.width(), truth.height(), seg.width, seg.height),
            ));
        }
        scores.push(ImageScore::from_gray(sample.id.clone(), &seg.mask, truth.as_raw())?);
    }
    ScoreReport::from_images(scores)
}
