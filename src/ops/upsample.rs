//! Dense bilinear upsampling (`align_corners=False`) and its backward.

use crate::backend::Nchw;
use crate::error::{Error, Result};
use crate::tensor::Tensor;

impl Tensor {
    /// Resizes `self [n, c, h, w]` to `[n, c, out_h, out_w]` bilinearly, with source coordinate
    /// `(dst + 0.5) * in / out - 0.5` clamped to the map.
    pub fn upsample_bilinear(&self, out_h: usize, out_w: usize) -> Result<Tensor> {
        let [n, c, h, w] = self.shape().dims4("upsample_bilinear")?;
        if h == 0 || w == 0 || out_h == 0 || out_w == 0 {
            return Err(Error::bad_shape("upsample_bilinear", format!("cannot resize {h}x{w} to {out_h}x{out_w}")));
        }
        let d = Nchw { n, c, h, w };
        let out = self.storage().upsample_bilinear(d, out_h, out_w)?;
        Tensor::from_op(out, [n, c, out_h, out_w].into(), "upsample_bilinear", &[self], move |g, _| {
            let dx = g.storage().upsample_bilinear_backward(d, out_h, out_w)?;
            Ok(vec![Some(Tensor::from_storage(dx, [n, c, h, w])?)])
        })
    }
}
