//! bf16 activations ([`hyperseg_engine::bf16::Bf16Matrix`], [`settings::set_bf16_activations`]):
//! each op against its reference, then factored dense inference in bf16 mode against fp32.
//!
//! - Casts and bias + ReLU: the CPU is bitwise equal to `half`'s rounding of the f32 result
//!   (to nearest, ties to even; specials included); CUDA (`kernels/bf16.ptx`) bitwise equal to
//!   the CPU.
//! - The fused first layer on bf16 planes: the CPU equals the fp32 op on the widened planes,
//!   rounded once (bitwise); CUDA equals the CPU (as values: the kernel may give -0 where the
//!   CPU gives +0).
//! - GEMMs on bf16 matrices, every transpose the dense path uses: the fp32-output CPU product
//!   is within 1e-6 (max-normalised) of an f64 product of the same bf16 operands, and the
//!   bf16-output one is that product rounded (within one bf16 rounding, 2^-8 relative); CUDA
//!   (cuBLAS, `CUBLAS_COMPUTE_32F`) within 1e-4 of the CPU for fp32 output (the same operands
//!   summed in another order give ~1e-6 at k = 300; the bound leaves room for the tensor cores'
//!   internal summation, and still catches a wrong transpose or scale) and within one
//!   rounding (8e-3 relative per element, above 1e-3 of the row's scale) for bf16 output.
//! - Dense inference, factored, tiny model, unit-scale inputs: bf16 mode differs from fp32 (it
//!   is on) by at most 2e-2 in probability (5.5e-3 measured on the CPU), does not depend on the
//!   bf16-GEMM setting (its GEMMs read bf16 already), and on CUDA is within 2e-2 of the CPU's.
//!
//! One test binary and one test for the dense part, because the settings are global. Without a
//! GPU the CUDA parts print that they were skipped; with HYPERSEG_REQUIRE_GPU=1 they fail.

mod common;

use common::{cuda_device, max_rel_err, rand_vec};
use half::bf16;
use hyperseg_engine::backend::SamplePoint;
use hyperseg_engine::bf16::{upsample_sum_bias_relu_bf16, Bf16Matrix};
use hyperseg_engine::model::{DensePath, HypercolumnNet, ModelConfig};
use hyperseg_engine::ops::upsample_sum_bias_relu;
use hyperseg_engine::{settings, Device, Result, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn widen(v: &[bf16]) -> Vec<f32> {
    v.iter().map(|x| x.to_f32()).collect()
}

fn round(v: &[f32]) -> Vec<bf16> {
    v.iter().map(|&x| bf16::from_f32(x)).collect()
}

fn bits(v: &[bf16]) -> Vec<u16> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// Random values over several binades, with ties, specials and bf16 edge cases mixed in.
fn awkward_values(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut v: Vec<f32> = (0..n).map(|_| rng.random_range(-1.0f32..1.0) * 2f32.powi(rng.random_range(-20..20))).collect();
    let specials = [
        0.0,
        -0.0,
        1.0 + 1.0 / 256.0,
        1.0 + 3.0 / 256.0,
        f32::MAX,
        -f32::MAX,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::NAN,
        f32::MIN_POSITIVE / 3.0,
    ];
    for (i, s) in specials.iter().enumerate() {
        v[i * 7 % n] = *s;
    }
    v
}

#[test]
fn casts_and_bias_relu_round_once_to_nearest_even() -> Result<()> {
    let (rows, cols) = (33, 70);
    let x = awkward_values(rows * cols, 1);
    let bias = rand_vec(cols, 2);
    let want_cast = round(&x);
    let want_relu: Vec<bf16> = want_cast.iter().enumerate().map(|(i, v)| bf16::from_f32((v.to_f32() + bias[i % cols]).max(0.0))).collect();

    let mut results = Vec::new();
    for dev in [Some(Device::Cpu), cuda_device()].into_iter().flatten() {
        let mut m = Bf16Matrix::from_tensor(&Tensor::from_slice(&x, [rows, cols], &dev)?, rows, cols)?;
        let cast = m.to_host()?;
        let widened = m.to_tensor()?.to_vec()?;
        assert_eq!(bits(&cast), bits(&want_cast), "{dev}: f32 -> bf16");
        assert_eq!(widened.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), widen(&cast).iter().map(|v| v.to_bits()).collect::<Vec<_>>());
        m.bias_relu_assign(&Tensor::from_slice(&bias, [cols], &dev)?)?;
        let relu = m.to_host()?;
        assert_eq!(bits(&relu), bits(&want_relu), "{dev}: bias + ReLU");
        results.push(relu);
    }
    assert!(want_relu.iter().any(|v| v.to_f32() > 0.0) && want_relu.iter().any(|v| v.to_f32() == 0.0));
    Ok(())
}

