//! A convolution followed by training-mode batch norm (and, optionally, the ReLU after it) as
//! one recorded op: a VGG layer in training; and the same layer in eval mode
//! ([`Tensor::conv2d_batch_norm_eval`]).
//!
//! The convolution's output is never a tensor: it exists only as the batch norm's input, which
//! the backend holds in the form that batch norm reads ([`crate::storage::NormInput`]; in the
//! CUDA bf16 mode NCHW bf16, the very values the f32 tensor of [`Tensor::conv2d`] would hold, at
//! half the memory and half the traffic of every pass that reads it). The backward pass runs the
//! batch-norm backward on it, then the convolution's backward on the resulting gradient with the
//! operand copies the forward pass kept; that gradient too is handed over in the form the
//! convolution reads ([`crate::storage::ConvGrad`]; in the CUDA bf16 mode the batch-norm kernel
//! writes it as the NHWC bf16 copy the bf16 convolution would otherwise cast it to). With the ReLU, the batch-norm backward recomputes its
//! mask (where the output was > 0) from that held input, gamma, beta and the statistics, so the
//! op's output is not kept for the backward pass. Values and gradients are bit for bit those of
//! [`Tensor::conv2d`] followed by [`Tensor::batch_norm_train`] or
//! [`Tensor::batch_norm_relu_train`].

use super::batch_norm::{check_batch, check_params, forward_parts, BatchStats};
use super::conv::{conv_keep, conv_spec, kept_input_tensor};
use super::{when, Grads};
use crate::autograd::records;
use crate::backend::{ConvKeep, Nchw};
use crate::error::Result;
use crate::tensor::Tensor;

impl Tensor {
    /// `batch_norm_train(conv2d(self, weight, stride, pad), gamma, beta, eps)` (no convolution
    /// bias: the batch norm's mean would cancel it), then ReLU when `relu`; one recorded op whose
    /// intermediate is held as the backend's batch-norm input. Returns the batch statistics
    /// too.
    #[allow(clippy::too_many_arguments)]
    pub fn conv2d_batch_norm_train(
        &self,
        weight: &Tensor,
        stride: usize,
        pad: usize,
        gamma: &Tensor,
        beta: &Tensor,
        eps: f32,
        relu: bool,
    ) -> Result<(Tensor, BatchStats)> {
        let s = conv_spec(self, weight, stride, pad)?;
        let d = Nchw { n: s.n, c: s.c_out, h: s.out_h(), w: s.out_w() };
        check_params(self, &[gamma, beta], "batch_norm", d.c)?;
        check_batch(d)?;
        let (conv_out, kept) = self.storage().conv2d_for_norm(&weight.storage(), &s, conv_keep(self, weight))?;
        let f = conv_out.batch_norm_train(&gamma.storage(), &beta.storage(), d, eps, relu)?;
        let (y, mean, invstd, stats) = forward_parts(f, d.c)?;
        let y = Tensor::from_storage(y, [d.n, d.c, d.h, d.w])?;
        // beta is read by the backward only with the ReLU (its mask is recomputed from conv_out).
        let (x, w, g_, b_) = (kept_input_tensor(self, weight, &kept), weight.detach(), gamma.detach(), beta.detach());
        let x_shape = self.shape().clone();
        let op = if relu { "conv2d_batch_norm_relu" } else { "conv2d_batch_norm" };
        let y = y.record(op, &[self, weight, gamma, beta], move |g, need| -> Result<Grads> {
            let (g_, b_, mean, invstd) = (g_.storage(), b_.storage(), mean.storage(), invstd.storage());
            let b = conv_out.batch_norm_backward_for_conv(&g.storage(), &g_, &b_, &mean, &invstd, d, relu)?;
            let [dx, dw] = if need[0] || need[1] {
                b.dx.conv2d_backward(x.as_ref().map(|x| x.storage()).as_deref(), &w.storage(), &s, &kept, [need[0], need[1]])?
            } else {
                [None, None]
            };
            Ok(vec![
                dx.map(|dx| Tensor::from_storage(dx, x_shape.clone())).transpose()?,
                dw.map(|dw| Tensor::from_storage(dw, w.shape().clone())).transpose()?,
                when(need[2], || Tensor::from_storage(b.dgamma, [d.c]))?,
                when(need[3], || Tensor::from_storage(b.dbeta, [d.c]))?,
            ])
        });
        Ok((y, stats))
    }

    /// `batch_norm_eval(conv2d(self, weight, stride, pad), gamma, beta, running_mean,
    /// running_var, eps)`, then ReLU when `relu`: a VGG layer in eval mode (inference,
    /// validation). When nothing is recorded (no-grad mode, or no operand needs a gradient, as in
    /// inference) the convolution's output is held only as the backend's batch-norm input (in the
    /// CUDA bf16 mode NCHW bf16, exactly the values of the f32 output) and keeps nothing for a
    /// backward pass; otherwise it is the composition of the two recorded ops. Either way the
    /// values are bit for bit those of the composition.
    #[allow(clippy::too_many_arguments)]
    pub fn conv2d_batch_norm_eval(
        &self,
        weight: &Tensor,
        stride: usize,
        pad: usize,
        gamma: &Tensor,
        beta: &Tensor,
        running_mean: &Tensor,
        running_var: &Tensor,
        eps: f32,
        relu: bool,
    ) -> Result<Tensor> {
        if records(&[self, weight, gamma, beta]) {
            return self.conv2d(weight, None, stride, pad)?.batch_norm_eval_impl(gamma, beta, running_mean, running_var, eps, relu);
        }
        let s = conv_spec(self, weight, stride, pad)?;
        let d = Nchw { n: s.n, c: s.c_out, h: s.out_h(), w: s.out_w() };
        check_params(self, &[gamma, beta, running_mean, running_var], "batch_norm_eval", d.c)?;
        let (conv_out, _) = self.storage().conv2d_for_norm(&weight.storage(), &s, ConvKeep::NOTHING)?;
        let y =
            conv_out.batch_norm_eval(&gamma.storage(), &beta.storage(), &running_mean.storage(), &running_var.storage(), d, eps, relu)?;
        Tensor::from_storage(y, [d.n, d.c, d.h, d.w])
    }
}
