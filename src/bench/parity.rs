//! [`dump_parity`]: the engine's half of the PyTorch parity check, as safetensors files that
//! `bench/pytorch_reference.py --parity DIR` replays.

use std::collections::HashMap;
use std::path::Path;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::synthetic_batch;
use crate::device::Device;
use crate::error::{Error, Result};
use crate::fsutil::write_bytes_atomic;
use crate::model::{sample_points, save_checkpoint, DensePath, HypercolumnNet, ModelConfig};
use crate::nn::Module;
use crate::optim::{Adam, AdamConfig};
use crate::settings;
use crate::tensor::Tensor;
use crate::SamplePoint;

/// The format tag in the metadata of the parity files.
pub const PARITY_FORMAT: &str = "hyperseg-engine-parity/1";

/// The seed of the parity dump's weights and inputs.
pub const PARITY_SEED: u64 = 20170;

/// One f32 tensor to serialise.
struct Blob {
    name: String,
    shape: Vec<usize>,
    bytes: Vec<u8>,
}

impl Blob {
    fn new(name: impl Into<String>, shape: Vec<usize>, values: &[f32]) -> Blob {
        Blob { name: name.into(), shape, bytes: bytemuck::cast_slice(values).to_vec() }
    }
}

fn write_safetensors(path: &Path, blobs: &[Blob], meta: HashMap<String, String>) -> Result<()> {
    let tensors = blobs.iter().map(|b| (b.name.as_str(), b.shape.as_slice(), b.bytes.as_slice()));
    write_bytes_atomic(path, &crate::model::safetensors_bytes(tensors, meta, path)?)
}

/// Writes into `dir` what `bench/pytorch_reference.py --parity DIR` needs to replay `steps`
/// training steps of `config` (dropout forced off) on `device`, in train mode (batch
/// statistics), the same batch at every step:
/// - `weights.safetensors` (+ `weights.json`): the initial weights, by [`save_checkpoint`];
/// - `inputs.safetensors`: `images [n, 3, s, s]`, `points [P, 3]` (image, y, x as f32),
///   `labels [P]` (f32);
/// - `outputs.safetensors`: `logits [P, classes]` of step 0, `loss [steps]` (the loss of step
///   t, before its Adam update), `grad.NAME` for every parameter at step 0, and
///   `state1.NAME` for every batch-norm running statistic after step 0's forward, and
///   `dense_naive`, `dense_factored` `[s, s]`: the lesion probability of image 0 by dense
///   inference (eval mode) with the step-0 weights and those running statistics, and
///   `dense_factored_bf16` the factored path in bf16 mode (bf16 convolutions in the backbone,
///   bf16 activations after it, as `--bf16` runs it);
/// - in `outputs.safetensors` too, step 0 again in bf16 mixed precision (bf16 convolutions and
///   GEMMs, [`settings::bf16_conv`], [`settings::bf16_gemm`]) on a second copy of the initial
///   model: `bf16.logits`, `bf16.loss` `[1]` and `bf16.grad.NAME`.
///
/// The fp32 steps run with the bf16 modes off whatever the caller set (TF32 as set; the
/// metadata says which), and the caller's settings are restored on return.
///
/// Metadata of each file: `format`, `config` (JSON), `seed`, `steps`, `tf32`, `device`.
pub fn dump_parity(dir: &Path, config: &ModelConfig, device: &Device, steps: usize) -> Result<()> {
    let _restore = settings::save();
    set_bf16_modes(false);
    dump(dir, config, device, steps)
}

fn set_bf16_modes(on: bool) {
    settings::set_bf16_conv(on);
    settings::set_bf16_gemm(on);
    settings::set_bf16_activations(on);
}

/// A parameter's gradient as a blob named `name`, zeros when it has none.
fn grad_blob(name: String, t: &Tensor) -> Result<Blob> {
    let g = match t.grad() {
        Some(g) => g.to_vec()?,
        None => vec![0.0; t.elem_count()],
    };
    Ok(Blob::new(name, t.dims().to_vec(), &g))
}

/// Step 0 of [`dump_parity`] in bf16 mixed precision, on a fresh copy of the initial model:
/// logits, loss and every trainable parameter's gradient, named with the prefix `bf16.`.
fn bf16_step(config: &ModelConfig, device: &Device, x: &Tensor, points: &[SamplePoint], labels: &[u32]) -> Result<Vec<Blob>> {
    let model = HypercolumnNet::new(config.clone(), &mut ChaCha8Rng::seed_from_u64(PARITY_SEED), device)?;
    let _restore = settings::save();
    settings::set_bf16_conv(true);
    settings::set_bf16_gemm(true);
    let logits = model.forward_sparse(x, points, true, 0)?;
    let loss = logits.softmax_cross_entropy(labels, None)?;
    loss.backward()?;
    let mut blobs =
        vec![Blob::new("bf16.logits", logits.dims().to_vec(), &logits.to_vec()?), Blob::new("bf16.loss", vec![1], &[loss.to_scalar()?])];
    for nt in model.named().iter().filter(|nt| nt.trainable) {
        blobs.push(grad_blob(format!("bf16.grad.{}", nt.name), &nt.tensor)?);
    }
    Ok(blobs)
}

