//! [`Storage`]: a tensor's buffer on whichever device holds it, dispatching every kernel of
//! [`BackendStorage`] to that device's backend. Mixing devices is a typed error.

use crate::backend::cpu::CpuStorage;
use crate::backend::cuda::CudaStorage;
use crate::backend::*;
use crate::device::Device;
use crate::dtype::DType;
use crate::error::{Error, Result};

/// A tensor's buffer on one device.
pub enum Storage {
    Cpu(CpuStorage),
    Cuda(CudaStorage),
}

fn mismatch(op: &'static str, a: &Storage, b: &Storage) -> Error {
    Error::DeviceMismatch { op, lhs: a.device().to_string(), rhs: b.device().to_string() }
}

/// What a forward convolution kept for its backward pass besides its operands
/// ([`BackendStorage::ConvKept`] of the device that ran it).
pub enum ConvKept {
    Cpu(<CpuStorage as BackendStorage>::ConvKept),
    Cuda(<CudaStorage as BackendStorage>::ConvKept),
}

impl ConvKept {
    /// Whether it holds the convolution's input as its weight gradient reads it
    /// ([`BackendStorage::kept_input`]): then the backward pass needs no input tensor.
    pub fn holds_input(&self) -> bool {
        match self {
            ConvKept::Cpu(k) => CpuStorage::kept_input(k),
            ConvKept::Cuda(k) => CudaStorage::kept_input(k),
        }
    }

    fn device_name(&self) -> &'static str {
        match self {
            ConvKept::Cpu(_) => "cpu",
            ConvKept::Cuda(_) => "cuda",
        }
    }
}

/// A convolution's output held for the training-mode batch norm that reads it next
/// ([`BackendStorage::NormInput`] of the device that ran it): f32, or NCHW bf16 in the CUDA bf16
/// mode.
pub enum NormInput {
    Cpu(<CpuStorage as BackendStorage>::NormInput),
    Cuda(<CudaStorage as BackendStorage>::NormInput),
}

