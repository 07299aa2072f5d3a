//! Every engine kernel at the paper model's real sizes, through the `Storage` API on the device
//! under test: CUDA when `Device::cuda(0)` opens (set `HYPERSEG_BENCH_CPU=1` to force the CPU),
//! else the CPU at reduced sizes (a note says so).
//!
//! Throughput is set so that criterion's rates compare with the GPU's limits:
//! `Elements` = FLOPs (2 per multiply-accumulate) for GEMMs and convolutions ("Gelem/s" reads
//! GFLOP/s), `Bytes` = the bytes a kernel must at least read and write for memory-bound
//! kernels. On CUDA every iteration ends with `device.synchronize()`. GEMMs and convolutions
//! run in fp32 and again with TF32 (suffix `tf32`); convolutions also in the bf16 mode (suffix
//! `bf16`: the transposing casts and cuDNN on NHWC bf16).
//!
//! Run: `cargo bench --bench kernels` (a filter narrows it: `cargo bench --bench kernels -- conv`).

use std::hint::black_box;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use criterion::measurement::WallTime;
use criterion::{criterion_group, criterion_main, BenchmarkGroup, Criterion, SamplingMode, Throughput};
use hyperseg_engine::backend::{AdamStep, ConvKeep, ConvSpec, GatherSpec, GemmSpec, Nchw, PlaneSumSpec, SamplePoint, UnaryOp};
use hyperseg_engine::bf16::{upsample_sum_bias_relu_bf16, Bf16Matrix};
use hyperseg_engine::storage::Storage;
use hyperseg_engine::Tensor;
use hyperseg_engine::{settings, Device, Result};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// The device under test, and whether it gets the full sizes.
struct Target {
    dev: Device,
    full: bool,
}

fn target() -> Target {
    // Say which device once, not once per group.
    static SAID: AtomicBool = AtomicBool::new(false);
    let quiet = SAID.swap(true, Ordering::Relaxed);
    let note = |msg: String| {
        if !quiet {
            eprintln!("{msg}");
        }
    };
    if std::env::var("HYPERSEG_BENCH_CPU").as_deref() == Ok("1") {
        note("note: HYPERSEG_BENCH_CPU=1: benchmarking the CPU backend at REDUCED sizes (not the model's)".into());
        return Target { dev: Device::Cpu, full: false };
    }
    match Device::cuda(0) {
        Ok(dev) => {
            if let Device::Cuda(d) = &dev {
                note(format!("benchmarking CUDA device 0 ({}) at the paper model's sizes", d.name()));
            }
            Target { dev, full: true }
        }
        Err(e) => {
            note(format!("note: no CUDA device ({e}); benchmarking the CPU backend at REDUCED sizes (not the model's)"));
            Target { dev: Device::Cpu, full: false }
        }
    }
}

/// Uniform values in [-1, 1) on `dev`.
fn rand_storage(dev: &Device, len: usize, seed: u64) -> Storage {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let v: Vec<f32> = (0..len).map(|_| rng.random_range(-1.0f32..1.0)).collect();
    Storage::from_vec(dev, v).expect("upload")
}

/// Uniform values in [lo, hi) on `dev`.
fn rand_storage_in(dev: &Device, len: usize, lo: f32, hi: f32, seed: u64) -> Storage {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let v: Vec<f32> = (0..len).map(|_| rng.random_range(lo..hi)).collect();
    Storage::from_vec(dev, v).expect("upload")
}

/// Times `f` (one kernel call and whatever it returns), synchronising the device every
/// iteration.
fn run<T>(g: &mut BenchmarkGroup<'_, WallTime>, dev: &Device, name: &str, tp: Throughput, mut f: impl FnMut() -> Result<T>) {
    g.throughput(tp);
    g.bench_function(name, |b| {
        b.iter(|| {
            let out = f().expect(name);
            dev.synchronize().expect("synchronize");
            black_box(out)
        })
    });
}

fn group<'a>(c: &'a mut Criterion, name: &str) -> BenchmarkGroup<'a, WallTime> {
    let mut g = c.benchmark_group(name);
    g.sampling_mode(SamplingMode::Flat);
    g
}

const F32: u64 = 4;

