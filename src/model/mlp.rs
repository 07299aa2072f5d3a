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

    /// Logits `[rows, classes]` of hypercolumns `[rows, width]`. `dropout_seed` is `Some` in
    /// training.
    pub fn forward(&self, x: &Tensor, dropout_seed: Option<u32>) -> Result<Tensor> {
        let first = &self.layers[0];
        if self.layers.len() == 1 {
            return first.forward(x);
        }
        self.forward_after_first(&x.linear_relu(&first.weight, &first.bias)?, dropout_seed)
    }

    /// The rest of the MLP after the first hidden layer's activation `h1 = relu(W1 x + b1)`
    /// (the factored dense path computes `h1` another way): dropout, then each remaining layer,
    /// the hidden ones as fused linear + ReLU, the last one plain.
    pub fn forward_after_first(&self, h1: &Tensor, dropout_seed: Option<u32>) -> Result<Tensor> {
        let mut x = h1.clone();
        let last = self.layers.len() - 1;
        for (i, layer) in self.layers.iter().enumerate().skip(1) {
            if let (Some(seed), true) = (dropout_seed, self.dropout > 0.0) {
                x = x.dropout(self.dropout, seed.wrapping_add(i as u32))?;
            }
            x = if i == last { layer.forward(&x)? } else { x.linear_relu(&layer.weight, &layer.bias)? };
        }
        Ok(x)
    }
}

impl Module for Mlp {
    fn named_tensors(&self, prefix: &str, out: &mut Vec<Named>) {
        for (i, l) in self.layers.iter().enumerate() {
            l.named_tensors(&join(prefix, &format!("fc{}", i + 1)), out);
        }
    }
}
