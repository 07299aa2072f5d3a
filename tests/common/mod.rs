//! Shared test helpers: the devices under test, random tensors, closeness checks with stated
//! tolerances, and a finite-difference gradient checker.
#![allow(dead_code)]

use hyperseg_engine::model::{sample_points, HypercolumnNet, ModelConfig};
use hyperseg_engine::nn::Module;
use hyperseg_engine::optim::{Adam, AdamConfig};
use hyperseg_engine::train::{queue_step, StepInputs};
use hyperseg_engine::{no_grad, Device, Result, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// The CUDA device for GPU tests. Without one the test prints that it was skipped and passes,
/// unless HYPERSEG_REQUIRE_GPU=1, in which case it fails.
pub fn cuda_device() -> Option<Device> {
    match Device::cuda(0) {
        Ok(d) => Some(d),
        Err(e) => {
            if std::env::var("HYPERSEG_REQUIRE_GPU").as_deref() == Ok("1") {
                panic!("HYPERSEG_REQUIRE_GPU=1 but no CUDA device is usable: {e}");
            }
            eprintln!("skipped: no CUDA device ({e})");
            None
        }
    }
}

/// Whether `dev` can run bf16 convolutions (compute capability 8.0 or newer); prints that the bf16
/// GPU checks are skipped when it cannot.
pub fn runs_bf16_convolutions(dev: &Device) -> bool {
    match dev {
        Device::Cuda(d) => match hyperseg_engine::backend::cuda::cudnn::check_bf16_conv(d) {
            Ok(()) => true,
            Err(e) => {
                eprintln!("skipped the bf16 GPU checks: {e}");
                false
            }
        },
        Device::Cpu => true,
    }
}

/// Runs one test body on the CPU and on CUDA: `test_device!(body, name_cpu, name_cuda);`.
#[macro_export]
macro_rules! test_device {
    ($body:ident, $cpu:ident, $cuda:ident) => {
        #[test]
        fn $cpu() -> hyperseg_engine::Result<()> {
            $body(&hyperseg_engine::Device::Cpu)
        }
        #[test]
        fn $cuda() -> hyperseg_engine::Result<()> {
            match $crate::common::cuda_device() {
                Some(d) => $body(&d),
                None => Ok(()),
            }
        }
    };
}

pub fn rng(seed: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed)
}

/// Uniform values in [-1, 1).
pub fn rand_vec(n: usize, seed: u64) -> Vec<f32> {
    let mut r = rng(seed);
    (0..n).map(|_| r.random_range(-1.0..1.0)).collect()
}

/// A tensor of uniform values in [-1, 1).
pub fn rand_tensor(shape: &[usize], seed: u64, dev: &Device) -> Result<Tensor> {
    Tensor::from_vec(rand_vec(shape.iter().product(), seed), shape.to_vec(), dev)
}

/// Values whose magnitudes are at least `gap` apart and away from zero, shuffled: no ties in a
/// max and no ReLU kink within a finite-difference step.
pub fn separated_vec(n: usize, gap: f32, seed: u64) -> Vec<f32> {
    let mut r = rng(seed);
    let mut v: Vec<f32> = (0..n)
        .map(|i| {
            let mag = gap * (i as f32 + 1.0);
            if r.random_bool(0.5) {
                mag
            } else {
                -mag
            }
        })
        .collect();
    for i in (1..n).rev() {
        v.swap(i, r.random_range(0..=i));
    }
    v
}

/// Asserts `|a - b| <= atol + rtol * |b|` elementwise, naming the first failure.
pub fn assert_close(a: &[f32], b: &[f32], rtol: f32, atol: f32, what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: lengths differ");
    let mut worst = (0.0f32, 0usize);
    for (i, (&x, &y)) in a.iter().zip(b).enumerate() {
        assert!(x.is_finite(), "{what}[{i}] is {x}");
        let err = (x - y).abs() - rtol * y.abs();
        if err > worst.0 {
            worst = (err, i);
        }
    }
    let i = worst.1;
    assert!(worst.0 <= atol, "{what}[{i}]: {} vs {} (rtol {rtol}, atol {atol})", a[i], b[i]);
}

/// The relative error `max |a - b| / max |b|` over the finite values of `b`. Infinite where a
/// pair disagrees on being finite (a NaN or an infinity on one side only, or infinities of
/// different signs), so that a NaN result never passes a tolerance; pairs that are the same
/// non-finite value count 0. Panics on lengths that differ.
pub fn max_rel_err(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "max_rel_err: lengths differ");
    let scale = b.iter().filter(|v| v.is_finite()).fold(0.0f32, |m, v| m.max(v.abs())).max(1e-12);
    let diff = |x: f32, y: f32| match (x.is_finite(), y.is_finite()) {
        (true, true) => (x - y).abs(),
        (false, false) if x == y || (x.is_nan() && y.is_nan()) => 0.0,
        _ => f32::INFINITY,
    };
    a.iter().zip(b).fold(0.0f32, |m, (&x, &y)| m.max(diff(x, y))) / scale
}

