//! The training step as a CUDA graph: [`StepGraph`] captures [`queue_step`] once and replays it
//! for later batches of the same shape; [`StepRunner`] is what the trainer and `bench` call:
//! eager steps, or with graphs on, two eager warm-up steps, one capture, then replays (eager
//! again for a batch of another shape, and for good when the capture fails, with a notice).
//!
//! A replay does on the device exactly what [`queue_step`] queues, without the host queuing
//! several hundred launches: every value that changes between steps is read from device memory
//! (the images are copied into the graph's input buffer; the points, labels, deterministic
//! gather table, dropout seeds and Adam's scalars are rewritten as *feeds*, see
//! [`crate::backend::cuda::graph`]). The gradients live in the graph's own memory: after a
//! capture the parameters hold none.
//!
//! Not capturable, refused with [`Error::GraphCapture`]: a class-weighted loss, the factored
//! dense path (inference), and anything on the CPU. In deterministic mode a replay is bitwise
//! identical to the eager step (tests/cuda_graph.rs). A graph is *stale*, and the runner
//! captures again, when the parameters' or the optimiser's buffers have moved (a state loaded
//! since) or the precision settings changed.

use crate::backend::cuda::graph::{CapturedGraph, StepFeeds};
use crate::backend::{check_points_in, check_softmax_xent, AdamStep, SamplePoint};
use crate::device::Device;
use crate::error::{Error, Result};
use crate::model::HypercolumnNet;
use crate::optim::Adam;
use crate::settings;
use crate::tensor::Tensor;

use super::step::{queue_step, PendingStep, StepInputs};

/// Eager steps before the capture: the first plans every convolution (cuDNN's algorithm search
/// runs and synchronises, which a capture cannot), the second leaves the allocator's cache
/// holding exactly the blocks a step needs, which the capture then adopts.
pub const WARMUP_STEPS: usize = 2;

/// The settings a graph is captured under (its kernels and library calls are frozen with them).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Settings {
    tf32: bool,
    bf16_gemm: bool,
    bf16_conv: bool,
    deterministic: bool,
}

impl Settings {
    fn now() -> Settings {
        Settings {
            tf32: settings::allow_tf32(),
            bf16_gemm: settings::bf16_gemm(),
            bf16_conv: settings::bf16_conv(),
            deterministic: settings::deterministic(),
        }
    }
}

fn refuse(msg: impl Into<String>) -> Error {
    Error::GraphCapture { msg: msg.into() }
}

/// The values a replay of this step reads from device memory (Adam's being `h`).
fn step_feeds(inputs: &StepInputs<'_>, h: &AdamStep) -> StepFeeds {
    StepFeeds {
        step: inputs.step,
        points: SamplePoint::words(inputs.points).to_vec(),
        labels: inputs.labels.to_vec(),
        adam: [h.lr, h.bias_correction1, h.bias_correction2],
    }
}

/// A training step captured as a CUDA graph, replayable for batches of the captured shape.
pub struct StepGraph {
    graph: CapturedGraph,
    /// The graph's input buffer `[n, 3, s, s]`: each replay's images are copied here.
    images: Tensor,
    /// The graph's loss and gradient-check outputs, rewritten by each replay.
    loss: Tensor,
    grad_check: Option<Tensor>,
    points: usize,
    classes: usize,
    settings: Settings,
    /// The model's tensors that the optimiser does not hold (the batch-norm statistics, which
    /// the graph updates in place), kept to see whether their buffers are replaced.
    state: Vec<Tensor>,
    /// The addresses of `state`, then of the optimiser's parameters and moments, at capture
    /// time: the graph reads and writes these.
    addresses: Vec<Option<u64>>,
}

impl std::fmt::Debug for StepGraph {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StepGraph").field("images", &self.images.dims()).field("points", &self.points).field("graph", &self.graph).finish()
    }
}

impl StepGraph {
    /// Captures [`queue_step`] for this batch's shape (on a CUDA device, after at least one
    /// eager step of this shape). Nothing runs: [`StepGraph::replay`] then queues this batch,
    /// or any other of its shape.
    ///
    /// Success or failure, the optimiser's step count is as before and the parameters hold no
    /// gradient, so a failed capture leaves the batch to be queued eagerly.
    pub fn capture(model: &HypercolumnNet, adam: &mut Adam, inputs: StepInputs<'_>) -> Result<StepGraph> {
        let StepInputs { images, points, .. } = inputs;
        let Device::Cuda(dev) = images.device() else {
            return Err(refuse(format!("CUDA graphs need a CUDA device, not {}", images.device())));
        };
        let settings = Settings::now();
        let feeds = step_feeds(&inputs, &adam.next_update());
        let images = images.deep_clone()?;
        let steps_before = adam.steps();
        dev.begin_capture(feeds)?;
        let recorded = match queue_step(model, adam, StepInputs { images: &images, ..inputs }) {
            Ok(pending) => dev.end_capture().map(|g| (g, pending)),
            Err(e) => {
                dev.abort_capture();
                Err(e)
            }
        };
        // The gradients the capture attached are the graph's own buffers; the parameters keep
        // none (an eager step in between allocates its own). Nothing ran, so the step count is
        // restored: the first replay counts the step.
        adam.zero_grad();
        adam.rewind(steps_before);
        let (graph, pending) = recorded?;
        let state: Vec<Tensor> = model.named().into_iter().filter(|n| !n.trainable).map(|n| n.tensor).collect();
        Ok(StepGraph {
            graph,
            images,
            loss: pending.loss,
            grad_check: pending.grad_check,
            points: points.len(),
            classes: model.config.classes,
            settings,
            addresses: buffer_addresses(&state, adam),
            state,
        })
    }

