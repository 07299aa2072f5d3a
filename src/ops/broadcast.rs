//! Per-channel broadcasts: adding or multiplying a vector along axis 1 (a bias or a scale per
//! channel of an NCHW map, per column of a matrix), with their backward.

use crate::backend::BroadcastSpec;
use crate::error::{Error, Result};
use crate::tensor::Tensor;

use super::{when, Grads};

/// Views `x` as `[dims[0], dims[1], rest]` and checks that `v` has `dims[1]` elements.
pub(crate) fn channel_spec(x: &Tensor, v: &Tensor, op: &'static str) -> Result<BroadcastSpec> {
    x.same_device(v, op)?;
    let d = x.dims();
    if d.len() < 2 || v.dims() != [d[1]] {
        return Err(Error::ShapeMismatch { op, lhs: d.to_vec(), rhs: v.dims().to_vec() });
    }
    Ok(BroadcastSpec { outer: d[0], mid: d[1], inner: d[2..].iter().product() })
}

impl Tensor {
    /// `self[:, c, ...] + v[c]`: a bias per channel (axis 1).
    pub fn add_channels(&self, v: &Tensor) -> Result<Tensor> {
        let s = channel_spec(self, v, "add_channels")?;
        let out = self.storage().broadcast_add(&v.storage(), s)?;
        Tensor::from_op(out, self.shape().clone(), "add_channels", &[self, v], move |g, need| -> Result<Grads> {
            Ok(vec![Some(g.clone()), when(need[1], || Tensor::from_storage(g.storage().reduce_to_mid(s)?, [s.mid]))?])
        })
    }

    /// `self[:, c, ...] * v[c]`: a scale per channel (axis 1).
    pub fn mul_channels(&self, v: &Tensor) -> Result<Tensor> {
        let s = channel_spec(self, v, "mul_channels")?;
        let out = self.storage().broadcast_mul(&v.storage(), s)?;
        let (x, vv) = (self.detach(), v.detach());
        Tensor::from_op(out, self.shape().clone(), "mul_channels", &[self, v], move |g, need| -> Result<Grads> {
            Ok(vec![
                when(need[0], || g.mul_channels(&vv))?,
                when(need[1], || Tensor::from_storage(g.mul(&x)?.storage().reduce_to_mid(s)?, [s.mid]))?,
            ])
        })
    }

    /// Sums over every axis but axis 1: `[C]`.
    pub fn sum_channels(&self) -> Result<Tensor> {
        let d = self.dims();
        if d.len() < 2 {
            return Err(Error::bad_shape("sum_channels", format!("shape {d:?} has no axis 1")));
        }
        let s = BroadcastSpec { outer: d[0], mid: d[1], inner: d[2..].iter().product() };
        let out = self.storage().reduce_to_mid(s)?;
        let shape = self.shape().clone();
        Tensor::from_op(out, [s.mid].into(), "sum_channels", &[self], move |g, _| {
            let zeros = Tensor::zeros(shape.clone(), g.device())?;
            Ok(vec![Some(zeros.add_channels(g)?)])
        })
    }
}
