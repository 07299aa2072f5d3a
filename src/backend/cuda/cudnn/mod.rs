//! 2-D convolutions through cuDNN (legacy convolution API, NCHW f32, or NHWC bf16 in the bf16
//! convolution mode of `bf16.rs`): forward, backward data (the input gradient) and backward
//! filter (the weight gradient).
//!
//! Algorithm choice, once per (shape, direction, data type, TF32, deterministic, benchmark) and cached
//! with its descriptors and workspace size (a repeated convolution is one cuDNN call):
//! - default ("benchmark", like PyTorch's `cudnn.benchmark`): `cudnnFind*AlgorithmEx` times
//!   every algorithm on the real buffers with a workspace bounded by the memory budget;
//! - deterministic mode ([`crate::settings::deterministic`]), or benchmark off
//!   (`HYPERSEG_CUDNN_BENCHMARK=0` or [`set_cudnn_benchmark`]): the `*_v7` heuristics, which
//!   give the same choice every run; in deterministic mode only algorithms cuDNN reports as
//!   deterministic are kept (never BWD_DATA_ALGO_0, BWD_FILTER_ALGO_0 or _3, which use atomics).
//!
//! A workspace never exceeds [`MAX_WORKSPACE`] nor the room left under the allocator's cap;
//! algorithms needing more are skipped, and one that fails to run makes way for the next.
//! Math: `CUDNN_FMA_MATH` (true fp32) unless [`crate::settings::allow_tf32`], then the math
//! type cuDNN reports for the chosen algorithm (TF32 tensor cores allowed); on bf16 data,
//! `CUDNN_TENSOR_OP_MATH` and the type cuDNN reports (bf16 tensor cores, fp32 accumulation).
//!
//! Files:
//! - `mod.rs`: the settings ([`MAX_WORKSPACE`], [`BENCHMARK_ENV`], [`set_cudnn_benchmark`]),
//!   the entry points [`conv2d`], [`conv2d_backward_input`] and [`conv2d_backward_weight`],
//!   and [`conv2d_keeping`] with [`conv2d_backward`], which pass the bf16 mode's operand
//!   copies from the forward to the backward pass, with their operand checks, the handle with its cache of chosen algorithms, and the run
//!   path (recall or choose an algorithm, then launch it);
//! - `algo.rs`: algorithm choice: [`Direction`], the algorithm tables, the candidates,
//!   the workspace sizes, cuDNN's heuristics and the timed search;
//! - `descriptors.rs`: the cuDNN descriptors of one convolution, destroyed on drop;
//! - `bf16.rs`: the bf16 convolution mode ([`crate::settings::bf16_conv`]): NHWC bf16 copies in,
//!   the result widened back to NCHW f32.

mod algo;
mod bf16;
mod descriptors;

use std::collections::{HashMap, HashSet};
use std::ffi::c_void;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

use cudarc::cudnn::{result, sys};
use cudarc::driver::CudaStream;

use self::algo::{
    benchmark, bwd_data_algo, bwd_filter_algo, fwd_algo, heuristics, prepare, usable, Candidate, MATH_DEFAULT, MATH_FMA, MATH_TENSOR_OP,
};
use self::descriptors::{ConvData, Descriptors};
use super::bf16::CudaBf16;
use super::conv_bn::CudaNormInput;
use super::device::CudaDevice;
use super::error::{cuda_error, CudaResultExt};
use super::storage::CudaStorage;
use crate::backend::{ConvKeep, ConvSpec};
use crate::error::{Error, Result};

pub use self::algo::Direction;
pub use self::bf16::{bf16_refusals, check_bf16_conv};

/// The largest workspace any convolution may take (the budget under the cap may be smaller).
pub const MAX_WORKSPACE: usize = 256 << 20;
/// The environment variable that turns algorithm benchmarking off (`0`, `false`, `off`).
pub const BENCHMARK_ENV: &str = "HYPERSEG_CUDNN_BENCHMARK";

