//! `kernels/elementwise.ptx`: every entry (fill, the unary maps, affine, the binary maps, the
//! ReLU backward, `x += alpha y`, the broadcasts, the block copy and the dropout mask) against
//! the CPU backend (`backend::cpu`, i.e. `cpu::elementwise`), with the launch shapes and
//! arguments of `ops::elementwise`. Bit for bit, as the header promises, except `exp_f32` and
//! `log_f32`, whose in-PTX `hs_expf` / `hs_logf` the header states to within a few ulp of Rust's
//! `f32::exp` / `f32::ln` (checked in ulps below).

use hyperseg_engine::backend::cpu::CpuStorage;
use hyperseg_engine::backend::cuda::kernels::ops;
use hyperseg_engine::backend::{BackendStorage, BinaryOp, BlockCopy, BroadcastSpec, UnaryOp};

use crate::sim::{self, Arg, Dims, Kernels, Memory};
use crate::{assert_bits, grid_1d, run, Rng, SPECIAL};

/// Sizes that are not multiples of the block (256), one block and several.
const SIZES: [usize; 3] = [1, 200, 1337];

/// The CPU backend's storage of `x`.
fn cpu(x: &[f32]) -> CpuStorage {
    CpuStorage::F32(x.to_vec())
}

/// Random values in [-4, 4) with the [`SPECIAL`] values scattered in.
fn awkward(n: usize, seed: u64) -> Vec<f32> {
    let mut v = Rng(seed).vec(n, -4.0, 4.0);
    for (i, s) in SPECIAL.iter().enumerate().take(n) {
        v[(i * 97 + 3) % n] = *s;
    }
    v
}

/// Two operands of `n` random elements in [-4, 4) followed by every pair of [`SPECIAL`] values
/// (inf - inf, 0 / 0, x / 0, NaN against all, signed zeros meet).
fn awkward_pair(n: usize, seed: u64) -> (Vec<f32>, Vec<f32>) {
    let mut rng = Rng(seed);
    let (mut a, mut b) = (rng.vec(n, -4.0, 4.0), rng.vec(n, -4.0, 4.0));
    for x in SPECIAL {
        for y in SPECIAL {
            a.push(x);
            b.push(y);
        }
    }
    (a, b)
}

/// Runs the `(out, x, n)` entry `entry` over `x` with `dims`; returns `out`.
fn run_unary_with(k: &Kernels, entry: &str, x: &[f32], dims: Dims) -> Vec<f32> {
    let n = x.len();
    let mut mem = Memory::default();
    let xd = mem.upload(x);
    let out = mem.poisoned(4 * n);
    run(k, &mut mem, entry, dims, &[Arg::U64(out), Arg::U64(xd), Arg::U32(n as u32)]);
    mem.download(out, n)
}

/// Runs the `(out, x, n)` entry `entry` over `x` with the wrapper's `grid_1d(n)`.
fn run_unary(k: &Kernels, entry: &str, x: &[f32]) -> Vec<f32> {
    run_unary_with(k, entry, x, grid_1d(x.len()))
}

/// Runs the `(out, a, b, n)` entry `entry` with the wrapper's `grid_1d(n)`; returns `out`.
fn run_binary(k: &Kernels, entry: &str, a: &[f32], b: &[f32]) -> Vec<f32> {
    let n = a.len();
    let mut mem = Memory::default();
    let (ad, bd) = (mem.upload(a), mem.upload(b));
    let out = mem.poisoned(4 * n);
    run(k, &mut mem, entry, grid_1d(n), &[Arg::U64(out), Arg::U64(ad), Arg::U64(bd), Arg::U32(n as u32)]);
    mem.download(out, n)
}

/// The distance in ulps between two floats of the same sign (through the ordered integer
/// line, so that it also counts across subnormals and zero).
fn ulps(a: f32, b: f32) -> u64 {
    let ordered = |x: f32| {
        let bits = x.to_bits();
        if bits & 0x8000_0000 != 0 {
            -((bits & 0x7FFF_FFFF) as i64)
        } else {
            bits as i64
        }
    };
    ordered(a).abs_diff(ordered(b))
}