impl NormInput {
    /// The element type held.
    pub fn dtype(&self) -> DType {
        match self {
            NormInput::Cpu(x) => x.dtype(),
            NormInput::Cuda(x) => x.dtype(),
        }
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            NormInput::Cpu(x) => x.len(),
            NormInput::Cuda(x) => x.len(),
        }
    }

    /// True when there is no element.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The values widened to f32, on the host (waits for the device).
    pub fn to_host_f32(&self) -> Result<Vec<f32>> {
        match self {
            NormInput::Cpu(x) => x.to_host_f32(),
            NormInput::Cuda(x) => x.to_f32()?.to_host_f32(),
        }
    }

    fn device(&self) -> Device {
        match self {
            NormInput::Cpu(_) => Device::Cpu,
            NormInput::Cuda(x) => Device::Cuda(x.device().clone()),
        }
    }

    /// [`Storage::batch_norm_train`] of this input, bit for bit.
    pub fn batch_norm_train(&self, gamma: &Storage, beta: &Storage, d: Nchw, eps: f32, relu: bool) -> Result<BatchNormForward<Storage>> {
        const OP: &str = "batch_norm";
        match (self, same_device(OP, &[gamma, beta])?) {
            (NormInput::Cpu(x), OneDevice::Cpu(p)) => {
                Ok(wrap_forward(CpuStorage::batch_norm_train_of(x, p[0], p[1], d, eps, relu)?, Storage::Cpu))
            }
            (NormInput::Cuda(x), OneDevice::Cuda(p)) => {
                Ok(wrap_forward(CudaStorage::batch_norm_train_of(x, p[0], p[1], d, eps, relu)?, Storage::Cuda))
            }
            _ => Err(Error::DeviceMismatch { op: OP, lhs: self.device().to_string(), rhs: gamma.device().to_string() }),
        }
    }

    /// [`Storage::batch_norm_eval`] of this input, bit for bit.
    #[allow(clippy::too_many_arguments)]
    pub fn batch_norm_eval(
        &self,
        gamma: &Storage,
        beta: &Storage,
        running_mean: &Storage,
        running_var: &Storage,
        d: Nchw,
        eps: f32,
        relu: bool,
    ) -> Result<Storage> {
        const OP: &str = "batch_norm_eval";
        match (self, same_device(OP, &[gamma, beta, running_mean, running_var])?) {
            (NormInput::Cpu(x), OneDevice::Cpu(p)) => {
                Ok(Storage::Cpu(CpuStorage::batch_norm_eval_of(x, p[0], p[1], p[2], p[3], d, eps, relu)?))
            }
            (NormInput::Cuda(x), OneDevice::Cuda(p)) => {
                Ok(Storage::Cuda(CudaStorage::batch_norm_eval_of(x, p[0], p[1], p[2], p[3], d, eps, relu)?))
            }
            _ => Err(Error::DeviceMismatch { op: OP, lhs: self.device().to_string(), rhs: gamma.device().to_string() }),
        }
    }

    /// [`Storage::batch_norm_backward`] of this input, bit for bit.
    #[allow(clippy::too_many_arguments)]
    pub fn batch_norm_backward(
        &self,
        dy: &Storage,
        gamma: &Storage,
        beta: &Storage,
        mean: &Storage,
        invstd: &Storage,
        d: Nchw,
        relu: bool,
    ) -> Result<BatchNormBackward<Storage>> {
        const OP: &str = "batch_norm_backward";
        match (self, same_device(OP, &[dy, gamma, beta, mean, invstd])?) {
            (NormInput::Cpu(x), OneDevice::Cpu(p)) => {
                Ok(wrap_backward(CpuStorage::batch_norm_backward_of(x, p[0], p[1], p[2], p[3], p[4], d, relu)?, Storage::Cpu))
            }
            (NormInput::Cuda(x), OneDevice::Cuda(p)) => {
                Ok(wrap_backward(CudaStorage::batch_norm_backward_of(x, p[0], p[1], p[2], p[3], p[4], d, relu)?, Storage::Cuda))
            }
            _ => Err(Error::DeviceMismatch { op: OP, lhs: self.device().to_string(), rhs: dy.device().to_string() }),
        }
    }

    /// [`NormInput::batch_norm_backward`] with the input gradient in the form the convolution
    /// before the batch norm reads it ([`BackendStorage::batch_norm_backward_for_conv`]).
    #[allow(clippy::too_many_arguments)]
    pub fn batch_norm_backward_for_conv(
        &self,
        dy: &Storage,
        gamma: &Storage,
        beta: &Storage,
        mean: &Storage,
        invstd: &Storage,
        d: Nchw,
        relu: bool,
    ) -> Result<BatchNormBackward<Storage, ConvGrad>> {
        const OP: &str = "batch_norm_backward";
        fn wrap<S, D>(b: BatchNormBackward<S, D>, w: fn(S) -> Storage, g: fn(D) -> ConvGrad) -> BatchNormBackward<Storage, ConvGrad> {
            BatchNormBackward { dx: g(b.dx), dgamma: w(b.dgamma), dbeta: w(b.dbeta) }
        }
        match (self, same_device(OP, &[dy, gamma, beta, mean, invstd])?) {
            (NormInput::Cpu(x), OneDevice::Cpu(p)) => {
                Ok(wrap(CpuStorage::batch_norm_backward_for_conv(x, p[0], p[1], p[2], p[3], p[4], d, relu)?, Storage::Cpu, ConvGrad::Cpu))
            }
            (NormInput::Cuda(x), OneDevice::Cuda(p)) => Ok(wrap(
                CudaStorage::batch_norm_backward_for_conv(x, p[0], p[1], p[2], p[3], p[4], d, relu)?,
                Storage::Cuda,
                ConvGrad::Cuda,
            )),
            _ => Err(Error::DeviceMismatch { op: OP, lhs: self.device().to_string(), rhs: dy.device().to_string() }),
        }
    }
}

