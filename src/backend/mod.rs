//! The backend contract: every kernel the engine needs, at the level of raw storage.
//!
//! [`BackendStorage`] is implemented once per device (`cpu::CpuStorage`, `cuda::CudaStorage`).
//! Storage is always contiguous, row-major f32 (other dtypes later); shapes are passed explicitly
//! as the small spec structs below, so kernels never see a `Tensor`. The tensor layer
//! (`crate::ops`) checks shapes and devices, then calls these methods; the autograd tape only
//! ever sees tensors, so a new backend slots in without touching the tape, the ops or the model.
//!
//! Every method here has a CPU reference implementation in `backend::cpu`, and the CUDA backend
//! is tested against it (tests/cuda_parity.rs).

pub mod cpu;
pub mod cuda;

use crate::dtype::DType;
use crate::error::{Error, Result};

/// Elementwise unary operations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnaryOp {
    Neg,
    Sqr,
    Sqrt,
    Exp,
    Log,
    Relu,
}

/// Elementwise binary operations on two buffers of equal length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BinaryOp {
    Add,
    Sub,
    Mul,
    Div,
}

/// A row-major GEMM: `C[m x n] = op(A) * op(B)`, where `op(A)` is `m x k` (A stored `k x m`
/// when `trans_a`) and `op(B)` is `k x n` (B stored `n x k` when `trans_b`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct GemmSpec {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub trans_a: bool,
    pub trans_b: bool,
}

/// A 2-D convolution over NCHW input `[n, c_in, h, w]` with weights `[c_out, c_in, kh, kw]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ConvSpec {
    pub n: usize,
    pub c_in: usize,
    pub h: usize,
    pub w: usize,
    pub c_out: usize,
    pub kh: usize,
    pub kw: usize,
    pub stride: usize,
    pub pad: usize,
}

impl ConvSpec {
    /// Output height.
    pub fn out_h(&self) -> usize {
        (self.h + 2 * self.pad - self.kh) / self.stride + 1
    }
    /// Output width.
    pub fn out_w(&self) -> usize {
        (self.w + 2 * self.pad - self.kw) / self.stride + 1
    }
    /// Multiply-accumulates of the forward pass, times two.
    pub fn flops(&self) -> f64 {
        2.0 * (self.n * self.c_out * self.out_h() * self.out_w() * self.c_in * self.kh * self.kw) as f64
    }
}

/// Which operands of a forward convolution its backward pass will read, so that what the
/// forward pass prepared of them is kept ([`BackendStorage::conv2d_keeping`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConvKeep {
    /// The input, read by the weight gradient.
    pub input: bool,
    /// The weight, read by the input gradient.
    pub weight: bool,
}

impl ConvKeep {
    /// Keep nothing (no backward pass follows).
    pub const NOTHING: ConvKeep = ConvKeep { input: false, weight: false };
}

/// The error of a convolution's backward asked for the weight gradient without its input, which
/// what the forward pass kept does not replace ([`BackendStorage::kept_input`]).
pub fn missing_conv_input() -> crate::error::Error {
    crate::error::Error::InvalidValue {
        name: "conv2d_backward",
        msg: "the weight gradient needs the convolution's input, and the forward pass kept no copy of it".into(),
    }
}

/// A broadcast over a buffer viewed as `[outer, mid, inner]`, with a vector of `mid` values
/// (a per-channel bias for NCHW: outer = N, mid = C, inner = H*W; a per-column bias for a
/// matrix: outer = rows, mid = cols, inner = 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BroadcastSpec {
    pub outer: usize,
    pub mid: usize,
    pub inner: usize,
}

/// A 4-D NCHW extent, used by batch norm, pooling and upsampling.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Nchw {
    pub n: usize,
    pub c: usize,
    pub h: usize,
    pub w: usize,
}