/// Asserts `got` within `max` ulps of `want` element-wise; NaN only against NaN, infinities and
/// zeros' signs exactly.
fn assert_ulps(what: &str, x: &[f32], got: &[f32], want: &[f32], max: u64) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let ok = if g.is_nan() || w.is_nan() || g.is_infinite() || w.is_infinite() {
            g.to_bits() == w.to_bits() || (g.is_nan() && w.is_nan())
        } else {
            ulps(*g, *w) <= max && g.is_sign_negative() == w.is_sign_negative()
        };
        assert!(
            ok,
            "{what}: element {i} (x = {:e}) is {g:e} ({:#010x}), the CPU reference has {w:e} ({:#010x}): {} ulps, at most {max} allowed",
            x[i],
            g.to_bits(),
            w.to_bits(),
            ulps(*g, *w)
        );
    }
}

#[test]
fn fill_writes_every_element_with_the_exact_value() {
    let k = sim::load("elementwise");
    for n in SIZES {
        for value in [-1.25f32, -0.0, 3.0e-41, f32::INFINITY] {
            let mut mem = Memory::default();
            let out = mem.poisoned(4 * n);
            run(&k, &mut mem, "fill_f32", grid_1d(n), &[Arg::U64(out), Arg::U32(n as u32), Arg::F32(value)]);
            let mut want = cpu(&vec![7.0; n]);
            want.fill(value).expect("cpu fill");
            assert_bits(&format!("fill_f32 (n = {n}, value {value:e})"), &mem.download(out, n), want.as_f32());
        }
    }
}

/// The unary maps that the header promises bit for bit (Neg, Sqr, Sqrt, Relu): signed zeros,
/// NaN below 0 for sqrt, NaN to +0 for relu. relu(-0) is +0 from `max.f32` (it orders -0 below
/// +0) and from `cpu::relu`.
#[test]
fn exact_unary_maps_match_the_cpu_bit_for_bit() {
    let k = sim::load("elementwise");
    let maps = [("neg_f32", UnaryOp::Neg), ("sqr_f32", UnaryOp::Sqr), ("sqrt_f32", UnaryOp::Sqrt), ("relu_f32", UnaryOp::Relu)];
    for n in SIZES {
        let x = awkward(n, 0xE1E + n as u64);
        for (entry, op) in maps {
            let want = cpu(&x).unary(op).expect("cpu unary");
            assert_bits(&format!("{entry} (n = {n})"), &run_unary(&k, entry, &x), want.as_f32());
        }
    }
}

/// Every launch shape works (the header's "any grid/block"): a grid of 3 blocks of 64 threads
/// makes the grid-stride loop wrap several times (the wrapper's own grid only wraps beyond
/// 65535 * 256 elements, too many to simulate).
#[test]
fn grid_stride_loop_covers_every_element_with_a_small_grid() {
    let k = sim::load("elementwise");
    let x = awkward(1337, 0x5712);
    let small = Dims { grid: (3, 1, 1), block: (64, 1, 1) };
    for (entry, op) in [("neg_f32", UnaryOp::Neg), ("sqrt_f32", UnaryOp::Sqrt)] {
        let want = cpu(&x).unary(op).expect("cpu unary");
        assert_bits(&format!("{entry} on a 3 x 64 grid"), &run_unary_with(&k, entry, &x, small), want.as_f32());
    }
}

/// Arguments of `exp_f32` across its whole range: small, moderate, near overflow (88.72 ..
/// 89, the clamp), the subnormal results (-87.3 .. -103.9), below the clamp, and the specials.
fn exp_inputs(n: usize) -> Vec<f32> {
    let mut rng = Rng(0xE4E4);
    let mut x: Vec<f32> = (0..n)
        .map(|i| match i % 4 {
            0 => rng.f(-1.0, 1.0),
            1 => rng.f(-20.0, 20.0),
            2 => rng.f(-104.0, 89.0),
            _ => rng.f(-110.0, 95.0),
        })
        .collect();
    let special = [
        0.0,
        -0.0,
        f32::NAN,
        f32::INFINITY,
        f32::NEG_INFINITY,
        88.72,
        88.7228,
        88.73,
        89.0,
        -87.33,
        -87.34,
        -100.0,
        -103.2,
        -103.97,
        -104.0,
        -150.0,
        1.0e-40,
        -1.0e-40,
        f32::MAX,
        -f32::MAX,
    ];
    for (i, s) in special.iter().enumerate() {
        x[(i * 89 + 5) % n] = *s;
    }
    x
}

