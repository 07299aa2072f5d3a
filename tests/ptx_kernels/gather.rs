//! `kernels/gather.ptx`: the sparse hypercolumn gather and its two backwards, launched per tap
//! as `ops/gather.rs` launches them (`ops::tap_geoms`, `ops::column_rows_cfg`,
//! `ops::csr_max_locations`, the CSR table of `ops::gather_csr_table`), against the CPU
//! backend (`cpu::resample::gather_forward` / `gather_backward` through `CpuStorage`):
//! `gather_fwd_f32`, `gather_fwd_tiled_f32` (each on every tap, and as the wrapper picks them)
//! and `gather_bwd_csr_f32` bit for bit, `gather_bwd_atomic_f32` within the rounding that a
//! different order of its atomic additions may cause.

use hyperseg_engine::backend::cpu::CpuStorage;
use hyperseg_engine::backend::cuda::kernels::ops;
use hyperseg_engine::backend::{BackendStorage, GatherSpec, SamplePoint};

use crate::sim::{self, Arg, Kernels, Memory};
use crate::{assert_bits, dims, run, Rng};

/// Taps of every kind: full resolution (scale 1, so some weights are exactly 0), a block of
/// 64 threads for 33 channels, two blocks along x for 300 channels, a single pixel, a tap
/// larger than the input frame, and a tap without channels (skipped by the wrapper).
fn awkward_spec() -> GatherSpec {
    GatherSpec { n: 3, in_h: 37, in_w: 29, taps: vec![(5, 37, 29), (33, 9, 7), (0, 6, 6), (300, 5, 4), (1, 1, 1), (2, 50, 40)] }
}

/// `count` points: the four corners of the frame in the first and last image, a repeated
/// point, then random ones.
fn points(rng: &mut Rng, g: &GatherSpec, count: usize) -> Vec<SamplePoint> {
    let (n, h, w) = (g.n as u32, g.in_h as u32, g.in_w as u32);
    let mut pts = vec![
        SamplePoint { image: 0, y: 0, x: 0 },
        SamplePoint { image: n - 1, y: h - 1, x: w - 1 },
        SamplePoint { image: 0, y: h - 1, x: 0 },
        SamplePoint { image: n - 1, y: 0, x: w - 1 },
        SamplePoint { image: 0, y: 0, x: 0 },
    ];
    while pts.len() < count {
        pts.push(SamplePoint { image: rng.below(n), y: rng.below(h), x: rng.below(w) });
    }
    pts.truncate(count);
    pts
}

/// Random values with the specials planted among them: NaN, infinities, signed zeros, a
/// subnormal and the largest finite value (whose weighted sums may overflow).
fn with_specials(rng: &mut Rng, n: usize) -> Vec<f32> {
    let mut v = rng.vec(n, -2.0, 2.0);
    let special = [f32::NAN, f32::INFINITY, f32::NEG_INFINITY, -0.0, 0.0, 1.0e-40, f32::MAX, -f32::MAX];
    for (i, s) in special.iter().enumerate() {
        if n > 0 {
            v[(i * 131 + 17) % n] = *s;
        }
    }
    v
}

/// One buffer per tap of `g` (`[n, c, h, w]`).
fn tap_values(rng: &mut Rng, g: &GatherSpec, specials: bool) -> Vec<Vec<f32>> {
    g.taps
        .iter()
        .map(|&(c, h, w)| if specials { with_specials(rng, g.n * c * h * w) } else { rng.vec(g.n * c * h * w, -2.0, 2.0) })
        .collect()
}

/// The parameters of `gather_fwd_f32` and `gather_bwd_atomic_f32` (the same list): the three
/// buffers (destination, source, points), then the point count, total columns and the tap's geometry.
fn tap_args(buffers: [u64; 3], np: u32, ctot: u32, t: &ops::TapGeom) -> [Arg; 11] {
    let [dst, src, pts] = buffers;
    [
        Arg::U64(dst),
        Arg::U64(src),
        Arg::U64(pts),
        Arg::U32(np),
        Arg::U32(ctot),
        Arg::U32(t.col_off),
        Arg::U32(t.c),
        Arg::U32(t.h),
        Arg::U32(t.w),
        Arg::F32(t.scale_h),
        Arg::F32(t.scale_w),
    ]
}

