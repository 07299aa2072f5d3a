//! bf16 convolution mode ([`settings::set_bf16_conv`]): every convolution (forward, input
//! gradient, weight gradient) on bf16 operands with fp32 accumulation, its result rounded to
//! bf16. Its own test binary, and one test for both devices, because the setting is global.
//!
//! - CPU: bitwise equal to an fp32 convolution of the operands rounded beforehand, its result
//!   rounded after (the reference), for the three computations, at several shapes (3x3 padded,
//!   strided, 1x1); measurably different from fp32 and within 1e-2 of it (max-normalised; bf16
//!   keeps 8 mantissa bits).
//! - CUDA: the transposing casts (`kernels/bf16.ptx`) bit for bit against the CPU's; the
//!   operand copies a forward pass keeps for the backward pass are those casts, and the
//!   backward pass computes with them (`kept_copies_are_used`); the three
//!   computations within 1e-2 of the CPU reference (max-normalised): through cuDNN on NHWC bf16
//!   copies, and for the case with 3 input channels (not a multiple of 8) in f32 on operands
//!   rounded to bf16. Both sum the same exact products (a product of two bf16 is exact in
//!   f32) in f32, in different orders: about 1e-6 apart before the last rounding, which can then
//!   land on the neighbouring bf16, 2^-8 = 3.9e-3 of the value at most.
//! - The tiny model's training loss falls in bf16 convolution mode (with bf16 GEMMs) on every
//!   device.
//! - With `HYPERSEG_KERNEL_TIMINGS=1` and a GPU, the paper model's convolutions are timed in TF32
//!   and in the bf16 mode, a layer's three computations as separate calls and as the conv op
//!   runs them (the forward's operand copies kept), and the transposing casts alone (`TIME`
//!   lines, not asserted).
//!
//! Without a GPU the CUDA part prints that it was skipped; with HYPERSEG_REQUIRE_GPU=1 it fails.
//! On a GPU below compute capability 8.0, which cannot run bf16 convolutions, it prints that too.

mod common;

use common::{cuda_device, max_rel_err, rand_vec, train_tiny};
use hyperseg_engine::{settings, Device, Result, Tensor};

fn bf16(v: &[f32]) -> Vec<f32> {
    v.iter().map(|&x| half::bf16::from_f32(x).to_f32()).collect()
}

/// One convolution case: input `[n, c_in, h, w]`, `c_out` filters of `k x k`, stride, padding.
#[derive(Clone, Copy, Debug)]
struct Case {
    n: usize,
    c_in: usize,
    hw: usize,
    c_out: usize,
    k: usize,
    stride: usize,
    pad: usize,
}

const CASES: [Case; 4] = [
    Case { n: 2, c_in: 3, hw: 13, c_out: 16, k: 3, stride: 1, pad: 1 }, // the first layer's 3 channels
    Case { n: 2, c_in: 24, hw: 9, c_out: 40, k: 3, stride: 1, pad: 1 },
    Case { n: 3, c_in: 8, hw: 11, c_out: 8, k: 3, stride: 2, pad: 0 },
    Case { n: 2, c_in: 48, hw: 5, c_out: 24, k: 1, stride: 1, pad: 0 }, // fc6/fc7 as 1x1 convolutions
];

/// The case's input, weights and upstream gradient (random, seeded by the case's index).
fn operands(c: Case, seed: u64) -> [Vec<f32>; 3] {
    let out = (c.hw + 2 * c.pad - c.k) / c.stride + 1;
    [
        rand_vec(c.n * c.c_in * c.hw * c.hw, seed),
        rand_vec(c.c_out * c.c_in * c.k * c.k, seed + 1),
        rand_vec(c.n * c.c_out * out * out, seed + 2),
    ]
}

/// `[y, dx, dw]` of `y = conv(x, w)` with upstream gradient `g`, on `dev`, with the current
/// settings.
fn conv_and_grads(dev: &Device, c: Case, [x, w, g]: &[Vec<f32>; 3]) -> Result<[Vec<f32>; 3]> {
    let xt = Tensor::from_slice(x, [c.n, c.c_in, c.hw, c.hw], dev)?.to_variable()?;
    let wt = Tensor::from_slice(w, [c.c_out, c.c_in, c.k, c.k], dev)?.to_variable()?;
    let y = xt.conv2d(&wt, None, c.stride, c.pad)?;
    let gt = Tensor::from_slice(g, y.shape().clone(), dev)?;
    // d(sum(y * g))/dy = g exactly: the convolution's backward sees g itself.
    y.mul(&gt)?.sum_all()?.backward()?;
    let grad = |t: &Tensor| -> Result<Vec<f32>> { t.grad().ok_or(hyperseg_engine::Error::NoGraph)?.to_vec() };
    Ok([y.to_vec()?, grad(&xt)?, grad(&wt)?])
}

