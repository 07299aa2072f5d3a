//! One training step, as [`super::train`] runs it and [`crate::bench`] times it: sparse forward,
//! loss, backward, a device-side finiteness check of every gradient (one kernel), then Adam, all
//! queued without waiting for the device. The loss and the check are read back later
//! ([`PendingStep::finish`]); the trainer does that after queueing the next step, so the host
//! never leaves the device idle between steps (reading the loss right after the forward would
//! stall the device until the host had queued the backward).
//!
//! A step whose loss or gradient is not finite therefore has updated the weights in memory by
//! the time it is reported: the error ends the run and the weights are dropped, while the last
//! checkpoint on disk (of the previous epoch) stays the last good one.

use crate::backend::cuda::nvtx::range;
use crate::backend::SamplePoint;
use crate::error::{Error, Result};
use crate::model::HypercolumnNet;
use crate::ops::non_finite;
use crate::optim::Adam;
use crate::tensor::Tensor;

/// A step queued on the device whose loss and finiteness check have not been read yet.
#[must_use = "a queued step is checked for divergence only when finished"]
pub struct PendingStep {
    /// The global step number (the one a divergence error names).
    pub step: u64,
    /// The epoch it belongs to.
    pub epoch: usize,
    /// Images in its batch.
    pub images: usize,
    pub(super) loss: Tensor,
    pub(super) grad_check: Option<Tensor>,
}

impl PendingStep {
    /// Waits for the step and returns its loss, or [`Error::Diverged`] naming the step when the
    /// loss or any gradient was not finite.
    pub fn finish(self) -> Result<f32> {
        let diverged = |value: f32| Error::Diverged { step: self.step, epoch: self.epoch, value };
        let loss = self.loss.to_scalar()?;
        if !loss.is_finite() {
            return Err(diverged(loss));
        }
        if let Some(check) = &self.grad_check {
            let value = check.to_scalar()?;
            if value != 0.0 {
                return Err(diverged(value));
            }
        }
        Ok(loss)
    }
}

/// The inputs of one training step.
#[derive(Clone, Copy, Debug)]
pub struct StepInputs<'a> {
    /// The batch `[n, 3, s, s]`.
    pub images: &'a Tensor,
    /// The sampled pixels.
    pub points: &'a [SamplePoint],
    /// Their labels, one per point.
    pub labels: &'a [u32],
    /// The global step number: it seeds the dropout masks, and a divergence error names it.
    pub step: u64,
    /// The epoch the step belongs to.
    pub epoch: usize,
}

