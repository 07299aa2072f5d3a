//! `kernels/batch_norm.ptx`: the seven training-mode entries (statistics partial / final,
//! normalise with and without the fused ReLU, backward partial / final / dx with and without the fused ReLU,
//! `relu`, whose mask they recompute from x; dx also as NHWC bf16, `bn_bwd_dx_nhwc_bf16`,
//! against `bn_bwd_dx_f32` rounded and transposed) against the CPU backend's batch norm
//! (`cpu::batch_norm::forward_train` / `backward`, through `CpuStorage`, which recomputes the
//! output with `cpu::batch_norm::normalize` and composes `cpu::elementwise::relu_backward` for
//! the fused case), with the launch shapes and arguments of `ops::batch_norm_train` /
//! `ops::batch_norm_backward`. Eval mode's entry: `batch_norm_eval.rs`.
//!
//! What is bit-exact and what is not:
//! - The statistics are summed in f64 both sides, but by different formulas (the kernel: one
//!   pass over `x - K` with the shift `K = x[0, c, 0]`; the CPU: the mean, then a second pass
//!   over `(x - mean)^2`) and in different orders. Both carry an f64 error of about 1e-12
//!   relative, far below an f32 ulp, and are rounded once to f32, so they agree to within one
//!   f32 ulp (they differ only when the f64 values straddle an f32 rounding boundary).
//! - `bn_normalize_f32` given the same statistics: bit-exact, as the header promises (checked
//!   with the CPU's own statistics fed in), the fused ReLU included (`max.f32` and
//!   `cpu::relu` both give +0 for -0 and NaN).
//! - The backward sums differ from the CPU's in order and in where `invstd` is applied, so
//!   they too agree to within an f32 ulp (dx too, away from cancellation in
//!   `count dy - sdy - xhat sdyx`, which these random inputs do not come near); with dyadic statistics and coarse inputs every f64
//!   sum is exact on both sides, and then dgamma, dbeta and dx are bit-exact.
//! - The fused-ReLU backward is bit-exact against the unfused kernels given the gradient masked
//!   by the stored output (`relu_backward(y, dy)` materialised, y what `bn_normalize_f32` with
//!   `relu` wrote from the same x, parameters and statistics), as the header promises: its
//!   mask, recomputed from x, is that output's, at the awkward values too (x at the mean,
//!   outputs of exactly +0 and -0 before the clamp, NaN and infinite statistics and x).
//! - Every entry that reads x, given x as bf16 (`xbf16 = 1`, the bf16 convolutions' output),
//!   is bit-exact against itself given the widened f32 values (`xbf16 = 0`), NaN payloads
//!   included: the partial sums, statistics, outputs and gradients.
//!
//! Not reached: the loops over channels / planes by gridDim.y (more than 65535 of them) and
//! over a plane by gridDim.x (HW over 16.7 M): one launch of that size takes the simulator
//! some 20 s.

use hyperseg_engine::backend::cpu::CpuStorage;
use hyperseg_engine::backend::cuda::kernels::ops;
use hyperseg_engine::backend::{BackendStorage, Nchw};

use crate::sim::{self, Arg, Kernels, Memory};
use crate::{assert_bits, dims, run, Rng};

const EPS: f32 = 1e-5;

/// x as the kernels read it (their trailing param `xbf16`): f32 (`xbf16 = 0`) or the bits of
/// bf16 values (`xbf16 = 1`).
#[derive(Clone, Copy)]
enum X<'a> {
    F32(&'a [f32]),
    Bf16(&'a [u16]),
}

impl X<'_> {
    fn len(self) -> usize {
        match self {
            X::F32(v) => v.len(),
            X::Bf16(v) => v.len(),
        }
    }

    /// A device copy (4 or 2 bytes an element).
    fn upload(self, mem: &mut Memory) -> u64 {
        match self {
            X::F32(v) => mem.upload(v),
            X::Bf16(v) => mem.upload(v),
        }
    }

    /// The kernels' `xbf16` argument.
    fn xbf16(self) -> Arg {
        Arg::U32(matches!(self, X::Bf16(_)) as u32)
    }

    /// The f32 values the kernels read (a bf16 widened exactly: bits << 16).
    fn f32(self) -> Vec<f32> {
        match self {
            X::F32(v) => v.to_vec(),
            X::Bf16(v) => v.iter().map(|b| f32::from_bits((*b as u32) << 16)).collect(),
        }
    }
}

/// What the forward kernels wrote.
struct Stats {
    mean: Vec<f32>,
    invstd: Vec<f32>,
    var_unbiased: Vec<f32>,
}

/// What the backward kernels wrote.
struct Grads {
    dx: Vec<f32>,
    dgamma: Vec<f32>,
    dbeta: Vec<f32>,
}

fn cpu(v: &[f32]) -> CpuStorage {
    CpuStorage::F32(v.to_vec())
}

fn hw(d: Nchw) -> u32 {
    (d.h * d.w) as u32
}

/// The element count per channel, as the wrappers pass it (`count: f64`).
fn count(d: Nchw) -> f64 {
    (d.n * d.h * d.w) as f64
}

/// `bn_stats_partial_f32` then `bn_stats_final_f32`, as `ops::batch_norm_train` launches them
/// (`d` with channels and samples). The partial buffer starts poisoned (NaN), so a piece the
/// partial kernel leaves unwritten shows in the statistics.
fn statistics(k: &Kernels, x: X, d: Nchw) -> Stats {
    statistics_and_partial(k, x, d).0
}

/// [`statistics`], and the bits of the partial sums `[P, C, 2]` (f64) the final kernel read.
fn statistics_and_partial(k: &Kernels, x: X, d: Nchw) -> (Stats, Vec<u64>) {
    let (nchunk, pieces, block) = ops::plane_split("batch_norm", d.n, d.c, d.h * d.w).unwrap();
    let c = d.c as u32;
    let mut mem = Memory::default();
    let xd = x.upload(&mut mem);
    let partial = mem.poisoned(pieces as usize * d.c * 2 * 8);
    let shape = dims(ops::partial_cfg(pieces, c, block));
    let args = [Arg::U64(partial), Arg::U64(xd), Arg::U32(c), Arg::U32(hw(d)), Arg::U32(ops::PLANE_CHUNK), Arg::U32(nchunk), x.xbf16()];
    run(k, &mut mem, "bn_stats_partial_f32", shape, &args);
    let [mean, invstd, var] = [(); 3].map(|_| mem.poisoned(4 * d.c));
    let args = [
        Arg::U64(mean),
        Arg::U64(invstd),
        Arg::U64(var),
        Arg::U64(partial),
        Arg::U64(xd),
        Arg::U32(c),
        Arg::U32(hw(d)),
        Arg::U32(pieces),
        Arg::F64(count(d)),
        Arg::F32(EPS),
        x.xbf16(),
    ];
    run(k, &mut mem, "bn_stats_final_f32", dims(ops::grid_1d(c)), &args);
    let stats = Stats { mean: mem.download(mean, d.c), invstd: mem.download(invstd, d.c), var_unbiased: mem.download(var, d.c) };
    (stats, mem.download(partial, pieces as usize * d.c * 2))
}

/// `bn_normalize_f32` with the given statistics, as `ops::batch_norm_train` launches it.
fn normalize(k: &Kernels, x: X, s: (&[f32], &[f32]), gamma: &[f32], beta: &[f32], d: Nchw, relu: bool) -> Vec<f32> {
    let c = d.c as u32;
    let planes = (d.n * d.c) as u32;
    let mut mem = Memory::default();
    let xd = x.upload(&mut mem);
    let [md, id, gd, bd] = [s.0, s.1, gamma, beta].map(|v| mem.upload(v));
    let y = mem.poisoned(4 * x.len());
    let args = [
        Arg::U64(y),
        Arg::U64(xd),
        Arg::U64(md),
        Arg::U64(id),
        Arg::U64(gd),
        Arg::U64(bd),
        Arg::U32(c),
        Arg::U32(hw(d)),
        Arg::U32(planes),
        Arg::U32(relu as u32),
        x.xbf16(),
    ];
    run(k, &mut mem, "bn_normalize_f32", dims(ops::plane_cfg(hw(d), planes)), &args);
    mem.download(y, x.len())
}

/// The inputs of one backward.
#[derive(Clone, Copy)]
struct BwdIn<'a> {
    x: X<'a>,
    dy: &'a [f32],
    gamma: &'a [f32],
    /// Read only with `relu`.
    beta: &'a [f32],
    mean: &'a [f32],
    invstd: &'a [f32],
    /// The fused ReLU's backward (the kernels' `relu = 1`): dy counts only where the output of
    /// the forward with these parameters and statistics, recomputed from x, is > 0.
    relu: bool,
}

/// `bn_bwd_partial_f32`, `bn_bwd_final_f32` and `bn_bwd_dx_f32`, as `ops::batch_norm_backward`
/// launches them (poisoned partial and coefficient buffers, so unwritten entries show).
fn backward(k: &Kernels, b: &BwdIn, d: Nchw) -> Grads {
    backward_and_partial(k, b, d).0
}

