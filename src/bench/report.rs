//! [`BenchReport`]: what a bench run measured, as a table for people and JSON for tools.

use std::path::Path;

use serde_json::{json, Value};

use super::{Precision, Timing};
use crate::error::{Error, Result};
use crate::fsutil::write_bytes_atomic;
use crate::model::ModelConfig;

/// The results of [`run_bench`](super::run_bench).
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
    /// The same training step replayed as a CUDA graph ([`StepRunner`](crate::train::StepRunner)), timed the same way
    /// (None on the CPU, or when the capture failed: see `train_graph_note`).
    pub train_graph: Option<Timing>,
    /// Whether the graph was captured, or why not.
    pub train_graph_note: String,
    /// Driver allocations during the timed replays (None unless replayed).
    pub train_graph_driver_allocs: Option<u64>,
    /// Mean time per step of steps queued back to back as the trainer runs them
    /// ([`time_pipelined`](super::time_pipelined)): eager, and replayed as a graph (None unless replayed).
    pub train_pipelined_ms: f64,
    pub train_graph_pipelined_ms: Option<f64>,
    /// Work items the host queued per timed step (kernel launches, library calls, copies;
    /// [`crate::backend::cuda::CudaDevice::queued_calls`]): eager, and as a graph (None on the
    /// CPU).
    pub train_device_calls: Option<f64>,
    pub train_graph_device_calls: Option<f64>,
    /// [`flops`](super::flops) of the configuration.
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

/// Writes the report's JSON to `path` atomically.
pub fn write_report_json(path: &Path, report: &BenchReport) -> Result<()> {
    let text = serde_json::to_string_pretty(&report.to_json()).map_err(|e| Error::bad_file(path, e.to_string()))?;
    write_bytes_atomic(path, format!("{text}\n").as_bytes())
}