const NAMES: [&str; 3] = ["forward", "input gradient", "weight gradient"];

/// Turns the bf16 modes on until the returned guard is dropped (also on a failure).
fn bf16_modes() -> settings::Saved {
    let saved = settings::save();
    settings::set_bf16_conv(true);
    settings::set_bf16_gemm(true);
    saved
}

/// The CPU's bf16 mode against its definition; then, with a GPU, the GPU against the CPU.
#[test]
fn bf16_convolution_mode() -> Result<()> {
    let mut cpu_results = Vec::new();
    for (i, &c) in CASES.iter().enumerate() {
        let ops = operands(c, 10 * i as u64);
        settings::set_bf16_conv(false);
        let fp32 = conv_and_grads(&Device::Cpu, c, &ops)?;
        let rounded = [bf16(&ops[0]), bf16(&ops[1]), bf16(&ops[2])];
        let reference = conv_and_grads(&Device::Cpu, c, &rounded)?.map(|v| bf16(&v));
        let got = {
            let _mode = bf16_modes();
            conv_and_grads(&Device::Cpu, c, &ops)?
        };
        for k in 0..3 {
            let what = format!("{c:?} {}", NAMES[k]);
            assert!(got[k].iter().zip(&reference[k]).all(|(a, b)| a.to_bits() == b.to_bits()), "{what}: CPU bf16 mode != its definition");
            let e = max_rel_err(&got[k], &fp32[k]);
            assert!(e > 1e-5 && e < 1e-2, "{what}: CPU bf16 mode vs fp32 {e:.2e}");
        }
        cpu_results.push((c, ops, got));
    }

    let (first, last) = {
        let _mode = bf16_modes();
        train_tiny(&Device::Cpu, 25)?
    };
    eprintln!("CPU, bf16 convolutions and GEMMs: loss {first:.4} -> {last:.4} in 25 steps");
    assert!(last < 0.8 * first, "CPU, bf16 convolutions: loss {first} -> {last}");

    let Some(gpu) = cuda_device().filter(common::runs_bf16_convolutions) else { return Ok(()) };
    let Device::Cuda(dev) = &gpu else { unreachable!("a CUDA device") };
    transposes_match_the_cpu(&gpu)?;
    kept_copies_are_used(dev)?;
    conv_input_is_not_kept(&gpu)?;
    let _mode = bf16_modes();
    for (c, ops, cpu) in &cpu_results {
        let got = conv_and_grads(&gpu, *c, ops)?;
        for k in 0..3 {
            let e = max_rel_err(&got[k], &cpu[k]);
            eprintln!("{c:?} {}: CUDA bf16 vs CPU bf16 reference {e:.2e}", NAMES[k]);
            assert!(e <= 1e-2, "{c:?} {}: CUDA bf16 convolution off the CPU reference by {e}", NAMES[k]);
        }
    }
    // cuDNN ran them in bf16 (the 3-channel case goes to the f32 fallback by design, uncounted),
    // not its f32 fallback for a refusal, which gives the same values.
    assert_eq!(hyperseg_engine::backend::cuda::cudnn::bf16_refusals(dev), 0, "cuDNN refused bf16 convolutions");
    let (first, last) = train_tiny(&gpu, 25)?;
    eprintln!("CUDA, bf16 convolutions and GEMMs: loss {first:.4} -> {last:.4} in 25 steps");
    assert!(last < 0.8 * first, "CUDA, bf16 convolutions: loss {first} -> {last}");
    if std::env::var("HYPERSEG_KERNEL_TIMINGS").as_deref() == Ok("1") {
        drop(_mode);
        timings(&gpu)?;
    }
    Ok(())
}