static BENCHMARK: AtomicU8 = AtomicU8::new(0); // 0 unset, 1 off, 2 on

/// Chooses cuDNN algorithms by timing them (on, the default) or by cuDNN's heuristics (off).
/// Deterministic mode always uses the heuristics.
pub fn set_cudnn_benchmark(on: bool) {
    BENCHMARK.store(if on { 2 } else { 1 }, Ordering::Relaxed);
}

/// Whether algorithms are chosen by timing them.
pub fn cudnn_benchmark() -> bool {
    match BENCHMARK.load(Ordering::Relaxed) {
        1 => false,
        2 => true,
        _ => {
            let off = std::env::var(BENCHMARK_ENV)
                .map(|v| matches!(v.trim().to_ascii_lowercase().as_str(), "0" | "false" | "off" | "no"))
                .unwrap_or(false);
            let _ = BENCHMARK.compare_exchange(0, if off { 1 } else { 2 }, Ordering::Relaxed, Ordering::Relaxed);
            BENCHMARK.load(Ordering::Relaxed) == 2
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct AlgoKey {
    spec: ConvSpec,
    dir: Direction,
    data: ConvData,
    tf32: bool,
    deterministic: bool,
    benchmark: bool,
}

/// The cuDNN handle (bound to the device's stream), the algorithm cache, and the bf16
/// convolutions cuDNN could not run (computed in f32 on bf16-rounded operands instead, see
/// `bf16.rs`).
pub(crate) struct Dnn {
    handle: sys::cudnnHandle_t,
    plans: HashMap<AlgoKey, Plan>,
    bf16_refused: HashSet<(ConvSpec, Direction, bool)>,
}

/// A chosen algorithm with its descriptors (math type already set) and workspace size, so
/// that a repeated convolution makes no cuDNN call but the convolution itself.
struct Plan {
    desc: Descriptors,
    cand: Candidate,
    workspace: usize,
}

// SAFETY: the handle is only used under the device's mutex, one thread at a time, as cuDNN
// requires.
unsafe impl Send for Dnn {}

impl Drop for Dnn {
    fn drop(&mut self) {
        // SAFETY: created in `new`, destroyed once.
        let _ = unsafe { result::destroy_handle(self.handle) };
    }
}

impl Dnn {
    /// A handle on `stream` (the context must be current: it is, right after creation).
    pub(crate) fn new(stream: &Arc<CudaStream>) -> Result<Dnn> {
        stream.context().bind_to_thread().ctx("binding the CUDA context")?;
        let handle = result::create_handle().ctx("cudnnCreate")?;
        let dnn = Dnn { handle, plans: HashMap::new(), bf16_refused: HashSet::new() };
        // SAFETY: a live handle and the device's stream.
        unsafe { result::set_stream(dnn.handle, stream.cu_stream() as sys::cudaStream_t) }.ctx("cudnnSetStream")?;
        Ok(dnn)
    }
}

/// The cuDNN library version, e.g. 91400 for 9.14.0.
pub(crate) fn version() -> usize {
    result::get_version()
}

/// Device addresses of x, w and y (for the backward passes, dx = x, dw = w, dy = y).
#[derive(Clone, Copy)]
struct Operands {
    x: u64,
    w: u64,
    y: u64,
}

fn ptr(p: u64) -> *mut c_void {
    p as *mut c_void
}

/// Runs one prepared candidate with a workspace of `need` bytes. `Ok(false)` when the
/// workspace cannot be allocated.
fn launch(
    dev: &CudaDevice,
    h: sys::cudnnHandle_t,
    dir: Direction,
    d: &Descriptors,
    o: Operands,
    c: Candidate,
    need: usize,
) -> Result<bool> {
    let ws = if need > 0 {
        match dev.alloc(need.div_ceil(4)) {
            Ok(b) => Some(b),
            Err(Error::OutOfMemory { .. }) => return Ok(false),
            Err(e) => return Err(e),
        }
    } else {
        None
    };
    let ws_ptr = ws.as_ref().map_or(std::ptr::null_mut(), |b| ptr(b.raw_ptr()));
    let (alpha, beta) = (1.0f32, 0.0f32);
    let (a, b) = (&alpha as *const f32 as *const c_void, &beta as *const f32 as *const c_void);
    let bad = || cuda_error(dir.name(), format!("unknown algorithm {}", c.algo));
    dev.count_call();
    // SAFETY: live handle and descriptors; buffers match the descriptors; the workspace holds
    // `need` bytes; alpha and beta are f32 as cuDNN expects for float and bf16 data alike.
    unsafe {
        match dir {
            Direction::Forward => result::convolution_forward(
                h,
                a,
                d.x.0,
                ptr(o.x),
                d.w.0,
                ptr(o.w),
                d.conv.0,
                fwd_algo(c.algo).ok_or_else(bad)?,
                ws_ptr,
                need,
                b,
                d.y.0,
                ptr(o.y),
            ),
            Direction::BackwardData => result::convolution_backward_data(
                h,
                a,
                d.w.0,
                ptr(o.w),
                d.y.0,
                ptr(o.y),
                d.conv.0,
                bwd_data_algo(c.algo).ok_or_else(bad)?,
                ws_ptr,
                need,
                b,
                d.x.0,
                ptr(o.x),
            ),
            Direction::BackwardFilter => result::convolution_backward_filter(
                h,
                a,
                d.x.0,
                ptr(o.x),
                d.y.0,
                ptr(o.y),
                d.conv.0,
                bwd_filter_algo(c.algo).ok_or_else(bad)?,
                ws_ptr,
                need,
                b,
                d.w.0,
                ptr(o.w),
            ),
        }
    }
    .ctx(&format!("{} (algorithm {}, math {})", dir.name(), c.algo, c.math))?;
    // The workspace goes back to the pool now; its next user is queued after this call on the
    // same stream.
    drop(ws);
    Ok(true)
}

/// Whether `e` is cuDNN saying it does not support the configuration (any
/// `CUDNN_STATUS_NOT_SUPPORTED*` status, as [`super::error`] names it).
fn not_supported(e: &Error) -> bool {
    matches!(e, Error::Cuda { msg, .. } if msg.contains("NOT_SUPPORTED"))
}

/// Chooses (or recalls) an algorithm and runs one convolution on operands of type `data`.
///
/// On bf16 data, when cuDNN supports the computation in no way (its descriptors, heuristics or
/// every candidate answer `NOT_SUPPORTED`, or it lists no algorithm at all), the error is
/// [`Error::UnsupportedDType`], which `bf16.rs` answers with its f32 fallback; any other failure
/// (a workspace that does not fit, a failed launch) is an error as on f32 data.
fn run(dev: &CudaDevice, dir: Direction, s: &ConvSpec, o: Operands, data: ConvData) -> Result<()> {
    let _r = super::nvtx::range(dir.name());
    let refusal = move |e: Error| {
        if data == ConvData::NhwcBf16 && not_supported(&e) {
            Error::UnsupportedDType { op: dir.name(), dtype: "bf16" }
        } else {
            e
        }
    };
    let tf32 = crate::settings::allow_tf32();
    let deterministic = crate::settings::deterministic();
    let bench = cudnn_benchmark() && !deterministic;
    let key = AlgoKey { spec: *s, dir, data, tf32, deterministic, benchmark: bench };
    let tensor_cores = tf32 || data == ConvData::NhwcBf16;
    let base_math = match data {
        ConvData::NhwcBf16 => MATH_TENSOR_OP,
        ConvData::NchwF32 if tf32 => MATH_DEFAULT,
        ConvData::NchwF32 => MATH_FMA,
    };
    dev.bind()?;
    let mut dnn = dev.dnn();
    let h = dnn.handle;
    let budget = dev.workspace_budget(MAX_WORKSPACE);
    if dev.is_capturing() {
        // During a CUDA-graph capture only a plan made before it can run: choosing one times
        // algorithms and waits on the stream, which would invalidate the capture. The plan is
        // kept either way (the eager fallback uses it).
        let Some(p) = dnn.plans.get(&key) else {
            return Err(Error::GraphCapture { msg: format!("{} {s:?} has no algorithm chosen before the capture", dir.name()) });
        };
        return match launch(dev, h, dir, &p.desc, o, p.cand, p.workspace) {
            Ok(true) => Ok(()),
            Ok(false) => {
                Err(Error::GraphCapture { msg: format!("no device memory for the workspace of {} {s:?} within the capture", dir.name()) })
            }
            Err(e) => Err(e),
        };
    }
    if let Some(p) = dnn.plans.get(&key) {
        if p.workspace <= budget {
            if let Ok(true) = launch(dev, h, dir, &p.desc, o, p.cand, p.workspace) {
                return Ok(());
            }
        }
        // Out of room (or failed): choose again under today's budget.
        dnn.plans.remove(&key);
    }
    let d = Descriptors::new(s, data).map_err(refusal)?;
    d.set_math(base_math).map_err(refusal)?;
    // The timed search first (when on); if it fails or leaves nothing usable (it needs memory
    // too), cuDNN's heuristics.
    let mut candidates = Vec::new();
    if bench {
        if let Ok(p) = benchmark(dev, h, dir, &d, o, budget) {
            candidates = usable(dir, &p, tensor_cores, deterministic);
        }
    }
    if candidates.is_empty() {
        d.set_math(base_math)?;
        candidates = usable(dir, &heuristics(h, dir, &d).map_err(refusal)?, tensor_cores, deterministic);
    }
    let mut last_err = None;
    // Whether every candidate so far failed as not supported (none skipped for room).
    let mut refused = true;
    for c in candidates {
        let need = match prepare(h, dir, &d, c, budget) {
            Ok(Some(n)) => n,
            Ok(None) => {
                refused = false;
                continue;
            }
            Err(e) => {
                refused &= not_supported(&e);
                last_err = Some(e);
                continue;
            }
        };
        match launch(dev, h, dir, &d, o, c, need) {
            Ok(true) => {
                dnn.plans.insert(key, Plan { desc: d, cand: c, workspace: need });
                return Ok(());
            }
            Ok(false) => refused = false,
            Err(e) => {
                refused &= not_supported(&e);
                last_err = Some(e);
            }
        }
    }
    if refused && data == ConvData::NhwcBf16 {
        return Err(Error::UnsupportedDType { op: dir.name(), dtype: "bf16" });
    }
    Err(last_err.unwrap_or_else(|| {
        cuda_error(
            dir.name(),
            format!(
                "no usable cuDNN algorithm for {s:?} ({data:?} data, deterministic: {deterministic}, TF32: {tf32}, workspace budget {budget} bytes)"
            ),
        )
    }))
}

fn check(op: &'static str, what: &str, got: usize, want: usize) -> Result<()> {
    if got != want {
        return Err(Error::bad_shape(op, format!("{what} has {got} elements, expected {want}")));
    }
    Ok(())
}

/// Checks a spec cuDNN will accept; `Ok(false)` when some extent is zero (empty result).
fn check_spec(op: &'static str, s: &ConvSpec) -> Result<bool> {
    if s.stride == 0 || s.h + 2 * s.pad < s.kh || s.w + 2 * s.pad < s.kw {
        return Err(Error::bad_shape(op, format!("{s:?}: the kernel does not fit the padded input, or stride 0")));
    }
    Ok(s.n > 0 && s.c_in > 0 && s.c_out > 0 && s.kh > 0 && s.kw > 0)
}

/// The names of x, w and y in error messages, indexed as [`Direction::roles`].
const OPERAND_NAMES: [&str; 3] = ["input", "weight", "dy"];

/// The element counts of x, w and y of `s`, indexed as [`Direction::roles`].
fn operand_lens(s: &ConvSpec) -> [usize; 3] {
    [s.n * s.c_in * s.h * s.w, s.c_out * s.c_in * s.kh * s.kw, s.n * s.c_out * s.out_h() * s.out_w()]
}

/// [`Operands`] for `dir` from its two operands and its result, in [`Direction::roles`] order.
fn place(dir: Direction, a: u64, b: u64, out: u64) -> Operands {
    let mut p = [0; 3];
    let [ia, ib, io] = dir.roles();
    (p[ia], p[ib], p[io]) = (a, b, out);
    Operands { x: p[0], w: p[1], y: p[2] }
}

/// One operand of a convolution computation: the engine's NCHW f32 tensor, its NHWC bf16 copy
/// that an earlier computation made in the bf16 mode (reused, not cast again), or both. An
/// operand can come as its bf16 copy alone: a batch norm's backward writes the convolution's dy
/// that way ([`conv2d_backward_from_bf16`]).
#[derive(Clone, Copy)]
enum Operand<'a> {
    /// The f32 tensor, without a copy.
    F32(&'a CudaStorage),
    /// The f32 tensor and its bf16 copy.
    WithCopy(&'a CudaStorage, &'a CudaBf16),
    /// The bf16 copy alone.
    Bf16(&'a CudaBf16),
}

impl<'a> From<&'a CudaStorage> for Operand<'a> {
    fn from(f32: &'a CudaStorage) -> Operand<'a> {
        Operand::F32(f32)
    }
}

impl<'a> Operand<'a> {
    /// The f32 tensor, with its copy where there is one.
    fn with_copy(f32: &'a CudaStorage, copy: Option<&'a CudaBf16>) -> Operand<'a> {
        match copy {
            Some(c) => Operand::WithCopy(f32, c),
            None => Operand::F32(f32),
        }
    }

    /// This operand, given `copy` as its bf16 copy unless it has one.
    fn or_copy(self, copy: Option<&'a CudaBf16>) -> Operand<'a> {
        match (self, copy) {
            (Operand::F32(f), Some(c)) => Operand::WithCopy(f, c),
            _ => self,
        }
    }

    /// The f32 tensor, unless the operand came as its copy alone.
    fn f32(self) -> Option<&'a CudaStorage> {
        match self {
            Operand::F32(f) | Operand::WithCopy(f, _) => Some(f),
            Operand::Bf16(_) => None,
        }
    }

    /// The bf16 copy, where there is one.
    fn bf16(self) -> Option<&'a CudaBf16> {
        match self {
            Operand::WithCopy(_, c) | Operand::Bf16(c) => Some(c),
            Operand::F32(_) => None,
        }
    }

    /// The device holding the operand.
    fn device(self) -> &'a CudaDevice {
        match self {
            Operand::F32(f) | Operand::WithCopy(f, _) => f.device(),
            Operand::Bf16(c) => c.device(),
        }
    }
}

/// A computation's result, and the NHWC bf16 copies of its two operands it made (bf16 mode
/// only; `None` where it was given one, or computed in f32).
struct Computed {
    out: CudaNormInput,
    copies: [Option<CudaBf16>; 2],
}

impl Computed {
    /// A forward computation's result and the copies of its operands `keep` names.
    fn keeping(self, keep: ConvKeep) -> (CudaNormInput, KeptOperands) {
        let [x_copy, w_copy] = self.copies;
        (self.out, KeptOperands { input: x_copy.filter(|_| keep.input), weight: w_copy.filter(|_| keep.weight) })
    }
}

/// The form of a computation's NCHW result: f32, or in the bf16 mode bf16 when the caller reads
/// it as such (a forward convolution whose output only a batch norm reads).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Form {
    F32,
    /// bf16 in the bf16 mode; f32 otherwise.
    Bf16,
}