impl Nchw {
    pub fn len(&self) -> usize {
        self.n * self.c * self.h * self.w
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Copies `outer` blocks of `block` elements: block `o` is read at `src_offset + o * src_stride`
/// and written at `dst_offset + o * dst_stride`. Concatenation and slicing along any axis.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BlockCopy {
    pub outer: usize,
    pub block: usize,
    pub src_stride: usize,
    pub src_offset: usize,
    pub dst_stride: usize,
    pub dst_offset: usize,
}

/// One sampled pixel for the sparse hypercolumn gather: image `image` of the batch, integer
/// pixel `(y, x)` in the input frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, bytemuck::Pod, bytemuck::Zeroable)]
#[repr(C)]
pub struct SamplePoint {
    pub image: u32,
    pub y: u32,
    pub x: u32,
}

impl SamplePoint {
    /// The points as `(image, y, x)` u32 triples: the table the GPU kernels read.
    pub fn words(points: &[SamplePoint]) -> &[u32] {
        bytemuck::cast_slice(points)
    }
}

/// The geometry of a sparse gather: the input frame and each tapped map `[n, c_i, h_i, w_i]`.
/// Tap `i`'s feature coordinate for input pixel x is `u = (x + 0.5) * w_i / in_w - 0.5`,
/// clamped below at 0 (PyTorch's `align_corners=False`, PixelNet's centre-aligned rule).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct GatherSpec {
    pub n: usize,
    pub in_h: usize,
    pub in_w: usize,
    /// `(channels, height, width)` of each tap, in the order of the output columns.
    pub taps: Vec<(usize, usize, usize)>,
}

impl GatherSpec {
    /// Total channels: the width of the gathered matrix.
    pub fn total_channels(&self) -> usize {
        self.taps.iter().map(|t| t.0).sum()
    }
}

/// The geometry of the factored dense first layer
/// ([`BackendStorage::upsample_sum_bias_relu`]): planes `Z_i` stored pixel-major
/// `[n, h_i, w_i, cols]` (one row of `cols` values per feature-map pixel), each resampled to
/// the `in_h x in_w` input frame with the same centre-aligned bilinear rule as [`GatherSpec`].
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PlaneSumSpec {
    pub n: usize,
    pub in_h: usize,
    pub in_w: usize,
    /// Values per pixel (the first hidden layer's width).
    pub cols: usize,
    /// `(height, width)` of each plane, in summation order.
    pub planes: Vec<(usize, usize)>,
}

/// Checks the arguments of [`BackendStorage::upsample_sum_bias_relu`] (shared by every
/// backend): at least one plane, each of `n * h * w * cols` elements with `h, w > 0`, a bias of
/// `cols`, points inside the frame.
pub(crate) fn check_plane_sum(plane_lens: &[usize], bias_len: usize, points: &[SamplePoint], s: &PlaneSumSpec) -> Result<()> {
    const OP: &str = "upsample_sum_bias_relu";
    if plane_lens.is_empty() || plane_lens.len() != s.planes.len() {
        return Err(Error::bad_shape(OP, format!("{} planes given, spec has {}", plane_lens.len(), s.planes.len())));
    }
    for (i, (&len, &(h, w))) in plane_lens.iter().zip(&s.planes).enumerate() {
        if h == 0 || w == 0 || len != s.n * h * w * s.cols {
            return Err(Error::bad_shape(OP, format!("plane {i} has {len} elements, expected {}x{h}x{w}x{}", s.n, s.cols)));
        }
    }
    if bias_len != s.cols {
        return Err(Error::bad_shape(OP, format!("bias has {bias_len} elements for {} columns", s.cols)));
    }
    check_points_in(OP, points, s.n, s.in_h, s.in_w)
}

/// Errors unless every point lies in a batch of `n` frames of `h x w` (the kernels index with
/// the points unchecked).
pub(crate) fn check_points_in(op: &'static str, points: &[SamplePoint], n: usize, h: usize, w: usize) -> Result<()> {
    if let Some(p) = points.iter().find(|p| p.image as usize >= n || p.y as usize >= h || p.x as usize >= w) {
        return Err(Error::bad_shape(op, format!("point {p:?} outside a batch of {n} images of {h}x{w}")));
    }
    Ok(())
}

/// Batch-norm forward in training mode: the normalised output and the batch statistics.
pub struct BatchNormForward<S> {
    /// `gamma * (x - mean) * invstd + beta`.
    pub y: S,
    /// Per-channel batch mean.
    pub mean: S,
    /// Per-channel `1 / sqrt(var + eps)`, var being the biased batch variance.
    pub invstd: S,
    /// Per-channel unbiased batch variance (for the running statistics).
    pub var_unbiased: S,
}

/// Gradients of batch norm in training mode: the input's in the form `D` (the storage itself,
/// or [`BackendStorage::ConvGrad`] for the convolution before it), the parameters' as `S`.
pub struct BatchNormBackward<S, D = S> {
    pub dx: D,
    pub dgamma: S,
    pub dbeta: S,
}

