//! Softmax cross-entropy over classes, averaged over rows (the sampled pixels), optionally
//! class-weighted; the forward kernel returns the gradient too, so backward is one scaling.

use crate::backend::BroadcastSpec;
use crate::error::Result;
use crate::tensor::Tensor;

impl Tensor {
    /// Cross-entropy of logits `self [rows, classes]` against `labels` (one per row):
    /// `sum_r w[y_r] * -log softmax(z_r)[y_r] / sum_r w[y_r]`, a tensor of shape `[]`.
    pub fn softmax_cross_entropy(&self, labels: &[u32], class_weights: Option<&[f32]>) -> Result<Tensor> {
        let [_, classes] = self.shape().dims2("softmax_cross_entropy")?;
        let (loss, dlogits) = self.storage().softmax_cross_entropy(labels, classes, class_weights)?;
        let dlogits = Tensor::from_storage(dlogits, self.shape().clone())?;
        let len = self.elem_count();
        Tensor::from_op(loss, ().into(), "softmax_cross_entropy", &[self], move |g, _| {
            let s = dlogits.storage().broadcast_mul(&g.storage(), BroadcastSpec { outer: 1, mid: 1, inner: len })?;
            Ok(vec![Some(Tensor::from_storage(s, dlogits.shape().clone())?)])
        })
    }
}