/// What the autograd graph keeps of a convolution's f32 input, from the device's live bytes: in
/// the bf16 mode nothing (the weight gradient reads the kept NHWC bf16 copy), so dropping the
/// input's last handle frees it; in fp32 the backward pass keeps it. The gradients work either
/// way.
fn conv_input_is_not_kept(gpu: &Device) -> Result<()> {
    let Device::Cuda(dev) = gpu else { unreachable!("a CUDA device") };
    let _saved = bf16_modes();
    let c = CASES[1];
    let [xv, wv, _] = operands(c, 60);
    for bf16 in [false, true] {
        settings::set_bf16_conv(bf16);
        let a = Tensor::from_slice(&xv, [c.n, c.c_in, c.hw, c.hw], gpu)?.to_variable()?;
        let w = Tensor::from_slice(&wv, [c.c_out, c.c_in, c.k, c.k], gpu)?.to_variable()?;
        // A recorded intermediate with a buffer of its own (affine's backward keeps nothing).
        let x = a.affine(2.0, 0.0)?;
        let y = x.conv2d(&w, None, c.stride, c.pad)?;
        gpu.synchronize()?;
        let before = dev.memory_stats().current_bytes;
        drop(x);
        let freed = before as i64 - dev.memory_stats().current_bytes as i64;
        if bf16 {
            assert!(
                freed >= 4 * xv.len() as i64,
                "bf16 mode: dropping the convolution's input freed {freed} bytes, not its {}",
                4 * xv.len()
            );
        } else {
            assert_eq!(freed, 0, "fp32 mode: the convolution's input was freed, though its weight gradient reads it");
        }
        y.sum_all()?.backward()?;
        assert!(a.grad().is_some() && w.grad().is_some(), "bf16={bf16}: a gradient is missing");
    }
    Ok(())
}

/// A training step's operand copies, on the GPU in deterministic mode (the same algorithms
/// each call, so equal operands give equal bits): the forward pass keeps exactly what it is
/// asked to, each copy being the operand's transposing cast; the backward pass computes with
/// the copies it is given (other copies give the gradients of other operands, so it does not
/// cast the operands again); with the forward's copies it is bit for bit the separate
/// computations, for each subset of the gradients; the weight gradient from the input's copy
/// alone (no x) is the same, and after the bf16 mode is switched off it widens the copy; without
/// x nor its copy it is an error; copies of the wrong length are an error.
fn kept_copies_are_used(dev: &hyperseg_engine::backend::cuda::CudaDevice) -> Result<()> {
    use hyperseg_engine::backend::cuda::cudnn::{
        conv2d, conv2d_backward, conv2d_backward_input, conv2d_backward_weight, conv2d_keeping, KeptOperands,
    };
    use hyperseg_engine::backend::cuda::{CudaBf16, CudaStorage};
    use hyperseg_engine::backend::{BackendStorage, ConvKeep, ConvSpec};
    fn bits(t: &CudaStorage) -> Result<Vec<u32>> {
        Ok(t.to_host_f32()?.iter().map(|v| v.to_bits()).collect())
    }
    fn bf16_bits(t: &CudaBf16) -> Result<Vec<u16>> {
        Ok(t.to_host()?.iter().map(|v| v.to_bits()).collect())
    }
    let both = |g: [Option<CudaStorage>; 2]| -> Result<[Vec<u32>; 2]> {
        let [dx, dw] = g.map(|t| t.expect("a gradient that was asked for"));
        Ok([bits(&dx)?, bits(&dw)?])
    };
    let _saved = bf16_modes();
    settings::set_deterministic(true);
    let c = CASES[1];
    let s = ConvSpec { n: c.n, c_in: c.c_in, h: c.hw, w: c.hw, c_out: c.c_out, kh: c.k, kw: c.k, stride: c.stride, pad: c.pad };
    let [x, w, dy] = operands(c, 40);
    let [x2, w2, _] = operands(c, 50);
    let (x, w, dy, x2, w2) = (dev.upload(&x)?, dev.upload(&w)?, dev.upload(&dy)?, dev.upload(&x2)?, dev.upload(&w2)?);
    let x_copy = |x: &CudaStorage| CudaBf16::transposed_from_f32(x, s.n, s.c_in, s.h * s.w);
    let w_copy = |w: &CudaStorage| CudaBf16::transposed_from_f32(w, s.c_out, s.c_in, s.kh * s.kw);

    let (y, kept) = conv2d_keeping(&x, &w, &s, ConvKeep { input: true, weight: true })?;
    assert_eq!(bits(&y)?, bits(&conv2d(&x, &w, &s)?)?, "conv2d_keeping's y != conv2d's");
    let (kx, kw) = (kept.input.as_ref().expect("x's copy kept"), kept.weight.as_ref().expect("w's copy kept"));
    assert_eq!(bf16_bits(kx)?, bf16_bits(&x_copy(&x)?)?, "the kept copy of x is not its NHWC bf16 cast");
    assert_eq!(bf16_bits(kw)?, bf16_bits(&w_copy(&w)?)?, "the kept copy of w is not its KRSC bf16 cast");
    for keep in [ConvKeep::NOTHING, ConvKeep { input: true, weight: false }, ConvKeep { input: false, weight: true }] {
        let (_, k) = conv2d_keeping(&x, &w, &s, keep)?;
        assert_eq!((k.input.is_some(), k.weight.is_some()), (keep.input, keep.weight), "{keep:?} kept something else");
    }

    let separate = [bits(&conv2d_backward_input(&dy, &w, &s)?)?, bits(&conv2d_backward_weight(&x, &dy, &s)?)?];
    assert_eq!(both(conv2d_backward(&dy, Some(&x), &w, &s, &kept, [true, true])?)?, separate, "backward with the kept copies");
    assert_eq!(both(conv2d_backward(&dy, Some(&x), &w, &s, &KeptOperands::default(), [true, true])?)?, separate, "backward with no copies");
    let [dx, dw] = conv2d_backward(&dy, Some(&x), &w, &s, &kept, [true, false])?;
    assert!(dw.is_none() && bits(&dx.expect("dx"))? == separate[0], "backward, dx alone");
    let [dx, dw] = conv2d_backward(&dy, Some(&x), &w, &s, &kept, [false, true])?;
    assert!(dx.is_none() && bits(&dw.expect("dw"))? == separate[1], "backward, dw alone");

    let other = KeptOperands { input: Some(x_copy(&x2)?), weight: Some(w_copy(&w2)?) };
    let want = [bits(&conv2d_backward_input(&dy, &w2, &s)?)?, bits(&conv2d_backward_weight(&x2, &dy, &s)?)?];
    assert_ne!(want, separate, "other operands, the same gradients");
    assert_eq!(both(conv2d_backward(&dy, Some(&x), &w, &s, &other, [true, true])?)?, want, "backward did not read the copies it was given");

    // The input's kept copy is all the weight gradient reads: no x needed, the same bits.
    let [_, dw] = conv2d_backward(&dy, None, &w, &s, &kept, [false, true])?;
    assert_eq!(bits(&dw.expect("dw"))?, separate[1], "backward from the kept copy of x alone");
    let no_copy = KeptOperands { input: None, weight: None };
    assert!(conv2d_backward(&dy, None, &w, &s, &no_copy, [false, true]).is_err(), "dw without x nor its copy was not an error");
    assert!(conv2d_backward(&dy, None, &w, &s, &no_copy, [true, false]).is_ok(), "dx alone needs no x");
    // The mode switched off since: the copy widened, dw on x rounded to bf16.
    settings::set_bf16_conv(false);
    let [_, dw] = conv2d_backward(&dy, None, &w, &s, &kept, [false, true])?;
    let rounded_x = dev.upload(&bf16(&x.to_host_f32()?))?;
    assert_eq!(bits(&dw.expect("dw"))?, bits(&conv2d_backward_weight(&rounded_x, &dy, &s)?)?, "mode switched: dw from the widened copy");
    settings::set_bf16_conv(true);

    let short = KeptOperands { input: Some(CudaBf16::alloc(dev, 5)?), weight: None };
    assert!(conv2d_backward(&dy, Some(&x), &w, &s, &short, [false, true]).is_err(), "a copy of the wrong length was accepted");

    settings::set_bf16_conv(false);
    let (_, k) = conv2d_keeping(&x, &w, &s, ConvKeep { input: true, weight: true })?;
    assert!(k.input.is_none() && k.weight.is_none(), "fp32 convolutions kept bf16 copies");
    Ok(())
}

