//! Discovery of ISIC-style data folders: finds the images and masks of a split, pairs them by ISIC id and checks
//! that each mask is readable and the size of its image. Produces a [`Dataset`] of [`Sample`]s.
//!
//! Layouts recognised, in this order, for a folder `DIR`:
//! 1. `DIR/images/ID.jpg` with `DIR/masks/ID_segmentation.png`;
//! 2. the official ISIC download: a subfolder whose name ends in `_Data` (or `_Input`) holding the images and one
//!    whose name contains `GroundTruth` holding the masks (when several do, the one naming `Part1`);
//! 3. images and `*_segmentation` masks side by side in `DIR` itself.
//!
//! Files other than `.jpg`/`.jpeg`/`.png` pictures (metadata CSVs, `*_superpixels.png`, hidden files) are skipped.
//! An image without a mask is an error naming it; a mask without an image is skipped with a warning naming it
//! (see [`super::warn`]). A picture whose file name is not valid UTF-8 is skipped with a warning showing the name
//! lossily (rename it to use it). An empty folder, or one without pictures, is an error naming it. Pictures whose
//! header announces more than [`super::decode::MAX_IMAGE_SIDE`] pixels a side are refused here already.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rayon::prelude::*;

use super::decode::{image_dimensions, size_mismatch};
use super::ids::{is_image_file, is_mask_stem, match_key, stem};
use super::warn::warn_once;
use crate::error::{Error, Result};

/// One image with its ground-truth mask.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sample {
    /// The ISIC id (`ISIC_0000000`) or, for other names, the image's file stem.
    pub id: String,
    /// The RGB image.
    pub image_path: PathBuf,
    /// Its mask: 8-bit grey, lesion > 127.
    pub mask_path: PathBuf,
}

/// Where a split keeps its images and masks (the same folder for the side-by-side layout).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    /// Folder of the images.
    pub images: PathBuf,
    /// Folder of the masks.
    pub masks: PathBuf,
}

/// A list of samples sorted by id, as found in one folder.
#[derive(Clone, Debug, Default)]
pub struct Dataset {
    root: PathBuf,
    samples: Vec<Sample>,
}

impl Dataset {
    /// Finds and checks every image/mask pair under `dir` (see the module docs for the layouts). Errors name the
    /// file at fault: an empty folder, an image without a mask, an unreadable image or mask, a mask whose size
    /// differs from its image's (both named), two files with the same id.
    pub fn discover(dir: impl AsRef<Path>) -> Result<Dataset> {
        let dir = dir.as_ref();
        let layout = detect_layout(dir)?;
        let flat = layout.images == layout.masks;
        let images = keyed_files(&layout.images, |s| !is_mask_stem(s))?;
        if images.is_empty() {
            return Err(Error::bad_file(&layout.images, "no images (.jpg, .jpeg, .png) found in this folder"));
        }
        let masks = keyed_files(&layout.masks, |s| !flat || is_mask_stem(s))?;
        for (id, mask_path) in &masks {
            if !images.contains_key(id) {
                warn_once(mask_path, "mask without image", &format!("mask without an image in {}: skipped", layout.images.display()));
            }
        }
        let mut samples = Vec::with_capacity(images.len());
        for (id, image_path) in images {
            let Some(mask_path) = masks.get(&id) else {
                return Err(Error::bad_file(
                    &image_path,
                    format!("no mask for this image in {} (expected {id}_segmentation.png)", layout.masks.display()),
                ));
            };
            samples.push(Sample { id, image_path, mask_path: mask_path.clone() });
        }
        samples.par_iter().map(check_pair).collect::<Result<Vec<()>>>()?;
        Ok(Dataset { root: dir.to_path_buf(), samples })
    }

    /// A dataset from samples listed elsewhere (not checked; decoding will report bad files).
    pub fn from_samples(root: impl Into<PathBuf>, samples: Vec<Sample>) -> Dataset {
        Dataset { root: root.into(), samples }
    }

    /// The folder the samples came from.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// All samples, sorted by id for discovered datasets.
    pub fn samples(&self) -> &[Sample] {
        &self.samples
    }

    /// Number of samples.
    pub fn len(&self) -> usize {
        self.samples.len()
    }

    /// Whether there are no samples.
    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    /// The sample at `index`, if any.
    pub fn get(&self, index: usize) -> Option<&Sample> {
        self.samples.get(index)
    }

    /// Iterates over the samples.
    pub fn iter(&self) -> std::slice::Iter<'_, Sample> {
        self.samples.iter()
    }
}