fn upsample(c: &mut Criterion) {
    let t = target();
    let mut g = group(c, "upsample_bilinear");
    // conv5_3 of one image to the input size; fc7 to 56x56 (the factored path's first tile scale).
    let cases: Vec<(&str, Nchw, usize)> = if t.full {
        vec![
            ("conv5_3_1x512x14x14_to_224", Nchw { n: 1, c: 512, h: 14, w: 14 }, 224),
            ("fc7_1x4096x7x7_to_56", Nchw { n: 1, c: 4096, h: 7, w: 7 }, 56),
        ]
    } else {
        vec![
            ("conv5_3_1x64x14x14_to_224", Nchw { n: 1, c: 64, h: 14, w: 14 }, 224),
            ("fc7_1x512x7x7_to_56", Nchw { n: 1, c: 512, h: 7, w: 7 }, 56),
        ]
    };
    for (name, d, out) in cases {
        let x = rand_storage(&t.dev, d.len(), 1);
        let dy = rand_storage(&t.dev, d.n * d.c * out * out, 2);
        let bytes = F32 * (d.len() + d.n * d.c * out * out) as u64;
        run(&mut g, &t.dev, &format!("{name}/forward"), Throughput::Bytes(bytes), || x.upsample_bilinear(d, out, out));
        run(&mut g, &t.dev, &format!("{name}/backward"), Throughput::Bytes(bytes), || dy.upsample_bilinear_backward(d, out, out));
    }
    g.finish();
}

fn gather(c: &mut Criterion) {
    let t = target();
    let mut g = group(c, "gather_hypercolumns");
    // The paper's taps for a batch of 5 (5568 columns); the CPU gets an eighth of the channels.
    let div = if t.full { 1 } else { 8 };
    let (n, s, points) = (5usize, 224usize, 1600usize);
    let widths = [64, 128, 256, 512, 512, 4096];
    let spec = GatherSpec { n, in_h: s, in_w: s, taps: widths.iter().enumerate().map(|(i, &w)| (w / div, s >> i, s >> i)).collect() };
    let taps: Vec<Storage> =
        spec.taps.iter().enumerate().map(|(i, &(c, h, w))| rand_storage(&t.dev, n * c * h * w, 10 + i as u64)).collect();
    let refs: Vec<&Storage> = taps.iter().collect();
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let pts: Vec<SamplePoint> = (0..points)
        .map(|i| SamplePoint { image: (i * n / points) as u32, y: rng.random_range(0..s as u32), x: rng.random_range(0..s as u32) })
        .collect();
    let ctot = spec.total_channels();
    let grad = rand_storage(&t.dev, points * ctot, 4);
    let tap_bytes: u64 = spec.taps.iter().map(|&(c, h, w)| F32 * (n * c * h * w) as u64).sum();
    // Forward: four reads and one write per output value.
    let fwd = F32 * 5 * (points * ctot) as u64;
    // Backward: zeroing every tap gradient, reading the gathered gradient, four updates.
    let bwd = tap_bytes + F32 * 5 * (points * ctot) as u64;
    let label = format!("{points}pts_{ctot}cols_batch{n}");
    run(&mut g, &t.dev, &format!("{label}/forward"), Throughput::Bytes(fwd), || Storage::gather_hypercolumns(&refs, &pts, &spec));
    run(&mut g, &t.dev, &format!("{label}/backward"), Throughput::Bytes(bwd), || grad.gather_hypercolumns_backward(&pts, &spec, false));
    run(&mut g, &t.dev, &format!("{label}/backward_deterministic"), Throughput::Bytes(bwd), || {
        grad.gather_hypercolumns_backward(&pts, &spec, true)
    });
    g.finish();
}

