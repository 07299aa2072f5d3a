//! `kernels/reduce.ptx`, launched as `ops::reduce`'s wrappers launch it: `sum_all`
//! (`sum_partial_f32` then `sum_final_f64`) against `CpuStorage::sum_all`, and `reduce_to_mid`
//! (`reduce_cols_partial_f32` when inner == 1, `reduce_mid_partial_f32` otherwise, each followed
//! by `reduce_cols_final_f64`) against `CpuStorage::reduce_to_mid`.
//!
//! Both sides accumulate in f64 and round once to f32, but in different orders, and the header
//! promises a fixed order (reproducibility), not the CPU's. So the bit-for-bit checks use inputs
//! whose f64 sums are exact in every order: `Rng` values in [-4, 4) are multiples of 2^-21, and
//! any sum of fewer than 2^30 of them is a multiple of 2^-21 below 2^32 = 2^53 * 2^-21, exactly
//! representable in f64. Inputs spread over many binades are compared to the rounding error any
//! two f64 summation orders can differ by (see [`order_bound`]).

use hyperseg_engine::backend::cpu::CpuStorage;
use hyperseg_engine::backend::cuda::kernels::ops::{self, BLOCK, PLANE_CHUNK};
use hyperseg_engine::backend::{BackendStorage, BroadcastSpec};

use crate::sim::{self, Arg, Kernels, Memory};
use crate::{assert_bits, assert_close, dims, run, Rng};

/// `sum_final_f64` as the wrappers launch it (grid 1, block 256): `out[0] = (f32)(scale *
/// sum(partial[0..count]))` into a new poisoned buffer, whose address it returns.
pub fn sum_final(k: &Kernels, mem: &mut Memory, partial: u64, count: u32, scale: f64) -> u64 {
    let out = mem.poisoned(4);
    let args = [Arg::U64(out), Arg::U64(partial), Arg::U32(count), Arg::F64(scale)];
    run(k, mem, "sum_final_f64", dims(ops::cfg((1, 1, 1), BLOCK)), &args);
    out
}

/// `reduce_cols_final_f64` as the wrappers launch it (`ops::grid_1d`): the column sums
/// of `partial [chunks, cols]` into a new poisoned buffer, whose address it returns.
pub fn cols_final(k: &Kernels, mem: &mut Memory, partial: u64, cols: u32, chunks: u32) -> u64 {
    let out = mem.poisoned(4 * cols as usize);
    let args = [Arg::U64(out), Arg::U64(partial), Arg::U32(cols), Arg::U32(chunks)];
    run(k, mem, "reduce_cols_final_f64", dims(ops::grid_1d(cols)), &args);
    out
}

/// `ops::sum_all` in the simulator: `sum_partial_f32` on `ops::sum_blocks(n)` blocks of 256,
/// then `sum_final_f64` with scale 1.
fn sum_all_sim(k: &Kernels, x: &[f32]) -> f32 {
    let n = x.len() as u32;
    let g = ops::sum_blocks(n);
    let mut mem = Memory::default();
    let xd = mem.upload(x);
    let partial = mem.poisoned(8 * g as usize);
    run(k, &mut mem, "sum_partial_f32", dims(ops::cfg((g, 1, 1), BLOCK)), &[Arg::U64(partial), Arg::U64(xd), Arg::U32(n)]);
    let out = sum_final(k, &mut mem, partial, g, 1.0);
    mem.download::<f32>(out, 1)[0]
}

fn sum_all_cpu(x: &[f32]) -> f32 {
    CpuStorage::F32(x.to_vec()).sum_all().expect("CPU sum_all").as_f32()[0]
}