/// Positive arguments of `log_f32` across every binade (random bits), near 1, the subnormals,
/// and the specials: +-0 to -inf, negatives (-inf included) to NaN, +inf to +inf, NaN to NaN.
fn log_inputs(n: usize) -> Vec<f32> {
    let mut rng = Rng(0x1061);
    let mut x: Vec<f32> = (0..n)
        .map(|i| match i % 3 {
            0 => f32::from_bits(rng.bits() as u32 & 0x7F7F_FFFF),
            1 => 1.0 + rng.f(-0.01, 0.01),
            _ => rng.f(0.0, 100.0),
        })
        .collect();
    let special = [
        0.0,
        -0.0,
        f32::NAN,
        f32::INFINITY,
        f32::NEG_INFINITY,
        -1.0,
        -1.0e-40,
        1.0,
        f32::MIN_POSITIVE,
        1.0e-45,
        1.0e-40,
        f32::MAX,
        std::f32::consts::SQRT_2,
        std::f32::consts::FRAC_1_SQRT_2,
        f32::from_bits(0x3F35_04F3),
        f32::from_bits(0x3F35_04F2),
        1.0 + f32::EPSILON,
        1.0 - f32::EPSILON / 2.0,
    ];
    for (i, s) in special.iter().enumerate() {
        x[(i * 89 + 5) % n] = *s;
    }
    x
}

/// `exp_f32` (hs_expf): the header measures <= 1.3 ulp from the true value and Rust's
/// `f32::exp` is within 1 ulp of it, so the two are at most 3 ulps apart (subnormal results
/// included: ulps count there too); specials exactly.
#[test]
fn exp_is_within_3_ulps_of_f32_exp() {
    let k = sim::load("elementwise");
    let x = exp_inputs(2000);
    let want = cpu(&x).unary(UnaryOp::Exp).expect("cpu exp");
    assert_ulps("exp_f32", &x, &run_unary(&k, "exp_f32", &x), want.as_f32(), 3);
}

/// `log_f32` (hs_logf): the header measures <= 2.8 ulp from the true value and Rust's `f32::ln`
/// is within 1 ulp of it, so at most 4 ulps apart; specials (IEEE) exactly.
#[test]
fn log_is_within_4_ulps_of_f32_ln() {
    let k = sim::load("elementwise");
    let x = log_inputs(2000);
    let want = cpu(&x).unary(UnaryOp::Log).expect("cpu ln");
    assert_ulps("log_f32", &x, &run_unary(&k, "log_f32", &x), want.as_f32(), 4);
}

#[test]
fn affine_rounds_twice_as_the_cpu() {
    let k = sim::load("elementwise");
    for n in SIZES {
        let x = awkward(n, 0xAFF + n as u64);
        for (mul, add) in [(1.7f32, -0.3f32), (-3.0e-3, 1.0e30), (0.0, -0.0), (f32::INFINITY, 1.0)] {
            let mut mem = Memory::default();
            let xd = mem.upload(&x);
            let out = mem.poisoned(4 * n);
            let args = [Arg::U64(out), Arg::U64(xd), Arg::U32(n as u32), Arg::F32(mul), Arg::F32(add)];
            run(&k, &mut mem, "affine_f32", grid_1d(n), &args);
            let want = cpu(&x).affine(mul, add).expect("cpu affine");
            assert_bits(&format!("affine_f32 (n = {n}, mul {mul:e}, add {add:e})"), &mem.download(out, n), want.as_f32());
        }
    }
}

#[test]
fn binary_maps_match_the_cpu_bit_for_bit() {
    let k = sim::load("elementwise");
    let maps = [("add_f32", BinaryOp::Add), ("sub_f32", BinaryOp::Sub), ("mul_f32", BinaryOp::Mul), ("div_f32", BinaryOp::Div)];
    for n in SIZES {
        let (a, b) = awkward_pair(n, 0xB1 + n as u64);
        for (entry, op) in maps {
            let want = cpu(&a).binary(&cpu(&b), op).expect("cpu binary");
            assert_bits(&format!("{entry} (n = {n} + 169 special pairs)"), &run_binary(&k, entry, &a, &b), want.as_f32());
        }
    }
}

/// `relu_backward_f32(out, a = y, b = grad)`: grad where y > 0, +0 elsewhere (y = NaN, -0 and
/// +0 included).
#[test]
fn relu_backward_passes_the_gradient_where_y_is_positive() {
    let k = sim::load("elementwise");
    for n in SIZES {
        let (y, grad) = awkward_pair(n, 0x4E1 + n as u64);
        let want = cpu(&y).relu_backward(&cpu(&grad)).expect("cpu relu_backward");
        assert_bits(
            &format!("relu_backward_f32 (n = {n} + 169 special pairs)"),
            &run_binary(&k, "relu_backward_f32", &y, &grad),
            want.as_f32(),
        );
    }
}