/// The NHWC bf16 copies of a forward convolution's operands kept for its backward pass
/// ([`conv2d_keeping`]): the input's for the weight gradient, the weight's for the input
/// gradient. `None` outside the bf16 mode, for what was not asked to be kept, and where the
/// convolution took the f32 fallback (channels not multiples of 8, or cuDNN refusing).
#[derive(Default)]
pub struct KeptOperands {
    /// The input, NHWC bf16 (`transpose_f32_to_bf16` of x as `[n][c_in, h w]`).
    pub input: Option<CudaBf16>,
    /// The weight, KRSC bf16 (`transpose_f32_to_bf16` of w as `[c_out][c_in, kh kw]`).
    pub weight: Option<CudaBf16>,
}

/// The one computation `dir` of `s` on operands `a` and `b` (forward: x, w; backward data: dy,
/// w; backward filter: x, dy): checks them, then runs it in f32 or, in the bf16 mode, through
/// `bf16.rs`.
fn compute(dir: Direction, s: &ConvSpec, a: Operand, b: Operand, form: Form) -> Result<Computed> {
    let op = dir.op();
    let nonempty = check_spec(op, s)?;
    let lens = operand_lens(s);
    let [ia, ib, io] = dir.roles();
    for (operand, i) in [(a, ia), (b, ib)] {
        if let Some(f) = operand.f32() {
            check(op, OPERAND_NAMES[i], f.len(), lens[i])?;
        }
        if let Some(copy) = operand.bf16() {
            check(op, &format!("the bf16 copy of the {}", OPERAND_NAMES[i]), copy.len(), lens[i])?;
        }
    }
    let dev = a.device();
    if !dev.same_device(b.device()) {
        return Err(cuda_error(op, "operands on different CUDA devices"));
    }
    if !nonempty {
        let out = match form {
            Form::Bf16 if crate::settings::bf16_conv() => CudaNormInput::Bf16(CudaBf16::zeros(dev, lens[io])?),
            _ => CudaNormInput::F32(dev.zeros(lens[io])?),
        };
        return Ok(Computed { out, copies: [None, None] });
    }
    if crate::settings::bf16_conv() {
        return bf16::convolve(dir, s, a, b, form);
    }
    // An operand given as its bf16 copy alone (the mode was switched since it was made): its
    // values, widened.
    let (af, bf) = (bf16::f32_values(a, s, ia)?, bf16::f32_values(b, s, ib)?);
    let out = dev.alloc(lens[io])?;
    run(dev, dir, s, place(dir, af.get().raw_ptr(), bf.get().raw_ptr(), out.raw_ptr()), ConvData::NchwF32)?;
    Ok(Computed { out: CudaNormInput::F32(out), copies: [None, None] })
}