/// Which forward kernel runs each tap: the wrapper's choice (`ops::gather_fwd_launch`), or one
/// of the two for every tap (both must be right at any plane size).
#[derive(Clone, Copy, Debug, PartialEq)]
enum Forward {
    Wrapper,
    Plain,
    Tiled,
}

/// The kernel and launch shape `which` takes for tap `t` of `np` points.
fn forward_launch(which: Forward, t: &ops::TapGeom, np: u32) -> (&'static str, crate::sim::Dims) {
    let (entry, shape) = match which {
        Forward::Wrapper => ops::gather_fwd_launch(t, np),
        Forward::Plain => ("gather_fwd_f32", ops::column_rows_cfg(t.c, np)),
        Forward::Tiled => ("gather_fwd_tiled_f32", ops::transpose_cfg(np, t.c, 1)),
    };
    (entry, dims(shape))
}

/// The forward once per tap, as the wrapper runs it, into one poisoned `[points,
/// total_channels]` matrix.
fn sim_forward(k: &Kernels, taps: &[Vec<f32>], pts: &[SamplePoint], g: &GatherSpec) -> Vec<f32> {
    sim_forward_with(k, taps, pts, g, Forward::Wrapper)
}

/// [`sim_forward`] with the kernel `which` picks.
fn sim_forward_with(k: &Kernels, taps: &[Vec<f32>], pts: &[SamplePoint], g: &GatherSpec, which: Forward) -> Vec<f32> {
    let mut mem = Memory::default();
    let ctot = g.total_channels() as u32;
    let np = pts.len() as u32;
    let out = mem.poisoned(4 * pts.len() * ctot as usize);
    let pd = mem.upload(SamplePoint::words(pts));
    let geoms = ops::tap_geoms(g).expect("tap geometry");
    for (tap, t) in taps.iter().zip(geoms) {
        let td = mem.upload(tap);
        if t.c == 0 {
            continue;
        }
        let (entry, d) = forward_launch(which, &t, np);
        run(k, &mut mem, entry, d, &tap_args([out, td, pd], np, ctot, &t));
    }
    mem.download(out, pts.len() * ctot as usize)
}

/// `gather_bwd_atomic_f32` once per tap into zero-filled tap gradients (the wrapper's fill).
fn sim_backward_atomic(k: &Kernels, grad: &[f32], pts: &[SamplePoint], g: &GatherSpec) -> Vec<Vec<f32>> {
    let mut mem = Memory::default();
    let ctot = g.total_channels() as u32;
    let np = pts.len() as u32;
    let gd = mem.upload(grad);
    let pd = mem.upload(SamplePoint::words(pts));
    let geoms = ops::tap_geoms(g).expect("tap geometry");
    let mut outs = Vec::new();
    for (t, &(c, h, w)) in geoms.iter().zip(&g.taps) {
        let len = g.n * c * h * w;
        let dtap = mem.upload(&vec![0.0f32; len]);
        if t.c != 0 {
            run(k, &mut mem, "gather_bwd_atomic_f32", dims(ops::column_rows_cfg(t.c, np)), &tap_args([dtap, gd, pd], np, ctot, t));
        }
        outs.push(mem.download(dtap, len));
    }
    outs
}

