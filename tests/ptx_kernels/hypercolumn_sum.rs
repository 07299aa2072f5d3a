//! `kernels/hypercolumn_sum.ptx`: the fused factored dense first layer (planes bilinearly
//! sampled, summed, biased, clamped), both entries, against `cpu::resample::plane_sum_forward`
//! (through `CpuStorage::upsample_sum_bias_relu`, which calls it) and
//! `cpu::bf16::plane_sum_forward_bf16`, with the wrapper's plane table (`ops::plane_table`) and
//! launch shape (`ops::column_rows_cfg`).
//!
//! The header promises bit-exact results, so results are compared bit for bit (`assert_bits`);
//! bf16 results are widened to f32 (exact and one-to-one) and compared the same way. It also promises that a corner of weight exactly 0 is
//! skipped, so a non-finite value there does not reach the result, where the CPU reference
//! (which multiplies it by 0) gives NaN: `corners_of_weight_zero_are_skipped` checks that
//! against a reference computed without those values.

use half::bf16;
use hyperseg_engine::backend::cpu::{bf16 as cpu_bf16, CpuStorage};
use hyperseg_engine::backend::cuda::kernels::ops;
use hyperseg_engine::backend::{BackendStorage, PlaneSumSpec, SamplePoint};

use crate::sim::{self, Arg, Dims, Kernels, Memory};
use crate::{assert_bits, dims, run, Rng};

const F32: &str = "upsample_sum_bias_relu_f32";
const BF16: &str = "upsample_sum_bias_relu_bf16";

/// The inputs of one launch. Plane values are all exactly representable in bf16, so the same
/// case feeds both entries.
struct Case {
    spec: PlaneSumSpec,
    planes: Vec<Vec<f32>>,
    bias: Vec<f32>,
    points: Vec<SamplePoint>,
}

fn bf16_exact(v: f32) -> f32 {
    bf16::from_f32(v).to_f32()
}

impl Case {
    /// Random planes in [-2, 2) and biases in [-1, 1) (so the ReLU clamps about half the
    /// outputs), `npoints` random points, the first four at the frame's corners (the clamped
    /// neighbours).
    fn random(spec: PlaneSumSpec, npoints: usize, seed: u64) -> Case {
        let mut rng = Rng(seed);
        let planes = spec
            .planes
            .iter()
            .map(|&(h, w)| rng.vec(spec.n * h * w * spec.cols, -2.0, 2.0).into_iter().map(bf16_exact).collect())
            .collect();
        let bias = rng.vec(spec.cols, -1.0, 1.0);
        let (n, ih, iw) = (spec.n as u32, spec.in_h as u32, spec.in_w as u32);
        let corners = [(0, 0), (0, iw - 1), (ih - 1, 0), (ih - 1, iw - 1)];
        let points = (0..npoints)
            .map(|i| {
                let image = rng.below(n);
                let (y, x) = corners.get(i).copied().unwrap_or_else(|| (rng.below(ih), rng.below(iw)));
                SamplePoint { image, y, x }
            })
            .collect();
        Case { spec, planes, bias, points }
    }

    /// The CPU reference, `cpu::resample::plane_sum_forward`.
    fn want_f32(&self) -> Vec<f32> {
        let planes: Vec<CpuStorage> = self.planes.iter().map(|p| CpuStorage::F32(p.clone())).collect();
        let refs: Vec<&CpuStorage> = planes.iter().collect();
        let bias = CpuStorage::F32(self.bias.clone());
        let out =
            CpuStorage::upsample_sum_bias_relu(&refs, &bias, &self.points, &self.spec).unwrap_or_else(|e| panic!("CPU reference: {e}"));
        out.as_f32().to_vec()
    }

    /// The CPU reference, `cpu::bf16::plane_sum_forward_bf16`, widened to f32.
    fn want_bf16(&self) -> Vec<f32> {
        let planes: Vec<Vec<bf16>> = self.planes.iter().map(|p| cpu_bf16::to_bf16(p)).collect();
        let refs: Vec<&[bf16]> = planes.iter().map(|p| p.as_slice()).collect();
        cpu_bf16::to_f32(&cpu_bf16::plane_sum_forward_bf16(&refs, &self.bias, &self.points, &self.spec))
    }
}

/// Runs `entry` as the wrapper launches it: planes uploaded (as f32, or as bf16 bits when
/// `bf16_planes`), the descriptor table of `ops::plane_table`, the points as u32 triples,
/// grid and block of `ops::column_rows_cfg`, arguments in the wrapper's order. Returns the output
/// buffer's address (poisoned before the launch).
fn launch(k: &Kernels, mem: &mut Memory, c: &Case, entry: &str, bf16_planes: bool) -> u64 {
    let d = dims(ops::column_rows_cfg(c.spec.cols as u32, c.points.len() as u32));
    launch_with(k, mem, c, entry, bf16_planes, d)
}

