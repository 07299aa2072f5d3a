//! Training the hypercolumn model: epochs of sparse steps (sample pixels, forward, loss,
//! backward, Adam), validation with the ISIC rules after each epoch, best and last checkpoints,
//! resume, a JSON-lines metrics log and a PNG plot of the run.
//!
//! Everything random is a pure function of the run's seed: the data order and augmentation of
//! epoch `e` (see [`crate::data::Loader`]), and the sampled pixels and dropout masks of step
//! `t`. So a run resumed from the checkpoint of epoch `e` continues exactly as if it had never
//! stopped (in deterministic mode, bitwise).
//!
//! Steps are queued without waiting for the device (see [`step`]): each step's loss and a
//! finiteness check of its gradients are read after the next step has been queued.
//!
//! Failure handling: a loss or any gradient that is not finite stops the run with
//! [`Error::Diverged`] naming the step, and no checkpoint is written after it, so the last
//! checkpoint (of the previous epoch) stays the last good one. After each epoch the metrics log
//! and plot are written before the checkpoint: a crash in between leaves a log one epoch ahead,
//! which a resumed run trims, and the checkpoint files stay consistent with each other (see
//! [`crate::model::save_checkpoint`]), so `kill -9` at any moment resumes cleanly.

mod evaluate;
mod font;
pub mod graph;
mod log;
mod plot;
pub mod step;

pub use evaluate::evaluate;
pub use graph::{StepGraph, StepRunner};
pub use log::{read_log, write_log, EpochRecord};
pub use plot::plot_run;
pub use step::{gradient_check, non_finite_gradient, queue_step, PendingStep, StepInputs};

use std::path::{Path, PathBuf};
use std::time::Instant;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::backend::cuda::nvtx::range;
use crate::data::{Augment, Dataset, Loader, LoaderConfig};
use crate::device::Device;
use crate::error::{Error, Result};
use crate::infer::InferOptions;
use crate::model::{load_checkpoint, load_optimizer, sample_points, save_checkpoint, HypercolumnNet, ModelConfig, TrainingState};
use crate::nn::Module;
use crate::optim::{Adam, AdamConfig};
use crate::tensor::Tensor;

/// What a training run needs.
#[derive(Clone, Debug)]
pub struct TrainOptions {
    /// Training data (an ISIC-style folder).
    pub data: PathBuf,
    /// Validation data, scored after every epoch.
    pub val: Option<PathBuf>,
    /// The run folder: checkpoints, metrics log, plot.
    pub out: PathBuf,
    /// The model and recipe (ignored when resuming: the checkpoint's configuration is used).
    pub config: ModelConfig,
    /// Total epochs of the run (a resumed run continues up to this count).
    pub epochs: usize,
    /// The run's seed.
    pub seed: u64,
    /// A checkpoint to resume from (`last.safetensors` of an earlier run).
    pub resume: Option<PathBuf>,
    /// Augmentation of training images.
    pub augment: Augment,
    /// Decoding threads ahead of the compute.
    pub workers: usize,
    /// Dense inference settings for validation.
    pub infer: InferOptions,
    /// Capture the training step as a CUDA graph after two warm-up steps and replay it
    /// ([`StepRunner`]); ignored, with a notice, where it cannot be used.
    pub cuda_graph: bool,
}

/// Hooks for progress display.
pub trait TrainObserver {
    /// Called once before the first step with the steps per epoch and the epochs to run.
    fn on_start(&mut self, _steps_per_epoch: usize, _epochs: std::ops::Range<usize>) {}
    /// Called after every optimiser step.
    fn on_step(&mut self, _epoch: usize, _step: u64, _loss: f32, _images: usize) {}
    /// Called after every epoch's validation and checkpoint.
    fn on_epoch(&mut self, _record: &EpochRecord) {}
    /// Called with a one-time message for the user (CUDA graphs given up, and why).
    fn on_notice(&mut self, _message: &str) {}
}

/// An observer that shows nothing.
pub struct Silent;
impl TrainObserver for Silent {}

/// The outcome of a run.
#[derive(Clone, Debug)]
pub struct TrainSummary {
    pub records: Vec<EpochRecord>,
    pub last_checkpoint: PathBuf,
    pub best_checkpoint: Option<PathBuf>,
}

/// The bundled sample of ISIC 2017 images: `(train, val)` folders.
pub fn bundled_sample() -> (PathBuf, PathBuf) {
    let compiled = Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/sample");
    let root = if compiled.is_dir() { compiled } else { PathBuf::from("assets/sample") };
    (root.join("train"), root.join("val"))
}

/// The pixel-sampling RNG of step `step`.
fn step_rng(seed: u64, step: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed ^ step.wrapping_mul(0x9E37_79B9_7F4A_7C15))
}

