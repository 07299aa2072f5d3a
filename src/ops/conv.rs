//! 2-D convolution (NCHW, any kernel, stride and padding, optional bias) and its backward:
//! the input gradient, the weight gradient and the bias gradient. When the backward is
//! recorded, the forward keeps what its backend prepared of the operands the backward reads
//! (the CUDA bf16 mode's operand copies), and the backward computes both gradients in one call;
//! those copies are x and w as they were at the forward pass (the backward of the recorded
//! forward, even if a tensor were changed in place in between; the f32 paths re-read them).

use super::{when, Grads};
use crate::autograd::grad_enabled;
use crate::backend::{BroadcastSpec, ConvKeep, ConvSpec};
use crate::error::{Error, Result};
use crate::storage::ConvKept;
use crate::tensor::Tensor;

/// The geometry of convolving `x [n, c_in, h, w]` with `weight [c_out, c_in, kh, kw]`, checked.
pub(super) fn conv_spec(x: &Tensor, weight: &Tensor, stride: usize, pad: usize) -> Result<ConvSpec> {
    x.same_device(weight, "conv2d")?;
    let [n, c_in, h, w] = x.shape().dims4("conv2d")?;
    let [c_out, c_in2, kh, kw] = weight.shape().dims4("conv2d weight")?;
    if c_in != c_in2 {
        return Err(Error::ShapeMismatch { op: "conv2d", lhs: x.dims().to_vec(), rhs: weight.dims().to_vec() });
    }
    if stride == 0 || h + 2 * pad < kh || w + 2 * pad < kw {
        return Err(Error::bad_shape(
            "conv2d",
            format!("a {kh}x{kw} kernel with stride {stride} and padding {pad} does not fit a {h}x{w} input"),
        ));
    }
    Ok(ConvSpec { n, c_in, h, w, c_out, kh, kw, stride, pad })
}

/// What the backward pass of convolving `x` with `weight` will read, if one is recorded: x for
/// dw, w for dx.
pub(super) fn conv_keep(x: &Tensor, weight: &Tensor) -> ConvKeep {
    let recording = grad_enabled();
    ConvKeep { input: recording && weight.requires_grad(), weight: recording && x.requires_grad() }
}

/// The input tensor as a convolution's backward pass needs it: for the weight gradient, unless
/// the forward pass kept the input's copy that gradient reads instead
/// ([`ConvKept::holds_input`]; the CUDA bf16 mode), so that the graph does not keep the f32
/// input alive for nothing.
pub(super) fn kept_input_tensor(x: &Tensor, weight: &Tensor, kept: &ConvKept) -> Option<Tensor> {
    (weight.requires_grad() && !kept.holds_input()).then(|| x.detach())
}

impl Tensor {
    /// Convolves `self [n, c_in, h, w]` with `weight [c_out, c_in, kh, kw]`, adding `bias [c_out]`.
    pub fn conv2d(&self, weight: &Tensor, bias: Option<&Tensor>, stride: usize, pad: usize) -> Result<Tensor> {
        let s = conv_spec(self, weight, stride, pad)?;
        let ConvSpec { n, c_in, h, w, c_out, kh, kw, .. } = s;
        let (oh, ow) = (s.out_h(), s.out_w());
        let bs = BroadcastSpec { outer: n, mid: c_out, inner: oh * ow };
        let (mut y, kept) = self.storage().conv2d_keeping(&weight.storage(), &s, conv_keep(self, weight))?;
        if let Some(b) = bias {
            b.same_device(self, "conv2d")?;
            if b.dims() != [c_out] {
                return Err(Error::ShapeMismatch { op: "conv2d bias", lhs: vec![c_out], rhs: b.dims().to_vec() });
            }
            y = y.broadcast_add(&b.storage(), bs)?;
        }
        let out = Tensor::from_storage(y, [n, c_out, oh, ow])?;
        let (x, wt) = (kept_input_tensor(self, weight, &kept), weight.detach());
        let mut inputs = vec![self, weight];
        inputs.extend(bias);
        Ok(out.record("conv2d", &inputs, move |g, need| -> Result<Grads> {
            let gs = g.storage();
            let x = x.as_ref().map(|x| x.storage());
            let [dx, dw] = gs.conv2d_backward(x.as_deref(), &wt.storage(), &s, &kept, [need[0], need[1]])?;
            let mut grads = vec![
                dx.map(|dx| Tensor::from_storage(dx, [n, c_in, h, w])).transpose()?,
                dw.map(|dw| Tensor::from_storage(dw, [c_out, c_in, kh, kw])).transpose()?,
            ];
            if need.len() == 3 {
                grads.push(when(need[2], || Tensor::from_storage(gs.reduce_to_mid(bs)?, [c_out]))?);
            }
            Ok(grads)
        }))
    }
}