/// `gather_bwd_csr_f32` once per tap with the wrapper's table (uploaded at its exact length, so
/// that a read past it faults), into poisoned tap gradients: elements the kernel leaves alone
/// stay NaN with all bits set.
fn sim_backward_csr(k: &Kernels, grad: &[f32], pts: &[SamplePoint], g: &GatherSpec) -> Vec<Vec<f32>> {
    let mut mem = Memory::default();
    let ctot = g.total_channels() as u32;
    let (table, bound) = ops::gather_csr_table(pts, g);
    assert!(table.len() <= bound, "the CSR table has {} words, the wrapper's buffer {bound}", table.len());
    let gd = mem.upload(grad);
    let td = mem.upload(&table);
    let geoms = ops::tap_geoms(g).expect("tap geometry");
    let mut outs = Vec::new();
    for (tap, (t, &(c, h, w))) in geoms.iter().zip(&g.taps).enumerate() {
        let len = g.n * c * h * w;
        let dtap = mem.poisoned(4 * len);
        let max_locs = ops::csr_max_locations(pts.len(), g.n, h, w) as u32;
        if t.c != 0 && max_locs != 0 {
            let args = [
                Arg::U64(dtap),
                Arg::U64(gd),
                Arg::U64(td),
                Arg::U32(tap as u32),
                Arg::U32(ctot),
                Arg::U32(t.col_off),
                Arg::U32(t.c),
                Arg::U32(t.h * t.w),
            ];
            run(k, &mut mem, "gather_bwd_csr_f32", dims(ops::column_rows_cfg(t.c, max_locs)), &args);
        }
        outs.push(mem.download(dtap, len));
    }
    outs
}

fn cpu_forward(taps: &[Vec<f32>], pts: &[SamplePoint], g: &GatherSpec) -> Vec<f32> {
    let stores: Vec<CpuStorage> = taps.iter().map(|t| CpuStorage::F32(t.clone())).collect();
    let refs: Vec<&CpuStorage> = stores.iter().collect();
    CpuStorage::gather_hypercolumns(&refs, pts, g).expect("CPU gather").as_f32().to_vec()
}

fn cpu_backward(grad: &[f32], pts: &[SamplePoint], g: &GatherSpec) -> Vec<Vec<f32>> {
    let out = CpuStorage::F32(grad.to_vec()).gather_hypercolumns_backward(pts, g, true).expect("CPU gather backward");
    out.into_iter().map(|s| s.as_f32().to_vec()).collect()
}

/// The tap locations `(image * hw + offset)` that some point touches and how many
/// contributions each receives, read from the wrapper's CSR table (header, locs, starts).
fn touched_locations(table: &[u32], tap: usize, hw: usize) -> Vec<(usize, usize)> {
    let h = &table[4 * tap..4 * tap + 4];
    let (n_locs, l_at, s_at) = (h[0] as usize, h[1] as usize, h[2] as usize);
    (0..n_locs)
        .map(|l| {
            let loc = table[l_at + 2 * l] as usize * hw + table[l_at + 2 * l + 1] as usize;
            (loc, (table[s_at + l + 1] - table[s_at + l]) as usize)
        })
        .collect()
}

/// Asserts that the kernel wrote every element of a poisoned output: none still has all bits
/// set (no input holds that NaN, and arithmetic does not make it), so an unwritten element
/// whose reference value is a NaN is not taken for a match.
fn assert_written(what: &str, got: &[f32]) {
    if let Some(i) = got.iter().position(|v| v.to_bits() == u32::MAX) {
        panic!("{what}: element {i} was never written (still the poison 0xffffffff)");
    }
}

/// True when some element differs from the reference in its bits (NaNs of any payload equal).
fn differs_in_bits(got: &[f32], want: &[f32]) -> bool {
    got.len() != want.len() || got.iter().zip(want).any(|(g, w)| g.to_bits() != w.to_bits() && !(g.is_nan() && w.is_nan()))
}

/// Runs the simulated forward (as the wrapper picks, and each kernel on every tap) and the CPU
/// forward, and compares them bit for bit.
fn check_forward(k: &Kernels, g: &GatherSpec, npoints: usize, seed: u64) {
    let mut rng = Rng(seed);
    let pts = points(&mut rng, g, npoints);
    let taps = tap_values(&mut rng, g, true);
    let want = cpu_forward(&taps, &pts, g);
    for which in [Forward::Wrapper, Forward::Plain, Forward::Tiled] {
        let got = sim_forward_with(k, &taps, &pts, g, which);
        let what = format!("gather forward, {which:?} kernel ({npoints} points)");
        assert_written(&what, &got);
        assert_bits(&what, &got, &want);
    }
}

