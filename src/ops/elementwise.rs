//! Elementwise ops (add, sub, mul, div, neg, square, sqrt, exp, log, ReLU, affine) and
//! whole-tensor sums, with their backward.

use super::{when, Grads};
use crate::backend::{BinaryOp, BroadcastSpec, UnaryOp};
use crate::error::Result;
use crate::storage::Storage;
use crate::tensor::Tensor;

fn binary(a: &Tensor, b: &Tensor, op: BinaryOp, name: &'static str) -> Result<Tensor> {
    a.same_device(b, name)?;
    a.same_shape(b, name)?;
    let out = a.storage().binary(&b.storage(), op)?;
    let (shape, inputs) = (a.shape().clone(), [a, b]);
    // Each backward captures only the operands it reads (the tape keeps none).
    match op {
        BinaryOp::Add => Tensor::from_op(out, shape, name, &inputs, |g, _| Ok(vec![Some(g.clone()), Some(g.clone())])),
        BinaryOp::Sub => Tensor::from_op(out, shape, name, &inputs, |g, need| Ok(vec![Some(g.clone()), when(need[1], || g.neg())?])),
        BinaryOp::Mul => {
            let (x, y) = (a.detach(), b.detach());
            Tensor::from_op(out, shape, name, &inputs, move |g, need| -> Result<Grads> {
                Ok(vec![when(need[0], || g.mul(&y))?, when(need[1], || g.mul(&x))?])
            })
        }
        BinaryOp::Div => {
            let (x, y) = (a.detach(), b.detach());
            Tensor::from_op(out, shape, name, &inputs, move |g, need| -> Result<Grads> {
                Ok(vec![when(need[0], || g.div(&y))?, when(need[1], || g.mul(&x)?.div(&y.sqr()?)?.neg())?])
            })
        }
    }
}

fn unary(a: &Tensor, op: UnaryOp, name: &'static str) -> Result<Tensor> {
    let out = Tensor::from_storage(a.storage().unary(op)?, a.shape().clone())?;
    let one = |dx: Tensor| -> Result<Grads> { Ok(vec![Some(dx)]) };
    // Each backward captures only what it reads: the input (sqr, log), the output (sqrt, exp,
    // relu; it shares the recorded output's storage) or nothing (neg).
    Ok(match op {
        UnaryOp::Neg => out.record(name, &[a], move |g, _| one(g.neg()?)),
        UnaryOp::Sqr => {
            let x = a.detach();
            out.record(name, &[a], move |g, _| one(g.mul(&x)?.affine(2.0, 0.0)?))
        }
        UnaryOp::Log => {
            let x = a.detach();
            out.record(name, &[a], move |g, _| one(g.div(&x)?))
        }
        UnaryOp::Sqrt => {
            let y = out.clone();
            out.record(name, &[a], move |g, _| one(g.div(&y)?.affine(0.5, 0.0)?))
        }
        UnaryOp::Exp => {
            let y = out.clone();
            out.record(name, &[a], move |g, _| one(g.mul(&y)?))
        }
        UnaryOp::Relu => {
            let y = out.clone();
            out.record(name, &[a], move |g, _| one(Tensor::from_storage(y.storage().relu_backward(&g.storage())?, g.shape().clone())?))
        }
    })
}

impl Tensor {
    /// `self + rhs`, same shapes.
    pub fn add(&self, rhs: &Tensor) -> Result<Tensor> {
        binary(self, rhs, BinaryOp::Add, "add")
    }
    /// `self - rhs`, same shapes.
    pub fn sub(&self, rhs: &Tensor) -> Result<Tensor> {
        binary(self, rhs, BinaryOp::Sub, "sub")
    }
    /// `self * rhs` elementwise, same shapes.
    pub fn mul(&self, rhs: &Tensor) -> Result<Tensor> {
        binary(self, rhs, BinaryOp::Mul, "mul")
    }
    /// `self / rhs` elementwise, same shapes.
    pub fn div(&self, rhs: &Tensor) -> Result<Tensor> {
        binary(self, rhs, BinaryOp::Div, "div")
    }
    /// `-self`.
    pub fn neg(&self) -> Result<Tensor> {
        unary(self, UnaryOp::Neg, "neg")
    }
    /// `self * self`.
    pub fn sqr(&self) -> Result<Tensor> {
        unary(self, UnaryOp::Sqr, "sqr")
    }
    /// Square root.
    pub fn sqrt(&self) -> Result<Tensor> {
        unary(self, UnaryOp::Sqrt, "sqrt")
    }
    /// `e^self`.
    pub fn exp(&self) -> Result<Tensor> {
        unary(self, UnaryOp::Exp, "exp")
    }
    /// Natural logarithm.
    pub fn log(&self) -> Result<Tensor> {
        unary(self, UnaryOp::Log, "log")
    }
    /// `max(self, 0)`.
    pub fn relu(&self) -> Result<Tensor> {
        unary(self, UnaryOp::Relu, "relu")
    }

    /// `self * mul + add`.
    pub fn affine(&self, mul: f32, add: f32) -> Result<Tensor> {
        let out = self.storage().affine(mul, add)?;
        Tensor::from_op(out, self.shape().clone(), "affine", &[self], move |g, _| Ok(vec![Some(g.affine(mul, 0.0)?)]))
    }

    /// The sum of all elements, as a tensor of shape `[]`.
    pub fn sum_all(&self) -> Result<Tensor> {
        let out = self.storage().sum_all()?;
        let (shape, len) = (self.shape().clone(), self.elem_count());
        Tensor::from_op(out, ().into(), "sum_all", &[self], move |g, _| {
            let ones = Storage::zeros(g.device(), len)?;
            let dx = ones.broadcast_add(&g.storage(), BroadcastSpec { outer: 1, mid: 1, inner: len })?;
            Ok(vec![Some(Tensor::from_storage(dx, shape.clone())?)])
        })
    }

    /// The mean of all elements, as a tensor of shape `[]`.
    pub fn mean_all(&self) -> Result<Tensor> {
        self.sum_all()?.affine(1.0 / self.elem_count().max(1) as f32, 0.0)
    }
}

/// Whether every element of every tensor is finite, as a scalar tensor on their device: `0.0`
/// when all are, `NaN` when some element is NaN, else `+inf`. One pass over all of them (one
/// kernel launch on the GPU); no gradient.
pub fn non_finite(tensors: &[&Tensor]) -> Result<Tensor> {
    let first = tensors.first().ok_or_else(|| crate::error::Error::bad_shape("non_finite", "no tensors given"))?;
    for t in tensors {
        first.same_device(t, "non_finite")?;
    }
    let guards: Vec<_> = tensors.iter().map(|t| t.storage()).collect();
    let refs: Vec<&crate::storage::Storage> = guards.iter().map(|g| &**g).collect();
    Tensor::from_storage(crate::storage::Storage::non_finite(&refs)?, ())
}