/// A convolution's upstream gradient as the training-mode batch norm after it hands it over
/// ([`BackendStorage::ConvGrad`] of the device that ran it): f32, or NHWC bf16 in the CUDA bf16
/// mode.
pub enum ConvGrad {
    Cpu(<CpuStorage as BackendStorage>::ConvGrad),
    Cuda(<CudaStorage as BackendStorage>::ConvGrad),
}

impl ConvGrad {
    /// The element type held.
    pub fn dtype(&self) -> DType {
        match self {
            ConvGrad::Cpu(g) => g.dtype(),
            ConvGrad::Cuda(g) => g.dtype(),
        }
    }

    /// The values as NCHW f32 on the host (`d` the batch norm's dimensions; bf16 widened
    /// exactly and transposed back; waits for the device).
    pub fn to_host_f32(self, d: Nchw) -> Result<Vec<f32>> {
        match self {
            ConvGrad::Cpu(g) => g.to_host_f32(),
            ConvGrad::Cuda(g) => g.into_f32_nchw(d)?.to_host_f32(),
        }
    }

    /// Both gradients of the convolution, this being its upstream gradient: see
    /// [`BackendStorage::conv2d_backward_from`] and [`Storage::conv2d_backward`].
    pub fn conv2d_backward(
        &self,
        x: Option<&Storage>,
        w: &Storage,
        s: &ConvSpec,
        kept: &ConvKept,
        need: [bool; 2],
    ) -> Result<[Option<Storage>; 2]> {
        const OP: &str = "conv2d_backward";
        let operands: Vec<&Storage> = std::iter::once(w).chain(x).collect();
        match (self, same_device(OP, &operands)?, kept) {
            (ConvGrad::Cpu(dy), OneDevice::Cpu(v), ConvKept::Cpu(k)) => {
                Ok(CpuStorage::conv2d_backward_from(dy, v.get(1).copied(), v[0], s, k, need)?.map(|g| g.map(Storage::Cpu)))
            }
            (ConvGrad::Cuda(dy), OneDevice::Cuda(v), ConvKept::Cuda(k)) => {
                Ok(CudaStorage::conv2d_backward_from(dy, v.get(1).copied(), v[0], s, k, need)?.map(|g| g.map(Storage::Cuda)))
            }
            _ => Err(Error::DeviceMismatch { op: OP, lhs: self.device_name().into(), rhs: w.device().to_string() }),
        }
    }

    fn device_name(&self) -> &'static str {
        match self {
            ConvGrad::Cpu(_) => "cpu",
            ConvGrad::Cuda(_) => "cuda",
        }
    }
}

fn wrap_forward<S>(f: BatchNormForward<S>, w: fn(S) -> Storage) -> BatchNormForward<Storage> {
    BatchNormForward { y: w(f.y), mean: w(f.mean), invstd: w(f.invstd), var_unbiased: w(f.var_unbiased) }
}

fn wrap_backward<S>(b: BatchNormBackward<S>, w: fn(S) -> Storage) -> BatchNormBackward<Storage> {
    BatchNormBackward { dx: w(b.dx), dgamma: w(b.dgamma), dbeta: w(b.dbeta) }
}

