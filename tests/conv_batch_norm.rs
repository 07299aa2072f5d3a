//! The fused ops of a VGG layer, [`Tensor::conv2d_batch_norm_train`] and
//! [`Tensor::conv2d_batch_norm_eval`]: a convolution whose output is held only as the batch
//! norm's input (NCHW bf16 in the CUDA bf16 convolution mode), then batch norm, with or without
//! the ReLU.
//!
//! - On every device and in both modes (fp32, and bf16 convolutions): bit for bit the
//!   composition it replaces, `conv2d` then `batch_norm_train` / `batch_norm_relu_train`: the
//!   output, the batch statistics, and the gradients of the input, the weight, gamma and beta.
//!   The widening of bf16 to f32 is exact, so holding the intermediate in bf16 changes no bit.
//! - The intermediate as held: f32 on the CPU and in the CUDA fp32 mode; bf16 in the CUDA bf16
//!   mode (half the bytes), with the values of the f32 convolution output bit for bit, for
//!   channel counts cuDNN's bf16 kernels take (multiples of 8) and for the f32 fallback (3 input
//!   channels). Likewise the batch norm's input gradient as it hands it to the convolution: f32,
//!   or in the CUDA bf16 mode NHWC bf16 (`bn_bwd_dx_nhwc_bf16`), the f32 gradient's values
//!   rounded, bit for bit.
//! - The CUDA op against the CPU's, max-normalised: within 1e-3 in fp32 (the same sums in
//!   another order, about 1e-6 relative before batch norm divides by the channel's spread), and
//!   within 3e-2 in the bf16 mode (each convolution within 1e-2 of the CPU's, as
//!   `tests/bf16_conv.rs` derives; batch norm rescales every channel to unit spread, and the
//!   input gradient passes through two such convolutions). With the ReLU, only the output and
//!   the statistics: an output within rounding of 0 can fall on the other side of the ReLU on
//!   the other device, and then its whole upstream gradient goes the other way (a difference of
//!   order 0.1 of the largest gradient, however small the rounding). The cases without the ReLU
//!   compare every gradient, and the fused ReLU's backward is checked against the CPU on the
//!   same inputs in `tests/cuda_kernels.rs`. In the bf16 mode cuDNN must have refused no
//!   convolution (`cudnn::bf16_refusals`): the fallback gives the same values without the NHWC
//!   path and `transpose_bf16`.
//!
//! - Eval mode ([`Tensor::conv2d_batch_norm_eval`]), on every device and in both modes: the
//!   output unrecorded (the intermediate held as the batch norm's input) and recorded (the
//!   composition of the recorded ops) bit for bit `conv2d` then `batch_norm_eval` /
//!   `batch_norm_relu_eval`; on the CPU within 1e-5 of the f64 definition; CUDA against the CPU
//!   within the training output's limits.
//! - With `HYPERSEG_KERNEL_TIMINGS=1` and a GPU, a training step's forward and backward pass of
//!   the paper model's layers at batch 5, fused and composed, in TF32 and in the bf16 mode, with
//!   the peak device memory of each, and the eval-mode forward, fused and composed (`TIME`
//!   lines, not asserted).
//!
//! Its own test binary with one test, because the modes are process-wide settings. Without a
//! GPU the CUDA part prints that it was skipped; with HYPERSEG_REQUIRE_GPU=1 it fails.

mod common;

use common::{cuda_device, max_rel_err, rand_vec};
use hyperseg_engine::backend::{ConvKeep, ConvSpec, Nchw};
use hyperseg_engine::{settings, DType, Device, Error, Result, Tensor};

/// One layer: input `[n, c_in, hw, hw]`, `c_out` filters of `k x k`, padding `k / 2`.
#[derive(Clone, Copy, Debug)]
struct Case {
    n: usize,
    c_in: usize,
    hw: usize,
    c_out: usize,
    k: usize,
    relu: bool,
}

