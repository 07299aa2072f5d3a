//! Benchmarks of the whole model, and the engine's half of the PyTorch parity check.
//!
//! - [`flops`]: the analytic FLOP count of a training step and of dense inference, from the
//!   configuration alone (convolutions and GEMMs, 2 FLOPs per multiply-accumulate; the
//!   elementwise work, batch norm, pooling, the gather and Adam are not counted).
//! - [`run_bench`]: times a training step (sparse forward, loss, backward, Adam) and dense
//!   inference of one image on a device, median of `iters` after `warmup`, the device
//!   synchronised before and after every timed iteration (wall clock: host overhead counts,
//!   as it does in training), with the peak device memory of the allocator.
//! - [`dump_parity`]: initial weights, inputs, step-0 logits and gradients and the losses of a
//!   few Adam steps, as safetensors files that `bench/pytorch_reference.py --parity DIR`
//!   replays in PyTorch.
//!
//! Inputs are synthetic and fixed by a seed: images uniform in [-120, 135) (0-255 pixels
//! minus the ImageNet means), one random disc of lesion per mask, pixels sampled as in
//! training. Never all zeros.

use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{json, Value};

use crate::backend::ConvSpec;
use crate::device::Device;
use crate::error::{Error, Result};
use crate::fsutil::write_bytes_atomic;
use crate::model::{sample_points, save_checkpoint, DensePath, HypercolumnNet, ModelConfig};
use crate::nn::Module;
use crate::optim::{Adam, AdamConfig};
use crate::settings;
use crate::tensor::Tensor;
use crate::train::{gradient_check, queue_step, PendingStep, StepInputs, StepRunner};

/// Convs per VGG16 block (as in `model::vgg`).
const BLOCK_DEPTHS: [usize; 5] = [2, 2, 3, 3, 3];

/// Numeric precision of a benchmark run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Precision {
    /// IEEE fp32 everywhere (TF32 tensor cores off).
    Fp32,
    /// fp32 storage, TF32 tensor cores allowed in cuBLAS and cuDNN.
    Tf32,
    /// GEMMs on bf16-rounded operands ([`settings::bf16_gemm`]), convolutions in TF32; dense
    /// inference keeps its activations in bf16 ([`settings::bf16_activations`]), training
    /// keeps fp32 activations.
    Bf16,
}

impl Precision {
    /// `fp32`, `tf32` or `bf16`.
    pub fn as_str(self) -> &'static str {
        match self {
            Precision::Fp32 => "fp32",
            Precision::Tf32 => "tf32",
            Precision::Bf16 => "bf16",
        }
    }

    /// What the precision means for the engine, in words (for the report).
    pub fn detail(self) -> &'static str {
        match self {
            Precision::Fp32 => "fp32 storage and math",
            Precision::Tf32 => "fp32 storage, TF32 tensor cores in convolutions and GEMMs",
            Precision::Bf16 => "bf16 GEMMs (fp32 accumulation), TF32 convolutions; bf16 activations in dense inference, fp32 in training",
        }
    }
}

// ---- FLOP count --------------------------------------------------------------------------

/// The backbone's convolutions for one image of `config`, in order (13 VGG convs, fc6, fc7).
pub fn backbone_convs(config: &ModelConfig) -> Vec<ConvSpec> {
    let mut specs = Vec::new();
    let (mut c_in, mut s) = (3, config.input_size);
    for (&depth, &width) in BLOCK_DEPTHS.iter().zip(&config.block_widths) {
        for _ in 0..depth {
            specs.push(ConvSpec { n: 1, c_in, h: s, w: s, c_out: width, kh: 3, kw: 3, stride: 1, pad: 1 });
            c_in = width;
        }
        s /= 2;
    }
    let k = config.fc6_kernel;
    specs.push(ConvSpec { n: 1, c_in, h: s, w: s, c_out: config.fc_width, kh: k, kw: k, stride: 1, pad: k / 2 });
    specs.push(ConvSpec { n: 1, c_in: config.fc_width, h: s, w: s, c_out: config.fc_width, kh: 1, kw: 1, stride: 1, pad: 0 });
    specs
}

