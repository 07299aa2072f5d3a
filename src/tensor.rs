//! [`Tensor`]: a shape, a device buffer and, when it takes part in autograd, the node that
//! recorded how it was computed.
//!
//! Tensors are immutable values behind an `Arc` (cloning is cheap); only the optimiser writes
//! into a variable's storage in place. Tensors are always contiguous. They never move between
//! devices silently: every op checks that its operands share a device and [`Tensor::to_device`]
//! is the one explicit move.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};

use rand::Rng;
use rand_distr::{Distribution, StandardNormal};

use crate::autograd::{records, BackwardFn, Input, Node};
use crate::device::Device;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::shape::Shape;
use crate::storage::Storage;

/// A unique identity for a tensor value (clones share it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TensorId(u64);

impl TensorId {
    fn next() -> TensorId {
        static COUNTER: AtomicU64 = AtomicU64::new(1);
        TensorId(COUNTER.fetch_add(1, Ordering::Relaxed))
    }
}

pub(crate) struct TensorInner {
    id: TensorId,
    storage: Arc<RwLock<Storage>>,
    shape: Shape,
    device: Device,
    /// How this tensor was computed, when that is recorded for backward (shared with the nodes
    /// of the ops that read this tensor).
    node: Option<Arc<Node>>,
    /// For variables (trainable leaves): the gradient accumulated by `backward`.
    grad: Option<Mutex<Option<Tensor>>>,
}

/// An n-dimensional array on one device, possibly part of an autograd graph.
#[derive(Clone)]
pub struct Tensor(Arc<TensorInner>);

impl std::fmt::Debug for Tensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tensor({:?}, {}, {:?}", self.0.id, self.0.device, self.0.shape)?;
        if let Some(n) = &self.0.node {
            write!(f, ", op={}", n.op)?;
        }
        if self.is_variable() {
            f.write_str(", variable")?;
        }
        f.write_str(")")
    }
}

impl Tensor {
    fn build(storage: Storage, shape: Shape, node: Option<Arc<Node>>, variable: bool) -> Tensor {
        let device = storage.device();
        Tensor(Arc::new(TensorInner {
            id: TensorId::next(),
            storage: Arc::new(RwLock::new(storage)),
            shape,
            device,
            node,
            grad: variable.then(|| Mutex::new(None)),
        }))
    }

    /// A tensor over existing storage; the storage's length must match the shape.
    pub fn from_storage(storage: Storage, shape: impl Into<Shape>) -> Result<Tensor> {
        let shape = shape.into();
        if storage.len() != shape.elem_count() {
            return Err(Error::bad_shape("from_storage", format!("{} elements do not fill shape {shape:?}", storage.len())));
        }
        Ok(Tensor::build(storage, shape, None, false))
    }

    /// A tensor holding `data` on `device`.
    pub fn from_vec(data: Vec<f32>, shape: impl Into<Shape>, device: &Device) -> Result<Tensor> {
        let shape = shape.into();
        if data.len() != shape.elem_count() {
            return Err(Error::bad_shape("from_vec", format!("{} values do not fill shape {shape:?}", data.len())));
        }
        Tensor::from_storage(Storage::from_vec(device, data)?, shape)
    }

    /// A tensor holding a copy of `data` on `device`.
    pub fn from_slice(data: &[f32], shape: impl Into<Shape>, device: &Device) -> Result<Tensor> {
        Tensor::from_vec(data.to_vec(), shape, device)
    }

    /// A zero-filled tensor.
    pub fn zeros(shape: impl Into<Shape>, device: &Device) -> Result<Tensor> {
        let shape = shape.into();
        Tensor::from_storage(Storage::zeros(device, shape.elem_count())?, shape)
    }

    /// A tensor filled with `value`.
    pub fn full(value: f32, shape: impl Into<Shape>, device: &Device) -> Result<Tensor> {
        let shape = shape.into();
        Tensor::from_storage(Storage::full(device, value, shape.elem_count())?, shape)
    }

    /// A one-element tensor of shape `[]`.
    pub fn scalar(value: f32, device: &Device) -> Result<Tensor> {
        Tensor::from_vec(vec![value], (), device)
    }

    /// Normal samples with mean 0 and standard deviation `std`, drawn on the host from `rng`.
    pub fn randn(shape: impl Into<Shape>, std: f32, rng: &mut impl Rng, device: &Device) -> Result<Tensor> {
        let shape = shape.into();
        let data = (0..shape.elem_count())
            .map(|_| {
                let z: f32 = StandardNormal.sample(rng);
                z * std
            })
            .collect();
        Tensor::from_vec(data, shape, device)
    }

