//! Finite-difference gradient checks for every op of the engine, input and parameter
//! gradients, on random inputs of odd-sized shapes; each body runs on the CPU and on CUDA.
//! Tolerance: |analytic - numeric| <= 5e-3 + 2e-2 |numeric| with a step of 1e-2 (f32 forward
//! passes), unless a test states otherwise.

mod common;

use common::{rand_vec, separated_vec, GradCheck};
use hyperseg_engine::{concat, gather_hypercolumns, no_grad, Device, Result, SamplePoint, Tensor};

/// A convolution of an `[n, c_in, h, w]` input with `c_out` `k x k` filters.
fn conv_case(dev: &Device, x: [usize; 4], c_out: usize, k: usize, stride: usize, pad: usize, bias: bool) -> Result<()> {
    let [n, c_in, h, w] = x;
    let xs = vec![n, c_in, h, w];
    let ws = vec![c_out, c_in, k, k];
    let mut inputs = vec![rand_vec(xs.iter().product(), 1), rand_vec(ws.iter().product(), 2)];
    let mut shapes = vec![xs, ws];
    if bias {
        inputs.push(rand_vec(c_out, 3));
        shapes.push(vec![c_out]);
    }
    GradCheck::default().run(dev, &inputs, &shapes, |t| t[0].conv2d(&t[1], t.get(2), stride, pad))
}

fn conv_3x3(dev: &Device) -> Result<()> {
    conv_case(dev, [2, 3, 7, 5], 4, 3, 1, 1, true)
}
fn conv_1x1(dev: &Device) -> Result<()> {
    conv_case(dev, [2, 5, 3, 4], 3, 1, 1, 0, false)
}
fn conv_7x7_pad3(dev: &Device) -> Result<()> {
    conv_case(dev, [1, 2, 7, 7], 3, 7, 1, 3, true)
}
fn conv_strided(dev: &Device) -> Result<()> {
    conv_case(dev, [2, 3, 9, 6], 2, 3, 2, 1, true)
}
test_device!(conv_3x3, grad_conv_3x3_cpu, grad_conv_3x3_cuda);
test_device!(conv_1x1, grad_conv_1x1_cpu, grad_conv_1x1_cuda);
test_device!(conv_7x7_pad3, grad_conv_7x7_pad3_cpu, grad_conv_7x7_pad3_cuda);
test_device!(conv_strided, grad_conv_strided_cpu, grad_conv_strided_cuda);

fn batch_norm_train(dev: &Device) -> Result<()> {
    let (c, shape) = (3, vec![3, 3, 5, 3]);
    let x: Vec<f32> = rand_vec(135, 4).iter().enumerate().map(|(i, v)| v * 2.0 + (i % 3) as f32).collect();
    let inputs = vec![x, rand_vec(c, 5).iter().map(|v| v + 1.5).collect(), rand_vec(c, 6)];
    GradCheck::default().run(dev, &inputs, &[shape, vec![c], vec![c]], |t| Ok(t[0].batch_norm_train(&t[1], &t[2], 1e-5)?.0))
}
test_device!(batch_norm_train, grad_batch_norm_train_cpu, grad_batch_norm_train_cuda);

fn batch_norm_eval(dev: &Device) -> Result<()> {
    let c = 3;
    let rm = Tensor::from_vec(rand_vec(c, 7), [c], dev)?;
    let rv = Tensor::from_vec(rand_vec(c, 8).iter().map(|v| v.abs() + 0.5).collect(), [c], dev)?;
    let inputs = vec![rand_vec(2 * c * 15, 9), rand_vec(c, 10), rand_vec(c, 11)];
    GradCheck::default().run(dev, &inputs, &[vec![2, c, 3, 5], vec![c], vec![c]], |t| t[0].batch_norm_eval(&t[1], &t[2], &rm, &rv, 1e-5))
}
test_device!(batch_norm_eval, grad_batch_norm_eval_cpu, grad_batch_norm_eval_cuda);

