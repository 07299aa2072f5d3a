//! `hyperseg-engine eval`: a checkpoint scored on a folder with the ISIC 2017 rules.

use std::path::{Path, PathBuf};

use clap::Args;
use hyperseg_engine::data::Dataset;
use hyperseg_engine::infer::InferOptions;
use hyperseg_engine::metrics::{write_per_image_csv, ScoreReport};
use hyperseg_engine::model::{load_checkpoint, DensePath};
use hyperseg_engine::train::evaluate;
use hyperseg_engine::Result;

use super::DeviceArgs;

#[derive(Args, Debug)]
pub struct EvalArgs {
    /// The checkpoint (.safetensors).
    #[arg(long)]
    pub model: PathBuf,
    /// An ISIC-style folder of images and masks.
    #[arg(long)]
    pub data: PathBuf,
    /// Also write the metrics as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Also write per-image metrics as CSV here.
    #[arg(long)]
    pub csv: Option<PathBuf>,
    /// Use the naive dense path instead of the factored one (same result, slower).
    #[arg(long)]
    pub naive: bool,
    /// Pixels per tile of dense inference.
    #[arg(long, default_value_t = 224 * 28)]
    pub tile_pixels: usize,
    #[command(flatten)]
    pub device: DeviceArgs,
}

/// Prints the metrics, and writes them as JSON and per-image CSV where asked.
pub fn emit_report(r: &ScoreReport, json: Option<&Path>, csv: Option<&Path>) -> Result<()> {
    print_report(r);
    if let Some(path) = json {
        r.write_json(path)?;
    }
    if let Some(path) = csv {
        write_per_image_csv(path, &r.per_image)?;
    }
    Ok(())
}

fn print_report(r: &ScoreReport) {
    println!("images              {}", r.n_images);
    println!("jaccard             {:.4}", r.jaccard);
    println!("threshold jaccard   {:.4}", r.threshold_jaccard);
    println!("dice                {:.4}", r.dice);
    println!("accuracy            {:.4}", r.accuracy);
    println!("sensitivity         {:.4}", r.sensitivity);
    println!("specificity         {:.4}", r.specificity);
}

pub fn run(a: EvalArgs) -> Result<()> {
    let device = a.device.open()?;
    let (model, _) = load_checkpoint(&a.model, &device)?;
    let dataset = Dataset::discover(&a.data)?;
    let opts = InferOptions { path: if a.naive { DensePath::Naive } else { DensePath::Factored }, tile_pixels: a.tile_pixels };
    let report = evaluate(&model, &dataset, opts)?;
    emit_report(&report, a.json.as_deref(), a.csv.as_deref())
}
