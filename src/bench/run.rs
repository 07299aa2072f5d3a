//! [`run_bench`]: the training step (eager, back to back, and as a CUDA graph) and dense
//! inference timed on one device with synthetic inputs.

use std::time::Instant;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::*;
use crate::device::Device;
use crate::error::{Error, Result};
use crate::model::{sample_points, DensePath, HypercolumnNet, ModelConfig};
use crate::nn::Module;
use crate::optim::{Adam, AdamConfig};
use crate::settings;
use crate::tensor::Tensor;
use crate::train::{gradient_check, queue_step, StepInputs, StepRunner};

/// What [`run_bench`] measures.
#[derive(Clone, Debug)]
pub struct BenchOptions {
    /// The model (random weights) and the recipe: batch size, sampled pixels, learning rate.
    pub config: ModelConfig,
    /// fp32 or TF32 (sets [`settings::set_allow_tf32`] for the run, restored afterwards).
    pub precision: Precision,
    /// Untimed iterations first (PTX JIT, cuDNN algorithm search, allocator warm-up).
    pub warmup: usize,
    /// Timed iterations; the median is reported.
    pub iters: usize,
    /// Time dense inference with the naive path.
    pub dense_naive: bool,
    /// Time dense inference with the factored path.
    pub dense_factored: bool,
    /// Pixels per tile of dense inference.
    pub tile_pixels: usize,
    /// Seed of the weights and the synthetic inputs.
    pub seed: u64,
}

impl BenchOptions {
    /// 3 warm-up and 10 timed iterations, fp32, both dense paths, the default tile size.
    pub fn new(config: ModelConfig) -> BenchOptions {
        BenchOptions {
            config,
            precision: Precision::Fp32,
            warmup: 3,
            iters: 10,
            dense_naive: true,
            dense_factored: true,
            tile_pixels: crate::infer::InferOptions::default().tile_pixels,
            seed: 0,
        }
    }
}

/// `n` images `[n, 3, s, s]` uniform in [-120, 135) and their masks (one disc of class 1 per
/// image, radius between s/8 and s/3, somewhere in the frame), from `rng`.
pub fn synthetic_batch(n: usize, s: usize, rng: &mut impl Rng) -> (Vec<f32>, Vec<u8>) {
    let images = (0..n * 3 * s * s).map(|_| rng.random_range(-120.0f32..135.0)).collect();
    let mut masks = vec![0u8; n * s * s];
    for img in 0..n {
        let r = rng.random_range(s as f32 / 8.0..s as f32 / 3.0);
        let (cy, cx) = (rng.random_range(0.0..s as f32), rng.random_range(0.0..s as f32));
        for y in 0..s {
            for x in 0..s {
                let (dy, dx) = (y as f32 + 0.5 - cy, x as f32 + 0.5 - cx);
                if dy * dy + dx * dx <= r * r {
                    masks[(img * s + y) * s + x] = 1;
                }
            }
        }
    }
    (images, masks)
}

fn reset_peak(device: &Device) {
    if let Device::Cuda(d) = device {
        d.reset_peak();
    }
}

fn driver_allocs(device: &Device) -> Option<u64> {
    match device {
        Device::Cuda(d) => Some(d.memory_stats().driver_allocs),
        Device::Cpu => None,
    }
}

fn queued_calls(device: &Device) -> Option<u64> {
    match device {
        Device::Cuda(d) => Some(d.queued_calls()),
        Device::Cpu => None,
    }
}

/// Work items queued per step between two [`queued_calls`] readings over `iters` steps.
fn calls_per_step(before: Option<u64>, after: Option<u64>, iters: usize) -> Option<f64> {
    after.zip(before).map(|(a, b)| (a - b) as f64 / iters.max(1) as f64)
}

fn peak(device: &Device) -> Option<usize> {
    match device {
        Device::Cuda(d) => Some(d.memory_stats().peak_bytes),
        Device::Cpu => None,
    }
}

