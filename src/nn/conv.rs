//! A 2-D convolution layer: weight `[c_out, c_in, k, k]`, optional bias `[c_out]`.

use rand::Rng;

use super::{init::kaiming_normal, join, Module, Named};
use crate::device::Device;
use crate::error::Result;
use crate::tensor::Tensor;

/// A square-kernel convolution with stride and zero padding.
pub struct Conv2d {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
    pub stride: usize,
    pub pad: usize,
}

impl Conv2d {
    /// He-initialised weights; a zero bias when `bias` is set.
    pub fn new(
        c_in: usize,
        c_out: usize,
        k: usize,
        stride: usize,
        pad: usize,
        bias: bool,
        rng: &mut impl Rng,
        device: &Device,
    ) -> Result<Conv2d> {
        let weight = kaiming_normal(&[c_out, c_in, k, k], c_in * k * k, rng, device)?;
        let bias = if bias { Some(Tensor::zeros([c_out], device)?.to_variable()?) } else { None };
        Ok(Conv2d { weight, bias, stride, pad })
    }

    /// Applies the convolution.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        x.conv2d(&self.weight, self.bias.as_ref(), self.stride, self.pad)
    }
}

impl Module for Conv2d {
    fn named_tensors(&self, prefix: &str, out: &mut Vec<Named>) {
        out.push(Named { name: join(prefix, "weight"), tensor: self.weight.clone(), trainable: true });
        if let Some(b) = &self.bias {
            out.push(Named { name: join(prefix, "bias"), tensor: b.clone(), trainable: true });
        }
    }
}
