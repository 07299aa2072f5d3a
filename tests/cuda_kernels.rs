//! Parity of every hand-written PTX kernel with the CPU reference, through the
//! `BackendStorage` trait (and `kernels::ops` for the extras). Skips, passing, when no CUDA
//! device can be opened (fails instead under HYPERSEG_REQUIRE_GPU=1). One test runs everything
//! and prints a table, so that a single run on a GPU machine shows every result; set
//! `HYPERSEG_KERNEL_TIMINGS=1` for a few timings.
//!
//! Tolerances: bit-exact where the kernel repeats the CPU's operations in order (noted `exact`);
//! otherwise |gpu - cpu| <= atol + rtol |cpu| with rtol 1e-5.

use std::time::Instant;

use hyperseg_engine::backend::cpu::CpuStorage;
use hyperseg_engine::backend::cuda::kernels::ops;
use hyperseg_engine::backend::cuda::{CudaDevice, CudaStorage};
use hyperseg_engine::backend::*;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    /// Uniform in [lo, hi).
    fn f(&mut self, lo: f32, hi: f32) -> f32 {
        lo + (hi - lo) * ((self.next() >> 40) as f32 / (1u64 << 24) as f32)
    }
    fn vec(&mut self, n: usize, lo: f32, hi: f32) -> Vec<f32> {
        (0..n).map(|_| self.f(lo, hi)).collect()
    }
    fn below(&mut self, n: u32) -> u32 {
        (self.next() % n as u64) as u32
    }
}

struct Report {
    rows: Vec<String>,
    failures: Vec<String>,
}

impl Report {
    fn check(&mut self, name: &str, got: &[f32], want: &[f32], exact: bool, rtol: f32, atol: f32) {
        if got.len() != want.len() {
            self.fail(name, format!("length {} vs {}", got.len(), want.len()));
            return;
        }
        let mut max_abs = 0.0f32;
        let mut max_rel = 0.0f32;
        let mut bad = 0usize;
        let mut first_bad = None;
        let mut identical = 0usize;
        for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
            if g.to_bits() == w.to_bits() || (g.is_nan() && w.is_nan()) {
                identical += 1;
                continue;
            }
            let d = (g - w).abs();
            let ok = if exact { g == w } else { d <= atol + rtol * w.abs() };
            if d.is_finite() {
                max_abs = max_abs.max(d);
                if w != 0.0 {
                    max_rel = max_rel.max(d / w.abs());
                }
            }
            if !ok || d.is_nan() {
                bad += 1;
                first_bad.get_or_insert((i, g, w));
            }
        }
        let row = format!(
            "{name:<44} n={:<9} identical={:<9} max_abs={max_abs:<11.3e} max_rel={max_rel:<11.3e} {}",
            got.len(),
            identical,
            if bad == 0 { "ok" } else { "FAIL" }
        );
        println!("{row}");
        self.rows.push(row);
        if bad > 0 {
            let (i, g, w) = first_bad.unwrap();
            self.fail(name, format!("{bad} mismatches (mode {}), first at {i}: gpu {g:e} cpu {w:e}", if exact { "exact" } else { "tol" }));
        }
    }
    fn fail(&mut self, name: &str, msg: String) {
        println!("  FAIL {name}: {msg}");
        self.failures.push(format!("{name}: {msg}"));
    }
}

fn host(s: &CudaStorage) -> Vec<f32> {
    s.to_host_f32().expect("copy to host")
}

fn c(v: &[f32]) -> CpuStorage {
    CpuStorage::F32(v.to_vec())
}