#[test]
fn gemms_on_bf16_matrices_accumulate_in_fp32() -> Result<()> {
    // op(A) [m, k] . op(B) [k, n] for the transposes the dense path uses (and the plain one).
    let (m, k, n) = (45, 300, 37);
    for (ta, tb) in [(false, true), (true, true), (false, false)] {
        let a = rand_vec(m * k, 3);
        let b = rand_vec(k * n, 4);
        let (ar, ac) = if ta { (k, m) } else { (m, k) };
        let (br, bc) = if tb { (n, k) } else { (k, n) };
        // The f64 product of the bf16-rounded operands.
        let (a16, b16) = (widen(&round(&a)), widen(&round(&b)));
        let exact: Vec<f32> = (0..m * n)
            .map(|idx| {
                let (i, j) = (idx / n, idx % n);
                (0..k)
                    .map(|p| {
                        let av = if ta { a16[p * m + i] } else { a16[i * k + p] };
                        let bv = if tb { b16[j * k + p] } else { b16[p * n + j] };
                        av as f64 * bv as f64
                    })
                    .sum::<f64>() as f32
            })
            .collect();
        let what = format!("trans_a {ta}, trans_b {tb}");
        let run = |dev: &Device| -> Result<(Vec<f32>, Vec<f32>)> {
            let am = Bf16Matrix::from_tensor(&Tensor::from_slice(&a, [ar, ac], dev)?, ar, ac)?;
            let bm = Bf16Matrix::from_tensor(&Tensor::from_slice(&b, [br, bc], dev)?, br, bc)?;
            let f = am.matmul_f32(ta, &bm, tb)?;
            assert_eq!(f.dims(), [m, n]);
            let h = am.matmul(ta, &bm, tb)?;
            assert_eq!((h.rows(), h.cols()), (m, n));
            Ok((f.to_vec()?, widen(&h.to_host()?)))
        };
        let (cpu_f32, cpu_bf16) = run(&Device::Cpu)?;
        let e = max_rel_err(&cpu_f32, &exact);
        assert!(e < 1e-6, "{what}: CPU fp32 output off the f64 product by {e}");
        for (i, (&h, &x)) in cpu_bf16.iter().zip(&exact).enumerate() {
            assert!((h - x).abs() <= x.abs() / 256.0 + 1e-6, "{what}: CPU bf16 output [{i}] {h} vs {x}");
        }
        if let Some(gpu) = cuda_device() {
            let (g_f32, g_bf16) = run(&gpu)?;
            let e = max_rel_err(&g_f32, &cpu_f32);
            eprintln!("{what}: CUDA fp32-output bf16 GEMM vs CPU {e:.2e}");
            assert!(e <= 1e-4, "{what}: CUDA bf16 GEMM (fp32 out) off the CPU by {e}");
            let scale = cpu_f32.iter().fold(0.0f32, |s, v| s.max(v.abs()));
            for (i, (&g, &c)) in g_bf16.iter().zip(&cpu_f32).enumerate() {
                assert!((g - c).abs() <= c.abs() / 128.0 + 1e-3 * scale, "{what}: CUDA bf16 output [{i}] {g} vs {c}");
            }
        }
    }
    Ok(())
}

