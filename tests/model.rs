//! The hypercolumn model: the factored and naive dense paths agree with each other and with the
//! sparse path at sampled points; checkpoints reload to bitwise-identical predictions and open
//! with the safetensors crate's own reader; damaged checkpoints are refused by name.

mod common;

use common::rand_vec;
use hyperseg_engine::model::{lesion_probability, load_checkpoint, save_checkpoint, DensePath, HypercolumnNet, ModelConfig};
use hyperseg_engine::{Device, Result, SamplePoint, Tensor};
use rand::SeedableRng;

fn small_config() -> ModelConfig {
    ModelConfig {
        preset: "custom".into(),
        input_size: 32,
        block_widths: [4, 6, 8, 8, 8],
        fc_width: 12,
        mlp_hidden: vec![16, 8],
        ..ModelConfig::tiny()
    }
}

/// A model whose batch-norm running statistics are not the defaults (one training forward).
fn trained_model(dev: &Device) -> Result<(HypercolumnNet, Tensor)> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
    let model = HypercolumnNet::new(small_config(), &mut rng, dev)?;
    let images = Tensor::from_vec(rand_vec(2 * 3 * 32 * 32, 4), [2, 3, 32, 32], dev)?;
    let pts = [SamplePoint { image: 0, y: 1, x: 2 }, SamplePoint { image: 1, y: 30, x: 5 }];
    model.forward_sparse(&images, &pts, true, 0)?;
    Ok((model, images))
}

fn dense_paths_agree(dev: &Device) -> Result<()> {
    let (model, images) = trained_model(dev)?;
    let naive = model.predict_dense(&images, DensePath::Naive, 300)?;
    let factored = model.predict_dense(&images, DensePath::Factored, 1024)?;
    let mut max_diff = 0.0f32;
    for (a, b) in naive.iter().flatten().zip(factored.iter().flatten()) {
        max_diff = max_diff.max((a - b).abs());
    }
    eprintln!("naive vs factored dense inference on {dev}: max abs difference {max_diff:e}");
    assert!(max_diff < 1e-5, "naive and factored differ by {max_diff}");
    // Both equal the sparse path (eval mode) at sampled points.
    let pts: Vec<SamplePoint> = (0..50).map(|i| SamplePoint { image: i % 2, y: (i * 7) % 32, x: (i * 13) % 32 }).collect();
    let sparse = lesion_probability(&model.forward_sparse(&images, &pts, false, 0)?.to_vec()?, 2);
    for (p, s) in pts.iter().zip(&sparse) {
        let d = naive[p.image as usize][(p.y * 32 + p.x) as usize];
        assert!((d - s).abs() < 1e-5, "dense {d} vs sparse {s} at {p:?}");
    }
    Ok(())
}
test_device!(dense_paths_agree, dense_factored_equals_naive_and_sparse_cpu, dense_factored_equals_naive_and_sparse_cuda);