/// Batch norm with the fused ReLU. A smaller step (1e-3) and seeded inputs whose outputs are all
/// at least 0.01 away from the kink (asserted; a step moves an output by about
/// gamma * invstd * 1e-3 < 0.005 here), some of them negative so the mask is exercised.
fn batch_norm_relu_train(dev: &Device) -> Result<()> {
    let (shape, c) = (vec![3, 2, 5, 7], 2);
    let x = rand_vec(3 * 2 * 5 * 7, 33);
    let gamma: Vec<f32> = rand_vec(c, 19).iter().map(|v| 1.0 + 0.5 * v).collect();
    let beta: Vec<f32> = rand_vec(c, 20).iter().map(|v| 0.3 * v).collect();
    let y = no_grad(|| {
        let t = |v: &[f32], s: Vec<usize>| Tensor::from_slice(v, s, &Device::Cpu);
        t(&x, shape.clone())?.batch_norm_train(&t(&gamma, vec![c])?, &t(&beta, vec![c])?, 1e-5)?.0.to_vec()
    })?;
    assert!(y.iter().all(|v| v.abs() > 0.01), "an output is too close to the kink");
    assert!(y.iter().any(|&v| v < 0.0) && y.iter().any(|&v| v > 0.0));
    GradCheck { h: 1e-3, ..Default::default() }
        .run(dev, &[x, gamma, beta], &[shape, vec![c], vec![c]], |t| Ok(t[0].batch_norm_relu_train(&t[1], &t[2], 1e-5)?.0))
}
test_device!(batch_norm_relu_train, grad_batch_norm_relu_train_cpu, grad_batch_norm_relu_train_cuda);

/// Eval-mode batch norm with the fused ReLU: as for `batch_norm_relu_train`, step 1e-3 and
/// inputs whose outputs are all at least 0.01 away from the kink (asserted), some negative.
fn batch_norm_relu_eval(dev: &Device) -> Result<()> {
    let (shape, c) = (vec![2, 3, 4, 5], 3);
    let x = rand_vec(120, 80);
    let gamma: Vec<f32> = rand_vec(c, 51).iter().map(|v| 1.0 + 0.5 * v).collect();
    let beta: Vec<f32> = rand_vec(c, 52).iter().map(|v| 0.3 * v).collect();
    let (rm, rv) = (rand_vec(c, 53), rand_vec(c, 54).iter().map(|v| v.abs() + 0.5).collect::<Vec<f32>>());
    let stats = |d: &Device| -> Result<(Tensor, Tensor)> { Ok((Tensor::from_slice(&rm, [c], d)?, Tensor::from_slice(&rv, [c], d)?)) };
    let y = no_grad(|| {
        let t = |v: &[f32], s: Vec<usize>| Tensor::from_slice(v, s, &Device::Cpu);
        let (m, v) = stats(&Device::Cpu)?;
        t(&x, shape.clone())?.batch_norm_eval(&t(&gamma, vec![c])?, &t(&beta, vec![c])?, &m, &v, 1e-5)?.to_vec()
    })?;
    assert!(y.iter().all(|v| v.abs() > 0.01), "an output is too close to the kink");
    assert!(y.iter().any(|&v| v < 0.0) && y.iter().any(|&v| v > 0.0));
    let (m, v) = stats(dev)?;
    GradCheck { h: 1e-3, ..Default::default() }
        .run(dev, &[x, gamma, beta], &[shape, vec![c], vec![c]], |t| t[0].batch_norm_relu_eval(&t[1], &t[2], &m, &v, 1e-5))
}
test_device!(batch_norm_relu_eval, grad_batch_norm_relu_eval_cpu, grad_batch_norm_relu_eval_cuda);

