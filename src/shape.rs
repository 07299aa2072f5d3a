//! Tensor shapes: a list of dimensions, row-major and always contiguous.

use crate::error::{Error, Result};

/// The dimensions of a tensor, outermost first. Tensors are always contiguous (row-major).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Shape(Vec<usize>);

impl Shape {
    /// A shape from its dimensions.
    pub fn new(dims: impl Into<Vec<usize>>) -> Self {
        Shape(dims.into())
    }
    /// The dimensions.
    pub fn dims(&self) -> &[usize] {
        &self.0
    }
    /// Number of dimensions.
    pub fn rank(&self) -> usize {
        self.0.len()
    }
    /// Number of elements (1 for a scalar of rank 0).
    pub fn elem_count(&self) -> usize {
        self.0.iter().product()
    }
    /// The dimensions as exactly `N` values, or a `BadShape` error naming `op`.
    pub fn dims_n<const N: usize>(&self, op: &'static str) -> Result<[usize; N]> {
        <[usize; N]>::try_from(self.0.as_slice()).map_err(|_| Error::bad_shape(op, format!("expected rank {N}, got shape {:?}", self.0)))
    }
    /// The dimensions of a 4-D NCHW shape.
    pub fn dims4(&self, op: &'static str) -> Result<[usize; 4]> {
        self.dims_n::<4>(op)
    }
    /// The dimensions of a 2-D shape.
    pub fn dims2(&self, op: &'static str) -> Result<[usize; 2]> {
        self.dims_n::<2>(op)
    }
}

impl std::fmt::Debug for Shape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

impl From<&[usize]> for Shape {
    fn from(d: &[usize]) -> Self {
        Shape(d.to_vec())
    }
}
impl From<Vec<usize>> for Shape {
    fn from(d: Vec<usize>) -> Self {
        Shape(d)
    }
}
impl<const N: usize> From<[usize; N]> for Shape {
    fn from(d: [usize; N]) -> Self {
        Shape(d.to_vec())
    }
}
impl From<usize> for Shape {
    fn from(d: usize) -> Self {
        Shape(vec![d])
    }
}
impl From<()> for Shape {
    fn from(_: ()) -> Self {
        Shape(vec![])
    }
}