/// The GEMMs of one linear layer `[rows, k] -> [rows, n]` (weight `[n, k]`), as `ops::linear`
/// issues them: forward, input gradient, weight gradient.
fn linear_gemms(g: &mut BenchmarkGroup<'_, WallTime>, dev: &Device, name: &str, rows: usize, k: usize, n: usize, suffix: &str) {
    let x = rand_storage(dev, rows * k, 20);
    let w = rand_storage(dev, n * k, 21);
    let dy = rand_storage(dev, rows * n, 22);
    let fl = Throughput::Elements(2 * (rows * n * k) as u64);
    let sz = format!("{name}_{rows}x{k}_to_{n}");
    run(g, dev, &format!("{sz}/forward{suffix}"), fl.clone(), || x.gemm(&w, GemmSpec { m: rows, n, k, trans_a: false, trans_b: true }));
    run(g, dev, &format!("{sz}/backward_input{suffix}"), fl.clone(), || {
        dy.gemm(&w, GemmSpec { m: rows, n: k, k: n, trans_a: false, trans_b: false })
    });
    run(g, dev, &format!("{sz}/backward_weight{suffix}"), fl, || {
        dy.gemm(&x, GemmSpec { m: n, n: k, k: rows, trans_a: true, trans_b: false })
    });
}

fn linear(c: &mut Criterion) {
    let t = target();
    let mut g = group(c, "linear_gemm");
    let (rows, widths): (usize, [usize; 4]) = if t.full { (1600, [5568, 4096, 2048, 2]) } else { (400, [1392, 1024, 512, 2]) };
    let modes: &[(bool, &str)] = if t.dev.is_cuda() { &[(false, ""), (true, "_tf32")] } else { &[(false, "")] };
    for &(tf32, suffix) in modes {
        settings::set_allow_tf32(tf32);
        for (i, win) in widths.windows(2).enumerate() {
            linear_gemms(&mut g, &t.dev, &format!("fc{}", i + 1), rows, win[0], win[1], suffix);
        }
    }
    settings::set_allow_tf32(false);
    g.finish();
}

fn softmax_xent(c: &mut Criterion) {
    let t = target();
    let mut g = group(c, "softmax_cross_entropy");
    for rows in [1600usize, 224 * 224] {
        let z = rand_storage(&t.dev, rows * 2, 30);
        let labels: Vec<u32> = (0..rows as u32).map(|i| i % 2).collect();
        run(&mut g, &t.dev, &format!("{rows}x2"), Throughput::Elements(rows as u64), || z.softmax_cross_entropy(&labels, 2, None));
    }
    g.finish();
}

fn adam(c: &mut Criterion) {
    let t = target();
    let mut g = group(c, "adam");
    // fc7's weight, 4096 x 4096 (16.8M of the model's 64.8M parameters).
    let len = if t.full { 4096 * 4096 } else { 1 << 20 };
    let mut p = rand_storage(&t.dev, len, 40);
    let grad = rand_storage(&t.dev, len, 41);
    let mut m = rand_storage(&t.dev, len, 42);
    let mut v = rand_storage_in(&t.dev, len, 0.0, 1.0, 43);
    let h = AdamStep { lr: 1e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0, bias_correction1: 0.1, bias_correction2: 0.001 };
    // Reads p, g, m, v; writes p, m, v.
    run(&mut g, &t.dev, &format!("{len}_params"), Throughput::Bytes(7 * F32 * len as u64), || p.adam_step(&grad, &mut m, &mut v, &h));
    g.finish();
}

