//! `kernels/batch_norm.ptx` in eval mode: `bn_eval_invstd_f32`, then `bn_normalize_f32` with the
//! running mean and that invstd, as `ops::batch_norm_eval` launches them, against the CPU
//! backend's eval-mode batch norm (`CpuStorage::batch_norm_eval`, i.e.
//! `cpu::batch_norm::forward_eval`).
//!
//! Bit-exact, as the header promises: `invstd = f32(1 / sqrt(f64(var) + f64(eps)))` is two
//! correctly rounded f64 operations and one rounding to f32 on both sides (checked against that
//! definition at awkward running variances: 0, a subnormal, huge, +inf, NaN, exactly -eps
//! (invstd +inf) and below it (NaN)), and the normalisation is the training kernel's, itself
//! bit-exact given the same statistics; x f32 or bf16 (`xbf16`, the bf16 convolution's output
//! in the fused eval layer), with and without the fused ReLU.

use hyperseg_engine::backend::cpu::CpuStorage;
use hyperseg_engine::backend::cuda::kernels::ops;
use hyperseg_engine::backend::{BackendStorage, Nchw};

use crate::sim::{self, Arg, Kernels, Memory};
use crate::{assert_bits, dims, run, Rng};

const EPS: f32 = 1e-5;

/// The definition both sides implement.
fn invstd_of(var: f32) -> f32 {
    (1.0 / (var as f64 + EPS as f64).sqrt()) as f32
}

/// Running variances of `c` channels: random in [0.01, 4), then (when `c` leaves room) the
/// awkward values of the module comment.
fn running_var(c: usize, seed: u64) -> Vec<f32> {
    let mut v = Rng(seed).vec(c, 0.01, 4.0);
    let awkward = [0.0, 1e-45, 3e38, f32::INFINITY, f32::NAN, -EPS, -1.0];
    for (i, a) in awkward.into_iter().enumerate().filter(|(i, _)| 2 * i + 1 < c) {
        v[2 * i + 1] = a;
    }
    v
}

/// `bn_eval_invstd_f32` over `var`, as `ops::batch_norm_eval` launches it.
fn eval_invstd(k: &Kernels, var: &[f32]) -> Vec<f32> {
    let mut mem = Memory::default();
    let vd = mem.upload(var);
    let out = mem.poisoned(4 * var.len());
    let c = var.len() as u32;
    run(k, &mut mem, "bn_eval_invstd_f32", dims(ops::grid_1d(c)), &[Arg::U64(out), Arg::U64(vd), Arg::F32(EPS), Arg::U32(c)]);
    mem.download(out, var.len())
}

/// The inputs of one eval-mode forward.
struct Case {
    d: Nchw,
    x: Vec<f32>,
    gamma: Vec<f32>,
    beta: Vec<f32>,
    mean: Vec<f32>,
    var: Vec<f32>,
}

impl Case {
    fn new(d: Nchw, seed: u64) -> Case {
        let mut rng = Rng(seed);
        let x = rng.vec(d.len(), -3.0, 3.0);
        let mut gamma = rng.vec(d.c, 0.5, 1.5);
        gamma[d.c / 2] = -gamma[d.c / 2];
        let (beta, mean) = (rng.vec(d.c, -0.5, 0.5), rng.vec(d.c, -1.0, 1.0));
        // Finite variances: the awkward ones are checked on the invstd alone.
        let var = rng.vec(d.c, 0.01, 4.0);
        Case { d, x, gamma, beta, mean, var }
    }

    /// The CPU backend's eval-mode batch norm of x (widened from bf16 when `bf16`).
    fn cpu(&self, bf16: bool, relu: bool) -> Vec<f32> {
        let x = if bf16 { widen(&bf16_bits(&self.x)) } else { self.x.clone() };
        let s = |v: &[f32]| CpuStorage::F32(v.to_vec());
        let y = s(&x).batch_norm_eval(&s(&self.gamma), &s(&self.beta), &s(&self.mean), &s(&self.var), self.d, EPS, relu).unwrap();
        y.to_host_f32().unwrap()
    }

    /// The two kernels, as `ops::batch_norm_eval` launches them (x as bf16 bits when `bf16`).
    fn kernels(&self, k: &Kernels, bf16: bool, relu: bool) -> Vec<f32> {
        let d = self.d;
        let (c, hw, planes) = (d.c as u32, (d.h * d.w) as u32, (d.n * d.c) as u32);
        let mut mem = Memory::default();
        let xd = if bf16 { mem.upload(&bf16_bits(&self.x)) } else { mem.upload(&self.x) };
        let [gd, bd, md, vd] = [&self.gamma, &self.beta, &self.mean, &self.var].map(|v| mem.upload(v));
        let invstd = mem.poisoned(4 * d.c);
        run(k, &mut mem, "bn_eval_invstd_f32", dims(ops::grid_1d(c)), &[Arg::U64(invstd), Arg::U64(vd), Arg::F32(EPS), Arg::U32(c)]);
        let y = mem.poisoned(4 * d.len());
        let args = [
            Arg::U64(y),
            Arg::U64(xd),
            Arg::U64(md),
            Arg::U64(invstd),
            Arg::U64(gd),
            Arg::U64(bd),
            Arg::U32(c),
            Arg::U32(hw),
            Arg::U32(planes),
            Arg::U32(relu as u32),
            Arg::U32(bf16 as u32),
        ];
        run(k, &mut mem, "bn_normalize_f32", dims(ops::plane_cfg(hw, planes)), &args);
        mem.download(y, d.len())
    }
}