const CASES: [Case; 4] = [
    Case { n: 2, c_in: 3, hw: 11, c_out: 16, k: 3, relu: true }, // the first layer's 3 channels: the bf16 fallback
    Case { n: 2, c_in: 16, hw: 9, c_out: 24, k: 3, relu: true },
    Case { n: 3, c_in: 8, hw: 7, c_out: 8, k: 3, relu: false },
    Case { n: 2, c_in: 32, hw: 5, c_out: 16, k: 1, relu: true }, // fc6/fc7 as 1x1 convolutions
];

const EPS: f32 = 1e-5;

/// The output, the batch mean and variance, then the gradients of x, w, gamma and beta; last,
/// the eval-mode output ([`eval_is_composed`]).
type Results = [Vec<f32>; 8];
const NAMES: [&str; 8] =
    ["output", "batch mean", "batch variance", "input gradient", "weight gradient", "gamma gradient", "beta gradient", "eval output"];

/// The case's operands: x, w, gamma, beta and the upstream gradient (random, seeded).
fn operands(c: Case, seed: u64) -> [Vec<f32>; 5] {
    [
        rand_vec(c.n * c.c_in * c.hw * c.hw, seed),
        rand_vec(c.c_out * c.c_in * c.k * c.k, seed + 1),
        rand_vec(c.c_out, seed + 2).iter().map(|v| 1.0 + 0.5 * v).collect(),
        rand_vec(c.c_out, seed + 3).iter().map(|v| 0.3 * v).collect(),
        rand_vec(c.n * c.c_out * c.hw * c.hw, seed + 4),
    ]
}

/// [`Results`] of the layer on `dev` with the current settings, fused or composed.
fn layer(dev: &Device, c: Case, ops: &[Vec<f32>; 5], fused: bool) -> Result<Results> {
    let var = |v: &[f32], shape: Vec<usize>| Tensor::from_slice(v, shape, dev)?.to_variable();
    let x = var(&ops[0], vec![c.n, c.c_in, c.hw, c.hw])?;
    let w = var(&ops[1], vec![c.c_out, c.c_in, c.k, c.k])?;
    let gamma = var(&ops[2], vec![c.c_out])?;
    let beta = var(&ops[3], vec![c.c_out])?;
    let (y, stats) = if fused {
        x.conv2d_batch_norm_train(&w, 1, c.k / 2, &gamma, &beta, EPS, c.relu)?
    } else {
        let conv = x.conv2d(&w, None, 1, c.k / 2)?;
        if c.relu {
            conv.batch_norm_relu_train(&gamma, &beta, EPS)?
        } else {
            conv.batch_norm_train(&gamma, &beta, EPS)?
        }
    };
    let g = Tensor::from_slice(&ops[4], y.shape().clone(), dev)?;
    // d(sum(y * g))/dy = g exactly.
    y.mul(&g)?.sum_all()?.backward()?;
    let grad = |t: &Tensor| -> Result<Vec<f32>> { t.grad().ok_or(Error::NoGraph)?.to_vec() };
    Ok([y.to_vec()?, stats.mean.to_vec()?, stats.var_unbiased.to_vec()?, grad(&x)?, grad(&w)?, grad(&gamma)?, grad(&beta)?, Vec::new()])
}

fn assert_bits(a: &[f32], b: &[f32], what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: lengths");
    if let Some(i) = (0..a.len()).find(|&i| a[i].to_bits() != b[i].to_bits()) {
        panic!("{what}: element {i} is {} fused, {} composed", a[i], b[i]);
    }
}

/// The fused op equals the composition bit for bit; returns its results.
fn fused_is_composed(dev: &Device, c: Case, ops: &[Vec<f32>; 5], mode: &str) -> Result<Results> {
    let fused = layer(dev, c, ops, true)?;
    let composed = layer(dev, c, ops, false)?;
    for k in 0..7 {
        assert_bits(&fused[k], &composed[k], &format!("{dev} {mode} {c:?} {}", NAMES[k]));
    }
    Ok(fused)
}

