//! Scoring a folder of predicted masks against a folder of ground-truth masks, paired by ISIC id.
//!
//! The truth folder may be the masks themselves, a split with a `masks/` subfolder, or an official ISIC folder
//! with a `*GroundTruth*` subfolder. Predictions and truths are paired by ISIC id (`ISIC_` + 7 digits) else by
//! file stem, `_segmentation` optional on either side. Every truth needs a prediction of exactly its size;
//! predictions without a truth are ignored.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rayon::prelude::*;

use super::report::{ImageScore, ScoreReport};
use crate::data::decode::read_gray;
use crate::data::ids::{is_image_file, match_key, stem};
use crate::error::{Error, Result};

/// Scores every ground-truth mask under `truth_dir` against its prediction in `pred_dir`.
pub fn score_dirs(pred_dir: impl AsRef<Path>, truth_dir: impl AsRef<Path>) -> Result<ScoreReport> {
    let (pred_dir, truth_dir) = (pred_dir.as_ref(), truth_dir.as_ref());
    let truth_dir = mask_folder(truth_dir)?;
    let truths = keyed_masks(&truth_dir)?;
    if truths.is_empty() {
        return Err(Error::bad_file(&truth_dir, "no ground-truth masks (.png) found in this folder"));
    }
    let preds = keyed_masks(pred_dir)?;
    let mut pairs = Vec::with_capacity(truths.len());
    for (id, truth) in truths {
        let Some(pred) = preds.get(&id) else {
            return Err(Error::bad_file(&truth, format!("no prediction for this mask in {}", pred_dir.display())));
        };
        pairs.push((id, pred.clone(), truth));
    }
    let per_image = pairs.par_iter().map(|(id, pred, truth)| score_files(id, pred, truth)).collect::<Result<Vec<ImageScore>>>()?;
    ScoreReport::from_images(per_image)
}

/// Scores one prediction file against one truth file; sizes must match (both files named otherwise).
pub fn score_files(id: &str, pred: &Path, truth: &Path) -> Result<ImageScore> {
    let p = read_gray(pred)?;
    let t = read_gray(truth)?;
    if p.dimensions() != t.dimensions() {
        let ((pw, ph), (tw, th)) = (p.dimensions(), t.dimensions());
        return Err(Error::bad_file(pred, format!("prediction is {pw}x{ph} but its ground truth {} is {tw}x{th}", truth.display())));
    }
    ImageScore::from_gray(id, p.as_raw(), t.as_raw())
}

/// `dir/masks`, else a single `*GroundTruth*` subfolder (the `Part1` one if several), else `dir`.
fn mask_folder(dir: &Path) -> Result<PathBuf> {
    std::fs::metadata(dir).map_err(|e| Error::io(dir, e))?;
    if dir.join("masks").is_dir() {
        return Ok(dir.join("masks"));
    }
    let mut gt = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let path = entry.map_err(|e| Error::io(dir, e))?.path();
        let name = path.file_name().map(|n| n.to_string_lossy().to_ascii_lowercase()).unwrap_or_default();
        if path.is_dir() && name.contains("groundtruth") {
            gt.push((name.contains("part1"), path));
        }
    }
    if gt.len() > 1 {
        gt.retain(|(part1, _)| *part1);
    }
    Ok(if gt.len() == 1 { gt.remove(0).1 } else { dir.to_path_buf() })
}

/// `.png` masks of `dir` keyed by id; two files with one id is an error naming both.
fn keyed_masks(dir: &Path) -> Result<BTreeMap<String, PathBuf>> {
    let mut map: BTreeMap<String, PathBuf> = BTreeMap::new();
    let mut paths = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        paths.push(entry.map_err(|e| Error::io(dir, e))?.path());
    }
    paths.sort();
    for path in paths {
        let is_png = path.extension().and_then(|e| e.to_str()).is_some_and(|e| e.eq_ignore_ascii_case("png"));
        if !is_png || !is_image_file(&path) || !path.is_file() {
            continue;
        }
        let Some(s) = stem(&path) else { continue };
        let key = match_key(s);
        if let Some(other) = map.get(&key) {
            return Err(Error::bad_file(&path, format!("same id {key} as {}", other.display())));
        }
        map.insert(key, path);
    }
    Ok(map)
}