#[test]
fn add_scaled_assign_updates_in_place_as_the_cpu() {
    let k = sim::load("elementwise");
    for n in SIZES {
        let x = awkward(n, 0xA5A + n as u64);
        let y = Rng(0x77 + n as u64).vec(n, -10.0, 10.0);
        for alpha in [0.37f32, -1.0, 1.0e-30] {
            let mut mem = Memory::default();
            let (xd, yd) = (mem.upload(&x), mem.upload(&y));
            let args = [Arg::U64(xd), Arg::U64(yd), Arg::U32(n as u32), Arg::F32(alpha)];
            run(&k, &mut mem, "add_scaled_assign_f32", grid_1d(n), &args);
            let mut want = cpu(&x);
            want.add_scaled_assign(&cpu(&y), alpha).expect("cpu add_scaled_assign");
            assert_bits(&format!("add_scaled_assign_f32 (n = {n}, alpha {alpha:e})"), &mem.download(xd, n), want.as_f32());
        }
    }
}

/// Shapes of [outer, mid, inner]: several blocks, inner = 1 (channels last), mid = 1, outer = 1.
const BROADCASTS: [BroadcastSpec; 4] = [
    BroadcastSpec { outer: 3, mid: 5, inner: 37 },
    BroadcastSpec { outer: 41, mid: 13, inner: 1 },
    BroadcastSpec { outer: 7, mid: 1, inner: 19 },
    BroadcastSpec { outer: 1, mid: 300, inner: 2 },
];

/// Runs `broadcast_{add,mul}_f32` as `ops::broadcast_{add,mul}` launches it.
fn run_broadcast(k: &Kernels, entry: &str, x: &[f32], v: &[f32], s: BroadcastSpec) -> Vec<f32> {
    let n = x.len();
    let mut mem = Memory::default();
    let (xd, vd) = (mem.upload(x), mem.upload(v));
    let out = mem.poisoned(4 * n);
    let args = [Arg::U64(out), Arg::U64(xd), Arg::U64(vd), Arg::U32(n as u32), Arg::U32(s.mid as u32), Arg::U32(s.inner as u32)];
    run(k, &mut mem, entry, grid_1d(n), &args);
    mem.download(out, n)
}

/// Checks both broadcasts of `k` against the CPU over [`BROADCASTS`]; panics on a difference.
fn check_broadcasts(k: &Kernels) {
    for (j, s) in BROADCASTS.into_iter().enumerate() {
        let n = s.outer * s.mid * s.inner;
        let x = awkward(n, 0xB0 + j as u64);
        let v = Rng(0xB5 + j as u64).vec(s.mid, -3.0, 3.0);
        let add = cpu(&x).broadcast_add(&cpu(&v), s).expect("cpu broadcast_add");
        assert_bits(&format!("broadcast_add_f32 ({s:?})"), &run_broadcast(k, "broadcast_add_f32", &x, &v, s), add.as_f32());
        let mul = cpu(&x).broadcast_mul(&cpu(&v), s).expect("cpu broadcast_mul");
        assert_bits(&format!("broadcast_mul_f32 ({s:?})"), &run_broadcast(k, "broadcast_mul_f32", &x, &v, s), mul.as_f32());
    }
}

#[test]
fn broadcasts_along_the_middle_axis_match_the_cpu() {
    check_broadcasts(&sim::load("elementwise"));
}

/// The broadcast check notices `row = i / mid` where `i / inner` belongs (a fault planted in
/// the PTX text of `broadcast_add_f32`; it stays in bounds, so the comparison is what fails).
#[test]
fn a_broadcast_indexed_with_the_wrong_extent_is_caught() {
    let k = sim::load_edited("elementwise", |t| t.replacen("div.u32 %r9, %r5, %r8;", "div.u32 %r9, %r5, %r7;", 1));
    let failure = std::panic::catch_unwind(|| check_broadcasts(&k)).expect_err("broadcast_add_f32 dividing by mid matched the CPU");
    let message = failure.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(message.contains("broadcast_add_f32") && message.contains("CPU reference"), "the planted fault failed otherwise: {message}");
}

