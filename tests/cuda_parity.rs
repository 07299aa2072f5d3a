//! CUDA against the CPU reference, forward and backward, on random inputs of odd sizes.
//!
//! Tolerances (max |cuda - cpu| / max |cpu| per tensor):
//! - fp32, GEMM-free ops (elementwise, batch norm, pooling, upsampling, gather, loss, Adam):
//!   1e-5;
//! - fp32 GEMM and convolution (cuBLAS / cuDNN sum in another order): 1e-5 as well on these
//!   sizes, stated separately as `GEMM_TOL` in case a library picks a split-K algorithm;
//! - TF32 (10-bit mantissa inputs): 5e-3.
//!
//! The settings (TF32, deterministic mode) are process-wide and the tests of a binary run in
//! parallel threads, so every test here holds one lock for its whole run ([`serial`]).
//!
//! Without a GPU every test prints that it was skipped; with HYPERSEG_REQUIRE_GPU=1 it fails.

mod common;

use common::{cuda_device, max_rel_err, rand_vec, separated_vec};
use hyperseg_engine::optim::{Adam, AdamConfig};
use hyperseg_engine::{concat, gather_hypercolumns, settings, Device, Result, SamplePoint, Tensor};

/// Holds the file's settings lock: one test at a time, so that a test switching TF32 or
/// deterministic mode on cannot change another's arithmetic (a poisoned lock is still a lock).
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// Sets the process-wide settings back to their defaults when dropped, even after a failed
/// assertion.
struct DefaultSettings;
impl Drop for DefaultSettings {
    fn drop(&mut self) {
        settings::set_allow_tf32(false);
        settings::set_deterministic(false);
    }
}

const TOL: f32 = 1e-5;
const GEMM_TOL: f32 = 1e-5;
const TF32_TOL: f32 = 5e-3;

/// Runs `f` on the CPU and on the GPU with the same inputs; compares the output and every
/// input's gradient (through a random projection of the output).
fn parity(inputs: &[(Vec<f32>, Vec<usize>)], tol: f32, name: &str, f: impl Fn(&[Tensor]) -> Result<Tensor>) -> Result<()> {
    let Some(gpu) = cuda_device() else { return Ok(()) };
    let mut results = Vec::new();
    for dev in [Device::Cpu, gpu] {
        let vars: Vec<Tensor> = inputs.iter().map(|(v, s)| Tensor::from_slice(v, s.clone(), &dev)?.to_variable()).collect::<Result<_>>()?;
        let out = f(&vars)?;
        let proj = Tensor::from_vec(rand_vec(out.elem_count(), 77), out.shape().clone(), &dev)?;
        out.mul(&proj)?.sum_all()?.backward()?;
        let grads: Vec<Vec<f32>> = vars.iter().map(|v| v.grad().map_or(Ok(vec![]), |g| g.to_vec())).collect::<Result<_>>()?;
        results.push((out.to_vec()?, grads));
    }
    let (cpu, gpu) = (&results[0], &results[1]);
    let e = max_rel_err(&gpu.0, &cpu.0);
    assert!(e <= tol, "{name}: forward relative error {e} > {tol}");
    for (i, (g, c)) in gpu.1.iter().zip(&cpu.1).enumerate() {
        let e = max_rel_err(g, c);
        assert!(e <= tol, "{name}: gradient of input {i} relative error {e} > {tol}");
    }
    eprintln!("{name}: parity within {tol}");
    Ok(())
}

fn r(shape: &[usize], seed: u64) -> (Vec<f32>, Vec<usize>) {
    (rand_vec(shape.iter().product(), seed), shape.to_vec())
}

#[test]
fn cuda_parity_conv() -> Result<()> {
    let (_serial, _reset) = (serial(), DefaultSettings);
    for (k, stride, pad) in [(3, 1, 1), (1, 1, 0), (7, 1, 3), (3, 2, 1)] {
        let inputs = [r(&[3, 5, 13, 11], 1), r(&[7, 5, k, k], 2), r(&[7], 3)];
        parity(&inputs, GEMM_TOL, &format!("conv {k}x{k} s{stride} p{pad}"), |t| t[0].conv2d(&t[1], Some(&t[2]), stride, pad))?;
    }
    Ok(())
}

#[test]
fn cuda_parity_conv_tf32() -> Result<()> {
    let (_serial, _reset) = (serial(), DefaultSettings);
    settings::set_allow_tf32(true);
    let inputs = [r(&[2, 16, 15, 13], 4), r(&[32, 16, 3, 3], 5)];
    parity(&inputs, TF32_TOL, "conv tf32", |t| t[0].conv2d(&t[1], None, 1, 1))
}

#[test]
fn cuda_parity_linear_and_matmul() -> Result<()> {
    let (_serial, _reset) = (serial(), DefaultSettings);
    parity(&[r(&[37, 53], 6), r(&[29, 53], 7), r(&[29], 8)], GEMM_TOL, "linear", |t| t[0].linear(&t[1], Some(&t[2])))?;
    parity(&[r(&[37, 53], 6), r(&[29, 53], 7), r(&[29], 8)], GEMM_TOL, "linear + relu (fused)", |t| t[0].linear_relu(&t[1], &t[2]))?;
    parity(&[r(&[17, 23], 9), r(&[23, 31], 10)], GEMM_TOL, "matmul", |t| t[0].matmul(&t[1]))
}

