//! Misuse of the engine is a typed error, never a panic.

use hyperseg_engine::{no_grad, Device, Error, Tensor};

#[test]
fn shape_mismatch_is_an_error() {
    let a = Tensor::zeros([2, 3], &Device::Cpu).unwrap();
    let b = Tensor::zeros([3, 2], &Device::Cpu).unwrap();
    assert!(matches!(a.add(&b), Err(Error::ShapeMismatch { op: "add", .. })));
    assert!(matches!(a.matmul(&a), Err(Error::ShapeMismatch { op: "matmul", .. })));
    let x = Tensor::zeros([1, 3, 4, 4], &Device::Cpu).unwrap();
    let w = Tensor::zeros([2, 5, 3, 3], &Device::Cpu).unwrap();
    assert!(matches!(x.conv2d(&w, None, 1, 1), Err(Error::ShapeMismatch { op: "conv2d", .. })));
    assert!(matches!(a.conv2d(&w, None, 1, 1), Err(Error::BadShape { .. })));
    assert!(matches!(Tensor::from_vec(vec![1.0; 5], [2, 3], &Device::Cpu), Err(Error::BadShape { .. })));
}

#[test]
fn bad_labels_and_points_are_errors() {
    let logits = Tensor::zeros([2, 2], &Device::Cpu).unwrap();
    assert!(matches!(logits.softmax_cross_entropy(&[0, 2], None), Err(Error::InvalidValue { .. })));
    assert!(matches!(logits.softmax_cross_entropy(&[0], None), Err(Error::BadShape { .. })));
    let tap = Tensor::zeros([1, 2, 4, 4], &Device::Cpu).unwrap();
    let outside = [hyperseg_engine::SamplePoint { image: 0, y: 8, x: 0 }];
    assert!(hyperseg_engine::gather_hypercolumns(&[&tap], &outside, 8, 8).is_err());
    assert!(matches!(tap.dropout(1.0, 0), Err(Error::InvalidValue { .. })));
}

#[test]
fn backward_without_graph_is_an_error() {
    let x = Tensor::full(2.0, [3], &Device::Cpu).unwrap();
    assert!(matches!(x.sum_all().unwrap().backward(), Err(Error::NoGraph)));
    let v = x.to_variable().unwrap();
    let y = no_grad(|| v.sqr().unwrap().sum_all().unwrap());
    assert!(matches!(y.backward(), Err(Error::NoGraph)));
    assert!(matches!(v.sqr().unwrap().backward(), Err(Error::NonScalarLoss(_))));
}

#[test]
fn wrong_device_is_an_error() {
    // Without a GPU, asking for one is the error; with one, mixing devices is.
    match Device::cuda(0) {
        Err(e) => assert!(matches!(e, Error::CudaUnavailable(_)), "{e}"),
        Ok(gpu) => {
            let a = Tensor::zeros([4], &Device::Cpu).unwrap();
            let b = Tensor::zeros([4], &gpu).unwrap();
            assert!(matches!(a.add(&b), Err(Error::DeviceMismatch { .. })));
            assert!(matches!(b.mul(&a), Err(Error::DeviceMismatch { .. })));
        }
    }
}

#[test]
fn gradients_accumulate_until_zeroed() {
    let v = Tensor::from_vec(vec![1.0, -2.0, 3.0], [3], &Device::Cpu).unwrap().to_variable().unwrap();
    for _ in 0..2 {
        v.sqr().unwrap().sum_all().unwrap().backward().unwrap();
    }
    assert_eq!(v.grad().unwrap().to_vec().unwrap(), vec![4.0, -8.0, 12.0]);
    v.zero_grad();
    assert!(v.grad().is_none());
    // A tensor used twice gets both contributions.
    v.mul(&v).unwrap().add(&v).unwrap().sum_all().unwrap().backward().unwrap();
    assert_eq!(v.grad().unwrap().to_vec().unwrap(), vec![3.0, -3.0, 7.0]);
}

