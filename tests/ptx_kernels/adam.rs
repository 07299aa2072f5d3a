//! `kernels/adam.ptx`: the Adam / AdamW update, one buffer per launch (`adam_f32`) and many in
//! one launch (`adam_multi_f32`, with the host tables of `ops::adam_step_multi`), bit for bit
//! against the CPU backend (`backend::cpu`, i.e. `cpu::adam::step`) for p, m and v, over
//! several steps.

use hyperseg_engine::backend::cpu::CpuStorage;
use hyperseg_engine::backend::cuda::kernels::ops;
use hyperseg_engine::backend::{AdamStep, BackendStorage};

use crate::sim::{self, Arg, Kernels, Memory};
use crate::{assert_bits, dims, grid_1d, run, Rng};

/// The hyper-parameters of step `t` (1-based): AdamW with weight decay, bias corrections of
/// step t computed as the trainer does.
fn hyper(t: i32) -> AdamStep {
    let (beta1, beta2) = (0.9f32, 0.999f32);
    AdamStep {
        lr: 3.0e-3,
        beta1,
        beta2,
        eps: 1.0e-8,
        weight_decay: 0.01,
        bias_correction1: 1.0 - beta1.powi(t),
        bias_correction2: 1.0 - beta2.powi(t),
    }
}

/// One tensor's state: parameters, gradient, first and second moments.
#[derive(Clone)]
struct State {
    p: Vec<f32>,
    g: Vec<f32>,
    m: Vec<f32>,
    v: Vec<f32>,
}

/// A random state of `n` elements mid-training (v >= 0), with a few gradients that are zero,
/// tiny, huge, negative zero, infinite and NaN.
fn state(n: usize, seed: u64) -> State {
    let mut rng = Rng(seed);
    let mut g = rng.vec(n, -1.0, 1.0);
    for (i, s) in [0.0, -0.0, 1.0e-30, 1.0e20, -3.0e-39, f32::INFINITY, f32::NAN].iter().enumerate().take(n) {
        g[(i * 131 + 7) % n] = *s;
    }
    State { p: rng.vec(n, -2.0, 2.0), g, m: rng.vec(n, -0.1, 0.1), v: rng.vec(n, 0.0, 0.01) }
}

/// `s` after one CPU step with `h`.
fn cpu_step(s: &State, h: &AdamStep) -> State {
    let (mut p, mut m, mut v) = (CpuStorage::F32(s.p.clone()), CpuStorage::F32(s.m.clone()), CpuStorage::F32(s.v.clone()));
    p.adam_step(&CpuStorage::F32(s.g.clone()), &mut m, &mut v, h).expect("cpu adam_step");
    State { p: p.as_f32().to_vec(), g: s.g.clone(), m: m.as_f32().to_vec(), v: v.as_f32().to_vec() }
}

/// Asserts p, m and v of `got` and `want` equal bit for bit.
fn assert_state(what: &str, got: &State, want: &State) {
    assert_bits(&format!("{what}: p"), &got.p, &want.p);
    assert_bits(&format!("{what}: m"), &got.m, &want.m);
    assert_bits(&format!("{what}: v"), &got.v, &want.v);
}

/// The device buffers of one tensor.
struct Device {
    p: u64,
    g: u64,
    m: u64,
    v: u64,
    n: usize,
}

fn upload(mem: &mut Memory, s: &State) -> Device {
    Device { p: mem.upload(&s.p), g: mem.upload(&s.g), m: mem.upload(&s.m), v: mem.upload(&s.v), n: s.p.len() }
}

fn download(mem: &Memory, d: &Device, g: &[f32]) -> State {
    State { p: mem.download(d.p, d.n), g: g.to_vec(), m: mem.download(d.m, d.n), v: mem.download(d.v, d.n) }
}

/// Runs `steps` steps of `adam_f32` on `s` as `ops::adam_step` launches it, checking each
/// against the CPU; panics on a difference.
fn check_single(k: &Kernels, s: &State, steps: i32) {
    let mut mem = Memory::default();
    let d = upload(&mut mem, s);
    let mut want = s.clone();
    for t in 1..=steps {
        let h = hyper(t);
        let args = [
            Arg::U64(d.p),
            Arg::U64(d.g),
            Arg::U64(d.m),
            Arg::U64(d.v),
            Arg::U32(d.n as u32),
            Arg::F32(h.lr),
            Arg::F32(h.beta1),
            Arg::F32(h.beta2),
            Arg::F32(h.eps),
            Arg::F32(h.weight_decay),
            Arg::F32(h.bias_correction1),
            Arg::F32(h.bias_correction2),
        ];
        run(k, &mut mem, "adam_f32", grid_1d(d.n), &args);
        want = cpu_step(&want, &h);
        assert_state(&format!("adam_f32 (n = {}, step {t})", d.n), &download(&mem, &d, &s.g), &want);
    }
}

#[test]
fn single_buffer_update_matches_the_cpu_bit_for_bit() {
    let k = sim::load("adam");
    for (j, n) in [1usize, 255, 1000].into_iter().enumerate() {
        check_single(&k, &state(n, 0xADA + j as u64), 3);
    }
}

