//! `kernels/finite.ptx`: `nonfinite_multi_f32`, the one-launch divergence check over many
//! buffers, bit for bit against `cpu::elementwise::non_finite` (through
//! `CpuStorage::non_finite`, which calls it), with the wrapper's host tables
//! (`ops::nonfinite_tables`), chunk (`ops::FINITE_CHUNK`) and block (`ops::BLOCK`).
//!
//! The answer is an OR of per-element flags, so it is compared bit for bit. Unlike most
//! outputs it is not poisoned: the wrapper zero-fills it and the kernel only ORs into it, so a
//! zeroed word is its real starting state (and an untouched word is the right answer when
//! everything is finite).

use hyperseg_engine::backend::cpu::CpuStorage;
use hyperseg_engine::backend::cuda::kernels::ops;
use hyperseg_engine::backend::BackendStorage;

use crate::sim::{self, Arg, Kernels, Memory};
use crate::{assert_bits, dims, run, Rng};

const ENTRY: &str = "nonfinite_multi_f32";

/// Finite values of every kind: random, signed zeros, the extremes, subnormals.
fn finite(n: usize, seed: u64) -> Vec<f32> {
    let mut v = Rng(seed).vec(n, -1.0e3, 1.0e3);
    let special = [0.0, -0.0, f32::MAX, -f32::MAX, f32::MIN_POSITIVE, 1.0e-40, -1.0e-45];
    for (i, s) in special.iter().enumerate() {
        if n > 0 {
            v[(i * 7919) % n] = *s;
        }
    }
    v
}

/// Runs the kernel over `buffers` as the wrapper does; returns the answer as f32.
fn run_kernel(k: &Kernels, buffers: &[Vec<f32>]) -> f32 {
    let mut mem = Memory::default();
    let bufs: Vec<(u64, u32)> = buffers.iter().map(|b| (mem.upload(b), b.len() as u32)).collect();
    let (table, blocks) = ops::nonfinite_tables(&bufs);
    let out = mem.upload(&[0u32]);
    let nblocks = (blocks.len() / 2) as u32;
    if nblocks > 0 {
        let (table, blocks) = (mem.upload(&table), mem.upload(&blocks));
        let args = [Arg::U64(out), Arg::U64(table), Arg::U64(blocks), Arg::U32(ops::FINITE_CHUNK)];
        run(k, &mut mem, ENTRY, dims(ops::cfg((nblocks, 1, 1), ops::BLOCK)), &args);
    }
    f32::from_bits(mem.download::<u32>(out, 1)[0])
}

/// The CPU reference, `cpu::elementwise::non_finite`.
fn want(buffers: &[Vec<f32>]) -> f32 {
    let s: Vec<CpuStorage> = buffers.iter().map(|b| CpuStorage::F32(b.clone())).collect();
    let refs: Vec<&CpuStorage> = s.iter().collect();
    CpuStorage::non_finite(&refs).unwrap_or_else(|e| panic!("CPU reference: {e}")).as_f32()[0]
}

/// Buffers of awkward sizes: one over two chunks (the second partial), an empty one (left out
/// of the table), one smaller than a block, a single element.
fn buffers() -> Vec<Vec<f32>> {
    let big = ops::FINITE_CHUNK as usize + 4465;
    vec![finite(big, 1), finite(0, 2), finite(300, 3), finite(1, 4)]
}

/// Every value finite: the answer is +0.0 (the word untouched).
#[test]
fn all_finite_gives_plus_zero() {
    let k = sim::load("finite");
    let b = buffers();
    let got = run_kernel(&k, &b);
    assert_bits(ENTRY, &[got], &[want(&b)]);
    assert_eq!(got.to_bits(), 0, "{ENTRY}: every value finite gave {got:e}");
}

/// One non-finite value at each awkward place (first and last element of a buffer, both sides
/// of a chunk boundary, the last thread's stride, the one-element buffer), of each kind (NaN
/// of either sign, a signalling NaN, +inf, -inf): +inf for an infinity, NaN for a NaN.
#[test]
fn one_non_finite_value_anywhere_is_found() {
    let k = sim::load("finite");
    let base = buffers();
    let chunk = ops::FINITE_CHUNK as usize;
    let places = [(0, 0), (0, chunk - 1), (0, chunk), (0, base[0].len() - 1), (2, 255), (2, 299), (3, 0)];
    let values = [f32::NAN, -f32::NAN, f32::from_bits(0x7F80_0001), f32::INFINITY, f32::NEG_INFINITY];
    for (i, &(b, e)) in places.iter().enumerate() {
        let v = values[i % values.len()];
        let mut bufs = base.clone();
        bufs[b][e] = v;
        let (got, want) = (run_kernel(&k, &bufs), want(&bufs));
        assert_bits(&format!("{ENTRY} with {v:e} at element {e} of buffer {b}"), &[got], &[want]);
        let expect = if v.is_nan() { 0x7FC0_0000 } else { 0x7F80_0000 };
        assert_eq!(got.to_bits(), expect, "{ENTRY} with {v:e} at element {e} of buffer {b} gave {:#010x}", got.to_bits());
    }
}

