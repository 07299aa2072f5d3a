//! Per-image scores and their means: the [`ScoreReport`] the CLI prints as JSON.

use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::confusion::Confusion;
use crate::error::{Error, Result};
use crate::fsutil::write_atomic;

/// The scores of one image.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ImageScore {
    /// ISIC id (or file stem).
    pub id: String,
    /// Its pixel counts.
    pub confusion: Confusion,
    /// TP / (TP + FP + FN).
    pub jaccard: f64,
    /// Jaccard, or 0 below 0.65.
    pub threshold_jaccard: f64,
    /// 2TP / (2TP + FP + FN).
    pub dice: f64,
    /// (TP + TN) / all.
    pub accuracy: f64,
    /// TP / (TP + FN).
    pub sensitivity: f64,
    /// TN / (TN + FP).
    pub specificity: f64,
}

impl ImageScore {
    /// Scores from counts.
    pub fn new(id: impl Into<String>, c: Confusion) -> ImageScore {
        ImageScore {
            id: id.into(),
            confusion: c,
            jaccard: c.jaccard(),
            threshold_jaccard: c.threshold_jaccard(),
            dice: c.dice(),
            accuracy: c.accuracy(),
            sensitivity: c.sensitivity(),
            specificity: c.specificity(),
        }
    }

    /// Scores two grey masks (0-255, binarised at > 128) of the same size.
    pub fn from_gray(id: impl Into<String>, pred: &[u8], truth: &[u8]) -> Result<ImageScore> {
        Ok(ImageScore::new(id, Confusion::from_gray(pred, truth)?))
    }
}

/// Each metric as the mean over images (the ISIC ranking rule), with the per-image scores.
///
/// Serialises to JSON with exactly the keys `jaccard`, `threshold_jaccard`, `dice`, `accuracy`, `sensitivity`,
/// `specificity`, `n_images`; the per-image scores go to the CSV ([`super::write_per_image_csv`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ScoreReport {
    /// Mean Jaccard index.
    pub jaccard: f64,
    /// Mean thresholded Jaccard.
    pub threshold_jaccard: f64,
    /// Mean Dice coefficient.
    pub dice: f64,
    /// Mean accuracy.
    pub accuracy: f64,
    /// Mean sensitivity.
    pub sensitivity: f64,
    /// Mean specificity.
    pub specificity: f64,
    /// Number of images.
    pub n_images: usize,
    /// The scores behind the means, sorted as given.
    #[serde(skip)]
    pub per_image: Vec<ImageScore>,
}

impl ScoreReport {
    /// Means over `per_image`; an empty list is an error.
    pub fn from_images(per_image: Vec<ImageScore>) -> Result<ScoreReport> {
        if per_image.is_empty() {
            return Err(Error::InvalidValue { name: "scores", msg: "no images to score".into() });
        }
        let n = per_image.len() as f64;
        let mean = |f: fn(&ImageScore) -> f64| per_image.iter().map(f).sum::<f64>() / n;
        Ok(ScoreReport {
            jaccard: mean(|s| s.jaccard),
            threshold_jaccard: mean(|s| s.threshold_jaccard),
            dice: mean(|s| s.dice),
            accuracy: mean(|s| s.accuracy),
            sensitivity: mean(|s| s.sensitivity),
            specificity: mean(|s| s.specificity),
            n_images: per_image.len(),
            per_image,
        })
    }

    /// The counts of all images added up (for a pooled figure; the ISIC figures are the means).
    pub fn pooled(&self) -> Confusion {
        self.per_image.iter().map(|s| s.confusion).sum()
    }

    /// The report as pretty JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a report of numbers serialises")
    }

    /// Writes [`ScoreReport::to_json`] to `path` atomically.
    pub fn write_json(&self, path: impl AsRef<Path>) -> Result<()> {
        let json = self.to_json();
        write_atomic(path.as_ref(), |w| writeln!(w, "{json}"))
    }
}
