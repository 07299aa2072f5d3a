//! A tiny conv-BN-ReLU network with hypercolumn gather and an MLP overfits 4 random images
//! with random masks to a loss below 0.05 with Adam, on every device.

mod common;

use common::rand_vec;
use hyperseg_engine::nn::{BatchNorm2d, Conv2d, ConvConfig, Linear, Module};
use hyperseg_engine::optim::{Adam, AdamConfig};
use hyperseg_engine::{gather_hypercolumns, Device, Result, SamplePoint, Tensor};
use rand::Rng;

fn overfit(dev: &Device) -> Result<()> {
    let (n, s) = (4, 12);
    let mut r = common::rng(7);
    let c1 = Conv2d::new(ConvConfig::same(3, 16, 3), &mut r, dev)?;
    let b1 = BatchNorm2d::new(16, dev)?;
    let c2 = Conv2d::new(ConvConfig::same(16, 32, 3), &mut r, dev)?;
    let b2 = BatchNorm2d::new(32, dev)?;
    let l1 = Linear::new(48, 64, &mut r, dev)?;
    let l2 = Linear::new(64, 2, &mut r, dev)?;
    let mut params = Vec::new();
    for m in [&c1 as &dyn Module, &b1, &c2, &b2, &l1, &l2] {
        params.extend(m.parameters());
    }
    let mut adam = Adam::new(params, AdamConfig { lr: 1e-2, ..Default::default() })?;

    let images = Tensor::from_vec(rand_vec(n * 3 * s * s, 8), [n, 3, s, s], dev)?;
    // Random discs as masks.
    let mut points = Vec::new();
    let mut labels = Vec::new();
    for i in 0..n {
        let (cy, cx, rad) = (r.random_range(3.0..9.0f32), r.random_range(3.0..9.0f32), r.random_range(2.0..4.5f32));
        for y in 0..s {
            for x in 0..s {
                points.push(SamplePoint { image: i as u32, y: y as u32, x: x as u32 });
                labels.push(((y as f32 - cy).powi(2) + (x as f32 - cx).powi(2) < rad * rad) as u32);
            }
        }
    }
    let mut loss_value = f32::INFINITY;
    for step in 0..400 {
        let t1 = b1.forward(&c1.forward(&images)?, true)?.relu()?;
        let t2 = b2.forward(&c2.forward(&t1.max_pool2x2()?)?, true)?.relu()?;
        let hc = gather_hypercolumns(&[&t1, &t2], &points, s, s)?;
        let logits = l2.forward(&l1.forward(&hc)?.relu()?)?;
        let loss = logits.softmax_cross_entropy(&labels, None)?;
        loss_value = loss.to_scalar()?;
        if step == 0 {
            eprintln!("initial loss {loss_value} on {dev}");
        }
        if loss_value < 0.05 {
            eprintln!("loss {loss_value} after {step} steps on {dev}");
            break;
        }
        adam.zero_grad();
        loss.backward()?;
        adam.step()?;
    }
    assert!(loss_value < 0.05, "loss {loss_value} after 400 steps on {dev}");
    Ok(())
}
test_device!(overfit, tiny_network_overfits_cpu, tiny_network_overfits_cuda);