    /// Why the graph can no longer be replayed at all, if so: the parameters' or the
    /// optimiser's buffers moved since the capture (a state was loaded), or the precision
    /// settings changed. Capture again.
    pub fn stale(&self, adam: &Adam) -> Option<String> {
        if buffer_addresses(&self.state, adam) != self.addresses {
            return Some("the model's or the optimiser's buffers moved since the capture (a state was loaded)".into());
        }
        if Settings::now() != self.settings {
            return Some(format!("the precision settings are {:?}, captured under {:?}", Settings::now(), self.settings));
        }
        None
    }

    /// Why a batch cannot be replayed by this graph, if it cannot (it has another shape).
    pub fn mismatch(&self, inputs: &StepInputs<'_>) -> Option<String> {
        let StepInputs { images, points, labels, .. } = *inputs;
        if images.dims() != self.images.dims() {
            return Some(format!("images {:?}, captured {:?}", images.dims(), self.images.dims()));
        }
        if !images.device().same(self.images.device()) {
            return Some(format!("images on {}, captured on {}", images.device(), self.images.device()));
        }
        if points.len() != self.points || labels.len() != self.points {
            return Some(format!("{} points and {} labels, captured {}", points.len(), labels.len(), self.points));
        }
        None
    }

    /// Queues one replay for this batch (which must fit: [`StepGraph::stale`] and
    /// [`StepGraph::mismatch`] are `None`) and counts the optimiser's step. The points and
    /// labels are checked as the eager ops check them (the kernels would read out of bounds).
    pub fn replay(&mut self, adam: &mut Adam, inputs: StepInputs<'_>) -> Result<PendingStep> {
        if let Some(why) = self.mismatch(&inputs) {
            return Err(refuse(format!("the batch does not fit the captured graph: {why}")));
        }
        if let Some(why) = self.stale(adam) {
            return Err(refuse(format!("{why}; capture again")));
        }
        self.replay_fitting(adam, inputs)
    }

    /// [`StepGraph::replay`] for a batch already known to fit a graph that is not stale (the
    /// runner checks both before choosing to replay).
    fn replay_fitting(&mut self, adam: &mut Adam, inputs: StepInputs<'_>) -> Result<PendingStep> {
        let StepInputs { images, points, labels, step, epoch } = inputs;
        let [n, _, h, w] = self.images.shape().dims4("images")?;
        check_points_in("gather", points, n, h, w)?;
        check_softmax_xent(labels.len() * self.classes, labels, self.classes, None)?;
        let outputs = self.output_buffers()?;
        let feeds = step_feeds(&inputs, &adam.advance());
        self.images.copy_from(images)?;
        self.graph.launch(&feeds)?;
        self.outputs(outputs, step, epoch)
    }

    /// Buffers for a step's loss and gradient check, made before its launch.
    fn output_buffers(&self) -> Result<(Tensor, Option<Tensor>)> {
        let like = |t: &Tensor| Tensor::zeros(t.shape().clone(), t.device());
        Ok((like(&self.loss)?, self.grad_check.as_ref().map(like).transpose()?))
    }

    /// The step's loss and gradient check, copied out of the graph's buffers into `buffers`
    /// (the next replay rewrites the graph's before this step is finished).
    fn outputs(&self, buffers: (Tensor, Option<Tensor>), step: u64, epoch: usize) -> Result<PendingStep> {
        let (loss, grad_check) = buffers;
        loss.copy_from(&self.loss)?;
        if let (Some(dst), Some(src)) = (&grad_check, &self.grad_check) {
            dst.copy_from(src)?;
        }
        Ok(PendingStep { step, epoch, images: self.images.dims()[0], loss, grad_check })
    }
}

/// The device addresses of `state` (the model's tensors outside the optimiser), then of the
/// optimiser's parameters and moments.
fn buffer_addresses(state: &[Tensor], adam: &Adam) -> Vec<Option<u64>> {
    let mut out: Vec<Option<u64>> = state.iter().map(|t| t.storage().device_address()).collect();
    out.extend(adam.device_addresses());
    out
}

