//! 2x2 stride-2 max pooling (floor mode) and its backward.

use crate::backend::Nchw;
use crate::error::Result;
use crate::tensor::Tensor;

impl Tensor {
    /// Max over each 2x2 window of `self [n, c, h, w]`: `[n, c, h/2, w/2]`.
    pub fn max_pool2x2(&self) -> Result<Tensor> {
        let [n, c, h, w] = self.shape().dims4("max_pool2x2")?;
        let d = Nchw { n, c, h, w };
        let out = self.storage().max_pool2x2(d)?;
        let x = self.detach();
        Tensor::from_op(out, [n, c, h / 2, w / 2].into(), "max_pool2x2", &[self], move |g, _| {
            Ok(vec![Some(Tensor::from_storage(x.storage().max_pool2x2_backward(&g.storage(), d)?, [n, c, h, w])?)])
        })
    }
}
