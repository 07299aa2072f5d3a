//! Checkpoints: the model's tensors in a safetensors file (readable as they are by PyTorch's
//! `safetensors.torch.load_file` and by numpy), its configuration in the file's metadata and in
//! a JSON sidecar, and for training runs the optimiser state in a second safetensors file.
//!
//! For a checkpoint `run/last.safetensors`:
//! - `run/last.safetensors`: every parameter and batch-norm buffer, f32, under names such as
//!   `backbone.conv1_1.conv.weight`; metadata `format = hyperseg-engine/1`, `config` (JSON) and, for training
//!   runs, `training` (the [`TrainingState`] as JSON);
//! - `run/last.json`: `{ "config": ..., "training": ... }`;
//! - `run/last.optim.safetensors` (training only): Adam's moments `m.NAME` and `v.NAME`, metadata `step`.
//!
//! Crash safety. Each file is written atomically (temporary file, fsync, rename, fsync of the folder), and the set
//! stays consistent whenever the process dies: the optimiser state goes first to `run/last.optim.next.safetensors`,
//! then the JSON sidecar, then the weights (the commit point: their metadata holds the training state, which wins
//! over the sidecar's), and only then is the optimiser file renamed into place. [`load_optimizer`] takes the file
//! whose `step` matches the checkpoint's, so a crash at any point resumes from the old or the new checkpoint, never
//! a mixture; a mismatch that cannot be resolved is an error naming the file.
//!
//! Untrusted files. Loading refuses, before building the model, a configuration larger than the limits below
//! ([`MAX_INPUT_SIZE`], [`MAX_PARAMETERS`], ...) or one whose tensors cannot fit in the file; damaged, truncated or
//! mismatched files are errors naming the file, never panics. Files are read through memmap2.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use safetensors::tensor::{Dtype, TensorView};
use safetensors::SafeTensors;
use serde::{Deserialize, Serialize};

use super::config::ModelConfig;
use super::hypercolumn::HypercolumnNet;
use crate::device::Device;
use crate::error::{Error, Result};
use crate::fsutil::{rename_durable, write_bytes_atomic as write_atomic};
use crate::optim::{Adam, AdamState};

const FORMAT: &str = "hyperseg-engine/1";

/// Largest model input size a checkpoint may ask for.
pub const MAX_INPUT_SIZE: usize = 4096;
/// Most trainable parameters a checkpoint may ask for (the paper's model has about 65 million; with PixelNet's
/// 7x7 fc6, about 165 million).
pub const MAX_PARAMETERS: u128 = 200_000_000;
/// Largest training batch a checkpoint may ask for.
pub const MAX_BATCH_SIZE: usize = 4096;
/// Most pixels sampled per batch a checkpoint may ask for.
pub const MAX_SAMPLE_POINTS: usize = 1 << 24;
/// Most hidden MLP layers a checkpoint may ask for.
pub const MAX_MLP_LAYERS: usize = 16;
/// Convs per VGG16 block (as in the backbone).
const BLOCK_DEPTHS: [usize; 5] = [2, 2, 3, 3, 3];

/// Where a training run stands, saved beside its checkpoints for `--resume`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainingState {
    /// Epochs completed.
    pub epoch: usize,
    /// Optimiser steps taken.
    pub step: u64,
    /// The run's seed.
    pub seed: u64,
    /// Best validation Jaccard so far (NaN-free; 0 before the first validation).
    pub best_jaccard: f64,
}

/// The JSON sidecar of a checkpoint.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub config: ModelConfig,
    pub training: Option<TrainingState>,
}

fn sidecar(path: &Path, suffix: &str) -> PathBuf {
    let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    path.with_file_name(format!("{stem}{suffix}"))
}

fn to_bytes(values: &[f32]) -> Vec<u8> {
    bytemuck::cast_slice(values).to_vec()
}