/// Forward FLOPs of the backbone for one image.
pub fn backbone_flops_per_image(config: &ModelConfig) -> f64 {
    backbone_convs(config).iter().map(ConvSpec::flops).sum()
}

/// `(in, out)` of every MLP layer.
fn mlp_layers(config: &ModelConfig) -> Vec<(usize, usize)> {
    let mut dims = vec![config.hypercolumn_width()];
    dims.extend(&config.mlp_hidden);
    dims.push(config.classes);
    dims.windows(2).map(|w| (w[0], w[1])).collect()
}

/// Forward FLOPs of the MLP for one pixel (biases not counted).
pub fn mlp_flops_per_pixel(config: &ModelConfig) -> f64 {
    mlp_layers(config).iter().map(|&(i, o)| 2.0 * (i * o) as f64).sum()
}

/// `(train_step_flops, dense_naive_flops, dense_factored_flops)` of `config`.
///
/// - Training step: forward = `batch * backbone(image) + points * mlp(pixel)`; backward twice
///   the forward (input and weight gradients); the step is 3x the forward. The paper's model:
///   5 * 32.5 (VGG convs 30.7 + fc6/fc7 1.85) + 1600 * 0.0624 (MLP) = 262.5 GFLOP forward,
///   787 GFLOP per step.
/// - Dense naive, one image: `backbone(image) + s^2 * mlp(pixel)`: 3.16 TFLOP for the paper.
/// - Dense factored, one image: the backbone, the first MLP layer applied to each tap at its
///   own resolution (`sum_i h_i w_i c_i hidden_1`), then the remaining layers at every pixel:
///   0.93 TFLOP for the paper (the upsample-and-sum adds, ~1%, are not counted).
pub fn flops(config: &ModelConfig) -> (f64, f64, f64) {
    let backbone = backbone_flops_per_image(config);
    let mlp = mlp_flops_per_pixel(config);
    let pixels = (config.input_size * config.input_size) as f64;
    let forward = config.batch_size as f64 * backbone + config.sample_points as f64 * mlp;
    let train = 3.0 * forward;
    let naive = backbone + pixels * mlp;
    let layers = mlp_layers(config);
    let hidden1 = layers[0].1 as f64;
    let first_per_tap: f64 = tap_geometry(config).iter().map(|&(c, h, w)| 2.0 * (c * h * w) as f64 * hidden1).sum();
    let rest: f64 = layers[1..].iter().map(|&(i, o)| 2.0 * (i * o) as f64).sum();
    let factored = backbone + first_per_tap + pixels * rest;
    (train, naive, factored)
}

/// `(channels, height, width)` of the six taps of one image.
pub fn tap_geometry(config: &ModelConfig) -> Vec<(usize, usize, usize)> {
    let c = config.tap_channels();
    (0..6)
        .map(|i| {
            let s = config.input_size >> i;
            (c[i], s, s)
        })
        .collect()
}

// ---- timing -----------------------------------------------------------------------------

/// Wall-clock times of the timed iterations of one measurement, in milliseconds.
#[derive(Clone, Debug, PartialEq)]
pub struct Timing {
    pub samples_ms: Vec<f64>,
}

impl Timing {
    /// The median (the mean of the two middle values for an even count).
    pub fn median_ms(&self) -> f64 {
        let mut v = self.samples_ms.clone();
        v.sort_by(|a, b| a.total_cmp(b));
        match v.len() {
            0 => f64::NAN,
            n if n % 2 == 1 => v[n / 2],
            n => 0.5 * (v[n / 2 - 1] + v[n / 2]),
        }
    }
    /// The fastest iteration.
    pub fn min_ms(&self) -> f64 {
        self.samples_ms.iter().copied().fold(f64::INFINITY, f64::min)
    }
    /// The slowest iteration.
    pub fn max_ms(&self) -> f64 {
        self.samples_ms.iter().copied().fold(f64::NEG_INFINITY, f64::max)
    }
}