fn checkpoint_roundtrip(dev: &Device) -> Result<()> {
    let (model, images) = trained_model(dev)?;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.safetensors");
    save_checkpoint(&path, &model, None, None)?;
    let (loaded, ckpt) = load_checkpoint(&path, dev)?;
    assert_eq!(ckpt.config, model.config);
    let a = model.predict_dense(&images, DensePath::Factored, 4096)?;
    let b = loaded.predict_dense(&images, DensePath::Factored, 4096)?;
    assert!(a.iter().flatten().zip(b.iter().flatten()).all(|(x, y)| x.to_bits() == y.to_bits()), "predictions differ after reload");
    // The file is plain safetensors.
    let bytes = std::fs::read(&path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let w = st.tensor("backbone.conv1_1.conv.weight").unwrap();
    assert_eq!(w.shape(), &[4, 3, 3, 3]);
    assert!(st.names().contains(&"backbone.fc7.bn.running_var"));
    Ok(())
}
test_device!(checkpoint_roundtrip, checkpoint_reload_is_bitwise_identical_cpu, checkpoint_reload_is_bitwise_identical_cuda);

#[test]
fn damaged_checkpoints_are_refused_by_name() {
    let (model, _) = trained_model(&Device::Cpu).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.safetensors");
    save_checkpoint(&good, &model, None, None).unwrap();
    let bytes = std::fs::read(&good).unwrap();
    let err = |name: &str, data: &[u8]| {
        let p = dir.path().join(name);
        std::fs::write(&p, data).unwrap();
        let e = load_checkpoint(&p, &Device::Cpu).err().expect("must be refused").to_string();
        assert!(e.contains(name), "{e}");
        e
    };
    err("truncated.safetensors", &bytes[..bytes.len() / 2]);
    err("garbage.safetensors", b"not a checkpoint at all");
    // Same header, one tensor of the wrong shape; then one tensor missing.
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let meta = meta.metadata().clone();
    let rebuild = |skip: Option<&str>, reshape: Option<&str>| {
        let tensors: Vec<(String, Vec<usize>, Vec<u8>)> = st
            .tensors()
            .into_iter()
            .filter(|(n, _)| Some(n.as_str()) != skip)
            .map(|(n, t)| {
                let shape = if Some(n.as_str()) == reshape { vec![t.shape().iter().product()] } else { t.shape().to_vec() };
                (n, shape, t.data().to_vec())
            })
            .collect();
        let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors
            .iter()
            .map(|(n, s, d)| (n.clone(), safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), d).unwrap()))
            .collect();
        safetensors::serialize(views, meta.clone()).unwrap()
    };
    let e = err("wrongshape.safetensors", &rebuild(None, Some("mlp.fc1.weight")));
    assert!(e.contains("mlp.fc1.weight") && e.contains("shape"), "{e}");
    let e = err("missingtensor.safetensors", &rebuild(Some("backbone.conv2_1.bn.running_mean"), None));
    assert!(e.contains("backbone.conv2_1.bn.running_mean") && e.contains("missing"), "{e}");
    let missing = dir.path().join("missing.safetensors");
    let e = load_checkpoint(&missing, &Device::Cpu).err().unwrap().to_string();
    assert!(e.contains("missing.safetensors"), "{e}");
}

/// The fused ops equal their compositions bit for bit on the CPU, forward and backward:
/// batch norm + ReLU, and linear + ReLU.
#[test]
fn fused_ops_equal_their_compositions() -> hyperseg_engine::Result<()> {
    use hyperseg_engine::{Device, Tensor};
    let dev = Device::Cpu;
    let vals = |n: usize, seed: u64| -> Vec<f32> { (0..n).map(|i| ((i as u64 * 2654435761 + seed) % 1000) as f32 / 500.0 - 1.0).collect() };
    let run = |fused: bool| -> hyperseg_engine::Result<Vec<Vec<f32>>> {
        let x = Tensor::from_vec(vals(2 * 3 * 5 * 4, 1), [2, 3, 5, 4], &dev)?.to_variable()?;
        let gamma = Tensor::from_vec(vals(3, 2).iter().map(|v| v + 1.5).collect(), [3], &dev)?.to_variable()?;
        let beta = Tensor::from_vec(vals(3, 3), [3], &dev)?.to_variable()?;
        let h = if fused { x.batch_norm_relu_train(&gamma, &beta, 1e-5)?.0 } else { x.batch_norm_train(&gamma, &beta, 1e-5)?.0.relu()? };
        let w = Tensor::from_vec(vals(7 * 20, 4), [7, 20], &dev)?.to_variable()?;
        let b = Tensor::from_vec(vals(7, 5), [7], &dev)?.to_variable()?;
        let flat = h.reshape([6, 20])?;
        let y = if fused { flat.linear_relu(&w, &b)? } else { flat.linear(&w, Some(&b))?.relu()? };
        let proj = Tensor::from_vec(vals(6 * 7, 6), [6, 7], &dev)?;
        y.mul(&proj)?.sum_all()?.backward()?;
        let mut out = vec![y.to_vec()?];
        for t in [&x, &gamma, &beta, &w, &b] {
            out.push(t.grad().expect("a gradient").to_vec()?);
        }
        Ok(out)
    };
    let (fused, plain) = (run(true)?, run(false)?);
    for (i, (f, p)) in fused.iter().zip(&plain).enumerate() {
        assert!(f.iter().zip(p).all(|(a, b)| a.to_bits() == b.to_bits()), "tensor {i} differs: {f:?} vs {p:?}");
    }
    assert!(fused[0].contains(&0.0) && fused[0].iter().any(|&v| v > 0.0), "the ReLU should clamp some outputs");
    Ok(())
}