    /// Uniform samples in `[lo, hi)`, drawn on the host from `rng`.
    pub fn rand_uniform(shape: impl Into<Shape>, lo: f32, hi: f32, rng: &mut impl Rng, device: &Device) -> Result<Tensor> {
        let shape = shape.into();
        let data = (0..shape.elem_count()).map(|_| rng.random_range(lo..hi)).collect();
        Tensor::from_vec(data, shape, device)
    }

    /// A trainable leaf with the same values: `backward` accumulates its gradient.
    pub fn to_variable(&self) -> Result<Tensor> {
        let storage = self.storage().try_clone()?;
        Ok(Tensor::build(storage, self.0.shape.clone(), None, true))
    }

    /// The output of an op. The node is recorded only in grad mode and when some input needs a
    /// gradient; otherwise nothing is kept.
    pub(crate) fn from_op(
        storage: Storage,
        shape: Shape,
        op: &'static str,
        inputs: &[&Tensor],
        backward: impl Fn(&Tensor, &[bool]) -> Result<Vec<Option<Tensor>>> + Send + Sync + 'static,
    ) -> Result<Tensor> {
        Ok(Tensor::from_storage(storage, shape)?.record(op, inputs, backward))
    }

    /// Records `self` (an untracked op output) as the result of `op`. The returned tensor
    /// shares `self`'s storage, so a backward closure may capture `self` (the output) without
    /// making the graph own itself. The node keeps no handle on the values of `inputs` (see
    /// [`Input`]): the closure must capture (detached) whatever it reads.
    pub(crate) fn record(
        self,
        op: &'static str,
        inputs: &[&Tensor],
        backward: impl Fn(&Tensor, &[bool]) -> Result<Vec<Option<Tensor>>> + Send + Sync + 'static,
    ) -> Tensor {
        let track = records(inputs);
        if !track {
            return self;
        }
        let node = Node { op, inputs: inputs.iter().map(|t| Input::of(t)).collect(), backward: Box::new(backward) as BackwardFn };
        self.view_with_node(self.0.shape.clone(), Some(Arc::new(node)))
    }

    /// A tensor that shares this one's storage under a new shape of the same element count.
    pub(crate) fn view_with_node(&self, shape: Shape, node: Option<Arc<Node>>) -> Tensor {
        Tensor(Arc::new(TensorInner {
            id: TensorId::next(),
            storage: self.0.storage.clone(),
            shape,
            device: self.0.device.clone(),
            node,
            grad: None,
        }))
    }