/// `ops::reduce_to_mid` in the simulator (outer, mid and inner all > 0): for inner == 1
/// `reduce_cols_partial_f32` on grid (ceil(mid/256), chunks) with `ops::row_chunks`, otherwise
/// `reduce_mid_partial_f32` on grid (P, min(mid, 65535)) with `ops::plane_split`; then
/// `reduce_cols_final_f64` over the partials.
fn reduce_to_mid_sim(k: &Kernels, x: &[f32], s: BroadcastSpec) -> Vec<f32> {
    assert!(s.outer > 0 && s.mid > 0 && s.inner > 0, "the wrapper launches nothing for {s:?}");
    let (outer, mid, inner) = (s.outer as u32, s.mid as u32, s.inner as u32);
    let mut mem = Memory::default();
    let xd = mem.upload(x);
    let out = if inner == 1 {
        let (chunks, rpc) = ops::row_chunks(outer, mid);
        let partial = mem.poisoned(8 * chunks as usize * mid as usize);
        let args = [Arg::U64(partial), Arg::U64(xd), Arg::U32(outer), Arg::U32(mid), Arg::U32(rpc)];
        run(k, &mut mem, "reduce_cols_partial_f32", dims(ops::cfg((mid.div_ceil(BLOCK), chunks, 1), BLOCK)), &args);
        cols_final(k, &mut mem, partial, mid, chunks)
    } else {
        let (nchunk, pieces, block) = ops::plane_split("reduce_to_mid", s.outer, s.mid, s.inner).expect("plane_split");
        let partial = mem.poisoned(8 * pieces as usize * mid as usize);
        let args =
            [Arg::U64(partial), Arg::U64(xd), Arg::U32(outer), Arg::U32(mid), Arg::U32(inner), Arg::U32(PLANE_CHUNK), Arg::U32(nchunk)];
        run(k, &mut mem, "reduce_mid_partial_f32", dims(ops::partial_cfg(pieces, mid, block)), &args);
        cols_final(k, &mut mem, partial, mid, pieces)
    };
    mem.download(out, s.mid)
}

fn reduce_to_mid_cpu(x: &[f32], s: BroadcastSpec) -> Vec<f32> {
    CpuStorage::F32(x.to_vec()).reduce_to_mid(s).expect("CPU reduce_to_mid").as_f32().to_vec()
}

fn spec(outer: usize, mid: usize, inner: usize) -> BroadcastSpec {
    BroadcastSpec { outer, mid, inner }
}

/// How far apart two f64 sums of `x` in different orders can be before their rounding to f32:
/// each of the n - 1 additions errs by at most 2^-53 of a partial sum, itself at most sum |x|.
fn order_bound(x: &[f32]) -> f32 {
    let abs: f64 = x.iter().map(|v| v.abs() as f64).sum();
    (2.0 * x.len() as f64 * abs * 2f64.powi(-53)) as f32
}

/// Values over 60 binades (random mantissa, sign and exponent in [-30, 30)).
fn wide_range(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = Rng(seed);
    (0..n).map(|_| rng.f(-1.0, 1.0) * 2f32.powi(rng.below(60) as i32 - 30)).collect()
}

#[test]
fn sum_all_matches_cpu_bitwise() {
    let k = sim::load("reduce");
    // One partial block, a full one, one past it, several blocks with a ragged tail.
    for n in [1usize, 31, 256, 257, 1000, 65_537] {
        let x = Rng(0x5u64 + n as u64).vec(n, -4.0, 4.0);
        assert_bits(&format!("sum_partial_f32 + sum_final_f64, n = {n}"), &[sum_all_sim(&k, &x)], &[sum_all_cpu(&x)]);
    }
}

/// n > 3 * 1024 * 256: the grid is capped at 1024 blocks, every thread runs the four-load loop
/// once and a third of them one more element in the tail loop.
#[test]
fn sum_all_grid_stride_wraps_through_the_four_load_loop() {
    let k = sim::load("reduce");
    let n = 1_200_001;
    assert_eq!(ops::sum_blocks(n as u32), ops::MAX_SUM_BLOCKS, "the grid is not capped at n = {n}");
    let x = Rng(0xB16).vec(n, -4.0, 4.0);
    assert_bits(&format!("sum_partial_f32 + sum_final_f64, n = {n}"), &[sum_all_sim(&k, &x)], &[sum_all_cpu(&x)]);
}