/// The first element where the atomic backward and the CPU's ordered scatter differ by more
/// than a reordered f32 sum may: |got - want| <= 2 m eps sum|w_k g_k| for a location of m
/// contributions (either order's error is at most (m - 1) eps sum|terms|; the products round
/// alike). None when all are within it.
fn atomic_mismatch(k: &Kernels, g: &GatherSpec, pts: &[SamplePoint], grad: &[f32]) -> Option<String> {
    let got = sim_backward_atomic(k, grad, pts, g);
    let want = cpu_backward(grad, pts, g);
    // The weights are >= 0, so the CPU backward of |grad| is the sum of |terms| per element.
    let abs_grad: Vec<f32> = grad.iter().map(|v| v.abs()).collect();
    let abs_sum = cpu_backward(&abs_grad, pts, g);
    let (table, _) = ops::gather_csr_table(pts, g);
    for (tap, &(c, h, w)) in g.taps.iter().enumerate() {
        let mut terms = vec![0usize; g.n * h * w];
        for (loc, m) in touched_locations(&table, tap, h * w) {
            terms[loc] = m;
        }
        for i in 0..g.n * c * h * w {
            let (img, off) = (i / (c * h * w), i % (h * w));
            let m = terms[img * h * w + off] as f32;
            let bound = 2.0 * m * f32::EPSILON * abs_sum[tap][i];
            let (gv, wv) = (got[tap][i], want[tap][i]);
            let within = (gv - wv).abs() <= bound || (gv.is_nan() && wv.is_nan());
            if !within {
                return Some(format!(
                    "gather_bwd_atomic_f32 ({} points): tap {tap} element {i} is {gv:e}, the CPU reference has {wv:e} (bound {bound:e})",
                    pts.len()
                ));
            }
        }
    }
    None
}

fn check_backward_atomic(k: &Kernels, g: &GatherSpec, pts: &[SamplePoint], grad: &[f32]) {
    if let Some(m) = atomic_mismatch(k, g, pts, grad) {
        panic!("{m}");
    }
}

/// Compares the CSR backward with the CPU bit for bit where a point touches the tap, and
/// checks that every other element was left alone (still the poison; the CPU's value is 0).
fn check_backward_csr(k: &Kernels, g: &GatherSpec, pts: &[SamplePoint], grad: &[f32]) {
    let got = sim_backward_csr(k, grad, pts, g);
    let want = cpu_backward(grad, pts, g);
    let (table, _) = ops::gather_csr_table(pts, g);
    for (tap, &(c, h, w)) in g.taps.iter().enumerate() {
        let mut touched = vec![false; g.n * h * w];
        for (loc, _) in touched_locations(&table, tap, h * w) {
            touched[loc] = true;
        }
        // Touched elements are compared bit for bit (and must have been written); the others
        // must still hold the poison, and be 0 on the CPU.
        let (mut got_touched, mut want_touched) = (Vec::new(), Vec::new());
        for (i, (&gv, &wv)) in got[tap].iter().zip(&want[tap]).enumerate() {
            let (img, off) = (i / (c * h * w), i % (h * w));
            if touched[img * h * w + off] {
                got_touched.push(gv);
                want_touched.push(wv);
            } else {
                assert!(wv == 0.0, "gather_bwd_csr_f32: tap {tap} element {i} is {wv:e} on the CPU but missing from the table");
                assert_eq!(
                    gv.to_bits(),
                    crate::POISON,
                    "gather_bwd_csr_f32: tap {tap} element {i}, touched by no point, was written ({gv:e})"
                );
            }
        }
        assert_bits(&format!("gather_bwd_csr_f32 tap {tap} ({} points), touched elements", pts.len()), &got_touched, &want_touched);
    }
}

#[test]
fn forward_is_bit_exact_on_awkward_taps() {
    let k = sim::load("gather");
    let g = awkward_spec();
    for (npoints, seed) in [(1, 3), (5, 4), (100, 5)] {
        check_forward(&k, &g, npoints, seed);
    }
}

#[test]
fn atomic_backward_matches_the_ordered_scatter() {
    let k = sim::load("gather");
    let g = awkward_spec();
    let mut rng = Rng(0x6A7E_A70C);
    let pts = points(&mut rng, &g, 100);
    // Finite gradients: the tolerance is about the order of finite additions.
    let grad = rng.vec(pts.len() * g.total_channels(), -1.0, 1.0);
    check_backward_atomic(&k, &g, &pts, &grad);
}

