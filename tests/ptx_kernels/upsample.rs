//! `kernels/upsample.ptx`: bilinear upsampling (align_corners = false) over NCHW, launched as
//! `ops/upsample.rs` launches it (`ops::grid_1d`, the two backward passes of
//! `ops::upsample_bwd_passes`), against the CPU backend (`cpu::resample::upsample_forward` /
//! `upsample_backward` through `CpuStorage`): the forward bit for bit, the separable gather
//! backward within the rounding of its different grouping and order of the same sum.

use hyperseg_engine::backend::cpu::CpuStorage;
use hyperseg_engine::backend::cuda::kernels::ops;
use hyperseg_engine::backend::{BackendStorage, Nchw};

use crate::sim::{self, Arg, Kernels, Memory};
use crate::{assert_bits, dims, run, Rng};

/// `(input, out_h, out_w)`: a non-integer upsampling over several planes and blocks, a
/// downsampling, a single pixel, the identity (weights exactly 0), an exact 2x, a large ratio,
/// and one axis up while the other goes down.
fn shapes() -> Vec<(Nchw, usize, usize)> {
    vec![
        (Nchw { n: 2, c: 3, h: 7, w: 5 }, 23, 17),
        (Nchw { n: 1, c: 2, h: 13, w: 11 }, 5, 4),
        (Nchw { n: 1, c: 1, h: 1, w: 1 }, 9, 3),
        (Nchw { n: 1, c: 3, h: 6, w: 9 }, 6, 9),
        (Nchw { n: 2, c: 2, h: 8, w: 8 }, 16, 16),
        (Nchw { n: 1, c: 1, h: 2, w: 3 }, 61, 40),
        (Nchw { n: 1, c: 2, h: 40, w: 3 }, 7, 50),
    ]
}

/// Random values with NaN, infinities, signed zeros, a subnormal and the largest finite value
/// planted among them.
fn with_specials(rng: &mut Rng, n: usize) -> Vec<f32> {
    let mut v = rng.vec(n, -2.0, 2.0);
    let special = [f32::NAN, f32::INFINITY, f32::NEG_INFINITY, -0.0, 0.0, 1.0e-40, f32::MAX, -f32::MAX];
    for (i, s) in special.iter().enumerate() {
        v[(i * 37 + 5) % n] = *s;
    }
    v
}

/// `upsample_bilinear_f32` into a poisoned output, scale = in / out in f32 as the wrapper (and
/// the kernel's header) has it.
fn sim_forward(k: &Kernels, x: &[f32], d: Nchw, oh: usize, ow: usize) -> Vec<f32> {
    let mut mem = Memory::default();
    let total = d.n * d.c * oh * ow;
    let xd = mem.upload(x);
    let yd = mem.poisoned(4 * total);
    let args = [
        Arg::U64(yd),
        Arg::U64(xd),
        Arg::U32(total as u32),
        Arg::U32(d.h as u32),
        Arg::U32(d.w as u32),
        Arg::U32(oh as u32),
        Arg::U32(ow as u32),
        Arg::F32(d.h as f32 / oh as f32),
        Arg::F32(d.w as f32 / ow as f32),
    ];
    run(k, &mut mem, "upsample_bilinear_f32", dims(ops::grid_1d(total as u32)), &args);
    mem.download(yd, total)
}

/// The two `upsample_bwd_axis_f32` passes of the wrapper, through a poisoned temporary into a
/// poisoned dx.
fn sim_backward(k: &Kernels, dy: &[f32], d: Nchw, oh: usize, ow: usize) -> Vec<f32> {
    let mut mem = Memory::default();
    let (total_tmp, total_dx) = ((d.n * d.c * oh * d.w) as u32, d.len() as u32);
    let dyd = mem.upload(dy);
    let tmp = mem.poisoned(4 * total_tmp as usize);
    let dx = mem.poisoned(4 * total_dx as usize);
    for (p, (dst, src, total)) in ops::upsample_bwd_passes(d, oh, ow).into_iter().zip([(tmp, dyd, total_tmp), (dx, tmp, total_dx)]) {
        let args = [
            Arg::U64(dst),
            Arg::U64(src),
            Arg::U32(total),
            Arg::U32(p.in_len),
            Arg::U32(p.out_len),
            Arg::U32(p.inner),
            Arg::F32(p.scale),
            Arg::F32(p.ratio),
        ];
        run(k, &mut mem, "upsample_bwd_axis_f32", dims(ops::grid_1d(total)), &args);
    }
    mem.download(dx, total_dx as usize)
}