#[test]
fn sum_all_of_wide_range_values_agrees_to_f64_rounding() {
    let k = sim::load("reduce");
    for n in [300usize, 10_001] {
        let x = wide_range(n, 0xD1CE + n as u64);
        let what = format!("sum_partial_f32 + sum_final_f64 over 60 binades, n = {n}");
        assert_close(&what, &[sum_all_sim(&k, &x)], &[sum_all_cpu(&x)], f32::EPSILON, order_bound(&x));
    }
}

#[test]
fn sum_all_propagates_nan_and_infinities() {
    let k = sim::load("reduce");
    let base = Rng(0x1F).vec(700, -4.0, 4.0);
    let cases: [(&str, &[(usize, f32)]); 5] = [
        ("a NaN", &[(333, f32::NAN)]),
        ("+inf", &[(5, f32::INFINITY)]),
        ("-inf in the last block", &[(699, f32::NEG_INFINITY)]),
        ("+inf and -inf", &[(1, f32::INFINITY), (600, f32::NEG_INFINITY)]),
        ("two f32::MAX (the f64 sum overflows f32)", &[(10, f32::MAX), (500, f32::MAX)]),
    ];
    for (what, plant) in cases {
        let mut x = base.clone();
        for &(i, v) in plant {
            x[i] = v;
        }
        assert_bits(&format!("sum_partial_f32 + sum_final_f64 with {what}"), &[sum_all_sim(&k, &x)], &[sum_all_cpu(&x)]);
    }
}

/// A sum of zeros is +0.0 whatever their signs: the kernels and the CPU both start from +0.0.
#[test]
fn sum_all_of_signed_zeros_is_plus_zero() {
    let k = sim::load("reduce");
    for x in [vec![-0.0f32; 300], vec![0.0; 300], (0..300).map(|i| if i % 3 == 0 { 0.0 } else { -0.0 }).collect()] {
        let got = sum_all_sim(&k, &x);
        assert_bits("sum_partial_f32 + sum_final_f64 of signed zeros", &[got], &[sum_all_cpu(&x)]);
        assert_eq!(got.to_bits(), 0, "a sum of signed zeros is +0.0");
    }
}

/// inner == 1 (`reduce_cols_partial_f32`): one block, two column blocks, 300 one-row chunks,
/// three column blocks, a ragged last chunk (1025 rows in chunks of 2).
#[test]
fn reduce_cols_matches_reduce_to_mid() {
    assert_eq!(ops::row_chunks(1025, 5), (513, 2), "1025 rows no longer end in a ragged chunk");
    let k = sim::load("reduce");
    for (rows, cols) in [(1usize, 1usize), (37, 300), (300, 3), (40, 513), (1025, 5)] {
        let s = spec(rows, cols, 1);
        let x = Rng(0xC0 + rows as u64 * 7 + cols as u64).vec(rows * cols, -4.0, 4.0);
        let what = format!("reduce_cols_partial_f32 + reduce_cols_final_f64, [{rows}, {cols}]");
        assert_bits(&what, &reduce_to_mid_sim(&k, &x, s), &reduce_to_mid_cpu(&x, s));
    }
}

/// inner > 1 (`reduce_mid_partial_f32`): a 32-thread block, one and several 2048-element chunks
/// per plane (the last one ragged), several images, mid not a multiple of anything.
#[test]
fn reduce_mid_matches_reduce_to_mid() {
    let k = sim::load("reduce");
    for (outer, mid, inner) in [(3usize, 5usize, 7usize), (2, 3, 2381), (1, 1, 5000), (4, 70, 33), (2, 2, 4096)] {
        let s = spec(outer, mid, inner);
        let x = Rng(0x3D + (outer * mid * inner) as u64).vec(outer * mid * inner, -4.0, 4.0);
        let what = format!("reduce_mid_partial_f32 + reduce_cols_final_f64, [{outer}, {mid}, {inner}]");
        assert_bits(&what, &reduce_to_mid_sim(&k, &x, s), &reduce_to_mid_cpu(&x, s));
    }
}