/// The eval-mode VGG layer with a gradient recorded (the composition of the two recorded ops):
/// input, weight, gamma and beta, without the ReLU.
fn conv_batch_norm_eval(dev: &Device) -> Result<()> {
    let (xs, ws, c) = (vec![2, 3, 5, 4], vec![4, 3, 3, 3], 4);
    let rm = Tensor::from_vec(rand_vec(c, 55), [c], dev)?;
    let rv = Tensor::from_vec(rand_vec(c, 56).iter().map(|v| v.abs() + 0.5).collect(), [c], dev)?;
    let inputs = vec![rand_vec(120, 57), rand_vec(108, 58), rand_vec(c, 59).iter().map(|v| v + 1.5).collect(), rand_vec(c, 60)];
    GradCheck::default()
        .run(dev, &inputs, &[xs, ws, vec![c], vec![c]], |t| t[0].conv2d_batch_norm_eval(&t[1], 1, 1, &t[2], &t[3], &rm, &rv, 1e-5, false))
}
test_device!(conv_batch_norm_eval, grad_conv_batch_norm_eval_cpu, grad_conv_batch_norm_eval_cuda);

/// The fused VGG-layer op, convolution then batch norm: input, weight, gamma and beta.
fn conv_batch_norm_train(dev: &Device) -> Result<()> {
    let (xs, ws, c) = (vec![2, 3, 5, 4], vec![4, 3, 3, 3], 4);
    let inputs = vec![rand_vec(120, 40), rand_vec(108, 41), rand_vec(c, 42).iter().map(|v| v + 1.5).collect(), rand_vec(c, 43)];
    GradCheck::default()
        .run(dev, &inputs, &[xs, ws, vec![c], vec![c]], |t| Ok(t[0].conv2d_batch_norm_train(&t[1], 1, 1, &t[2], &t[3], 1e-5, false)?.0))
}
test_device!(conv_batch_norm_train, grad_conv_batch_norm_train_cpu, grad_conv_batch_norm_train_cuda);

/// The fused VGG-layer op with its ReLU. As for `batch_norm_relu_train`: step 1e-3 and inputs
/// whose outputs are all at least 0.01 away from the kink (asserted), some of them negative.
fn conv_batch_norm_relu_train(dev: &Device) -> Result<()> {
    let (xs, ws, c) = (vec![2, 2, 3, 3], vec![3, 2, 1, 1], 3);
    let x = rand_vec(36, 44);
    let w = rand_vec(6, 45);
    let gamma: Vec<f32> = rand_vec(c, 46).iter().map(|v| 1.0 + 0.5 * v).collect();
    let beta: Vec<f32> = rand_vec(c, 47).iter().map(|v| 0.3 * v).collect();
    let y = no_grad(|| {
        let t = |v: &[f32], s: Vec<usize>| Tensor::from_slice(v, s, &Device::Cpu);
        let conv = t(&x, xs.clone())?.conv2d(&t(&w, ws.clone())?, None, 1, 0)?;
        conv.batch_norm_train(&t(&gamma, vec![c])?, &t(&beta, vec![c])?, 1e-5)?.0.to_vec()
    })?;
    assert!(y.iter().all(|v| v.abs() > 0.01), "an output is too close to the kink");
    assert!(y.iter().any(|&v| v < 0.0) && y.iter().any(|&v| v > 0.0));
    GradCheck { h: 1e-3, ..Default::default() }.run(dev, &[x, w, gamma, beta], &[xs, ws, vec![c], vec![c]], |t| {
        Ok(t[0].conv2d_batch_norm_train(&t[1], 1, 0, &t[2], &t[3], 1e-5, true)?.0)
    })
}
test_device!(conv_batch_norm_relu_train, grad_conv_batch_norm_relu_train_cpu, grad_conv_batch_norm_relu_train_cuda);

fn relu(dev: &Device) -> Result<()> {
    GradCheck::default().run(dev, &[separated_vec(105, 0.03, 12)], &[vec![3, 5, 7]], |t| t[0].relu())
}
test_device!(relu, grad_relu_cpu, grad_relu_cuda);

