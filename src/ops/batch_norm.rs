//! 2-D batch norm: training mode (batch statistics, a fused forward and backward kernel, with
//! or without a fused ReLU) and eval mode (running statistics, one normalising pass, ReLU fused
//! when asked).

use super::{when, Grads};
use crate::autograd::records;
use crate::backend::{BatchNormForward, Nchw};
use crate::error::{Error, Result};
use crate::storage::Storage;
use crate::tensor::Tensor;

/// The batch statistics of one training-mode batch-norm call, for the running averages.
pub struct BatchStats {
    /// Per-channel mean.
    pub mean: Tensor,
    /// Per-channel unbiased variance.
    pub var_unbiased: Tensor,
}

/// The dimensions of `x`, checked against per-channel `params` (on its device, `[c]` each).
pub(super) fn check(x: &Tensor, params: &[&Tensor], op: &'static str) -> Result<Nchw> {
    let [n, c, h, w] = x.shape().dims4(op)?;
    check_params(x, params, op, c)?;
    Ok(Nchw { n, c, h, w })
}

/// An error unless every one of `params` is on `x`'s device with shape `[c]`.
pub(super) fn check_params(x: &Tensor, params: &[&Tensor], op: &'static str, c: usize) -> Result<()> {
    for p in params {
        x.same_device(p, op)?;
        if p.dims() != [c] {
            return Err(Error::ShapeMismatch { op, lhs: vec![c], rhs: p.dims().to_vec() });
        }
    }
    Ok(())
}

/// An error unless training-mode batch norm over `d` has more than one value per channel.
pub(super) fn check_batch(d: Nchw) -> Result<()> {
    if d.n * d.h * d.w < 2 {
        return Err(Error::bad_shape("batch_norm", "training mode needs more than one value per channel"));
    }
    Ok(())
}

/// A training-mode forward's output storage, its mean and invstd as tensors (the backward pass
/// reads them) and the statistics for the running averages.
pub(super) fn forward_parts(f: BatchNormForward<Storage>, c: usize) -> Result<(Storage, Tensor, Tensor, BatchStats)> {
    let mean = Tensor::from_storage(f.mean, [c])?;
    let invstd = Tensor::from_storage(f.invstd, [c])?;
    let stats = BatchStats { mean: mean.clone(), var_unbiased: Tensor::from_storage(f.var_unbiased, [c])? };
    Ok((f.y, mean, invstd, stats))
}

impl Tensor {
    /// Training-mode batch norm of `self [n, c, h, w]`: normalised with the batch's own
    /// per-channel statistics, then `gamma * xhat + beta`. Returns the statistics too.
    pub fn batch_norm_train(&self, gamma: &Tensor, beta: &Tensor, eps: f32) -> Result<(Tensor, BatchStats)> {
        self.batch_norm_train_impl(gamma, beta, eps, false)
    }

    /// [`Tensor::batch_norm_train`] followed by ReLU, fused: the normalising pass clamps at 0 and
    /// the backward masks the incoming gradient inside the batch-norm backward kernels, so no
    /// separate ReLU pass reads or writes the activation either way. The mask (where the output
    /// was > 0) is recomputed from the input, gamma, beta and the batch statistics, bit for bit
    /// the output's own, so the backward neither keeps nor reads the output.
    pub fn batch_norm_relu_train(&self, gamma: &Tensor, beta: &Tensor, eps: f32) -> Result<(Tensor, BatchStats)> {
        self.batch_norm_train_impl(gamma, beta, eps, true)
    }