/// Hyper-parameters of one Adam step for one parameter buffer.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamStep {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    /// Decoupled weight decay (AdamW); 0 for plain Adam.
    pub weight_decay: f32,
    /// `1 - beta1^t`.
    pub bias_correction1: f32,
    /// `1 - beta2^t`.
    pub bias_correction2: f32,
}

/// Checks the arguments of [`BackendStorage::softmax_cross_entropy`] (shared by every backend):
/// `len` logits for one label per row, labels below `classes`, one weight per class.
pub(crate) fn check_softmax_xent(len: usize, labels: &[u32], classes: usize, weights: Option<&[f32]>) -> Result<()> {
    if classes == 0 || len != labels.len() * classes {
        return Err(Error::bad_shape("softmax_cross_entropy", format!("{len} logits for {} labels of {classes} classes", labels.len())));
    }
    if let Some(&l) = labels.iter().find(|&&l| l as usize >= classes) {
        return Err(Error::InvalidValue { name: "label", msg: format!("{l} is not below the {classes} classes") });
    }
    if let Some(w) = weights {
        if w.len() != classes {
            return Err(Error::bad_shape("softmax_cross_entropy", format!("{} class weights for {classes} classes", w.len())));
        }
    }
    Ok(())
}

/// Mixes a 32-bit seed and an element index into a uniform `u32`. The dropout masks of every
/// backend are built from this exact function so that they agree bit for bit.
#[inline]
pub fn hash_u32(seed: u32, index: u32) -> u32 {
    // A "lowbias32" integer hash of (seed * golden ratio) ^ index.
    let mut x = index ^ seed.wrapping_mul(0x9E37_79B9);
    x ^= x >> 16;
    x = x.wrapping_mul(0x7FEB_352D);
    x ^= x >> 15;
    x = x.wrapping_mul(0x846C_A68B);
    x ^= x >> 16;
    x
}

/// The storage of one tensor on one device, and every kernel the engine runs on it.
///
/// All buffers are contiguous; lengths and extents are the caller's responsibility (the tensor
/// layer checks them before calling).
pub trait BackendStorage: Sized + Send + Sync {
    /// The element type.
    fn dtype(&self) -> DType;
    /// Number of elements.
    fn len(&self) -> usize;
    /// True when the buffer holds no element.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Copies the contents to host memory as f32.
    fn to_host_f32(&self) -> Result<Vec<f32>>;
    /// A copy of the buffer on the same device.
    fn try_clone(&self) -> Result<Self>;
    /// A zero-filled buffer of `len` elements on the same device.
    fn zeros_like_len(&self, len: usize) -> Result<Self>;
    /// Fills the buffer with `value`.
    fn fill(&mut self, value: f32) -> Result<()>;

    // ---- elementwise --------------------------------------------------------------------
    fn unary(&self, op: UnaryOp) -> Result<Self>;
    /// `x * mul + add`.
    fn affine(&self, mul: f32, add: f32) -> Result<Self>;
    fn binary(&self, rhs: &Self, op: BinaryOp) -> Result<Self>;
    /// `grad * (y > 0)`, with `self` the ReLU's output (or input: the sign is the same).
    fn relu_backward(&self, grad: &Self) -> Result<Self>;
    /// `self += alpha * rhs`.
    fn add_scaled_assign(&mut self, rhs: &Self, alpha: f32) -> Result<()>;
    /// Sum of all elements, as a one-element buffer.
    fn sum_all(&self) -> Result<Self>;
    /// Whether every element of every buffer is finite, as a one-element buffer: `+0.0` when
    /// all are, `NaN` when some element is NaN, else `+inf` (some are infinite). Bitwise the
    /// OR over elements of `0x7FC00000` per NaN and `0x7F800000` per infinity.
    fn non_finite(buffers: &[&Self]) -> Result<Self>;

    // ---- broadcasts along the middle axis of [outer, mid, inner] -------------------------
    /// `out[o, m, i] = self[o, m, i] + v[m]`.
    fn broadcast_add(&self, v: &Self, s: BroadcastSpec) -> Result<Self>;
    /// `out[o, m, i] = self[o, m, i] * v[m]`.
    fn broadcast_mul(&self, v: &Self, s: BroadcastSpec) -> Result<Self>;
    /// `out[m] = sum over o, i of self[o, m, i]` (bias gradients).
    fn reduce_to_mid(&self, s: BroadcastSpec) -> Result<Self>;

