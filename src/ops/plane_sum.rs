//! The factored dense path's fused first layer: pixel-major per-tap planes, bilinearly
//! sampled at pixels, summed, plus the bias, through ReLU. Inference only.

use crate::autograd::records;
use crate::backend::{PlaneSumSpec, SamplePoint};
use crate::error::{Error, Result};
use crate::storage::Storage;
use crate::tensor::Tensor;

/// `relu(bias + sum_i z_i)` at each of `points` (pixels of an `in_h x in_w` frame), where
/// plane `i` is `[n, h_i, w_i, cols]` (pixel-major: one row of `cols` values per feature-map
/// pixel) and `z_i` is its bilinear sample at the point, with the gather's rule and weights.
/// `[points, cols]`.
///
/// With `plane_i = W1_i . tap_i` this is the first MLP layer of every listed pixel's
/// hypercolumn (linearity of bilinear sampling), in one pass that reads each plane's rows
/// contiguously. There is no backward: it is an error to call it in grad mode with an input
/// that needs a gradient.
pub fn upsample_sum_bias_relu(planes: &[&Tensor], bias: &Tensor, points: &[SamplePoint], in_h: usize, in_w: usize) -> Result<Tensor> {
    const OP: &str = "upsample_sum_bias_relu";
    let first = planes.first().ok_or_else(|| Error::bad_shape(OP, "no planes given"))?;
    if records(&[&[bias], planes].concat()) {
        return Err(Error::InvalidValue {
            name: OP,
            msg: "it has no backward (inference only): call it under no_grad or on detached tensors".into(),
        });
    }
    let [n, _, _, cols] = first.shape().dims4(OP)?;
    let mut spec = PlaneSumSpec { n, in_h, in_w, cols, planes: Vec::with_capacity(planes.len()) };
    for p in planes {
        first.same_device(p, OP)?;
        let [pn, h, w, c] = p.shape().dims4(OP)?;
        if pn != n || c != cols {
            return Err(Error::ShapeMismatch { op: OP, lhs: first.dims().to_vec(), rhs: p.dims().to_vec() });
        }
        spec.planes.push((h, w));
    }
    bias.same_device(first, OP)?;
    let guards: Vec<_> = planes.iter().map(|t| t.storage()).collect();
    let refs: Vec<&Storage> = guards.iter().map(|g| &**g).collect();
    let out = Storage::upsample_sum_bias_relu(&refs, &bias.storage(), points, &spec)?;
    Tensor::from_storage(out, [points.len(), cols])
}
