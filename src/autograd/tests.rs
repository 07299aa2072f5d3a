//! What the tape keeps alive (an intermediate no backward closure reads is freed with its last
//! handle; one a closure reads lives as long as the graph) and the gradients of its walk
//! (sums over uses, variables accumulating across calls, the shape check), on the CPU.

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::device::Device;
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// Random values in `[0.5, 1.5)` with a random sign: never zero.
fn nonzero(len: usize, rng: &mut ChaCha8Rng) -> Result<Tensor> {
    use rand::Rng;
    let data = (0..len).map(|_| rng.random_range(0.5f32..1.5) * if rng.random_bool(0.5) { 1.0 } else { -1.0 }).collect();
    Tensor::from_vec(data, [2, 3], &Device::Cpu)
}

fn assert_close(got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len());
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!((g - w).abs() <= 1e-5 * w.abs().max(1.0), "element {i}: got {g}, want {w}");
    }
}

/// `f` of each pair of elements, on the host.
fn zip(a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32) -> Vec<f32> {
    a.iter().zip(b).map(|(&x, &y)| f(x, y)).collect()
}

#[test]
fn an_intermediate_no_closure_reads_is_freed_before_backward() -> Result<()> {
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let (v, w) = (nonzero(6, &mut rng)?.to_variable()?, nonzero(6, &mut rng)?.to_variable()?);
    // loss = sum(v * w + w^2): the product feeds only `add`, whose backward reads no operand.
    let product = v.mul(&w)?;
    let freed = product.storage_weak();
    let loss = product.add(&w.sqr()?)?.sum_all()?;
    drop(product);
    assert!(freed.upgrade().is_none(), "the graph kept the storage of an input of `add`");
    loss.backward()?;
    let (vh, wh) = (v.to_vec()?, w.to_vec()?);
    assert_close(&v.grad().ok_or(Error::NoGraph)?.to_vec()?, &wh);
    assert_close(&w.grad().ok_or(Error::NoGraph)?.to_vec()?, &zip(&vh, &wh, |v, w| v + 2.0 * w));
    Ok(())
}

#[test]
fn an_intermediate_a_closure_reads_lives_until_the_graph_is_dropped() -> Result<()> {
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    let (v, w) = (nonzero(6, &mut rng)?.to_variable()?, nonzero(6, &mut rng)?.to_variable()?);
    // loss = sum((v + w)^2): `sqr`'s backward reads the sum.
    let sum = v.add(&w)?;
    let kept = sum.storage_weak();
    let square = sum.sqr()?;
    let loss = square.sum_all()?;
    drop((sum, square));
    assert!(kept.upgrade().is_some(), "freed while a backward closure reads it");
    loss.backward()?;
    assert!(kept.upgrade().is_some(), "freed by backward, which may be called again");
    loss.backward()?;
    let twice = zip(&v.to_vec()?, &w.to_vec()?, |v, w| 4.0 * (v + w));
    assert_close(&v.grad().ok_or(Error::NoGraph)?.to_vec()?, &twice);
    assert_close(&w.grad().ok_or(Error::NoGraph)?.to_vec()?, &twice);
    drop(loss);
    assert!(kept.upgrade().is_none(), "still alive after the graph was dropped");
    Ok(())
}

#[test]
fn a_graph_with_shared_uses_sums_and_accumulates_its_gradients() -> Result<()> {
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let (v, w) = (nonzero(6, &mut rng)?.to_variable()?, nonzero(6, &mut rng)?.to_variable()?);
    let x = nonzero(6, &mut rng)?;
    // t = v * x is used three times (twice by one op); w twice; a reshape on the way.
    // loss = sum((t^2 + t) * w + w^2): dv = (2t + 1) w x, dw = t^2 + t + 2w.
    let t = v.mul(&x)?.reshape([3, 2])?.reshape([2, 3])?;
    let u = t.mul(&t)?.add(&t)?;
    let loss = u.mul(&w)?.add(&w.mul(&w)?)?.sum_all()?;
    drop((t, u));
    for _ in 0..2 {
        loss.backward()?;
    }
    let (vh, wh, xh) = (v.to_vec()?, w.to_vec()?, x.to_vec()?);
    let th = zip(&vh, &xh, |v, x| v * x);
    let dv: Vec<f32> = th.iter().zip(&wh).zip(&xh).map(|((t, w), x)| 2.0 * (2.0 * t + 1.0) * w * x).collect();
    let dw: Vec<f32> = th.iter().zip(&wh).map(|(t, w)| 2.0 * (t * t + t + 2.0 * w)).collect();
    assert_close(&v.grad().ok_or(Error::NoGraph)?.to_vec()?, &dv);
    assert_close(&w.grad().ok_or(Error::NoGraph)?.to_vec()?, &dw);
    Ok(())
}

#[test]
fn a_gradient_of_the_wrong_shape_is_an_error() -> Result<()> {
    let v = Tensor::full(2.0, [2, 3], &Device::Cpu)?.to_variable()?;
    let out = Tensor::from_op(v.storage().try_clone()?, [2, 3].into(), "bad_grad", &[&v], |g, _| {
        Ok(vec![Some(Tensor::full(1.0, [3, 2], g.device())?)])
    })?;
    let err = out.sum_all()?.backward().err();
    assert!(matches!(err, Some(Error::ShapeMismatch { op: "bad_grad", .. })), "{err:?}");
    assert!(v.grad().is_none());
    Ok(())
}
