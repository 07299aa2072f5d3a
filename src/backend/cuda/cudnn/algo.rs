//! Algorithm choice: the three directions and their cuDNN algorithm tables, the candidates
//! cuDNN's results leave once deterministic mode and TF32 are applied, the workspace each one
//! needs, and the two ways of ranking them: cuDNN's heuristics (`*_v7`) and timing them on the
//! real buffers (`cudnnFind*AlgorithmEx`).

use std::ffi::c_int;

use cudarc::cudnn::{result, sys};

use super::descriptors::Descriptors;
use super::{ptr, Operands};
use crate::backend::cuda::device::CudaDevice;
use crate::backend::cuda::error::{cuda_error, CudaResultExt};
use crate::error::{Error, Result};

/// Which of the three convolution computations.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    /// `y = conv(x, w)`.
    Forward,
    /// `dx` from `dy` and `w`.
    BackwardData,
    /// `dw` from `x` and `dy`.
    BackwardFilter,
}

impl Direction {
    pub(super) fn name(self) -> &'static str {
        match self {
            Direction::Forward => "cudnn.conv_fwd",
            Direction::BackwardData => "cudnn.conv_bwd_data",
            Direction::BackwardFilter => "cudnn.conv_bwd_filter",
        }
    }

    /// The entry point's name, for error messages.
    pub(super) fn op(self) -> &'static str {
        match self {
            Direction::Forward => "conv2d",
            Direction::BackwardData => "conv2d_backward_input",
            Direction::BackwardFilter => "conv2d_backward_weight",
        }
    }

    /// Where the computation's two operands and its result are among x, w and y (indices 0,
    /// 1, 2): forward (x, w) to y; backward data (dy, w) to dx; backward filter (x, dy) to dw.
    pub(super) fn roles(self) -> [usize; 3] {
        match self {
            Direction::Forward => [0, 1, 2],
            Direction::BackwardData => [2, 1, 0],
            Direction::BackwardFilter => [0, 2, 1],
        }
    }

    fn algo_count(self) -> usize {
        match self {
            Direction::Forward => 8,
            Direction::BackwardData => 6,
            Direction::BackwardFilter => 7,
        }
    }

    /// Algorithms that accumulate with atomics, excluded in deterministic mode whatever cuDNN
    /// reports.
    fn uses_atomics(self, algo: u32) -> bool {
        match self {
            Direction::Forward => false,
            Direction::BackwardData => algo == 0,
            Direction::BackwardFilter => algo == 0 || algo == 3,
        }
    }
}

/// An algorithm and the math type to run it with (raw cuDNN enum values).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Candidate {
    pub(super) algo: u32,
    pub(super) math: u32,
}

/// The layout shared by the three `cudnnConvolution*AlgoPerf_t` structs, with plain integers
/// in place of enums so that a value this binding does not know cannot be undefined behaviour.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct RawPerf {
    algo: u32,
    status: u32,
    time: f32,
    memory: usize,
    determinism: u32,
    math_type: u32,
    reserved: [c_int; 3],
}

const _: () = {
    assert!(std::mem::size_of::<RawPerf>() == std::mem::size_of::<sys::cudnnConvolutionFwdAlgoPerf_t>());
    assert!(std::mem::size_of::<RawPerf>() == std::mem::size_of::<sys::cudnnConvolutionBwdDataAlgoPerf_t>());
    assert!(std::mem::size_of::<RawPerf>() == std::mem::size_of::<sys::cudnnConvolutionBwdFilterAlgoPerf_t>());
};

pub(super) const MATH_DEFAULT: u32 = 0;
pub(super) const MATH_TENSOR_OP: u32 = 1;
pub(super) const MATH_FMA: u32 = 3;

pub(super) fn math_type(v: u32) -> sys::cudnnMathType_t {
    use sys::cudnnMathType_t::*;
    match v {
        1 => CUDNN_TENSOR_OP_MATH,
        2 => CUDNN_TENSOR_OP_MATH_ALLOW_CONVERSION,
        3 => CUDNN_FMA_MATH,
        _ => CUDNN_DEFAULT_MATH,
    }
}

pub(super) fn fwd_algo(v: u32) -> Option<sys::cudnnConvolutionFwdAlgo_t> {
    use sys::cudnnConvolutionFwdAlgo_t::*;
    Some(match v {
        0 => CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_GEMM,
        1 => CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_PRECOMP_GEMM,
        2 => CUDNN_CONVOLUTION_FWD_ALGO_GEMM,
        3 => CUDNN_CONVOLUTION_FWD_ALGO_DIRECT,
        4 => CUDNN_CONVOLUTION_FWD_ALGO_FFT,
        5 => CUDNN_CONVOLUTION_FWD_ALGO_FFT_TILING,
        6 => CUDNN_CONVOLUTION_FWD_ALGO_WINOGRAD,
        7 => CUDNN_CONVOLUTION_FWD_ALGO_WINOGRAD_NONFUSED,
        _ => return None,
    })
}