/// [`backward`], and the bits of the partial sums `[P, C, 2]` (f64) the final kernel read.
fn backward_and_partial(k: &Kernels, b: &BwdIn, d: Nchw) -> (Grads, Vec<u64>) {
    let (grads, partial, _) = backward_all(k, b, d, false);
    (grads, partial)
}

/// [`backward_and_partial`], and with `nhwc` also `bn_bwd_dx_nhwc_bf16` on the same
/// coefficients, as `ops::batch_norm_backward_to(.., DxForm::Bf16Nhwc)` launches it (grid
/// `transpose_cfg(C, HW, N)`, a poisoned output): the bits of its output `[N, HW, C]`.
fn backward_all(k: &Kernels, b: &BwdIn, d: Nchw, nhwc: bool) -> (Grads, Vec<u64>, Option<Vec<u16>>) {
    let (nchunk, pieces, block) = ops::plane_split("batch_norm_backward", d.n, d.c, d.h * d.w).unwrap();
    let (c, planes) = (d.c as u32, (d.n * d.c) as u32);
    let mut mem = Memory::default();
    let xd = b.x.upload(&mut mem);
    let [dyd, gd, bd, md, id] = [b.dy, b.gamma, b.beta, b.mean, b.invstd].map(|v| mem.upload(v));
    let partial = mem.poisoned(pieces as usize * d.c * 2 * 8);
    let coef = mem.poisoned(d.c * 8 * 8);
    let args = [
        Arg::U64(partial),
        Arg::U64(xd),
        Arg::U64(dyd),
        Arg::U64(md),
        Arg::U64(id),
        Arg::U64(gd),
        Arg::U64(bd),
        Arg::U32(c),
        Arg::U32(hw(d)),
        Arg::U32(ops::PLANE_CHUNK),
        Arg::U32(nchunk),
        Arg::U32(b.relu as u32),
        b.x.xbf16(),
    ];
    run(k, &mut mem, "bn_bwd_partial_f32", dims(ops::partial_cfg(pieces, c, block)), &args);
    let [dgamma, dbeta] = [(); 2].map(|_| mem.poisoned(4 * d.c));
    let args = [
        Arg::U64(dgamma),
        Arg::U64(dbeta),
        Arg::U64(coef),
        Arg::U64(partial),
        Arg::U64(md),
        Arg::U64(id),
        Arg::U64(gd),
        Arg::U32(c),
        Arg::U32(pieces),
        Arg::F64(count(d)),
    ];
    run(k, &mut mem, "bn_bwd_final_f32", dims(ops::grid_1d(c)), &args);
    let dx = mem.poisoned(4 * b.x.len());
    let args = [
        Arg::U64(dx),
        Arg::U64(xd),
        Arg::U64(dyd),
        Arg::U64(coef),
        Arg::U64(md),
        Arg::U64(id),
        Arg::U64(gd),
        Arg::U64(bd),
        Arg::U32(c),
        Arg::U32(hw(d)),
        Arg::U32(planes),
        Arg::F64(count(d)),
        Arg::U32(b.relu as u32),
        b.x.xbf16(),
    ];
    run(k, &mut mem, "bn_bwd_dx_f32", dims(ops::plane_cfg(hw(d), planes)), &args);
    let nhwc = nhwc.then(|| {
        let out = mem.poisoned(2 * b.x.len());
        let mut args = args;
        args[0] = Arg::U64(out);
        args[10] = Arg::U32(d.n as u32);
        run(k, &mut mem, "bn_bwd_dx_nhwc_bf16", dims(ops::transpose_cfg(c, hw(d), d.n as u32)), &args);
        mem.download::<u16>(out, b.x.len())
    });
    let grads = Grads { dx: mem.download(dx, b.x.len()), dgamma: mem.download(dgamma, d.c), dbeta: mem.download(dbeta, d.c) };
    (grads, mem.download(partial, pieces as usize * d.c * 2), nhwc)
}

/// The CPU backend's backward of the same inputs (the output recomputed and `relu_backward`
/// composed when fused).
fn cpu_backward(b: &BwdIn, d: Nchw) -> Grads {
    let [dy, gamma, beta, mean, invstd] = [b.dy, b.gamma, b.beta, b.mean, b.invstd].map(cpu);
    let r = cpu(&b.x.f32()).batch_norm_backward(&dy, &gamma, &beta, &mean, &invstd, d, b.relu).unwrap();
    Grads { dx: r.dx.as_f32().to_vec(), dgamma: r.dgamma.as_f32().to_vec(), dbeta: r.dbeta.as_f32().to_vec() }
}

/// The CPU backend's forward: (y, its statistics).
fn cpu_forward(x: &[f32], gamma: &[f32], beta: &[f32], d: Nchw, relu: bool) -> (Vec<f32>, Stats) {
    let f = cpu(x).batch_norm_train(&cpu(gamma), &cpu(beta), d, EPS, relu).unwrap();
    let s = Stats { mean: f.mean.as_f32().to_vec(), invstd: f.invstd.as_f32().to_vec(), var_unbiased: f.var_unbiased.as_f32().to_vec() };
    (f.y.as_f32().to_vec(), s)
}

/// Whether `g` is `w` or its f32 neighbour (both NaN counts as equal).
fn within_an_ulp(g: f32, w: f32) -> bool {
    g.to_bits() == w.to_bits()
        || (g.is_nan() && w.is_nan())
        || (g.is_sign_negative() == w.is_sign_negative() && g.to_bits().abs_diff(w.to_bits()) <= 1)
}

/// Asserts `got` is within one f32 ulp of `want` element-wise (see the module comment for
/// why); names the first element that is not.
fn assert_within_an_ulp(what: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            within_an_ulp(*g, *w),
            "{what}: element {i} is {g:e} ({:#010x}), the CPU reference has {w:e} ({:#010x}), more than an ulp apart",
            g.to_bits(),
            w.to_bits()
        );
    }
}

/// The three statistics of the kernels against the CPU's, to within an ulp.
fn assert_stats(tag: &str, got: &Stats, want: &Stats) {
    assert_within_an_ulp(&format!("bn_stats_final_f32 mean {tag}"), &got.mean, &want.mean);
    assert_within_an_ulp(&format!("bn_stats_final_f32 invstd {tag}"), &got.invstd, &want.invstd);
    assert_within_an_ulp(&format!("bn_stats_final_f32 var_unbiased {tag}"), &got.var_unbiased, &want.var_unbiased);
}

/// Random `x` of `d` in [lo, lo + 5), gamma in [0.5, 1.5) with one negative, beta in
/// [-0.5, 0.5).
fn inputs(d: Nchw, lo: f32, seed: u64) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let mut rng = Rng(seed);
    let x = rng.vec(d.len(), lo, lo + 5.0);
    let mut gamma = rng.vec(d.c, 0.5, 1.5);
    gamma[d.c / 2] = -gamma[d.c / 2];
    let beta = rng.vec(d.c, -0.5, 0.5);
    (x, gamma, beta)
}

fn tag(d: Nchw) -> String {
    format!("{}x{}x{}x{}", d.n, d.c, d.h, d.w)
}

/// Shapes for the per-channel work split: HW over one chunk (2048) and not a multiple of it
/// (two pieces per plane, the second of 67 elements; block 256, whose threads loop 8 times
/// over the first); HW under a warp (block 32, most lanes idle); more than 256 channels (two
/// blocks of the final kernels, threads past C idle); one sample per channel (count 1: the
/// unbiased variance falls back to the biased one).
const SHAPES: [Nchw; 4] = [
    Nchw { n: 2, c: 3, h: 45, w: 47 },
    Nchw { n: 2, c: 3, h: 5, w: 3 },
    Nchw { n: 1, c: 257, h: 1, w: 3 },
    Nchw { n: 1, c: 4, h: 1, w: 1 },
];

#[test]
fn statistics_match_the_cpu_to_an_ulp() {
    let k = sim::load("batch_norm");
    for (i, d) in SHAPES.into_iter().enumerate() {
        // An offset of 100 makes the shift matter (the variance of values far from 0).
        for lo in [-2.0, 100.0] {
            let (x, gamma, beta) = inputs(d, lo, 11 + i as u64);
            let (_, want) = cpu_forward(&x, &gamma, &beta, d, false);
            assert_stats(&format!("{} from {lo}", tag(d)), &statistics(&k, X::F32(&x), d), &want);
        }
    }
}

/// Some `x` of `d` set to signed zeros, large and tiny values, so that y has zeros (of both
/// signs, through the negative gamma), values clamped by the ReLU and exact ties at 0.
fn with_awkward_values(x: &mut [f32], rng: &mut Rng) {
    let special = [0.0, -0.0, 1.0e-40, -1.0e-40, 3.0e4, -3.0e4, f32::MIN_POSITIVE];
    for (i, s) in special.iter().cycle().take(x.len() / 5).enumerate() {
        let at = (i * 7 + rng.below(5) as usize) % x.len();
        x[at] = *s;
    }
}