    // ---- data movement -------------------------------------------------------------------
    /// Copies blocks of `self` into `dst` (see [`BlockCopy`]).
    fn copy_blocks_into(&self, dst: &mut Self, c: BlockCopy) -> Result<()>;

    // ---- matrix multiply -------------------------------------------------------------------
    /// `C = op(A) * op(B)` with `self` as A; returns C (`m x n`).
    fn gemm(&self, b: &Self, g: GemmSpec) -> Result<Self>;

    // ---- convolution -----------------------------------------------------------------------
    /// What [`conv2d_keeping`](Self::conv2d_keeping) keeps for the backward pass besides the
    /// operands themselves: the CUDA backend's bf16 mode keeps the NHWC bf16 copies of the
    /// operands it made, so that the backward pass does not cast them again; the CPU keeps
    /// nothing.
    type ConvKept: Send + Sync;
    /// Forward convolution, no bias: `[n, c_out, out_h, out_w]`, and what the backward pass can
    /// reuse of the operands as this computation prepared them. `keep` says which operands the
    /// backward pass will read (the input for the weight gradient, the weight for the input
    /// gradient); nothing else is kept.
    fn conv2d_keeping(&self, w: &Self, s: &ConvSpec, keep: ConvKeep) -> Result<(Self, Self::ConvKept)>;
    /// Forward convolution, no bias: `[n, c_out, out_h, out_w]`.
    fn conv2d(&self, w: &Self, s: &ConvSpec) -> Result<Self> {
        Ok(self.conv2d_keeping(w, s, ConvKeep::NOTHING)?.0)
    }
    /// Gradient with respect to the input, `self` being dy.
    fn conv2d_backward_input(&self, w: &Self, s: &ConvSpec) -> Result<Self>;
    /// Gradient with respect to the weights, `self` being x.
    fn conv2d_backward_weight(&self, dy: &Self, s: &ConvSpec) -> Result<Self>;
    /// Whether `kept` holds the convolution's input in the form its weight gradient reads, so
    /// that [`conv2d_backward`](Self::conv2d_backward) needs no `x` (and the tensor need not be
    /// kept for it): the CUDA bf16 mode's NHWC bf16 copy. False by default.
    fn kept_input(kept: &Self::ConvKept) -> bool {
        let _ = kept;
        false
    }
    /// Both gradients of a convolution, `self` being dy: `[dx, dw]`, each computed only where
    /// `need` says so, reading what the forward pass kept (`kept`, from
    /// [`conv2d_keeping`](Self::conv2d_keeping) on `x` and `w`) and preparing dy once for both.
    /// `x` may be `None` where the weight gradient is not needed or `kept` holds the input
    /// ([`kept_input`](Self::kept_input)). The values are those of
    /// [`conv2d_backward_input`](Self::conv2d_backward_input) and
    /// [`conv2d_backward_weight`](Self::conv2d_backward_weight), which this default calls; from
    /// the kept copy alone, those of the input as that copy holds it (in the CUDA bf16 mode, the
    /// input rounded to bf16: what the bf16 weight gradient reads anyway, and what an f32 one
    /// reads if the mode was switched off since the forward pass).
    fn conv2d_backward(
        &self,
        x: Option<&Self>,
        w: &Self,
        s: &ConvSpec,
        kept: &Self::ConvKept,
        need: [bool; 2],
    ) -> Result<[Option<Self>; 2]> {
        let _ = kept;
        let dx = if need[0] { Some(self.conv2d_backward_input(w, s)?) } else { None };
        let dw = if need[1] { Some(x.ok_or_else(missing_conv_input)?.conv2d_backward_weight(self, s)?) } else { None };
        Ok([dx, dw])
    }
    /// A convolution's upstream gradient as the training-mode batch norm after it hands it over
    /// ([`batch_norm_backward_for_conv`](Self::batch_norm_backward_for_conv)): `Self` on the CPU
    /// and in the CUDA backend's f32 modes; in the CUDA bf16 mode the NHWC bf16 copy that the
    /// bf16 convolution reads, written by the batch norm's backward kernel (the f32 gradient's
    /// values rounded to bf16, as the convolution would round them).
    type ConvGrad: Send + Sync;
    /// [`conv2d_backward`](Self::conv2d_backward) of an upstream gradient in the form
    /// [`ConvGrad`](Self::ConvGrad), with the same values.
    fn conv2d_backward_from(
        dy: &Self::ConvGrad,
        x: Option<&Self>,
        w: &Self,
        s: &ConvSpec,
        kept: &Self::ConvKept,
        need: [bool; 2],
    ) -> Result<[Option<Self>; 2]>;