pub(super) fn bwd_data_algo(v: u32) -> Option<sys::cudnnConvolutionBwdDataAlgo_t> {
    use sys::cudnnConvolutionBwdDataAlgo_t::*;
    Some(match v {
        0 => CUDNN_CONVOLUTION_BWD_DATA_ALGO_0,
        1 => CUDNN_CONVOLUTION_BWD_DATA_ALGO_1,
        2 => CUDNN_CONVOLUTION_BWD_DATA_ALGO_FFT,
        3 => CUDNN_CONVOLUTION_BWD_DATA_ALGO_FFT_TILING,
        4 => CUDNN_CONVOLUTION_BWD_DATA_ALGO_WINOGRAD,
        5 => CUDNN_CONVOLUTION_BWD_DATA_ALGO_WINOGRAD_NONFUSED,
        _ => return None,
    })
}

pub(super) fn bwd_filter_algo(v: u32) -> Option<sys::cudnnConvolutionBwdFilterAlgo_t> {
    use sys::cudnnConvolutionBwdFilterAlgo_t::*;
    Some(match v {
        0 => CUDNN_CONVOLUTION_BWD_FILTER_ALGO_0,
        1 => CUDNN_CONVOLUTION_BWD_FILTER_ALGO_1,
        2 => CUDNN_CONVOLUTION_BWD_FILTER_ALGO_FFT,
        3 => CUDNN_CONVOLUTION_BWD_FILTER_ALGO_3,
        4 => CUDNN_CONVOLUTION_BWD_FILTER_ALGO_WINOGRAD,
        5 => CUDNN_CONVOLUTION_BWD_FILTER_ALGO_WINOGRAD_NONFUSED,
        6 => CUDNN_CONVOLUTION_BWD_FILTER_ALGO_FFT_TILING,
        _ => return None,
    })
}

fn known_algo(dir: Direction, v: u32) -> bool {
    match dir {
        Direction::Forward => fwd_algo(v).is_some(),
        Direction::BackwardData => bwd_data_algo(v).is_some(),
        Direction::BackwardFilter => bwd_filter_algo(v).is_some(),
    }
}

/// Keeps the usable results, in cuDNN's order (fastest or most promising first). Without
/// `tensor_cores` (fp32 with TF32 off) only FMA math is kept, and run as such.
pub(super) fn usable(dir: Direction, perfs: &[RawPerf], tensor_cores: bool, deterministic: bool) -> Vec<Candidate> {
    perfs
        .iter()
        .filter(|p| p.status == 0 && known_algo(dir, p.algo))
        .filter(|p| !deterministic || (p.determinism == 1 && !dir.uses_atomics(p.algo)))
        .filter(|p| tensor_cores || p.math_type == MATH_FMA || p.math_type == MATH_DEFAULT)
        .map(|p| Candidate { algo: p.algo, math: if tensor_cores { p.math_type } else { MATH_FMA } })
        .fold(Vec::new(), |mut v, c| {
            if !v.contains(&c) {
                v.push(c);
            }
            v
        })
}

/// The workspace `algo` needs, in bytes.
fn workspace_size(h: sys::cudnnHandle_t, dir: Direction, d: &Descriptors, algo: u32) -> Result<usize> {
    let bad = || cuda_error(dir.name(), format!("unknown algorithm {algo}"));
    // SAFETY: live handle and descriptors.
    unsafe {
        match dir {
            Direction::Forward => {
                result::get_convolution_forward_workspace_size(h, d.x.0, d.w.0, d.conv.0, d.y.0, fwd_algo(algo).ok_or_else(bad)?)
            }
            Direction::BackwardData => {
                result::get_convolution_backward_data_workspace_size(h, d.w.0, d.y.0, d.conv.0, d.x.0, bwd_data_algo(algo).ok_or_else(bad)?)
            }
            Direction::BackwardFilter => result::get_convolution_backward_filter_workspace_size(
                h,
                d.x.0,
                d.y.0,
                d.conv.0,
                d.w.0,
                bwd_filter_algo(algo).ok_or_else(bad)?,
            ),
        }
    }
    .ctx(&format!("{} workspace size", dir.name()))
}

/// cuDNN's heuristic ranking (`*_v7`), no work on the device.
pub(super) fn heuristics(h: sys::cudnnHandle_t, dir: Direction, d: &Descriptors) -> Result<Vec<RawPerf>> {
    let mut perfs = [RawPerf::default(); 8];
    let mut n: c_int = 0;
    let req = dir.algo_count() as c_int;
    // SAFETY: `perfs` has room for `req` results of the shared layout (checked at compile time).
    unsafe {
        match dir {
            Direction::Forward => {
                result::get_convolution_forward_algorithm(h, d.x.0, d.w.0, d.conv.0, d.y.0, req, &mut n, perfs.as_mut_ptr().cast())
            }
            Direction::BackwardData => {
                result::get_convolution_backward_data_algorithm(h, d.w.0, d.y.0, d.conv.0, d.x.0, req, &mut n, perfs.as_mut_ptr().cast())
            }
            Direction::BackwardFilter => {
                result::get_convolution_backward_filter_algorithm(h, d.x.0, d.y.0, d.conv.0, d.w.0, req, &mut n, perfs.as_mut_ptr().cast())
            }
        }
    }
    .ctx(&format!("{} heuristics", dir.name()))?;
    Ok(perfs[..(n.max(0) as usize).min(perfs.len())].to_vec())
}

