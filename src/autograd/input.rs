//! [`Input`]: what a recorded op's node keeps of one of its input tensors. Only what the
//! backward walk needs: the input's identity and shape, and where its gradient goes (the node
//! that computed it, or the variable itself), never its values.

use std::sync::Arc;

use super::Node;
use crate::shape::Shape;
use crate::tensor::{Tensor, TensorId};

/// One input of a recorded op, as the tape keeps it.
pub struct Input {
    id: TensorId,
    shape: Shape,
    source: Source,
}

/// Where an input's gradient goes.
enum Source {
    /// Nowhere: the input needs no gradient.
    Untracked,
    /// Into the variable (a trainable leaf; its storage is a parameter, alive anyway).
    Variable(Tensor),
    /// Through the node of the op that computed it (shared with the tensor, and with every
    /// other op that read it).
    Computed(Arc<Node>),
}

impl Input {
    /// What the tape keeps of `t`: no handle on its storage unless it is a variable.
    pub(crate) fn of(t: &Tensor) -> Input {
        let source = match t.node() {
            _ if t.is_variable() => Source::Variable(t.clone()),
            Some(node) => Source::Computed(node.clone()),
            None => Source::Untracked,
        };
        Input { id: t.id(), shape: t.shape().clone(), source }
    }

    /// The input tensor's identity.
    pub fn id(&self) -> TensorId {
        self.id
    }
    /// The input tensor's shape (its gradient must have it).
    pub fn shape(&self) -> &Shape {
        &self.shape
    }
    /// The input tensor's dimensions.
    pub fn dims(&self) -> &[usize] {
        self.shape.dims()
    }
    /// Whether a gradient flows to the input (see [`Tensor::requires_grad`]).
    pub fn requires_grad(&self) -> bool {
        !matches!(self.source, Source::Untracked)
    }
    /// The variable, when the input is one.
    pub fn variable(&self) -> Option<&Tensor> {
        match &self.source {
            Source::Variable(v) => Some(v),
            _ => None,
        }
    }
    /// The node of the op that computed the input, when it was recorded.
    pub fn node(&self) -> Option<&Node> {
        match &self.source {
            Source::Computed(node) => Some(node),
            _ => None,
        }
    }
}
