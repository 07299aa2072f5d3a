//! `hyperseg-engine score`: ISIC 2017 metrics of any method's mask PNGs.

use std::path::PathBuf;

use clap::Args;
use hyperseg_engine::metrics::score_dirs;
use hyperseg_engine::Result;

#[derive(Args, Debug)]
pub struct ScoreArgs {
    /// Folder of predicted masks (PNG, 0-255, binarised at > 128).
    #[arg(long)]
    pub pred: PathBuf,
    /// Folder of ground-truth masks (or an ISIC folder with masks/ or *_GroundTruth/).
    #[arg(long)]
    pub truth: PathBuf,
    /// Also write the metrics as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Also write per-image metrics as CSV here.
    #[arg(long)]
    pub csv: Option<PathBuf>,
}

pub fn run(a: ScoreArgs) -> Result<()> {
    let report = score_dirs(&a.pred, &a.truth)?;
    super::eval::emit_report(&report, a.json.as_deref(), a.csv.as_deref())
}