/// Runs `f` `warmup` times, then `iters` times timed, synchronising `device` before and after
/// each timed call (device work is asynchronous: the clock stops only when it has finished).
pub fn time_iters(device: &Device, warmup: usize, iters: usize, mut f: impl FnMut() -> Result<()>) -> Result<Timing> {
    for _ in 0..warmup {
        f()?;
    }
    device.synchronize()?;
    let mut samples_ms = Vec::with_capacity(iters);
    for _ in 0..iters {
        device.synchronize()?;
        let t0 = Instant::now();
        f()?;
        device.synchronize()?;
        samples_ms.push(t0.elapsed().as_secs_f64() * 1e3);
    }
    Ok(Timing { samples_ms })
}

/// Queues `iters` steps back to back as the trainer does (each step finished only after the
/// next one is queued, so the host queues ahead of the device; `run_bench` also uploads each
/// step's images, as the trainer does) and returns the mean time per
/// step, from a synchronised device to the last step finished: a throughput, where
/// [`time_iters`] measures the latency of one synchronised step.
pub fn time_pipelined(device: &Device, iters: usize, mut queue: impl FnMut() -> Result<PendingStep>) -> Result<f64> {
    device.synchronize()?;
    let t0 = Instant::now();
    let mut pending: Option<PendingStep> = None;
    for _ in 0..iters {
        let queued = queue()?;
        if let Some(done) = pending.replace(queued) {
            done.finish()?;
        }
    }
    if let Some(done) = pending {
        done.finish()?;
    }
    device.synchronize()?;
    Ok(t0.elapsed().as_secs_f64() * 1e3 / iters.max(1) as f64)
}

// ---- synthetic data -----------------------------------------------------------------------

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

// ---- the benchmark ------------------------------------------------------------------------

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

/// The results of [`run_bench`].
#[derive(Clone, Debug)]
pub struct BenchReport {
    /// `cpu` or `cuda:N`.
    pub device: String,
    /// The GPU's name, or the CPU's thread count.
    pub device_name: String,
    pub precision: Precision,
    pub config: ModelConfig,
    pub warmup: usize,
    pub iters: usize,
    pub tile_pixels: usize,
    pub parameter_count: usize,
    /// Training step: forward (train mode), loss, zero_grad, backward, Adam.
    pub train: Timing,
    /// The loss of the last timed step (a sanity check: finite).
    pub last_loss: f32,
    /// Dense inference of one image, naive path.
    pub dense_naive: Option<Timing>,
    /// Dense inference of one image, factored path.
    pub dense_factored: Option<Timing>,
    /// Peak bytes of live device buffers during the timed training steps (None on the CPU).
    pub peak_mem_bytes: Option<usize>,
    /// Peak bytes during the timed dense inference (None on the CPU or when skipped).
    pub dense_peak_mem_bytes: Option<usize>,
    /// Blocks the allocator had to get from the driver during the timed training steps (None
    /// on the CPU): 0 when, after the warm-up, a step is served entirely from the cache.
    pub train_driver_allocs: Option<u64>,
    /// The training step's phases timed separately (extra steps, the device synchronised
    /// between phases): forward with the loss, backward with the gradients' finiteness check, optimizer step.
    pub train_phases: [Timing; 3],
    /// The same training step replayed as a CUDA graph ([`StepRunner`]), timed the same way
    /// (None on the CPU, or when the capture failed: see `train_graph_note`).
    pub train_graph: Option<Timing>,
    /// Whether the graph was captured, or why not.
    pub train_graph_note: String,
    /// Driver allocations during the timed replays (None unless replayed).
    pub train_graph_driver_allocs: Option<u64>,
    /// Mean time per step of steps queued back to back as the trainer runs them
    /// ([`time_pipelined`]): eager, and replayed as a graph (None unless replayed).
    pub train_pipelined_ms: f64,
    pub train_graph_pipelined_ms: Option<f64>,
    /// Work items the host queued per timed step (kernel launches, library calls, copies;
    /// [`crate::backend::cuda::CudaDevice::queued_calls`]): eager, and as a graph (None on the
    /// CPU).
    pub train_device_calls: Option<f64>,
    pub train_graph_device_calls: Option<f64>,
    /// [`flops`] of the configuration.
    pub flops: (f64, f64, f64),
}

fn tflops(flop: f64, ms: f64) -> f64 {
    flop / (ms * 1e-3) / 1e12
}