/// Runs `copy_blocks_f32` as `ops::copy_blocks_into` launches it, into a copy of `dst`.
fn run_copy_blocks(k: &Kernels, src: &[f32], dst: &[f32], c: BlockCopy) -> Vec<f32> {
    let mut mem = Memory::default();
    let (sd, dd) = (mem.upload(src), mem.upload(dst));
    let total = (c.outer * c.block) as u32;
    let [block, ss, so, ds, dof] = [c.block, c.src_stride, c.src_offset, c.dst_stride, c.dst_offset].map(|v| Arg::U32(v as u32));
    run(k, &mut mem, "copy_blocks_f32", grid_1d(total as usize), &[Arg::U64(dd), Arg::U64(sd), Arg::U32(total), block, ss, so, ds, dof]);
    mem.download(dd, dst.len())
}

/// Strided copies in and out of the middle of buffers (the destination's other elements must
/// stay as they were), a contiguous one, and blocks longer than a thread block.
#[test]
fn copy_blocks_moves_exactly_the_named_blocks() {
    let k = sim::load("elementwise");
    let copies = [
        BlockCopy { outer: 13, block: 37, src_stride: 50, src_offset: 11, dst_stride: 41, dst_offset: 5 },
        BlockCopy { outer: 1, block: 700, src_stride: 700, src_offset: 0, dst_stride: 0, dst_offset: 3 },
        BlockCopy { outer: 4, block: 300, src_stride: 300, src_offset: 0, dst_stride: 333, dst_offset: 17 },
        BlockCopy { outer: 97, block: 1, src_stride: 3, src_offset: 2, dst_stride: 2, dst_offset: 1 },
    ];
    for (j, c) in copies.into_iter().enumerate() {
        let src_len = c.src_offset + (c.outer - 1) * c.src_stride + c.block + 9;
        let dst_len = c.dst_offset + (c.outer - 1) * c.dst_stride + c.block + 4;
        let src = awkward(src_len, 0xC0 + j as u64);
        let dst = Rng(0xD0 + j as u64).vec(dst_len, 100.0, 200.0);
        let mut want = cpu(&dst);
        cpu(&src).copy_blocks_into(&mut want, c).expect("cpu copy_blocks_into");
        assert_bits(&format!("copy_blocks_f32 ({c:?})"), &run_copy_blocks(&k, &src, &dst, c), want.as_f32());
    }
}

/// The mask for several seeds (0, a large one, one whose product with the golden ratio wraps)
/// and keep probabilities (1 keeps all: threshold 2^32; 0.3 has an inexact scale).
#[test]
fn dropout_mask_matches_the_cpu_hash() {
    let k = sim::load("elementwise");
    let n = 1337;
    for seed in [0u32, 1, 0xDEAD_BEEF, u32::MAX] {
        for keep in [0.5f32, 0.9, 0.3, 1.0, 0.01] {
            let mut mem = Memory::default();
            let seed_d = mem.upload(&[seed]);
            let out = mem.poisoned(4 * n);
            let args = [Arg::U64(out), Arg::U32(n as u32), Arg::U64(seed_d), Arg::U64(ops::keep_threshold(keep)), Arg::F32(1.0f32 / keep)];
            run(&k, &mut mem, "dropout_mask_f32", grid_1d(n), &args);
            let want = cpu(&[0.0]).dropout_mask(n, keep, seed).expect("cpu dropout_mask");
            assert_bits(&format!("dropout_mask_f32 (seed {seed:#x}, keep {keep})"), &mem.download(out, n), want.as_f32());
        }
    }
}