fn timed(dev: &CudaDevice, label: &str, iters: usize, mut f: impl FnMut()) {
    f();
    dev.synchronize().unwrap();
    let mut times = Vec::with_capacity(iters);
    for _ in 0..iters {
        let t = Instant::now();
        f();
        dev.synchronize().unwrap();
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(|a, b| a.partial_cmp(b).unwrap());
    println!("TIME {label:<48} median {:.4} ms", times[times.len() / 2]);
}

#[test]
fn cuda_kernels_match_the_cpu_reference() {
    let dev = match CudaDevice::new(0) {
        Ok(d) => d,
        Err(e) => {
            if std::env::var("HYPERSEG_REQUIRE_GPU").as_deref() == Ok("1") {
                panic!("HYPERSEG_REQUIRE_GPU=1 but no CUDA device is usable: {e}");
            }
            eprintln!("skipping the CUDA kernel parity test: {e}");
            return;
        }
    };
    println!("device: {} (sm_{}{})", dev.name(), dev.compute_capability().0, dev.compute_capability().1);
    let timings = std::env::var("HYPERSEG_KERNEL_TIMINGS").is_ok_and(|v| v == "1");
    let mut r = Report { rows: Vec::new(), failures: Vec::new() };
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let up = |v: &[f32]| dev.upload(v).unwrap();

    // ---- fill, unary, affine, binary ----
    {
        let mut s = dev.alloc(1000).unwrap();
        s.fill(2.5).unwrap();
        r.check("fill", &host(&s), &[2.5; 1000], true, 0.0, 0.0);
    }
    let n = 300_007;
    let x = rng.vec(n, -4.0, 4.0);
    let xg = up(&x);
    for op in [UnaryOp::Neg, UnaryOp::Sqr, UnaryOp::Relu] {
        let want = c(&x).unary(op).unwrap().to_host_f32().unwrap();
        r.check(&format!("unary {op:?}"), &host(&xg.unary(op).unwrap()), &want, true, 0.0, 0.0);
    }
    {
        let mut xs = rng.vec(n, 0.0, 1.0);
        for (i, v) in xs.iter_mut().enumerate() {
            *v = match i % 5 {
                0 => *v * 1e-3,
                1 => *v * 1e30,
                2 => *v * 1e-40, // subnormal inputs
                3 => 1.0 + (*v - 0.5) * 1e-4,
                _ => *v * 10.0,
            };
        }
        xs[0] = 0.0;
        xs[1] = -1.0;
        xs[2] = f32::INFINITY;
        let g = up(&xs);
        for op in [UnaryOp::Sqrt, UnaryOp::Log] {
            let want = c(&xs).unary(op).unwrap().to_host_f32().unwrap();
            let exact = op == UnaryOp::Sqrt;
            r.check(&format!("unary {op:?}"), &host(&g.unary(op).unwrap()), &want, exact, 1e-5, 0.0);
        }
        let e = rng.vec(n, -100.0, 90.0);
        let want = c(&e).unary(UnaryOp::Exp).unwrap().to_host_f32().unwrap();
        r.check("unary Exp [-100, 90]", &host(&up(&e).unary(UnaryOp::Exp).unwrap()), &want, false, 1e-5, 1e-37);
        let e = rng.vec(n, -5.0, 5.0);
        let want = c(&e).unary(UnaryOp::Exp).unwrap().to_host_f32().unwrap();
        r.check("unary Exp [-5, 5]", &host(&up(&e).unary(UnaryOp::Exp).unwrap()), &want, false, 1e-5, 0.0);
    }
    {
        let want = c(&x).affine(1.7, -0.3).unwrap().to_host_f32().unwrap();
        r.check("affine", &host(&xg.affine(1.7, -0.3).unwrap()), &want, true, 0.0, 0.0);
        let y: Vec<f32> = rng.vec(n, 0.5, 3.0).iter().enumerate().map(|(i, v)| if i % 2 == 0 { *v } else { -*v }).collect();
        let yg = up(&y);
        for op in [BinaryOp::Add, BinaryOp::Sub, BinaryOp::Mul, BinaryOp::Div] {
            let want = c(&x).binary(&c(&y), op).unwrap().to_host_f32().unwrap();
            r.check(&format!("binary {op:?}"), &host(&xg.binary(&yg, op).unwrap()), &want, true, 0.0, 0.0);
        }
        let want = c(&x).relu_backward(&c(&y)).unwrap().to_host_f32().unwrap();
        r.check("relu_backward", &host(&xg.relu_backward(&yg).unwrap()), &want, true, 0.0, 0.0);
        let mut a = c(&x);
        a.add_scaled_assign(&c(&y), -0.37).unwrap();
        let mut ag = up(&x);
        ag.add_scaled_assign(&yg, -0.37).unwrap();
        r.check("add_scaled_assign", &host(&ag), a.as_f32(), true, 0.0, 0.0);
    }

    // ---- sums and broadcasts ----
    {
        for n in [1usize, 255, 1_000_003, 16_777_216] {
            let v = rng.vec(n, -1.0, 1.5);
            let g = up(&v);
            let s1 = host(&g.sum_all().unwrap());
            let s2 = host(&g.sum_all().unwrap());
            let want = c(&v).sum_all().unwrap().to_host_f32().unwrap();
            r.check(&format!("sum_all n={n}"), &s1, &want, false, 1e-6, 1e-6);
            if s1[0].to_bits() != s2[0].to_bits() {
                r.fail("sum_all determinism", format!("{} vs {}", s1[0], s2[0]));
            }
        }
        for (outer, mid, inner) in [(5usize, 64usize, 50usize), (300, 513, 1), (1, 7, 3), (3, 1, 1)] {
            let s = BroadcastSpec { outer, mid, inner };
            let v = rng.vec(outer * mid * inner, -2.0, 2.0);
            let b = rng.vec(mid, -1.0, 1.0);
            let (vg, bg) = (up(&v), up(&b));
            let want = c(&v).broadcast_add(&c(&b), s).unwrap().to_host_f32().unwrap();
            r.check(&format!("broadcast_add {outer}x{mid}x{inner}"), &host(&vg.broadcast_add(&bg, s).unwrap()), &want, true, 0.0, 0.0);
            let want = c(&v).broadcast_mul(&c(&b), s).unwrap().to_host_f32().unwrap();
            r.check(&format!("broadcast_mul {outer}x{mid}x{inner}"), &host(&vg.broadcast_mul(&bg, s).unwrap()), &want, true, 0.0, 0.0);
        }
        for (outer, mid, inner) in [(1600usize, 4096usize, 1usize), (5, 64, 3136), (5, 4096, 49), (3, 7, 5), (1, 3, 70000), (7, 1, 1)] {
            let s = BroadcastSpec { outer, mid, inner };
            let v = rng.vec(outer * mid * inner, -1.0, 1.2);
            let want = c(&v).reduce_to_mid(s).unwrap().to_host_f32().unwrap();
            r.check(&format!("reduce_to_mid {outer}x{mid}x{inner}"), &host(&up(&v).reduce_to_mid(s).unwrap()), &want, false, 1e-6, 1e-5);
        }
    }

    // ---- copy_blocks_into ----
    {
        let src = rng.vec(10_000, -1.0, 1.0);
        let cp = BlockCopy { outer: 37, block: 100, src_stride: 250, src_offset: 13, dst_stride: 120, dst_offset: 7 };
        let dst0 = rng.vec(5000, -1.0, 1.0);
        let mut dc = c(&dst0);
        c(&src).copy_blocks_into(&mut dc, cp).unwrap();
        let mut dg = up(&dst0);
        up(&src).copy_blocks_into(&mut dg, cp).unwrap();
        r.check("copy_blocks_into", &host(&dg), dc.as_f32(), true, 0.0, 0.0);
    }

    // ---- batch norm ----
    for (d, offset) in [
        (Nchw { n: 5, c: 64, h: 56, w: 56 }, 0.0f32),
        (Nchw { n: 5, c: 512, h: 7, w: 7 }, 0.0),
        (Nchw { n: 2, c: 3, h: 5, w: 3 }, 100.0),
        (Nchw { n: 5, c: 16, h: 112, w: 112 }, 3.0),
        (Nchw { n: 1, c: 4, h: 1, w: 1 }, 0.0),
    ] {
        let x: Vec<f32> = rng.vec(d.len(), -2.0, 3.0).iter().map(|v| v + offset).collect();
        let gamma = rng.vec(d.c, 0.5, 1.5);
        let beta = rng.vec(d.c, -0.5, 0.5);
        let dy = rng.vec(d.len(), -1.0, 1.0);
        let f = c(&x).batch_norm_train(&c(&gamma), &c(&beta), d, 1e-5, false).unwrap();
        let (xg, gg, bg) = (up(&x), up(&gamma), up(&beta));
        let fg = xg.batch_norm_train(&gg, &bg, d, 1e-5, false).unwrap();
        let tag = format!("{}x{}x{}x{}", d.n, d.c, d.h, d.w);
        r.check(&format!("bn mean {tag}"), &host(&fg.mean), f.mean.as_f32(), false, 1e-5, 1e-6);
        r.check(&format!("bn invstd {tag}"), &host(&fg.invstd), f.invstd.as_f32(), false, 1e-5, 0.0);
        r.check(&format!("bn var_unbiased {tag}"), &host(&fg.var_unbiased), f.var_unbiased.as_f32(), false, 1e-5, 1e-7);
        r.check(&format!("bn y {tag}"), &host(&fg.y), f.y.as_f32(), false, 1e-5, 1e-5);
        let b = c(&x).batch_norm_backward(&c(&dy), &c(&gamma), &c(&beta), &f.mean, &f.invstd, d, false).unwrap();
        let (mg, ig) = (up(f.mean.as_f32()), up(f.invstd.as_f32()));
        let dyg = up(&dy);
        let bgr = xg.batch_norm_backward(&dyg, &gg, &bg, &mg, &ig, d, false).unwrap();
        r.check(&format!("bn dx {tag}"), &host(&bgr.dx), b.dx.as_f32(), false, 1e-5, 1e-5);
        r.check(&format!("bn dgamma {tag}"), &host(&bgr.dgamma), b.dgamma.as_f32(), false, 1e-5, 1e-5);
        r.check(&format!("bn dbeta {tag}"), &host(&bgr.dbeta), b.dbeta.as_f32(), false, 1e-5, 1e-5);
        // Fused ReLU (relu = true both ways): against the CPU's fused path with the same
        // tolerances, and bit-exact against the GPU's own unfused path (relu of the plain
        // output; backward of relu_backward(y, dy) materialised, y a stored output, below).
        let fr = c(&x).batch_norm_train(&c(&gamma), &c(&beta), d, 1e-5, true).unwrap();
        let fgr = xg.batch_norm_train(&gg, &bg, d, 1e-5, true).unwrap();
        r.check(&format!("bn+relu y {tag}"), &host(&fgr.y), fr.y.as_f32(), false, 1e-5, 1e-5);
        let relu_of_plain = host(&fg.y.unary(UnaryOp::Relu).unwrap());
        r.check(&format!("bn+relu y = relu(bn y) {tag} exact"), &host(&fgr.y), &relu_of_plain, true, 0.0, 0.0);
        // Both sides recompute the mask from the CPU's statistics, so that values near 0 gate
        // the same elements.
        let br = c(&x).batch_norm_backward(&c(&dy), &c(&gamma), &c(&beta), &f.mean, &f.invstd, d, true).unwrap();
        let bgrr = xg.batch_norm_backward(&dyg, &gg, &bg, &mg, &ig, d, true).unwrap();
        r.check(&format!("bn+relu dx {tag}"), &host(&bgrr.dx), br.dx.as_f32(), false, 1e-5, 1e-5);
        r.check(&format!("bn+relu dgamma {tag}"), &host(&bgrr.dgamma), br.dgamma.as_f32(), false, 1e-5, 1e-5);
        r.check(&format!("bn+relu dbeta {tag}"), &host(&bgrr.dbeta), br.dbeta.as_f32(), false, 1e-5, 1e-5);
        // Bit-exact against the unfused kernels on the gradient masked by a stored output: the
        // CPU's (the mask recomputed from its statistics must be its y, bit for bit: the
        // normalisations agree exactly given the same statistics) and the GPU forward's own.
        let yrc = up(fr.y.as_f32());
        for (who, y, m, i) in [("cpu", &yrc, &mg, &ig), ("gpu", &fgr.y, &fgr.mean, &fgr.invstd)] {
            let fused = xg.batch_norm_backward(&dyg, &gg, &bg, m, i, d, true).unwrap();
            let unfused = xg.batch_norm_backward(&y.relu_backward(&dyg).unwrap(), &gg, &bg, m, i, d, false).unwrap();
            let what = format!("{tag}, {who} statistics and stored y, exact");
            r.check(&format!("bn+relu dx = unfused {what}"), &host(&fused.dx), &host(&unfused.dx), true, 0.0, 0.0);
            r.check(&format!("bn+relu dgamma = unfused {what}"), &host(&fused.dgamma), &host(&unfused.dgamma), true, 0.0, 0.0);
            r.check(&format!("bn+relu dbeta = unfused {what}"), &host(&fused.dbeta), &host(&unfused.dbeta), true, 0.0, 0.0);
        }
        if timings && d.h == 112 {
            timed(&dev, &format!("batch_norm_train {tag}"), 10, || drop(xg.batch_norm_train(&gg, &bg, d, 1e-5, false).unwrap()));
            timed(&dev, &format!("batch_norm_train relu {tag}"), 10, || drop(xg.batch_norm_train(&gg, &bg, d, 1e-5, true).unwrap()));
        }
    }

    // ---- batch norm statistics of non-finite input: NaN as on the CPU, not clamped to 0 ----
    {
        let d = Nchw { n: 2, c: 3, h: 4, w: 4 };
        let mut x = rng.vec(d.len(), -2.0, 3.0);
        x[5] = f32::INFINITY; // channel 0 (not its first element, the kernel's shift)
        x[16 + 7] = f32::NAN; // channel 1; channel 2 stays finite
        let (gamma, beta) = (rng.vec(d.c, 0.5, 1.5), rng.vec(d.c, -0.5, 0.5));
        let f = c(&x).batch_norm_train(&c(&gamma), &c(&beta), d, 1e-5, false).unwrap();
        let fg = up(&x).batch_norm_train(&up(&gamma), &up(&beta), d, 1e-5, false).unwrap();
        assert!(f.invstd.as_f32()[0].is_nan() && f.invstd.as_f32()[1].is_nan() && f.invstd.as_f32()[2].is_finite());
        r.check("bn mean, non-finite x", &host(&fg.mean), f.mean.as_f32(), false, 1e-5, 1e-6);
        r.check("bn invstd, non-finite x", &host(&fg.invstd), f.invstd.as_f32(), false, 1e-5, 0.0);
        r.check("bn var_unbiased, non-finite x", &host(&fg.var_unbiased), f.var_unbiased.as_f32(), false, 1e-5, 1e-7);
        // An infinite shift sample (a channel's first element): the mean is that infinity, as on
        // the CPU (the kernel then shifts by 0; it used to give NaN).
        x = rng.vec(d.len(), -2.0, 3.0);
        x[0] = f32::INFINITY;
        x[16] = f32::NEG_INFINITY;
        let f = c(&x).batch_norm_train(&c(&gamma), &c(&beta), d, 1e-5, false).unwrap();
        let fg = up(&x).batch_norm_train(&up(&gamma), &up(&beta), d, 1e-5, false).unwrap();
        assert_eq!(&f.mean.as_f32()[..2], &[f32::INFINITY, f32::NEG_INFINITY]);
        r.check("bn mean, infinite shift sample", &host(&fg.mean), f.mean.as_f32(), false, 1e-5, 1e-6);
        r.check("bn invstd, infinite shift sample", &host(&fg.invstd), f.invstd.as_f32(), false, 1e-5, 0.0);
    }

    // ---- pooling (quantised values: many ties) ----
    for d in [Nchw { n: 2, c: 3, h: 8, w: 8 }, Nchw { n: 2, c: 5, h: 7, w: 9 }, Nchw { n: 5, c: 64, h: 224, w: 224 }] {
        let x: Vec<f32> = (0..d.len()).map(|_| rng.below(4) as f32 - 1.0).collect();
        let dy = rng.vec(d.n * d.c * (d.h / 2) * (d.w / 2), -1.0, 1.0);
        let xg = up(&x);
        let tag = format!("{}x{}x{}x{}", d.n, d.c, d.h, d.w);
        let want = c(&x).max_pool2x2(d).unwrap().to_host_f32().unwrap();
        r.check(&format!("max_pool2x2 {tag}"), &host(&xg.max_pool2x2(d).unwrap()), &want, true, 0.0, 0.0);
        let want = c(&x).max_pool2x2_backward(&c(&dy), d).unwrap().to_host_f32().unwrap();
        r.check(&format!("max_pool2x2_backward {tag}"), &host(&xg.max_pool2x2_backward(&up(&dy), d).unwrap()), &want, true, 0.0, 0.0);
    }

    // ---- upsampling ----
    for (d, oh, ow) in [
        (Nchw { n: 2, c: 3, h: 7, w: 7 }, 224usize, 224usize),
        (Nchw { n: 1, c: 2, h: 5, w: 4 }, 9, 13),
        (Nchw { n: 1, c: 1, h: 8, w: 8 }, 3, 5),
        (Nchw { n: 2, c: 4, h: 112, w: 112 }, 224, 224),
        (Nchw { n: 1, c: 2, h: 1, w: 3 }, 4, 4),
    ] {
        let x = rng.vec(d.len(), -1.0, 1.0);
        let dy = rng.vec(d.n * d.c * oh * ow, -1.0, 1.0);
        let tag = format!("{}x{}x{}x{}->{oh}x{ow}", d.n, d.c, d.h, d.w);
        let want = c(&x).upsample_bilinear(d, oh, ow).unwrap().to_host_f32().unwrap();
        r.check(&format!("upsample {tag}"), &host(&up(&x).upsample_bilinear(d, oh, ow).unwrap()), &want, true, 0.0, 0.0);
        let want = c(&dy).upsample_bilinear_backward(d, oh, ow).unwrap().to_host_f32().unwrap();
        let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        r.check(
            &format!("upsample_backward {tag}"),
            &host(&up(&dy).upsample_bilinear_backward(d, oh, ow).unwrap()),
            &want,
            false,
            1e-5,
            1e-6 * scale,
        );
    }

    // ---- sparse hypercolumn gather, the model's geometry ----
    {
        let g = GatherSpec {
            n: 5,
            in_h: 224,
            in_w: 224,
            taps: vec![(64, 224, 224), (128, 112, 112), (256, 56, 56), (512, 28, 28), (512, 14, 14), (4096, 7, 7)],
        };
        let taps: Vec<Vec<f32>> = g.taps.iter().map(|&(ch, h, w)| rng.vec(g.n * ch * h * w, -1.0, 1.0)).collect();
        // Grouped by image as the sampler draws them (the small taps' tiled gather relies on it
        // for speed, not for its values).
        let mut points: Vec<SamplePoint> =
            (0..1600u32).map(|i| SamplePoint { image: i * 5 / 1600, y: rng.below(224), x: rng.below(224) }).collect();
        points[0] = SamplePoint { image: 0, y: 0, x: 0 };
        points[1] = SamplePoint { image: 4, y: 223, x: 223 };
        points[2] = SamplePoint { image: 2, y: 0, x: 223 };
        points[3] = points[4]; // a repeated point
        let cpu_taps: Vec<CpuStorage> = taps.iter().map(|t| c(t)).collect();
        let cpu_refs: Vec<&CpuStorage> = cpu_taps.iter().collect();
        let gpu_taps: Vec<CudaStorage> = taps.iter().map(|t| up(t)).collect();
        let gpu_refs: Vec<&CudaStorage> = gpu_taps.iter().collect();
        let want = CpuStorage::gather_hypercolumns(&cpu_refs, &points, &g).unwrap();
        let got = CudaStorage::gather_hypercolumns(&gpu_refs, &points, &g).unwrap();
        r.check("gather forward 1600x5568", &host(&got), want.as_f32(), true, 0.0, 0.0);
        let grad = rng.vec(points.len() * g.total_channels(), -1.0, 1.0);
        let gg = up(&grad);
        let want = c(&grad).gather_hypercolumns_backward(&points, &g, true).unwrap();
        let det1 = gg.gather_hypercolumns_backward(&points, &g, true).unwrap();
        let det2 = gg.gather_hypercolumns_backward(&points, &g, true).unwrap();
        let atom = gg.gather_hypercolumns_backward(&points, &g, false).unwrap();
        for (i, w) in want.iter().enumerate() {
            let d1 = host(&det1[i]);
            r.check(&format!("gather backward deterministic tap {i}"), &d1, w.as_f32(), true, 0.0, 0.0);
            if d1.iter().zip(host(&det2[i])).any(|(a, b)| a.to_bits() != b.to_bits()) {
                r.fail("gather backward determinism", format!("tap {i} differs between runs"));
            }
            // Small taps take the CSR scatter in either mode: bit-exact there.
            let (_, h, w_) = g.taps[i];
            let small = h * w_ <= ops::SMALL_TAP_MAX_PLANE as usize;
            let (rel, abs) = if small { (0.0, 0.0) } else { (1e-5, 1e-6) };
            r.check(&format!("gather backward atomic mode tap {i}"), &host(&atom[i]), w.as_f32(), small, rel, abs);
        }
        if timings {
            timed(&dev, "gather forward 1600 x 5568", 20, || drop(CudaStorage::gather_hypercolumns(&gpu_refs, &points, &g).unwrap()));
            timed(&dev, "gather backward atomic", 20, || drop(gg.gather_hypercolumns_backward(&points, &g, false).unwrap()));
            timed(&dev, "gather backward deterministic", 10, || drop(gg.gather_hypercolumns_backward(&points, &g, true).unwrap()));
        }
    }

    // ---- softmax cross-entropy ----
    for (rows, k, weighted) in [(1600usize, 2usize, false), (1600, 2, true), (333, 5, true), (1, 3, false)] {
        let z = rng.vec(rows * k, -6.0, 6.0);
        let labels: Vec<u32> = (0..rows).map(|_| rng.below(k as u32)).collect();
        let w = rng.vec(k, 0.2, 2.0);
        let wopt = weighted.then_some(w.as_slice());
        let (lc, gc) = c(&z).softmax_cross_entropy(&labels, k, wopt).unwrap();
        let (lg, gg) = up(&z).softmax_cross_entropy(&labels, k, wopt).unwrap();
        let tag = format!("{rows}x{k}{}", if weighted { " weighted" } else { "" });
        r.check(&format!("softmax_xent loss {tag}"), &host(&lg), lc.as_f32(), false, 1e-5, 0.0);
        r.check(&format!("softmax_xent grad {tag}"), &host(&gg), gc.as_f32(), false, 1e-5, 1e-8);
    }

    // ---- dropout ----
    for (keep, seed) in [(0.5f32, 7u32), (0.9, 0xDEAD_BEEF), (1.0, 3), (0.0, 1)] {
        let n = 100_003;
        let want = c(&[0.0]).dropout_mask(n, keep, seed).unwrap().to_host_f32().unwrap();
        r.check(&format!("dropout_mask keep={keep}"), &host(&xg.dropout_mask(n, keep, seed).unwrap()), &want, true, 0.0, 0.0);
    }

    // ---- Adam ----
    {
        let h = AdamStep {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
            bias_correction1: 1.0 - 0.9f32.powi(3),
            bias_correction2: 1.0 - 0.999f32.powi(3),
        };
        let sizes = [100_000usize, 1, 16384, 16385, 70_001];
        let mut cpu_state = Vec::new();
        let mut gpu_state = Vec::new();
        for &n in &sizes {
            let p = rng.vec(n, -1.0, 1.0);
            let g = rng.vec(n, -1.0, 1.0);
            let m = rng.vec(n, -0.1, 0.1);
            let v = rng.vec(n, 0.0, 0.01);
            cpu_state.push((c(&p), c(&g), c(&m), c(&v)));
            gpu_state.push((up(&p), up(&g), up(&m), up(&v)));
        }
        for (p, g, m, v) in cpu_state.iter_mut() {
            p.adam_step(g, m, v, &h).unwrap();
        }
        // The first tensor through the single-tensor kernel, the rest through the multi-tensor one.
        {
            let (p, g, m, v) = &mut gpu_state[0];
            p.adam_step(g, m, v, &h).unwrap();
        }
        {
            let mut groups: Vec<ops::AdamGroup> =
                gpu_state[1..].iter_mut().map(|(p, g, m, v)| ops::AdamGroup { p, grad: g, m, v }).collect();
            ops::adam_step_multi(&mut groups, &h).unwrap();
        }
        for (i, ((pc, _, mc, vc), (pg, _, mg, vg))) in cpu_state.iter().zip(&gpu_state).enumerate() {
            let kind = if i == 0 { "adam_step" } else { "adam_step_multi" };
            r.check(&format!("{kind} p n={}", sizes[i]), &host(pg), pc.as_f32(), true, 0.0, 0.0);
            r.check(&format!("{kind} m n={}", sizes[i]), &host(mg), mc.as_f32(), true, 0.0, 0.0);
            r.check(&format!("{kind} v n={}", sizes[i]), &host(vg), vc.as_f32(), true, 0.0, 0.0);
        }
    }

    // ---- factored dense first layer: pixel-major planes sampled, summed, biased, clamped ----
    {
        // (a) A 64x64 frame with the model's six strides and 4096 columns; (b) two images of a
        // 13x11 frame, a plane that does not divide it, and a column count that is not a
        // multiple of 32 (a partial block).
        let cases = [
            (
                PlaneSumSpec { n: 1, in_h: 64, in_w: 64, cols: 4096, planes: vec![(64, 64), (32, 32), (16, 16), (8, 8), (4, 4), (2, 2)] },
                3000,
            ),
            (PlaneSumSpec { n: 2, in_h: 13, in_w: 11, cols: 37, planes: vec![(13, 11), (6, 5), (3, 3)] }, 200),
        ];
        for (spec, count) in cases {
            let PlaneSumSpec { n, in_h, in_w, cols, planes: ref dims } = spec;
            let planes: Vec<Vec<f32>> = dims.iter().map(|&(h, w)| rng.vec(n * h * w * cols, -1.0, 1.0)).collect();
            let bias = rng.vec(cols, -0.5, 0.5);
            let mut points: Vec<SamplePoint> = (0..count)
                .map(|_| SamplePoint { image: rng.below(n as u32), y: rng.below(in_h as u32), x: rng.below(in_w as u32) })
                .collect();
            points[0] = SamplePoint { image: 0, y: 0, x: 0 };
            points[1] = SamplePoint { image: n as u32 - 1, y: in_h as u32 - 1, x: in_w as u32 - 1 };
            let cpu_planes: Vec<CpuStorage> = planes.iter().map(|p| c(p)).collect();
            let gpu_planes: Vec<CudaStorage> = planes.iter().map(|p| up(p)).collect();
            let want = CpuStorage::upsample_sum_bias_relu(&cpu_planes.iter().collect::<Vec<_>>(), &c(&bias), &points, &spec).unwrap();
            let got = CudaStorage::upsample_sum_bias_relu(&gpu_planes.iter().collect::<Vec<_>>(), &up(&bias), &points, &spec).unwrap();
            r.check(&format!("upsample_sum_bias_relu {}x{cols}", points.len()), &host(&got), want.as_f32(), true, 0.0, 0.0);
        }
        if timings {
            // The paper model's dense tile: 8192 pixels of a 224x224 frame, 4096 columns.
            let dims = vec![(224, 224), (112, 112), (56, 56), (28, 28), (14, 14), (7, 7)];
            let spec = PlaneSumSpec { n: 1, in_h: 224, in_w: 224, cols: 4096, planes: dims.clone() };
            let planes: Vec<CudaStorage> = dims.iter().map(|&(h, w)| dev.zeros(h * w * 4096).unwrap()).collect();
            let refs: Vec<&CudaStorage> = planes.iter().collect();
            let bias = dev.zeros(4096).unwrap();
            let points: Vec<SamplePoint> = (0..8192u32).map(|p| SamplePoint { image: 0, y: p / 224, x: p % 224 }).collect();
            timed(&dev, "upsample_sum_bias_relu 8192 x 4096", 20, || {
                drop(CudaStorage::upsample_sum_bias_relu(&refs, &bias, &points, &spec).unwrap())
            });
        }
    }

    // ---- finiteness check over many buffers (the training step's divergence check) ----
    {
        // Sizes across the 65536-element chunks, one empty buffer; values planted far apart.
        let sizes = [1usize, 70_000, 0, 200_003, 65_536];
        let base: Vec<Vec<f32>> = sizes.iter().map(|&n| rng.vec(n, -1e38, 1e38)).collect();
        // (name, values planted as (buffer, index, value)).
        type Plant = Vec<(usize, usize, f32)>;
        let cases: [(&str, Plant); 4] = [
            ("all finite", vec![]),
            ("one inf", vec![(3, 199_999, f32::NEG_INFINITY)]),
            ("infs", vec![(1, 65_536, f32::INFINITY), (4, 0, f32::NEG_INFINITY)]),
            ("nan and inf", vec![(3, 131_072, f32::NAN), (1, 5, f32::INFINITY)]),
        ];
        for (name, plant) in cases {
            let mut bufs = base.clone();
            for &(b, i, v) in &plant {
                bufs[b][i] = v;
            }
            let cpu: Vec<CpuStorage> = bufs.iter().map(|b| c(b)).collect();
            let gpu: Vec<CudaStorage> = bufs.iter().map(|b| up(b)).collect();
            let want = CpuStorage::non_finite(&cpu.iter().collect::<Vec<_>>()).unwrap();
            let got = CudaStorage::non_finite(&gpu.iter().collect::<Vec<_>>()).unwrap();
            r.check(&format!("non_finite {name}"), &host(&got), want.as_f32(), true, 0.0, 0.0);
        }
    }

    // ---- MLP pieces ----
    {
        let (rows, cols) = (1600usize, 4096usize);
        let z = rng.vec(rows * cols, -1.0, 1.0);
        let b = rng.vec(cols, -0.5, 0.5);
        let s = BroadcastSpec { outer: rows, mid: cols, inner: 1 };
        let want = c(&z).broadcast_add(&c(&b), s).unwrap().unary(UnaryOp::Relu).unwrap();
        let mut yg = up(&z);
        ops::bias_relu_forward(&mut yg, &up(&b), rows, cols).unwrap();
        r.check("bias_relu_forward", &host(&yg), want.as_f32(), true, 0.0, 0.0);
        let dy = rng.vec(rows * cols, -1.0, 1.0);
        let dz = want.relu_backward(&c(&dy)).unwrap();
        let db = dz.reduce_to_mid(s).unwrap();
        let (dzg, dbg) = ops::bias_relu_backward(&yg, &up(&dy), rows, cols).unwrap();
        r.check("bias_relu_backward dz", &host(&dzg), dz.as_f32(), true, 0.0, 0.0);
        r.check("bias_relu_backward db", &host(&dbg), db.as_f32(), false, 1e-6, 1e-5);
    }

    // ---- timings at the model's sizes (no checks) ----
    if timings {
        let n = 5 * 64 * 224 * 224;
        let a = up(&rng.vec(n, -1.0, 1.0));
        let b = up(&rng.vec(n, -1.0, 1.0));
        let gb = |ms: f64, bytes: usize| bytes as f64 / ms / 1e6;
        let t0 = Instant::now();
        for _ in 0..10 {
            drop(a.binary(&b, BinaryOp::Add).unwrap());
        }
        dev.synchronize().unwrap();
        let ms = t0.elapsed().as_secs_f64() * 1e3 / 10.0;
        println!("TIME binary Add 16M                                 mean {ms:.4} ms ({:.0} GB/s)", gb(ms, n * 12));
        timed(&dev, "unary Relu 16M", 10, || drop(a.unary(UnaryOp::Relu).unwrap()));
        timed(&dev, "unary Exp 16M", 10, || drop(a.unary(UnaryOp::Exp).unwrap()));
        timed(&dev, "sum_all 16M", 10, || drop(a.sum_all().unwrap()));
        let d = Nchw { n: 5, c: 64, h: 224, w: 224 };
        let gamma = up(&rng.vec(64, 0.5, 1.5));
        let beta = up(&rng.vec(64, -0.5, 0.5));
        timed(&dev, "batch_norm_train 5x64x224x224", 10, || drop(a.batch_norm_train(&gamma, &beta, d, 1e-5, false).unwrap()));
        let f = a.batch_norm_train(&gamma, &beta, d, 1e-5, false).unwrap();
        timed(&dev, "batch_norm_backward 5x64x224x224", 10, || {
            drop(a.batch_norm_backward(&b, &gamma, &beta, &f.mean, &f.invstd, d, false).unwrap())
        });
        timed(&dev, "batch_norm_train relu 5x64x224x224", 10, || drop(a.batch_norm_train(&gamma, &beta, d, 1e-5, true).unwrap()));
        let fr = a.batch_norm_train(&gamma, &beta, d, 1e-5, true).unwrap();
        timed(&dev, "batch_norm_backward relu 5x64x224x224", 10, || {
            drop(a.batch_norm_backward(&b, &gamma, &beta, &fr.mean, &fr.invstd, d, true).unwrap())
        });
        timed(&dev, "max_pool2x2 5x64x224x224", 10, || drop(a.max_pool2x2(d).unwrap()));
        let dyp = up(&rng.vec(n / 4, -1.0, 1.0));
        timed(&dev, "max_pool2x2_backward 5x64x224x224", 10, || drop(a.max_pool2x2_backward(&dyp, d).unwrap()));
        let s = BroadcastSpec { outer: 1600, mid: 4096, inner: 1 };
        let m = up(&rng.vec(1600 * 4096, -1.0, 1.0));
        timed(&dev, "reduce_to_mid 1600x4096", 10, || drop(m.reduce_to_mid(s).unwrap()));
        let s2 = BroadcastSpec { outer: 5, mid: 64, inner: 224 * 224 };
        timed(&dev, "reduce_to_mid 5x64x50176", 10, || drop(a.reduce_to_mid(s2).unwrap()));
        let bias = up(&rng.vec(4096, -1.0, 1.0));
        let mut y = m.try_clone().unwrap();
        timed(&dev, "bias_relu_forward 1600x4096", 10, || ops::bias_relu_forward(&mut y, &bias, 1600, 4096).unwrap());
        timed(&dev, "bias_relu_backward 1600x4096", 10, || drop(ops::bias_relu_backward(&y, &m, 1600, 4096).unwrap()));
        let h =
            AdamStep { lr: 1e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0, bias_correction1: 0.1, bias_correction2: 0.001 };
        let (mut p, g, mut mm, mut vv) = (a.try_clone().unwrap(), b.try_clone().unwrap(), dev.zeros(n).unwrap(), dev.zeros(n).unwrap());
        timed(&dev, "adam_step 16M", 10, || p.adam_step(&g, &mut mm, &mut vv, &h).unwrap());
        timed(&dev, "adam_step_multi 16M (one tensor)", 10, || {
            ops::adam_step_multi(&mut [ops::AdamGroup { p: &mut p, grad: &g, m: &mut mm, v: &mut vv }], &h).unwrap()
        });
        let z = up(&rng.vec(3200, -3.0, 3.0));
        let labels: Vec<u32> = (0..1600).map(|_| rng.below(2)).collect();
        timed(&dev, "softmax_cross_entropy 1600x2", 20, || drop(z.softmax_cross_entropy(&labels, 2, None).unwrap()));
        let small = up(&rng.vec(5 * 4096 * 49, -1.0, 1.0));
        let d7 = Nchw { n: 5, c: 4096, h: 7, w: 7 };
        timed(&dev, "upsample 5x4096x7x7 -> 28x28", 10, || drop(small.upsample_bilinear(d7, 28, 28).unwrap()));
    }

    dev.synchronize().unwrap();
    println!("\n{} checks, {} failures", r.rows.len(), r.failures.len());
    assert!(r.failures.is_empty(), "CUDA kernel parity failures:\n{}", r.failures.join("\n"));
}