/// A FLOP rate for the table: TFLOP/s, or GFLOP/s below 1 TFLOP/s.
fn rate(flop: f64, ms: f64) -> String {
    let t = tflops(flop, ms);
    if t >= 1.0 {
        format!("{t:.2} TFLOP/s")
    } else {
        format!("{:.1} GFLOP/s", t * 1e3)
    }
}

impl BenchReport {
    /// `dense_infer_*` refer to this path: naive when it was timed (the path PyTorch's
    /// reference times), else factored.
    pub fn dense_infer_path(&self) -> Option<(&'static str, &Timing, f64)> {
        match (&self.dense_naive, &self.dense_factored) {
            (Some(t), _) => Some(("naive", t, self.flops.1)),
            (None, Some(t)) => Some(("factored", t, self.flops.2)),
            (None, None) => None,
        }
    }

    /// The report as JSON. Keys shared with `bench/pytorch_reference.py --bench`:
    /// `train_step_ms`, `dense_infer_ms`, `peak_mem_bytes`, `device`, `precision`, `preset`,
    /// `train_step_tflops`, `dense_infer_tflops`, `iters` (and `dense_factored_ms`).
    pub fn to_json(&self) -> Value {
        let train_ms = self.train.median_ms();
        let dense = self.dense_infer_path();
        let opt_ms = |t: &Option<Timing>| t.as_ref().map(Timing::median_ms);
        let mut v = json!({
            "engine": format!("hyperseg-engine {}", env!("CARGO_PKG_VERSION")),
            "device": self.device,
            "device_name": self.device_name,
            "precision": self.precision.as_str(),
            "precision_detail": self.precision.detail(),
            "preset": self.config.preset,
            "input_size": self.config.input_size,
            "batch_size": self.config.batch_size,
            "sample_points": self.config.sample_points,
            "parameter_count": self.parameter_count,
            "warmup": self.warmup,
            "iters": self.iters,
            "timing": "wall clock, device synchronised before and after each iteration; median",
            "train_step_ms": train_ms,
            "train_step_ms_min": self.train.min_ms(),
            "train_step_ms_max": self.train.max_ms(),
            "train_step_samples_ms": self.train.samples_ms,
            "train_step_gflop": self.flops.0 / 1e9,
            "train_step_tflops": tflops(self.flops.0, train_ms),
            "last_loss": self.last_loss,
            "dense_path": dense.map(|d| d.0),
            "dense_tile_pixels": self.tile_pixels,
            "dense_infer_ms": dense.map(|d| d.1.median_ms()),
            "dense_infer_tflops": dense.map(|d| tflops(d.2, d.1.median_ms())),
            "dense_naive_ms": opt_ms(&self.dense_naive),
            "dense_naive_gflop": self.flops.1 / 1e9,
            "dense_naive_tflops": self.dense_naive.as_ref().map(|t| tflops(self.flops.1, t.median_ms())),
            "dense_factored_ms": opt_ms(&self.dense_factored),
            "dense_factored_gflop": self.flops.2 / 1e9,
            "dense_factored_tflops": self.dense_factored.as_ref().map(|t| tflops(self.flops.2, t.median_ms())),
            "peak_mem_bytes": self.peak_mem_bytes.unwrap_or(0),
            "dense_peak_mem_bytes": self.dense_peak_mem_bytes.unwrap_or(0),
            "peak_mem_measured": self.peak_mem_bytes.is_some(),
            "train_step_driver_allocs": self.train_driver_allocs,
            "train_forward_ms": self.train_phases[0].median_ms(),
            "train_backward_ms": self.train_phases[1].median_ms(),
            "train_optimizer_ms": self.train_phases[2].median_ms(),
        });
        // The CUDA-graph and pipelined figures (a second object: json! nests too deep in one).
        let graph = json!({
            "train_step_pipelined_ms": self.train_pipelined_ms,
            "train_step_graph_pipelined_ms": self.train_graph_pipelined_ms,
            "train_step_graph_ms": self.train_graph.as_ref().map(Timing::median_ms),
            "train_step_graph_tflops": self.train_graph.as_ref().map(|t| tflops(self.flops.0, t.median_ms())),
            "train_step_graph_note": self.train_graph_note,
            "train_step_graph_driver_allocs": self.train_graph_driver_allocs,
            "train_step_device_calls": self.train_device_calls,
            "train_step_graph_device_calls": self.train_graph_device_calls,
        });
        if let (Value::Object(all), Value::Object(more)) = (&mut v, graph) {
            all.extend(more);
        }
        v
    }