    // ---- batch norm --------------------------------------------------------------------------
    /// Training-mode batch norm over `[n, c, h, w]` with batch statistics; with `relu`, the
    /// output is clamped at 0 in the same pass (`y = max(bn(x), 0)`).
    fn batch_norm_train(&self, gamma: &Self, beta: &Self, d: Nchw, eps: f32, relu: bool) -> Result<BatchNormForward<Self>>;
    /// Backward of [`BackendStorage::batch_norm_train`], `self` being x, with the parameters and
    /// the statistics that forward used. With `relu` (the forward had it), the gradient counts
    /// only where the forward's output was > 0, exactly as if `y > 0 ? dy : 0` (a select, so +0
    /// where masked) were passed; that output is recomputed from x, gamma, beta and the
    /// statistics with the forward's own formula, so the mask is bit for bit the masking by the
    /// stored output, which need not be kept.
    #[allow(clippy::too_many_arguments)]
    fn batch_norm_backward(
        &self,
        dy: &Self,
        gamma: &Self,
        beta: &Self,
        mean: &Self,
        invstd: &Self,
        d: Nchw,
        relu: bool,
    ) -> Result<BatchNormBackward<Self>>;

    /// Eval-mode batch norm over `[n, c, h, w]` with running statistics, in one pass: the
    /// normalisation of [`batch_norm_train`](Self::batch_norm_train), `y = ((gamma * (x -
    /// mean)) * invstd) + beta` with each op rounded (clamped at 0 when `relu`), where `mean` is
    /// the running mean and `invstd = f32(1 / sqrt(f64(running_var) + f64(eps)))`, formed as the
    /// training statistics form theirs.
    #[allow(clippy::too_many_arguments)]
    fn batch_norm_eval(
        &self,
        gamma: &Self,
        beta: &Self,
        running_mean: &Self,
        running_var: &Self,
        d: Nchw,
        eps: f32,
        relu: bool,
    ) -> Result<Self>;

    // ---- a convolution whose output only a batch norm reads ------------------------------------
    /// A convolution's output held for the batch norm that reads it next (and, in training, for
    /// that batch norm's backward pass): `Self` on the CPU and in the CUDA backend's f32
    /// modes; NCHW bf16 in the CUDA bf16 mode, where the convolution's result is bf16 (the very
    /// values an f32 output would hold, at half the bytes).
    type NormInput: Send + Sync;
    /// [`conv2d_keeping`](Self::conv2d_keeping) for a convolution whose output is read only by
    /// [`batch_norm_train_of`](Self::batch_norm_train_of) and
    /// [`batch_norm_backward_of`](Self::batch_norm_backward_of).
    fn conv2d_for_norm(&self, w: &Self, s: &ConvSpec, keep: ConvKeep) -> Result<(Self::NormInput, Self::ConvKept)>;
    /// [`batch_norm_train`](Self::batch_norm_train) of a [`NormInput`](Self::NormInput), with
    /// the same results bit for bit.
    fn batch_norm_train_of(x: &Self::NormInput, gamma: &Self, beta: &Self, d: Nchw, eps: f32, relu: bool)
        -> Result<BatchNormForward<Self>>;
    /// [`batch_norm_eval`](Self::batch_norm_eval) of a [`NormInput`](Self::NormInput), with the
    /// same result bit for bit.
    #[allow(clippy::too_many_arguments)]
    fn batch_norm_eval_of(
        x: &Self::NormInput,
        gamma: &Self,
        beta: &Self,
        running_mean: &Self,
        running_var: &Self,
        d: Nchw,
        eps: f32,
        relu: bool,
    ) -> Result<Self>;
    /// [`batch_norm_backward`](Self::batch_norm_backward) of a [`NormInput`](Self::NormInput),
    /// with the same results bit for bit.
    #[allow(clippy::too_many_arguments)]
    fn batch_norm_backward_of(
        x: &Self::NormInput,
        dy: &Self,
        gamma: &Self,
        beta: &Self,
        mean: &Self,
        invstd: &Self,
        d: Nchw,
        relu: bool,
    ) -> Result<BatchNormBackward<Self>>;
    /// [`batch_norm_backward_of`](Self::batch_norm_backward_of) with the input gradient in the
    /// form the convolution before the batch norm reads it ([`ConvGrad`](Self::ConvGrad), for
    /// [`conv2d_backward_from`](Self::conv2d_backward_from)): the same values, in the CUDA bf16
    /// mode rounded to bf16 and laid out NHWC by the kernel that computes them.
    #[allow(clippy::too_many_arguments)]
    fn batch_norm_backward_for_conv(
        x: &Self::NormInput,
        dy: &Self,
        gamma: &Self,
        beta: &Self,
        mean: &Self,
        invstd: &Self,
        d: Nchw,
        relu: bool,
    ) -> Result<BatchNormBackward<Self, Self::ConvGrad>>;