impl<'a> StepInputs<'a> {
    /// The inputs of step `step` of epoch `epoch`.
    pub fn new(images: &'a Tensor, points: &'a [SamplePoint], labels: &'a [u32], step: u64, epoch: usize) -> StepInputs<'a> {
        StepInputs { images, points, labels, step, epoch }
    }
}

/// Queues one training step of `model` on a batch (the images, the sampled points and their
/// labels). Returns without waiting for the device.
///
/// ```
/// use hyperseg_engine::model::{sample_points, HypercolumnNet, ModelConfig};
/// use hyperseg_engine::{nn::Module, optim::{Adam, AdamConfig}, Device, Tensor};
/// use hyperseg_engine::train::{queue_step, StepInputs};
/// use rand::{Rng, SeedableRng};
///
/// let (device, config) = (Device::Cpu, ModelConfig::tiny());
/// let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
/// let model = HypercolumnNet::new(config.clone(), &mut rng, &device)?;
/// let mut adam = Adam::new(model.parameters(), AdamConfig::default())?;
/// let (n, s) = (2, config.input_size);
/// let mut pending = None;
/// for step in 0..3 {
///     let pixels: Vec<f32> = (0..n * 3 * s * s).map(|_| rng.random_range(-100.0..100.0)).collect();
///     let masks: Vec<u8> = (0..n * s * s).map(|_| u8::from(rng.random_bool(0.4))).collect();
///     let (points, labels) = sample_points(n, s, 200, &masks, &mut rng);
///     let images = Tensor::from_vec(pixels, [n, 3, s, s], &device)?;
///     let queued = queue_step(&model, &mut adam, StepInputs::new(&images, &points, &labels, step, 0))?;
///     if let Some(done) = pending.replace(queued) {
///         assert!(done.finish()?.is_finite());
///     }
/// }
/// pending.expect("the last step").finish()?;
/// # Ok::<(), hyperseg_engine::Error>(())
/// ```
pub fn queue_step(model: &HypercolumnNet, adam: &mut Adam, inputs: StepInputs<'_>) -> Result<PendingStep> {
    let StepInputs { images, points, labels, step, epoch } = inputs;
    let loss = {
        let _range = range("forward");
        let logits = model.forward_sparse(images, points, true, step as u32)?;
        logits.softmax_cross_entropy(labels, None)?
    };
    adam.zero_grad();
    let grad_check = {
        let _range = range("backward");
        loss.backward()?;
        gradient_check(adam.params())?
    };
    {
        let _range = range("optimizer step");
        adam.step()?;
    }
    let images = images.dims().first().copied().unwrap_or(0);
    Ok(PendingStep { step, epoch, images, loss: loss.detach(), grad_check })
}

/// Whether every gradient of `params` is finite, as a scalar tensor on their device (`None`
/// when none has a gradient): `0.0` when all are, `NaN` or `+inf` otherwise. One pass over all
/// gradients ([`crate::ops::non_finite`]: one kernel launch on the GPU), read back later.
pub fn gradient_check(params: &[Tensor]) -> Result<Option<Tensor>> {
    let grads: Vec<Tensor> = params.iter().filter_map(Tensor::grad).collect();
    if grads.is_empty() {
        return Ok(None);
    }
    non_finite(&grads.iter().collect::<Vec<_>>()).map(Some)
}

/// [`gradient_check`] read back: `Some(NaN or inf)` when a gradient is not finite, else `None`.
pub fn non_finite_gradient(params: &[Tensor]) -> Result<Option<f32>> {
    match gradient_check(params)? {
        Some(t) => {
            let v = t.to_scalar()?;
            Ok((v != 0.0).then_some(v))
        }
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::Device;
    use crate::model::ModelConfig;
    use crate::nn::Module;
    use crate::optim::AdamConfig;
    use rand::SeedableRng;

    /// A queued step reports its own number when its loss is not finite, and its loss otherwise;
    /// the next step can be queued before the previous one is finished.
    #[test]
    fn finishing_a_step_reports_its_loss_or_its_divergence() {
        let dev = Device::Cpu;
        let config = ModelConfig::tiny();
        let (n, s) = (2, config.input_size);
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let model = HypercolumnNet::new(config, &mut rng, &dev).unwrap();
        let mut adam = Adam::new(model.parameters(), AdamConfig::default()).unwrap();
        let points: Vec<SamplePoint> = (0..40).map(|i| SamplePoint { image: i % 2, y: (i * 7) % 64, x: (i * 13) % 64 }).collect();
        let labels: Vec<u32> = (0..40).map(|i| i % 2).collect();
        let image =
            |v: f32| Tensor::from_vec((0..n * 3 * s * s).map(|i| v * ((i % 17) as f32 - 8.0)).collect(), [n, 3, s, s], &dev).unwrap();
        let (first, second) = (image(1.0), image(f32::NAN));
        let first = queue_step(&model, &mut adam, StepInputs::new(&first, &points, &labels, 6, 0)).unwrap();
        let second = queue_step(&model, &mut adam, StepInputs::new(&second, &points, &labels, 7, 0)).unwrap();
        assert_eq!((first.step, first.images), (6, 2));
        assert!(first.finish().unwrap().is_finite());
        match second.finish() {
            Err(Error::Diverged { step: 7, epoch: 0, value }) => assert!(!value.is_finite()),
            other => panic!("expected divergence at step 7, got {:?}", other.map(|_| ())),
        }
    }
}