#[test]
fn normalize_is_bit_exact_given_the_cpu_statistics() {
    let k = sim::load("batch_norm");
    for (i, d) in SHAPES.into_iter().enumerate() {
        let (mut x, gamma, mut beta) = inputs(d, -2.0, 21 + i as u64);
        with_awkward_values(&mut x, &mut Rng(5 + i as u64));
        beta[d.c / 2] = -0.0; // the channel of the negative gamma
        for relu in [false, true] {
            let (want, s) = cpu_forward(&x, &gamma, &beta, d, relu);
            let got = normalize(&k, X::F32(&x), (&s.mean, &s.invstd), &gamma, &beta, d, relu);
            let what = format!("bn_normalize_f32 relu={relu} {}", tag(d));
            if relu {
                assert_bits(&what, &got, &want);
                let neg = got.iter().position(|v| *v < 0.0);
                assert!(neg.is_none(), "{what}: element {neg:?} is negative after the fused ReLU");
            } else {
                assert_bits(&what, &got, &want);
            }
        }
    }
}

/// The fused ReLU is `max(y, 0)` of the plain output (NaN -> 0), bit for bit but for the sign
/// of zeros (see the module comment).
#[test]
fn fused_relu_is_the_relu_of_the_plain_output() {
    let k = sim::load("batch_norm");
    let d = Nchw { n: 2, c: 3, h: 9, w: 7 };
    let hw = d.h * d.w;
    let (mut x, mut gamma, mut beta) = inputs(d, -2.0, 31);
    let (_, s) = cpu_forward(&x, &gamma, &beta, d, false);
    // A NaN statistic of channel 1: its plain output is NaN, the fused one 0.
    let mut invstd = s.invstd.clone();
    invstd[1] = f32::NAN;
    // Channel 2 with gamma < 0 and beta = -0, one x at its mean: (gamma * +0) * invstd + -0 is -0.
    (gamma[2], beta[2]) = (-gamma[2].abs(), -0.0);
    let at = (d.c + 2) * hw + 4;
    x[at] = s.mean[2];
    let plain = normalize(&k, X::F32(&x), (&s.mean, &invstd), &gamma, &beta, d, false);
    let fused = normalize(&k, X::F32(&x), (&s.mean, &invstd), &gamma, &beta, d, true);
    assert!(plain[hw..2 * hw].iter().all(|v| v.is_nan()), "bn_normalize_f32: a NaN invstd gave a number");
    assert_eq!(plain[at].to_bits(), (-0.0f32).to_bits(), "bn_normalize_f32: element {at} at the mean is {:e}, not -0", plain[at]);
    let want: Vec<f32> = plain.iter().map(|&v| if v.is_nan() || v <= 0.0 { 0.0 } else { v }).collect();
    assert_bits("bn_normalize_f32 relu=1 against relu=0 then max(y, 0)", &fused, &want);
}

/// A batch with an infinity and a NaN in different channels: statistics NaN where the CPU's
/// are (the variance is not clamped to 0), finite elsewhere; the normalised output follows.
#[test]
fn statistics_of_a_non_finite_batch_stay_nan() {
    let k = sim::load("batch_norm");
    let d = Nchw { n: 2, c: 4, h: 4, w: 5 };
    let hw = d.h * d.w;
    let (mut x, gamma, beta) = inputs(d, -2.0, 41);
    x[5] = f32::INFINITY; // channel 0, not its first element (the kernels' shift K)
    x[hw + 7] = f32::NAN; // channel 1
    x[(d.c + 3) * hw + 2] = f32::NAN; // channel 3, second image
    x[3 * hw] = f32::NAN; // channel 3's shift K itself; channel 2 stays finite
    let (_, want) = cpu_forward(&x, &gamma, &beta, d, false);
    let got = statistics(&k, X::F32(&x), d);
    for c in [0, 1, 3] {
        assert!(
            want.invstd[c].is_nan() && want.var_unbiased[c].is_nan(),
            "the CPU's statistics of channel {c} are finite (invstd {:e}, var {:e})",
            want.invstd[c],
            want.var_unbiased[c]
        );
    }
    assert!(got.mean[2].is_finite() && got.invstd[2].is_finite() && got.var_unbiased[2].is_finite(), "channel 2's statistics");
    assert_stats("of a non-finite batch", &got, &want);
    for relu in [false, true] {
        let (want_y, _) = cpu_forward(&x, &gamma, &beta, d, relu);
        let y = normalize(&k, X::F32(&x), (&got.mean, &got.invstd), &gamma, &beta, d, relu);
        assert_bits(&format!("bn_normalize_f32 relu={relu} of a non-finite batch"), &y, &want_y);
    }
}

/// An infinity as a channel's first element (the shift K of both statistics kernels): the
/// CPU's mean is that infinity (the sum of finite values and one +inf), the variance NaN.
/// The kernels' shifted sums make it NaN: `x - K` is NaN at K itself and -inf elsewhere.
#[test]
fn an_infinite_shift_sample_gives_the_cpu_mean() {
    let k = sim::load("batch_norm");
    let d = Nchw { n: 2, c: 2, h: 3, w: 3 };
    let (mut x, gamma, beta) = inputs(d, -2.0, 43);
    x[d.h * d.w] = f32::INFINITY; // x[0, 1, 0]: channel 1's K
    let (_, want) = cpu_forward(&x, &gamma, &beta, d, false);
    assert_eq!(want.mean[1], f32::INFINITY, "the CPU's mean of channel 1");
    assert_stats("with an infinite shift sample", &statistics(&k, X::F32(&x), d), &want);
}

/// Inputs whose every f64 sum in the backward is exact: x and dy on a grid of 1/256, means on it
/// too (small multiples of 1/4, then one of the channel's own x: [`relu_edges`]) and invstd
/// powers of 2 (any statistics are valid inputs of the backward). Returns (x, dy, gamma, beta,
/// mean, invstd), gamma and beta random but for [`relu_edges`]' changes, so that the fused
/// ReLU's recomputed output has exact zeros of both signs and values at the mean.
#[allow(clippy::type_complexity)]
fn exact_backward_inputs(d: Nchw, seed: u64) -> (Vec<f32>, Vec<f32>, Vec<f32>, Vec<f32>, Vec<f32>, Vec<f32>) {
    let mut rng = Rng(seed);
    let mut grid = |n: usize, lo: i32, hi: i32| -> Vec<f32> {
        (0..n).map(|_| (lo + rng.below((hi - lo) as u32) as i32) as f32 / 256.0).collect::<Vec<_>>()
    };
    let x = grid(d.len(), -1024, 1024);
    let dy = grid(d.len(), -256, 256);
    let mut rng = Rng(seed ^ 0x9E37_79B9);
    let mut gamma = rng.vec(d.c, -1.5, 1.5);
    let mut beta = rng.vec(d.c, -0.5, 0.5);
    let mut mean: Vec<f32> = (0..d.c).map(|_| (rng.below(16) as f32 - 8.0) / 4.0).collect();
    let invstd: Vec<f32> = (0..d.c).map(|_| (2.0f32).powi(rng.below(5) as i32 - 2)).collect();
    relu_edges(&x, &mut gamma, &mut beta, &mut mean, &invstd, d);
    (x, dy, gamma, beta, mean, invstd)
}

/// The indices of channel `c`'s elements in x of `d`, image by image.
fn channel_elements(d: Nchw, c: usize) -> impl Iterator<Item = usize> {
    let hw = d.h * d.w;
    (0..d.n).flat_map(move |n| (n * d.c + c) * hw..(n * d.c + c + 1) * hw)
}

/// `bn_normalize_f32`'s y before the clamp, on the host: `((gamma (x - mean)) invstd) + beta`,
/// each op rounded (Rust does not fuse them).
fn yhat(x: f32, gamma: f32, beta: f32, mean: f32, invstd: f32) -> f32 {
    gamma * (x - mean) * invstd + beta
}

/// Makes the fused ReLU's recomputed output awkward on x (`xw`: the values the kernels read):
/// every channel's mean becomes one of its own finite x (its first), whose output before the
/// clamp is then beta; channels 0 mod 3 get gamma < 0 and beta = -0, so that output is -0;
/// channels 1 mod 3 get the beta that cancels another element's `(gamma (x - mean)) invstd`
/// exactly (that output +0), taking, where one exists, an element whose product was rounded
/// down (exact product > rounded), where an `fma` would leave a positive remainder; channels
/// 2 mod 3 keep their beta.
fn relu_edges(xw: &[f32], gamma: &mut [f32], beta: &mut [f32], mean: &mut [f32], invstd: &[f32], d: Nchw) {
    for c in 0..d.c {
        let Some(j0) = channel_elements(d, c).find(|&j| xw[j].is_finite()) else { continue };
        mean[c] = xw[j0];
        match c % 3 {
            0 => (gamma[c], beta[c]) = (-gamma[c].abs(), -0.0),
            1 => {
                // `(gamma (x - mean)) invstd`, rounded (+ -0 changes nothing), and whether it was
                // rounded down.
                let (g, m, s) = (gamma[c], mean[c], invstd[c]);
                let rounded_down = |j: usize| {
                    let (p, t) = (yhat(xw[j], g, -0.0, m, s), g * (xw[j] - m));
                    p.is_finite() && (t as f64) * (s as f64) > p as f64
                };
                let others = || channel_elements(d, c).filter(|&j| j != j0 && xw[j].is_finite());
                if let Some(j) = others().find(|&j| rounded_down(j)).or_else(|| others().next()) {
                    beta[c] = -yhat(xw[j], g, -0.0, m, s);
                }
            }
            _ => {}
        }
    }
}