/// Forward convolution, no bias: `y [n, c_out, out_h, out_w]` from `x [n, c_in, h, w]` and
/// `w [c_out, c_in, kh, kw]`.
pub fn conv2d(x: &CudaStorage, w: &CudaStorage, s: &ConvSpec) -> Result<CudaStorage> {
    compute(Direction::Forward, s, x.into(), w.into(), Form::F32)?.out.into_f32()
}

/// [`conv2d`], keeping the bf16 copies of the operands `keep` names for the backward pass
/// ([`conv2d_backward`]).
pub fn conv2d_keeping(x: &CudaStorage, w: &CudaStorage, s: &ConvSpec, keep: ConvKeep) -> Result<(CudaStorage, KeptOperands)> {
    let (out, kept) = compute(Direction::Forward, s, x.into(), w.into(), Form::F32)?.keeping(keep);
    Ok((out.into_f32()?, kept))
}

/// [`conv2d_keeping`] for a convolution whose output only a training-mode batch norm reads
/// (`ops::batch_norm_train` on its [`CudaNormInput::view`]): in the bf16 mode the output stays
/// NCHW bf16, the exact values [`conv2d_keeping`] would widen to f32.
pub fn conv2d_for_norm(x: &CudaStorage, w: &CudaStorage, s: &ConvSpec, keep: ConvKeep) -> Result<(CudaNormInput, KeptOperands)> {
    Ok(compute(Direction::Forward, s, x.into(), w.into(), Form::Bf16)?.keeping(keep))
}