#[test]
fn csr_backward_is_bit_exact_and_writes_only_touched_locations() {
    let k = sim::load("gather");
    let g = awkward_spec();
    let mut rng = Rng(0xC5_2BAC);
    // One point (odd table lengths, a single entry per location), a few, and enough that
    // locations collect many entries (both the paired and the single-entry loop).
    for npoints in [1, 7, 100] {
        let pts = points(&mut rng, &g, npoints);
        let grad = with_specials(&mut rng, pts.len() * g.total_channels());
        check_backward_csr(&k, &g, &pts, &grad);
    }
}

/// More points than blocks along y (65535): blockIdx.y walks the points by gridDim.y in the
/// forward and the atomic backward, so the last points are taken on a second trip round: the
/// wrapper's real shape at the cap (over 2 million simulated threads, a few seconds).
#[test]
fn forward_and_atomic_backward_walk_points_past_the_grid_cap() {
    let k = sim::load("gather");
    let g = GatherSpec { n: 2, in_h: 8, in_w: 8, taps: vec![(1, 3, 5)] };
    let npoints = ops::MAX_GRID_Y as usize + 77;
    let mut rng = Rng(0x9A55);
    let pts = points(&mut rng, &g, npoints);
    let taps = tap_values(&mut rng, &g, true);
    let got = sim_forward(&k, &taps, &pts, &g);
    assert_written("gather_fwd_f32 past the grid cap", &got);
    assert_bits("gather_fwd_f32 past the grid cap", &got, &cpu_forward(&taps, &pts, &g));
    let grad = rng.vec(npoints, -1.0, 1.0);
    check_backward_atomic(&k, &g, &pts, &grad);
}

/// More touched locations than blocks along y: 128 x 128 points two pixels apart on a
/// 257 x 257 tap at full resolution touch 4 locations each, 65536 in all, so block 0 also
/// takes the last location (a few seconds, as the test above).
#[test]
fn csr_backward_walks_locations_past_the_grid_cap() {
    let k = sim::load("gather");
    let g = GatherSpec { n: 1, in_h: 257, in_w: 257, taps: vec![(1, 257, 257)] };
    let pts: Vec<SamplePoint> = (0..128u32).flat_map(|y| (0..128u32).map(move |x| SamplePoint { image: 0, y: 2 * y, x: 2 * x })).collect();
    let (table, _) = ops::gather_csr_table(&pts, &g);
    assert!(table[0] > ops::MAX_GRID_Y, "only {} locations: no grid-stride trip", table[0]);
    let grad = Rng(0x2B1).vec(pts.len(), -1.0, 1.0);
    check_backward_csr(&k, &g, &pts, &grad);
}

/// The same walks as the two tests above, at a fraction of their cost: gridDim.y cut to 3, so each block
/// takes several points (forward, atomic backward) or locations (CSR backward), with the
/// wrapper's shapes otherwise.
#[test]
fn every_kernel_walks_past_a_short_grid() {
    let k = sim::load("gather");
    let g = awkward_spec();
    crate::with_grid_y_cap(3, || {
        check_forward(&k, &g, 40, 0x5407);
        let mut rng = Rng(0x5408);
        let pts = points(&mut rng, &g, 40);
        check_backward_atomic(&k, &g, &pts, &rng.vec(pts.len() * g.total_channels(), -1.0, 1.0));
        let grad = with_specials(&mut rng, pts.len() * g.total_channels());
        check_backward_csr(&k, &g, &pts, &grad);
    });
}

