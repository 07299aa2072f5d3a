//! The training step as a CUDA graph against the same steps run eagerly, on two copies of one
//! model. In deterministic mode every loss, every parameter, every batch-norm running statistic
//! and the optimiser's moments are bitwise equal after captures, replays with new points,
//! labels, dropout seeds and Adam bias corrections, a batch of another shape (run eagerly in
//! between) and a state load (which makes the runner capture again); replays allocate nothing
//! from the driver and queue a tenth of the eager step's work items or fewer. With the atomic
//! gather backward (additions in a varying order) the losses agree within 1e-2 relative over
//! the 9 steps: a loose sanity bound, the bitwise check is the test. The trainer with graphs on
//! gives the same run as without (losses, validation scores, saved weights and optimiser
//! state), bit for bit in deterministic mode. The bitwise replay check runs again in bf16 mixed
//! precision (bf16 convolutions and GEMMs).
//!
//! Its own test binary, because it switches the global deterministic setting. The CPU runs the
//! same steps (the runner falls back to eager steps there) so that the test's own logic is
//! exercised without a GPU; without a GPU the CUDA half prints that it was skipped, and with
//! HYPERSEG_REQUIRE_GPU=1 it fails.

mod common;

use common::cuda_device;
use hyperseg_engine::backend::cuda::graph::StepFeeds;
use hyperseg_engine::data::Augment;
use hyperseg_engine::infer::InferOptions;
use hyperseg_engine::model::{sample_points, HypercolumnNet, ModelConfig};
use hyperseg_engine::nn::{Module, Named};
use hyperseg_engine::optim::{Adam, AdamConfig};
use hyperseg_engine::train::{bundled_sample, queue_step, train, EpochRecord, StepInputs, StepRunner, TrainObserver, TrainOptions};
use hyperseg_engine::{settings, Device, Result, SamplePoint, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// The tiny model with dropout on, so that replays must draw a new mask at every step.
/// One test at a time: they share the device's stream, pool, capture slot and counters, and
/// the process-wide deterministic setting (a poisoned lock is still a lock).
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

fn config() -> ModelConfig {
    ModelConfig { mlp_dropout: 0.3, ..ModelConfig::tiny() }
}

struct Batch {
    images: Tensor,
    points: Vec<SamplePoint>,
    labels: Vec<u32>,
}

impl Batch {
    fn inputs(&self, step: u64) -> StepInputs<'_> {
        StepInputs::new(&self.images, &self.points, &self.labels, step, 0)
    }
}

/// New images, pixels and labels for every step, as in training; `n` images.
fn batch(n: usize, config: &ModelConfig, rng: &mut ChaCha8Rng, dev: &Device) -> Result<Batch> {
    let s = config.input_size;
    let pixels: Vec<f32> = (0..n * 3 * s * s).map(|_| rng.random_range(-100.0..100.0)).collect();
    let masks: Vec<u8> = (0..n * s * s).map(|_| u8::from(rng.random_bool(0.4))).collect();
    let (points, labels) = sample_points(n, s, config.sample_points, &masks, rng);
    Ok(Batch { images: Tensor::from_vec(pixels, [n, 3, s, s], dev)?, points, labels })
}

fn state(model: &HypercolumnNet, adam: &Adam) -> Result<Vec<(String, Vec<f32>)>> {
    let mut named: Vec<Named> = Vec::new();
    model.named_tensors("", &mut named);
    let mut out: Vec<(String, Vec<f32>)> = named.iter().map(|n| Ok((n.name.clone(), n.tensor.to_vec()?))).collect::<Result<_>>()?;
    let moments = adam.state()?;
    for (i, (m, v)) in moments.m.into_iter().zip(moments.v).enumerate() {
        out.push((format!("adam.m.{i}"), m));
        out.push((format!("adam.v.{i}"), v));
    }
    Ok(out)
}

fn driver_allocs(dev: &Device) -> u64 {
    match dev {
        Device::Cuda(d) => d.memory_stats().driver_allocs,
        Device::Cpu => 0,
    }
}

fn queued_calls(dev: &Device) -> u64 {
    match dev {
        Device::Cuda(d) => d.queued_calls(),
        Device::Cpu => 0,
    }
}