fn max_pool(dev: &Device) -> Result<()> {
    // Odd height and width: floor mode drops the last row and column.
    GradCheck::default().run(dev, &[separated_vec(2 * 3 * 7 * 5, 0.03, 13)], &[vec![2, 3, 7, 5]], |t| t[0].max_pool2x2())
}
test_device!(max_pool, grad_max_pool_cpu, grad_max_pool_cuda);

fn dropout(dev: &Device) -> Result<()> {
    GradCheck::default().run(dev, &[rand_vec(3 * 37, 14)], &[vec![3, 37]], |t| t[0].dropout(0.3, 1234))
}
test_device!(dropout, grad_dropout_cpu, grad_dropout_cuda);

fn upsample(dev: &Device) -> Result<()> {
    GradCheck::default().run(dev, &[rand_vec(2 * 3 * 3 * 5, 15)], &[vec![2, 3, 3, 5]], |t| t[0].upsample_bilinear(11, 17))
}
test_device!(upsample, grad_upsample_cpu, grad_upsample_cuda);

/// Random points in a batch of `n` images of `h x w`, corners included.
pub fn sample_points(n: usize, h: usize, w: usize, count: usize, seed: u64) -> Vec<SamplePoint> {
    use rand::Rng;
    let mut r = common::rng(seed);
    let mut pts: Vec<SamplePoint> = (0..count)
        .map(|_| SamplePoint { image: r.random_range(0..n as u32), y: r.random_range(0..h as u32), x: r.random_range(0..w as u32) })
        .collect();
    pts.push(SamplePoint { image: 0, y: 0, x: 0 });
    pts.push(SamplePoint { image: (n - 1) as u32, y: (h - 1) as u32, x: (w - 1) as u32 });
    pts
}

fn gather(dev: &Device) -> Result<()> {
    // A 13x11 input frame with taps at strides 1, 2 (rounded down) and a 3x3 map.
    let shapes = vec![vec![2, 3, 13, 11], vec![2, 4, 6, 5], vec![2, 2, 3, 3]];
    let inputs: Vec<Vec<f32>> = shapes.iter().enumerate().map(|(i, s)| rand_vec(s.iter().product(), 20 + i as u64)).collect();
    let points = sample_points(2, 13, 11, 25, 21);
    GradCheck { samples: 60, ..Default::default() }
        .run(dev, &inputs, &shapes, |t| gather_hypercolumns(&[&t[0], &t[1], &t[2]], &points, 13, 11))
}
test_device!(gather, grad_gather_cpu, grad_gather_cuda);

fn linear(dev: &Device) -> Result<()> {
    let inputs = vec![rand_vec(7 * 5, 30), rand_vec(3 * 5, 31), rand_vec(3, 32)];
    GradCheck::default().run(dev, &inputs, &[vec![7, 5], vec![3, 5], vec![3]], |t| t[0].linear(&t[1], Some(&t[2])))
}
test_device!(linear, grad_linear_cpu, grad_linear_cuda);

/// The fused linear + ReLU. The seeded inputs put every pre-activation at least 0.03 away from
/// the kink (asserted: a finite step of 1e-2 moves one by at most 1e-2 here, inputs being in
/// [-1, 1)), and some are negative, so the mask is exercised.
fn linear_relu(dev: &Device) -> Result<()> {
    let (m, k, n) = (7, 5, 3);
    let (x, w) = (rand_vec(m * k, 40), rand_vec(n * k, 41));
    let z = |b: &[f32]| -> Vec<f32> {
        (0..m * n).map(|i| (0..k).map(|p| x[i / n * k + p] * w[i % n * k + p]).sum::<f32>() + b[i % n]).collect()
    };
    let b = rand_vec(n, 42).iter().map(|v| v * 0.2).collect::<Vec<f32>>();
    let pre = z(&b);
    assert!(pre.iter().all(|v| v.abs() > 0.03), "pre-activations too close to 0: {pre:?}");
    assert!(pre.iter().any(|&v| v < 0.0) && pre.iter().any(|&v| v > 0.0));
    GradCheck::default().run(dev, &[x.clone(), w.clone(), b], &[vec![m, k], vec![n, k], vec![n]], |t| t[0].linear_relu(&t[1], &t[2]))
}
test_device!(linear_relu, grad_linear_relu_cpu, grad_linear_relu_cuda);

