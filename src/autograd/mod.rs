//! The autograd tape: how ops record their backward, and how `backward` replays it.
//!
//! # What is recorded
//! An op run in grad mode on at least one tensor that [requires a
//! gradient](crate::Tensor::requires_grad) attaches a [`Node`] to its output: the op's name,
//! what the walk needs of its inputs ([`Input`]) and a backward closure that captured whatever
//! the backward needs (saved inputs, batch statistics, a dropout mask, the softmax gradient...).
//! In no-grad mode ([`no_grad`], [`NoGradGuard`]) and for ops on untracked tensors, nothing is
//! recorded and nothing is kept: the output holds its storage and no more.
//!
//! # What the tape keeps alive, and when it is freed
//! The tape is the graph of nodes reachable from a tensor. Each tracked tensor shares its node
//! (an `Arc`) with the nodes of the ops that read it. A node keeps of each input its identity,
//! its shape, and where its gradient goes: the node that computed it, or, for a variable, the
//! variable itself (a parameter, alive anyway). It keeps no handle on an input's values: an
//! intermediate tensor's storage is freed when its last handle is dropped, unless a backward
//! closure captured it: each closure captures what it reads and no more (the operands of
//! `mul`, the input of `sqr` or `max_pool2x2`, the output of `relu` or `exp`, a convolution's
//! operands, a batch norm's input and statistics; nothing of `add`, `sum_all`, `reshape`,
//! `upsample_bilinear` or `gather_hypercolumns`). What the closures captured is freed when
//! the last tensor of the graph is dropped, normally the loss at the end of a training step.
//! `backward` does not consume the graph (it may be called again on the same loss); the
//! gradients it computes for intermediate tensors are freed as soon as they have been
//! propagated, and only the variables' gradients remain.
//!
//! # Backward
//! [`crate::Tensor::backward`] orders the graph topologically (inputs before outputs), then
//! walks it in reverse, in the manner of a tape of closures: each node's closure turns the
//! gradient of its output into gradients of its inputs, which are summed when a tensor feeds
//! several ops. Backward itself runs in no-grad mode (no higher-order gradients). Variables
//! accumulate their gradient across backward calls until [`crate::Tensor::zero_grad`].

mod backward;
mod input;
#[cfg(test)]
mod tests;

pub use input::Input;

use std::cell::Cell;

use crate::error::Result;
use crate::tensor::Tensor;

/// A backward closure: given the gradient of the op's output and which inputs need a gradient,
/// returns one optional gradient per input (same order as [`Node::inputs`]).
pub type BackwardFn = Box<dyn Fn(&Tensor, &[bool]) -> Result<Vec<Option<Tensor>>> + Send + Sync>;

/// One recorded op.
pub struct Node {
    /// The op's name (shown in debug output and profiler ranges).
    pub op: &'static str,
    /// What the walk needs of the op's inputs, in the order the backward closure returns their
    /// gradients.
    pub inputs: Vec<Input>,
    /// Turns the output gradient into the inputs' gradients.
    pub backward: BackwardFn,
}

thread_local! {
    static GRAD_ENABLED: Cell<bool> = const { Cell::new(true) };
}

/// Whether ops on this thread record their backward.
pub fn grad_enabled() -> bool {
    GRAD_ENABLED.with(|g| g.get())
}

/// Whether an op on `inputs` records its backward now: in grad mode, when one of them
/// [requires a gradient](crate::Tensor::requires_grad).
pub fn records(inputs: &[&Tensor]) -> bool {
    grad_enabled() && inputs.iter().any(|t| t.requires_grad())
}

/// Disables recording on this thread until dropped (restoring the previous mode).
pub struct NoGradGuard {
    previous: bool,
}

impl NoGradGuard {
    /// Enters no-grad mode.
    #[allow(clippy::new_without_default)]
    pub fn new() -> NoGradGuard {
        let previous = GRAD_ENABLED.with(|g| g.replace(false));
        NoGradGuard { previous }
    }
}

impl Drop for NoGradGuard {
    fn drop(&mut self) {
        GRAD_ENABLED.with(|g| g.set(self.previous));
    }
}

/// Runs `f` without recording anything (inference).
pub fn no_grad<R>(f: impl FnOnce() -> R) -> R {
    let _guard = NoGradGuard::new();
    f()
}