fn conv(c: &mut Criterion) {
    let t = target();
    let mut g = group(c, "conv3x3");
    let specs: Vec<(&str, ConvSpec)> = if t.full {
        vec![
            ("conv1_2_5x64x224x224", ConvSpec { n: 5, c_in: 64, h: 224, w: 224, c_out: 64, kh: 3, kw: 3, stride: 1, pad: 1 }),
            ("conv3_3_5x256x56x56", ConvSpec { n: 5, c_in: 256, h: 56, w: 56, c_out: 256, kh: 3, kw: 3, stride: 1, pad: 1 }),
            ("conv5_3_5x512x14x14", ConvSpec { n: 5, c_in: 512, h: 14, w: 14, c_out: 512, kh: 3, kw: 3, stride: 1, pad: 1 }),
        ]
    } else {
        vec![
            ("conv1_2_1x64x56x56", ConvSpec { n: 1, c_in: 64, h: 56, w: 56, c_out: 64, kh: 3, kw: 3, stride: 1, pad: 1 }),
            ("conv3_3_1x256x14x14", ConvSpec { n: 1, c_in: 256, h: 14, w: 14, c_out: 256, kh: 3, kw: 3, stride: 1, pad: 1 }),
            ("conv5_3_1x512x7x7", ConvSpec { n: 1, c_in: 512, h: 7, w: 7, c_out: 512, kh: 3, kw: 3, stride: 1, pad: 1 }),
        ]
    };
    // (TF32, bf16 convolution mode, suffix). bf16 times the whole computation the mode runs: the
    // transposing casts to NHWC bf16 and back included.
    let modes: &[(bool, bool, &str)] =
        if t.dev.is_cuda() { &[(false, false, ""), (true, false, "_tf32"), (false, true, "_bf16")] } else { &[(false, false, "")] };
    for (name, s) in specs {
        let x = rand_storage(&t.dev, s.n * s.c_in * s.h * s.w, 50);
        let w = rand_storage(&t.dev, s.c_out * s.c_in * s.kh * s.kw, 51);
        let dy = rand_storage(&t.dev, s.n * s.c_out * s.out_h() * s.out_w(), 52);
        let fl = Throughput::Elements(s.flops() as u64);
        for &(tf32, bf16, suffix) in modes {
            settings::set_allow_tf32(tf32);
            settings::set_bf16_conv(bf16);
            run(&mut g, &t.dev, &format!("{name}/forward{suffix}"), fl.clone(), || x.conv2d(&w, &s));
            run(&mut g, &t.dev, &format!("{name}/backward_input{suffix}"), fl.clone(), || dy.conv2d_backward_input(&w, &s));
            run(&mut g, &t.dev, &format!("{name}/backward_weight{suffix}"), fl.clone(), || x.conv2d_backward_weight(&dy, &s));
            // Both gradients as the conv op computes them, from the forward's kept operands (in
            // the bf16 mode: no cast of x or w, one of dy): compare with the two lines above.
            let (_, kept) = x.conv2d_keeping(&w, &s, ConvKeep { input: true, weight: true }).expect("conv2d_keeping");
            let both = Throughput::Elements(2 * s.flops() as u64);
            run(&mut g, &t.dev, &format!("{name}/backward_both{suffix}"), both, || {
                dy.conv2d_backward(Some(&x), &w, &s, &kept, [true, true])
            });
        }
        settings::set_allow_tf32(false);
        settings::set_bf16_conv(false);
    }
    g.finish();
}