/// How many outputs of `bn_normalize_f32` before the clamp (`plain`, relu = 0) are +0, -0.
fn signed_zeros(plain: &[f32]) -> (usize, usize) {
    let count = |bits: u32| plain.iter().filter(|v| v.to_bits() == bits).count();
    (count(0), count(0x8000_0000))
}

fn assert_grads_bits(what: &str, got: &Grads, want: &Grads) {
    assert_bits(&format!("bn_bwd_final_f32 dgamma {what}"), &got.dgamma, &want.dgamma);
    assert_bits(&format!("bn_bwd_final_f32 dbeta {what}"), &got.dbeta, &want.dbeta);
    assert_bits(&format!("bn_bwd_dx_f32 dx {what}"), &got.dx, &want.dx);
}

#[test]
fn backward_is_bit_exact_when_the_sums_are_exact() {
    let k = sim::load("batch_norm");
    for (i, d) in SHAPES.into_iter().enumerate() {
        let (x, dy, gamma, beta, mean, invstd) = exact_backward_inputs(d, 51 + i as u64);
        for relu in [false, true] {
            let b = BwdIn { x: X::F32(&x), dy: &dy, gamma: &gamma, beta: &beta, mean: &mean, invstd: &invstd, relu };
            assert_grads_bits(&format!("relu={relu} {}", tag(d)), &backward(&k, &b, d), &cpu_backward(&b, d));
        }
    }
}

/// The backward with the statistics of a forward and full-precision inputs: to within an ulp
/// (the sums differ in order; see the module comment).
#[test]
fn backward_matches_the_cpu_to_an_ulp() {
    let k = sim::load("batch_norm");
    for (i, d) in SHAPES.into_iter().enumerate() {
        let (x, gamma, beta) = inputs(d, 1.0, 61 + i as u64);
        let dy = Rng(71 + i as u64).vec(d.len(), -1.0, 1.0);
        for relu in [false, true] {
            let (_, s) = cpu_forward(&x, &gamma, &beta, d, relu);
            let b = BwdIn { x: X::F32(&x), dy: &dy, gamma: &gamma, beta: &beta, mean: &s.mean, invstd: &s.invstd, relu };
            let (got, want) = (backward(&k, &b, d), cpu_backward(&b, d));
            let what = format!("relu={relu} {}", tag(d));
            assert_within_an_ulp(&format!("bn_bwd_final_f32 dgamma {what}"), &got.dgamma, &want.dgamma);
            assert_within_an_ulp(&format!("bn_bwd_final_f32 dbeta {what}"), &got.dbeta, &want.dbeta);
            assert_within_an_ulp(&format!("bn_bwd_dx_f32 dx {what}"), &got.dx, &want.dx);
        }
    }
}

/// The header's promise for `relu`: the fused backward of `b` (its `relu` ignored), whose mask
/// the kernels recompute from x, gives bit for bit the partial sums, dgamma, dbeta and dx of the
/// unfused kernels on `relu_backward(y, dy)`, y the output `bn_normalize_f32` with relu stored
/// from the same x, parameters and statistics; panics at the first difference, naming the entry.
/// Returns `bn_normalize_f32`'s output before the clamp (relu = 0), to count what it held.
fn check_fused_is_unfused_of_stored(k: &Kernels, b: BwdIn, d: Nchw, what: &str) -> Vec<f32> {
    let stored = normalize(k, b.x, (b.mean, b.invstd), b.gamma, b.beta, d, true);
    let masked = cpu(&stored).relu_backward(&cpu(b.dy)).unwrap().as_f32().to_vec();
    let (got, pg) = backward_and_partial(k, &BwdIn { relu: true, ..b }, d);
    let (want, pw) = backward_and_partial(k, &BwdIn { dy: &masked, relu: false, ..b }, d);
    let what = format!("with the recomputed mask against without it on relu_backward(stored y, dy), {what}");
    let odd = pg.iter().zip(&pw).position(|(g, w)| g != w || *g == u64::MAX);
    assert!(odd.is_none(), "bn_bwd_partial_f32 partial sums {what}: element {odd:?} differs or was never written");
    assert_grads_bits(&what, &got, &want);
    normalize(k, b.x, (b.mean, b.invstd), b.gamma, b.beta, d, false)
}

/// x of `d` as f32 ([`inputs`] from -2 with [`with_awkward_values`]) or bf16 ([`bf16_inputs`],
/// with its infinities and NaNs when `non_finite`), and the fused-ReLU backward's other inputs:
/// statistics of x from the kernels, then [`relu_edges`] (x at the mean, outputs of exactly
/// +0 and -0), dy random. With `non_finite`, the last channel's invstd is NaN (every output NaN,
/// all masked) and the one before's +inf (outputs +-inf, NaN at the mean).
struct ReluCase {
    x: Vec<f32>,
    xb: Vec<u16>,
    dy: Vec<f32>,
    gamma: Vec<f32>,
    beta: Vec<f32>,
    mean: Vec<f32>,
    invstd: Vec<f32>,
    bf16: bool,
}

impl ReluCase {
    fn new(k: &Kernels, d: Nchw, seed: u64, bf16: bool, non_finite: bool) -> ReluCase {
        let (mut x, mut gamma, mut beta) = inputs(d, -2.0, seed);
        with_awkward_values(&mut x, &mut Rng(seed ^ 0x5A));
        let xb = if bf16 { bf16_inputs(d, -2.0, seed, non_finite) } else { Vec::new() };
        let xw = if bf16 { X::Bf16(&xb).f32() } else { x };
        let Stats { mut mean, mut invstd, .. } = statistics(k, X::F32(&xw), d);
        relu_edges(&xw, &mut gamma, &mut beta, &mut mean, &invstd, d);
        if non_finite {
            invstd[d.c - 1] = f32::NAN;
            if d.c >= 2 {
                invstd[d.c - 2] = f32::INFINITY;
            }
        }
        let dy = Rng(seed ^ 0xD9).vec(d.len(), -1.0, 1.0);
        ReluCase { x: xw, xb, dy, gamma, beta, mean, invstd, bf16 }
    }

    /// The backward's inputs (`relu` set).
    fn input(&self) -> BwdIn<'_> {
        let x = if self.bf16 { X::Bf16(&self.xb) } else { X::F32(&self.x) };
        BwdIn { x, dy: &self.dy, gamma: &self.gamma, beta: &self.beta, mean: &self.mean, invstd: &self.invstd, relu: true }
    }
}

/// The header's promise, at every shape, with f32 and bf16 x, finite and not: the fused-ReLU
/// backward is bit for bit the unfused one on the gradient masked by the stored output. The
/// finite cases have outputs of exactly -0 and +0 before the clamp (where a channel has two
/// elements), and the exact-sum inputs of `backward_is_bit_exact_when_the_sums_are_exact` too.
#[test]
fn fused_relu_backward_is_the_unfused_backward_of_the_stored_output() {
    let k = sim::load("batch_norm");
    for (i, d) in SHAPES.into_iter().enumerate() {
        for (bf16, non_finite) in [(false, false), (true, false), (true, true)] {
            let seed = 81 + i as u64;
            let case = ReluCase::new(&k, d, seed, bf16, non_finite);
            let what = format!("{}, bf16 x: {bf16}, non-finite: {non_finite}", tag(d));
            let plain = check_fused_is_unfused_of_stored(&k, case.input(), d, &what);
            if !non_finite && d.n * d.h * d.w >= 2 {
                let (pos, neg) = signed_zeros(&plain);
                assert!(pos >= 1 && neg >= 1, "{what}: {pos} outputs +0 and {neg} -0 before the clamp; the test wants both");
            }
        }
        let (x, dy, gamma, beta, mean, invstd) = exact_backward_inputs(d, 51 + i as u64);
        let b = BwdIn { x: X::F32(&x), dy: &dy, gamma: &gamma, beta: &beta, mean: &mean, invstd: &invstd, relu: true };
        check_fused_is_unfused_of_stored(&k, b, d, &format!("exact sums {}", tag(d)));
    }
}

/// The fused-ReLU check notices, in each backward entry on its own, a recomputed mask that is
/// not the stored output's: masking on x > 0 instead of yhat > 0; beta left out; an `fma.rn`
/// in place of the rounded multiply and add (it keeps the remainder that `relu_edges` leaves
/// positive where the output is exactly +0); `setp.ge` in place of `setp.gt` (it lets the
/// gradient through where the output is exactly +-0).
#[test]
fn a_wrong_relu_recompute_is_caught() {
    let d = Nchw { n: 3, c: 5, h: 7, w: 7 };
    let case = ReluCase::new(&sim::load("batch_norm"), d, 141, false, false);
    // Per entry: (x, yhat, invstd, beta, predicate) registers of the recompute.
    for (entry, x, invstd, beta, p) in [("bn_bwd_partial_f32", "%f2", "%f5", "%f7", "%p5"), ("bn_bwd_dx_f32", "%f1", "%f6", "%f8", "%p4")] {
        let setp = format!("setp.gt.f32 {p}, %f4, 0f00000000;");
        let mul_add = format!("mul.rn.f32 %f4, %f4, {invstd};\n    add.rn.f32 %f4, %f4, {beta};");
        let faults = [
            ("a mask on x > 0", setp.clone(), format!("setp.gt.f32 {p}, {x}, 0f00000000;")),
            ("beta left out", format!("add.rn.f32 %f4, %f4, {beta};"), String::new()),
            ("an fma", mul_add, format!("fma.rn.f32 %f4, %f4, {invstd}, {beta};")),
            ("setp.ge", setp.clone(), setp.replace("setp.gt", "setp.ge")),
        ];
        for (fault, from, to) in faults {
            let k = sim::load_edited("batch_norm", |t| edit_entry(t, entry, &from, &to));
            let check = std::panic::AssertUnwindSafe(|| {
                check_fused_is_unfused_of_stored(&k, case.input(), d, "(planted fault)");
            });
            let err = match std::panic::catch_unwind(check) {
                Ok(()) => panic!("{entry} recomputing the mask with {fault} gave the stored output's gradients"),
                Err(e) => e.downcast_ref::<String>().cloned().unwrap_or_default(),
            };
            assert!(err.starts_with(entry) && err.contains("recomputed mask"), "{entry} with {fault}: not caught by the comparison: {err}");
        }
    }
}