/// The intermediate as the backend holds it: its element type, and its values against the f32
/// convolution's bit for bit.
fn held_intermediate(dev: &Device, c: Case, ops: &[Vec<f32>; 5], want: DType, mode: &str) -> Result<()> {
    let x = Tensor::from_slice(&ops[0], [c.n, c.c_in, c.hw, c.hw], dev)?;
    let w = Tensor::from_slice(&ops[1], [c.c_out, c.c_in, c.k, c.k], dev)?;
    let s = ConvSpec { n: c.n, c_in: c.c_in, h: c.hw, w: c.hw, c_out: c.c_out, kh: c.k, kw: c.k, stride: 1, pad: c.k / 2 };
    let (held, _) = x.storage().conv2d_for_norm(&w.storage(), &s, ConvKeep::NOTHING)?;
    assert_eq!(held.dtype(), want, "{dev} {mode} {c:?}: the held intermediate's type");
    assert_eq!(held.len(), c.n * c.c_out * c.hw * c.hw);
    assert_bits(&held.to_host_f32()?, &x.conv2d(&w, None, 1, c.k / 2)?.to_vec()?, &format!("{dev} {mode} {c:?} held intermediate"));
    Ok(())
}

/// The batch norm's input gradient as it hands it to the convolution before it
/// (`batch_norm_backward_for_conv`): its element type, and its values against the f32
/// gradient's, rounded to bf16 where it is bf16, bit for bit.
fn handed_gradient(dev: &Device, c: Case, ops: &[Vec<f32>; 5], want: DType, mode: &str) -> Result<()> {
    let x = Tensor::from_slice(&ops[0], [c.n, c.c_in, c.hw, c.hw], dev)?;
    let w = Tensor::from_slice(&ops[1], [c.c_out, c.c_in, c.k, c.k], dev)?;
    let param = |v: &[f32]| Tensor::from_slice(v, [c.c_out], dev);
    let (gamma, beta, dy) = (param(&ops[2])?, param(&ops[3])?, Tensor::from_slice(&ops[4], [c.n, c.c_out, c.hw, c.hw], dev)?);
    let s = ConvSpec { n: c.n, c_in: c.c_in, h: c.hw, w: c.hw, c_out: c.c_out, kh: c.k, kw: c.k, stride: 1, pad: c.k / 2 };
    let d = Nchw { n: c.n, c: c.c_out, h: c.hw, w: c.hw };
    let (held, _) = x.storage().conv2d_for_norm(&w.storage(), &s, ConvKeep::NOTHING)?;
    let f = held.batch_norm_train(&gamma.storage(), &beta.storage(), d, EPS, c.relu)?;
    let args = (&dy.storage(), &gamma.storage(), &beta.storage(), &f.mean, &f.invstd);
    let f32_dx = held.batch_norm_backward(args.0, args.1, args.2, args.3, args.4, d, c.relu)?.dx.to_host_f32()?;
    let handed = held.batch_norm_backward_for_conv(args.0, args.1, args.2, args.3, args.4, d, c.relu)?.dx;
    assert_eq!(handed.dtype(), want, "{dev} {mode} {c:?}: the handed gradient's type");
    let want_values: Vec<f32> = match want {
        DType::BF16 => f32_dx.iter().map(|&v| half::bf16::from_f32(v).to_f32()).collect(),
        _ => f32_dx,
    };
    assert_bits(&handed.to_host_f32(d)?, &want_values, &format!("{dev} {mode} {c:?} handed gradient"));
    Ok(())
}

/// The case's running statistics (mean, variance) for eval mode.
fn running_stats(c: Case, seed: u64) -> [Vec<f32>; 2] {
    [rand_vec(c.c_out, seed).iter().map(|v| 0.5 * v).collect(), rand_vec(c.c_out, seed + 1).iter().map(|v| v.abs() + 0.5).collect()]
}

