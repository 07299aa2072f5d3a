//! `kernels/pool.ptx`: 2x2 stride-2 max pooling, forward and backward, bit for bit against the
//! CPU backend (`backend::cpu`, i.e. `cpu::pool::max_pool2x2{,_backward}`), with the launch
//! shape and arguments of `ops::pool`. Even and odd sizes (the last row / column belongs to no
//! window), several images and channels, and windows full of ties, signed zeros, infinities and
//! NaNs, which the header says resolve as the CPU's `argmax4` (first strictly greater value in
//! row-major order).

use hyperseg_engine::backend::cpu::CpuStorage;
use hyperseg_engine::backend::{BackendStorage, Nchw};

use crate::sim::{self, Arg, Kernels, Memory};
use crate::{assert_bits, grid_1d, run, Rng};

/// Extents: odd width, odd height, both odd, both even; one with more than one block of
/// outputs (2 * 3 * 8 * 11 = 528), and planes of a single window or a single row of windows.
const SHAPES: [Nchw; 6] = [
    Nchw { n: 2, c: 3, h: 17, w: 23 },
    Nchw { n: 1, c: 4, h: 8, w: 9 },
    Nchw { n: 3, c: 2, h: 7, w: 6 },
    Nchw { n: 2, c: 5, h: 10, w: 12 },
    Nchw { n: 5, c: 1, h: 2, w: 2 },
    Nchw { n: 1, c: 3, h: 3, w: 17 },
];

/// Inputs with many ties: small integers (ties inside most windows), signed zeros (equal but
/// of different bits, so the first one must win), +-inf and NaN (which never compares greater,
/// so a NaN first in its window wins and one later is skipped), and random values.
fn tied(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = Rng(seed);
    (0..n)
        .map(|_| match rng.below(16) {
            0 => 0.0,
            1 => -0.0,
            2 => f32::NAN,
            3 => f32::INFINITY,
            4 => f32::NEG_INFINITY,
            5..=7 => rng.f(-1.0, 1.0),
            k => (k % 3) as f32 - 1.0,
        })
        .collect()
}

/// `(oh, ow, total)` as `ops::max_pool2x2{,_backward}` compute them (floor mode).
fn outputs(d: Nchw) -> (usize, usize, usize) {
    let (oh, ow) = (d.h / 2, d.w / 2);
    (oh, ow, d.n * d.c * oh * ow)
}

/// Runs `max_pool2x2_f32` as `ops::max_pool2x2` launches it; returns y.
fn run_forward(k: &Kernels, x: &[f32], d: Nchw) -> Vec<f32> {
    let (oh, ow, total) = outputs(d);
    let mut mem = Memory::default();
    let xd = mem.upload(x);
    let y = mem.poisoned(4 * total);
    let [h, w, oh, ow] = [d.h, d.w, oh, ow].map(|v| Arg::U32(v as u32));
    run(k, &mut mem, "max_pool2x2_f32", grid_1d(total), &[Arg::U64(y), Arg::U64(xd), Arg::U32(total as u32), h, w, oh, ow]);
    mem.download(y, total)
}

/// Runs `max_pool2x2_backward_f32` as `ops::max_pool2x2_backward` launches it: dx zero-filled
/// first when h or w is odd (the wrapper's `dev.zeros`), otherwise poisoned, so that every
/// element the kernel should write but does not shows as NaN.
fn run_backward(k: &Kernels, x: &[f32], dy: &[f32], d: Nchw) -> Vec<f32> {
    let (oh, ow, total) = outputs(d);
    let mut mem = Memory::default();
    let (xd, dyd) = (mem.upload(x), mem.upload(dy));
    let dx = if d.h % 2 == 1 || d.w % 2 == 1 { mem.upload(&vec![0.0f32; x.len()]) } else { mem.poisoned(4 * x.len()) };
    let [h, w, oh, ow] = [d.h, d.w, oh, ow].map(|v| Arg::U32(v as u32));
    let args = [Arg::U64(dx), Arg::U64(xd), Arg::U64(dyd), Arg::U32(total as u32), h, w, oh, ow];
    run(k, &mut mem, "max_pool2x2_backward_f32", grid_1d(total), &args);
    mem.download(dx, x.len())
}

/// Checks the forward of `k` against the CPU on every shape; panics on a difference.
fn check_forward(k: &Kernels) {
    for (j, d) in SHAPES.into_iter().enumerate() {
        let x = tied(d.len(), 0x9001 + j as u64);
        let want = CpuStorage::F32(x.clone()).max_pool2x2(d).expect("cpu max_pool2x2");
        assert_bits(&format!("max_pool2x2_f32 ({d:?})"), &run_forward(k, &x, d), want.as_f32());
    }
}