/// Gradient with respect to the input: `dx [n, c_in, h, w]` from `dy` and `w`.
pub fn conv2d_backward_input(dy: &CudaStorage, w: &CudaStorage, s: &ConvSpec) -> Result<CudaStorage> {
    compute(Direction::BackwardData, s, dy.into(), w.into(), Form::F32)?.out.into_f32()
}

/// Gradient with respect to the weights: `dw [c_out, c_in, kh, kw]` from `x` and `dy`.
pub fn conv2d_backward_weight(x: &CudaStorage, dy: &CudaStorage, s: &ConvSpec) -> Result<CudaStorage> {
    compute(Direction::BackwardFilter, s, x.into(), dy.into(), Form::F32)?.out.into_f32()
}

/// `[dx, dw]` where `need` asks for them: the values of [`conv2d_backward_input`] and
/// [`conv2d_backward_weight`]. In the bf16 mode the operand copies come from `kept` where the
/// forward pass kept them, and dy is cast once for both gradients: per layer and training
/// step, one cast to bf16 where the separate calls make four (dy twice, w and x). `x` may be
/// `None` where dw is not needed or `kept` holds its copy (which is then all that is read; if
/// the bf16 mode was switched off since, the copy widened: x's values rounded to bf16).
pub fn conv2d_backward(
    dy: &CudaStorage,
    x: Option<&CudaStorage>,
    w: &CudaStorage,
    s: &ConvSpec,
    kept: &KeptOperands,
    need: [bool; 2],
) -> Result<[Option<CudaStorage>; 2]> {
    backward(dy.into(), x, w, s, kept, need)
}