/// Each comparison notices a realistic fault planted in the PTX text: the forward reading the
/// wrong column for its second corner, the atomic backward scaling a corner by another
/// corner's weight, the CSR backward stepping one entry instead of two in its paired loop.
#[test]
fn planted_faults_are_caught() {
    let g = awkward_spec();
    let mut rng = Rng(0xFA17);
    let pts = points(&mut rng, &g, 40);
    let taps = tap_values(&mut rng, &g, false);
    let grad = rng.vec(pts.len() * g.total_channels(), -1.0, 1.0);

    let k = sim::load_edited("gather", |t| t.replacen("add.u32 %r41, %r36, %r35;", "add.u32 %r41, %r36, %r34;", 1));
    assert!(
        differs_in_bits(&sim_forward(&k, &taps, &pts, &g), &cpu_forward(&taps, &pts, &g)),
        "a forward with a wrong corner matched the CPU"
    );

    // The tiled forward reading its tile untransposed in the store phase (the comparison, or
    // the simulator's check of shared words nobody wrote, notices), and without the barrier
    // between its two phases (the simulator refuses the read of a tile word not yet written).
    let k = sim::load_edited("gather", |t| t.replacen("mad.lo.u32 %r62, %r8, 33, %r60;", "mad.lo.u32 %r62, %r60, 33, %r8;", 1));
    let tiled = std::panic::catch_unwind(|| sim_forward_with(&k, &taps, &pts, &g, Forward::Tiled));
    assert!(
        tiled.map_or(true, |got| differs_in_bits(&got, &cpu_forward(&taps, &pts, &g))),
        "a tiled forward reading its tile untransposed matched the CPU"
    );
    let k = sim::load_edited("gather", |t| t.replacen("$GT_LOADED:\n    bar.sync 0;", "$GT_LOADED:", 1));
    let err = crate::launch_error(|| drop(sim_forward_with(&k, &taps, &pts, &g, Forward::Tiled)));
    assert!(err.contains("no thread of the block wrote") || err.contains("data race"), "a tiled forward without its first barrier: {err}");

    let k = sim::load_edited("gather", |t| t.replacen("mul.rn.f32 %f55, %f41, %f50;", "mul.rn.f32 %f55, %f42, %f50;", 1));
    assert!(atomic_mismatch(&k, &g, &pts, &grad).is_some(), "an atomic backward with a wrong corner weight passed the tolerance check");

    let k = sim::load_edited("gather", |t| t.replacen("add.s64 %rd9, %rd9, 16;", "add.s64 %rd9, %rd9, 8;", 1));
    let got = sim_backward_csr(&k, &grad, &pts, &g);
    let want = cpu_backward(&grad, &pts, &g);
    // Untouched elements keep the poison (all bits set); compare the others.
    let written_differs =
        |got: &[f32], want: &[f32]| got.iter().zip(want).any(|(a, b)| a.to_bits() != u32::MAX && differs_in_bits(&[*a], &[*b]));
    assert!(
        got.iter().zip(&want).any(|(g, w)| written_differs(g, w)),
        "a CSR backward stepping one entry at a time through pairs matched the CPU"
    );
}

