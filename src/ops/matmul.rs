//! Matrix products: `matmul` and the fully-connected `linear` layer (`x W^T + b`), with their
//! backward as GEMMs.

use super::{when, Grads};
use crate::backend::{BroadcastSpec, GemmSpec};
use crate::error::{Error, Result};
use crate::tensor::Tensor;

fn gemm(a: &Tensor, b: &Tensor, g: GemmSpec) -> Result<Tensor> {
    Tensor::from_storage(a.storage().gemm(&b.storage(), g)?, [g.m, g.n])
}

impl Tensor {
    /// `self [m, k] * rhs [k, n]`.
    pub fn matmul(&self, rhs: &Tensor) -> Result<Tensor> {
        self.same_device(rhs, "matmul")?;
        let [m, k] = self.shape().dims2("matmul")?;
        let [k2, n] = rhs.shape().dims2("matmul")?;
        if k != k2 {
            return Err(Error::ShapeMismatch { op: "matmul", lhs: self.dims().to_vec(), rhs: rhs.dims().to_vec() });
        }
        let out = gemm(self, rhs, GemmSpec { m, n, k, trans_a: false, trans_b: false })?;
        let (a, b) = (self.detach(), rhs.detach());
        Ok(out.record("matmul", &[self, rhs], move |g, need| -> Result<Grads> {
            Ok(vec![
                when(need[0], || gemm(g, &b, GemmSpec { m, n: k, k: n, trans_a: false, trans_b: true }))?,
                when(need[1], || gemm(&a, g, GemmSpec { m: k, n, k: m, trans_a: true, trans_b: false }))?,
            ])
        }))
    }

    /// A fully-connected layer: `self [m, in] * weight^T + bias`, weight `[out, in]` (PyTorch's
    /// layout), bias `[out]`.
    pub fn linear(&self, weight: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
        self.same_device(weight, "linear")?;
        let [m, k] = self.shape().dims2("linear")?;
        let [n, k2] = weight.shape().dims2("linear")?;
        if k != k2 {
            return Err(Error::ShapeMismatch { op: "linear", lhs: self.dims().to_vec(), rhs: weight.dims().to_vec() });
        }
        let mut y = self.storage().gemm(&weight.storage(), GemmSpec { m, n, k, trans_a: false, trans_b: true })?;
        let out_shape = [m, n];
        if let Some(b) = bias {
            let bs = BroadcastSpec { outer: m, mid: n, inner: 1 };
            if b.dims() != [n] {
                return Err(Error::ShapeMismatch { op: "linear bias", lhs: vec![n], rhs: b.dims().to_vec() });
            }
            b.same_device(self, "linear")?;
            y = y.broadcast_add(&b.storage(), bs)?;
        }
        let out = Tensor::from_storage(y, out_shape)?;
        let (x, w) = (self.detach(), weight.detach());
        let inputs: Vec<&Tensor> = match bias {
            Some(b) => vec![self, weight, b],
            None => vec![self, weight],
        };
        Ok(out.record("linear", &inputs, move |g, need| -> Result<Grads> {
            let mut grads = vec![
                when(need[0], || gemm(g, &w, GemmSpec { m, n: k, k: n, trans_a: false, trans_b: false }))?,
                when(need[1], || gemm(g, &x, GemmSpec { m: n, n: k, k: m, trans_a: true, trans_b: false }))?,
            ];
            if need.len() == 3 {
                grads.push(when(need[2], || {
                    Tensor::from_storage(g.storage().reduce_to_mid(BroadcastSpec { outer: m, mid: n, inner: 1 })?, [n])
                })?);
            }
            Ok(grads)
        }))
    }

    /// A fully-connected layer followed by ReLU, fused: `relu(self [m, in] * weight^T + bias)`.
    /// One GEMM, then one pass that adds the bias and clamps in place (and, backward, one pass
    /// that masks the gradient and sums the bias gradient), where `linear` then `relu` make
    /// three passes and keep two `[m, out]` buffers alive for the backward.
    pub fn linear_relu(&self, weight: &Tensor, bias: &Tensor) -> Result<Tensor> {
        self.same_device(weight, "linear_relu")?;
        bias.same_device(self, "linear_relu")?;
        let [m, k] = self.shape().dims2("linear_relu")?;
        let [n, k2] = weight.shape().dims2("linear_relu")?;
        if k != k2 {
            return Err(Error::ShapeMismatch { op: "linear_relu", lhs: self.dims().to_vec(), rhs: weight.dims().to_vec() });
        }
        if bias.dims() != [n] {
            return Err(Error::ShapeMismatch { op: "linear_relu bias", lhs: vec![n], rhs: bias.dims().to_vec() });
        }
        let mut y = self.storage().gemm(&weight.storage(), GemmSpec { m, n, k, trans_a: false, trans_b: true })?;
        y.bias_relu_assign(&bias.storage(), m, n)?;
        let out = Tensor::from_storage(y, [m, n])?;
        let (x, w, y) = (self.detach(), weight.detach(), out.clone());
        Ok(out.record("linear_relu", &[self, weight, bias], move |g, need| -> Result<Grads> {
            let (dz, db) = y.storage().bias_relu_backward(&g.storage(), m, n)?;
            let dz = Tensor::from_storage(dz, [m, n])?;
            Ok(vec![
                when(need[0], || gemm(&dz, &w, GemmSpec { m, n: k, k: n, trans_a: false, trans_b: false }))?,
                when(need[1], || gemm(&dz, &x, GemmSpec { m: n, n: k, k: m, trans_a: true, trans_b: false }))?,
                when(need[2], || Tensor::from_storage(db, [n]))?,
            ])
        }))
    }
}