    // ---- pooling ----------------------------------------------------------------------------------
    /// 2x2 max pooling, stride 2, floor mode: `[n, c, h/2, w/2]`.
    fn max_pool2x2(&self, d: Nchw) -> Result<Self>;
    /// Gradient of 2x2 max pooling, `self` being x; each window's gradient goes to its first
    /// maximum in row-major order.
    fn max_pool2x2_backward(&self, dy: &Self, d: Nchw) -> Result<Self>;

    // ---- bilinear resampling (align_corners = false) -----------------------------------------
    /// Bilinear upsampling of `[n, c, h, w]` to `[n, c, out_h, out_w]`.
    fn upsample_bilinear(&self, d: Nchw, out_h: usize, out_w: usize) -> Result<Self>;
    /// Gradient of [`BackendStorage::upsample_bilinear`], `self` being dy.
    fn upsample_bilinear_backward(&self, d: Nchw, out_h: usize, out_w: usize) -> Result<Self>;

    /// Sparse hypercolumn gather: `[points, total_channels]`, tap `i` filling columns
    /// `offset_i .. offset_i + c_i`.
    fn gather_hypercolumns(taps: &[&Self], points: &[SamplePoint], g: &GatherSpec) -> Result<Self>;
    /// Scatter of the gathered gradient (`self`, `[points, total_channels]`) back into one
    /// gradient per tap. `deterministic` asks for a bitwise-reproducible reduction.
    fn gather_hypercolumns_backward(&self, points: &[SamplePoint], g: &GatherSpec, deterministic: bool) -> Result<Vec<Self>>;

    /// The factored dense first layer, fused: `out[p, j] = relu(bias[j] + sum_i z_i[p, j])`, where
    /// `z_i[p, j]` is plane `i` bilinearly sampled at point `p` exactly as the sparse gather
    /// samples a tap (same four weights, same order: `((w0 v0 + w1 v1) + w2 v2) + w3 v3`), the
    /// planes added in order starting from `z_0`, then the bias. `[points, cols]`.
    fn upsample_sum_bias_relu(planes: &[&Self], bias: &Self, points: &[SamplePoint], s: &PlaneSumSpec) -> Result<Self>;

    // ---- fused MLP pieces --------------------------------------------------------------------------
    /// `self[r, c] = max(self[r, c] + bias[c], 0)` in place, `self` being `[rows, cols]`.
    fn bias_relu_assign(&mut self, bias: &Self, rows: usize, cols: usize) -> Result<()>;
    /// Backward of [`BackendStorage::bias_relu_assign`], `self` being its output `y`:
    /// `(dz = dy * (y > 0), db = column sums of dz)`.
    fn bias_relu_backward(&self, dy: &Self, rows: usize, cols: usize) -> Result<(Self, Self)>;

    // ---- loss ------------------------------------------------------------------------------------
    /// Softmax cross-entropy of logits `[rows, classes]` against `labels` (one per row),
    /// weighted mean over rows (`sum w[y] l / sum w[y]`; plain mean without weights).
    /// Returns the one-element loss and d loss / d logits.
    fn softmax_cross_entropy(&self, labels: &[u32], classes: usize, class_weights: Option<&[f32]>) -> Result<(Self, Self)>;

    // ---- regularisation and optimiser ---------------------------------------------------------
    /// A dropout mask of `self.len()`-independent length `len`: `1/keep` where
    /// `hash_u32(seed, i) < keep * 2^32`, else 0.
    fn dropout_mask(&self, len: usize, keep: f32, seed: u32) -> Result<Self>;
    /// One Adam step on this parameter buffer, updating the moments in place.
    fn adam_step(&mut self, grad: &Self, m: &mut Self, v: &mut Self, h: &AdamStep) -> Result<()>;
}
