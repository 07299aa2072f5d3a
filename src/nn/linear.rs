//! A fully-connected layer: weight `[out, in]` (PyTorch's layout), bias `[out]`.

use rand::Rng;

use super::{init::kaiming_normal, join, Module, Named};
use crate::device::Device;
use crate::error::Result;
use crate::tensor::Tensor;

/// `y = x W^T + b`.
pub struct Linear {
    pub weight: Tensor,
    pub bias: Tensor,
}

impl Linear {
    /// He-initialised weights, zero bias.
    pub fn new(inputs: usize, outputs: usize, rng: &mut impl Rng, device: &Device) -> Result<Linear> {
        Ok(Linear {
            weight: kaiming_normal(&[outputs, inputs], inputs, rng, device)?,
            bias: Tensor::zeros([outputs], device)?.to_variable()?,
        })
    }

    /// Applies the layer to `x [rows, in]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        x.linear(&self.weight, Some(&self.bias))
    }
}

impl Module for Linear {
    fn named_tensors(&self, prefix: &str, out: &mut Vec<Named>) {
        out.push(Named { name: join(prefix, "weight"), tensor: self.weight.clone(), trainable: true });
        out.push(Named { name: join(prefix, "bias"), tensor: self.bias.clone(), trainable: true });
    }
}
