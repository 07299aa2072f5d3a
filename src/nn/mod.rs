//! Layers with parameters: 2-D convolution, 2-D batch norm, linear. Each owns its variables
//! (and batch norm its running statistics) and names them, so that a model can list its
//! parameters for the optimiser and its tensors for a checkpoint.

mod batch_norm;
mod conv;
mod init;
mod linear;

pub use batch_norm::BatchNorm2d;
pub use conv::{Conv2d, ConvConfig};
pub use init::kaiming_normal;
pub use linear::Linear;

use crate::tensor::Tensor;

/// A named tensor of a model: a trainable parameter or a buffer (running statistics).
#[derive(Clone, Debug)]
pub struct Named {
    /// Dotted path, e.g. `features.conv1_1.weight`.
    pub name: String,
    /// The tensor (a variable for parameters).
    pub tensor: Tensor,
    /// True for trainable parameters, false for buffers.
    pub trainable: bool,
}

/// Something that owns named tensors.
pub trait Module {
    /// Every tensor, parameters and buffers, with `prefix.` prepended to its name.
    fn named_tensors(&self, prefix: &str, out: &mut Vec<Named>);

    /// The trainable parameters only.
    fn parameters(&self) -> Vec<Tensor> {
        let mut all = Vec::new();
        self.named_tensors("", &mut all);
        all.into_iter().filter(|n| n.trainable).map(|n| n.tensor).collect()
    }
}

/// `prefix.name`, or `name` when the prefix is empty.
pub fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_string()
    } else {
        format!("{prefix}.{name}")
    }
}
