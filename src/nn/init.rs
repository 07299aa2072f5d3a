//! Weight initialisation.

use rand::Rng;

use crate::device::Device;
use crate::error::Result;
use crate::tensor::Tensor;

/// He (Kaiming) normal initialisation for a layer followed by ReLU: std `sqrt(2 / fan_in)`.
/// Returns a variable.
pub fn kaiming_normal(shape: &[usize], fan_in: usize, rng: &mut impl Rng, device: &Device) -> Result<Tensor> {
    let std = (2.0 / fan_in.max(1) as f32).sqrt();
    Tensor::randn(shape.to_vec(), std, rng, device)?.to_variable()
}