/// Eval mode, [`Tensor::conv2d_batch_norm_eval`]: unrecorded (the held intermediate) and
/// recorded (the composition of the recorded ops) equal `conv2d` then `batch_norm_eval` /
/// `batch_norm_relu_eval` bit for bit; on the CPU the output is within 1e-5 of the f64
/// definition (`gamma (x - mean) / sqrt(var + eps) + beta`) given the f32 convolution. Returns
/// the output.
fn eval_is_composed(dev: &Device, c: Case, ops: &[Vec<f32>; 5], mode: &str) -> Result<Vec<f32>> {
    let [rm, rv] = running_stats(c, 7 + c.c_out as u64);
    let t = |v: &[f32], shape: Vec<usize>| Tensor::from_slice(v, shape, dev);
    let (x, w) = (t(&ops[0], vec![c.n, c.c_in, c.hw, c.hw])?, t(&ops[1], vec![c.c_out, c.c_in, c.k, c.k])?);
    let (gamma, beta, m, v) = (t(&ops[2], vec![c.c_out])?, t(&ops[3], vec![c.c_out])?, t(&rm, vec![c.c_out])?, t(&rv, vec![c.c_out])?);
    let held = x.conv2d_batch_norm_eval(&w, 1, c.k / 2, &gamma, &beta, &m, &v, EPS, c.relu)?;
    let (xv, wv) = (x.to_variable()?, w.to_variable()?);
    let recorded = xv.conv2d_batch_norm_eval(&wv, 1, c.k / 2, &gamma, &beta, &m, &v, EPS, c.relu)?;
    let conv = x.conv2d(&w, None, 1, c.k / 2)?;
    let composed =
        if c.relu { conv.batch_norm_relu_eval(&gamma, &beta, &m, &v, EPS)? } else { conv.batch_norm_eval(&gamma, &beta, &m, &v, EPS)? };
    let (held, composed) = (held.to_vec()?, composed.to_vec()?);
    assert_bits(&held, &composed, &format!("{dev} {mode} {c:?} eval output, unrecorded"));
    assert_bits(&recorded.to_vec()?, &composed, &format!("{dev} {mode} {c:?} eval output, recorded"));
    if matches!(dev, Device::Cpu) {
        let conv = conv.to_vec()?;
        let hw = c.hw * c.hw;
        let want: Vec<f32> = (0..conv.len())
            .map(|i| {
                let ch = i / hw % c.c_out;
                let y = ops[2][ch] as f64 * (conv[i] as f64 - rm[ch] as f64) / (rv[ch] as f64 + EPS as f64).sqrt() + ops[3][ch] as f64;
                (if c.relu { y.max(0.0) } else { y }) as f32
            })
            .collect();
        let e = max_rel_err(&held, &want);
        assert!(e <= 1e-5, "{mode} {c:?}: eval output {e:.1e} off the f64 definition");
    }
    Ok(held)
}

/// The fp32 and (when `bf16`) bf16 modes of every case on `dev`: fused against composed, and
/// the held intermediate. Returns the fused results per mode and case. Deterministic mode, so
/// that cuDNN's algorithms give the same bits on every call.
fn run_device(dev: &Device, bf16: bool) -> Result<Vec<Vec<Results>>> {
    let mut out = Vec::new();
    for (m, mode) in ["fp32", "bf16"].into_iter().enumerate().take(1 + bf16 as usize) {
        let _saved = settings::save();
        settings::set_deterministic(true);
        settings::set_bf16_conv(m == 1);
        out.push(Vec::new());
        for (i, &c) in CASES.iter().enumerate() {
            let ops = operands(c, 100 * i as u64);
            let bf16_held = m == 1 && matches!(dev, Device::Cuda(_));
            let held = if bf16_held { DType::BF16 } else { DType::F32 };
            held_intermediate(dev, c, &ops, held, mode)?;
            handed_gradient(dev, c, &ops, held, mode)?;
            let mut results = fused_is_composed(dev, c, &ops, mode)?;
            results[7] = eval_is_composed(dev, c, &ops, mode)?;
            out[m].push(results);
        }
    }
    Ok(out)
}

