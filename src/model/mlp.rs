//! The per-pixel classifier on hypercolumns: linear layers with ReLU (and optional dropout)
//! between them, ending in the class logits.

use rand::Rng;

use crate::device::Device;
use crate::error::Result;
use crate::nn::{join, Linear, Module, Named};
use crate::tensor::Tensor;

/// `width -> hidden[0] -> ReLU -> ... -> classes`.
pub struct Mlp {
    pub layers: Vec<Linear>,
    pub dropout: f32,
}

impl Mlp {
    /// He-initialised layers.
    pub fn new(inputs: usize, hidden: &[usize], classes: usize, dropout: f32, rng: &mut impl Rng, device: &Device) -> Result<Mlp> {
        let mut layers = Vec::new();
        let mut width = inputs;
        for &h in hidden.iter().chain(std::iter::once(&classes)) {
            layers.push(Linear::new(width, h, rng, device)?);
            width = h;
        }
        Ok(Mlp { layers, dropout })
    }

    /// The hidden layers after the first linear layer's pre-activation `z1` (used by the
    /// factored dense path, which computes `z1` another way): ReLU, then the remaining layers.
    /// `dropout_seed` is `Some` in training.
    pub fn forward_from_first(&self, z1: &Tensor, dropout_seed: Option<u32>) -> Result<Tensor> {
        let mut x = z1.clone();
        for (i, layer) in self.layers.iter().enumerate().skip(1) {
            x = x.relu()?;
            if let (Some(seed), true) = (dropout_seed, self.dropout > 0.0) {
                x = x.dropout(self.dropout, seed.wrapping_add(i as u32))?;
            }
            x = layer.forward(&x)?;
        }
        Ok(x)
    }

    /// Logits `[rows, classes]` of hypercolumns `[rows, width]`.
    pub fn forward(&self, x: &Tensor, dropout_seed: Option<u32>) -> Result<Tensor> {
        self.forward_from_first(&self.layers[0].forward(x)?, dropout_seed)
    }
}

impl Module for Mlp {
    fn named_tensors(&self, prefix: &str, out: &mut Vec<Named>) {
        for (i, l) in self.layers.iter().enumerate() {
            l.named_tensors(&join(prefix, &format!("fc{}", i + 1)), out);
        }
    }
}
