//! The sparse hypercolumn gather equals indexing the densely upsampled, concatenated maps,
//! forward and backward (tolerance 1e-5 relative: the same arithmetic in another order).

mod common;

use common::{assert_close, rand_vec};
use hyperseg_engine::ops::upsample_sum_bias_relu;
use hyperseg_engine::{concat, gather_hypercolumns, no_grad, Device, Result, SamplePoint, Tensor};
use rand::Rng;

fn sparse_equals_dense(dev: &Device) -> Result<()> {
    let (n, h, w) = (2, 16, 12);
    // Strides 1, 2, 4 and a map that does not divide the frame (5x3).
    let shapes = [[n, 3, 16, 12], [n, 4, 8, 6], [n, 2, 4, 3], [n, 3, 5, 3]];
    let taps: Vec<Tensor> = shapes
        .iter()
        .enumerate()
        .map(|(i, s)| Tensor::from_vec(rand_vec(s.iter().product(), 50 + i as u64), s.to_vec(), dev)?.to_variable())
        .collect::<Result<_>>()?;
    let mut r = common::rng(51);
    let points: Vec<SamplePoint> = (0..40)
        .map(|_| SamplePoint { image: r.random_range(0..n as u32), y: r.random_range(0..h as u32), x: r.random_range(0..w as u32) })
        .collect();
    let ctot: usize = shapes.iter().map(|s| s[1]).sum();

    // Sparse path, with a random upstream gradient.
    let refs: Vec<&Tensor> = taps.iter().collect();
    let sparse = gather_hypercolumns(&refs, &points, h, w)?;
    let upstream = rand_vec(points.len() * ctot, 52);
    sparse.mul(&Tensor::from_slice(&upstream, [points.len(), ctot], dev)?)?.sum_all()?.backward()?;
    let sparse_grads: Vec<Vec<f32>> = taps.iter().map(|t| t.grad().unwrap().to_vec()).collect::<Result<_>>()?;
    taps.iter().for_each(Tensor::zero_grad);

    // Dense path: upsample every tap, concatenate, index at the points.
    let ups: Vec<Tensor> = taps.iter().map(|t| t.upsample_bilinear(h, w)).collect::<Result<_>>()?;
    let dense = concat(&ups.iter().collect::<Vec<_>>(), 1)?;
    let dense_host = dense.to_vec()?;
    let mut indexed = vec![0.0; points.len() * ctot];
    let mut dense_grad = vec![0.0; dense.elem_count()];
    for (p, pt) in points.iter().enumerate() {
        for c in 0..ctot {
            let at = ((pt.image as usize * ctot + c) * h + pt.y as usize) * w + pt.x as usize;
            indexed[p * ctot + c] = dense_host[at];
            dense_grad[at] += upstream[p * ctot + c];
        }
    }
    assert_close(&sparse.to_vec()?, &indexed, 1e-5, 1e-6, "gather vs indexed upsampling");
    dense.mul(&Tensor::from_slice(&dense_grad, dense.shape().clone(), dev)?)?.sum_all()?.backward()?;
    for (i, t) in taps.iter().enumerate() {
        assert_close(&sparse_grads[i], &t.grad().unwrap().to_vec()?, 1e-5, 1e-5, &format!("tap {i} gradient"));
    }
    Ok(())
}
test_device!(sparse_equals_dense, gather_equals_dense_upsample_cpu, gather_equals_dense_upsample_cuda);

/// The factored first layer: summing `W1_i . tap_i` planes (pixel-major, computed here on the
/// host) sampled at the points, plus the bias, through ReLU, equals `relu(gather . W1^T + b)`
/// (tolerance 1e-5 relative: the same sums in another order). One tap is at full resolution,
/// where three of the four bilinear weights are 0.
fn plane_sum_equals_first_layer(dev: &Device) -> Result<()> {
    let (n, h, w, hidden) = (2, 16, 12, 37);
    let shapes = [[n, 3, 16, 12], [n, 4, 8, 6], [n, 2, 4, 3], [n, 3, 5, 3]];
    let taps: Vec<Vec<f32>> = shapes.iter().enumerate().map(|(i, s)| rand_vec(s.iter().product(), 60 + i as u64)).collect();
    let ctot: usize = shapes.iter().map(|s| s[1]).sum();
    let w1 = rand_vec(hidden * ctot, 64);
    let b1: Vec<f32> = rand_vec(hidden, 65).iter().map(|v| v * 0.3).collect();
    let mut r = common::rng(66);
    let mut points: Vec<SamplePoint> = (0..50)
        .map(|_| SamplePoint { image: r.random_range(0..n as u32), y: r.random_range(0..h as u32), x: r.random_range(0..w as u32) })
        .collect();
    points.push(SamplePoint { image: 1, y: (h - 1) as u32, x: (w - 1) as u32 });

    let mut planes = Vec::new();
    let mut off = 0;
    for (tap, s) in taps.iter().zip(&shapes) {
        let [_, c, th, tw] = *s;
        let mut plane = vec![0.0f32; n * th * tw * hidden];
        for img in 0..n {
            for px in 0..th * tw {
                for j in 0..hidden {
                    plane[(img * th * tw + px) * hidden + j] =
                        (0..c).map(|ch| w1[j * ctot + off + ch] * tap[(img * c + ch) * th * tw + px]).sum();
                }
            }
        }
        off += c;
        planes.push(Tensor::from_vec(plane, [n, th, tw, hidden], dev)?);
    }
    let bias = Tensor::from_slice(&b1, [hidden], dev)?;
    let got = no_grad(|| upsample_sum_bias_relu(&planes.iter().collect::<Vec<_>>(), &bias, &points, h, w))?;

    let tap_tensors: Vec<Tensor> = taps.iter().zip(&shapes).map(|(t, s)| Tensor::from_slice(t, s.to_vec(), dev)).collect::<Result<_>>()?;
    let hc = gather_hypercolumns(&tap_tensors.iter().collect::<Vec<_>>(), &points, h, w)?;
    let want = hc.linear(&Tensor::from_slice(&w1, [hidden, ctot], dev)?, Some(&bias))?.relu()?;
    assert_eq!(got.dims(), want.dims());
    let want = want.to_vec()?;
    assert!(want.iter().filter(|&&v| v == 0.0).count() > want.len() / 10, "the ReLU should clamp some values");
    assert_close(&got.to_vec()?, &want, 1e-5, 1e-5, "plane sum vs gathered first layer");
    Ok(())
}
test_device!(plane_sum_equals_first_layer, plane_sum_equals_first_layer_cpu, plane_sum_equals_first_layer_cuda);