/// Lists the pictures to run a model on, without masks: `dir/images/`, the `*_Data` subfolder, or `dir` itself;
/// `*_segmentation` files are skipped. Returns `(id, path)` sorted by id; an empty result is an error naming
/// the folder.
pub fn find_images(dir: impl AsRef<Path>) -> Result<Vec<(String, PathBuf)>> {
    let dir = dir.as_ref();
    let folder = if dir.join("images").is_dir() {
        dir.join("images")
    } else {
        match detect_layout(dir) {
            Ok(layout) => layout.images,
            Err(_) => dir.to_path_buf(),
        }
    };
    let images = keyed_files(&folder, |s| !is_mask_stem(s))?;
    if images.is_empty() {
        return Err(Error::bad_file(&folder, "no images (.jpg, .jpeg, .png) found in this folder"));
    }
    Ok(images.into_iter().collect())
}

/// Works out where `dir` keeps its images and masks (see the module docs).
pub fn detect_layout(dir: &Path) -> Result<Layout> {
    let meta = std::fs::metadata(dir).map_err(|e| Error::io(dir, e))?;
    if !meta.is_dir() {
        return Err(Error::bad_file(dir, "expected a folder of images and masks"));
    }
    let images = dir.join("images");
    if images.is_dir() {
        let masks = dir.join("masks");
        if !masks.is_dir() {
            return Err(Error::bad_file(dir, "has an images/ folder but no masks/ folder"));
        }
        return Ok(Layout { images, masks });
    }
    let subdirs: Vec<PathBuf> = list_dir(dir)?.into_iter().filter(|p| p.is_dir()).collect();
    let name = |p: &PathBuf| p.file_name().map(|n| n.to_string_lossy().to_ascii_lowercase()).unwrap_or_default();
    let data: Vec<&PathBuf> = subdirs.iter().filter(|p| name(p).ends_with("_data") || name(p).ends_with("_input")).collect();
    let mut truth: Vec<&PathBuf> = subdirs.iter().filter(|p| name(p).contains("groundtruth")).collect();
    if truth.len() > 1 && truth.iter().filter(|p| name(p).contains("part1")).count() == 1 {
        truth.retain(|p| name(p).contains("part1"));
    }
    let listed = |v: &[&PathBuf]| v.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ");
    match (data.len(), truth.len()) {
        (1, 1) => Ok(Layout { images: data[0].clone(), masks: truth[0].clone() }),
        (0, 0) => {
            if list_dir(dir)?.is_empty() {
                return Err(Error::bad_file(dir, "folder is empty: expected images/ and masks/ folders"));
            }
            Ok(Layout { images: dir.to_path_buf(), masks: dir.to_path_buf() })
        }
        (1, 0) => Err(Error::bad_file(dir, format!("found image folder {} but no *GroundTruth* mask folder", data[0].display()))),
        (0, 1) => Err(Error::bad_file(dir, format!("found mask folder {} but no *_Data image folder", truth[0].display()))),
        _ => Err(Error::bad_file(
            dir,
            format!(
                "ambiguous layout: image folders [{}], mask folders [{}]; point at a folder holding one split",
                listed(&data),
                listed(&truth)
            ),
        )),
    }
}

/// The entries of `dir`, sorted.
fn list_dir(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        out.push(entry.map_err(|e| Error::io(dir, e))?.path());
    }
    out.sort();
    Ok(out)
}

/// Picture files of `dir` whose stem passes `keep`, keyed by [`match_key`]; two files with one key is an error.
fn keyed_files(dir: &Path, keep: impl Fn(&str) -> bool) -> Result<BTreeMap<String, PathBuf>> {
    let mut map: BTreeMap<String, PathBuf> = BTreeMap::new();
    for path in list_dir(dir)? {
        if path.file_name().is_some_and(|n| n.to_str().is_none()) {
            // Not UTF-8: ids and messages need text, so such a picture is skipped, loudly.
            let lossy = PathBuf::from(path.to_string_lossy().into_owned());
            if is_image_file(&lossy) && path.is_file() {
                warn_once(&path, "non-UTF-8 name", "file name is not valid UTF-8: skipped (rename it to use it)");
            }
            continue;
        }
        if !is_image_file(&path) || !path.is_file() {
            continue;
        }
        let Some(s) = stem(&path) else { continue };
        if !keep(s) {
            continue;
        }
        let key = match_key(s);
        if let Some(other) = map.get(&key) {
            return Err(Error::bad_file(&path, format!("same id {key} as {}", other.display())));
        }
        map.insert(key, path);
    }
    Ok(map)
}

/// Reads both headers and compares sizes.
fn check_pair(s: &Sample) -> Result<()> {
    let image = image_dimensions(&s.image_path)?;
    let mask = image_dimensions(&s.mask_path)?;
    if image != mask {
        return Err(size_mismatch(&s.mask_path, mask, &s.image_path, image));
    }
    Ok(())
}