/// The statistics check notices a final kernel that takes its shift K from the wrong element
/// (x[0, c, 1], not the x[0, c, 0] the partial kernel subtracted).
#[test]
fn a_shift_read_from_the_wrong_element_is_caught() {
    let k = sim::load_edited("batch_norm", |t| t.replacen("ld.global.nc.f32 %f2, [%rd8];", "ld.global.nc.f32 %f2, [%rd8+4];", 1));
    let d = SHAPES[0];
    let (x, gamma, beta) = inputs(d, -2.0, 11);
    let (_, want) = cpu_forward(&x, &gamma, &beta, d, false);
    let got = statistics(&k, X::F32(&x), d);
    assert!(got.mean.iter().zip(&want.mean).any(|(g, w)| !within_an_ulp(*g, *w)), "a wrong shift K gave the CPU's means");
}

/// The backward check notices a dx kernel that reads sdy from the wrong slot of the
/// coefficient table (sdyx's, offset 32 instead of 24).
#[test]
fn a_wrong_coefficient_offset_is_caught() {
    let k = sim::load_edited("batch_norm", |t| t.replacen("ld.global.nc.f64 %fd5, [%rd5+24];", "ld.global.nc.f64 %fd5, [%rd5+32];", 1));
    let d = SHAPES[0];
    let (x, dy, gamma, beta, mean, invstd) = exact_backward_inputs(d, 51);
    let b = BwdIn { x: X::F32(&x), dy: &dy, gamma: &gamma, beta: &beta, mean: &mean, invstd: &invstd, relu: false };
    let (got, want) = (backward(&k, &b, d), cpu_backward(&b, d));
    assert_bits("dgamma (untouched by the fault)", &got.dgamma, &want.dgamma);
    assert!(got.dx.iter().zip(&want.dx).any(|(g, w)| g.to_bits() != w.to_bits()), "dx with sdy read from sdyx's slot matched the CPU");
}

/// The non-finite check notices the variance clamped with `max.f64` (which turns NaN into 0,
/// so a bad batch gets finite statistics), the clamp this kernel had before.
#[test]
fn a_variance_clamp_that_drops_nan_is_caught() {
    let clamp = "setp.lt.f64 %p2, %fd12, 0d0000000000000000;\n    @%p2 mov.f64 %fd12, 0d0000000000000000;";
    let k = sim::load_edited("batch_norm", |t| t.replacen(clamp, "max.f64 %fd12, %fd12, 0d0000000000000000;", 1));
    let d = Nchw { n: 2, c: 2, h: 3, w: 3 };
    let (mut x, gamma, beta) = inputs(d, -2.0, 45);
    x[d.h * d.w + 4] = f32::NAN; // channel 1
    let (_, want) = cpu_forward(&x, &gamma, &beta, d, false);
    let got = statistics(&k, X::F32(&x), d);
    assert!(want.invstd[1].is_nan(), "the CPU's invstd of a channel with a NaN");
    assert!(got.invstd[1].is_finite() && got.var_unbiased[1].is_finite(), "a max.f64 clamp kept the NaN statistics");
    assert!(!within_an_ulp(got.invstd[1], want.invstd[1]), "the statistics check would not notice");
}

/// The block sum's two barriers are both needed, and the simulator says so. Without the first
/// (warp leaders store their partial sums to shared memory, then the first warp reads them
/// back), a thread reads a slot its warp leader has not written yet; without the second, the
/// next call's leaders overwrite slots the first warp is still reading: a race on shared
/// memory, even though the simulator's order of threads could have hidden it.
#[test]
fn missing_barriers_are_caught() {
    let d = SHAPES[0];
    let (x, _, _) = inputs(d, -2.0, 13);
    let cases = [
        (
            "    @%p1 st.shared.f64 [%r9], %fd1;\n    bar.sync 0;\n",
            "    @%p1 st.shared.f64 [%r9], %fd1;\n",
            "that no thread of the block wrote",
        ),
        ("    bar.sync 0;\n    st.param.f64 [bs_ret], %fd3;\n", "    st.param.f64 [bs_ret], %fd3;\n", "data race on shared memory"),
    ];
    for (old, new, expect) in cases {
        let k = sim::load_edited("batch_norm", |t| t.replacen(old, new, 1));
        let err = crate::launch_error(|| {
            statistics(&k, X::F32(&x), d);
        });
        assert!(err.contains(expect), "the block sum without a barrier: expected an error with `{expect}`, got: {err}");
    }
}

/// Statistics, normalise and backward with gridDim.y cut to 2 (`crate::with_grid_y_cap`): the
/// partial kernels then walk the channels, and normalise / dx the planes, by gridDim.y, as
/// they do past 65535 on a GPU.
#[test]
fn every_kernel_walks_channels_and_planes_past_a_short_grid() {
    let k = sim::load("batch_norm");
    let d = SHAPES[0];
    let (x, gamma, beta) = inputs(d, -2.0, 91);
    let dy = Rng(92).vec(d.len(), -1.0, 1.0);
    crate::with_grid_y_cap(2, || {
        let (want_y, want) = cpu_forward(&x, &gamma, &beta, d, false);
        assert_stats(&format!("short grid {}", tag(d)), &statistics(&k, X::F32(&x), d), &want);
        let y = normalize(&k, X::F32(&x), (&want.mean, &want.invstd), &gamma, &beta, d, false);
        assert_bits(&format!("bn_normalize_f32 short grid {}", tag(d)), &y, &want_y);
        let b = BwdIn { x: X::F32(&x), dy: &dy, gamma: &gamma, beta: &beta, mean: &want.mean, invstd: &want.invstd, relu: false };
        let (got, want) = (backward(&k, &b, d), cpu_backward(&b, d));
        assert_within_an_ulp("bn_bwd_final_f32 dgamma short grid", &got.dgamma, &want.dgamma);
        assert_within_an_ulp("bn_bwd_dx_f32 dx short grid", &got.dx, &want.dx);
        // The fused ReLU's per-channel values, reloaded as the walk moves to another channel.
        let case = ReluCase::new(&k, d, 93, false, false);
        check_fused_is_unfused_of_stored(&k, case.input(), d, &format!("short grid {}", tag(d)));
    });
}

/// `x` rounded to bf16 (as the bf16 convolutions write it): the bits.
fn bf16_bits(x: &[f32]) -> Vec<u16> {
    x.iter().map(|v| half::bf16::from_f32(*v).to_bits()).collect()
}

/// Random bf16 `x` of `d` from [lo, lo + 5) with `with_awkward_values`' zeros, large and
/// subnormal values, plus bf16 subnormals of both signs (the smallest, 0x0001, and the largest,
/// 0x007F) and -0 at the first element of the last channel (its shift sample K). With
/// `non_finite` (and at least three channels), channel 0's K is +inf (K = 0 replaces it, the
/// mean is +inf) and channel 1 holds -inf, a quiet NaN with a payload and a signalling one
/// (where its planes have room for three); the other channels stay finite.
fn bf16_inputs(d: Nchw, lo: f32, seed: u64, non_finite: bool) -> Vec<u16> {
    let (mut x, _, _) = inputs(d, lo, seed);
    with_awkward_values(&mut x, &mut Rng(seed ^ 0xB16));
    let mut x = bf16_bits(&x);
    let (hw, at) = (d.h * d.w, |n: usize, c: usize, i: usize| (n * d.c + c) * d.h * d.w + i);
    let n = x.len();
    for (k, bits) in [0x0001u16, 0x8001, 0x007F, 0x807F].into_iter().enumerate() {
        x[(k * 13 + 3) % n] = bits;
    }
    x[at(0, d.c - 1, 0)] = 0x8000;
    if non_finite && d.c >= 3 {
        x[at(0, 0, 0)] = 0x7F80;
        for (n, i, bits) in [(0, hw - 1, 0xFF80u16), (0, hw / 2, 0x7FC1), (d.n - 1, hw / 3, 0xFF81)] {
            x[at(n, 1, i)] = bits;
        }
    }
    x
}

