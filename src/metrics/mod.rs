//! ISIC 2017 lesion-segmentation scoring, as the official scorer does it: per-image TP/FP/FN/TN on masks
//! binarised at > 128, Jaccard, Dice, accuracy, sensitivity, specificity (1.0 where a denominator is 0) and the
//! thresholded Jaccard, each averaged over images.

pub mod confusion;
pub mod csv;
pub mod dirs;
pub mod report;

pub use confusion::{Confusion, BINARY_THRESHOLD, JACCARD_THRESHOLD};
pub use csv::{per_image_csv, write_per_image_csv, CSV_HEADER};
pub use dirs::{score_dirs, score_files};
pub use report::{ImageScore, ScoreReport};