    /// A human-readable table.
    pub fn table(&self) -> String {
        let gib = |b: Option<usize>| b.map_or("n/a".to_string(), |b| format!("{:.2} GiB", b as f64 / (1u64 << 30) as f64));
        let mut rows: Vec<[String; 4]> = vec![[
            "training step (fwd+bwd+Adam)".into(),
            format!("{:.2} ms", self.train.median_ms()),
            format!("{:.1} GFLOP", self.flops.0 / 1e9),
            rate(self.flops.0, self.train.median_ms()),
        ]];
        if let Some(t) = &self.train_graph {
            rows.push([
                "training step, CUDA graph".into(),
                format!("{:.2} ms", t.median_ms()),
                format!("{:.1} GFLOP", self.flops.0 / 1e9),
                rate(self.flops.0, t.median_ms()),
            ]);
        }
        for (name, t, f) in [
            ("dense, one image, naive", &self.dense_naive, self.flops.1),
            ("dense, one image, factored", &self.dense_factored, self.flops.2),
        ] {
            if let Some(t) = t {
                rows.push([name.into(), format!("{:.2} ms", t.median_ms()), format!("{:.1} GFLOP", f / 1e9), rate(f, t.median_ms())]);
            }
        }
        let mut out = format!(
            "hyperseg-engine bench: preset {}, {} ({}), {}, median of {} after {} warm-up\n",
            self.config.preset,
            self.device,
            self.device_name,
            self.precision.as_str(),
            self.iters,
            self.warmup
        );
        out += &format!(
            "model: {} parameters, batch {}, {} sampled pixels, input {}x{}, dense tile {} pixels\n",
            self.parameter_count,
            self.config.batch_size,
            self.config.sample_points,
            self.config.input_size,
            self.config.input_size,
            self.tile_pixels
        );
        out += &format!("{:<30} {:>12} {:>14} {:>14}\n", "work", "time", "FLOPs", "rate");
        for r in rows {
            out += &format!("{:<30} {:>12} {:>14} {:>14}\n", r[0], r[1], r[2], r[3]);
        }
        let [f, b, o] = self.train_phases.each_ref().map(Timing::median_ms);
        out += &format!("training step by phase (synchronised between): forward + loss {f:.2} ms, backward + finiteness check {b:.2} ms, Adam {o:.2} ms\n");
        out += &format!("peak device memory, training: {}\n", gib(self.peak_mem_bytes));
        if let Some(a) = self.train_driver_allocs {
            out += &format!("driver allocations during the timed training steps: {a}\n");
        }
        out += &format!("training steps queued back to back (as the trainer runs them): {:.2} ms per step", self.train_pipelined_ms);
        if let Some(g) = self.train_graph_pipelined_ms {
            out += &format!(", {g:.2} ms as a CUDA graph");
        }
        out += "\n";
        out += &format!("CUDA graph: {}\n", self.train_graph_note);
        if let Some(c) = self.train_device_calls {
            out += &format!("work items queued per training step: {c:.0}");
            if let Some(g) = self.train_graph_device_calls {
                out += &format!(", {g:.0} as a CUDA graph");
            }
            out += "\n";
        }
        if let Some(a) = self.train_graph_driver_allocs {
            out += &format!("driver allocations during the timed graph replays: {a}\n");
        }
        if self.dense_naive.is_some() || self.dense_factored.is_some() {
            out += &format!("peak device memory, dense inference: {}\n", gib(self.dense_peak_mem_bytes));
        }
        out += &format!("last training loss: {:.4}\n", self.last_loss);
        out
    }
}