fn bf16_bits(x: &[f32]) -> Vec<u16> {
    x.iter().map(|v| half::bf16::from_f32(*v).to_bits()).collect()
}

fn widen(x: &[u16]) -> Vec<f32> {
    x.iter().map(|b| f32::from_bits((*b as u32) << 16)).collect()
}

/// Shapes: channels over one block of the invstd kernel (300: two blocks, threads past C idle),
/// a plane over one normalising block, a plane under a warp.
const SHAPES: [Nchw; 3] = [Nchw { n: 2, c: 300, h: 2, w: 3 }, Nchw { n: 2, c: 5, h: 23, w: 19 }, Nchw { n: 3, c: 4, h: 3, w: 3 }];

#[test]
fn eval_invstd_is_the_f64_definition_rounded_once() {
    let k = sim::load("batch_norm");
    let var = running_var(300, 11);
    let got = eval_invstd(&k, &var);
    let want: Vec<f32> = var.iter().map(|&v| invstd_of(v)).collect();
    assert_bits("bn_eval_invstd_f32", &got, &want);
    assert_eq!(got[11], f32::INFINITY, "var = -eps: invstd {}, not +inf", got[11]);
    assert!(got[13].is_nan(), "var = -1: invstd {}, not NaN", got[13]);
}

#[test]
fn eval_matches_the_cpu_bit_for_bit() {
    let k = sim::load("batch_norm");
    for (i, d) in SHAPES.into_iter().enumerate() {
        let case = Case::new(d, 21 + i as u64);
        for bf16 in [false, true] {
            for relu in [false, true] {
                let what = format!("eval batch norm {}x{}x{}x{} bf16={bf16} relu={relu}", d.n, d.c, d.h, d.w);
                let got = case.kernels(&k, bf16, relu);
                assert_bits(&what, &got, &case.cpu(bf16, relu));
                if relu {
                    assert!(got.iter().all(|v| *v >= 0.0), "{what}: a negative output after the fused ReLU");
                }
            }
        }
    }
}

#[test]
fn eval_walks_channels_and_planes_past_a_short_grid() {
    let k = sim::load("batch_norm");
    let case = Case::new(SHAPES[0], 31);
    crate::with_grid_y_cap(2, || assert_bits("eval batch norm, short grid", &case.kernels(&k, false, true), &case.cpu(false, true)));
    // The invstd kernel's channel walk: one block of 256 threads over 300 channels.
    let var = running_var(300, 32);
    let mut mem = Memory::default();
    let vd = mem.upload(&var);
    let out = mem.poisoned(4 * var.len());
    let one_block = sim::Dims { grid: (1, 1, 1), block: (ops::BLOCK, 1, 1) };
    run(&k, &mut mem, "bn_eval_invstd_f32", one_block, &[Arg::U64(out), Arg::U64(vd), Arg::F32(EPS), Arg::U32(300)]);
    let want: Vec<f32> = var.iter().map(|&v| invstd_of(v)).collect();
    assert_bits("bn_eval_invstd_f32, one block", &mem.download(out, var.len()), &want);
}

/// The check notices an invstd formed without eps, without the reciprocal, or from the square
/// root.
#[test]
fn a_wrong_eval_invstd_is_caught() {
    let faults = [
        ("eps left out", "add.rn.f64 %fd3, %fd2, %fd1;", "mov.f64 %fd3, %fd2;"),
        ("the reciprocal left out", "rcp.rn.f64 %fd4, %fd3;", "mov.f64 %fd4, %fd3;"),
        ("the square root stored", "cvt.rn.f32.f64 %f3, %fd4;", "cvt.rn.f32.f64 %f3, %fd3;"),
    ];
    let var = running_var(300, 41);
    let want: Vec<f32> = var.iter().map(|&v| invstd_of(v)).collect();
    for (fault, from, to) in faults {
        let k = sim::load_edited("batch_norm", |t| {
            let at = t.find(".entry bn_eval_invstd_f32(").expect("the entry");
            let i = at + t[at..].find(from).unwrap_or_else(|| panic!("`{from}` not in bn_eval_invstd_f32"));
            format!("{}{to}{}", &t[..i], &t[i + from.len()..])
        });
        let got = eval_invstd(&k, &var);
        let same = got.iter().zip(&want).all(|(g, w)| g.to_bits() == w.to_bits());
        assert!(!same, "bn_eval_invstd_f32 with {fault} gave the reference's bits");
    }
}

#[test]
fn access_batch_norm_eval() {
    use crate::access::{assert_coalesced, profile};
    let k = sim::load("batch_norm");
    let var = running_var(256, 51);
    let mut mem = Memory::default();
    let vd = mem.upload(&var);
    let out = mem.poisoned(4 * var.len());
    let args = [Arg::U64(out), Arg::U64(vd), Arg::F32(EPS), Arg::U32(256)];
    let p = profile(&k, &mut mem, "bn_eval_invstd_f32", dims(ops::grid_1d(256)), &args, "256 channels");
    assert_coalesced("bn_eval_invstd_f32", &p);
}