/// Asserts that the kernel wrote every element of a poisoned output: none still has all bits
/// set (no input holds that NaN, and arithmetic does not make it), so an unwritten element
/// whose reference value is a NaN is not taken for a match.
fn assert_written(what: &str, got: &[f32]) {
    if let Some(i) = got.iter().position(|v| v.to_bits() == u32::MAX) {
        panic!("{what}: element {i} was never written (still the poison 0xffffffff)");
    }
}

fn cpu_forward(x: &[f32], d: Nchw, oh: usize, ow: usize) -> Vec<f32> {
    CpuStorage::F32(x.to_vec()).upsample_bilinear(d, oh, ow).expect("CPU upsample").as_f32().to_vec()
}

fn cpu_backward(dy: &[f32], d: Nchw, oh: usize, ow: usize) -> Vec<f32> {
    CpuStorage::F32(dy.to_vec()).upsample_bilinear_backward(d, oh, ow).expect("CPU upsample backward").as_f32().to_vec()
}

/// The first element of dx where the kernels and the CPU scatter differ by more than the two
/// groupings of the same sum may. Along an axis of ratio r = out/in a destination collects at
/// most m = ceil(2r) + 2 output coordinates. The kernels round each of the mx + my products
/// once and add mx then my terms; the CPU rounds each of the mx my products twice and adds
/// them in one sum; so |got - want| <= (mx my + mx + my + 4) eps sum|wy wx dy| (first order),
/// the sum of |terms| being the CPU backward of |dy| (the weights are >= 0).
fn backward_mismatch(k: &Kernels, dy: &[f32], d: Nchw, oh: usize, ow: usize) -> Option<String> {
    let got = sim_backward(k, dy, d, oh, ow);
    if let Some(i) = got.iter().position(|v| v.to_bits() == u32::MAX) {
        return Some(format!("upsample_bwd_axis_f32 x2, {d:?} from {oh}x{ow}: dx element {i} was never written"));
    }
    let want = cpu_backward(dy, d, oh, ow);
    let abs_dy: Vec<f32> = dy.iter().map(|v| v.abs()).collect();
    let abs_sum = cpu_backward(&abs_dy, d, oh, ow);
    let m = |out: usize, inp: usize| (2.0 * out as f32 / inp as f32).ceil() + 2.0;
    let (mx, my) = (m(ow, d.w), m(oh, d.h));
    let terms = mx * my + mx + my + 4.0;
    for (i, ((g, w), s)) in got.iter().zip(&want).zip(&abs_sum).enumerate() {
        let bound = terms * f32::EPSILON * s;
        let within = (g - w).abs() <= bound || (g.is_nan() && w.is_nan());
        if !within {
            return Some(format!(
                "upsample_bwd_axis_f32 x2, {d:?} from {oh}x{ow}: dx element {i} is {g:e}, the CPU reference has {w:e} (bound {bound:e})"
            ));
        }
    }
    None
}

#[test]
fn forward_is_bit_exact_with_special_values() {
    let k = sim::load("upsample");
    let mut rng = Rng(0x0B5A_4D1E);
    for (d, oh, ow) in shapes() {
        let x = with_specials(&mut rng, d.len());
        let got = sim_forward(&k, &x, d, oh, ow);
        let what = format!("upsample_bilinear_f32 {d:?} to {oh}x{ow}");
        assert_written(&what, &got);
        assert_bits(&what, &got, &cpu_forward(&x, d, oh, ow));
    }
}

/// Finite gradients (the tolerance is about the order of finite additions; the kernel also
/// skips candidates of weight exactly 0, which only matters for non-finite gradients).
#[test]
fn backward_matches_the_cpu_scatter() {
    let k = sim::load("upsample");
    let mut rng = Rng(0xBAC4_3A2D);
    for (d, oh, ow) in shapes() {
        let dy = rng.vec(d.n * d.c * oh * ow, -1.0, 1.0);
        if let Some(m) = backward_mismatch(&k, &dy, d, oh, ow) {
            panic!("{m}");
        }
    }
}

/// The comparisons notice realistic faults planted in the PTX text: the forward reading the
/// lower-left neighbour for the lower-right one, and the backward's candidate range one
/// shorter than the last output coordinate that touches a destination.
#[test]
fn planted_faults_are_caught() {
    let mut rng = Rng(0xFA_0175);
    let (d, oh, ow) = (Nchw { n: 2, c: 3, h: 7, w: 5 }, 23, 17);
    let x = rng.vec(d.len(), -2.0, 2.0);
    let k = sim::load_edited("upsample", |t| t.replacen("add.u32 %r24, %r21, %r18;", "add.u32 %r24, %r21, %r17;", 1));
    let (got, want) = (sim_forward(&k, &x, d, oh, ow), cpu_forward(&x, d, oh, ow));
    assert!(got.iter().zip(&want).any(|(g, w)| g.to_bits() != w.to_bits()), "a forward with a wrong neighbour matched the CPU");

    let dy = rng.vec(d.n * d.c * oh * ow, -1.0, 1.0);
    let k = sim::load_edited("upsample", |t| t.replacen("add.s32 %r16, %r16, 2;", "add.s32 %r16, %r16, 0;", 1));
    assert!(backward_mismatch(&k, &dy, d, oh, ow).is_some(), "a backward with too short a candidate range matched the CPU");
}