/// A safetensors file of f32 tensors `(name, shape, little-endian bytes)` with `meta`, its header
/// in a canonical order ([`canonical_header`]): identical inputs give identical bytes. Also
/// writes the engine's parity dumps ([`crate::bench::dump_parity`]).
pub(crate) fn safetensors_bytes<'a>(
    tensors: impl IntoIterator<Item = (&'a str, &'a [usize], &'a [u8])>,
    meta: HashMap<String, String>,
    path: &Path,
) -> Result<Vec<u8>> {
    let views: Vec<(&str, TensorView<'_>)> = tensors
        .into_iter()
        .map(|(name, shape, bytes)| {
            TensorView::new(Dtype::F32, shape.to_vec(), bytes)
                .map(|v| (name, v))
                .map_err(|e| Error::bad_file(path, format!("tensor {name}: {e}")))
        })
        .collect::<Result<_>>()?;
    let bytes = safetensors::serialize(views, Some(meta)).map_err(|e| Error::bad_file(path, e.to_string()))?;
    Ok(canonical_header(bytes))
}

fn serialize(tensors: Vec<(String, Vec<usize>, Vec<u8>)>, meta: HashMap<String, String>, path: &Path) -> Result<Vec<u8>> {
    safetensors_bytes(tensors.iter().map(|(n, s, b)| (n.as_str(), s.as_slice(), b.as_slice())), meta, path)
}

/// The same file with its JSON header's keys in sorted order: `safetensors` writes the metadata
/// map in hash order, which differs from run to run, so two identical runs would save different
/// bytes. The header keeps its length (same tokens, reordered; the padding after it is kept), so
/// the tensors' offsets stay valid.
fn canonical_header(mut bytes: Vec<u8>) -> Vec<u8> {
    let Some(n) = bytes.get(..8).map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")) as usize) else { return bytes };
    let Some(header) = bytes.get(8..8 + n) else { return bytes };
    // serde_json's maps are sorted (no preserve_order feature), so a round trip sorts every key.
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(header) else { return bytes };
    let Ok(sorted) = serde_json::to_vec(&value) else { return bytes };
    if sorted.len() <= n {
        bytes[8..8 + sorted.len()].copy_from_slice(&sorted);
        bytes[8 + sorted.len()..8 + n].fill(b' ');
    }
    bytes
}

/// Saves `model` (and, for training, the optimiser and the run's state) to `path`.
pub fn save_checkpoint(path: &Path, model: &HypercolumnNet, optimizer: Option<&Adam>, training: Option<&TrainingState>) -> Result<()> {
    let config_json = serde_json::to_string(&model.config).map_err(|e| Error::bad_file(path, e.to_string()))?;
    let named = model.named();
    let tensors =
        named.iter().map(|n| Ok((n.name.clone(), n.tensor.dims().to_vec(), to_bytes(&n.tensor.to_vec()?)))).collect::<Result<Vec<_>>>()?;
    let mut meta = HashMap::from([("format".to_string(), FORMAT.to_string()), ("config".to_string(), config_json)]);
    if let Some(t) = training {
        meta.insert("training".into(), serde_json::to_string(t).map_err(|e| Error::bad_file(path, e.to_string()))?);
    }
    let bytes = serialize(tensors, meta, path)?;
    let optim_path = sidecar(path, ".optim.safetensors");
    let next_path = sidecar(path, ".optim.next.safetensors");
    if let Some(adam) = optimizer {
        let state = adam.state()?;
        let trainable: Vec<_> = named.iter().filter(|n| n.trainable).collect();
        let mut tensors = Vec::new();
        for (n, (m, v)) in trainable.iter().zip(state.m.iter().zip(&state.v)) {
            tensors.push((format!("m.{}", n.name), n.tensor.dims().to_vec(), to_bytes(m)));
            tensors.push((format!("v.{}", n.name), n.tensor.dims().to_vec(), to_bytes(v)));
        }
        let meta = HashMap::from([("format".to_string(), FORMAT.to_string()), ("step".to_string(), state.step.to_string())]);
        write_atomic(&next_path, &serialize(tensors, meta, &optim_path)?)?;
    }
    let json = serde_json::to_vec_pretty(&Checkpoint { config: model.config.clone(), training: training.cloned() })
        .map_err(|e| Error::bad_file(path, e.to_string()))?;
    write_atomic(&sidecar(path, ".json"), &json)?;
    // The weights are the commit point: a checkpoint whose weights exist is complete.
    write_atomic(path, &bytes)?;
    if optimizer.is_some() {
        rename_durable(&next_path, &optim_path)?;
    }
    Ok(())
}

/// Trainable parameters and stored scalars (parameters and batch-norm buffers) of a model with `c`, computed
/// without building it (saturating, so hostile values cannot overflow).
fn model_size(c: &ModelConfig) -> (u128, u128) {
    let mul = |a: usize, b: usize| (a as u128).saturating_mul(b as u128);
    let (mut params, mut buffers) = (0u128, 0u128);
    let mut conv_bn = |c_in: usize, c_out: usize, k: usize| {
        params = params.saturating_add(mul(c_in, c_out).saturating_mul(mul(k, k))).saturating_add(mul(2, c_out));
        buffers = buffers.saturating_add(mul(2, c_out));
    };
    let mut c_in = 3;
    for (&width, &depth) in c.block_widths.iter().zip(&BLOCK_DEPTHS) {
        for _ in 0..depth {
            conv_bn(c_in, width, 3);
            c_in = width;
        }
    }
    conv_bn(c_in, c.fc_width, c.fc6_kernel);
    conv_bn(c.fc_width, c.fc_width, 1);
    let mut width = c.block_widths.iter().fold(c.fc_width as u128, |a, &w| a.saturating_add(w as u128));
    for &h in c.mlp_hidden.iter().chain(std::iter::once(&c.classes)) {
        params = params.saturating_add(width.saturating_mul(h as u128)).saturating_add(h as u128);
        width = h as u128;
    }
    (params, params.saturating_add(buffers))
}

/// Refuses, naming `path`, a configuration beyond the limits or whose tensors cannot fit in the `file_len` bytes
/// of the file: checked before the model is built, so a hostile file cannot make the loader allocate.
fn check_plausible(path: &Path, c: &ModelConfig, file_len: usize) -> Result<()> {
    let refuse = |what: String| Err(Error::bad_file(path, format!("refusing a model configuration with {what}")));
    if c.input_size > MAX_INPUT_SIZE {
        return refuse(format!("input size {} (the limit is {MAX_INPUT_SIZE})", c.input_size));
    }
    if c.batch_size > MAX_BATCH_SIZE {
        return refuse(format!("batch size {} (the limit is {MAX_BATCH_SIZE})", c.batch_size));
    }
    if c.sample_points > MAX_SAMPLE_POINTS {
        return refuse(format!("{} sampled pixels per batch (the limit is {MAX_SAMPLE_POINTS})", c.sample_points));
    }
    if c.mlp_hidden.len() > MAX_MLP_LAYERS {
        return refuse(format!("{} hidden MLP layers (the limit is {MAX_MLP_LAYERS})", c.mlp_hidden.len()));
    }
    if !(c.learning_rate.is_finite() && c.learning_rate > 0.0) {
        return refuse(format!("learning rate {}", c.learning_rate));
    }
    let (params, scalars) = model_size(c);
    if params > MAX_PARAMETERS {
        return refuse(format!("{params} parameters (the limit is {MAX_PARAMETERS})"));
    }
    let needed = scalars.saturating_mul(4);
    if needed > file_len as u128 {
        return Err(Error::bad_file(
            path,
            format!("its configuration needs {needed} bytes of tensors but the file has only {file_len} bytes (truncated or damaged)"),
        ));
    }
    Ok(())
}

/// The training state saved in the weights' metadata (newer checkpoints) or else in the JSON sidecar.
fn saved_training(path: &Path, meta: &HashMap<String, String>) -> Result<Option<TrainingState>> {
    if let Some(t) = meta.get("training") {
        return serde_json::from_str(t)
            .map(Some)
            .map_err(|e| Error::bad_file(path, format!("the training state in its metadata is invalid: {e}")));
    }
    let json_path = sidecar(path, ".json");
    match std::fs::read(&json_path) {
        Ok(bytes) => {
            serde_json::from_slice::<Checkpoint>(&bytes).map(|c| c.training).map_err(|e| Error::bad_file(&json_path, e.to_string()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(&json_path, e)),
    }
}

/// A memory-mapped safetensors file.
struct Mapped {
    path: PathBuf,
    map: memmap2::Mmap,
}

impl Mapped {
    fn open(path: &Path) -> Result<Mapped> {
        let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        // SAFETY: the file is only read; a concurrent writer replaces it by rename, never in place.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        Ok(Mapped { path: path.to_path_buf(), map })
    }

    fn parse(&self) -> Result<(SafeTensors<'_>, HashMap<String, String>)> {
        let bad = |e: safetensors::SafeTensorError| Error::bad_file(&self.path, format!("not a valid safetensors file: {e}"));
        let (_, meta) = SafeTensors::read_metadata(&self.map).map_err(bad)?;
        let st = SafeTensors::deserialize(&self.map).map_err(bad)?;
        Ok((st, meta.metadata().clone().unwrap_or_default()))
    }

    /// The f32 values of tensor `name`, checked against `shape`.
    fn read(&self, st: &SafeTensors<'_>, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let t = st.tensor(name).map_err(|_| Error::bad_file(&self.path, format!("tensor {name} is missing")))?;
        if t.dtype() != Dtype::F32 {
            return Err(Error::bad_file(&self.path, format!("tensor {name} is {:?}, expected F32", t.dtype())));
        }
        if t.shape() != shape {
            return Err(Error::bad_file(&self.path, format!("tensor {name} has shape {:?}, the model expects {shape:?}", t.shape())));
        }
        Ok(t.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect())
    }
}

/// Loads a checkpoint onto `device`: the model, and the JSON sidecar's contents when present.
pub fn load_checkpoint(path: &Path, device: &Device) -> Result<(HypercolumnNet, Checkpoint)> {
    let mapped = Mapped::open(path)?;
    let (st, meta) = mapped.parse()?;
    if meta.get("format").map(String::as_str) != Some(FORMAT) {
        return Err(Error::bad_file(path, format!("not a hyperseg-engine checkpoint (metadata format is not {FORMAT})")));
    }
    let config: ModelConfig = meta
        .get("config")
        .and_then(|c| serde_json::from_str(c).ok())
        .ok_or_else(|| Error::bad_file(path, "the model configuration in its metadata is missing or invalid"))?;
    config.validate().map_err(|e| Error::bad_file(path, e.to_string()))?;
    check_plausible(path, &config, mapped.map.len())?;
    let mut rng = <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(0);
    let model = HypercolumnNet::new(config.clone(), &mut rng, device)?;
    let named = model.named();
    for n in &named {
        n.tensor.copy_from_host(&mapped.read(&st, &n.name, n.tensor.dims())?)?;
    }
    if st.len() != named.len() {
        let known: std::collections::HashSet<&str> = named.iter().map(|n| n.name.as_str()).collect();
        let extra: Vec<&str> = st.names().into_iter().filter(|n| !known.contains(n)).collect();
        return Err(Error::bad_file(path, format!("holds tensors the model does not have: {}", extra.join(", "))));
    }
    let training = saved_training(path, &meta)?;
    Ok((model, Checkpoint { config, training }))
}

/// Restores the optimiser state saved beside checkpoint `path`: `last.optim.safetensors`, or the
/// `last.optim.next.safetensors` left by a crash just after the weights were saved when its step is the one the
/// checkpoint's training state records (see the module docs). Errors name the optimiser file.
pub fn load_optimizer(path: &Path, model: &HypercolumnNet, adam: &mut Adam) -> Result<()> {
    let optim_path = sidecar(path, ".optim.safetensors");
    let weights = Mapped::open(path)?;
    let (_, meta) = weights.parse()?;
    let expected = saved_training(path, &meta)?.map(|t| t.step);
    let state = match read_optimizer(&optim_path, model) {
        Ok(state) if expected.is_none_or(|s| s == state.step) => state,
        first => {
            let next_path = sidecar(path, ".optim.next.safetensors");
            match read_optimizer(&next_path, model) {
                Ok(state) if expected == Some(state.step) => state,
                _ => {
                    let state = first?;
                    return Err(Error::bad_file(
                        &optim_path,
                        format!(
                            "the optimizer state is from step {} but the checkpoint {} is at step {}; it belongs to another checkpoint",
                            state.step,
                            path.display(),
                            expected.unwrap_or_default()
                        ),
                    ));
                }
            }
        }
    };
    adam.load_state(&state).map_err(|e| Error::bad_file(&optim_path, e.to_string()))
}

/// Reads an optimiser file for `model`.
fn read_optimizer(optim_path: &Path, model: &HypercolumnNet) -> Result<AdamState> {
    let mapped = Mapped::open(optim_path)?;
    let (st, meta) = mapped.parse()?;
    let step = meta
        .get("step")
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| Error::bad_file(optim_path, "the optimizer step in its metadata is missing"))?;
    let mut state = AdamState { step, m: Vec::new(), v: Vec::new() };
    for n in model.named().iter().filter(|n| n.trainable) {
        state.m.push(mapped.read(&st, &format!("m.{}", n.name), n.tensor.dims())?);
        state.v.push(mapped.read(&st, &format!("v.{}", n.name), n.tensor.dims())?);
    }
    Ok(state)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::Module;

    #[test]
    fn model_size_matches_the_built_model() {
        let mut rng = <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(0);
        for config in [ModelConfig::tiny(), ModelConfig { fc6_kernel: 7, mlp_hidden: vec![16, 8, 4], classes: 3, ..ModelConfig::tiny() }] {
            let model = HypercolumnNet::new(config.clone(), &mut rng, &Device::Cpu).unwrap();
            let stored: usize = model.named().iter().map(|n| n.tensor.elem_count()).sum();
            assert_eq!(model_size(&config), (model.parameter_count() as u128, stored as u128), "{config:?}");
            assert_eq!(model.parameters().len(), model.named().iter().filter(|n| n.trainable).count());
        }
        // The published models fit the limits; absurd ones saturate instead of overflowing.
        assert!(model_size(&ModelConfig::paper()).0 < MAX_PARAMETERS);
        assert!(model_size(&ModelConfig { fc6_kernel: 7, ..ModelConfig::paper() }).0 < MAX_PARAMETERS);
        let absurd = ModelConfig { block_widths: [usize::MAX; 5], fc_width: usize::MAX, ..ModelConfig::paper() };
        assert_eq!(model_size(&absurd).0, u128::MAX);
    }

    /// The same tensors and metadata give the same bytes, whatever order the metadata map
    /// iterates in (each HashMap has its own random order), and the file still loads.
    #[test]
    fn identical_checkpoints_are_identical_bytes() {
        let path = Path::new("x.safetensors");
        let tensors = || vec![("b".to_string(), vec![2], to_bytes(&[1.0, 2.0])), ("a".to_string(), vec![1, 3], to_bytes(&[3.0, 4.0, 5.0]))];
        let meta = || (0..6).map(|i| (format!("key{i}"), format!("value {i}"))).collect::<HashMap<_, _>>();
        let first = serialize(tensors(), meta(), path).unwrap();
        for _ in 0..8 {
            assert_eq!(serialize(tensors(), meta(), path).unwrap(), first);
        }
        let st = SafeTensors::deserialize(&first).unwrap();
        assert_eq!(st.tensor("a").unwrap().data(), to_bytes(&[3.0, 4.0, 5.0]).as_slice());
        let (_, header) = SafeTensors::read_metadata(&first).unwrap();
        assert_eq!(header.metadata().as_ref().unwrap().get("key3").map(String::as_str), Some("value 3"));
    }
}