/// Runs the same 9 steps eagerly and through a [`StepRunner`] with graphs on; returns the
/// largest relative loss difference. With `bitwise`, every loss and, at the end, the whole
/// state must be identical.
fn eager_against_graph(dev: &Device, bitwise: bool) -> Result<f32> {
    let config = config();
    let n = config.batch_size;
    let make = || -> Result<(HypercolumnNet, Adam)> {
        let model = HypercolumnNet::new(config.clone(), &mut ChaCha8Rng::seed_from_u64(21), dev)?;
        let adam = Adam::new(model.parameters(), AdamConfig::default())?;
        Ok((model, adam))
    };
    let (eager_model, mut eager_adam) = make()?;
    let (graph_model, mut graph_adam) = make()?;
    let mut runner = StepRunner::new(true);
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let mut worst = 0.0f32;
    let mut replay_allocs = 0;
    let (mut eager_calls, mut replay_calls) = (0, 0);
    for step in 0..9u64 {
        // Step 5: a smaller batch (run eagerly by the runner, the graph kept). Step 6: both
        // optimisers reload their own state, which moves their moment buffers: the runner
        // must drop its graph, warm up and capture again.
        let b = batch(if step == 5 { n - 1 } else { n }, &config, &mut rng, dev)?;
        if step == 6 {
            let (a, g) = (eager_adam.state()?, graph_adam.state()?);
            eager_adam.load_state(&a)?;
            graph_adam.load_state(&g)?;
        }
        let calls = queued_calls(dev);
        let eager = queue_step(&eager_model, &mut eager_adam, b.inputs(step))?.finish()?;
        let (before, calls_between) = (driver_allocs(dev), queued_calls(dev));
        let graphed = runner.queue(&graph_model, &mut graph_adam, b.inputs(step))?.finish()?;
        if matches!(step, 3 | 4) {
            // Replays of the graph captured at step 2.
            replay_allocs += driver_allocs(dev) - before;
            eager_calls += calls_between - calls;
            replay_calls += queued_calls(dev) - calls_between;
        }
        assert!(eager.is_finite(), "step {step}: loss {eager}");
        if bitwise {
            assert_eq!(eager.to_bits(), graphed.to_bits(), "step {step}: eager loss {eager}, graph {graphed}");
        }
        worst = worst.max((eager - graphed).abs() / eager.abs().max(1e-6));
    }
    assert_eq!(eager_adam.steps(), graph_adam.steps());
    if dev.is_cuda() {
        // Captured at step 2, replayed at 3 and 4, eager at 5 (another shape), dropped at 6,
        // warm-up at 6 and 7, captured again at 8.
        assert_eq!(runner.graph_steps(), 4, "steps run by a graph");
        assert!(runner.graph().is_some());
        assert!(runner.take_notice().is_none(), "graphs were not given up");
        assert_eq!(replay_allocs, 0, "driver allocations during replays");
        // A replay queues its feed copies, the image copy, one launch, and two output buffers
        // (zeroed before the launch, copied after).
        assert!(replay_calls * 10 <= eager_calls, "a replay queued {replay_calls} work items, the eager step {eager_calls}");
        eprintln!("{dev}: work items queued per step: eager {}, replay {}", eager_calls / 2, replay_calls / 2);
    } else {
        assert_eq!(runner.graph_steps(), 0);
    }
    if bitwise {
        for ((name, a), (_, b)) in state(&eager_model, &eager_adam)?.iter().zip(&state(&graph_model, &graph_adam)?) {
            let same = a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits());
            assert!(same, "{name} differs between the eager and the graph steps");
        }
    }
    Ok(worst)
}

#[test]
fn graph_replays_are_the_eager_steps() -> Result<()> {
    let _serial = serial();
    let mut devices = vec![Device::Cpu];
    devices.extend(cuda_device());
    for dev in &devices {
        settings::set_deterministic(true);
        eager_against_graph(dev, true)?;
        settings::set_deterministic(false);
        let worst = eager_against_graph(dev, false)?;
        assert!(worst <= 1e-2, "{dev}: with atomics the losses differ by {worst:e} relative");
        eprintln!("{dev}: graph steps bitwise equal to eager steps (deterministic); losses within {worst:e} (atomics)");
    }
    settings::set_deterministic(false);
    Ok(())
}

/// The same in bf16 mixed precision (bf16 convolutions with their transposing casts, bf16
/// GEMMs), deterministic: the replayed steps equal the eager ones bit for bit.
#[test]
fn bf16_graph_replays_are_the_eager_steps() -> Result<()> {
    let _serial = serial();
    let mut devices = vec![Device::Cpu];
    devices.extend(cuda_device().filter(common::runs_bf16_convolutions));
    // Restored when dropped, on a failure too.
    let _restore = settings::save();
    settings::set_deterministic(true);
    settings::set_bf16_conv(true);
    settings::set_bf16_gemm(true);
    for dev in &devices {
        eager_against_graph(dev, true)?;
        if let Device::Cuda(d) = dev {
            // The bf16 path ran, not only its f32 fallback.
            assert_eq!(hyperseg_engine::backend::cuda::cudnn::bf16_refusals(d), 0, "cuDNN refused bf16 convolutions");
        }
        eprintln!("{dev}: bf16 graph steps bitwise equal");
    }
    Ok(())
}