/// With `HYPERSEG_KERNEL_TIMINGS=1` (bench/gpu-run.sh's tests part): the median time of the
/// paper model's convolutions at batch 5, each direction in TF32 and in the bf16 mode (its
/// transposing casts included), and of the casts alone at conv1_2's output. Printed as `TIME`
/// lines; nothing is asserted about them.
fn timings(gpu: &Device) -> Result<()> {
    use hyperseg_engine::backend::cuda::CudaBf16;
    use hyperseg_engine::backend::{ConvKeep, ConvSpec};
    use hyperseg_engine::storage::Storage;
    let _restore = settings::save();
    let median = |f: &mut dyn FnMut() -> Result<()>| common::median_ms(gpu, f);
    let spec = |c: usize, hw: usize| ConvSpec { n: 5, c_in: c, h: hw, w: hw, c_out: c, kh: 3, kw: 3, stride: 1, pad: 1 };
    for (name, s) in [
        ("conv1_2", spec(64, 224)),
        ("conv2_2", spec(128, 112)),
        ("conv3_3", spec(256, 56)),
        ("conv4_3", spec(512, 28)),
        ("conv5_3", spec(512, 14)),
    ] {
        let x = Storage::from_vec(gpu, rand_vec(s.n * s.c_in * s.h * s.w, 1))?;
        let w = Storage::from_vec(gpu, rand_vec(s.c_out * s.c_in * 9, 2))?;
        let dy = Storage::from_vec(gpu, rand_vec(s.n * s.c_out * s.h * s.w, 3))?;
        for (mode, bf16) in [("tf32", false), ("bf16", true)] {
            settings::set_allow_tf32(!bf16);
            settings::set_bf16_conv(bf16);
            let fwd = median(&mut || x.conv2d(&w, &s).map(drop))?;
            let bwd_data = median(&mut || dy.conv2d_backward_input(&w, &s).map(drop))?;
            let bwd_filter = median(&mut || x.conv2d_backward_weight(&dy, &s).map(drop))?;
            let tflops = |ms: f64| s.flops() / ms / 1e9;
            println!(
                "TIME bf16_conv {name} {mode}: forward {fwd:.3} ms ({:.0} TFLOP/s), backward data {bwd_data:.3} ms, backward filter {bwd_filter:.3} ms",
                tflops(fwd)
            );
            // A training step's three computations: as separate calls (each casting its
            // operands), and as the conv op runs them (the forward's copies kept, dy cast once).
            let separate = median(&mut || {
                x.conv2d(&w, &s)?;
                dy.conv2d_backward_input(&w, &s)?;
                x.conv2d_backward_weight(&dy, &s).map(drop)
            })?;
            let kept = median(&mut || {
                let (_, kept) = x.conv2d_keeping(&w, &s, ConvKeep { input: true, weight: true })?;
                dy.conv2d_backward(Some(&x), &w, &s, &kept, [true, true]).map(drop)
            })?;
            println!("TIME bf16_conv {name} {mode}: forward + both backward, separate calls {separate:.3} ms, with the forward's copies {kept:.3} ms");
        }
    }
    let Device::Cuda(dev) = gpu else { unreachable!("a CUDA device") };
    let (n, c, hw) = (5, 64, 224 * 224);
    let x = dev.upload(&rand_vec(n * c * hw, 4))?;
    let to_bf16 = median(&mut || CudaBf16::transposed_from_f32(&x, n, c, hw).map(drop))?;
    let xb = CudaBf16::transposed_from_f32(&x, n, c, hw)?;
    let to_f32 = median(&mut || xb.transposed_to_f32(n, hw, c).map(drop))?;
    let gbs = |ms: f64| 6.0 * (n * c * hw) as f64 / ms / 1e6;
    println!(
        "TIME bf16_conv transposes {n}x{c}x{hw}: f32->bf16 {to_bf16:.3} ms ({:.0} GB/s), bf16->f32 {to_f32:.3} ms ({:.0} GB/s)",
        gbs(to_bf16),
        gbs(to_f32)
    );
    Ok(())
}