/// Asserts that two buffers hold the same bits (NaN payloads included) and that `got` has no
/// poisoned (unwritten) element.
fn assert_same_bits<T: Copy + Into<u64>>(what: &str, got: &[T], want: &[T], poison: u64) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let (g, w) = ((*g).into(), (*w).into());
        assert_ne!(g, poison, "{what}: element {i} was never written");
        assert_eq!(g, w, "{what}: element {i} has bits {g:#x} with bf16 x, {w:#x} with its widened f32");
    }
}

fn f32_bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|v| v.to_bits()).collect()
}

/// Every kernel that reads x, given bf16 `xb` (`xbf16 = 1`) and given its widened f32 values
/// (`xbf16 = 0`): the partial sums, statistics, normalised output (with and without the fused
/// ReLU), backward partial sums, dgamma, dbeta and dx (with and without `relu`) bit for bit
/// alike; panics at the first difference, naming the entry.
fn check_bf16_x_matches_widened(k: &Kernels, xb: &[u16], d: Nchw, seed: u64, tag: &str) {
    let xw = X::Bf16(xb).f32();
    let (xb, xw) = (X::Bf16(xb), X::F32(&xw));
    let (sb, pb) = statistics_and_partial(k, xb, d);
    let (sw, pw) = statistics_and_partial(k, xw, d);
    assert_same_bits(&format!("bn_stats_partial_f32 partial sums {tag}"), &pb, &pw, u64::MAX);
    for (what, g, w) in
        [("mean", &sb.mean, &sw.mean), ("invstd", &sb.invstd, &sw.invstd), ("var_unbiased", &sb.var_unbiased, &sw.var_unbiased)]
    {
        assert_same_bits(&format!("bn_stats_final_f32 {what} {tag}"), &f32_bits(g), &f32_bits(w), crate::POISON.into());
    }
    let (_, mut gamma, mut beta) = inputs(d, -2.0, seed);
    (gamma[d.c - 1], beta[d.c - 1]) = (-gamma[d.c - 1], -0.0); // -0 outputs at the -0 shift sample
    for relu in [false, true] {
        let yb = normalize(k, xb, (&sw.mean, &sw.invstd), &gamma, &beta, d, relu);
        let yw = normalize(k, xw, (&sw.mean, &sw.invstd), &gamma, &beta, d, relu);
        assert_same_bits(&format!("bn_normalize_f32 relu={relu} {tag}"), &f32_bits(&yb), &f32_bits(&yw), crate::POISON.into());
    }
    let dy = Rng(seed ^ 0xD7).vec(d.len(), -1.0, 1.0);
    for relu in [false, true] {
        let b = BwdIn { x: xb, dy: &dy, gamma: &gamma, beta: &beta, mean: &sw.mean, invstd: &sw.invstd, relu };
        let (gb, pb) = backward_and_partial(k, &b, d);
        let (gw, pw) = backward_and_partial(k, &BwdIn { x: xw, ..b }, d);
        let what = format!("relu={relu} {tag}");
        assert_same_bits(&format!("bn_bwd_partial_f32 partial sums {what}"), &pb, &pw, u64::MAX);
        for (name, g, w) in [
            ("bn_bwd_final_f32 dgamma", &gb.dgamma, &gw.dgamma),
            ("bn_bwd_final_f32 dbeta", &gb.dbeta, &gw.dbeta),
            ("bn_bwd_dx_f32 dx", &gb.dx, &gw.dx),
        ] {
            assert_same_bits(&format!("{name} {what}"), &f32_bits(g), &f32_bits(w), crate::POISON.into());
        }
    }
}

/// Shapes of the bf16-x checks: HW odd, over a chunk (2048) and not a multiple of it (two
/// pieces, block 256); odd HW = 49 under a block of 64 (every other plane starts 2 bytes off a
/// 4-byte boundary in bf16); HW = 15 under a warp; more than 256 channels; count 1.
const BF16_SHAPES: [Nchw; 5] = [
    Nchw { n: 2, c: 3, h: 45, w: 47 },
    Nchw { n: 3, c: 5, h: 7, w: 7 },
    Nchw { n: 3, c: 4, h: 5, w: 3 },
    Nchw { n: 1, c: 257, h: 1, w: 3 },
    Nchw { n: 1, c: 4, h: 1, w: 1 },
];

/// The header's promise for `xbf16 = 1`: every entry that reads x gives bit for bit what it
/// gives on the widened f32 values, on bf16 values with zeros of both signs, subnormals,
/// infinities (one as a shift sample) and NaNs (with payloads, signalling).
#[test]
fn bf16_x_is_bit_exact_with_its_widened_f32() {
    let k = sim::load("batch_norm");
    for (i, d) in BF16_SHAPES.into_iter().enumerate() {
        for (lo, non_finite) in [(-2.0, false), (100.0, false), (-2.0, true)] {
            let seed = 111 + i as u64;
            let xb = bf16_inputs(d, lo, seed, non_finite);
            check_bf16_x_matches_widened(&k, &xb, d, seed, &format!("{} from {lo}, non-finite: {non_finite}", tag(d)));
        }
    }
}

/// The same with gridDim.y cut to 2 (`crate::with_grid_y_cap`): the partial kernels walk the
/// channels, normalise and dx the planes, by gridDim.y with bf16 x too.
#[test]
fn bf16_x_walks_channels_and_planes_past_a_short_grid() {
    let k = sim::load("batch_norm");
    let d = Nchw { n: 3, c: 5, h: 7, w: 7 };
    let xb = bf16_inputs(d, -2.0, 121, true);
    crate::with_grid_y_cap(2, || check_bf16_x_matches_widened(&k, &xb, d, 121, &format!("short grid {}", tag(d))));
}

/// `text` with the first `from` inside the entry `entry` replaced by `to`.
fn edit_entry(text: &str, entry: &str, from: &str, to: &str) -> String {
    let start = text.find(&format!(".entry {entry}(")).unwrap_or_else(|| panic!("no entry {entry}"));
    let end = text[start + 1..].find(".entry ").map_or(text.len(), |e| start + 1 + e);
    let at = start + text[start..end].find(from).unwrap_or_else(|| panic!("`{from}` is not in {entry}"));
    format!("{}{to}{}", &text[..at], &text[at + from.len()..])
}

/// The bf16-x check notices, in each entry on its own, a bf16 path that leaves the 16 bits in
/// the low half of the f32 (no `<< 16`: tiny subnormals instead of the values), and a bf16
/// path that steps 4 bytes an element (the simulator refuses the reads past the 2-byte
/// array, or the values differ).
#[test]
fn a_wrong_bf16_x_read_is_caught() {
    let d = Nchw { n: 3, c: 5, h: 7, w: 7 };
    let xb = bf16_inputs(d, -2.0, 131, false);
    let entries = [
        ("bn_stats_partial_f32", "@%p4 shl.b32 %r19, %r19, 16;", "selp.u32 %r18, 1, 2, %p4;"),
        ("bn_stats_final_f32", "@%p4 shl.b32 %r11, %r11, 16;", "selp.u32 %r10, 1, 2, %p4;"),
        ("bn_normalize_f32", "@%p4 shl.b32 %r15, %r15, 16;", "selp.u32 %r14, 1, 2, %p4;"),
        ("bn_bwd_partial_f32", "@%p6 shl.b32 %r19, %r19, 16;", "selp.u32 %r18, 1, 2, %p6;"),
        ("bn_bwd_dx_f32", "@%p5 shl.b32 %r14, %r14, 16;", "selp.u32 %r13, 1, 2, %p5;"),
    ];
    for (entry, shift, stride) in entries {
        for (fault, from, to) in [("the low half", shift, ""), ("a 4-byte stride", stride, &stride.replacen("1, 2", "2, 2", 1)[..])] {
            let k = sim::load_edited("batch_norm", |t| edit_entry(t, entry, from, to));
            let check = std::panic::AssertUnwindSafe(|| check_bf16_x_matches_widened(&k, &xb, d, 131, "(planted fault)"));
            let outcome = std::panic::catch_unwind(check);
            let err = match outcome {
                Ok(()) => panic!("{entry} reading bf16 x with {fault} gave the widened f32's results"),
                Err(e) => e.downcast_ref::<String>().cloned().unwrap_or_default(),
            };
            let by_sim = err.contains("outside every allocation") && err.starts_with(entry);
            let by_check = err.contains("with bf16 x") && err.contains(&format!("{entry} "));
            assert!(by_sim || by_check, "{entry} with {fault}: not caught by the simulator nor by the comparison of its output: {err}");
        }
    }
}

/// `got` and `want` bf16 bits, equal and all written (the poison is 0xFFFF).
fn assert_bf16_bits(what: &str, got: &[u16], want: &[u16]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    if let Some(i) = (0..got.len()).find(|&i| got[i] == 0xFFFF || got[i] != want[i]) {
        panic!("{what}: element {i} has bits {:#06x}, the reference {:#06x} (0xffff: never written)", got[i], want[i]);
    }
}

/// `v [N, C, HW]` as `[N, HW, C]`.
fn to_nhwc<T: Copy>(v: &[T], d: Nchw) -> Vec<T> {
    let hw = d.h * d.w;
    (0..v.len()).map(|o| (o / (hw * d.c), (o / d.c) % hw, o % d.c)).map(|(n, p, c)| v[(n * d.c + c) * hw + p]).collect()
}