/// The training step replayed as a CUDA graph, as [`run_bench`] times it.
struct GraphRun {
    timing: Option<Timing>,
    note: String,
    driver_allocs: Option<u64>,
    pipelined_ms: Option<f64>,
    device_calls: Option<f64>,
}

impl GraphRun {
    /// Nothing timed, for this reason.
    fn not_run(note: String) -> GraphRun {
        GraphRun { timing: None, note, driver_allocs: None, pipelined_ms: None, device_calls: None }
    }
}

/// Builds the model of `opts.config` on `device` and times a training step and dense
/// inference of one image.
pub fn run_bench(opts: &BenchOptions, device: &Device) -> Result<BenchReport> {
    let config = &opts.config;
    config.validate()?;
    if opts.iters == 0 {
        return Err(Error::InvalidValue { name: "iters", msg: "at least one timed iteration is needed".into() });
    }
    if opts.tile_pixels == 0 {
        return Err(Error::InvalidValue { name: "tile size", msg: "must be positive".into() });
    }
    let _restore = settings::save();
    opts.precision.apply();

    let mut rng = ChaCha8Rng::seed_from_u64(opts.seed);
    let model = HypercolumnNet::new(config.clone(), &mut rng, device)?;
    let (n, s) = (config.batch_size, config.input_size);
    let (pixels, masks) = synthetic_batch(n, s, &mut rng);
    let (points, labels) = sample_points(n, s, config.sample_points, &masks, &mut rng);
    let first_image = Tensor::from_slice(&pixels[..3 * s * s], [1, 3, s, s], device)?;
    let images = Tensor::from_slice(&pixels, [n, 3, s, s], device)?;
    // The back-to-back timings upload their batch at every step, as the trainer does.
    let upload = || Tensor::from_slice(&pixels, [n, 3, s, s], device);

    // Training step.
    let (train, last_loss, peak_mem_bytes, train_driver_allocs, train_phases, train_pipelined_ms, train_device_calls) = {
        let mut adam = Adam::new(model.parameters(), AdamConfig { lr: config.learning_rate, ..Default::default() })?;
        let mut step = 0u64;
        let mut last = f32::NAN;
        // The step exactly as training runs it (with its divergence check), finished at once:
        // the iteration ends with the device synchronised anyway.
        let mut train_step = || -> Result<()> {
            last = queue_step(&model, &mut adam, StepInputs::new(&images, &points, &labels, step, 0))?.finish()?;
            step += 1;
            Ok(())
        };
        for _ in 0..opts.warmup {
            train_step()?;
        }
        device.synchronize()?;
        reset_peak(device);
        let allocs_before = driver_allocs(device);
        let calls_before = queued_calls(device);
        let timing = time_iters(device, 0, opts.iters, &mut train_step)?;
        let calls = calls_per_step(calls_before, queued_calls(device), opts.iters);
        let peak = peak(device);
        let allocs = driver_allocs(device).zip(allocs_before).map(|(after, before)| after - before);
        // The same steps back to back, as the trainer queues them.
        let pipelined = time_pipelined(device, opts.iters, || {
            let q = queue_step(&model, &mut adam, StepInputs::new(&upload()?, &points, &labels, step, 0));
            step += 1;
            q
        })?;
        // The same step again, the device synchronised between its phases: where the time goes.
        let mut phases = [Vec::new(), Vec::new(), Vec::new()];
        for _ in 0..opts.iters {
            device.synchronize()?;
            let t0 = Instant::now();
            let loss = model.forward_sparse(&images, &points, true, step as u32)?.softmax_cross_entropy(&labels, None)?;
            device.synchronize()?;
            let t1 = Instant::now();
            adam.zero_grad();
            loss.backward()?;
            let _check = gradient_check(adam.params())?;
            device.synchronize()?;
            let t2 = Instant::now();
            adam.step()?;
            device.synchronize()?;
            let t3 = Instant::now();
            step += 1;
            for (samples, (a, b)) in phases.iter_mut().zip([(t0, t1), (t1, t2), (t2, t3)]) {
                samples.push((b - a).as_secs_f64() * 1e3);
            }
        }
        adam.zero_grad();
        let phases = phases.map(|samples_ms| Timing { samples_ms });
        (timing, last, peak, allocs, phases, pipelined, calls)
    };

    // Dense inference of one image.
    let mut dense_peak: Option<usize> = None;
    let mut time_dense = |path: DensePath| -> Result<Timing> {
        let run = || model.predict_dense(&first_image, path, opts.tile_pixels).map(drop);
        for _ in 0..opts.warmup {
            run()?;
        }
        device.synchronize()?;
        reset_peak(device);
        let t = time_iters(device, 0, opts.iters, run)?;
        dense_peak = match (dense_peak, peak(device)) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        Ok(t)
    };
    let dense_naive = if opts.dense_naive { Some(time_dense(DensePath::Naive)?) } else { None };
    let dense_factored = if opts.dense_factored { Some(time_dense(DensePath::Factored)?) } else { None };

    // The same step as a CUDA graph, last (a failure there must not cost the figures above): the
    // runner's eager warm-up steps and its capture, then timed replays, each finished at once as
    // above, then back to back.
    let graph = match device {
        Device::Cpu => GraphRun::not_run("not on the CPU".into()),
        Device::Cuda(_) => (|| -> Result<GraphRun> {
            let mut adam = Adam::new(model.parameters(), AdamConfig { lr: config.learning_rate, ..Default::default() })?;
            let mut runner = StepRunner::new(true);
            let mut step = 0u64;
            let mut graph_step = || -> Result<()> {
                runner.queue(&model, &mut adam, StepInputs::new(&images, &points, &labels, step, 0))?.finish()?;
                step += 1;
                Ok(())
            };
            for _ in 0..crate::train::graph::WARMUP_STEPS + opts.warmup {
                graph_step()?;
            }
            device.synchronize()?;
            let allocs_before = driver_allocs(device);
            let calls_before = queued_calls(device);
            let timing = time_iters(device, 0, opts.iters, &mut graph_step)?;
            let device_calls = calls_per_step(calls_before, queued_calls(device), opts.iters);
            let driver_allocs = driver_allocs(device).zip(allocs_before).map(|(after, before)| after - before);
            let pipelined = time_pipelined(device, opts.iters, || {
                let q = runner.queue(&model, &mut adam, StepInputs::new(&upload()?, &points, &labels, step, 0));
                step += 1;
                q
            })?;
            adam.zero_grad();
            Ok(match (runner.graph().is_some(), runner.take_notice()) {
                (true, _) => GraphRun {
                    timing: Some(timing),
                    note: "captured once, then replayed".into(),
                    driver_allocs,
                    pipelined_ms: Some(pipelined),
                    device_calls,
                },
                (false, note) => GraphRun::not_run(note.unwrap_or_else(|| "not captured".into())),
            })
        })()
        .unwrap_or_else(|e| GraphRun::not_run(format!("failed: {e}"))),
    };

    let device_name = match device {
        Device::Cuda(d) => d.name(),
        Device::Cpu => format!("{} threads", rayon::current_num_threads()),
    };
    Ok(BenchReport {
        device: device.to_string(),
        device_name,
        precision: opts.precision,
        config: config.clone(),
        warmup: opts.warmup,
        iters: opts.iters,
        tile_pixels: opts.tile_pixels,
        parameter_count: model.parameter_count(),
        train,
        last_loss,
        dense_naive,
        dense_factored,
        peak_mem_bytes,
        dense_peak_mem_bytes: dense_peak,
        train_driver_allocs,
        train_phases,
        train_graph: graph.timing,
        train_graph_note: graph.note,
        train_graph_driver_allocs: graph.driver_allocs,
        train_pipelined_ms,
        train_graph_pipelined_ms: graph.pipelined_ms,
        train_device_calls,
        train_graph_device_calls: graph.device_calls,
        flops: flops(config),
    })
}
