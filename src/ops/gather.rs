//! The sparse hypercolumn gather: bilinear lookups of every tapped feature map at sampled
//! input pixels, written as one `[points, total_channels]` matrix, and its backward scatter.

use crate::backend::{GatherSpec, SamplePoint};
use crate::error::{Error, Result};
use crate::settings::deterministic;
use crate::storage::Storage;
use crate::tensor::Tensor;

/// Gathers the hypercolumns of `points` (pixels of an `in_h x in_w` input frame) from `taps`,
/// each `[n, c_i, h_i, w_i]` on one device: row `p` is the concatenation over taps of the
/// bilinear lookup at `u = (x + 0.5) * w_i / in_w - 0.5` (and the same for y). The backward
/// scatters into every tap (deterministic when [`crate::settings::deterministic`] is on).
pub fn gather_hypercolumns(taps: &[&Tensor], points: &[SamplePoint], in_h: usize, in_w: usize) -> Result<Tensor> {
    let first = taps.first().ok_or_else(|| Error::bad_shape("gather", "no feature maps given"))?;
    let n = first.shape().dims4("gather")?[0];
    let mut spec = GatherSpec { n, in_h, in_w, taps: Vec::with_capacity(taps.len()) };
    for t in taps {
        first.same_device(t, "gather")?;
        let [tn, c, h, w] = t.shape().dims4("gather")?;
        if tn != n {
            return Err(Error::ShapeMismatch { op: "gather", lhs: first.dims().to_vec(), rhs: t.dims().to_vec() });
        }
        spec.taps.push((c, h, w));
    }
    let guards: Vec<_> = taps.iter().map(|t| t.storage()).collect();
    let refs: Vec<&Storage> = guards.iter().map(|g| &**g).collect();
    let out = Storage::gather_hypercolumns(&refs, points, &spec)?;
    drop(guards);
    let points = points.to_vec();
    let ctot = spec.total_channels();
    Tensor::from_op(out, [points.len(), ctot].into(), "gather_hypercolumns", taps, move |g, need| {
        let grads = g.storage().gather_hypercolumns_backward(&points, &spec, deterministic())?;
        grads
            .into_iter()
            .zip(&spec.taps)
            .zip(need)
            .map(|((s, &(c, h, w)), &need)| if need { Tensor::from_storage(s, [n, c, h, w]).map(Some) } else { Ok(None) })
            .collect()
    })
}