    fn batch_norm_train_impl(&self, gamma: &Tensor, beta: &Tensor, eps: f32, relu: bool) -> Result<(Tensor, BatchStats)> {
        let d = check(self, &[gamma, beta], "batch_norm")?;
        check_batch(d)?;
        let f = self.storage().batch_norm_train(&gamma.storage(), &beta.storage(), d, eps, relu)?;
        let (y, mean, invstd, stats) = forward_parts(f, d.c)?;
        let y = Tensor::from_storage(y, self.shape().clone())?;
        // beta is read by the backward only with the ReLU (its mask is recomputed from x).
        let (x, g_, b_) = (self.detach(), gamma.detach(), beta.detach());
        let op = if relu { "batch_norm_relu" } else { "batch_norm" };
        let y = y.record(op, &[self, gamma, beta], move |g, need| -> Result<Grads> {
            let (g_, b_, mean, invstd) = (g_.storage(), b_.storage(), mean.storage(), invstd.storage());
            let b = x.storage().batch_norm_backward(&g.storage(), &g_, &b_, &mean, &invstd, d, relu)?;
            Ok(vec![
                when(need[0], || Tensor::from_storage(b.dx, x.shape().clone()))?,
                when(need[1], || Tensor::from_storage(b.dgamma, [d.c]))?,
                when(need[2], || Tensor::from_storage(b.dbeta, [d.c]))?,
            ])
        });
        Ok((y, stats))
    }

    /// Eval-mode batch norm: `gamma * (x - running_mean) / sqrt(running_var + eps) + beta`, in
    /// one pass over `self [n, c, h, w]` ([`crate::backend::BackendStorage::batch_norm_eval`]: the
    /// training mode's normalisation with the running statistics, `1 / sqrt(var + eps)` formed
    /// in f64). The running statistics are constants here (buffers, not trained): gradients
    /// flow to `self`, gamma and beta.
    pub fn batch_norm_eval(&self, gamma: &Tensor, beta: &Tensor, running_mean: &Tensor, running_var: &Tensor, eps: f32) -> Result<Tensor> {
        self.batch_norm_eval_impl(gamma, beta, running_mean, running_var, eps, false)
    }

    /// [`Tensor::batch_norm_eval`] followed by ReLU, in the same pass.
    pub fn batch_norm_relu_eval(
        &self,
        gamma: &Tensor,
        beta: &Tensor,
        running_mean: &Tensor,
        running_var: &Tensor,
        eps: f32,
    ) -> Result<Tensor> {
        self.batch_norm_eval_impl(gamma, beta, running_mean, running_var, eps, true)
    }

    pub(super) fn batch_norm_eval_impl(
        &self,
        gamma: &Tensor,
        beta: &Tensor,
        running_mean: &Tensor,
        running_var: &Tensor,
        eps: f32,
        relu: bool,
    ) -> Result<Tensor> {
        let d = check(self, &[gamma, beta, running_mean, running_var], "batch_norm_eval")?;
        let storage = self.storage();
        let y =
            storage.batch_norm_eval(&gamma.storage(), &beta.storage(), &running_mean.storage(), &running_var.storage(), d, eps, relu)?;
        drop(storage);
        let y = Tensor::from_storage(y, self.shape().clone())?;
        if !records(&[self, gamma, beta]) {
            return Ok(y);
        }
        // What the backward reads, taken now: the running statistics are updated in place by
        // later training steps. Its scale is `gamma / sqrt(var + eps)` in f32 (the forward's
        // invstd is formed in f64: they differ by an ulp at most).
        let (std, neg_mean) = (running_var.affine(1.0, eps)?.sqrt()?, running_mean.neg()?);
        let out = relu.then(|| y.detach());
        let x = gamma.requires_grad().then(|| self.detach());
        let g_ = gamma.detach();
        let op = if relu { "batch_norm_relu_eval" } else { "batch_norm_eval" };
        Ok(y.record(op, &[self, gamma, beta], move |g, need| -> Result<Grads> {
            // With the ReLU, the gradient where the output was not > 0 is 0.
            let g = match &out {
                Some(y) => Tensor::from_storage(y.storage().relu_backward(&g.storage())?, g.shape().clone())?,
                None => g.clone(),
            };
            Ok(vec![
                when(need[0], || g.mul_channels(&g_.div(&std)?))?,
                when(need[1], || {
                    let x = x.as_ref().ok_or(Error::NoGraph)?;
                    g.mul(&x.add_channels(&neg_mean)?)?.sum_channels()?.div(&std)
                })?,
                when(need[2], || g.sum_channels())?,
            ])
        }))
    }
}