fn bn_pool_relu(c: &mut Criterion) {
    let t = target();
    let mut g = group(c, "bn_pool_relu");
    // conv1_2's output, the largest activation of the model.
    let d = if t.full { Nchw { n: 5, c: 64, h: 224, w: 224 } } else { Nchw { n: 1, c: 64, h: 112, w: 112 } };
    let label = format!("{}x{}x{}x{}", d.n, d.c, d.h, d.w);
    let x = rand_storage(&t.dev, d.len(), 60);
    let dy = rand_storage(&t.dev, d.len(), 61);
    let gamma = rand_storage_in(&t.dev, d.c, 0.5, 1.5, 62);
    let beta = rand_storage(&t.dev, d.c, 63);
    let bytes = F32 * d.len() as u64;
    // Forward: read x twice (statistics, normalisation), write y.
    run(&mut g, &t.dev, &format!("batch_norm_train_{label}/forward"), Throughput::Bytes(3 * bytes), || {
        x.batch_norm_train(&gamma, &beta, d, 1e-5, false).map(|f| f.y)
    });
    let f = x.batch_norm_train(&gamma, &beta, d, 1e-5, false).expect("batch norm");
    // Backward: read x and dy twice (reductions, then dx), write dx.
    run(&mut g, &t.dev, &format!("batch_norm_train_{label}/backward"), Throughput::Bytes(5 * bytes), || {
        x.batch_norm_backward(&dy, &gamma, &beta, &f.mean, &f.invstd, d, false).map(|b| b.dx)
    });
    // The same with the ReLU fused: the forward clamps while writing y; the backward masks dy
    // in both of its passes where y was > 0, recomputed from x (read anyway) and per-channel
    // values, so it moves the plain backward's bytes: x and dy twice, dx once.
    run(&mut g, &t.dev, &format!("batch_norm_relu_train_{label}/forward"), Throughput::Bytes(3 * bytes), || {
        x.batch_norm_train(&gamma, &beta, d, 1e-5, true).map(|f| f.y)
    });
    let fr = x.batch_norm_train(&gamma, &beta, d, 1e-5, true).expect("batch norm + relu");
    run(&mut g, &t.dev, &format!("batch_norm_relu_train_{label}/backward"), Throughput::Bytes(5 * bytes), || {
        x.batch_norm_backward(&dy, &gamma, &beta, &fr.mean, &fr.invstd, d, true).map(|b| b.dx)
    });
    // The same on a bf16 input (a bf16 convolution's output held as such, `xbf16` in the
    // kernels): x's two reads each way take half the bytes (forward: 2 x 2 bytes of x and 4 of
    // y an element; backward: 2 x 2 of x, 2 x 4 of dy and 4 of dx).
    if let Storage::Cuda(xc) = &x {
        use hyperseg_engine::backend::cuda::{CudaBf16, CudaNormInput};
        use hyperseg_engine::storage::NormInput;
        let xb = NormInput::Cuda(CudaNormInput::Bf16(CudaBf16::from_f32(xc).expect("cast")));
        run(&mut g, &t.dev, &format!("batch_norm_relu_train_{label}/forward_bf16_input"), Throughput::Bytes(2 * bytes), || {
            xb.batch_norm_train(&gamma, &beta, d, 1e-5, true).map(|f| f.y)
        });
        let fb = xb.batch_norm_train(&gamma, &beta, d, 1e-5, true).expect("batch norm + relu");
        run(&mut g, &t.dev, &format!("batch_norm_relu_train_{label}/backward_bf16_input"), Throughput::Bytes(4 * bytes), || {
            xb.batch_norm_backward(&dy, &gamma, &beta, &fb.mean, &fb.invstd, d, true).map(|b| b.dx)
        });
        // The same, its dx written as the convolution's NHWC bf16 operand (bn_bwd_dx_nhwc_bf16;
        // 2 bytes a dx where the line above writes 4 and the convolution's cast then moves 6).
        settings::set_bf16_conv(true);
        run(
            &mut g,
            &t.dev,
            &format!("batch_norm_relu_train_{label}/backward_bf16_input_nhwc_bf16_dx"),
            Throughput::Bytes(7 * bytes / 2),
            || xb.batch_norm_backward_for_conv(&dy, &gamma, &beta, &fb.mean, &fb.invstd, d, true).map(|b| b.dx),
        );
        settings::set_bf16_conv(false);
    }
    let dy_pool = rand_storage(&t.dev, d.len() / 4, 64);
    run(&mut g, &t.dev, &format!("max_pool2x2_{label}/forward"), Throughput::Bytes(bytes + bytes / 4), || x.max_pool2x2(d));
    run(&mut g, &t.dev, &format!("max_pool2x2_{label}/backward"), Throughput::Bytes(2 * bytes + bytes / 4), || {
        x.max_pool2x2_backward(&dy_pool, d)
    });
    run(&mut g, &t.dev, &format!("relu_{label}/forward"), Throughput::Bytes(2 * bytes), || x.unary(UnaryOp::Relu));
    run(&mut g, &t.dev, &format!("relu_{label}/backward"), Throughput::Bytes(3 * bytes), || x.relu_backward(&dy));
    g.finish();
}

