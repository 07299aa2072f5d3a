//! Argument parsing (clap) and dispatch to one file per subcommand.

mod bench;
mod device_args;
mod eval;
mod info;
mod predict;
mod progress;
mod score;
mod train;

use clap::{Parser, Subcommand};

pub use device_args::DeviceArgs;

/// Trains and runs the deep-hypercolumn skin-lesion segmentation model.
#[derive(Parser, Debug)]
#[command(name = "hyperseg-engine", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Train a model (without --data: the bundled ISIC 2017 sample, validated on its val split).
    Train(train::TrainArgs),
    /// Evaluate a checkpoint on an ISIC-style folder with the ISIC 2017 rules.
    Eval(eval::EvalArgs),
    /// Segment images: a mask PNG at each image's original size, and an overlay PNG.
    Predict(predict::PredictArgs),
    /// Score mask PNGs against ground-truth masks with the ISIC 2017 rules.
    Score(score::ScoreArgs),
    /// Time a training step and dense inference (or write the PyTorch parity dump).
    Bench(bench::BenchArgs),
    /// Show the CUDA devices, driver, cuBLAS and cuDNN found (or why each is absent).
    Info,
}

/// Runs one command.
pub fn run(cli: Cli) -> hyperseg_engine::Result<()> {
    match cli.command {
        Command::Train(a) => train::run(a),
        Command::Eval(a) => eval::run(a),
        Command::Predict(a) => predict::run(a),
        Command::Score(a) => score::run(a),
        Command::Bench(a) => bench::run(a),
        Command::Info => info::run(),
    }
}