/// [`launch`] with the launch shape `d`.
fn launch_with(k: &Kernels, mem: &mut Memory, c: &Case, entry: &str, bf16_planes: bool, d: Dims) -> u64 {
    let (out, args) = upload(mem, c, bf16_planes);
    run(k, mem, entry, d, &args);
    out
}

/// The buffers of one launch uploaded as [`launch`] describes, with the output poisoned:
/// (the output's address, the arguments in the wrapper's order).
fn upload(mem: &mut Memory, c: &Case, bf16_planes: bool) -> (u64, [Arg; 7]) {
    let ptrs: Vec<u64> =
        c.planes
            .iter()
            .map(|p| {
                if bf16_planes {
                    mem.upload(&cpu_bf16::to_bf16(p).iter().map(|v| v.to_bits()).collect::<Vec<u16>>())
                } else {
                    mem.upload(p)
                }
            })
            .collect();
    let table = mem.upload(&ops::plane_table(&ptrs, &c.spec));
    let bias = mem.upload(&c.bias);
    let points = mem.upload(SamplePoint::words(&c.points));
    let (np, cols) = (c.points.len() as u32, c.spec.cols as u32);
    let elem = if bf16_planes { 2 } else { 4 };
    let out = mem.poisoned(elem * c.points.len() * c.spec.cols);
    let args =
        [Arg::U64(out), Arg::U64(table), Arg::U32(ptrs.len() as u32), Arg::U64(bias), Arg::U64(points), Arg::U32(np), Arg::U32(cols)];
    (out, args)
}

/// `upsample_sum_bias_relu_f32`'s output for `c`.
fn run_f32(k: &Kernels, c: &Case) -> Vec<f32> {
    let mut mem = Memory::default();
    let out = launch(k, &mut mem, c, F32, false);
    mem.download(out, c.points.len() * c.spec.cols)
}

/// `upsample_sum_bias_relu_bf16`'s output for `c`, widened to f32 (exact).
fn run_bf16(k: &Kernels, c: &Case) -> Vec<f32> {
    let mut mem = Memory::default();
    let out = launch(k, &mut mem, c, BF16, true);
    let bits: Vec<u16> = mem.download(out, c.points.len() * c.spec.cols);
    bits.into_iter().map(|b| bf16::from_bits(b).to_f32()).collect()
}

/// Both entries against their CPU references, bit for bit; `what` names the case.
fn check_both(k: &Kernels, c: &Case, what: &str) {
    assert_bits(&format!("{F32} ({what})"), &run_f32(k, c), &c.want_f32());
    assert_bits(&format!("{BF16} ({what})"), &run_bf16(k, c), &c.want_bf16());
}

fn spec(n: usize, in_h: usize, in_w: usize, cols: usize, planes: &[(usize, usize)]) -> PlaneSumSpec {
    PlaneSumSpec { n, in_h, in_w, cols, planes: planes.to_vec() }
}

/// Five planes of every kind (full resolution, upsampled, downsampled, 1x1) over three
/// images, 300 columns (two blocks of 256 along x, the second partly idle), 41 points.
#[test]
fn mixed_planes_match_the_cpu() {
    let k = sim::load("hypercolumn_sum");
    let s = spec(3, 13, 11, 300, &[(13, 11), (4, 3), (7, 6), (20, 17), (1, 1)]);
    check_both(&k, &Case::random(s, 41, 0x0051_A7E5), "5 planes, 300 columns");
}

/// Fewer columns than a warp (block 32, 27 threads exit at once), two planes.
#[test]
fn narrow_rows_match_the_cpu() {
    let k = sim::load("hypercolumn_sum");
    let s = spec(2, 9, 14, 5, &[(3, 5), (9, 14)]);
    check_both(&k, &Case::random(s, 50, 0xC015), "5 columns");
}

/// The wrapper's shape at more points than the grid's 65535 rows, so that blockIdx.y's stride
/// loop wraps: about 70 million simulated instructions (both entries), several seconds;
/// `a_short_grid_strides_over_the_points` checks the same loop quickly at a cut grid.
#[test]
fn points_past_the_grid_wrap_around() {
    let k = sim::load("hypercolumn_sum");
    let np = ops::MAX_GRID_Y as usize + 40;
    let s = spec(2, 5, 7, 1, &[(2, 3)]);
    let c = Case::random(s, np, 0x9E7);
    assert_eq!(dims(ops::column_rows_cfg(1, np as u32)).grid.1, ops::MAX_GRID_Y, "the grid no longer caps the points");
    check_both(&k, &c, &format!("{np} points"));
}