/// Queues training steps, eagerly or, with CUDA graphs on, by replaying a captured step.
#[derive(Debug, Default)]
pub struct StepRunner {
    use_graph: bool,
    eager_steps: usize,
    graph: Option<StepGraph>,
    gave_up: bool,
    notice: Option<String>,
    replays: u64,
}

impl StepRunner {
    /// A runner; `use_graph` asks for CUDA graphs (ignored, with a notice, off CUDA).
    pub fn new(use_graph: bool) -> StepRunner {
        StepRunner { use_graph, ..StepRunner::default() }
    }

    /// Queues one step of `model` on this batch (as [`queue_step`]). One model and optimiser per
    /// runner: the graph it captures writes to their buffers.
    pub fn queue(&mut self, model: &HypercolumnNet, adam: &mut Adam, inputs: StepInputs<'_>) -> Result<PendingStep> {
        if self.graph.as_ref().is_some_and(|g| g.stale(adam).is_some()) {
            // Captured against buffers or settings that are gone: warm up and capture again.
            self.graph = None;
            self.eager_steps = 0;
        }
        if let Some(g) = &mut self.graph {
            if g.mismatch(&inputs).is_none() {
                self.replays += 1;
                return g.replay_fitting(adam, inputs);
            }
        } else if self.use_graph && !self.gave_up && self.eager_steps >= WARMUP_STEPS {
            match StepGraph::capture(model, adam, inputs) {
                Ok(g) => {
                    // An error from here on comes after the step may have run: it is not
                    // answered by running the batch eagerly (that would apply it twice).
                    self.replays += 1;
                    return self.graph.insert(g).replay_fitting(adam, inputs);
                }
                // A capture cannot release cached memory to make room, so it may run out where
                // an eager step does not.
                Err(e @ (Error::GraphCapture { .. } | Error::Cuda { .. } | Error::OutOfMemory { .. })) => {
                    self.gave_up = true;
                    self.notice = Some(format!("{e}; continuing without CUDA graphs"));
                }
                Err(e) => return Err(e),
            }
        }
        self.eager_steps += 1;
        queue_step(model, adam, inputs)
    }

    /// A one-time message for the user (why graphs were given up), taken once.
    pub fn take_notice(&mut self) -> Option<String> {
        self.notice.take()
    }

    /// Steps run by the graph so far (its capture included).
    pub fn graph_steps(&self) -> u64 {
        self.replays
    }

    /// The captured graph, if any.
    pub fn graph(&self) -> Option<&StepGraph> {
        self.graph.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{sample_points, ModelConfig};
    use crate::nn::Module;
    use crate::optim::AdamConfig;
    use rand::SeedableRng;

    /// On the CPU a capture is refused with a typed error and leaves the model and optimiser
    /// as they were; a runner asked for graphs runs every step eagerly and says why once.
    #[test]
    fn graphs_are_refused_on_the_cpu_and_the_runner_goes_on_eagerly() {
        let dev = Device::Cpu;
        let config = ModelConfig::tiny();
        let (n, s) = (2, config.input_size);
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(4);
        let model = HypercolumnNet::new(config.clone(), &mut rng, &dev).unwrap();
        let mut adam = Adam::new(model.parameters(), AdamConfig::default()).unwrap();
        let pixels: Vec<f32> = (0..n * 3 * s * s).map(|i| ((i * 37) % 101) as f32 - 50.0).collect();
        let masks: Vec<u8> = (0..n * s * s).map(|i| u8::from(i % 3 == 0)).collect();
        let (points, labels) = sample_points(n, s, 64, &masks, &mut rng);
        let images = Tensor::from_vec(pixels, [n, 3, s, s], &dev).unwrap();
        let before = model.parameters()[0].to_vec().unwrap();
        match StepGraph::capture(&model, &mut adam, StepInputs::new(&images, &points, &labels, 0, 0)) {
            Err(Error::GraphCapture { msg }) => assert!(msg.contains("CUDA device"), "{msg}"),
            other => panic!("expected a refusal, got {:?}", other.map(|_| ())),
        }
        assert_eq!(adam.steps(), 0);
        assert_eq!(model.parameters()[0].to_vec().unwrap(), before);

        let mut runner = StepRunner::new(true);
        for step in 0..(WARMUP_STEPS as u64 + 2) {
            runner.queue(&model, &mut adam, StepInputs::new(&images, &points, &labels, step, 0)).unwrap().finish().unwrap();
        }
        assert_eq!(adam.steps(), WARMUP_STEPS as u64 + 2);
        assert_eq!(runner.graph_steps(), 0);
        assert!(runner.graph().is_none());
        let notice = runner.take_notice().expect("a notice");
        assert!(notice.contains("continuing without CUDA graphs"), "{notice}");
        assert!(runner.take_notice().is_none(), "said once");
    }
}
