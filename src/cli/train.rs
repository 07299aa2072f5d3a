//! `hyperseg-engine train`.

use std::path::PathBuf;

use clap::Args;
use hyperseg_engine::data::Augment;
use hyperseg_engine::infer::InferOptions;
use hyperseg_engine::model::ModelConfig;
use hyperseg_engine::train::{bundled_sample, train, TrainOptions};
use hyperseg_engine::Result;

use super::progress::Bar;
use super::DeviceArgs;

#[derive(Args, Debug)]
pub struct TrainArgs {
    /// Training data: an ISIC-style folder (default: the bundled sample).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Validation data, scored after every epoch (default with the bundled sample: its val split).
    #[arg(long)]
    pub val: Option<PathBuf>,
    /// The run folder: checkpoints, metrics.jsonl, training.png.
    #[arg(long)]
    pub out: PathBuf,
    /// Model and recipe preset: paper or tiny.
    #[arg(long, default_value = "tiny")]
    pub preset: String,
    /// Epochs (default: 120 for paper, 25 for tiny).
    #[arg(long)]
    pub epochs: Option<usize>,
    /// Resume from a checkpoint of an earlier run (its last.safetensors).
    #[arg(long)]
    pub resume: Option<PathBuf>,
    /// The run's seed.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Input size (a multiple of 32), overriding the preset.
    #[arg(long)]
    pub input_size: Option<usize>,
    /// Images per batch, overriding the preset.
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Pixels sampled per batch, overriding the preset.
    #[arg(long)]
    pub sample_points: Option<usize>,
    /// Adam's learning rate, overriding the preset.
    #[arg(long)]
    pub lr: Option<f32>,
    /// Train without augmentation.
    #[arg(long)]
    pub no_augment: bool,
    /// Decoding threads ahead of the compute (default 2).
    #[arg(long)]
    pub workers: Option<usize>,
    /// Capture the training step as a CUDA graph after two warm-up steps and replay it (GPU
    /// only; not with --deterministic).
    #[arg(long)]
    pub cuda_graph: bool,
    #[command(flatten)]
    pub device: DeviceArgs,
}

pub fn run(a: TrainArgs) -> Result<()> {
    let mut config = ModelConfig::preset(&a.preset)?;
    let default_epochs = if config.preset == "paper" { 120 } else { 25 };
    if let Some(v) = a.input_size {
        config.input_size = v;
    }
    if let Some(v) = a.batch_size {
        config.batch_size = v;
    }
    if let Some(v) = a.sample_points {
        config.sample_points = v;
    }
    if let Some(v) = a.lr {
        config.learning_rate = v;
    }
    config.validate()?;
    let (data, val) = match a.data {
        Some(d) => (d, a.val),
        None => {
            let (t, v) = bundled_sample();
            eprintln!("training on the bundled ISIC 2017 sample ({})", t.display());
            (t, a.val.or(Some(v)))
        }
    };
    let device = a.device.open()?;
    let opts = TrainOptions {
        data,
        val,
        out: a.out.clone(),
        config,
        epochs: a.epochs.unwrap_or(default_epochs),
        seed: a.seed,
        resume: a.resume,
        augment: if a.no_augment { Augment::none() } else { Augment::paper() },
        workers: a.workers.unwrap_or(2),
        infer: InferOptions::default(),
        cuda_graph: a.cuda_graph,
    };
    let started = std::time::Instant::now();
    let summary = train(&opts, &device, &mut Bar::new())?;
    let secs = started.elapsed().as_secs_f64();
    match summary.records.last() {
        Some(r) => {
            let val = r.val_jaccard.map(|j| format!(", validation Jaccard {j:.4}")).unwrap_or_default();
            println!("trained {} epochs in {secs:.1} s: final loss {:.4}{val}", r.epoch, r.train_loss);
        }
        None => println!("nothing to train: the checkpoint already has {} epochs", opts.epochs),
    }
    if let Some(best) = summary.records.iter().filter_map(|r| r.val_jaccard).reduce(f64::max) {
        println!("best validation Jaccard {best:.4}");
    }
    println!("checkpoints and logs in {}", a.out.display());
    Ok(())
}