#[test]
fn no_grad_records_nothing() {
    let v = Tensor::zeros([3], &Device::Cpu).unwrap().to_variable().unwrap();
    let y = no_grad(|| v.relu().unwrap());
    assert!(!y.requires_grad());
    assert!(v.relu().unwrap().requires_grad());
}

#[test]
fn the_fused_plane_sum_refuses_to_be_differentiated() {
    use hyperseg_engine::ops::upsample_sum_bias_relu;
    use hyperseg_engine::SamplePoint;
    let plane = Tensor::from_vec(vec![0.5; 2 * 2 * 3], [1, 2, 2, 3], &Device::Cpu).unwrap().to_variable().unwrap();
    let bias = Tensor::from_vec(vec![0.1, -0.2, 0.3], [3], &Device::Cpu).unwrap();
    let points = [SamplePoint { image: 0, y: 1, x: 2 }];
    assert!(matches!(
        upsample_sum_bias_relu(&[&plane], &bias, &points, 4, 4),
        Err(Error::InvalidValue { name: "upsample_sum_bias_relu", .. })
    ));
    let y = no_grad(|| upsample_sum_bias_relu(&[&plane], &bias, &points, 4, 4)).unwrap();
    assert_eq!(y.dims(), [1, 3]);
    let outside = [SamplePoint { image: 0, y: 4, x: 0 }];
    assert!(matches!(no_grad(|| upsample_sum_bias_relu(&[&plane], &bias, &outside, 4, 4)), Err(Error::BadShape { .. })));
}

#[test]
fn non_finite_flags_nan_and_infinity_across_tensors() {
    use hyperseg_engine::ops::non_finite;
    let t = |v: Vec<f32>| Tensor::from_vec(v.clone(), [v.len()], &Device::Cpu).unwrap();
    let big: Vec<f32> = (0..100_000).map(|i| (i as f32 - 5e4) * 1e33).collect();
    let (a, b) = (t(big.clone()), t(vec![1.0, -2.0]));
    assert_eq!(non_finite(&[&a, &b]).unwrap().to_scalar().unwrap().to_bits(), 0.0f32.to_bits());
    let mut with_inf = big.clone();
    with_inf[77_777] = f32::NEG_INFINITY;
    assert_eq!(non_finite(&[&b, &t(with_inf.clone())]).unwrap().to_scalar().unwrap(), f32::INFINITY);
    with_inf[3] = f32::NAN;
    assert!(non_finite(&[&t(with_inf), &b]).unwrap().to_scalar().unwrap().is_nan());
    assert!(matches!(non_finite(&[]), Err(Error::BadShape { .. })));
}

/// A convolution's backward without its input: the weight gradient, with nothing kept that
/// replaces the input (always so on the CPU), is an error naming the missing input; the input
/// gradient alone needs no input.
#[test]
fn a_weight_gradient_without_the_input_is_an_error() {
    use hyperseg_engine::backend::{ConvKeep, ConvSpec};
    use hyperseg_engine::storage::Storage;
    let dev = Device::Cpu;
    let s = ConvSpec { n: 1, c_in: 2, h: 4, w: 4, c_out: 3, kh: 3, kw: 3, stride: 1, pad: 1 };
    let x = Storage::from_vec(&dev, (0..32).map(|i| i as f32 * 0.1).collect()).unwrap();
    let w = Storage::from_vec(&dev, (0..54).map(|i| i as f32 * 0.01 - 0.2).collect()).unwrap();
    let (y, kept) = x.conv2d_keeping(&w, &s, ConvKeep { input: true, weight: true }).unwrap();
    assert!(!kept.holds_input(), "the CPU keeps no copy of the input");
    let err = y.conv2d_backward(None, &w, &s, &kept, [false, true]).err().expect("dw without x");
    assert!(matches!(err, Error::InvalidValue { name: "conv2d_backward", .. }), "{err}");
    assert!(err.to_string().contains("input"), "{err}");
    let [dx, dw] = y.conv2d_backward(None, &w, &s, &kept, [true, false]).unwrap();
    assert!(dx.is_some() && dw.is_none());
}
