//! A 2-D batch-norm layer with affine parameters and running statistics.
//!
//! Training mode normalises with the batch's statistics and updates the running mean and
//! (unbiased) variance as `running = (1 - momentum) * running + momentum * batch` (PyTorch's
//! convention, momentum 0.1); eval mode normalises with the running statistics.

use super::{join, Module, Named};
use crate::autograd::no_grad;
use crate::device::Device;
use crate::error::Result;
use crate::tensor::Tensor;

/// Batch norm over the channels of an NCHW map.
pub struct BatchNorm2d {
    pub gamma: Tensor,
    pub beta: Tensor,
    pub running_mean: Tensor,
    pub running_var: Tensor,
    pub momentum: f32,
    pub eps: f32,
}

impl BatchNorm2d {
    /// gamma 1, beta 0, running mean 0, running variance 1, momentum 0.1, eps 1e-5.
    pub fn new(channels: usize, device: &Device) -> Result<BatchNorm2d> {
        Ok(BatchNorm2d {
            gamma: Tensor::full(1.0, [channels], device)?.to_variable()?,
            beta: Tensor::zeros([channels], device)?.to_variable()?,
            running_mean: Tensor::zeros([channels], device)?,
            running_var: Tensor::full(1.0, [channels], device)?,
            momentum: 0.1,
            eps: 1e-5,
        })
    }

    /// Normalises `x`; in training mode also updates the running statistics.
    pub fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        if !train {
            return x.batch_norm_eval(&self.gamma, &self.beta, &self.running_mean, &self.running_var, self.eps);
        }
        let (y, stats) = x.batch_norm_train(&self.gamma, &self.beta, self.eps)?;
        no_grad(|| -> Result<()> {
            let m = self.momentum;
            let mean = self.running_mean.affine(1.0 - m, 0.0)?.add(&stats.mean.affine(m, 0.0)?)?;
            let var = self.running_var.affine(1.0 - m, 0.0)?.add(&stats.var_unbiased.affine(m, 0.0)?)?;
            self.running_mean.assign(&mean)?;
            self.running_var.assign(&var)
        })?;
        Ok(y)
    }
}

impl Module for BatchNorm2d {
    fn named_tensors(&self, prefix: &str, out: &mut Vec<Named>) {
        out.push(Named { name: join(prefix, "weight"), tensor: self.gamma.clone(), trainable: true });
        out.push(Named { name: join(prefix, "bias"), tensor: self.beta.clone(), trainable: true });
        out.push(Named { name: join(prefix, "running_mean"), tensor: self.running_mean.clone(), trainable: false });
        out.push(Named { name: join(prefix, "running_var"), tensor: self.running_var.clone(), trainable: false });
    }
}