#[test]
fn fused_conv_batch_norm_is_the_composition() -> Result<()> {
    let cpu = run_device(&Device::Cpu, true)?;
    // The bf16 mode is not a no-op on these cases.
    for (i, c) in CASES.iter().enumerate() {
        let e = max_rel_err(&cpu[1][i][0], &cpu[0][i][0]);
        assert!(e > 1e-5, "{c:?}: the bf16 mode's output is {e:.1e} off fp32");
    }
    let Some(gpu) = cuda_device() else { return Ok(()) };
    // Below compute capability 8.0: the fp32 mode alone.
    let got = run_device(&gpu, common::runs_bf16_convolutions(&gpu))?;
    if got.len() == 2 {
        let Device::Cuda(d) = &gpu else { unreachable!("a CUDA device") };
        assert_eq!(hyperseg_engine::backend::cuda::cudnn::bf16_refusals(d), 0, "cuDNN refused a bf16 convolution");
    }
    for (m, (mode, limit)) in [("fp32", 1e-3), ("bf16", 3e-2)].into_iter().enumerate().take(got.len()) {
        for (i, c) in CASES.iter().enumerate() {
            // With the ReLU: the outputs and the statistics (see the module doc).
            let compared = if c.relu { vec![0, 1, 2, 7] } else { (0..8).collect() };
            for k in compared {
                let e = max_rel_err(&got[m][i][k], &cpu[m][i][k]);
                eprintln!("{mode} {c:?} {}: CUDA vs CPU {e:.2e}", NAMES[k]);
                assert!(e <= limit, "{mode} {c:?} {}: CUDA off the CPU by {e:.2e} (limit {limit:.0e})", NAMES[k]);
            }
        }
    }
    if got.len() == 2 {
        mode_switched_mid_backward(&gpu)?;
    }
    if std::env::var("HYPERSEG_KERNEL_TIMINGS").as_deref() == Ok("1") && got.len() == 2 {
        timings(&gpu)?;
    }
    Ok(())
}

/// The bf16 mode switched off between the batch norm's backward (which handed the gradient over
/// as its NHWC bf16 copy) and the convolution's: the convolution widens the copy and computes in
/// f32, bit for bit the f32 computations on the widened gradient, no error; given the input as
/// its kept copy alone (as autograd gives it), the weight gradient is that of the input rounded.
fn mode_switched_mid_backward(gpu: &Device) -> Result<()> {
    use hyperseg_engine::storage::Storage;
    let _saved = settings::save();
    settings::set_deterministic(true);
    settings::set_bf16_conv(true);
    let c = CASES[1];
    let ops = operands(c, 400);
    let s = ConvSpec { n: c.n, c_in: c.c_in, h: c.hw, w: c.hw, c_out: c.c_out, kh: c.k, kw: c.k, stride: 1, pad: c.k / 2 };
    let d = Nchw { n: c.n, c: c.c_out, h: c.hw, w: c.hw };
    let up = |v: &[f32]| Storage::from_vec(gpu, v.to_vec());
    let (x, w, gamma, beta, dy) = (up(&ops[0])?, up(&ops[1])?, up(&ops[2])?, up(&ops[3])?, up(&ops[4])?);
    let (held, kept) = x.conv2d_for_norm(&w, &s, ConvKeep { input: true, weight: true })?;
    let f = held.batch_norm_train(&gamma, &beta, d, EPS, c.relu)?;
    let handed = held.batch_norm_backward_for_conv(&dy, &gamma, &beta, &f.mean, &f.invstd, d, c.relu)?.dx;
    assert_eq!(handed.dtype(), DType::BF16);
    settings::set_bf16_conv(false);
    let [dx, dw] = handed.conv2d_backward(Some(&x), &w, &s, &kept, [true, true])?;
    // As autograd calls it in the bf16 mode (the input's kept copy, no x): dw of x rounded.
    let [_, dw_from_copy] = handed.conv2d_backward(None, &w, &s, &kept, [false, true])?;
    let g = up(&handed.to_host_f32(d)?)?;
    assert_bits(&dx.ok_or(Error::NoGraph)?.to_host_f32()?, &g.conv2d_backward_input(&w, &s)?.to_host_f32()?, "switched mode: dx");
    assert_bits(&dw.ok_or(Error::NoGraph)?.to_host_f32()?, &x.conv2d_backward_weight(&g, &s)?.to_host_f32()?, "switched mode: dw");
    let dw = dw_from_copy;
    let x_rounded = up(&ops[0].iter().map(|&v| half::bf16::from_f32(v).to_f32()).collect::<Vec<f32>>())?;
    let want = x_rounded.conv2d_backward_weight(&g, &s)?.to_host_f32()?;
    assert_bits(&dw.ok_or(Error::NoGraph)?.to_host_f32()?, &want, "switched mode: dw from the kept copy of x");
    Ok(())
}