/// Shapes of the NHWC dx checks, besides [`SHAPES`]: C and HW not multiples of 32 (partial
/// tiles both ways), C under a tile, and 35 channel tiles (the tile loop by gridDim.y when cut).
const NHWC_SHAPES: [Nchw; 3] = [Nchw { n: 2, c: 40, h: 5, w: 9 }, Nchw { n: 3, c: 8, h: 7, w: 7 }, Nchw { n: 1, c: 1100, h: 1, w: 3 }];

/// `bn_bwd_dx_nhwc_bf16` against its definition: `bn_bwd_dx_f32`'s dx from the same
/// coefficients, rounded to bf16 and transposed to NHWC: on the host (`half`), and by
/// `transpose_f32_to_bf16` (kernels/bf16.ptx) in the simulator. Panics at the first difference.
fn check_nhwc_dx(k: &Kernels, t: &Kernels, b: &BwdIn, d: Nchw, what: &str) {
    let (grads, _, nhwc) = backward_all(k, b, d, true);
    let got = nhwc.expect("the NHWC output");
    let want = to_nhwc(&bf16_bits(&grads.dx), d);
    assert_bf16_bits(&format!("bn_bwd_dx_nhwc_bf16 {what}"), &got, &want);
    let mut mem = Memory::default();
    let (dx, out) = (mem.upload(&grads.dx), mem.poisoned(2 * grads.dx.len()));
    let (c, hw, n) = (d.c as u32, hw(d), d.n as u32);
    run(
        t,
        &mut mem,
        "transpose_f32_to_bf16",
        dims(ops::transpose_cfg(c, hw, n)),
        &[Arg::U64(out), Arg::U64(dx), Arg::U32(c), Arg::U32(hw), Arg::U32(n)],
    );
    assert_same_bits(
        &format!("bn_bwd_dx_nhwc_bf16 against transpose_f32_to_bf16, {what}"),
        &got,
        &mem.download::<u16>(out, grads.dx.len()),
        0xFFFF,
    );
}

/// The header's promise for `bn_bwd_dx_nhwc_bf16`, at every shape, plain and with the fused
/// ReLU (its awkward cases: outputs of exactly +-0, x at the mean, and with bf16 x infinities
/// and NaNs), with f32 and bf16 x.
#[test]
fn nhwc_dx_is_the_rounded_transpose_of_dx() {
    let (k, t) = (sim::load("batch_norm"), sim::load("bf16"));
    for (i, d) in SHAPES.into_iter().chain(NHWC_SHAPES).enumerate() {
        let seed = 141 + i as u64;
        let (x, gamma, beta) = inputs(d, -2.0, seed);
        let dy = Rng(seed ^ 0x77).vec(d.len(), -1.0, 1.0);
        let want = cpu_forward(&x, &gamma, &beta, d, false).1;
        let plain = BwdIn { x: X::F32(&x), dy: &dy, gamma: &gamma, beta: &beta, mean: &want.mean, invstd: &want.invstd, relu: false };
        check_nhwc_dx(&k, &t, &plain, d, &format!("{}, plain", tag(d)));
        for (bf16, non_finite) in [(false, false), (true, false), (true, true)] {
            let case = ReluCase::new(&k, d, seed, bf16, non_finite);
            check_nhwc_dx(&k, &t, &case.input(), d, &format!("{}, relu, bf16 x: {bf16}, non-finite: {non_finite}", tag(d)));
        }
    }
}

/// `bn_bwd_dx_nhwc_bf16` with gridDim.y cut to 2: it walks the channel tiles by gridDim.y (and
/// reuses its tile after a barrier), still bit-exact.
#[test]
fn nhwc_dx_walks_channel_tiles_past_a_short_grid() {
    let (k, t) = (sim::load("batch_norm"), sim::load("bf16"));
    for d in [NHWC_SHAPES[2], Nchw { n: 3, c: 70, h: 6, w: 6 }] {
        let case = ReluCase::new(&k, d, 151, true, false);
        crate::with_grid_y_cap(2, || check_nhwc_dx(&k, &t, &case.input(), d, &format!("short grid {}", tag(d))));
    }
}

/// Faults planted in `bn_bwd_dx_nhwc_bf16`, each caught by [`check_nhwc_dx`] or by the
/// simulator: either barrier missing, the store phase reading the tile untransposed, the
/// ReLU's recompute without beta, a 4-byte step through bf16 x, and rounding by truncation.
/// 3 channel tiles on a grid cut to 2 rows of blocks, so that a block reuses its tile (what
/// the second barrier guards).
#[test]
fn a_wrong_nhwc_dx_is_caught() {
    let t = sim::load("bf16");
    let d = Nchw { n: 2, c: 70, h: 5, w: 9 };
    let case = ReluCase::new(&sim::load("batch_norm"), d, 161, true, false);
    let entry = "bn_bwd_dx_nhwc_bf16";
    let faults = [
        ("the first barrier missing", "    bar.sync 0;\n    // Store:", "    // Store:"),
        ("the second barrier missing", "    bar.sync 0;                              // the next tile reuses bn_tile\n", ""),
        ("the tile read untransposed", "    mad.lo.u32 %r18, %r4, 33, %r14;", "    mad.lo.u32 %r18, %r14, 33, %r4;"),
        ("beta left out of the mask", "    add.rn.f32 %f4, %f4, %f8;", ""),
        ("a 4-byte step through bf16 x", "    selp.u32 %r24, 1, 2, %p5;", "    selp.u32 %r24, 2, 2, %p5;"),
        ("rounding by truncation", "    add.u32 %r17, %r17, 0x7FFF;\n    add.u32 %r17, %r17, %r21;\n", ""),
    ];
    for (fault, from, to) in faults {
        let k = sim::load_edited("batch_norm", |text| {
            let edited = edit_entry(text, entry, from, to);
            assert_ne!(edited, text, "{fault}: the edit changed nothing");
            edited
        });
        let check =
            std::panic::AssertUnwindSafe(|| crate::with_grid_y_cap(2, || check_nhwc_dx(&k, &t, &case.input(), d, "(planted fault)")));
        let err = match std::panic::catch_unwind(check) {
            Ok(()) => panic!("{entry} with {fault} gave the right bits"),
            Err(e) => e.downcast_ref::<String>().cloned().unwrap_or_default(),
        };
        let by_check = err.contains("bn_bwd_dx_nhwc_bf16 ");
        let by_sim =
            err.starts_with(entry) || err.contains("race") || err.contains("outside every allocation") || err.contains("no thread");
        assert!(by_check || by_sim, "{entry} with {fault}: not caught: {err}");
    }
}