/// The fused MLP pieces: bias + ReLU after a hidden layer's GEMM (forward in place, backward
/// with the bias gradient) at the training batch's 1600 rows, and the factored dense path's
/// fused first layer (six pixel-major planes sampled, summed, biased, clamped) for one tile of
/// 8192 pixels of a 224x224 image. The CPU gets an eighth of the columns and a 64x64 frame.
fn mlp_fused(c: &mut Criterion) {
    let t = target();
    let mut g = group(c, "mlp_fused");
    let (rows, cols) = if t.full { (1600, 4096) } else { (1600, 512) };
    let mut y = rand_storage(&t.dev, rows * cols, 70);
    let bias = rand_storage(&t.dev, cols, 71);
    let dy = rand_storage(&t.dev, rows * cols, 72);
    let bytes = F32 * (rows * cols) as u64;
    run(&mut g, &t.dev, &format!("bias_relu_{rows}x{cols}/forward"), Throughput::Bytes(2 * bytes), || {
        y.bias_relu_assign(&bias, rows, cols)
    });
    run(&mut g, &t.dev, &format!("bias_relu_{rows}x{cols}/backward"), Throughput::Bytes(3 * bytes), || {
        y.bias_relu_backward(&dy, rows, cols)
    });

    let (s, tile) = if t.full { (224usize, 8192usize) } else { (64, 1024) };
    let spec = PlaneSumSpec { n: 1, in_h: s, in_w: s, cols, planes: (0..6).map(|i| (s >> i, s >> i)).collect() };
    let planes: Vec<Storage> =
        spec.planes.iter().enumerate().map(|(i, &(h, w))| rand_storage(&t.dev, h * w * cols, 73 + i as u64)).collect();
    let refs: Vec<&Storage> = planes.iter().collect();
    let pts: Vec<SamplePoint> = (0..tile as u32).map(|p| SamplePoint { image: 0, y: p / s as u32, x: p % s as u32 }).collect();
    // At least: the tile's rows of the full-resolution plane, once each coarser plane's touched
    // rows (counted once: neighbouring pixels share them), and the output.
    let touched: usize = spec.planes.iter().map(|&(h, w)| (tile * h * w).div_ceil(s * s).max(1)).sum();
    let plane_bytes = F32 * (touched * cols + tile * cols) as u64;
    run(&mut g, &t.dev, &format!("upsample_sum_bias_relu_{tile}px_{cols}cols/forward"), Throughput::Bytes(plane_bytes), || {
        Storage::upsample_sum_bias_relu(&refs, &bias, &pts, &spec)
    });
    g.finish();
}

/// bf16 activations (the dense path's bf16 mode): the cast of a tap, bias + ReLU on a bf16
/// hidden layer, the fused first layer on bf16 planes (the sizes of `mlp_fused`), and the dense
/// path's largest GEMM, one tile's second layer `[tile, 4096] x [2048, 4096]^T`, on fp32
/// buffers (fp32, TF32, bf16 tensor cores converting inside cuBLAS) and on bf16 buffers; then
/// the bf16 convolutions' transposing casts ([`transposes`]).
fn bf16_activations(c: &mut Criterion) {
    let t = target();
    let mut g = group(c, "bf16");
    let tensor = |len: usize, seed: u64, dims: &[usize]| {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let v: Vec<f32> = (0..len).map(|_| rng.random_range(-1.0f32..1.0)).collect();
        Tensor::from_vec(v, dims.to_vec(), &t.dev).expect("upload")
    };
    let (rows, cols) = if t.full { (1600, 4096) } else { (1600, 512) };
    let x = tensor(rows * cols, 80, &[rows, cols]);
    let bias = tensor(cols, 81, &[cols]);
    let bytes = (rows * cols) as u64;
    run(&mut g, &t.dev, &format!("cast_f32_to_bf16_{rows}x{cols}"), Throughput::Bytes(6 * bytes), || {
        Bf16Matrix::from_tensor(&x, rows, cols)
    });
    let mut y = Bf16Matrix::from_tensor(&x, rows, cols).expect("cast");
    run(&mut g, &t.dev, &format!("bias_relu_bf16_{rows}x{cols}/forward"), Throughput::Bytes(4 * bytes), || y.bias_relu_assign(&bias));

    let (s, tile) = if t.full { (224usize, 8192usize) } else { (64, 1024) };
    let sizes: Vec<(usize, usize)> = (0..6).map(|i| (s >> i, s >> i)).collect();
    let planes: Vec<Bf16Matrix> = sizes
        .iter()
        .enumerate()
        .map(|(i, &(h, w))| Bf16Matrix::from_tensor(&tensor(h * w * cols, 82 + i as u64, &[h * w, cols]), h * w, cols).expect("cast"))
        .collect();
    let refs: Vec<(&Bf16Matrix, usize, usize)> = planes.iter().zip(&sizes).map(|(p, &(h, w))| (p, h, w)).collect();
    let pts: Vec<SamplePoint> = (0..tile as u32).map(|p| SamplePoint { image: 0, y: p / s as u32, x: p % s as u32 }).collect();
    let touched: usize = sizes.iter().map(|&(h, w)| (tile * h * w).div_ceil(s * s).max(1)).sum();
    let plane_bytes = 2 * (touched * cols + tile * cols) as u64;
    run(&mut g, &t.dev, &format!("upsample_sum_bias_relu_bf16_{tile}px_{cols}cols/forward"), Throughput::Bytes(plane_bytes), || {
        upsample_sum_bias_relu_bf16(&refs, &bias, &pts, s, s)
    });

    let (k, n) = if t.full { (4096, 2048) } else { (512, 256) };
    let h1 = tensor(tile * k, 90, &[tile, k]);
    let w2 = tensor(n * k, 91, &[n, k]);
    let flops = Throughput::Elements(2 * (tile * n * k) as u64);
    let name = format!("dense_fc2_{tile}x{k}_to_{n}");
    let spec = GemmSpec { m: tile, n, k, trans_a: false, trans_b: true };
    let modes: &[(bool, bool, &str)] = if t.dev.is_cuda() {
        &[(false, false, "fp32"), (true, false, "tf32"), (true, true, "fp32_on_bf16_cores")]
    } else {
        &[(false, false, "fp32")]
    };
    for &(tf32, bf16_gemm, label) in modes {
        settings::set_allow_tf32(tf32);
        settings::set_bf16_gemm(bf16_gemm);
        run(&mut g, &t.dev, &format!("{name}/{label}"), flops.clone(), || h1.storage().gemm(&w2.storage(), spec));
    }
    settings::set_allow_tf32(false);
    settings::set_bf16_gemm(false);
    let (h1b, w2b) = (Bf16Matrix::from_tensor(&h1, tile, k).expect("cast"), Bf16Matrix::from_tensor(&w2, n, k).expect("cast"));
    run(&mut g, &t.dev, &format!("{name}/bf16_buffers"), flops, || h1b.matmul(false, &w2b, true));
    transposes(&mut g, &t);
    g.finish();
}

