//! A 2-D convolution layer: weight `[c_out, c_in, k, k]`, optional bias `[c_out]`.

use rand::Rng;

use super::{init::kaiming_normal, join, Module, Named};
use crate::device::Device;
use crate::error::Result;
use crate::tensor::Tensor;

/// The geometry of a convolution layer and whether it has a bias.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvConfig {
    pub c_in: usize,
    pub c_out: usize,
    /// Kernel size (square).
    pub k: usize,
    pub stride: usize,
    /// Zero padding on every side.
    pub pad: usize,
    pub bias: bool,
}

impl ConvConfig {
    /// Stride 1, padding `k / 2` (the output keeps the input's size for odd `k`), no bias: the
    /// VGG convolutions (a batch norm follows each).
    pub fn same(c_in: usize, c_out: usize, k: usize) -> ConvConfig {
        ConvConfig { c_in, c_out, k, stride: 1, pad: k / 2, bias: false }
    }
}

/// A square-kernel convolution with stride and zero padding.
pub struct Conv2d {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
    pub stride: usize,
    pub pad: usize,
}

impl Conv2d {
    /// He-initialised weights; a zero bias when the configuration has one.
    pub fn new(config: ConvConfig, rng: &mut impl Rng, device: &Device) -> Result<Conv2d> {
        let ConvConfig { c_in, c_out, k, stride, pad, bias } = config;
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