/// Trains a model as `opts` says, on `device`.
pub fn train(opts: &TrainOptions, device: &Device, observer: &mut dyn TrainObserver) -> Result<TrainSummary> {
    // Temporary files of a run killed mid-save (complete files are never torn; see crate::fsutil).
    crate::fsutil::remove_stale_temps(&opts.out);
    let (model, mut state, mut records) = match &opts.resume {
        Some(ckpt) => {
            let (model, c) = load_checkpoint(ckpt, device)?;
            let state = c.training.ok_or_else(|| {
                Error::bad_file(
                    ckpt,
                    "has no training state to resume from (not saved by a training run, and its .json sidecar is missing)",
                )
            })?;
            (model, state, read_log(&opts.out.join("metrics.jsonl"))?)
        }
        None => {
            let mut rng = ChaCha8Rng::seed_from_u64(opts.seed);
            let model = HypercolumnNet::new(opts.config.clone(), &mut rng, device)?;
            (model, TrainingState { epoch: 0, step: 0, seed: opts.seed, best_jaccard: 0.0 }, Vec::new())
        }
    };
    // A log ahead of the checkpoint (a crash between the two writes) is trimmed.
    records.retain(|r| r.epoch <= state.epoch);
    let config = model.config.clone();
    let mut adam = Adam::new(model.parameters(), AdamConfig { lr: config.learning_rate, ..Default::default() })?;
    if let Some(ckpt) = &opts.resume {
        load_optimizer(ckpt, &model, &mut adam)?;
    }

    let train_set = Dataset::discover(&opts.data)?;
    let val_set = opts.val.as_ref().map(Dataset::discover).transpose()?;
    let loader_cfg = LoaderConfig {
        augment: opts.augment,
        workers: opts.workers,
        drop_last: train_set.len() >= config.batch_size,
        ..LoaderConfig::train(config.batch_size, config.input_size as u32, state.seed)
    };
    let loader = Loader::from_dataset(train_set, loader_cfg)?;
    let size = config.input_size;
    let last = opts.out.join("last.safetensors");
    let best = opts.out.join("best.safetensors");
    observer.on_start(loader.batches_per_epoch(), state.epoch..opts.epochs);
    let mut runner = StepRunner::new(opts.cuda_graph);

    for epoch in state.epoch..opts.epochs {
        let started = Instant::now();
        let (mut loss_sum, mut steps, mut images) = (0.0f64, 0usize, 0usize);
        // Reads a finished step's loss (waiting only for that step) and accounts for it.
        let mut account = |done: PendingStep, observer: &mut dyn TrainObserver| -> Result<()> {
            let (step, n) = (done.step, done.images);
            let value = done.finish()?;
            loss_sum += value as f64;
            steps += 1;
            images += n;
            observer.on_step(epoch, step + 1, value, n);
            Ok(())
        };
        let mut pending: Option<PendingStep> = None;
        for batch in loader.epoch(epoch as u64) {
            let batch = batch?;
            let n = batch.len();
            let x = Tensor::from_vec(batch.images, [n, 3, size, size], device)?;
            let (points, labels) = sample_points(n, size, config.sample_points, &batch.masks, &mut step_rng(state.seed, state.step));
            let queued = runner.queue(&model, &mut adam, StepInputs::new(&x, &points, &labels, state.step, epoch))?;
            if let Some(notice) = runner.take_notice() {
                observer.on_notice(&notice);
            }
            state.step += 1;
            if let Some(done) = pending.replace(queued) {
                account(done, observer)?;
            }
        }
        if let Some(done) = pending.take() {
            account(done, observer)?;
        }
        let train_seconds = started.elapsed().as_secs_f64();
        let val = match &val_set {
            Some(v) => {
                let _range = range("validation");
                Some(evaluate(&model, v, opts.infer)?)
            }
            None => None,
        };
        state.epoch = epoch + 1;
        let jaccard = val.as_ref().map(|r| r.jaccard);
        let improved = jaccard.is_some_and(|j| j > state.best_jaccard || state.epoch == 1);
        if let Some(j) = jaccard.filter(|_| improved) {
            state.best_jaccard = j;
        }
        let record = EpochRecord::new(
            state.epoch,
            state.step,
            loss_sum / steps.max(1) as f64,
            images as f64 / train_seconds,
            started.elapsed().as_secs_f64(),
            val.as_ref(),
        );
        records.push(record.clone());
        // The log before the checkpoint: after a crash in between, a resumed run trims the log.
        write_log(&opts.out.join("metrics.jsonl"), &records)?;
        plot_run(&opts.out.join("training.png"), &records)?;
        save_checkpoint(&last, &model, Some(&adam), Some(&state))?;
        if improved {
            save_checkpoint(&best, &model, None, Some(&state))?;
        }
        observer.on_epoch(&record);
    }
    Ok(TrainSummary { records, last_checkpoint: last, best_checkpoint: best.exists().then_some(best) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gradient_check_sees_nan_and_infinity() {
        let dev = Device::Cpu;
        let a = Tensor::from_vec(vec![1.0, 2.0], [2], &dev).unwrap().to_variable().unwrap();
        let b = Tensor::from_vec(vec![3.0; 3], [3], &dev).unwrap().to_variable().unwrap();
        assert_eq!(non_finite_gradient(&[a.clone(), b.clone()]).unwrap(), None, "no gradients yet");
        // loss = sum(a * k) + sum(b * k'): the gradients are k and k'.
        let run = |ka: Vec<f32>, kb: Vec<f32>| {
            a.zero_grad();
            b.zero_grad();
            let ka = Tensor::from_vec(ka, [2], &dev).unwrap();
            let kb = Tensor::from_vec(kb, [3], &dev).unwrap();
            let loss = a.mul(&ka).unwrap().sum_all().unwrap().add(&b.mul(&kb).unwrap().sum_all().unwrap()).unwrap();
            loss.backward().unwrap();
            non_finite_gradient(&[a.clone(), b.clone()]).unwrap()
        };
        assert_eq!(run(vec![1.0, -1.0], vec![0.5; 3]), None);
        assert!(run(vec![1.0, f32::NAN], vec![0.5; 3]).unwrap().is_nan());
        assert_eq!(run(vec![1.0, 1.0], vec![0.5, f32::INFINITY, 0.0]), Some(f32::INFINITY));
        assert_eq!(run(vec![1.0, 1.0], vec![0.5, f32::NEG_INFINITY, 0.0]), Some(f32::INFINITY));
        assert!(run(vec![f32::INFINITY, 1.0], vec![0.5, f32::NAN, 0.0]).unwrap().is_nan());
        // Large but finite gradients are fine (their sum would overflow f32).
        assert_eq!(run(vec![3e38, 3e38], vec![3e38; 3]), None);
    }
}