#[test]
fn cuda_parity_batch_norm() -> Result<()> {
    let (_serial, _reset) = (serial(), DefaultSettings);
    let x: Vec<f32> = rand_vec(3 * 6 * 9 * 7, 11).iter().enumerate().map(|(i, v)| v * 3.0 + (i % 5) as f32).collect();
    let inputs = [(x, vec![3, 6, 9, 7]), r(&[6], 12), r(&[6], 13)];
    parity(&inputs, TOL, "batch_norm train", |t| Ok(t[0].batch_norm_train(&t[1], &t[2], 1e-5)?.0))?;
    parity(&inputs, TOL, "batch_norm + relu train (fused)", |t| Ok(t[0].batch_norm_relu_train(&t[1], &t[2], 1e-5)?.0))
}

#[test]
fn cuda_parity_relu_pool_dropout() -> Result<()> {
    let (_serial, _reset) = (serial(), DefaultSettings);
    parity(&[(separated_vec(2 * 3 * 9 * 7, 0.01, 14), vec![2, 3, 9, 7])], TOL, "relu+max_pool", |t| t[0].relu()?.max_pool2x2())?;
    parity(&[r(&[5, 301], 15)], TOL, "dropout", |t| t[0].dropout(0.4, 99))
}

#[test]
fn cuda_parity_upsample() -> Result<()> {
    let (_serial, _reset) = (serial(), DefaultSettings);
    parity(&[r(&[2, 5, 7, 6], 16)], TOL, "upsample 7x6->224x200", |t| t[0].upsample_bilinear(224, 200))?;
    parity(&[r(&[1, 3, 14, 14], 17)], TOL, "upsample x16", |t| t[0].upsample_bilinear(224, 224))
}

#[test]
fn cuda_parity_gather_atomic_and_deterministic() -> Result<()> {
    let (_serial, _reset) = (serial(), DefaultSettings);
    use rand::Rng;
    let (n, h, w) = (3, 64, 48);
    let shapes: Vec<Vec<usize>> = vec![vec![n, 8, 64, 48], vec![n, 16, 32, 24], vec![n, 32, 16, 12], vec![n, 64, 2, 2]];
    let inputs: Vec<(Vec<f32>, Vec<usize>)> = shapes.iter().enumerate().map(|(i, s)| r(s, 20 + i as u64)).collect();
    let mut g = common::rng(21);
    // Many points share pixels, so the scatter has real collisions.
    let points: Vec<SamplePoint> = (0..700)
        .map(|_| SamplePoint { image: g.random_range(0..n as u32), y: g.random_range(0..h as u32 / 4), x: g.random_range(0..w as u32) })
        .collect();
    for det in [false, true] {
        settings::set_deterministic(det);
        let res = parity(&inputs, TOL, &format!("gather (deterministic={det})"), |t| {
            gather_hypercolumns(&[&t[0], &t[1], &t[2], &t[3]], &points, h, w)
        });
        settings::set_deterministic(false);
        res?;
    }
    Ok(())
}

#[test]
fn cuda_parity_loss_and_shapes() -> Result<()> {
    let (_serial, _reset) = (serial(), DefaultSettings);
    let labels: Vec<u32> = (0..1601).map(|i| (i * 13 % 7 % 2) as u32).collect();
    let logits: Vec<f32> = rand_vec(1601 * 2, 30).iter().map(|v| v * 4.0).collect();
    parity(&[(logits.clone(), vec![1601, 2])], TOL, "softmax cross-entropy", |t| t[0].softmax_cross_entropy(&labels, None))?;
    let w = [0.3, 1.7];
    parity(&[(logits, vec![1601, 2])], TOL, "weighted softmax cross-entropy", |t| t[0].softmax_cross_entropy(&labels, Some(&w)))?;
    parity(&[r(&[3, 4, 5], 31), r(&[3, 2, 5], 32)], TOL, "concat/narrow", |t| concat(&[&t[0], &t[1]], 1)?.narrow(1, 1, 4))?;
    parity(&[r(&[4, 6, 5], 33), r(&[6], 34), r(&[6], 35)], TOL, "channel broadcasts", |t| {
        t[0].mul_channels(&t[1])?.add_channels(&t[2])?.sum_channels()
    })?;
    let pos: Vec<f32> = rand_vec(1000, 36).iter().map(|v| v.abs() + 0.1).collect();
    parity(&[(pos, vec![1000]), r(&[1000], 37)], TOL, "elementwise", |t| {
        t[0].log()?.add(&t[1].exp()?)?.mul(&t[0].sqrt()?)?.div(&t[0])?.sub(&t[1].sqr()?)?.neg()?.affine(0.5, 1.0)
    })
}

#[test]
fn cuda_parity_adam() -> Result<()> {
    let (_serial, _reset) = (serial(), DefaultSettings);
    let Some(gpu) = cuda_device() else { return Ok(()) };
    let mut finals = Vec::new();
    for dev in [Device::Cpu, gpu] {
        let p = Tensor::from_vec(rand_vec(10_007, 40), [10_007], &dev)?.to_variable()?;
        let mut adam = Adam::new(vec![p.clone()], AdamConfig { weight_decay: 0.01, ..Default::default() })?;
        for step in 0..5 {
            let target = Tensor::from_vec(rand_vec(10_007, 41 + step), [10_007], &dev)?;
            adam.zero_grad();
            p.sub(&target)?.sqr()?.sum_all()?.backward()?;
            adam.step()?;
        }
        finals.push(p.to_vec()?);
    }
    let e = max_rel_err(&finals[1], &finals[0]);
    assert!(e <= TOL, "adam: relative error {e} after 5 steps");
    Ok(())
}