/// `reduce_mid_partial_f32` with gridDim.y cut to 3 (`crate::with_grid_y_cap`): each block
/// walks the middle index by gridDim.y, as past 65535 on a GPU.
#[test]
fn reduce_mid_walks_past_a_short_grid() {
    let k = sim::load("reduce");
    let s = spec(4, 70, 33);
    let x = Rng(0x3E).vec(4 * 70 * 33, -4.0, 4.0);
    let got = crate::with_grid_y_cap(3, || reduce_to_mid_sim(&k, &x, s));
    assert_bits("reduce_mid_partial_f32 + reduce_cols_final_f64 on a short grid", &got, &reduce_to_mid_cpu(&x, s));
}

#[test]
fn reduce_to_mid_of_wide_range_values_agrees_to_f64_rounding() {
    let k = sim::load("reduce");
    for s in [spec(501, 7, 1), spec(3, 4, 2500)] {
        let x = wide_range(s.outer * s.mid * s.inner, 0x77 + s.inner as u64);
        let what = format!("reduce_to_mid over 60 binades, {s:?}");
        assert_close(&what, &reduce_to_mid_sim(&k, &x, s), &reduce_to_mid_cpu(&x, s), f32::EPSILON, order_bound(&x));
    }
}

#[test]
fn reduce_to_mid_propagates_nan_and_infinities() {
    let k = sim::load("reduce");
    for s in [spec(40, 6, 1), spec(3, 6, 40)] {
        let mut x = Rng(0x99).vec(s.outer * s.mid * s.inner, -4.0, 4.0);
        let at = |o: usize, m: usize, i: usize| (o * s.mid + m) * s.inner + i;
        x[at(1, 0, 0)] = f32::NAN;
        x[at(2, 1, 0)] = f32::INFINITY;
        x[at(0, 2, 0)] = f32::INFINITY;
        x[at(s.outer - 1, 2, s.inner - 1)] = f32::NEG_INFINITY;
        x[at(0, 3, 0)] = f32::MAX;
        x[at(1, 3, 0)] = f32::MAX;
        let what = format!("reduce_to_mid with NaN, inf, inf - inf and an f32 overflow, {s:?}");
        assert_bits(&what, &reduce_to_mid_sim(&k, &x, s), &reduce_to_mid_cpu(&x, s));
    }
}

/// A partial stored at the image's row instead of the block's (`o * mid + m` for
/// `b * mid + m`, wrong whenever a plane has more than one chunk) is caught: the two chunks of a
/// plane then store to one location, which the simulator reports as a data race between blocks.
#[test]
fn a_partial_stored_at_the_wrong_row_is_caught() {
    let k = sim::load_edited("reduce", |t| {
        t.replacen("mul.wide.u32 %rd5, %r6, %r2;             // b * mid", "mul.wide.u32 %rd5, %r7, %r2;             // b * mid", 1)
    });
    let s = spec(2, 3, 2381);
    let x = Rng(0xFA).vec(s.outer * s.mid * s.inner, -4.0, 4.0);
    let err = crate::launch_error(|| {
        reduce_to_mid_sim(&k, &x, s);
    });
    assert!(err.contains("data race"), "reduce_mid_partial_f32 storing partials at o * mid + m was not reported as a race: {err}");
}

