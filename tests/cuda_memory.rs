//! Memory planning on the GPU: after the first steps, a training step (and a dense inference)
//! is served entirely from the caching allocator; no block is requested from the driver.
//! Its own test binary, because it switches the global deterministic setting.
//! Without a GPU it prints that it was skipped; with HYPERSEG_REQUIRE_GPU=1 it fails.

mod common;

use common::cuda_device;
use hyperseg_engine::model::{sample_points, DensePath, HypercolumnNet, ModelConfig};
use hyperseg_engine::nn::Module;
use hyperseg_engine::optim::{Adam, AdamConfig};
use hyperseg_engine::train::{queue_step, StepInputs};
use hyperseg_engine::{settings, Device, Result, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Driver allocations so far on a CUDA device; 0 on the CPU (which runs the same steps so that
/// the test's own logic is exercised without a GPU).
fn driver_allocs(dev: &Device) -> u64 {
    match dev {
        Device::Cuda(d) => d.memory_stats().driver_allocs,
        Device::Cpu => 0,
    }
}

#[test]
fn steps_after_the_first_allocate_nothing_from_the_driver() -> Result<()> {
    steady_state(&Device::Cpu)?;
    match cuda_device() {
        Some(dev) => steady_state(&dev),
        None => Ok(()),
    }
}

fn steady_state(dev: &Device) -> Result<()> {
    let dev = dev.clone();
    for deterministic in [false, true] {
        settings::set_deterministic(deterministic);
        let config = ModelConfig::tiny();
        let (n, s) = (config.batch_size, config.input_size);
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let model = HypercolumnNet::new(config.clone(), &mut rng, &dev)?;
        let mut adam = Adam::new(model.parameters(), AdamConfig::default())?;
        let mut step = |i: u64, rng: &mut ChaCha8Rng| -> Result<f32> {
            // New images and new random pixels every step, as in training; the trainer's step.
            let images: Vec<f32> = (0..n * 3 * s * s).map(|_| rng.random_range(-100.0..100.0)).collect();
            let masks: Vec<u8> = (0..n * s * s).map(|_| u8::from(rng.random_bool(0.3))).collect();
            let (points, labels) = sample_points(n, s, config.sample_points, &masks, rng);
            let images = Tensor::from_vec(images, [n, 3, s, s], &dev)?;
            queue_step(&model, &mut adam, StepInputs::new(&images, &points, &labels, i, 0))?.finish()
        };
        for i in 0..2 {
            step(i, &mut rng)?;
        }
        let before = driver_allocs(&dev);
        for i in 2..6 {
            assert!(step(i, &mut rng)?.is_finite());
        }
        let after = driver_allocs(&dev);
        assert_eq!(after, before, "deterministic={deterministic}: {} driver allocations in 4 steady training steps", after - before);

        let image = Tensor::from_vec((0..3 * s * s).map(|_| rng.random_range(-100.0..100.0)).collect(), [1, 3, s, s], &dev)?;
        for path in [DensePath::Naive, DensePath::Factored] {
            model.predict_dense(&image, path, 1000)?;
            let before = driver_allocs(&dev);
            model.predict_dense(&image, path, 1000)?;
            assert_eq!(driver_allocs(&dev), before, "deterministic={deterministic}: dense {path:?} allocated from the driver");
        }
        let what = if dev.is_cuda() { "allocate nothing from the driver" } else { "ran (no allocation count on the CPU)" };
        eprintln!("{dev}, deterministic={deterministic}: steady training steps and dense inference {what}");
    }
    settings::set_deterministic(false);
    Ok(())
}
