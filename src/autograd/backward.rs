//! `Tensor::backward`: topological order of the graph, then the reverse walk that runs each
//! node's backward closure and sums gradients.

use std::collections::{HashMap, HashSet};

use super::{Input, NoGradGuard};
use crate::error::{Error, Result};
use crate::tensor::{Tensor, TensorId};

/// The tracked inputs reachable from `root` (root included), inputs before the ops that use
/// them; each tensor once.
fn topological_order(root: &Input) -> Vec<&Input> {
    let mut order = Vec::new();
    let mut visited = HashSet::new();
    // Iterative post-order DFS: (input, children already pushed).
    let mut stack = vec![(root, false)];
    while let Some((t, expanded)) = stack.pop() {
        if expanded {
            order.push(t);
            continue;
        }
        if !visited.insert(t.id()) {
            continue;
        }
        stack.push((t, true));
        if let Some(node) = t.node() {
            for input in node.inputs.iter().filter(|i| i.requires_grad()) {
                if !visited.contains(&input.id()) {
                    stack.push((input, false));
                }
            }
        }
    }
    order
}

impl Tensor {
    /// Back-propagates from this scalar (usually the loss): every variable it depends on gets
    /// d self / d variable added to its gradient.
    pub fn backward(&self) -> Result<()> {
        if self.elem_count() != 1 {
            return Err(Error::NonScalarLoss(self.dims().to_vec()));
        }
        if !self.requires_grad() {
            return Err(Error::NoGraph);
        }
        let _no_grad = NoGradGuard::new();
        let root = Input::of(self);
        let order = topological_order(&root);
        let mut grads: HashMap<TensorId, Tensor> = HashMap::new();
        grads.insert(root.id(), Tensor::full(1.0, root.shape().clone(), self.device())?);
        for t in order.iter().rev() {
            let Some(g) = grads.remove(&t.id()) else { continue };
            if let Some(variable) = t.variable() {
                variable.accumulate_grad(g)?;
                continue;
            }
            let Some(node) = t.node() else { continue };
            let needs: Vec<bool> = node.inputs.iter().map(Input::requires_grad).collect();
            let input_grads = (node.backward)(&g, &needs)?;
            drop(g);
            for ((input, gi), need) in node.inputs.iter().zip(input_grads).zip(&needs) {
                let (Some(gi), true) = (gi, *need) else { continue };
                if gi.dims() != input.dims() {
                    return Err(Error::ShapeMismatch { op: node.op, lhs: input.dims().to_vec(), rhs: gi.dims().to_vec() });
                }
                let merged = match grads.remove(&input.id()) {
                    Some(acc) => acc.add(&gi)?,
                    None => gi,
                };
                grads.insert(input.id(), merged);
            }
        }
        Ok(())
    }
}