/// How the upsampling kernels access memory (see `access.rs`), at the ratio of a hypercolumn
/// tap to the image (56 -> 224 scaled down: 64 channels of 8 x 8 to 32 x 32, 2 images; a warp
/// is one output row, an input row one sector):
/// - forward: a warp's 32 outputs read their corners from two input rows, each the whole
///   8-float row (the corners of consecutive outputs are consecutive or equal): coalesced, the
///   store too;
/// - backward pass 1 (along x, `inner` 1): lanes are consecutive destinations i of a tmp row
///   (8 a row, 4 rows a warp), each walking its own sources o = 4i - 2 .. 4i + 5 (6 at the
///   clamped edges): the n-th load of neighbouring lanes is r = 4 sources (16 bytes) apart, so
///   the 8 lanes of a row touch all 4 sectors of the 32-float dy row for 32 bytes: x4 = r
///   (up to x8 for r >= 8, where each lane has its own sector);
/// - backward pass 2 (along y, `inner` w): a warp is 4 destination rows of 8, each reading
///   whole rows of tmp: coalesced.
#[test]
fn access_upsample() {
    use crate::access::{assert_coalesced, profile};
    let k = sim::load("upsample");
    let (d, oh, ow) = (Nchw { n: 2, c: 64, h: 8, w: 8 }, 32, 32);
    let what = "2 x 64 x 8 x 8 to 32 x 32";
    let mut mem = Memory::default();
    let total = d.n * d.c * oh * ow;
    let x = mem.upload(&Rng(0xACC).vec(d.len(), -2.0, 2.0));
    let y = mem.poisoned(4 * total);
    let args = [
        Arg::U64(y),
        Arg::U64(x),
        Arg::U32(total as u32),
        Arg::U32(d.h as u32),
        Arg::U32(d.w as u32),
        Arg::U32(oh as u32),
        Arg::U32(ow as u32),
        Arg::F32(d.h as f32 / oh as f32),
        Arg::F32(d.w as f32 / ow as f32),
    ];
    let p = profile(&k, &mut mem, "upsample_bilinear_f32", dims(ops::grid_1d(total as u32)), &args, what);
    assert_coalesced("upsample_bilinear_f32", &p);

    // The two passes of `sim_backward`, profiled.
    let (total_tmp, total_dx) = ((d.n * d.c * oh * d.w) as u32, d.len() as u32);
    let dy = mem.upload(&Rng(0xACD).vec(total, -1.0, 1.0));
    let tmp = mem.poisoned(4 * total_tmp as usize);
    let dx = mem.poisoned(4 * total_dx as usize);
    let [p1, p2] = ops::upsample_bwd_passes(d, oh, ow);
    let pass = |p: ops::UpsampleBwdPass, dst: u64, src: u64, total: u32| {
        [
            Arg::U64(dst),
            Arg::U64(src),
            Arg::U32(total),
            Arg::U32(p.in_len),
            Arg::U32(p.out_len),
            Arg::U32(p.inner),
            Arg::F32(p.scale),
            Arg::F32(p.ratio),
        ]
    };
    let entry = "upsample_bwd_axis_f32";
    let p = profile(&k, &mut mem, entry, dims(ops::grid_1d(total_tmp)), &pass(p1, tmp, dy, total_tmp), "pass 1, along x");
    // Per tmp row and load: 4 sectors for the 32 bytes of 8 lanes (6 lanes and 3 sectors for
    // 24 bytes in the last two loads, where the edge lanes are done).
    assert_eq!(p.load.sectors, 4 * p.load.ideal, "{entry} pass 1: loads x4: {p}");
    assert_eq!(p.store.sectors, p.store.ideal, "{entry} pass 1: uncoalesced stores: {p}");
    let p = profile(&k, &mut mem, entry, dims(ops::grid_1d(total_dx)), &pass(p2, dx, tmp, total_dx), "pass 2, along y");
    assert_coalesced("upsample_bwd_axis_f32 pass 2", &p);
}