    /// This tensor's identity.
    pub fn id(&self) -> TensorId {
        self.0.id
    }
    /// The shape.
    pub fn shape(&self) -> &Shape {
        &self.0.shape
    }
    /// The dimensions.
    pub fn dims(&self) -> &[usize] {
        self.0.shape.dims()
    }
    /// Number of elements.
    pub fn elem_count(&self) -> usize {
        self.0.shape.elem_count()
    }
    /// The device holding the storage.
    pub fn device(&self) -> &Device {
        &self.0.device
    }
    /// The element type.
    pub fn dtype(&self) -> DType {
        self.storage().dtype()
    }
    /// Read access to the storage.
    pub fn storage(&self) -> RwLockReadGuard<'_, Storage> {
        self.0.storage.read().unwrap_or_else(|e| e.into_inner())
    }
    /// Write access to the storage (the optimiser's in-place update).
    pub(crate) fn storage_mut(&self) -> RwLockWriteGuard<'_, Storage> {
        self.0.storage.write().unwrap_or_else(|e| e.into_inner())
    }
    /// A weak handle on the storage: dead once every tensor sharing it is dropped (tests of
    /// what the tape keeps alive).
    #[cfg(test)]
    pub(crate) fn storage_weak(&self) -> std::sync::Weak<RwLock<Storage>> {
        Arc::downgrade(&self.0.storage)
    }
    /// The node that recorded how this tensor was computed, if any.
    pub(crate) fn node(&self) -> Option<&Arc<Node>> {
        self.0.node.as_ref()
    }
    pub(crate) fn shares_storage_with_nothing(&self) -> bool {
        Arc::strong_count(&self.0.storage) == 1 && Arc::strong_count(&self.0) == 1
    }

    /// True for a trainable leaf.
    pub fn is_variable(&self) -> bool {
        self.0.grad.is_some()
    }
    /// True when a gradient can flow to this tensor: a variable, or computed from one in grad mode.
    pub fn requires_grad(&self) -> bool {
        self.is_variable() || self.0.node.is_some()
    }

    /// The gradient accumulated by `backward` (variables only).
    pub fn grad(&self) -> Option<Tensor> {
        self.0.grad.as_ref().and_then(|g| g.lock().unwrap_or_else(|e| e.into_inner()).clone())
    }
    /// Forgets the accumulated gradient (its memory is freed).
    pub fn zero_grad(&self) {
        if let Some(g) = &self.0.grad {
            *g.lock().unwrap_or_else(|e| e.into_inner()) = None;
        }
    }
    /// Adds `g` to the accumulated gradient of this variable.
    pub(crate) fn accumulate_grad(&self, g: Tensor) -> Result<()> {
        let slot = self.0.grad.as_ref().ok_or(Error::NoGraph)?;
        let mut slot = slot.lock().unwrap_or_else(|e| e.into_inner());
        match slot.as_ref() {
            Some(acc) => acc.storage_mut().add_scaled_assign(&g.storage(), 1.0)?,
            // Keep `g` itself when nothing else holds its buffer; else keep a private copy, so
            // that a later in-place accumulation cannot write into someone else's tensor.
            None if g.shares_storage_with_nothing() => *slot = Some(g),
            None => *slot = Some(g.deep_clone()?),
        }
        Ok(())
    }

    /// A copy with its own storage, outside any graph.
    pub fn deep_clone(&self) -> Result<Tensor> {
        Tensor::from_storage(self.storage().try_clone()?, self.0.shape.clone())
    }

    /// The same values outside any graph (shares the storage).
    pub fn detach(&self) -> Tensor {
        self.view_with_node(self.0.shape.clone(), None)
    }

    /// The values copied to the host.
    pub fn to_vec(&self) -> Result<Vec<f32>> {
        self.storage().to_host_f32()
    }

    /// The value of a one-element tensor.
    pub fn to_scalar(&self) -> Result<f32> {
        if self.elem_count() != 1 {
            return Err(Error::bad_shape("to_scalar", format!("shape {:?} is not one element", self.dims())));
        }
        Ok(self.to_vec()?[0])
    }

    /// A copy on `device`, outside any graph. The one way tensors move between devices.
    pub fn to_device(&self, device: &Device) -> Result<Tensor> {
        if self.device().same(device) {
            return Ok(self.detach());
        }
        Tensor::from_vec(self.to_vec()?, self.0.shape.clone(), device)
    }

    /// Overwrites the values of this tensor in place (checkpoint loading, tests). Its shape is kept.
    pub fn copy_from_host(&self, data: &[f32]) -> Result<()> {
        if data.len() != self.elem_count() {
            return Err(Error::bad_shape("copy_from_host", format!("{} values for shape {:?}", data.len(), self.dims())));
        }
        *self.storage_mut() = Storage::from_host(self.device(), data)?;
        Ok(())
    }

    /// Overwrites the values of this tensor in place with those of `src` (same shape, same
    /// device; on the GPU a device-to-device copy queued on the stream). Its buffer is kept.
    pub fn copy_from(&self, src: &Tensor) -> Result<()> {
        self.same_shape(src, "copy_from")?;
        self.same_device(src, "copy_from")?;
        if Arc::ptr_eq(&self.0.storage, &src.0.storage) {
            return Ok(());
        }
        self.storage_mut().copy_from(&src.storage())
    }

    /// Errors unless `other` lives on this tensor's device.
    pub(crate) fn same_device(&self, other: &Tensor, op: &'static str) -> Result<()> {
        if self.device().same(other.device()) {
            Ok(())
        } else {
            Err(Error::DeviceMismatch { op, lhs: self.device().to_string(), rhs: other.device().to_string() })
        }
    }

    /// Errors unless `other` has this tensor's shape.
    pub(crate) fn same_shape(&self, other: &Tensor, op: &'static str) -> Result<()> {
        if self.dims() == other.dims() {
            Ok(())
        } else {
            Err(Error::ShapeMismatch { op, lhs: self.dims().to_vec(), rhs: other.dims().to_vec() })
        }
    }
}
