//! Training the hypercolumn model: epochs of sparse steps (sample pixels, forward, loss,
//! backward, Adam), validation with the ISIC rules after each epoch, best and last checkpoints,
//! resume, a JSON-lines metrics log and a PNG plot of the run.
//!
//! Everything random is a pure function of the run's seed: the data order and augmentation of
//! epoch `e` (see [`crate::data::Loader`]), and the sampled pixels and dropout masks of step
//! `t`. So a run resumed from the checkpoint of epoch `e` continues exactly as if it had never
//! stopped (in deterministic mode, bitwise).

mod evaluate;
mod log;
mod font;
mod plot;

pub use evaluate::evaluate;
pub use log::{read_log, write_log, EpochRecord};
pub use plot::plot_run;

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
}

/// Hooks for progress display.
pub trait TrainObserver {
    /// Called once before the first step with the steps per epoch and the epochs to run.
    fn on_start(&mut self, _steps_per_epoch: usize, _epochs: std::ops::Range<usize>) {}
    /// Called after every optimiser step.
    fn on_step(&mut self, _epoch: usize, _step: u64, _loss: f32, _images: usize) {}
    /// Called after every epoch's validation and checkpoint.
    fn on_epoch(&mut self, _record: &EpochRecord) {}
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
    let (model, mut state, mut records) = match &opts.resume {
        Some(ckpt) => {
            let (model, c) = load_checkpoint(ckpt, device)?;
            let state = c.training.ok_or_else(|| Error::bad_file(ckpt, "has no training state to resume from (its .json sidecar is missing)"))?;
            (model, state, read_log(&opts.out.join("metrics.jsonl"))?)
        }
        None => {
            let mut rng = ChaCha8Rng::seed_from_u64(opts.seed);
            let model = HypercolumnNet::new(opts.config.clone(), &mut rng, device)?;
            (model, TrainingState { epoch: 0, step: 0, seed: opts.seed, best_jaccard: 0.0 }, Vec::new())
        }
    };
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

    for epoch in state.epoch..opts.epochs {
        let started = Instant::now();
        let (mut loss_sum, mut steps, mut images) = (0.0f64, 0usize, 0usize);
        for batch in loader.epoch(epoch as u64) {
            let batch = batch?;
            let n = batch.len();
            let x = Tensor::from_vec(batch.images, [n, 3, size, size], device)?;
            let (points, labels) = sample_points(n, size, config.sample_points, &batch.masks, &mut step_rng(state.seed, state.step));
            let loss = {
                let _range = range("forward");
                let logits = model.forward_sparse(&x, &points, true, state.step as u32)?;
                logits.softmax_cross_entropy(&labels, None)?
            };
            let value = loss.to_scalar()?;
            if !value.is_finite() {
                return Err(Error::Diverged { step: state.step, epoch, value });
            }
            adam.zero_grad();
            {
                let _range = range("backward");
                loss.backward()?;
            }
            {
                let _range = range("optimizer step");
                adam.step()?;
            }
            state.step += 1;
            loss_sum += value as f64;
            steps += 1;
            images += n;
            observer.on_step(epoch, state.step, value, n);
        }
        let train_seconds = started.elapsed().as_secs_f64();
        let _range = range("validation");
        let val = match &val_set {
            Some(v) => Some(evaluate(&model, v, opts.infer)?),
            None => None,
        };
        state.epoch = epoch + 1;
        let jaccard = val.as_ref().map(|r| r.jaccard);
        let improved = jaccard.is_some_and(|j| j > state.best_jaccard || state.epoch == 1);
        if let Some(j) = jaccard.filter(|_| improved) {
            state.best_jaccard = j;
        }
        save_checkpoint(&last, &model, Some(&adam), Some(&state))?;
        if improved {
            save_checkpoint(&best, &model, None, Some(&state))?;
        }
        let record = EpochRecord::new(state.epoch, state.step, loss_sum / steps.max(1) as f64, images as f64 / train_seconds, started.elapsed().as_secs_f64(), val.as_ref());
        records.push(record.clone());
        write_log(&opts.out.join("metrics.jsonl"), &records)?;
        plot_run(&opts.out.join("training.png"), &records)?;
        observer.on_epoch(&record);
    }
    Ok(TrainSummary { records, last_checkpoint: last, best_checkpoint: best.exists().then_some(best) })
}
