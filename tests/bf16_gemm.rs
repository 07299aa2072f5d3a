//! bf16 GEMM mode ([`settings::set_bf16_gemm`]): every GEMM rounds its operands to bf16 and
//! accumulates in fp32. Its own test binary, and one test, because the setting is global.
//!
//! - CPU: bitwise equal to an fp32 GEMM of the operands rounded beforehand (the reference), for
//!   every transpose combination the ops use; measurably different from fp32; within 1e-2 of an
//!   f64 product (max-normalised; bf16 keeps 8 mantissa bits).
//! - CUDA (cuBLAS `CUBLAS_COMPUTE_32F_FAST_16BF`): within 1e-2 of the CPU reference
//!   (max-normalised; the same rounded operands summed in another order give ~1e-6, the bound
//!   leaves room for cuBLAS converting with another rounding mode).
//! - The tiny model's training loss falls in bf16 mode on every device.
//!
//! Without a GPU the CUDA part prints that it was skipped; with HYPERSEG_REQUIRE_GPU=1 it fails.

mod common;

use common::{cuda_device, max_rel_err, rand_vec, train_tiny};
use hyperseg_engine::{settings, Device, Result, Tensor};

fn bf16(v: &[f32]) -> Vec<f32> {
    v.iter().map(|&x| half::bf16::from_f32(x).to_f32()).collect()
}

/// `[m, k] x [k, n]` through `matmul` and `[m, k] x [n, k]^T` through `linear` (the transposed
/// operand), on `dev`, with the current settings.
fn products(dev: &Device, a: &[f32], b: &[f32], bt: &[f32], (m, k, n): (usize, usize, usize)) -> Result<[Vec<f32>; 2]> {
    let ta = Tensor::from_slice(a, [m, k], dev)?;
    Ok([ta.matmul(&Tensor::from_slice(b, [k, n], dev)?)?.to_vec()?, ta.linear(&Tensor::from_slice(bt, [n, k], dev)?, None)?.to_vec()?])
}

#[test]
fn bf16_gemm_mode() -> Result<()> {
    let (m, k, n) = (37, 300, 29);
    let a = rand_vec(m * k, 1);
    let b = rand_vec(k * n, 2);
    let bt = rand_vec(n * k, 3);

    settings::set_bf16_gemm(false);
    let fp32 = products(&Device::Cpu, &a, &b, &bt, (m, k, n))?;
    let reference = products(&Device::Cpu, &bf16(&a), &bf16(&b), &bf16(&bt), (m, k, n))?;
    settings::set_bf16_gemm(true);
    let cpu = products(&Device::Cpu, &a, &b, &bt, (m, k, n))?;
    for (i, name) in ["matmul", "linear (trans_b)"].iter().enumerate() {
        assert!(cpu[i].iter().zip(&reference[i]).all(|(x, y)| x.to_bits() == y.to_bits()), "{name}: CPU bf16 mode != rounded operands");
        assert!(cpu[i] != fp32[i], "{name}: bf16 mode gave the fp32 result");
        // Against an f64 product of the unrounded operands.
        let exact: Vec<f32> = (0..m * n)
            .map(|idx| {
                let (r, c) = (idx / n, idx % n);
                (0..k).map(|p| a[r * k + p] as f64 * if i == 0 { b[p * n + c] } else { bt[c * k + p] } as f64).sum::<f64>() as f32
            })
            .collect();
        let e = max_rel_err(&cpu[i], &exact);
        assert!(e < 1e-2 && e > 1e-5, "{name}: bf16 error vs f64 {e}");
        eprintln!("{name}: CPU bf16 error vs f64 {e:.2e}");
    }

    let (first, last) = train_tiny(&Device::Cpu, 25)?;
    eprintln!("CPU, bf16 GEMMs: loss {first:.4} -> {last:.4} in 25 steps");
    assert!(last < 0.8 * first, "CPU, bf16 GEMMs: loss {first} -> {last}");

    if let Some(gpu) = cuda_device() {
        let got = products(&gpu, &a, &b, &bt, (m, k, n))?;
        for (i, name) in ["matmul", "linear (trans_b)"].iter().enumerate() {
            let e = max_rel_err(&got[i], &cpu[i]);
            eprintln!("{name}: CUDA bf16 vs CPU bf16 reference {e:.2e}");
            assert!(e <= 1e-2, "{name}: CUDA bf16 GEMM off the CPU reference by {e}");
        }
        let (first, last) = train_tiny(&gpu, 25)?;
        eprintln!("CUDA, bf16 GEMMs: loss {first:.4} -> {last:.4} in 25 steps");
        assert!(last < 0.8 * first, "CUDA, bf16 GEMMs: loss {first} -> {last}");
    }
    settings::set_bf16_gemm(false);
    Ok(())
}