/// How every entry accesses memory (`crate::access`), launched as the wrappers launch them:
/// `sum_partial_f32` over 2 x 64 x 32 x 32 (thread i reads element i + k * stride: 128
/// consecutive bytes per warp) and `sum_final_f64` over its 512 partials; the linear-layer
/// bias gradient (`reduce_cols_partial_f32` on [200, 256], consecutive threads on consecutive
/// columns, then `reduce_cols_final_f64`); the conv bias gradient (`reduce_mid_partial_f32`) over
/// [2, 64, 32 x 32]. All coalesced, and the block sum's shared slots (one f64 per warp, written
/// by lane 0, read by the first lanes of warp 0) are conflict-free. Over conv5's 14 x 14 planes
/// the conv bias gradient reads 12% more sectors than its bytes need (the planes are 784 bytes
/// apart, so every other plane starts 16 bytes past a sector boundary; see the comment below).
#[test]
fn access_reduce() {
    use crate::access::{assert_coalesced, profile};
    let k = sim::load("reduce");
    let mut mem = Memory::default();

    let n = 2 * 64 * 1024;
    let x = mem.upload(&Rng(1).vec(n, -4.0, 4.0));
    let g = ops::sum_blocks(n as u32);
    let partial = mem.poisoned(8 * g as usize);
    let args = [Arg::U64(partial), Arg::U64(x), Arg::U32(n as u32)];
    let p = profile(&k, &mut mem, "sum_partial_f32", dims(ops::cfg((g, 1, 1), BLOCK)), &args, "131072");
    assert_coalesced("sum_partial_f32", &p);
    let out = mem.poisoned(4);
    let args = [Arg::U64(out), Arg::U64(partial), Arg::U32(g), Arg::F64(1.0)];
    let p = profile(&k, &mut mem, "sum_final_f64", dims(ops::cfg((1, 1, 1), BLOCK)), &args, &format!("{g} partials"));
    assert_coalesced("sum_final_f64", &p);

    // A linear layer's bias gradient: its output gradient [points, hidden], 1600 x 4096 in the
    // paper's model, here 200 x 256.
    let (rows, cols) = (200u32, 256u32);
    let x = mem.upload(&Rng(2).vec((rows * cols) as usize, -4.0, 4.0));
    let (chunks, rpc) = ops::row_chunks(rows, cols);
    let partial = mem.poisoned(8 * (chunks * cols) as usize);
    let args = [Arg::U64(partial), Arg::U64(x), Arg::U32(rows), Arg::U32(cols), Arg::U32(rpc)];
    let d = dims(ops::cfg((cols.div_ceil(BLOCK), chunks, 1), BLOCK));
    let p = profile(&k, &mut mem, "reduce_cols_partial_f32", d, &args, "[200, 256]");
    assert_coalesced("reduce_cols_partial_f32", &p);
    let out = mem.poisoned(4 * cols as usize);
    let args = [Arg::U64(out), Arg::U64(partial), Arg::U32(cols), Arg::U32(chunks)];
    let p = profile(&k, &mut mem, "reduce_cols_final_f64", dims(ops::grid_1d(cols)), &args, &format!("[{chunks}, 256] partials"));
    assert_coalesced("reduce_cols_final_f64", &p);

    // A conv's bias gradient over [batch 2, 64 channels, plane]: 32 x 32 planes (4 KiB each,
    // aligned), then conv5's 14 x 14 planes (the paper's 512 channels cut to 64).
    let mid_partial = |mem: &mut Memory, (outer, mid, inner): (usize, usize, usize)| {
        let x = mem.upload(&Rng(3).vec(outer * mid * inner, -4.0, 4.0));
        let (nchunk, pieces, block) = ops::plane_split("reduce_to_mid", outer, mid, inner).expect("plane_split");
        let partial = mem.poisoned(8 * pieces as usize * mid);
        let [o, m, i] = [outer, mid, inner].map(|v| Arg::U32(v as u32));
        let args = [Arg::U64(partial), Arg::U64(x), o, m, i, Arg::U32(PLANE_CHUNK), Arg::U32(nchunk)];
        let d = dims(ops::partial_cfg(pieces, mid as u32, block));
        profile(&k, mem, "reduce_mid_partial_f32", d, &args, &format!("[{outer}, {mid}, {inner}]"))
    };
    let p = mid_partial(&mut mem, (2, 64, 1024));
    assert_coalesced("reduce_mid_partial_f32", &p);
    // 196 elements per plane: block 224, warps 0-5 read 128 bytes each, warp 6 its last 16.
    // Plane j starts at 784 j bytes, 16 mod 32 for odd j: its six full warps take 5 sectors
    // each instead of 4, its last one still 1 (bytes 16..32 of a sector). Half the 128 planes
    // take 31 sectors, half 25, where 25 hold each: 56 / 50 = x1.12.
    let p = mid_partial(&mut mem, (2, 64, 196));
    assert_eq!((p.load.sectors, p.load.ideal), (64 * 31 + 64 * 25, 128 * 25), "reduce_mid_partial_f32 over 14 x 14 planes: {p}");
    assert_eq!((p.store.overhead(), p.shared.conflicts()), (1.0, 1.0), "reduce_mid_partial_f32 over 14 x 14 planes: {p}");
}
