//! A 2-D batch-norm layer with affine parameters and running statistics.
//!
//! Training mode normalises with the batch's statistics and updates the running mean and
//! (unbiased) variance as `running += momentum * (batch - running)`, i.e. PyTorch's
//! `(1 - momentum) * running + momentum * batch` with momentum 0.1; eval mode normalises with the running statistics.

use super::{join, Module, Named};
use crate::autograd::no_grad;
use crate::device::Device;
use crate::error::Result;
use crate::ops::BatchStats;
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
        self.forward_impl(x, train, false)
    }

    /// `relu(self.forward(x, train))`, with the ReLU fused into the batch-norm kernels.
    pub fn forward_relu(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        self.forward_impl(x, train, true)
    }

    fn forward_impl(&self, x: &Tensor, train: bool, relu: bool) -> Result<Tensor> {
        if !train {
            let (g, b, m, v) = (&self.gamma, &self.beta, &self.running_mean, &self.running_var);
            return if relu { x.batch_norm_relu_eval(g, b, m, v, self.eps) } else { x.batch_norm_eval(g, b, m, v, self.eps) };
        }
        let (y, stats) = if relu {
            x.batch_norm_relu_train(&self.gamma, &self.beta, self.eps)?
        } else {
            x.batch_norm_train(&self.gamma, &self.beta, self.eps)?
        };
        self.update_running(&stats)?;
        Ok(y)
    }

    /// Folds a training batch's statistics into the running ones:
    /// `running += momentum * (batch - running)`, in place (two kernels per statistic).
    pub fn update_running(&self, stats: &BatchStats) -> Result<()> {
        no_grad(|| -> Result<()> {
            for (running, batch) in [(&self.running_mean, &stats.mean), (&self.running_var, &stats.var_unbiased)] {
                let delta = batch.sub(running)?;
                running.storage_mut().add_scaled_assign(&delta.storage(), self.momentum)?;
            }
            Ok(())
        })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn running_statistics_follow_pytorch() {
        let x: Vec<f32> = (0..2 * 2 * 3).map(|i| ((i * 7 % 5) as f32) * 0.5 - 1.0).collect();
        let bn = BatchNorm2d::new(2, &Device::Cpu).unwrap();
        bn.forward(&Tensor::from_vec(x.clone(), [2, 2, 3, 1], &Device::Cpu).unwrap(), true).unwrap();
        for c in 0..2 {
            let vals: Vec<f64> = (0..2).flat_map(|n| (0..3).map(move |i| (n * 2 + c) * 3 + i)).map(|i| x[i] as f64).collect();
            let mean = vals.iter().sum::<f64>() / 6.0;
            let unbiased = vals.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / 5.0;
            let rm = bn.running_mean.to_vec().unwrap()[c] as f64;
            let rv = bn.running_var.to_vec().unwrap()[c] as f64;
            assert!((rm - 0.1 * mean).abs() < 1e-6, "running mean {rm} vs {}", 0.1 * mean);
            assert!((rv - (0.9 + 0.1 * unbiased)).abs() < 1e-6, "running var {rv} vs {}", 0.9 + 0.1 * unbiased);
        }
    }

    /// An eval-mode forward's gradient uses the running statistics of its forward pass, even
    /// when a training step updates them in place before the backward pass.
    #[test]
    fn eval_backward_uses_the_statistics_of_its_forward() {
        let dev = Device::Cpu;
        let bn = BatchNorm2d::new(2, &dev).unwrap();
        let x = Tensor::from_vec((0..12).map(|i| i as f32 * 0.3 - 1.0).collect(), [2, 2, 3, 1], &dev).unwrap().to_variable().unwrap();
        // Running mean 0 and variance 1: d(sum y)/dx = gamma / sqrt(1 + eps) = 1 / sqrt(1 + eps).
        let y = bn.forward(&x, false).unwrap();
        let batch: Vec<f32> = (0..12).map(|i| (i * 5 % 7) as f32 * 2.0).collect();
        bn.forward(&Tensor::from_vec(batch, [2, 2, 3, 1], &dev).unwrap(), true).unwrap();
        assert!(bn.running_var.to_vec().unwrap()[0] > 1.5, "the training step did not move the running variance");
        y.sum_all().unwrap().backward().unwrap();
        let want = 1.0 / (1.0f32 + bn.eps).sqrt();
        for g in x.grad().unwrap().to_vec().unwrap() {
            assert!((g - want).abs() < 1e-6, "gradient {g}, not {want}: the backward read the updated statistics");
        }
    }
}