fn dump(dir: &Path, config: &ModelConfig, device: &Device, steps: usize) -> Result<()> {
    if steps == 0 {
        return Err(Error::InvalidValue { name: "parity steps", msg: "at least one step is needed".into() });
    }
    let mut config = config.clone();
    config.mlp_dropout = 0.0;
    config.validate()?;
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let mut rng = ChaCha8Rng::seed_from_u64(PARITY_SEED);
    let model = HypercolumnNet::new(config.clone(), &mut rng, device)?;
    let (n, s) = (config.batch_size, config.input_size);
    let (images, masks) = synthetic_batch(n, s, &mut rng);
    let (points, labels) = sample_points(n, s, config.sample_points, &masks, &mut rng);

    let config_json = serde_json::to_string(&config).map_err(|e| Error::bad_file(dir, e.to_string()))?;
    let meta = HashMap::from([
        ("format".to_string(), PARITY_FORMAT.to_string()),
        ("config".to_string(), config_json),
        ("seed".to_string(), PARITY_SEED.to_string()),
        ("steps".to_string(), steps.to_string()),
        ("tf32".to_string(), settings::allow_tf32().to_string()),
        ("deterministic".to_string(), settings::deterministic().to_string()),
        ("device".to_string(), device.to_string()),
        ("adam".to_string(), format!("lr={} beta1=0.9 beta2=0.999 eps=1e-8", config.learning_rate)),
    ]);

    save_checkpoint(&dir.join("weights.safetensors"), &model, None, None)?;
    let point_values: Vec<f32> = points.iter().flat_map(|p| [p.image as f32, p.y as f32, p.x as f32]).collect();
    let label_values: Vec<f32> = labels.iter().map(|&l| l as f32).collect();
    write_safetensors(
        &dir.join("inputs.safetensors"),
        &[
            Blob::new("images", vec![n, 3, s, s], &images),
            Blob::new("points", vec![points.len(), 3], &point_values),
            Blob::new("labels", vec![labels.len()], &label_values),
        ],
        meta.clone(),
    )?;

    let first_image = Tensor::from_slice(&images[..3 * s * s], [1, 3, s, s], device)?;
    let x = Tensor::from_vec(images, [n, 3, s, s], device)?;
    let mut blobs = bf16_step(&config, device, &x, &points, &labels)?;
    let mut adam = Adam::new(model.parameters(), AdamConfig { lr: config.learning_rate, ..Default::default() })?;
    let named = model.named();
    let mut losses = Vec::with_capacity(steps);
    for t in 0..steps {
        let logits = model.forward_sparse(&x, &points, true, t as u32)?;
        let loss = logits.softmax_cross_entropy(&labels, None)?;
        let value = loss.to_scalar()?;
        losses.push(value);
        adam.zero_grad();
        loss.backward()?;
        if t == 0 {
            blobs.push(Blob::new("logits", logits.dims().to_vec(), &logits.to_vec()?));
            // Dense inference of image 0 with these weights and the running statistics after
            // one update (eval mode), by both paths.
            let tile = crate::infer::InferOptions::default().tile_pixels;
            for (key, path) in [("dense_naive", DensePath::Naive), ("dense_factored", DensePath::Factored)] {
                let prob = model.predict_dense(&first_image, path, tile)?.remove(0);
                blobs.push(Blob::new(key, vec![s, s], &prob));
            }
            // And the factored path as `--bf16` runs it: bf16 convolutions in the backbone, bf16
            // activations from the taps on.
            set_bf16_modes(true);
            let prob = model.predict_dense(&first_image, DensePath::Factored, tile);
            set_bf16_modes(false);
            blobs.push(Blob::new("dense_factored_bf16", vec![s, s], &prob?.remove(0)));
            for nt in &named {
                if nt.trainable {
                    blobs.push(grad_blob(format!("grad.{}", nt.name), &nt.tensor)?);
                } else {
                    blobs.push(Blob::new(format!("state1.{}", nt.name), nt.tensor.dims().to_vec(), &nt.tensor.to_vec()?));
                }
            }
        }
        adam.step()?;
    }
    adam.zero_grad();
    blobs.push(Blob::new("loss", vec![steps], &losses));
    write_safetensors(&dir.join("outputs.safetensors"), &blobs, meta)
}