/// Restores the TF32 and bf16 settings when dropped.
struct SettingsGuard {
    tf32: bool,
    bf16_gemm: bool,
    bf16_activations: bool,
}
impl Drop for SettingsGuard {
    fn drop(&mut self) {
        settings::set_allow_tf32(self.tf32);
        settings::set_bf16_gemm(self.bf16_gemm);
        settings::set_bf16_activations(self.bf16_activations);
    }
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
    let _restore =
        SettingsGuard { tf32: settings::allow_tf32(), bf16_gemm: settings::bf16_gemm(), bf16_activations: settings::bf16_activations() };
    settings::set_allow_tf32(opts.precision != Precision::Fp32);
    settings::set_bf16_gemm(opts.precision == Precision::Bf16);
    settings::set_bf16_activations(opts.precision == Precision::Bf16);

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

/// Writes the report's JSON to `path` atomically.
pub fn write_report_json(path: &Path, report: &BenchReport) -> Result<()> {
    let text = serde_json::to_string_pretty(&report.to_json()).map_err(|e| Error::bad_file(path, e.to_string()))?;
    write_bytes_atomic(path, format!("{text}\n").as_bytes())
}

// ---- parity dump ----------------------------------------------------------------------------

/// The format tag in the metadata of the parity files.
pub const PARITY_FORMAT: &str = "hyperseg-engine-parity/1";

/// The seed of the parity dump's weights and inputs.
pub const PARITY_SEED: u64 = 20170;

/// One f32 tensor to serialise.
struct Blob {
    name: String,
    shape: Vec<usize>,
    bytes: Vec<u8>,
}

impl Blob {
    fn new(name: impl Into<String>, shape: Vec<usize>, values: &[f32]) -> Blob {
        Blob { name: name.into(), shape, bytes: bytemuck::cast_slice(values).to_vec() }
    }
}

fn write_safetensors(path: &Path, blobs: &[Blob], meta: HashMap<String, String>) -> Result<()> {
    let tensors = blobs.iter().map(|b| (b.name.as_str(), b.shape.as_slice(), b.bytes.as_slice()));
    write_bytes_atomic(path, &crate::model::safetensors_bytes(tensors, meta, path)?)
}

/// Writes into `dir` what `bench/pytorch_reference.py --parity DIR` needs to replay `steps`
/// training steps of `config` (dropout forced off) on `device`, in train mode (batch
/// statistics), the same batch at every step:
/// - `weights.safetensors` (+ `weights.json`): the initial weights, by [`save_checkpoint`];
/// - `inputs.safetensors`: `images [n, 3, s, s]`, `points [P, 3]` (image, y, x as f32),
///   `labels [P]` (f32);
/// - `outputs.safetensors`: `logits [P, classes]` of step 0, `loss [steps]` (the loss of step
///   t, before its Adam update), `grad.NAME` for every parameter at step 0, and
///   `state1.NAME` for every batch-norm running statistic after step 0's forward, and
///   `dense_naive`, `dense_factored` `[s, s]`: the lesion probability of image 0 by dense
///   inference (eval mode) with the step-0 weights and those running statistics.
///
/// Metadata of each file: `format`, `config` (JSON), `seed`, `steps`, `tf32`, `device`.
pub fn dump_parity(dir: &Path, config: &ModelConfig, device: &Device, steps: usize) -> Result<()> {
    if steps == 0 {
        return Err(Error::InvalidValue { name: "parity steps", msg: "at least one step is needed".into() });
    }
    let mut config = config.clone();
    config.mlp_dropout = 0.0;
    config.validate()?;
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let mut rng = ChaCha8Rng::seed_from_u64(PARITY_SEED);
    let model = HypercolumnNet::new(config.clone(), &mut rng, device)?;
    let (n, s) = (config.batch_size, config.input_size);
    let (images, masks) = synthetic_batch(n, s, &mut rng);
    let (points, labels) = sample_points(n, s, config.sample_points, &masks, &mut rng);

    let config_json = serde_json::to_string(&config).map_err(|e| Error::bad_file(dir, e.to_string()))?;
    let meta = HashMap::from([
        ("format".to_string(), PARITY_FORMAT.to_string()),
        ("config".to_string(), config_json),
        ("seed".to_string(), PARITY_SEED.to_string()),
        ("steps".to_string(), steps.to_string()),
        ("tf32".to_string(), settings::allow_tf32().to_string()),
        ("deterministic".to_string(), settings::deterministic().to_string()),
        ("device".to_string(), device.to_string()),
        ("adam".to_string(), format!("lr={} beta1=0.9 beta2=0.999 eps=1e-8", config.learning_rate)),
    ]);

    save_checkpoint(&dir.join("weights.safetensors"), &model, None, None)?;
    let point_values: Vec<f32> = points.iter().flat_map(|p| [p.image as f32, p.y as f32, p.x as f32]).collect();
    let label_values: Vec<f32> = labels.iter().map(|&l| l as f32).collect();
    write_safetensors(
        &dir.join("inputs.safetensors"),
        &[
            Blob::new("images", vec![n, 3, s, s], &images),
            Blob::new("points", vec![points.len(), 3], &point_values),
            Blob::new("labels", vec![labels.len()], &label_values),
        ],
        meta.clone(),
    )?;

    let first_image = Tensor::from_slice(&images[..3 * s * s], [1, 3, s, s], device)?;
    let x = Tensor::from_vec(images, [n, 3, s, s], device)?;
    let mut adam = Adam::new(model.parameters(), AdamConfig { lr: config.learning_rate, ..Default::default() })?;
    let named = model.named();
    let mut losses = Vec::with_capacity(steps);
    let mut blobs = Vec::new();
    for t in 0..steps {
        let logits = model.forward_sparse(&x, &points, true, t as u32)?;
        let loss = logits.softmax_cross_entropy(&labels, None)?;
        let value = loss.to_scalar()?;
        losses.push(value);
        adam.zero_grad();
        loss.backward()?;
        if t == 0 {
            blobs.push(Blob::new("logits", logits.dims().to_vec(), &logits.to_vec()?));
            // Dense inference of image 0 with these weights and the running statistics after
            // one update (eval mode), by both paths.
            let tile = crate::infer::InferOptions::default().tile_pixels;
            for (key, path) in [("dense_naive", DensePath::Naive), ("dense_factored", DensePath::Factored)] {
                let prob = model.predict_dense(&first_image, path, tile)?.remove(0);
                blobs.push(Blob::new(key, vec![s, s], &prob));
            }
            // And the factored path with bf16 activations.
            let was = settings::bf16_activations();
            settings::set_bf16_activations(true);
            let prob = model.predict_dense(&first_image, DensePath::Factored, tile);
            settings::set_bf16_activations(was);
            blobs.push(Blob::new("dense_factored_bf16", vec![s, s], &prob?.remove(0)));
            for nt in &named {
                if nt.trainable {
                    let g = match nt.tensor.grad() {
                        Some(g) => g.to_vec()?,
                        None => vec![0.0; nt.tensor.elem_count()],
                    };
                    blobs.push(Blob::new(format!("grad.{}", nt.name), nt.tensor.dims().to_vec(), &g));
                } else {
                    blobs.push(Blob::new(format!("state1.{}", nt.name), nt.tensor.dims().to_vec(), &nt.tensor.to_vec()?));
                }
            }
        }
        adam.step()?;
    }
    adam.zero_grad();
    blobs.push(Blob::new("loss", vec![steps], &losses));
    write_safetensors(&dir.join("outputs.safetensors"), &blobs, meta)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paper_flops_match_the_notes() {
        let c = ModelConfig::paper();
        let convs: f64 = backbone_convs(&c)[..13].iter().map(ConvSpec::flops).sum();
        assert!((convs / 1e9 - 30.7).abs() < 0.1, "{convs}");
        let (train, naive, factored) = flops(&c);
        assert!((train / 787e9 - 1.0).abs() < 0.01, "{train}");
        assert!((naive / 3.16e12 - 1.0).abs() < 0.01, "{naive}");
        assert!((factored / 0.93e12 - 1.0).abs() < 0.01, "{factored}");
    }

    #[test]
    fn median_of_even_and_odd_counts() {
        assert_eq!(Timing { samples_ms: vec![3.0, 1.0, 2.0] }.median_ms(), 2.0);
        assert_eq!(Timing { samples_ms: vec![4.0, 1.0, 2.0, 3.0] }.median_ms(), 2.5);
    }
}