/// blockIdx.y's stride loop over the points, wrapping several times: the wrapper's shape with
/// the grid cut to 7 rows (the wrapper cuts it only past 65535 points, which is slow to
/// simulate, see `points_past_the_grid_wrap_around`), 50 points, so rows take 7 or 8 points.
#[test]
fn a_short_grid_strides_over_the_points() {
    let k = sim::load("hypercolumn_sum");
    let s = spec(2, 10, 9, 40, &[(5, 4), (10, 9)]);
    let c = Case::random(s, 50, 0x57D);
    let mut d = dims(ops::column_rows_cfg(40, 50));
    d.grid.1 = 7;
    for (entry, bf16_planes, want) in [(F32, false, c.want_f32()), (BF16, true, c.want_bf16())] {
        let mut mem = Memory::default();
        let out = launch_with(&k, &mut mem, &c, entry, bf16_planes, d);
        let got: Vec<f32> = if bf16_planes {
            mem.download::<u16>(out, want.len()).into_iter().map(|b| bf16::from_bits(b).to_f32()).collect()
        } else {
            mem.download(out, want.len())
        };
        assert_bits(&format!("{entry} (grid of 7 rows for 50 points)"), &got, &want);
    }
}

/// Non-finite values (and signed zeros) at corners of non-zero weight reach the result as on
/// the CPU: a plane upsampled 2x, sampled away from the top and left edges, so every one of
/// the four weights is 0.25 or 0.75 (no corner of weight 0), plus a finite full-resolution
/// plane.
#[test]
fn non_finite_values_at_weighted_corners_propagate() {
    let k = sim::load("hypercolumn_sum");
    let s = spec(2, 12, 10, 37, &[(6, 5), (12, 10)]);
    let mut c = Case::random(s, 60, 0xF1A7);
    for p in &mut c.points {
        p.y = p.y.max(1);
        p.x = p.x.max(1);
    }
    let specials = [f32::NAN, f32::INFINITY, f32::NEG_INFINITY, -0.0, 0.0, f32::from_bits(0x7F80_0001), -f32::NAN];
    let plane = &mut c.planes[0];
    let len = plane.len();
    for i in 0..len / 9 {
        plane[(i * 131) % len] = specials[i % specials.len()];
    }
    check_both(&k, &c, "non-finite values at weighted corners");
    let out = run_f32(&k, &c);
    assert!(out.contains(&f32::INFINITY), "no +inf reached the output: the case does not exercise propagation");
}

/// A corner whose weight is exactly 0 is not read: at full resolution only corner 0 (the
/// point's own pixel) has a weight, so non-finite values at the neighbouring pixels must not
/// reach the result. The reference for each point is the CPU's on a plane where every
/// non-finite value other than the one at that point's own pixel is replaced by 0. The values
/// stay off the plane's last row and column: there the clamped neighbour is the point's own
/// pixel, read once with weight 1 and skipped once with weight 0, which no finite stand-in in
/// the CPU reference can model (its 0 * inf is NaN whatever else is replaced).
#[test]
fn corners_of_weight_zero_are_skipped() {
    let k = sim::load("hypercolumn_sum");
    let (n, ih, iw, cols) = (2, 7, 9, 33);
    let s = spec(n, ih, iw, cols, &[(ih, iw), (3, 4)]);
    let mut c = Case::random(s, 45, 0x2E60);
    let specials = [f32::NAN, f32::INFINITY, f32::NEG_INFINITY];
    let len = c.planes[0].len();
    for i in 0..len / 5 {
        let e = (i * 37) % len;
        let pixel = e / cols;
        if pixel % iw != iw - 1 && pixel / iw % ih != ih - 1 {
            c.planes[0][e] = specials[i % specials.len()];
        }
    }
    let (got32, got16) = (run_f32(&k, &c), run_bf16(&k, &c));
    let mut want32 = Vec::new();
    let mut want16 = Vec::new();
    for p in &c.points {
        let own = (p.image as usize * ih + p.y as usize) * iw + p.x as usize;
        let mut one = Case { spec: c.spec.clone(), planes: c.planes.clone(), bias: c.bias.clone(), points: vec![*p] };
        for (e, v) in one.planes[0].iter_mut().enumerate() {
            if e / cols != own && !v.is_finite() {
                *v = 0.0;
            }
        }
        want32.extend(one.want_f32());
        want16.extend(one.want_bf16());
    }
    let plain = c.want_f32();
    let differ = plain.iter().zip(&want32).filter(|(a, b)| a != b && !(a.is_nan() && b.is_nan())).count();
    assert!(differ > 0, "the CPU reference is the same with and without the skipped values: the case does not exercise skipping");
    assert_bits(&format!("{F32} (non-finite values at corners of weight 0)"), &got32, &want32);
    assert_bits(&format!("{BF16} (non-finite values at corners of weight 0)"), &got16, &want16);
}