#[test]
fn forward_takes_the_first_maximum_as_the_cpu() {
    check_forward(&sim::load("pool"));
}

/// The incoming gradient carries -0 too: the kernel's `0 + g` must give +0 as the CPU's `+=`
/// into zeros does.
#[test]
fn backward_routes_the_gradient_to_the_first_maximum_as_the_cpu() {
    let k = sim::load("pool");
    for (j, d) in SHAPES.into_iter().enumerate() {
        let x = tied(d.len(), 0xB00 + j as u64);
        let (_, _, total) = outputs(d);
        let mut dy = Rng(0xD7 + j as u64).vec(total, -2.0, 2.0);
        for i in (0..total).step_by(5) {
            dy[i] = -0.0;
        }
        let want = CpuStorage::F32(x.clone()).max_pool2x2_backward(&CpuStorage::F32(dy.clone()), d).expect("cpu backward");
        assert_bits(&format!("max_pool2x2_backward_f32 ({d:?})"), &run_backward(&k, &x, &dy, d), want.as_f32());
    }
}

/// The forward check notices ties resolved to the last maximum (`setp.ge` where `setp.gt`
/// belongs, a fault planted in the PTX text): the tied inputs do exercise the tie rule.
#[test]
fn ties_resolved_to_the_last_maximum_are_caught() {
    let k = sim::load_edited("pool", |t| t.replacen("setp.gt.f32 %p2, %f2, %f5;", "setp.ge.f32 %p2, %f2, %f5;", 1));
    let failure = std::panic::catch_unwind(|| check_forward(&k)).expect_err("max_pool2x2_f32 taking the last tied maximum matched the CPU");
    let message = failure.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(message.contains("max_pool2x2_f32") && message.contains("CPU reference"), "the planted fault failed otherwise: {message}");
}

/// How the pooling kernels access memory (see `access.rs`), at conv1_2's output scaled down (64
/// channels of 32 x 32, 2 images; 16 outputs a row, so a warp's 32 outputs are two whole
/// output rows): with w even (every VGG size) each window row is one 8-byte access, so the
/// window loads, the output (y, dy) and the backward's dx stores are all coalesced. With w odd
/// the kernels take 4-byte accesses, lanes 8 bytes apart, each request using every other word
/// of its sectors (x2 on the window loads, as before the paired accesses).
#[test]
fn access_pool() {
    use crate::access::{assert_coalesced, profile};
    let k = sim::load("pool");
    let mut mem = Memory::default();
    for d in [Nchw { n: 2, c: 64, h: 32, w: 32 }, Nchw { n: 2, c: 64, h: 32, w: 31 }] {
        let (oh, ow, total) = outputs(d);
        let x = mem.upload(&Rng(0xACC).vec(d.len(), -2.0, 2.0));
        let y = mem.poisoned(4 * total);
        let [h, w, oh, ow] = [d.h, d.w, oh, ow].map(|v| Arg::U32(v as u32));
        let what = format!("2 x 64 x {} x {}", d.h, d.w);
        let args = [Arg::U64(y), Arg::U64(x), Arg::U32(total as u32), h, w, oh, ow];
        let fwd = profile(&k, &mut mem, "max_pool2x2_f32", grid_1d(total), &args, &what);
        let dy = mem.upload(&Rng(0xACD).vec(total, -1.0, 1.0));
        let dx = mem.poisoned(4 * d.len());
        let args = [Arg::U64(dx), Arg::U64(x), Arg::U64(dy), Arg::U32(total as u32), h, w, oh, ow];
        let bwd = profile(&k, &mut mem, "max_pool2x2_backward_f32", grid_1d(total), &args, &what);
        if d.w % 2 == 0 {
            assert_coalesced("max_pool2x2_f32", &fwd);
            assert_coalesced("max_pool2x2_backward_f32", &bwd);
            // Two paired loads a window (and two paired stores in the backward), not four.
            let warps = (total / 32) as u64;
            assert_eq!((fwd.load.requests, bwd.store.requests), (2 * warps, 2 * warps), "paired accesses: {fwd} / {bwd}");
        } else {
            assert!(fwd.load.overhead() > 1.5, "max_pool2x2_f32 with w odd took paired loads? {fwd}");
            assert!(bwd.store.overhead() > 1.5, "max_pool2x2_backward_f32 with w odd took paired stores? {bwd}");
        }
    }
}