/// How every entry accesses memory (`crate::access`), at the wrapper's 1-D launch (block 256):
/// thread i of the grid-stride loop touches element i of each buffer, so a warp's request is
/// 128 consecutive bytes and every map, fill and mask is coalesced. The broadcasts at the
/// model's two uses (a conv bias over [2, 64, 32 x 32] planes: a warp reads one `v[m]`; a linear
/// bias over [200, 256] rows: consecutive `v[m]`) and the block copies of `w1.narrow(1, ..)`
/// (one tap's 128 columns of W1 [64, 448] at column 64, and its backward, all 32-byte aligned)
/// are coalesced too.
#[test]
fn access_elementwise() {
    use crate::access::{assert_coalesced, profile};
    let k = sim::load("elementwise");
    let mut mem = Memory::default();
    // conv1_2's planes at 1/49 of their size: 64 channels of 32 x 32 pixels, one image.
    let n = 64 * 1024;
    let what = "65536";
    let (a, b) = (mem.upload(&Rng(1).vec(n, 0.1, 4.0)), mem.upload(&Rng(2).vec(n, 0.1, 4.0)));
    let out = mem.poisoned(4 * n);
    let p = profile(&k, &mut mem, "fill_f32", grid_1d(n), &[Arg::U64(out), Arg::U32(n as u32), Arg::F32(0.5)], what);
    assert_coalesced("fill_f32", &p);
    for entry in ["neg_f32", "sqr_f32", "sqrt_f32", "exp_f32", "log_f32", "relu_f32"] {
        let p = profile(&k, &mut mem, entry, grid_1d(n), &[Arg::U64(out), Arg::U64(a), Arg::U32(n as u32)], what);
        assert_coalesced(entry, &p);
    }
    let args = [Arg::U64(out), Arg::U64(a), Arg::U32(n as u32), Arg::F32(1.7), Arg::F32(-0.3)];
    let p = profile(&k, &mut mem, "affine_f32", grid_1d(n), &args, what);
    assert_coalesced("affine_f32", &p);
    for entry in ["add_f32", "sub_f32", "mul_f32", "div_f32", "relu_backward_f32"] {
        let p = profile(&k, &mut mem, entry, grid_1d(n), &[Arg::U64(out), Arg::U64(a), Arg::U64(b), Arg::U32(n as u32)], what);
        assert_coalesced(entry, &p);
    }
    let args = [Arg::U64(a), Arg::U64(b), Arg::U32(n as u32), Arg::F32(0.37)];
    let p = profile(&k, &mut mem, "add_scaled_assign_f32", grid_1d(n), &args, what);
    assert_coalesced("add_scaled_assign_f32", &p);

    // Biases: a conv's over [batch 2, 64 channels, 32 x 32], a linear layer's over [200, 256].
    for s in [BroadcastSpec { outer: 2, mid: 64, inner: 1024 }, BroadcastSpec { outer: 200, mid: 256, inner: 1 }] {
        let n = s.outer * s.mid * s.inner;
        let x = mem.upload(&Rng(3).vec(n, -4.0, 4.0));
        let v = mem.upload(&Rng(4).vec(s.mid, -1.0, 1.0));
        let out = mem.poisoned(4 * n);
        let what = format!("[{}, {}, {}]", s.outer, s.mid, s.inner);
        let args = [Arg::U64(out), Arg::U64(x), Arg::U64(v), Arg::U32(n as u32), Arg::U32(s.mid as u32), Arg::U32(s.inner as u32)];
        for entry in ["broadcast_add_f32", "broadcast_mul_f32"] {
            let p = profile(&k, &mut mem, entry, grid_1d(n), &args, &what);
            assert_coalesced(entry, &p);
        }
    }

    // `w1.narrow(1, 64, 128)` of W1 [hidden 64, 448 = 64 + 128 + 256 tap channels] (the
    // paper's [4096, 5568] scaled down; the taps' column offsets are multiples of 64 there too),
    // then its backward, the block scattered back into a zeroed [64, 448].
    let (rows, full, start, len) = (64, 448, 64, 128);
    let w1 = mem.upload(&Rng(5).vec(rows * full, -1.0, 1.0));
    let block = mem.poisoned(4 * rows * len);
    let dw1 = mem.upload(&vec![0.0f32; rows * full]);
    let narrow = BlockCopy { outer: rows, block: len, src_stride: full, src_offset: start, dst_stride: len, dst_offset: 0 };
    let back = BlockCopy { outer: rows, block: len, src_stride: len, src_offset: 0, dst_stride: full, dst_offset: start };
    for (c, dst, src, what) in [(narrow, block, w1, "narrow [64, 448] to [64, 128]"), (back, dw1, block, "its backward")] {
        let total = c.outer * c.block;
        let [bl, ss, so, ds, dof] = [c.block, c.src_stride, c.src_offset, c.dst_stride, c.dst_offset].map(|v| Arg::U32(v as u32));
        let args = [Arg::U64(dst), Arg::U64(src), Arg::U32(total as u32), bl, ss, so, ds, dof];
        let p = profile(&k, &mut mem, "copy_blocks_f32", grid_1d(total), &args, what);
        assert_coalesced("copy_blocks_f32", &p);
    }

    // Every lane reads the one seed word (one sector per request), then stores its element.
    let seed = mem.upload(&[0xDEAD_BEEFu32]);
    let args = [Arg::U64(out), Arg::U32(n as u32), Arg::U64(seed), Arg::U64(ops::keep_threshold(0.5)), Arg::F32(2.0)];
    let p = profile(&k, &mut mem, "dropout_mask_f32", grid_1d(n), &args, "65536");
    assert_coalesced("dropout_mask_f32", &p);
}
