//! Checkpoints: the model's tensors in a safetensors file (readable as they are by PyTorch's
//! `safetensors.torch.load_file` and by numpy), its configuration in the file's metadata and in
//! a JSON sidecar, and for training runs the optimiser state in a second safetensors file.
//!
//! For a checkpoint `run/last.safetensors`:
//! - `run/last.safetensors`: every parameter and batch-norm buffer, f32, under names such as
//!   `backbone.conv1_1.conv.weight`; metadata `format = hyperseg-engine/1` and `config` (JSON);
//! - `run/last.json`: `{ "config": ..., "training": ... }`;
//! - `run/last.optim.safetensors` (training only): Adam's moments `m.NAME` and `v.NAME`.
//!
//! All three are written atomically; files are read through memmap2.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use safetensors::tensor::{Dtype, TensorView};
use safetensors::SafeTensors;
use serde::{Deserialize, Serialize};

use super::config::ModelConfig;
use super::hypercolumn::HypercolumnNet;
use crate::device::Device;
use crate::error::{Error, Result};
use crate::fsutil::write_bytes_atomic as write_atomic;
use crate::optim::{Adam, AdamState};

const FORMAT: &str = "hyperseg-engine/1";

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

fn serialize(tensors: Vec<(String, Vec<usize>, Vec<u8>)>, meta: HashMap<String, String>, path: &Path) -> Result<Vec<u8>> {
    let views: Vec<(String, TensorView<'_>)> = tensors
        .iter()
        .map(|(name, shape, bytes)| {
            TensorView::new(Dtype::F32, shape.clone(), bytes)
                .map(|v| (name.clone(), v))
                .map_err(|e| Error::bad_file(path, format!("tensor {name}: {e}")))
        })
        .collect::<Result<_>>()?;
    safetensors::serialize(views, Some(meta)).map_err(|e| Error::bad_file(path, e.to_string()))
}

/// Saves `model` (and, for training, the optimiser and the run's state) to `path`.
pub fn save_checkpoint(path: &Path, model: &HypercolumnNet, optimizer: Option<&Adam>, training: Option<&TrainingState>) -> Result<()> {
    let config_json = serde_json::to_string(&model.config).map_err(|e| Error::bad_file(path, e.to_string()))?;
    let named = model.named();
    let tensors = named
        .iter()
        .map(|n| Ok((n.name.clone(), n.tensor.dims().to_vec(), to_bytes(&n.tensor.to_vec()?))))
        .collect::<Result<Vec<_>>>()?;
    let meta = HashMap::from([("format".to_string(), FORMAT.to_string()), ("config".to_string(), config_json)]);
    let bytes = serialize(tensors, meta, path)?;
    if let Some(adam) = optimizer {
        let state = adam.state()?;
        let trainable: Vec<_> = named.iter().filter(|n| n.trainable).collect();
        let mut tensors = Vec::new();
        for (n, (m, v)) in trainable.iter().zip(state.m.iter().zip(&state.v)) {
            tensors.push((format!("m.{}", n.name), n.tensor.dims().to_vec(), to_bytes(m)));
            tensors.push((format!("v.{}", n.name), n.tensor.dims().to_vec(), to_bytes(v)));
        }
        let meta = HashMap::from([("format".to_string(), FORMAT.to_string()), ("step".to_string(), state.step.to_string())]);
        let optim_path = sidecar(path, ".optim.safetensors");
        write_atomic(&optim_path, &serialize(tensors, meta, &optim_path)?)?;
    }
    let json = serde_json::to_vec_pretty(&Checkpoint { config: model.config.clone(), training: training.cloned() })
        .map_err(|e| Error::bad_file(path, e.to_string()))?;
    write_atomic(&sidecar(path, ".json"), &json)?;
    // The weights last: a checkpoint whose weights exist is complete.
    write_atomic(path, &bytes)
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
    let json_path = sidecar(path, ".json");
    let checkpoint = match std::fs::read(&json_path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| Error::bad_file(&json_path, e.to_string()))?,
        Err(_) => Checkpoint { config, training: None },
    };
    Ok((model, checkpoint))
}

/// Restores the optimiser state saved beside checkpoint `path`.
pub fn load_optimizer(path: &Path, model: &HypercolumnNet, adam: &mut Adam) -> Result<()> {
    let optim_path = sidecar(path, ".optim.safetensors");
    let mapped = Mapped::open(&optim_path)?;
    let (st, meta) = mapped.parse()?;
    let step = meta
        .get("step")
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| Error::bad_file(&optim_path, "the optimizer step in its metadata is missing"))?;
    let mut state = AdamState { step, m: Vec::new(), v: Vec::new() };
    for n in model.named().iter().filter(|n| n.trainable) {
        state.m.push(mapped.read(&st, &format!("m.{}", n.name), n.tensor.dims())?);
        state.v.push(mapped.read(&st, &format!("v.{}", n.name), n.tensor.dims())?);
    }
    adam.load_state(&state)
}