/// [`conv2d_backward`] with dy given as its NHWC bf16 copy alone (`[n][h w, c_out]`, the bf16
/// mode: what a batch norm's backward writes for the convolution before it), so that no f32
/// dy is read or cast. The same values as [`conv2d_backward`] on an f32 dy whose values round
/// to that copy.
pub fn conv2d_backward_from_bf16(
    dy: &CudaBf16,
    x: Option<&CudaStorage>,
    w: &CudaStorage,
    s: &ConvSpec,
    kept: &KeptOperands,
    need: [bool; 2],
) -> Result<[Option<CudaStorage>; 2]> {
    backward(Operand::Bf16(dy), x, w, s, kept, need)
}

fn backward(
    dy: Operand,
    x: Option<&CudaStorage>,
    w: &CudaStorage,
    s: &ConvSpec,
    kept: &KeptOperands,
    need: [bool; 2],
) -> Result<[Option<CudaStorage>; 2]> {
    let mut dy_copy = None;
    let dx = if need[0] {
        let w = Operand::with_copy(w, kept.weight.as_ref());
        let mut c = compute(Direction::BackwardData, s, dy, w, Form::F32)?;
        dy_copy = c.copies[0].take();
        Some(c.out.into_f32()?)
    } else {
        None
    };
    let dw = if need[1] {
        let x = match (x, kept.input.as_ref()) {
            (Some(x), copy) => Operand::with_copy(x, copy),
            (None, Some(copy)) => Operand::Bf16(copy),
            (None, None) => return Err(crate::backend::missing_conv_input()),
        };
        let dy = dy.or_copy(dy_copy.as_ref());
        Some(compute(Direction::BackwardFilter, s, x, dy, Form::F32)?.out.into_f32()?)
    } else {
        None
    };
    Ok([dx, dw])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_specs_are_errors_not_panics() {
        let s = ConvSpec { n: 1, c_in: 1, h: 2, w: 2, c_out: 1, kh: 5, kw: 5, stride: 1, pad: 0 };
        assert!(check_spec("conv2d", &s).is_err());
        let s = ConvSpec { stride: 0, kh: 1, kw: 1, ..s };
        assert!(check_spec("conv2d", &s).is_err());
    }
}