/// Many tensors in one launch: one smaller than a block, one of exactly one chunk
/// (`ADAM_CHUNK`), one of two chunks and a remainder (each block's loop wraps 64 times over its
/// chunk), an empty one (no block) and one element; three steps, the scalars (lr, bc1, bc2)
/// re-uploaded per step as the graph feed does.
#[test]
fn multi_tensor_update_matches_the_cpu_bit_for_bit() {
    let k = sim::load("adam");
    let chunk = ops::ADAM_CHUNK as usize;
    let lens = [300usize, chunk, 2 * chunk + 77, 0, 1];
    let states: Vec<State> = lens.iter().enumerate().map(|(j, &n)| state(n, 0x3A + j as u64)).collect();
    let mut mem = Memory::default();
    let devs: Vec<Device> = states.iter().map(|s| upload(&mut mem, s)).collect();
    let table: Vec<u64> = devs.iter().flat_map(|d| [d.p, d.g, d.m, d.v, d.n as u64]).collect();
    let blocks = ops::adam_blocks(&lens.map(|n| n as u32));
    assert_eq!(blocks.len() / 2, 1 + 1 + 3 + 1, "blocks of {lens:?}");
    let (table_d, blocks_d) = (mem.upload(&table), mem.upload(&blocks));
    let shape = dims(ops::cfg(((blocks.len() / 2) as u32, 1, 1), ops::BLOCK));
    let mut want = states.clone();
    for t in 1..=3 {
        let h = hyper(t);
        let scalars = mem.upload(&[h.lr, h.bias_correction1, h.bias_correction2]);
        let args = [
            Arg::U64(table_d),
            Arg::U64(blocks_d),
            Arg::U32(ops::ADAM_CHUNK),
            Arg::U64(scalars),
            Arg::F32(h.beta1),
            Arg::F32(h.beta2),
            Arg::F32(h.eps),
            Arg::F32(h.weight_decay),
        ];
        run(&k, &mut mem, "adam_multi_f32", shape, &args);
        for (i, (d, s)) in devs.iter().zip(&states).enumerate() {
            want[i] = cpu_step(&want[i], &h);
            assert_state(&format!("adam_multi_f32 (tensor {i} of {} elements, step {t})", d.n), &download(&mem, d, &s.g), &want[i]);
        }
    }
}

/// The single-buffer check notices `v / bc1` where `v / bc2` belongs (a fault planted in the
/// PTX text of `adam_f32`).
#[test]
fn a_wrong_bias_correction_is_caught() {
    let k = sim::load_edited("adam", |t| t.replacen("div.rn.f32 %f29, %f23, %f8;", "div.rn.f32 %f29, %f23, %f7;", 1));
    let failure =
        std::panic::catch_unwind(|| check_single(&k, &state(1000, 0xFA17), 1)).expect_err("adam_f32 dividing v by bc1 matched the CPU");
    let message = failure.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(message.contains("adam_f32") && message.contains("CPU reference"), "the planted fault failed otherwise: {message}");
}

/// How both entries access memory (`crate::access`): thread i updates element i of p, g, m
/// and v (128 consecutive bytes per warp and buffer, every buffer 32-byte aligned), and in
/// `adam_multi_f32` every lane of a block reads the same scalar and table words (one sector a
/// request). `adam_f32` on one conv weight (64 -> 64, 3 x 3), `adam_multi_f32` on a scaled-down
/// model's parameters (two convs with biases, a [256, 448] first MLP layer, the last over 2
/// classes) as `ops::adam_step_multi` launches it: all coalesced.
#[test]
fn access_adam() {
    use crate::access::{assert_coalesced, profile};
    let k = sim::load("adam");
    let mut mem = Memory::default();
    let h = hyper(3);
    let d = upload(&mut mem, &state(64 * 64 * 9, 0xACE));
    let hp = [h.lr, h.beta1, h.beta2, h.eps, h.weight_decay, h.bias_correction1, h.bias_correction2];
    let [lr, b1, b2, eps, wd, bc1, bc2] = hp.map(Arg::F32);
    let args = [Arg::U64(d.p), Arg::U64(d.g), Arg::U64(d.m), Arg::U64(d.v), Arg::U32(d.n as u32), lr, b1, b2, eps, wd, bc1, bc2];
    let p = profile(&k, &mut mem, "adam_f32", grid_1d(d.n), &args, "36864");
    assert_coalesced("adam_f32", &p);

    let lens = [64 * 64 * 9, 64, 128 * 64 * 9, 128, 256 * 448, 256, 2 * 256, 2];
    let devs: Vec<Device> = lens.iter().enumerate().map(|(j, &n)| upload(&mut mem, &state(n, 0xAD0 + j as u64))).collect();
    let table: Vec<u64> = devs.iter().flat_map(|d| [d.p, d.g, d.m, d.v, d.n as u64]).collect();
    let blocks = ops::adam_blocks(&lens.map(|n| n as u32));
    let (table_d, blocks_d) = (mem.upload(&table), mem.upload(&blocks));
    let scalars = mem.upload(&[h.lr, h.bias_correction1, h.bias_correction2]);
    let args = [Arg::U64(table_d), Arg::U64(blocks_d), Arg::U32(ops::ADAM_CHUNK), Arg::U64(scalars), b1, b2, eps, wd];
    let nblocks = (blocks.len() / 2) as u32;
    let what = format!("{} tensors, {nblocks} chunks", lens.len());
    let p = profile(&k, &mut mem, "adam_multi_f32", dims(ops::cfg((nblocks, 1, 1), ops::BLOCK)), &args, &what);
    assert_coalesced("adam_multi_f32", &p);
}