/// The trainer with `cuda_graph` on gives the same run as without, bit for bit in deterministic
/// mode: every epoch's loss and validation scores, and the weights and optimiser state it saves.
/// Validation (dense inference, eager) runs between epochs while the graph holds its memory.
#[test]
fn training_with_graphs_is_training_without() -> Result<()> {
    let _serial = serial();
    let mut devices = vec![Device::Cpu];
    devices.extend(cuda_device());
    let (train_dir, val_dir) = bundled_sample();
    settings::set_deterministic(true);
    for dev in &devices {
        let dir = tempfile::tempdir().expect("a temporary folder");
        let run = |cuda_graph: bool| -> Result<(Vec<EpochRecord>, Vec<u8>, Vec<u8>)> {
            let out = dir.path().join(if cuda_graph { "graph" } else { "eager" });
            let opts = TrainOptions {
                data: train_dir.clone(),
                val: Some(val_dir.clone()),
                out: out.clone(),
                config: ModelConfig { input_size: 32, batch_size: 4, sample_points: 256, mlp_dropout: 0.3, ..ModelConfig::tiny() },
                epochs: 2,
                seed: 3,
                resume: None,
                augment: Augment::paper(),
                workers: 1,
                infer: InferOptions::default(),
                cuda_graph,
            };
            let mut notices = Notices(Vec::new());
            let summary = train(&opts, dev, &mut notices)?;
            if cuda_graph && dev.is_cuda() {
                // On the GPU the steps must really run as a graph: giving graphs up is a notice.
                assert!(notices.0.is_empty(), "{dev}: CUDA graphs were given up: {:?}", notices.0);
            }
            let read = |name: &str| std::fs::read(out.join(name)).expect("a checkpoint file");
            Ok((summary.records, read("last.safetensors"), read("last.optim.safetensors")))
        };
        let (eager, graph) = (run(false)?, run(true)?);
        for (a, b) in eager.0.iter().zip(&graph.0) {
            assert_eq!((a.epoch, a.step), (b.epoch, b.step));
            assert_eq!(
                a.train_loss.to_bits(),
                b.train_loss.to_bits(),
                "{dev}: epoch {} loss {} vs {}",
                a.epoch,
                a.train_loss,
                b.train_loss
            );
            assert_eq!(a.val_jaccard.map(f64::to_bits), b.val_jaccard.map(f64::to_bits), "{dev}: epoch {} validation", a.epoch);
            assert_eq!(a.val_dice.map(f64::to_bits), b.val_dice.map(f64::to_bits));
        }
        assert_eq!(eager.0.len(), 2);
        assert!(eager.1 == graph.1, "{dev}: the saved weights differ");
        assert!(eager.2 == graph.2, "{dev}: the saved optimiser states differ");
        eprintln!("{dev}: two epochs with and without CUDA graphs: identical losses, scores and checkpoints");
    }
    settings::set_deterministic(false);
    Ok(())
}

/// A trainer observer that keeps the notices and shows nothing.
struct Notices(Vec<String>);
impl TrainObserver for Notices {
    fn on_notice(&mut self, message: &str) {
        self.0.push(message.to_string());
    }
}

/// A loss with class weights cannot be replayed (its normalisation is a launch parameter):
/// the capture fails with a typed error and nothing has run.
#[test]
fn a_refused_capture_changes_nothing() -> Result<()> {
    let _serial = serial();
    let Some(dev) = cuda_device() else { return Ok(()) };
    let Device::Cuda(cuda) = &dev else { unreachable!("cuda_device gives a CUDA device") };
    let config = config();
    let model = HypercolumnNet::new(config.clone(), &mut ChaCha8Rng::seed_from_u64(2), &dev)?;
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    let b = batch(config.batch_size, &config, &mut rng, &dev)?;
    // One eager forward first, as the runner's warm-up does: a capture only runs convolution
    // algorithms chosen before it.
    model.forward_sparse(&b.images, &b.points, true, 0)?.softmax_cross_entropy(&b.labels, None)?.to_scalar()?;
    let before = model.parameters()[0].to_vec()?;
    let feeds = StepFeeds { step: 0, points: SamplePoint::words(&b.points).to_vec(), labels: b.labels.clone(), adam: [0.0; 3] };
    cuda.begin_capture(feeds)?;
    let logits = model.forward_sparse(&b.images, &b.points, true, 0);
    let loss = logits.and_then(|l| l.softmax_cross_entropy(&b.labels, Some(&[1.0, 2.0])));
    cuda.abort_capture();
    match loss {
        Err(hyperseg_engine::Error::GraphCapture { msg }) => assert!(msg.contains("class-weighted"), "{msg}"),
        other => panic!("expected a refused capture, got {:?}", other.map(|_| ())),
    }
    assert!(!cuda.is_capturing());
    assert_eq!(model.parameters()[0].to_vec()?, before, "nothing ran");
    // The device still works eagerly.
    let loss = model.forward_sparse(&b.images, &b.points, true, 0)?.softmax_cross_entropy(&b.labels, None)?;
    assert!(loss.to_scalar()?.is_finite());
    Ok(())
}
