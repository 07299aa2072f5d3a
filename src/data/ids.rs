//! File-name rules shared by discovery and scoring: which files are images, and the key that pairs an image with
//! its mask (the ISIC id `ISIC_` + 7 digits where the name has one, else the stem without `_segmentation`).

use std::path::Path;

/// Suffix that ISIC ground-truth masks carry after the id (`ISIC_0000000_segmentation.png`).
pub const MASK_SUFFIX: &str = "_segmentation";

/// The first ISIC id (`ISIC_` followed by exactly 7 digits) in `name`, if any.
///
/// ```
/// use hyperseg_engine::data::ids::isic_id;
/// assert_eq!(isic_id("ISIC_0000123_segmentation"), Some("ISIC_0000123"));
/// assert_eq!(isic_id("pred-ISIC_0000123"), Some("ISIC_0000123"));
/// assert_eq!(isic_id("ISIC_123"), None);
/// ```
pub fn isic_id(name: &str) -> Option<&str> {
    let bytes = name.as_bytes();
    let mut from = 0;
    while let Some(pos) = name[from..].find("ISIC_") {
        let start = from + pos;
        let digits = &bytes[start + 5..];
        let n = digits.iter().take_while(|b| b.is_ascii_digit()).count();
        if n == 7 {
            return Some(&name[start..start + 12]);
        }
        from = start + 5;
    }
    None
}

/// The key used to pair files: the ISIC id if the stem has one, else the stem with an optional trailing
/// `_segmentation` removed.
///
/// ```
/// use hyperseg_engine::data::ids::match_key;
/// assert_eq!(match_key("ISIC_0000001_segmentation"), "ISIC_0000001");
/// assert_eq!(match_key("lesion7_segmentation"), "lesion7");
/// assert_eq!(match_key("lesion7"), "lesion7");
/// ```
pub fn match_key(stem: &str) -> String {
    match isic_id(stem) {
        Some(id) => id.to_string(),
        None => stem.strip_suffix(MASK_SUFFIX).unwrap_or(stem).to_string(),
    }
}

/// Whether `stem` names an ISIC mask (ends in `_segmentation`).
pub fn is_mask_stem(stem: &str) -> bool {
    stem.ends_with(MASK_SUFFIX)
}

/// The file stem as UTF-8, if the path has one.
pub fn stem(path: &Path) -> Option<&str> {
    path.file_stem().and_then(|s| s.to_str())
}

/// Whether `path` is a picture the pipeline reads: a `.jpg`, `.jpeg` or `.png` (any case) that is not hidden and
/// not an ISIC auxiliary file such as `*_superpixels.png`.
pub fn is_image_file(path: &Path) -> bool {
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
        return false;
    };
    if name.starts_with('.') {
        return false;
    }
    let ext_ok = path
        .extension()
        .and_then(|e| e.to_str())
        .map(|e| matches!(e.to_ascii_lowercase().as_str(), "jpg" | "jpeg" | "png"))
        .unwrap_or(false);
    ext_ok && !stem(path).map(|s| s.ends_with("_superpixels")).unwrap_or(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_need_exactly_seven_digits() {
        assert_eq!(isic_id("ISIC_00000001"), None);
        assert_eq!(isic_id("ISIC_000000"), None);
        assert_eq!(isic_id("x_ISIC_12_ISIC_7654321"), Some("ISIC_7654321"));
    }

    #[test]
    fn image_files_are_filtered() {
        assert!(is_image_file(Path::new("a/ISIC_0000000.JPG")));
        assert!(is_image_file(Path::new("ISIC_0000000_segmentation.png")));
        assert!(!is_image_file(Path::new("ISIC_0000000_superpixels.png")));
        assert!(!is_image_file(Path::new("ISIC-2017_Training_Data_metadata.csv")));
        assert!(!is_image_file(Path::new(".hidden.png")));
        assert!(!is_image_file(Path::new("noext")));
    }
}