#[test]
fn fused_first_layer_on_bf16_planes_is_the_fp32_layer_rounded_once() -> Result<()> {
    // Two images; planes at full, half and an odd resolution of a 20x20 frame.
    let (n, in_s, cols) = (2, 20, 40);
    let sizes = [(20, 20), (10, 10), (3, 5)];
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let planes: Vec<Vec<f32>> = sizes.iter().enumerate().map(|(i, &(h, w))| rand_vec(n * h * w * cols, 10 + i as u64)).collect();
    let bias = rand_vec(cols, 6);
    let mut points: Vec<SamplePoint> = (0..150)
        .map(|_| SamplePoint { image: rng.random_range(0..n as u32), y: rng.random_range(0..20), x: rng.random_range(0..20) })
        .collect();
    points.extend([SamplePoint { image: 0, y: 0, x: 0 }, SamplePoint { image: 1, y: 19, x: 19 }]);

    let run = |dev: &Device| -> Result<Vec<bf16>> {
        let mats: Vec<Bf16Matrix> = planes
            .iter()
            .zip(&sizes)
            .map(|(p, &(h, w))| Bf16Matrix::from_tensor(&Tensor::from_slice(p, [n * h * w, cols], dev)?, n * h * w, cols))
            .collect::<Result<_>>()?;
        let refs: Vec<(&Bf16Matrix, usize, usize)> = mats.iter().zip(&sizes).map(|(m, &(h, w))| (m, h, w)).collect();
        let out = upsample_sum_bias_relu_bf16(&refs, &Tensor::from_slice(&bias, [cols], dev)?, &points, in_s, in_s)?;
        assert_eq!((out.rows(), out.cols()), (points.len(), cols));
        out.to_host()
    };
    // The reference: the fp32 op on the widened planes, rounded once.
    let widened: Vec<Tensor> = planes
        .iter()
        .zip(&sizes)
        .map(|(p, &(h, w))| Tensor::from_vec(widen(&round(p)), [n, h, w, cols], &Device::Cpu))
        .collect::<Result<_>>()?;
    let refs: Vec<&Tensor> = widened.iter().collect();
    let fp32 = upsample_sum_bias_relu(&refs, &Tensor::from_slice(&bias, [cols], &Device::Cpu)?, &points, in_s, in_s)?.to_vec()?;
    let want = round(&fp32);
    let cpu = run(&Device::Cpu)?;
    assert_eq!(bits(&cpu), bits(&want), "CPU bf16 first layer != fp32 layer rounded");
    assert!(fp32.iter().zip(&cpu).any(|(f, h)| *f != h.to_f32()), "the bf16 output was not rounded");
    if let Some(gpu) = cuda_device() {
        let got = run(&gpu)?;
        for (i, (g, c)) in got.iter().zip(&cpu).enumerate() {
            assert!(g.to_f32() == c.to_f32(), "CUDA bf16 first layer [{i}]: {g} vs CPU {c}");
        }
    }
    Ok(())
}

/// Lesion probabilities of the factored dense path for two random images.
fn dense(model: &HypercolumnNet, images: &[f32], bf16_mode: bool) -> Result<Vec<f32>> {
    let s = model.config.input_size;
    settings::set_bf16_activations(bf16_mode);
    let x = Tensor::from_slice(images, [2, 3, s, s], model.device())?;
    let out = model.predict_dense(&x, DensePath::Factored, 700);
    settings::set_bf16_activations(false);
    Ok(out?.concat())
}

#[test]
fn dense_inference_in_bf16_mode_is_close_to_fp32() -> Result<()> {
    let config = ModelConfig::tiny();
    let s = config.input_size;
    // Unit-scale inputs. At +-100 this untrained model (eval-mode batch norm with its initial
    // statistics) has huge hidden activations, and a pixel whose two logits nearly cancel moves
    // by 0.35 in probability under bf16 rounding of the GEMM operands alone (the bf16-GEMM mode),
    // so no useful bound holds there.
    let images = rand_vec(2 * 3 * s * s, 7);
    let model = HypercolumnNet::new(config.clone(), &mut ChaCha8Rng::seed_from_u64(8), &Device::Cpu)?;
    let fp32 = dense(&model, &images, false)?;
    let cpu = dense(&model, &images, true)?;
    let worst = fp32.iter().zip(&cpu).fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
    let mean = fp32.iter().zip(&cpu).map(|(a, b)| (a - b).abs()).sum::<f32>() / fp32.len() as f32;
    eprintln!("CPU: bf16 mode vs fp32, probabilities: max {worst:.2e}, mean {mean:.2e}");
    assert!(worst > 0.0, "bf16 mode gave the fp32 probabilities: it is not on");
    assert!(worst <= 2e-2, "bf16 mode off fp32 by {worst} in probability");
    settings::set_bf16_gemm(true);
    let with_gemm = dense(&model, &images, true);
    settings::set_bf16_gemm(false);
    assert!(with_gemm?.iter().zip(&cpu).all(|(a, b)| a.to_bits() == b.to_bits()), "bf16 mode depends on the bf16-GEMM setting");

    if let Some(gpu) = cuda_device() {
        let on_gpu = HypercolumnNet::new(config, &mut ChaCha8Rng::seed_from_u64(8), &gpu)?;
        let got = dense(&on_gpu, &images, true)?;
        let worst = got.iter().zip(&cpu).fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
        eprintln!("CUDA bf16 mode vs CPU bf16 mode: max probability difference {worst:.2e}");
        assert!(worst <= 2e-2, "CUDA bf16 dense inference off the CPU's by {worst}");
    }
    Ok(())
}