/// Finite-difference gradient check.
///
/// `f` maps the inputs to a tensor; the checked scalar is `sum(f(inputs) * proj)` with a
/// random projection `proj`, so every output element matters. Analytic gradients come from
/// `backward`; numeric ones from central differences with step `h`, on at most `samples`
/// elements of each input. Passes when `|analytic - numeric| <= atol + rtol * |numeric|`.
pub struct GradCheck {
    pub h: f32,
    pub rtol: f32,
    pub atol: f32,
    pub samples: usize,
}

impl Default for GradCheck {
    /// Step 1e-2; tolerance 5e-3 + 2e-2 |numeric| (f32 forward passes).
    fn default() -> Self {
        GradCheck { h: 1e-2, rtol: 2e-2, atol: 5e-3, samples: 40 }
    }
}

impl GradCheck {
    pub fn run(&self, dev: &Device, inputs: &[Vec<f32>], shapes: &[Vec<usize>], f: impl Fn(&[Tensor]) -> Result<Tensor>) -> Result<()> {
        let vars: Vec<Tensor> =
            inputs.iter().zip(shapes).map(|(v, s)| Tensor::from_slice(v, s.clone(), dev)?.to_variable()).collect::<Result<_>>()?;
        let out = f(&vars)?;
        let proj_host = rand_vec(out.elem_count(), 99);
        let proj = Tensor::from_slice(&proj_host, out.shape().clone(), dev)?;
        out.mul(&proj)?.sum_all()?.backward()?;
        let eval = |xs: &[Vec<f32>]| -> Result<f64> {
            no_grad(|| {
                let ts: Vec<Tensor> = xs.iter().zip(shapes).map(|(v, s)| Tensor::from_slice(v, s.clone(), dev)).collect::<Result<_>>()?;
                let y = f(&ts)?.to_vec()?;
                Ok(y.iter().zip(&proj_host).map(|(a, b)| *a as f64 * *b as f64).sum())
            })
        };
        for (i, var) in vars.iter().enumerate() {
            let analytic = var.grad().ok_or(hyperseg_engine::Error::NoGraph)?.to_vec()?;
            let n = inputs[i].len();
            let step = (n / self.samples).max(1);
            for j in (0..n).step_by(step).take(self.samples) {
                let mut xs = inputs.to_vec();
                xs[i][j] += self.h;
                let plus = eval(&xs)?;
                xs[i][j] -= 2.0 * self.h;
                let minus = eval(&xs)?;
                let numeric = ((plus - minus) / (2.0 * self.h as f64)) as f32;
                let a = analytic[j];
                assert!(
                    (a - numeric).abs() <= self.atol + self.rtol * numeric.abs(),
                    "input {i} element {j}: analytic {a} vs numeric {numeric} on {dev}"
                );
            }
        }
        Ok(())
    }
}

/// Loss of the first and the last of `steps` Adam steps of the tiny model on one fixed batch (a
/// bright disc per image is the lesion), with the current settings.
pub fn train_tiny(dev: &Device, steps: usize) -> Result<(f32, f32)> {
    let config = ModelConfig::tiny();
    let (n, s) = (config.batch_size, config.input_size);
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let model = HypercolumnNet::new(config.clone(), &mut rng, dev)?;
    let mut adam = Adam::new(model.parameters(), AdamConfig::default())?;
    let images: Vec<f32> = (0..n * 3 * s * s).map(|_| rng.random_range(-100.0..100.0)).collect();
    // A bright disc per image is the lesion.
    let mut masks = vec![0u8; n * s * s];
    let mut images = images;
    for i in 0..n {
        let (cy, cx) = (rng.random_range(16.0..48.0f32), rng.random_range(16.0..48.0f32));
        for y in 0..s {
            for x in 0..s {
                if (y as f32 - cy).powi(2) + (x as f32 - cx).powi(2) < 144.0 {
                    masks[(i * s + y) * s + x] = 1;
                    for c in 0..3 {
                        images[((i * 3 + c) * s + y) * s + x] += 80.0;
                    }
                }
            }
        }
    }
    let (points, labels) = sample_points(n, s, config.sample_points, &masks, &mut rng);
    let images = Tensor::from_vec(images, [n, 3, s, s], dev)?;
    let mut losses = Vec::new();
    for step in 0..steps {
        losses.push(queue_step(&model, &mut adam, StepInputs::new(&images, &points, &labels, step as u64, 0))?.finish()?);
    }
    Ok((losses[0], *losses.last().unwrap()))
}

/// The median wall time in ms of 10 runs of `f` after one warm-up, the device synchronised
/// after each (the `TIME` lines of the GPU tests; never asserted).
#[allow(dead_code)]
pub fn median_ms(dev: &Device, f: &mut dyn FnMut() -> Result<()>) -> Result<f64> {
    f()?;
    dev.synchronize()?;
    let mut times = Vec::new();
    for _ in 0..10 {
        let t = std::time::Instant::now();
        f()?;
        dev.synchronize()?;
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    Ok(times[5])
}