/// `TIME` lines: a layer's forward and backward pass, fused and composed, per mode.
fn timings(gpu: &Device) -> Result<()> {
    let Device::Cuda(dev) = gpu else { unreachable!("a CUDA device") };
    let _restore = settings::save();
    // The median time (`common::median_ms`), and the peak of the pool's live bytes above what
    // was live before.
    let measure = |f: &mut dyn FnMut() -> Result<()>| -> Result<(f64, f64)> {
        f()?;
        gpu.synchronize()?;
        let base = dev.memory_stats().current_bytes;
        dev.reset_peak();
        let ms = common::median_ms(gpu, f)?;
        Ok((ms, (dev.memory_stats().peak_bytes - base) as f64 / (1u64 << 20) as f64))
    };
    for (name, c_in, c_out, hw) in
        [("conv1_2", 64, 64, 224), ("conv2_2", 128, 128, 112), ("conv3_3", 256, 256, 56), ("conv4_3", 512, 512, 28)]
    {
        let c = Case { n: 5, c_in, hw, c_out, k: 3, relu: true };
        let ops = operands(c, 7);
        let var = |v: &[f32], shape: Vec<usize>| Tensor::from_slice(v, shape, gpu)?.to_variable();
        let x = var(&ops[0], vec![c.n, c.c_in, c.hw, c.hw])?;
        let w = var(&ops[1], vec![c.c_out, c.c_in, 3, 3])?;
        let gamma = var(&ops[2], vec![c.c_out])?;
        let beta = var(&ops[3], vec![c.c_out])?;
        let g = Tensor::from_slice(&ops[4], [c.n, c.c_out, c.hw, c.hw], gpu)?;
        for (mode, bf16) in [("tf32", false), ("bf16", true)] {
            settings::set_allow_tf32(!bf16);
            settings::set_bf16_conv(bf16);
            let step = |fused: bool| -> Result<()> {
                let y = if fused {
                    x.conv2d_batch_norm_train(&w, 1, 1, &gamma, &beta, EPS, true)?.0
                } else {
                    x.conv2d(&w, None, 1, 1)?.batch_norm_relu_train(&gamma, &beta, EPS)?.0
                };
                y.mul(&g)?.sum_all()?.backward()
            };
            let (composed, composed_mib) = measure(&mut || step(false))?;
            let (fused, fused_mib) = measure(&mut || step(true))?;
            println!(
                "TIME conv_batch_norm {name} {mode}: forward + backward, composed {composed:.3} ms (peak +{composed_mib:.0} MiB), fused {fused:.3} ms (peak +{fused_mib:.0} MiB)"
            );
            let [rm, rv] = running_stats(c, 9);
            let (m, v) = (Tensor::from_slice(&rm, [c.c_out], gpu)?, Tensor::from_slice(&rv, [c.c_out], gpu)?);
            let eval = |fused: bool| -> Result<()> {
                hyperseg_engine::no_grad(|| {
                    if fused {
                        x.conv2d_batch_norm_eval(&w, 1, 1, &gamma, &beta, &m, &v, EPS, true).map(drop)
                    } else {
                        x.conv2d(&w, None, 1, 1)?.batch_norm_relu_eval(&gamma, &beta, &m, &v, EPS).map(drop)
                    }
                })
            };
            let (composed, _) = measure(&mut || eval(false))?;
            let (fused, _) = measure(&mut || eval(true))?;
            println!("TIME conv_batch_norm {name} {mode}: eval forward, composed {composed:.3} ms, fused {fused:.3} ms");
        }
    }
    Ok(())
}