/// How the batch-norm kernels access memory (see `access.rs`), at conv1_2's planes scaled down
/// (64 channels of 32 x 32, 2 images: one piece a plane, P = 2, block 256), each entry that
/// reads x with f32 x and with bf16 x (`xbf16 = 1`):
/// - the partial kernels, normalise and dx read and write whole planes with consecutive lanes,
///   and their per-channel values (shift, mean, statistics, coefficients) with all lanes at
///   one address: coalesced (a warp's 32 bf16 x values are 64 bytes: 2 sectors); the block
///   sum's shared memory is conflict-free;
/// - the final kernels (a lane per channel) read the partial sums `[P, C, 2]` f64 with lanes
///   16 bytes apart, each load taking 8 of them: 16 sectors for 8, x2 (the two loads of a
///   piece use all the bytes); `bn_stats_final_f32` reads each channel's shift `x[0, c, 0]`,
///   lanes a plane apart: a sector a lane, 32 for 4 (f32) or for 2 (bf16: 64 bytes);
///   `bn_bwd_final_f32` stores the coefficient table `[C, 8]` f64 with lanes 64 bytes apart,
///   32 sectors for 8, x4. These move O(C) bytes, nothing next to the planes.
/// - At conv5's 14 x 14, a plane is 784 bytes of f32 (16 off a sector boundary) or 392 of bf16
///   (8 off): normalise's warps straddle one more sector in every other f32 plane, and in
///   three bf16 planes of four.
#[test]
fn access_batch_norm() {
    use crate::access::{assert_coalesced, profile};
    let k = sim::load("batch_norm");
    let d = Nchw { n: 2, c: 64, h: 32, w: 32 };
    let (nchunk, pieces, block) = ops::plane_split("batch_norm", d.n, d.c, d.h * d.w).unwrap();
    let (c, planes) = (d.c as u32, (d.n * d.c) as u32);
    let (x, gamma, beta) = inputs(d, -2.0, 101);
    let xb = bf16_bits(&x);
    let (_, dy, _, _, mean, invstd) = exact_backward_inputs(d, 103);
    let mut mem = Memory::default();
    let [gd, bd, dyd, md, id] = [&gamma, &beta, &dy, &mean, &invstd].map(|v| mem.upload(v));
    let partial = mem.poisoned(pieces as usize * d.c * 2 * 8);
    let shape = dims(ops::partial_cfg(pieces, c, block));
    // The C lanes of the final kernels: warps of 32 channels.
    let warps = (d.c / 32) as u64;
    let pw = 2 * pieces as u64; // partial loads per lane: 2 per piece
    let coef = mem.poisoned(d.c * 8 * 8);
    let [dgamma, dbeta] = [(); 2].map(|_| mem.poisoned(4 * d.c));
    let bwd_final_args = [
        Arg::U64(dgamma),
        Arg::U64(dbeta),
        Arg::U64(coef),
        Arg::U64(partial),
        Arg::U64(md),
        Arg::U64(id),
        Arg::U64(gd),
        Arg::U32(c),
        Arg::U32(pieces),
        Arg::F64(count(d)),
    ];
    for x in [X::F32(&x), X::Bf16(&xb)] {
        let xd = x.upload(&mut mem);
        let (what, what_relu, shift_bytes) = match x {
            X::F32(_) => ("2 x 64 x 32 x 32", "2 x 64 x 32 x 32, relu", 4 * 32u64),
            X::Bf16(_) => ("2 x 64 x 32 x 32, bf16 x", "2 x 64 x 32 x 32, bf16 x, relu", 2 * 32u64),
        };
        let args = [Arg::U64(partial), Arg::U64(xd), Arg::U32(c), Arg::U32(hw(d)), Arg::U32(ops::PLANE_CHUNK), Arg::U32(nchunk), x.xbf16()];
        let p = profile(&k, &mut mem, "bn_stats_partial_f32", shape, &args, what);
        assert_coalesced("bn_stats_partial_f32", &p);

        let [m, s, v] = [(); 3].map(|_| mem.poisoned(4 * d.c));
        let args = [
            Arg::U64(m),
            Arg::U64(s),
            Arg::U64(v),
            Arg::U64(partial),
            Arg::U64(xd),
            Arg::U32(c),
            Arg::U32(hw(d)),
            Arg::U32(pieces),
            Arg::F64(count(d)),
            Arg::F32(EPS),
            x.xbf16(),
        ];
        let p = profile(&k, &mut mem, "bn_stats_final_f32", dims(ops::grid_1d(c)), &args, what);
        // Per warp: the partial loads 16 sectors for 8 each, the shift load 32 for its 32
        // lanes' bytes (128 with f32, 64 with bf16).
        let ideal = warps * (8 * pw + shift_bytes.div_ceil(32));
        assert_eq!((p.load.sectors, p.load.ideal), (warps * (16 * pw + 32), ideal), "bn_stats_final_f32 loads ({what}): {p}");
        assert_eq!(p.store.sectors, p.store.ideal, "bn_stats_final_f32: uncoalesced stores ({what}): {p}");

        let yout = mem.poisoned(4 * d.len());
        let args = [
            Arg::U64(yout),
            Arg::U64(xd),
            Arg::U64(md),
            Arg::U64(id),
            Arg::U64(gd),
            Arg::U64(bd),
            Arg::U32(c),
            Arg::U32(hw(d)),
            Arg::U32(planes),
            Arg::U32(1),
            x.xbf16(),
        ];
        let p = profile(&k, &mut mem, "bn_normalize_f32", dims(ops::plane_cfg(hw(d), planes)), &args, what);
        assert_coalesced("bn_normalize_f32", &p);

        // The backward with the fused ReLU, so that every load is taken: per element x and dy
        // (the mask is recomputed from x), per channel and warp the uniform mean, invstd,
        // gamma and beta (1 sector each).
        let args = [
            Arg::U64(partial),
            Arg::U64(xd),
            Arg::U64(dyd),
            Arg::U64(md),
            Arg::U64(id),
            Arg::U64(gd),
            Arg::U64(bd),
            Arg::U32(c),
            Arg::U32(hw(d)),
            Arg::U32(ops::PLANE_CHUNK),
            Arg::U32(nchunk),
            Arg::U32(1),
            x.xbf16(),
        ];
        let p = profile(&k, &mut mem, "bn_bwd_partial_f32", shape, &args, what_relu);
        assert_coalesced("bn_bwd_partial_f32", &p);
        let x_bytes = match x {
            X::F32(_) => 4 * d.len() as u64,
            X::Bf16(_) => 2 * d.len() as u64,
        };
        // Blocks of 8 warps, one per (piece, channel): 4 uniform loads of 4 bytes a warp.
        let uniform = (pieces * c) as u64 * 8 * 4 * 4;
        assert_eq!(p.load.bytes, x_bytes + 4 * d.len() as u64 + uniform, "bn_bwd_partial_f32 load bytes ({what_relu}): {p}");

        let p = profile(&k, &mut mem, "bn_bwd_final_f32", dims(ops::grid_1d(c)), &bwd_final_args, what);
        // Per warp: the partial loads as above, mean / invstd / gamma coalesced (4 sectors
        // each); dgamma, dbeta coalesced, the 5 coefficient stores 32 sectors for 8.
        assert_eq!((p.load.sectors, p.load.ideal), (warps * (16 * pw + 12), warps * (8 * pw + 12)), "bn_bwd_final_f32 loads: {p}");
        assert_eq!((p.store.sectors, p.store.ideal), (warps * (8 + 5 * 32), warps * (8 + 5 * 8)), "bn_bwd_final_f32 stores: {p}");

        let dx = mem.poisoned(4 * d.len());
        let args = [
            Arg::U64(dx),
            Arg::U64(xd),
            Arg::U64(dyd),
            Arg::U64(coef),
            Arg::U64(md),
            Arg::U64(id),
            Arg::U64(gd),
            Arg::U64(bd),
            Arg::U32(c),
            Arg::U32(hw(d)),
            Arg::U32(planes),
            Arg::F64(count(d)),
            Arg::U32(1),
            x.xbf16(),
        ];
        let p = profile(&k, &mut mem, "bn_bwd_dx_f32", dims(ops::plane_cfg(hw(d), planes)), &args, what_relu);
        assert_coalesced("bn_bwd_dx_f32", &p);
        // The same dx stored NHWC bf16: lanes load a channel's consecutive positions (its
        // coefficients at one address), store a position's consecutive channels (64 bytes)
        // through the padded tile.
        let mut nhwc_args = args;
        nhwc_args[0] = Arg::U64(mem.poisoned(2 * d.len()));
        nhwc_args[10] = Arg::U32(d.n as u32);
        let nhwc_shape = dims(ops::transpose_cfg(c, hw(d), d.n as u32));
        let pn = profile(&k, &mut mem, "bn_bwd_dx_nhwc_bf16", nhwc_shape, &nhwc_args, what_relu);
        assert_coalesced("bn_bwd_dx_nhwc_bf16", &pn);
        // Per element x and dy; per plane and warp (4 blocks of 8 warps a 1024-element plane)
        // the 5 coefficients (8 bytes) and the 4 f32 values of the recompute.
        let uniform = planes as u64 * 4 * 8 * (5 * 8 + 4 * 4);
        assert_eq!(p.load.bytes, x_bytes + 4 * d.len() as u64 + uniform, "bn_bwd_dx_f32 load bytes ({what_relu}): {p}");
    }

    // conv5's planes: 196 values, block 224 (7 warps, the last of 4 lanes); 4 uniform loads a
    // warp of the statistics, 1 sector each, with both x types.
    // - f32 x: a plane at an even index starts on a sector: 6 x 4 + 1 = 25 sectors for its x
    //   and its y; one at an odd index starts 16 bytes into one: 6 x 5 + 1 = 31.
    // - bf16 x: plane p starts 392 p bytes in, 8 p mod 32 into a sector. A full warp's 64 bytes
    //   take 2 sectors from a sector's start, 3 from 8, 16 or 24 bytes into one; the last
    //   warp's 8 bytes 1 either way. Four planes in a row: 13 + 3 x 19 = 70 sectors for 52.
    //   The y stores are f32, as above.
    let d = Nchw { n: 2, c: 64, h: 14, w: 14 };
    let (x, gamma, beta) = inputs(d, -2.0, 105);
    let xb = bf16_bits(&x);
    let [gd, bd] = [&gamma, &beta].map(|v| mem.upload(v));
    let params = 4 * 7 * planes as u64;
    let pairs = (planes / 2) as u64;
    for x in [X::F32(&x), X::Bf16(&xb)] {
        let xd = x.upload(&mut mem);
        let yout = mem.poisoned(4 * d.len());
        let args = [
            Arg::U64(yout),
            Arg::U64(xd),
            Arg::U64(md),
            Arg::U64(id),
            Arg::U64(gd),
            Arg::U64(bd),
            Arg::U32(c),
            Arg::U32(hw(d)),
            Arg::U32(planes),
            Arg::U32(1),
            x.xbf16(),
        ];
        let (what, x_loads) = match x {
            X::F32(_) => ("2 x 64 x 14 x 14", (pairs * 56, pairs * 50)),
            X::Bf16(_) => ("2 x 64 x 14 x 14, bf16 x", ((planes / 4) as u64 * 70, (planes / 4) as u64 * 52)),
        };
        let p = profile(&k, &mut mem, "bn_normalize_f32", dims(ops::plane_cfg(hw(d), planes)), &args, what);
        assert_eq!((p.store.sectors, p.store.ideal), (pairs * (25 + 31), pairs * 50), "bn_normalize_f32 ({what}): stores: {p}");
        assert_eq!((p.load.sectors, p.load.ideal), (x_loads.0 + params, x_loads.1 + params), "bn_normalize_f32 ({what}): loads: {p}");
    }
}
