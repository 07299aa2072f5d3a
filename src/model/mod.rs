//! The deep-hypercolumn segmentation model: configuration and presets, the VGG16-BN backbone,
//! the MLP, sparse training and dense inference, pixel sampling, and checkpoints.

mod checkpoint;
mod config;
mod dense_bf16;
mod hypercolumn;
mod mlp;
mod sampling;
mod vgg;

pub(crate) use checkpoint::safetensors_bytes;
pub use checkpoint::{load_checkpoint, load_optimizer, save_checkpoint, Checkpoint, TrainingState};
pub use config::ModelConfig;
pub use hypercolumn::{lesion_probability, DensePath, HypercolumnNet};
pub use mlp::Mlp;
pub use sampling::sample_points;
pub use vgg::{ConvBnRelu, Vgg16Bn};
