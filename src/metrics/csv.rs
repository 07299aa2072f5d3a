//! The per-image score table as CSV, written atomically.

use std::io::Write;
use std::path::Path;

use super::report::ImageScore;
use crate::error::Result;
use crate::fsutil::write_atomic;

/// Column names of the per-image CSV, in order.
pub const CSV_HEADER: &str = "id,tp,fp,fn,tn,jaccard,threshold_jaccard,dice,accuracy,sensitivity,specificity";

/// The CSV text: [`CSV_HEADER`], then one line per image (metrics with 6 decimals). Ids containing a comma or
/// quote are quoted.
pub fn per_image_csv(scores: &[ImageScore]) -> String {
    let mut out = String::with_capacity(64 * (scores.len() + 1));
    out.push_str(CSV_HEADER);
    out.push('\n');
    for s in scores {
        let c = &s.confusion;
        let id = if s.id.contains([',', '"', '\n']) { format!("\"{}\"", s.id.replace('"', "\"\"")) } else { s.id.clone() };
        out.push_str(&format!(
            "{id},{},{},{},{},{:.6},{:.6},{:.6},{:.6},{:.6},{:.6}\n",
            c.tp, c.fp, c.fn_, c.tn, s.jaccard, s.threshold_jaccard, s.dice, s.accuracy, s.sensitivity, s.specificity
        ));
    }
    out
}

/// Writes [`per_image_csv`] to `path` atomically.
pub fn write_per_image_csv(path: impl AsRef<Path>, scores: &[ImageScore]) -> Result<()> {
    let text = per_image_csv(scores);
    write_atomic(path.as_ref(), |w| w.write_all(text.as_bytes()))
}