/// A non-empty list of storages, all on one device, unwrapped.
enum OneDevice<'a> {
    Cpu(Vec<&'a CpuStorage>),
    Cuda(Vec<&'a CudaStorage>),
}

/// Unwraps `list` when every storage is on the device of the first; `op` names the operation
/// in the error otherwise.
fn same_device<'a>(op: &'static str, list: &[&'a Storage]) -> Result<OneDevice<'a>> {
    let first = *list.first().ok_or_else(|| Error::bad_shape(op, "no inputs"))?;
    let mut out = match first {
        Storage::Cpu(_) => OneDevice::Cpu(Vec::with_capacity(list.len())),
        Storage::Cuda(_) => OneDevice::Cuda(Vec::with_capacity(list.len())),
    };
    for &s in list {
        match (&mut out, s) {
            (OneDevice::Cpu(v), Storage::Cpu(x)) => v.push(x),
            (OneDevice::Cuda(v), Storage::Cuda(x)) => v.push(x),
            _ => return Err(mismatch(op, first, s)),
        }
    }
    Ok(out)
}

/// Applies `$body` to the backend storage inside `$s`, rewrapping a returned storage.
macro_rules! unary_dispatch {
    ($s:expr, |$x:ident| $body:expr) => {
        match $s {
            Storage::Cpu($x) => $body.map(Storage::Cpu),
            Storage::Cuda($x) => $body.map(Storage::Cuda),
        }
    };
}

/// Same as `unary_dispatch` for two storages that must share a device.
macro_rules! binary_dispatch {
    ($op:expr, $a:expr, $b:expr, |$x:ident, $y:ident| $body:expr) => {
        match ($a, $b) {
            (Storage::Cpu($x), Storage::Cpu($y)) => $body.map(Storage::Cpu),
            (Storage::Cuda($x), Storage::Cuda($y)) => $body.map(Storage::Cuda),
            (a, b) => Err(mismatch($op, a, b)),
        }
    };
}

impl Storage {
    /// The device this storage lives on.
    pub fn device(&self) -> Device {
        match self {
            Storage::Cpu(_) => Device::Cpu,
            Storage::Cuda(s) => Device::Cuda(s.device().clone()),
        }
    }

    /// Uploads host values to `device`.
    pub fn from_host(device: &Device, data: &[f32]) -> Result<Storage> {
        match device {
            Device::Cpu => Ok(Storage::Cpu(CpuStorage::F32(data.to_vec()))),
            Device::Cuda(d) => Ok(Storage::Cuda(d.upload(data)?)),
        }
    }

    /// Takes ownership of host values (no copy on the CPU).
    pub fn from_vec(device: &Device, data: Vec<f32>) -> Result<Storage> {
        match device {
            Device::Cpu => Ok(Storage::Cpu(CpuStorage::F32(data))),
            Device::Cuda(d) => Ok(Storage::Cuda(d.upload(&data)?)),
        }
    }

    /// A buffer of `len` copies of `value` on `device` (a fill kernel on the GPU: no copy from
    /// the host, so it can be captured into a CUDA graph).
    pub fn full(device: &Device, value: f32, len: usize) -> Result<Storage> {
        match device {
            Device::Cpu => Ok(Storage::Cpu(CpuStorage::F32(vec![value; len]))),
            Device::Cuda(d) => {
                let mut s = Storage::Cuda(d.alloc(len)?);
                if len > 0 {
                    s.fill(value)?;
                }
                Ok(s)
            }
        }
    }

    /// Overwrites this buffer with `src`, which must have its length and device.
    pub fn copy_from(&mut self, src: &Storage) -> Result<()> {
        match (self, src) {
            (Storage::Cpu(CpuStorage::F32(d)), Storage::Cpu(CpuStorage::F32(s))) if d.len() == s.len() => {
                d.copy_from_slice(s);
                Ok(())
            }
            (Storage::Cpu(CpuStorage::F32(d)), Storage::Cpu(CpuStorage::F32(s))) => {
                Err(Error::bad_shape("copy_from", format!("{} elements into {}", s.len(), d.len())))
            }
            (Storage::Cuda(d), Storage::Cuda(s)) => d.copy_from(s),
            (d, s) => Err(Error::DeviceMismatch { op: "copy_from", lhs: d.device().to_string(), rhs: s.device().to_string() }),
        }
    }

    /// The device address of the buffer (`None` on the CPU): what a captured CUDA graph refers
    /// to.
    pub fn device_address(&self) -> Option<u64> {
        match self {
            Storage::Cpu(_) => None,
            Storage::Cuda(s) => Some(s.raw_ptr()),
        }
    }

    /// A zero-filled buffer of `len` elements on `device`.
    pub fn zeros(device: &Device, len: usize) -> Result<Storage> {
        match device {
            Device::Cpu => Ok(Storage::Cpu(CpuStorage::F32(vec![0.0; len]))),
            Device::Cuda(d) => Ok(Storage::Cuda(d.zeros(len)?)),
        }
    }

    pub fn dtype(&self) -> DType {
        match self {
            Storage::Cpu(s) => s.dtype(),
            Storage::Cuda(s) => s.dtype(),
        }
    }

    pub fn len(&self) -> usize {
        match self {
            Storage::Cpu(s) => s.len(),
            Storage::Cuda(s) => s.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn to_host_f32(&self) -> Result<Vec<f32>> {
        match self {
            Storage::Cpu(s) => s.to_host_f32(),
            Storage::Cuda(s) => s.to_host_f32(),
        }
    }

    pub fn try_clone(&self) -> Result<Storage> {
        unary_dispatch!(self, |s| s.try_clone())
    }

    pub fn zeros_like_len(&self, len: usize) -> Result<Storage> {
        unary_dispatch!(self, |s| s.zeros_like_len(len))
    }

    pub fn fill(&mut self, value: f32) -> Result<()> {
        match self {
            Storage::Cpu(s) => s.fill(value),
            Storage::Cuda(s) => s.fill(value),
        }
    }

    pub fn unary(&self, op: UnaryOp) -> Result<Storage> {
        unary_dispatch!(self, |s| s.unary(op))
    }

    pub fn affine(&self, mul: f32, add: f32) -> Result<Storage> {
        unary_dispatch!(self, |s| s.affine(mul, add))
    }

    pub fn binary(&self, rhs: &Storage, op: BinaryOp) -> Result<Storage> {
        binary_dispatch!("binary", self, rhs, |a, b| a.binary(b, op))
    }

    pub fn relu_backward(&self, grad: &Storage) -> Result<Storage> {
        binary_dispatch!("relu_backward", self, grad, |a, b| a.relu_backward(b))
    }

    pub fn add_scaled_assign(&mut self, rhs: &Storage, alpha: f32) -> Result<()> {
        match (self, rhs) {
            (Storage::Cpu(a), Storage::Cpu(b)) => a.add_scaled_assign(b, alpha),
            (Storage::Cuda(a), Storage::Cuda(b)) => a.add_scaled_assign(b, alpha),
            (a, b) => Err(mismatch("add_scaled_assign", a, b)),
        }
    }

    pub fn sum_all(&self) -> Result<Storage> {
        unary_dispatch!(self, |s| s.sum_all())
    }

    pub fn broadcast_add(&self, v: &Storage, s: BroadcastSpec) -> Result<Storage> {
        binary_dispatch!("broadcast_add", self, v, |a, b| a.broadcast_add(b, s))
    }

    pub fn broadcast_mul(&self, v: &Storage, s: BroadcastSpec) -> Result<Storage> {
        binary_dispatch!("broadcast_mul", self, v, |a, b| a.broadcast_mul(b, s))
    }

    pub fn reduce_to_mid(&self, s: BroadcastSpec) -> Result<Storage> {
        unary_dispatch!(self, |x| x.reduce_to_mid(s))
    }

    pub fn copy_blocks_into(&self, dst: &mut Storage, c: BlockCopy) -> Result<()> {
        match (self, dst) {
            (Storage::Cpu(a), Storage::Cpu(b)) => a.copy_blocks_into(b, c),
            (Storage::Cuda(a), Storage::Cuda(b)) => a.copy_blocks_into(b, c),
            (a, b) => Err(mismatch("copy", a, b)),
        }
    }

    pub fn gemm(&self, b: &Storage, g: GemmSpec) -> Result<Storage> {
        binary_dispatch!("matmul", self, b, |x, y| x.gemm(y, g))
    }

    pub fn conv2d(&self, w: &Storage, s: &ConvSpec) -> Result<Storage> {
        binary_dispatch!("conv2d", self, w, |x, y| x.conv2d(y, s))
    }

    /// See [`BackendStorage::conv2d_keeping`].
    pub fn conv2d_keeping(&self, w: &Storage, s: &ConvSpec, keep: ConvKeep) -> Result<(Storage, ConvKept)> {
        match (self, w) {
            (Storage::Cpu(x), Storage::Cpu(w)) => x.conv2d_keeping(w, s, keep).map(|(y, k)| (Storage::Cpu(y), ConvKept::Cpu(k))),
            (Storage::Cuda(x), Storage::Cuda(w)) => x.conv2d_keeping(w, s, keep).map(|(y, k)| (Storage::Cuda(y), ConvKept::Cuda(k))),
            (a, b) => Err(mismatch("conv2d", a, b)),
        }
    }

    /// See [`BackendStorage::conv2d_for_norm`].
    pub fn conv2d_for_norm(&self, w: &Storage, s: &ConvSpec, keep: ConvKeep) -> Result<(NormInput, ConvKept)> {
        match (self, w) {
            (Storage::Cpu(x), Storage::Cpu(w)) => x.conv2d_for_norm(w, s, keep).map(|(y, k)| (NormInput::Cpu(y), ConvKept::Cpu(k))),
            (Storage::Cuda(x), Storage::Cuda(w)) => x.conv2d_for_norm(w, s, keep).map(|(y, k)| (NormInput::Cuda(y), ConvKept::Cuda(k))),
            (a, b) => Err(mismatch("conv2d", a, b)),
        }
    }

    /// See [`BackendStorage::conv2d_backward`]; `self` is dy, `kept` what
    /// [`Storage::conv2d_keeping`] returned for `x` and `w`.
    pub fn conv2d_backward(
        &self,
        x: Option<&Storage>,
        w: &Storage,
        s: &ConvSpec,
        kept: &ConvKept,
        need: [bool; 2],
    ) -> Result<[Option<Storage>; 2]> {
        const OP: &str = "conv2d_backward";
        let operands: Vec<&Storage> = [self, w].into_iter().chain(x).collect();
        match (same_device(OP, &operands)?, kept) {
            (OneDevice::Cpu(v), ConvKept::Cpu(k)) => {
                Ok(v[0].conv2d_backward(v.get(2).copied(), v[1], s, k, need)?.map(|g| g.map(Storage::Cpu)))
            }
            (OneDevice::Cuda(v), ConvKept::Cuda(k)) => {
                Ok(v[0].conv2d_backward(v.get(2).copied(), v[1], s, k, need)?.map(|g| g.map(Storage::Cuda)))
            }
            _ => Err(Error::DeviceMismatch { op: OP, lhs: self.device().to_string(), rhs: kept.device_name().into() }),
        }
    }

    pub fn conv2d_backward_input(&self, w: &Storage, s: &ConvSpec) -> Result<Storage> {
        binary_dispatch!("conv2d_backward_input", self, w, |x, y| x.conv2d_backward_input(y, s))
    }

    pub fn conv2d_backward_weight(&self, dy: &Storage, s: &ConvSpec) -> Result<Storage> {
        binary_dispatch!("conv2d_backward_weight", self, dy, |x, y| x.conv2d_backward_weight(y, s))
    }

    pub fn batch_norm_train(&self, gamma: &Storage, beta: &Storage, d: Nchw, eps: f32, relu: bool) -> Result<BatchNormForward<Storage>> {
        match (self, gamma, beta) {
            (Storage::Cpu(x), Storage::Cpu(g), Storage::Cpu(b)) => Ok(wrap_forward(x.batch_norm_train(g, b, d, eps, relu)?, Storage::Cpu)),
            (Storage::Cuda(x), Storage::Cuda(g), Storage::Cuda(b)) => {
                Ok(wrap_forward(x.batch_norm_train(g, b, d, eps, relu)?, Storage::Cuda))
            }
            (x, g, b) => Err(mismatch("batch_norm", x, if x.device().same(&g.device()) { b } else { g })),
        }
    }

    /// [`BackendStorage::batch_norm_eval`] on the device of `self` (x); every other operand must
    /// be there too.
    #[allow(clippy::too_many_arguments)]
    pub fn batch_norm_eval(
        &self,
        gamma: &Storage,
        beta: &Storage,
        running_mean: &Storage,
        running_var: &Storage,
        d: Nchw,
        eps: f32,
        relu: bool,
    ) -> Result<Storage> {
        match same_device("batch_norm_eval", &[self, gamma, beta, running_mean, running_var])? {
            OneDevice::Cpu(p) => Ok(Storage::Cpu(p[0].batch_norm_eval(p[1], p[2], p[3], p[4], d, eps, relu)?)),
            OneDevice::Cuda(p) => Ok(Storage::Cuda(p[0].batch_norm_eval(p[1], p[2], p[3], p[4], d, eps, relu)?)),
        }
    }

    /// [`BackendStorage::batch_norm_backward`] on the device of `self` (x); every other operand
    /// must be there too.
    #[allow(clippy::too_many_arguments)]
    pub fn batch_norm_backward(
        &self,
        dy: &Storage,
        gamma: &Storage,
        beta: &Storage,
        mean: &Storage,
        invstd: &Storage,
        d: Nchw,
        relu: bool,
    ) -> Result<BatchNormBackward<Storage>> {
        match same_device("batch_norm_backward", &[self, dy, gamma, beta, mean, invstd])? {
            OneDevice::Cpu(p) => Ok(wrap_backward(p[0].batch_norm_backward(p[1], p[2], p[3], p[4], p[5], d, relu)?, Storage::Cpu)),
            OneDevice::Cuda(p) => Ok(wrap_backward(p[0].batch_norm_backward(p[1], p[2], p[3], p[4], p[5], d, relu)?, Storage::Cuda)),
        }
    }

    pub fn max_pool2x2(&self, d: Nchw) -> Result<Storage> {
        unary_dispatch!(self, |x| x.max_pool2x2(d))
    }

    pub fn max_pool2x2_backward(&self, dy: &Storage, d: Nchw) -> Result<Storage> {
        binary_dispatch!("max_pool_backward", self, dy, |x, y| x.max_pool2x2_backward(y, d))
    }

    pub fn upsample_bilinear(&self, d: Nchw, out_h: usize, out_w: usize) -> Result<Storage> {
        unary_dispatch!(self, |x| x.upsample_bilinear(d, out_h, out_w))
    }

    pub fn upsample_bilinear_backward(&self, d: Nchw, out_h: usize, out_w: usize) -> Result<Storage> {
        unary_dispatch!(self, |x| x.upsample_bilinear_backward(d, out_h, out_w))
    }

    pub fn gather_hypercolumns(taps: &[&Storage], points: &[SamplePoint], g: &GatherSpec) -> Result<Storage> {
        match same_device("gather", taps)? {
            OneDevice::Cpu(v) => CpuStorage::gather_hypercolumns(&v, points, g).map(Storage::Cpu),
            OneDevice::Cuda(v) => CudaStorage::gather_hypercolumns(&v, points, g).map(Storage::Cuda),
        }
    }

    /// See [`BackendStorage::non_finite`]; at least one buffer.
    pub fn non_finite(buffers: &[&Storage]) -> Result<Storage> {
        match same_device("non_finite", buffers)? {
            OneDevice::Cpu(v) => CpuStorage::non_finite(&v).map(Storage::Cpu),
            OneDevice::Cuda(v) => CudaStorage::non_finite(&v).map(Storage::Cuda),
        }
    }

    pub fn upsample_sum_bias_relu(planes: &[&Storage], bias: &Storage, points: &[SamplePoint], s: &PlaneSumSpec) -> Result<Storage> {
        const OP: &str = "upsample_sum_bias_relu";
        match (same_device(OP, planes)?, bias) {
            (OneDevice::Cpu(v), Storage::Cpu(b)) => CpuStorage::upsample_sum_bias_relu(&v, b, points, s).map(Storage::Cpu),
            (OneDevice::Cuda(v), Storage::Cuda(b)) => CudaStorage::upsample_sum_bias_relu(&v, b, points, s).map(Storage::Cuda),
            (_, b) => Err(mismatch(OP, planes[0], b)),
        }
    }

    /// `self[r, c] = max(self[r, c] + bias[c], 0)` in place.
    pub fn bias_relu_assign(&mut self, bias: &Storage, rows: usize, cols: usize) -> Result<()> {
        match (self, bias) {
            (Storage::Cpu(a), Storage::Cpu(b)) => a.bias_relu_assign(b, rows, cols),
            (Storage::Cuda(a), Storage::Cuda(b)) => a.bias_relu_assign(b, rows, cols),
            (a, b) => Err(mismatch("bias_relu", a, b)),
        }
    }

    /// `(dz, db)` of [`Storage::bias_relu_assign`], `self` being its output.
    pub fn bias_relu_backward(&self, dy: &Storage, rows: usize, cols: usize) -> Result<(Storage, Storage)> {
        match (self, dy) {
            (Storage::Cpu(a), Storage::Cpu(b)) => a.bias_relu_backward(b, rows, cols).map(|(z, d)| (Storage::Cpu(z), Storage::Cpu(d))),
            (Storage::Cuda(a), Storage::Cuda(b)) => a.bias_relu_backward(b, rows, cols).map(|(z, d)| (Storage::Cuda(z), Storage::Cuda(d))),
            (a, b) => Err(mismatch("bias_relu_backward", a, b)),
        }
    }

    pub fn gather_hypercolumns_backward(&self, points: &[SamplePoint], g: &GatherSpec, deterministic: bool) -> Result<Vec<Storage>> {
        match self {
            Storage::Cpu(s) => Ok(s.gather_hypercolumns_backward(points, g, deterministic)?.into_iter().map(Storage::Cpu).collect()),
            Storage::Cuda(s) => Ok(s.gather_hypercolumns_backward(points, g, deterministic)?.into_iter().map(Storage::Cuda).collect()),
        }
    }

    pub fn softmax_cross_entropy(&self, labels: &[u32], classes: usize, class_weights: Option<&[f32]>) -> Result<(Storage, Storage)> {
        match self {
            Storage::Cpu(s) => {
                let (l, g) = s.softmax_cross_entropy(labels, classes, class_weights)?;
                Ok((Storage::Cpu(l), Storage::Cpu(g)))
            }
            Storage::Cuda(s) => {
                let (l, g) = s.softmax_cross_entropy(labels, classes, class_weights)?;
                Ok((Storage::Cuda(l), Storage::Cuda(g)))
            }
        }
    }

    pub fn dropout_mask(&self, len: usize, keep: f32, seed: u32) -> Result<Storage> {
        unary_dispatch!(self, |x| x.dropout_mask(len, keep, seed))
    }

    /// One Adam step over many parameters: `(param, grad, m, v)` each. On CUDA a single
    /// multi-tensor launch; on the CPU one update per parameter.
    pub fn adam_step_all(items: &mut [(&mut Storage, &Storage, &mut Storage, &mut Storage)], h: &AdamStep) -> Result<()> {
        if items.iter().all(|(p, ..)| matches!(p, Storage::Cuda(_))) {
            let mut groups = Vec::with_capacity(items.len());
            for (p, g, m, v) in items.iter_mut() {
                match (&mut **p, &**g, &mut **m, &mut **v) {
                    (Storage::Cuda(p), Storage::Cuda(grad), Storage::Cuda(m), Storage::Cuda(v)) => {
                        groups.push(crate::backend::cuda::kernels::ops::AdamGroup { p, grad, m, v })
                    }
                    (p, g, ..) => return Err(mismatch("adam", p, g)),
                }
            }
            return crate::backend::cuda::kernels::ops::adam_step_multi(&mut groups, h);
        }
        for (p, g, m, v) in items.iter_mut() {
            p.adam_step(g, m, v, h)?;
        }
        Ok(())
    }

    pub fn adam_step(&mut self, grad: &Storage, m: &mut Storage, v: &mut Storage, h: &AdamStep) -> Result<()> {
        match (self, grad, m, v) {
            (Storage::Cpu(p), Storage::Cpu(g), Storage::Cpu(m), Storage::Cpu(v)) => p.adam_step(g, m, v, h),
            (Storage::Cuda(p), Storage::Cuda(g), Storage::Cuda(m), Storage::Cuda(v)) => p.adam_step(g, m, v, h),
            (p, g, ..) => Err(mismatch("adam", p, g)),
        }
    }
}