/// Times every algorithm on the real buffers (`cudnnFind*AlgorithmEx`), with a workspace of
/// at most `budget` bytes; writes garbage into the output buffer, which the real run
/// overwrites.
pub(super) fn benchmark(
    dev: &CudaDevice,
    h: sys::cudnnHandle_t,
    dir: Direction,
    d: &Descriptors,
    o: Operands,
    budget: usize,
) -> Result<Vec<RawPerf>> {
    // The largest workspace we can get, down to none.
    let mut size = budget;
    let ws = loop {
        if size < (1 << 20) {
            break None;
        }
        match dev.alloc(size / 4) {
            Ok(b) => break Some(b),
            Err(Error::OutOfMemory { .. }) => size /= 4,
            Err(e) => return Err(e),
        }
    };
    let (ws_ptr, ws_bytes) = match &ws {
        Some(b) => (ptr(b.raw_ptr()), b.len() * 4),
        None => (std::ptr::null_mut(), 0),
    };
    let mut perfs = [RawPerf::default(); 8];
    let mut n: c_int = 0;
    let req = dir.algo_count() as c_int;
    // SAFETY: live handle and descriptors; the buffers match the descriptors (checked by the
    // callers); `perfs` has room for `req` results of the shared layout.
    unsafe {
        match dir {
            Direction::Forward => sys::cudnnFindConvolutionForwardAlgorithmEx(
                h,
                d.x.0,
                ptr(o.x),
                d.w.0,
                ptr(o.w),
                d.conv.0,
                d.y.0,
                ptr(o.y),
                req,
                &mut n,
                perfs.as_mut_ptr().cast(),
                ws_ptr,
                ws_bytes,
            ),
            Direction::BackwardData => sys::cudnnFindConvolutionBackwardDataAlgorithmEx(
                h,
                d.w.0,
                ptr(o.w),
                d.y.0,
                ptr(o.y),
                d.conv.0,
                d.x.0,
                ptr(o.x),
                req,
                &mut n,
                perfs.as_mut_ptr().cast(),
                ws_ptr,
                ws_bytes,
            ),
            Direction::BackwardFilter => sys::cudnnFindConvolutionBackwardFilterAlgorithmEx(
                h,
                d.x.0,
                ptr(o.x),
                d.y.0,
                ptr(o.y),
                d.conv.0,
                d.w.0,
                ptr(o.w),
                req,
                &mut n,
                perfs.as_mut_ptr().cast(),
                ws_ptr,
                ws_bytes,
            ),
        }
    }
    .result()
    .ctx(&format!("{} algorithm search", dir.name()))?;
    drop(ws);
    let mut v = perfs[..(n.max(0) as usize).min(perfs.len())].to_vec();
    v.retain(|p| p.memory <= ws_bytes);
    Ok(v)
}

/// Sets a candidate's math type and returns its workspace size, `None` when that does not
/// fit the budget.
pub(super) fn prepare(h: sys::cudnnHandle_t, dir: Direction, d: &Descriptors, c: Candidate, budget: usize) -> Result<Option<usize>> {
    d.set_math(c.math)?;
    let need = workspace_size(h, dir, d, c.algo)?;
    Ok((need <= budget).then_some(need))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn perf(algo: u32, status: u32, det: u32, math: u32) -> RawPerf {
        RawPerf { algo, status, determinism: det, math_type: math, ..Default::default() }
    }

    #[test]
    fn deterministic_mode_drops_atomic_algorithms() {
        let perfs = [perf(0, 0, 0, 3), perf(0, 0, 1, 3), perf(1, 0, 1, 3), perf(3, 0, 1, 3)];
        let c = usable(Direction::BackwardFilter, &perfs, false, true);
        assert_eq!(c, vec![Candidate { algo: 1, math: MATH_FMA }]);
        let c = usable(Direction::BackwardFilter, &perfs, false, false);
        assert_eq!(c.iter().map(|c| c.algo).collect::<Vec<_>>(), vec![0, 1, 3]);
    }

    #[test]
    fn fp32_mode_never_runs_tensor_op_math() {
        let perfs = [perf(1, 0, 1, 1), perf(1, 0, 1, 3), perf(0, 0, 1, 0), perf(6, 9, 1, 3), perf(42, 0, 1, 3)];
        let c = usable(Direction::Forward, &perfs, false, false);
        assert_eq!(c, vec![Candidate { algo: 1, math: MATH_FMA }, Candidate { algo: 0, math: MATH_FMA }]);
        let c = usable(Direction::Forward, &perfs, true, false);
        assert_eq!(c[0], Candidate { algo: 1, math: 1 });
    }
}