/// `transpose_f32_to_bf16` and `transpose_bf16_to_f32` on the GPU, bit for bit against
/// `backend::cpu::bf16`, at shapes with partial tiles and at a layer's real shape.
fn transposes_match_the_cpu(gpu: &Device) -> Result<()> {
    use hyperseg_engine::backend::cpu::bf16 as cpu;
    use hyperseg_engine::backend::cuda::CudaBf16;
    use hyperseg_engine::backend::BackendStorage;
    let Device::Cuda(dev) = gpu else { unreachable!("a CUDA device") };
    for (batch, rows, cols) in [(1, 1, 1), (2, 3, 50), (3, 37, 70), (1, 64, 32), (5, 64, 224 * 224 / 4)] {
        let mut x = rand_vec(batch * rows * cols, 7 + rows as u64);
        for (i, s) in [f32::NAN, f32::INFINITY, -0.0, f32::from_bits(0x3F80_8000), 1e-40].into_iter().enumerate() {
            let j = (i * 13) % x.len();
            x[j] = s;
        }
        let xd = dev.upload(&x)?;
        let want = cpu::transpose_to_bf16(&x, batch, rows, cols);
        let got = CudaBf16::transposed_from_f32(&xd, batch, rows, cols)?;
        let got_bits: Vec<u16> = got.to_host()?.iter().map(|v| v.to_bits()).collect();
        let want_bits: Vec<u16> = want.iter().map(|v| v.to_bits()).collect();
        assert_eq!(got_bits, want_bits, "transpose_f32_to_bf16 {batch} x [{rows}, {cols}]");
        // Back: the bf16 result read as `batch` matrices [cols, rows].
        let back = got.transposed_to_f32(batch, cols, rows)?.to_host_f32()?;
        let want_back = cpu::transpose_to_f32(&want, batch, cols, rows);
        assert!(back.iter().zip(&want_back).all(|(a, b)| a.to_bits() == b.to_bits()), "transpose_bf16_to_f32 {batch} x [{cols}, {rows}]");
    }
    Ok(())
}