/// Infinities and NaNs together, in several buffers and chunks: the OR is a NaN; infinities
/// of both signs alone give +inf.
#[test]
fn flags_combine_by_or() {
    let k = sim::load("finite");
    let mut bufs = buffers();
    bufs[0][70_000] = f32::NEG_INFINITY;
    bufs[2][17] = f32::INFINITY;
    let (got, w) = (run_kernel(&k, &bufs), want(&bufs));
    assert_bits(&format!("{ENTRY} (infinities of both signs)"), &[got], &[w]);
    assert_eq!(got.to_bits(), 0x7F80_0000, "{ENTRY}: infinities alone gave {got:e}");
    bufs[0][3] = f32::NAN;
    let (got, w) = (run_kernel(&k, &bufs), want(&bufs));
    assert_bits(&format!("{ENTRY} (infinities and a NaN)"), &[got], &[w]);
    assert_eq!(got.to_bits(), 0x7FC0_0000, "{ENTRY}: infinities and a NaN gave {got:e}");
}

/// The check notices a kernel that tests the value instead of its magnitude for infinity (a
/// fault planted in the text: -inf then goes unseen).
#[test]
fn a_missed_negative_infinity_is_caught() {
    let k = sim::load_edited("finite", |t| t.replacen("setp.eq.f32 %p3, %f2, 0f7F800000;", "setp.eq.f32 %p3, %f1, 0f7F800000;", 1));
    let mut bufs = buffers();
    bufs[0][70_000] = f32::NEG_INFINITY;
    let (got, w) = (run_kernel(&k, &bufs), want(&bufs));
    assert_ne!(got.to_bits(), w.to_bits(), "{ENTRY} blind to -inf still gave the CPU's {w:e}");
}

/// How `nonfinite_multi_f32` accesses memory (`crate::access`) over a training step's
/// gradients, scaled down (conv 64 -> 64 and 64 -> 128 3 x 3 weights and their biases, a
/// [256, 448] first MLP layer, the last over 2 classes), with one infinity planted so that
/// the atomic runs: every lane of a block reads the same table words (one sector a request),
/// thread t of a block reads element start + t + k * 256 of its buffer (128 consecutive bytes
/// per warp; every buffer and chunk starts 32-byte aligned), and the lanes that found a flag OR
/// it into the one output word. All coalesced.
#[test]
fn access_finite() {
    use crate::access::{assert_coalesced, profile};
    let k = sim::load("finite");
    let mut mem = Memory::default();
    let lens = [64 * 64 * 9, 64, 128 * 64 * 9, 128, 256 * 448, 256, 2 * 256, 2];
    let mut grads: Vec<Vec<f32>> = lens.iter().enumerate().map(|(j, &n)| finite(n, 0xF0 + j as u64)).collect();
    grads[2][5000] = f32::INFINITY;
    let bufs: Vec<(u64, u32)> = grads.iter().map(|b| (mem.upload(b), b.len() as u32)).collect();
    let (table, blocks) = ops::nonfinite_tables(&bufs);
    let out = mem.upload(&[0u32]);
    let nblocks = (blocks.len() / 2) as u32;
    let (table, blocks) = (mem.upload(&table), mem.upload(&blocks));
    let args = [Arg::U64(out), Arg::U64(table), Arg::U64(blocks), Arg::U32(ops::FINITE_CHUNK)];
    let what = format!("{} gradients, {nblocks} chunks", lens.len());
    let p = profile(&k, &mut mem, "nonfinite_multi_f32", dims(ops::cfg((nblocks, 1, 1), ops::BLOCK)), &args, &what);
    assert_coalesced(ENTRY, &p);
    assert!(p.atomic.requests > 0, "{ENTRY}: the planted infinity made no atomic: {p}");
    assert_eq!(mem.download::<u32>(out, 1)[0], 0x7F80_0000, "{ENTRY}: the planted infinity was missed");
}