/// How the three kernels access memory, at the paper's first three taps at half resolution and
/// half width (2 images of 112 x 112; conv1_2, conv2_2, conv3_3 as 32, 64, 128 channels at
/// 112, 56, 28), for tap conv3_3 (128 channels of 28 x 28, columns 96 .. 224 of 224) and 64
/// points: the point records are read by every lane at once (one sector each), the
/// `[points, columns]` side is coalesced (consecutive lanes, consecutive columns), and the tap
/// side is NCHW with lanes taking channels, so each lane's element lies a plane (4 hw =
/// 3136 bytes) past its neighbour's: one sector per lane, 32 for a warp's 128 bytes, x8, as on
/// every tap of the real model (the smallest plane, fc7's 7 x 7, puts lanes 196 bytes apart).
#[test]
fn access_gather() {
    use crate::access::profile;
    let k = sim::load("gather");
    let g = GatherSpec { n: 2, in_h: 112, in_w: 112, taps: vec![(32, 112, 112), (64, 56, 56), (128, 28, 28)] };
    let (tap, np) = (2, 64);
    let pts = points(&mut Rng(0xACC5), &g, np);
    let t = &ops::tap_geoms(&g).expect("tap geometry")[tap];
    let (c, hw, ctot) = (t.c as usize, (t.h * t.w) as usize, g.total_channels() as u32);
    let what = format!("{np} points, tap [2, {c}, {}, {}] of {ctot} columns", t.h, t.w);
    let mut mem = Memory::default();
    let tap_d = mem.upload(&Rng(0xACC6).vec(g.n * c * hw, -2.0, 2.0));
    let pts_d = mem.upload(SamplePoint::words(&pts));
    let cols = mem.poisoned(4 * np * ctot as usize);
    // A warp per point and 32 channels (gridDim.y = 64 takes every point in one trip).
    let warps = (np * c / 32) as u64;
    let d = dims(ops::column_rows_cfg(t.c, np as u32));

    // Per warp: the point's three words (one sector each), then the four corners (32 sectors
    // for 4 sectors' worth each); one coalesced store of 32 columns.
    let p = profile(&k, &mut mem, "gather_fwd_f32", d, &tap_args([cols, tap_d, pts_d], np as u32, ctot, t), &what);
    assert_eq!((p.load.sectors, p.load.ideal), (warps * (3 + 4 * 32), warps * (3 + 4 * 4)), "gather_fwd_f32 loads: {p}");
    assert_eq!((p.store.sectors, p.store.ideal), (warps * 4, warps * 4), "gather_fwd_f32 stores: {p}");

    // The same walk backwards: the gradient row and the point words read as above (coalesced),
    // and the four corners added with one atomic per lane, each in its own sector: x8.
    let grad = mem.upload(&Rng(0xACC7).vec(np * ctot as usize, -1.0, 1.0));
    let dtap = mem.upload(&vec![0.0f32; g.n * c * hw]);
    let p = profile(&k, &mut mem, "gather_bwd_atomic_f32", d, &tap_args([dtap, grad, pts_d], np as u32, ctot, t), &what);
    assert_eq!((p.load.sectors, p.load.ideal), (warps * (4 + 3), warps * (4 + 3)), "gather_bwd_atomic_f32 loads: {p}");
    assert_eq!((p.atomic.sectors, p.atomic.ideal), (warps * 4 * 32, warps * 4 * 4), "gather_bwd_atomic_f32 atomics: {p}");

    // The CSR backward: the header, a location's record and its entries are read by every lane
    // at once, the gradient rows coalesced; the one store per (location, channel) goes to the
    // NCHW plane, lanes hw apart: 32 sectors per warp where 4 would hold the bytes.
    let (table, _) = ops::gather_csr_table(&pts, &g);
    let locations = table[4 * tap] as u64;
    let table_d = mem.upload(&table);
    let dtap = mem.poisoned(4 * g.n * c * hw);
    let args = [
        Arg::U64(dtap),
        Arg::U64(grad),
        Arg::U64(table_d),
        Arg::U32(tap as u32),
        Arg::U32(ctot),
        Arg::U32(t.col_off),
        Arg::U32(t.c),
        Arg::U32(hw as u32),
    ];
    let max_locs = ops::csr_max_locations(np, g.n, t.h as usize, t.w as usize) as u32;
    let p = profile(&k, &mut mem, "gather_bwd_csr_f32", dims(ops::column_rows_cfg(t.c, max_locs)), &args, &what);
    assert_eq!(p.load.sectors, p.load.ideal, "gather_bwd_csr_f32: uncoalesced loads: {p}");
    let stores = locations * (c / 32) as u64;
    assert_eq!((p.store.requests, p.store.sectors, p.store.ideal), (stores, stores * 32, stores * 4), "gather_bwd_csr_f32 stores: {p}");

    // The two forwards on small planes, with the sampler's points (grouped by image: 64 from
    // each of 2 images) on a 64-channel tap: lanes on points read one plane's few sectors where
    // lanes on channels take a sector each. The wrapper takes the tiled kernel up to
    // ops::SMALL_TAP_MAX_PLANE (fc7's 7 x 7 and conv5_3's 14 x 14 at the paper's size),
    // where it takes 3.8x and 1.7x fewer load sectors; at conv4_3's 28 x 28 it would save
    // about a tenth, less than its shared-memory pass and barriers cost, so the plain one runs.
    // The CSR scatter takes 2.9x and 1.4x fewer sectors than the atomic one at 7 x 7 and 14 x 14
    // here (128 points in 98 or 392 locations); at the paper's 1600 points in 245 or 980
    // locations its advantage grows (its stores scale with locations, the atomics with points).
    let mut rng = Rng(0xACC8);
    let np = 128;
    let pts: Vec<SamplePoint> = (0..np).map(|i| SamplePoint { image: (2 * i / np) as u32, y: rng.below(224), x: rng.below(224) }).collect();
    for side in [7, 14, 28] {
        let g = GatherSpec { n: 2, in_h: 224, in_w: 224, taps: vec![(64, side, side)] };
        let t = &ops::tap_geoms(&g).expect("tap geometry")[0];
        let mut mem = Memory::default();
        let tap_d = mem.upload(&rng.vec(2 * 64 * side * side, -1.0, 1.0));
        let pts_d = mem.upload(SamplePoint::words(&pts));
        let out = mem.poisoned(4 * np * 64);
        let what = format!("{np} points grouped by image, tap [2, 64, {side}, {side}]");
        let [plain, tiled] = [Forward::Plain, Forward::Tiled].map(|which| {
            let (entry, d) = forward_launch(which, t, np as u32);
            profile(&k, &mut mem, entry, d, &tap_args([out, tap_d, pts_d], np as u32, 64, t), &what)
        });
        assert_eq!(
            (tiled.store.sectors, tiled.shared.wavefronts),
            (tiled.store.ideal, tiled.shared.ideal),
            "gather_fwd_tiled_f32: {tiled}"
        );
        // The backward on the same tap: the atomic scatter (four atomics a point and lane, a
        // sector each) against the CSR one (one store a touched location and lane, the
        // gradient rows read coalesced); small taps take the CSR one in either mode.
        let grad = mem.upload(&rng.vec(np * 64, -1.0, 1.0));
        let dtap = mem.upload(&vec![0.0f32; 2 * 64 * side * side]);
        let d = dims(ops::column_rows_cfg(t.c, np as u32));
        let atomic = profile(&k, &mut mem, "gather_bwd_atomic_f32", d, &tap_args([dtap, grad, pts_d], np as u32, 64, t), &what);
        let (table, _) = ops::gather_csr_table(&pts, &g);
        let table_d = mem.upload(&table);
        let dtap = mem.poisoned(4 * 2 * 64 * side * side);
        let args =
            [dtap, grad, table_d].map(Arg::U64).into_iter().chain([0, 64, t.col_off, t.c, t.h * t.w].map(Arg::U32)).collect::<Vec<_>>();
        let d = dims(ops::column_rows_cfg(t.c, ops::csr_max_locations(np, g.n, side, side) as u32));
        let csr = profile(&k, &mut mem, "gather_bwd_csr_f32", d, &args, &what);
        let sectors = |p: &crate::sim::Profile| p.load.sectors + p.store.sectors + p.atomic.sectors;
        let csr_saving = sectors(&atomic) as f64 / sectors(&csr) as f64;
        assert_eq!(
            ops::scatters_through_csr(t, false),
            side * side <= ops::SMALL_TAP_MAX_PLANE as usize,
            "the backward's choice at {side} x {side}"
        );
        if ops::scatters_through_csr(t, false) {
            assert!(csr_saving > 1.3, "at {side} x {side} the CSR scatter takes {csr_saving:.2}x fewer sectors: {atomic} / {csr}");
        }
        let saving = plain.load.sectors as f64 / tiled.load.sectors as f64;
        let picks_tiled = ops::gather_fwd_launch(t, np as u32).0 == "gather_fwd_tiled_f32";
        assert_eq!(picks_tiled, side * side <= ops::SMALL_TAP_MAX_PLANE as usize, "the wrapper's choice at {side} x {side}");
        if picks_tiled {
            assert!(saving > 1.5, "at {side} x {side} the tiled gather takes {saving:.2}x fewer load sectors: {plain} / {tiled}");
        } else {
            assert!(saving < 1.15, "at {side} x {side} the tiled gather would take {saving:.2}x fewer load sectors: {plain} / {tiled}");
        }
    }
}
