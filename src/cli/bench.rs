//! `hyperseg-engine bench`: times a training step and dense inference of the model on a device
//! (see `hyperseg_engine::bench`), or writes the parity dump for `bench/pytorch_reference.py`.

use std::path::PathBuf;

use clap::{Args, ValueEnum};
use hyperseg_engine::bench::{dump_parity, run_bench, write_report_json, BenchOptions, Precision};
use hyperseg_engine::model::ModelConfig;
use hyperseg_engine::Result;

use super::device_args::DeviceChoice;
use super::DeviceArgs;

/// Numeric precision.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum PrecisionArg {
    /// IEEE fp32, TF32 tensor cores off.
    Fp32,
    /// fp32 storage, TF32 tensor cores allowed in cuBLAS and cuDNN.
    Tf32,
    /// bf16 mixed precision: convolutions and GEMMs on bf16 operands (bf16 tensor cores, fp32 accumulation), bf16
    /// activations in dense inference; weights and Adam state fp32.
    Bf16,
    /// bf16 GEMMs only (bf16 tensor cores, fp32 accumulation): convolutions in TF32, fp32 activations.
    Bf16Gemm,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum PresetArg {
    /// The paper's model: VGG16-BN at 224x224, batch 5, 1600 pixels, MLP 4096-2048-2.
    Paper,
    /// The narrow 64x64 model.
    Tiny,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum DensePathArg {
    /// Full hypercolumns for every pixel (the path PyTorch's reference times).
    Naive,
    /// First MLP layer per tap at its own resolution, then upsampled and summed.
    Factored,
    /// Both, one after the other.
    Both,
}

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Where to compute.
    #[arg(long, value_enum, default_value_t = DeviceChoice::Auto)]
    pub device: DeviceChoice,
    /// fp32, tf32, bf16 (bf16 convolutions and GEMMs; dense inference with bf16 activations), or bf16-gemm (bf16
    /// GEMMs only: TF32 convolutions, fp32 activations; beside bf16 it measures the bf16 convolutions and, for dense
    /// inference, the bf16 activations).
    #[arg(long, value_enum, default_value_t = PrecisionArg::Fp32)]
    pub precision: PrecisionArg,
    /// The model to time (random weights).
    #[arg(long, value_enum, default_value_t = PresetArg::Paper)]
    pub preset: PresetArg,
    /// Untimed iterations before the timed ones.
    #[arg(long, default_value_t = 3)]
    pub warmup: usize,
    /// Timed iterations; the median is reported.
    #[arg(long, default_value_t = 10)]
    pub iters: usize,
    /// Also write the results as JSON to this file.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Which dense inference path(s) to time; `dense_infer_ms` is the naive one when timed.
    #[arg(long, value_enum, default_value_t = DensePathArg::Both)]
    pub dense_path: DensePathArg,
    /// Do not time dense inference.
    #[arg(long)]
    pub skip_dense: bool,
    /// Pixels per tile of dense inference.
    #[arg(long, default_value_t = 224 * 28)]
    pub tile_pixels: usize,
    /// Seed of the random weights and inputs.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Bitwise-reproducible algorithms and reductions (slower).
    #[arg(long)]
    pub deterministic: bool,
    /// Cap on device memory, e.g. 12GiB (default: the smaller of the card's memory and 12 GiB).
    #[arg(long, value_name = "BYTES")]
    pub mem_limit: Option<String>,
    /// Instead of timing: write the parity dump (weights, inputs, logits, loss per step, gradients)
    /// into DIR for `bench/pytorch_reference.py --parity DIR`.
    #[arg(long, value_name = "DIR")]
    pub parity_dump: Option<PathBuf>,
    /// Training steps in the parity dump.
    #[arg(long, default_value_t = 3)]
    pub parity_steps: usize,
}

pub fn run(a: BenchArgs) -> Result<()> {
    let precision = match a.precision {
        PrecisionArg::Fp32 => Precision::Fp32,
        PrecisionArg::Tf32 => Precision::Tf32,
        PrecisionArg::Bf16 => Precision::Bf16,
        PrecisionArg::Bf16Gemm => Precision::Bf16Gemm,
    };
    let config = match a.preset {
        PresetArg::Paper => ModelConfig::paper(),
        PresetArg::Tiny => ModelConfig::tiny(),
    };
    let device = DeviceArgs {
        device: a.device,
        tf32: precision.tf32(),
        bf16_gemm: precision.bf16_gemm(),
        bf16: precision.bf16_mixed(),
        deterministic: a.deterministic,
        mem_limit: a.mem_limit.clone(),
    }
    .open()?;

    if let Some(dir) = &a.parity_dump {
        dump_parity(dir, &config, &device, a.parity_steps)?;
        println!(
            "parity dump of preset {} ({} steps, {}, {}) written to {}",
            config.preset,
            a.parity_steps,
            device,
            precision.as_str(),
            dir.display()
        );
        println!(
            "check it with: python3 bench/pytorch_reference.py --parity {} --device {}",
            dir.display(),
            if device.is_cuda() { "cuda" } else { "cpu" }
        );
        return Ok(());
    }

    let mut opts = BenchOptions::new(config);
    opts.precision = precision;
    opts.warmup = a.warmup;
    opts.iters = a.iters;
    opts.tile_pixels = a.tile_pixels;
    opts.seed = a.seed;
    opts.dense_naive = !a.skip_dense && matches!(a.dense_path, DensePathArg::Naive | DensePathArg::Both);
    opts.dense_factored = !a.skip_dense && matches!(a.dense_path, DensePathArg::Factored | DensePathArg::Both);
    let report = run_bench(&opts, &device)?;
    print!("{}", report.table());
    if let Some(path) = &a.json {
        write_report_json(path, &report)?;
        println!("JSON written to {}", path.display());
    }
    Ok(())
}
