//! Shape ops: reshape (shares storage), concatenation and slicing along an axis.

use crate::backend::BlockCopy;
use crate::error::{Error, Result};
use crate::shape::Shape;
use crate::storage::Storage;
use crate::tensor::Tensor;

/// `(outer, axis length, inner)` of `dims` around `axis`.
fn split(dims: &[usize], axis: usize) -> (usize, usize, usize) {
    (dims[..axis].iter().product(), dims[axis], dims[axis + 1..].iter().product())
}

/// Concatenates `tensors` along `axis`; all other dimensions must agree.
pub fn concat(tensors: &[&Tensor], axis: usize) -> Result<Tensor> {
    let first = tensors.first().ok_or_else(|| Error::bad_shape("concat", "nothing to concatenate"))?;
    if axis >= first.shape().rank() {
        return Err(Error::bad_shape("concat", format!("axis {axis} out of range for {:?}", first.dims())));
    }
    let mut total = 0;
    for t in tensors {
        first.same_device(t, "concat")?;
        let same_rest = t.shape().rank() == first.shape().rank()
            && t.dims().iter().zip(first.dims()).enumerate().all(|(i, (a, b))| i == axis || a == b);
        if !same_rest {
            return Err(Error::ShapeMismatch { op: "concat", lhs: first.dims().to_vec(), rhs: t.dims().to_vec() });
        }
        total += t.dims()[axis];
    }
    let mut dims = first.dims().to_vec();
    dims[axis] = total;
    let (outer, _, inner) = split(&dims, axis);
    let mut out = Storage::zeros(first.device(), dims.iter().product())?;
    let mut offsets = Vec::with_capacity(tensors.len());
    let mut at = 0;
    for t in tensors {
        let len = t.dims()[axis];
        t.storage().copy_blocks_into(
            &mut out,
            BlockCopy {
                outer,
                block: len * inner,
                src_stride: len * inner,
                src_offset: 0,
                dst_stride: total * inner,
                dst_offset: at * inner,
            },
        )?;
        offsets.push((at, len));
        at += len;
    }
    Tensor::from_op(out, dims.into(), "concat", tensors, move |g, need| {
        offsets.iter().zip(need).map(|(&(start, len), &need)| if need { g.narrow(axis, start, len).map(Some) } else { Ok(None) }).collect()
    })
}

impl Tensor {
    /// The same values under another shape with the same element count (no copy).
    pub fn reshape(&self, shape: impl Into<Shape>) -> Result<Tensor> {
        let shape = shape.into();
        if shape.elem_count() != self.elem_count() {
            return Err(Error::ShapeMismatch { op: "reshape", lhs: self.dims().to_vec(), rhs: shape.dims().to_vec() });
        }
        let old = self.shape().clone();
        let view = self.view_with_node(shape, None);
        Ok(view.record("reshape", &[self], move |g, _| Ok(vec![Some(g.reshape(old.clone())?)])))
    }

    /// The `len` entries starting at `start` along `axis` (a copy).
    pub fn narrow(&self, axis: usize, start: usize, len: usize) -> Result<Tensor> {
        let dims = self.dims().to_vec();
        if axis >= dims.len() || start + len > dims[axis] {
            return Err(Error::bad_shape("narrow", format!("{start}..{} along axis {axis} of {dims:?}", start + len)));
        }
        let (outer, full, inner) = split(&dims, axis);
        let mut out_dims = dims.clone();
        out_dims[axis] = len;
        let mut out = Storage::zeros(self.device(), outer * len * inner)?;
        let c = BlockCopy {
            outer,
            block: len * inner,
            src_stride: full * inner,
            src_offset: start * inner,
            dst_stride: len * inner,
            dst_offset: 0,
        };
        self.storage().copy_blocks_into(&mut out, c)?;
        Tensor::from_op(out, out_dims.into(), "narrow", &[self], move |g, _| {
            let mut dx = Storage::zeros(g.device(), outer * full * inner)?;
            let back = BlockCopy {
                outer,
                block: len * inner,
                src_stride: len * inner,
                src_offset: 0,
                dst_stride: full * inner,
                dst_offset: start * inner,
            };
            g.storage().copy_blocks_into(&mut dx, back)?;
            Ok(vec![Some(Tensor::from_storage(dx, dims.clone())?)])
        })
    }
}
