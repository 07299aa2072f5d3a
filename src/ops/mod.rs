//! Differentiable ops on [`crate::Tensor`], one family per file. Each op checks devices and
//! shapes (a typed error, never a panic), runs the forward kernel of the tensor's backend and,
//! in grad mode, records a backward closure on the tape (see [`crate::autograd`]).

mod batch_norm;
mod broadcast;
mod conv;
mod conv_batch_norm;
mod dropout;
mod elementwise;
mod gather;
mod loss;
mod matmul;
mod plane_sum;
mod pool;
mod shape_ops;
mod upsample;

pub use batch_norm::BatchStats;
pub use elementwise::non_finite;
pub use gather::gather_hypercolumns;
pub use plane_sum::upsample_sum_bias_relu;
pub use shape_ops::concat;

use crate::tensor::Tensor;

/// One gradient per input, `None` where the input needs none.
pub(crate) type Grads = Vec<Option<Tensor>>;

/// Computes `f()` only when `need` is set.
pub(crate) fn when<F>(need: bool, f: F) -> crate::error::Result<Option<Tensor>>
where
    F: FnOnce() -> crate::error::Result<Tensor>,
{
    if need {
        f().map(Some)
    } else {
        Ok(None)
    }
}