fn matmul(dev: &Device) -> Result<()> {
    let inputs = vec![rand_vec(5 * 7, 33), rand_vec(7 * 3, 34)];
    GradCheck::default().run(dev, &inputs, &[vec![5, 7], vec![7, 3]], |t| t[0].matmul(&t[1]))
}
test_device!(matmul, grad_matmul_cpu, grad_matmul_cuda);

fn softmax_xent(dev: &Device) -> Result<()> {
    let labels: Vec<u32> = (0..9).map(|i| (i * 7 % 3) as u32).collect();
    let logits: Vec<f32> = rand_vec(27, 35).iter().map(|v| v * 3.0).collect();
    GradCheck::default().run(dev, std::slice::from_ref(&logits), &[vec![9, 3]], |t| t[0].softmax_cross_entropy(&labels, None))?;
    let weights = [0.5, 2.0, 1.25];
    GradCheck::default().run(dev, &[logits], &[vec![9, 3]], |t| t[0].softmax_cross_entropy(&labels, Some(&weights)))
}
test_device!(softmax_xent, grad_softmax_cross_entropy_cpu, grad_softmax_cross_entropy_cuda);

fn elementwise(dev: &Device) -> Result<()> {
    let pos: Vec<f32> = rand_vec(21, 36).iter().map(|v| v.abs() + 0.5).collect();
    let inputs = vec![rand_vec(21, 37), pos];
    let shapes = vec![vec![3, 7], vec![3, 7]];
    GradCheck::default().run(dev, &inputs, &shapes, |t| {
        let a = t[0].add(&t[1])?.mul(&t[0])?.sub(&t[1].log()?)?;
        let b = t[0].exp()?.div(&t[1].sqrt()?)?.add(&t[0].sqr()?.neg()?)?;
        a.add(&b)?.affine(1.5, 0.25)
    })
}
test_device!(elementwise, grad_elementwise_cpu, grad_elementwise_cuda);

fn channel_broadcasts(dev: &Device) -> Result<()> {
    let inputs = vec![rand_vec(2 * 3 * 5, 38), rand_vec(3, 39), rand_vec(3, 40)];
    let shapes = vec![vec![2, 3, 5], vec![3], vec![3]];
    GradCheck::default().run(dev, &inputs, &shapes, |t| t[0].mul_channels(&t[1])?.add_channels(&t[2]))?;
    GradCheck::default().run(dev, &inputs[..1], &shapes[..1], |t| t[0].sum_channels())
}
test_device!(channel_broadcasts, grad_channel_broadcast_cpu, grad_channel_broadcast_cuda);

fn concat_narrow(dev: &Device) -> Result<()> {
    let inputs = vec![rand_vec(2 * 3 * 4, 41), rand_vec(2 * 5 * 4, 42)];
    GradCheck::default()
        .run(dev, &inputs, &[vec![2, 3, 4], vec![2, 5, 4]], |t| concat(&[&t[0], &t[1]], 1)?.narrow(1, 2, 4)?.reshape([8, 4]))
}
test_device!(concat_narrow, grad_concat_narrow_reshape_cpu, grad_concat_narrow_reshape_cuda);

fn reductions(dev: &Device) -> Result<()> {
    GradCheck::default().run(dev, &[rand_vec(3 * 11, 43)], &[vec![3, 11]], |t| t[0].sqr()?.mean_all())
}
test_device!(reductions, grad_sum_mean_cpu, grad_sum_mean_cuda);