/// The bf16 convolutions' transposing casts at conv1_2's output, the model's largest activation
/// (`[n, 64, h w]` f32 to `[n, h w, 64]` bf16 and back; 6 bytes moved per element), on the GPU;
/// their CPU references on the CPU.
fn transposes(g: &mut BenchmarkGroup<'_, WallTime>, t: &Target) {
    let (n, c, hw) = if t.full { (5, 64, 224 * 224) } else { (1, 64, 56 * 56) };
    let x = rand_storage(&t.dev, n * c * hw, 95);
    let bytes = Throughput::Bytes(6 * (n * c * hw) as u64);
    let name = format!("transpose_{n}x{c}x{hw}");
    match &x {
        Storage::Cuda(x) => {
            use hyperseg_engine::backend::cuda::CudaBf16;
            run(g, &t.dev, &format!("{name}/f32_to_bf16"), bytes.clone(), || CudaBf16::transposed_from_f32(x, n, c, hw));
            let xb = CudaBf16::transposed_from_f32(x, n, c, hw).expect("cast");
            run(g, &t.dev, &format!("{name}/bf16_to_f32"), bytes, || xb.transposed_to_f32(n, hw, c));
            // NHWC bf16 to NCHW bf16, what a bf16 convolution's output takes before the batch
            // norm after it (4 bytes moved per element).
            run(g, &t.dev, &format!("{name}/bf16_to_bf16"), Throughput::Bytes(4 * (n * c * hw) as u64), || xb.transposed(n, hw, c));
        }
        Storage::Cpu(_) => {
            use hyperseg_engine::backend::cpu::bf16 as cpu;
            let v = x.to_host_f32().expect("host copy");
            run(g, &t.dev, &format!("{name}/f32_to_bf16"), bytes.clone(), || Ok(cpu::transpose_to_bf16(&v, n, c, hw)));
            let xb = cpu::transpose_to_bf16(&v, n, c, hw);
            run(g, &t.dev, &format!("{name}/bf16_to_f32"), bytes, || Ok(cpu::transpose_to_f32(&xb, n, hw, c)));
        }
    }
}

fn config() -> Criterion {
    Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_millis(1500))
        .configure_from_args()
}

criterion_group! {
    name = kernels;
    config = config();
    targets = conv, linear, gather, upsample, mlp_fused, bf16_activations, bn_pool_relu, softmax_xent, adam
}
criterion_main!(kernels);