/// The bf16 output's rounding: a full-resolution plane (the sum is plane value + bias, one
/// rounding in f32) with values and biases chosen so that many sums fall exactly halfway
/// between two bf16 values (ties, to even), or round up to infinity.
#[test]
fn bf16_output_ties_round_to_even() {
    let k = sim::load("hypercolumn_sum");
    let (n, ih, iw, cols) = (1, 6, 5, 40);
    let s = spec(n, ih, iw, cols, &[(ih, iw)]);
    let mut c = Case::random(s, 30, 0xB16);
    let values = [1.0, 1.0078125, 3.0, -1.0, f32::from_bits(0x7F7F_0000), 0.5, 1.5];
    for (i, v) in c.planes[0].iter_mut().enumerate() {
        if i % 3 != 0 {
            *v = values[i % values.len()];
        }
    }
    let biases = [1.0 / 256.0, 3.0 / 256.0, 2.0f32.powi(119), -0.0, 0.0, 1.0 / 128.0, 2.0f32.powi(-7) * 1.5];
    for (j, b) in c.bias.iter_mut().enumerate() {
        if j % 4 != 0 {
            *b = biases[j % biases.len()];
        }
    }
    let ties = c.want_f32().iter().filter(|v| v.to_bits() & 0xFFFF == 0x8000).count();
    assert!(ties >= 20, "only {ties} sums are ties: the case does not exercise the rounding");
    assert!(c.want_bf16().iter().any(|v| v.is_infinite()), "no sum rounds to infinity");
    assert_bits(&format!("{BF16} (ties)"), &run_bf16(&k, &c), &c.want_bf16());
}

/// The comparison notices corner 1 read from the wrong column (`b.i0` instead of `b.i1`, a
/// fault planted in the f32 entry's text).
#[test]
fn a_wrong_corner_is_caught() {
    let k = sim::load_edited("hypercolumn_sum", |t| t.replacen("add.u32 %r27, %r24, %r23;", "add.u32 %r27, %r24, %r22;", 1));
    let s = spec(2, 9, 14, 5, &[(3, 5), (9, 14)]);
    let c = Case::random(s, 50, 0xC015);
    let (got, want) = (run_f32(&k, &c), c.want_f32());
    let same = got.iter().zip(&want).all(|(g, w)| g == w || (g.is_nan() && w.is_nan()));
    assert!(!same, "{F32} with corner 1 at the wrong column matched the CPU everywhere");
}

/// How both entries access memory, at the dense path's layout scaled down: one image at 32 x 32
/// (224 / 7), the six planes of the paper's taps at 1/1 .. 1/32 of it, 256 columns (the first
/// hidden layer's 4096 / 16) and a tile of 64 consecutive pixels. Every lane reads the point's
/// words and each plane's record at one address (one sector per request), and column j of a
/// pixel row is thread j's, so the plane reads, the bias and the stores are coalesced, as the
/// header says: 32 consecutive f32 (or bf16) of a row that starts on a 32-byte boundary
/// (cols 4 bytes, a multiple of 128, as 4096 4 is). Corners of weight 0 are skipped by the
/// whole block, so they leave no request behind.
#[test]
fn access_hypercolumn_sum() {
    use crate::access::{assert_coalesced, profile};
    let k = sim::load("hypercolumn_sum");
    let s = spec(1, 32, 32, 256, &[(32, 32), (16, 16), (8, 8), (4, 4), (2, 2), (1, 1)]);
    let mut c = Case::random(s, 0, 0xACC);
    c.points = (0..64).map(|i| SamplePoint { image: 0, y: 10 + i / 32, x: i % 32 }).collect();
    let d = dims(ops::column_rows_cfg(c.spec.cols as u32, c.points.len() as u32));
    let what = "6 planes of 32 x 32 .. 1 x 1, 256 columns, 64 pixels";
    for (entry, bf16_planes) in [("upsample_sum_bias_relu_f32", false), ("upsample_sum_bias_relu_bf16", true)] {
        let mut mem = Memory::default();
        let (_, args) = upload(&mut mem, &c, bf16_planes);
        let p = profile(&k, &mut mem, entry, d, &args, what);
        assert_coalesced(entry, &p);
    }
}
