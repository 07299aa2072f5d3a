//! [`HypercolumnNet`]: the backbone, the hypercolumn gather and the MLP, with the sparse
//! training forward and the two exact dense inference paths.
//!
//! - Sparse (training): the taps are looked up only at the sampled pixels.
//! - Dense, naive: every pixel's full hypercolumn, gathered tile by tile, through the MLP.
//! - Dense, factored (default): the first MLP layer is linear and so is bilinear upsampling, so
//!   `W1 . concat(up(t_i)) = sum_i up(W1_i . t_i)`: each block of W1 is applied to its tap at
//!   the tap's own resolution (a 1x1 convolution), and only the 4096-wide results are
//!   upsampled and summed, tile by tile. Same result, 3.4x fewer FLOPs on the paper's model.

use rand::Rng;

use super::config::ModelConfig;
use super::mlp::Mlp;
use super::vgg::Vgg16Bn;
use crate::autograd::no_grad;
use crate::backend::SamplePoint;
use crate::device::Device;
use crate::error::{Error, Result};
use crate::nn::{join, Module, Named};
use crate::ops::gather_hypercolumns;
use crate::tensor::Tensor;

/// How dense inference evaluates the first MLP layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DensePath {
    /// Full hypercolumns for every pixel, then the MLP.
    Naive,
    /// First layer applied per tap at its own resolution, then upsampled and summed.
    Factored,
}

/// The deep-hypercolumn segmentation model.
pub struct HypercolumnNet {
    pub config: ModelConfig,
    pub backbone: Vgg16Bn,
    pub mlp: Mlp,
    device: Device,
}

impl HypercolumnNet {
    /// A freshly initialised model on `device`.
    pub fn new(config: ModelConfig, rng: &mut impl Rng, device: &Device) -> Result<HypercolumnNet> {
        config.validate()?;
        let backbone = Vgg16Bn::new(&config, rng, device)?;
        let mlp = Mlp::new(config.hypercolumn_width(), &config.mlp_hidden, config.classes, config.mlp_dropout, rng, device)?;
        Ok(HypercolumnNet { config, backbone, mlp, device: device.clone() })
    }

    /// The device holding the weights.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Every named tensor (parameters and batch-norm buffers), in a fixed order.
    pub fn named(&self) -> Vec<Named> {
        let mut out = Vec::new();
        self.named_tensors("", &mut out);
        out
    }

    /// Number of trainable scalars.
    pub fn parameter_count(&self) -> usize {
        self.parameters().iter().map(Tensor::elem_count).sum()
    }

    fn check_images(&self, images: &Tensor) -> Result<[usize; 4]> {
        let d = images.shape().dims4("images")?;
        let s = self.config.input_size;
        if d[1] != 3 || d[2] != s || d[3] != s {
            return Err(Error::bad_shape("images", format!("expected [n, 3, {s}, {s}], got {:?}", images.dims())));
        }
        Ok(d)
    }

    /// Logits `[points, classes]` at the sampled pixels of `images [n, 3, s, s]`.
    /// `train` selects batch statistics (and updates the running ones) and dropout with
    /// `dropout_seed`.
    pub fn forward_sparse(&self, images: &Tensor, points: &[SamplePoint], train: bool, dropout_seed: u32) -> Result<Tensor> {
        let s = self.check_images(images)?[2];
        let taps = self.backbone.forward(images, train)?;
        let refs: Vec<&Tensor> = taps.iter().collect();
        let hc = gather_hypercolumns(&refs, points, s, s)?;
        self.mlp.forward(&hc, train.then_some(dropout_seed))
    }

    /// The per-pixel probability of class 1 (lesion) for every pixel of `images [n, 3, s, s]`,
    /// row-major per image, in eval mode, `tile_pixels` pixels at a time.
    pub fn predict_dense(&self, images: &Tensor, path: DensePath, tile_pixels: usize) -> Result<Vec<Vec<f32>>> {
        let [n, _, s, _] = self.check_images(images)?;
        if tile_pixels == 0 {
            return Err(Error::InvalidValue { name: "tile size", msg: "must be positive".into() });
        }
        no_grad(|| {
            let taps = self.backbone.forward(images, false)?;
            let first = match path {
                DensePath::Naive => None,
                DensePath::Factored => Some(self.first_layer_per_tap(&taps)?),
            };
            let mut out = Vec::with_capacity(n);
            for img in 0..n {
                let mut probs = Vec::with_capacity(s * s);
                for start in (0..s * s).step_by(tile_pixels) {
                    let end = (start + tile_pixels).min(s * s);
                    let points: Vec<SamplePoint> = (start..end)
                        .map(|p| SamplePoint { image: img as u32, y: (p / s) as u32, x: (p % s) as u32 })
                        .collect();
                    let logits = match &first {
                        None => {
                            let refs: Vec<&Tensor> = taps.iter().collect();
                            self.mlp.forward(&gather_hypercolumns(&refs, &points, s, s)?, None)?
                        }
                        Some(per_tap) => {
                            let mut z1: Option<Tensor> = None;
                            for t in per_tap {
                                let g = gather_hypercolumns(&[t], &points, s, s)?;
                                z1 = Some(match z1 {
                                    None => g,
                                    Some(acc) => acc.add(&g)?,
                                });
                            }
                            let z1 = z1.expect("six taps").add_channels(&self.mlp.layers[0].bias)?;
                            self.mlp.forward_from_first(&z1, None)?
                        }
                    };
                    probs.extend(lesion_probability(&logits.to_vec()?, self.config.classes));
                }
                out.push(probs);
            }
            Ok(out)
        })
    }

    /// `W1_i . t_i` for every tap: the first MLP layer's block of columns for that tap, as a
    /// 1x1 convolution at the tap's resolution (no bias).
    fn first_layer_per_tap(&self, taps: &[Tensor]) -> Result<Vec<Tensor>> {
        let w1 = &self.mlp.layers[0].weight;
        let hidden = w1.dims()[0];
        let mut offset = 0;
        taps.iter()
            .map(|t| {
                let c = t.dims()[1];
                let block = w1.narrow(1, offset, c)?.reshape([hidden, c, 1, 1])?;
                offset += c;
                t.conv2d(&block, None, 1, 0)
            })
            .collect()
    }
}

/// Softmax probability of class 1 for each row of `[rows, classes]` logits.
pub fn lesion_probability(logits: &[f32], classes: usize) -> Vec<f32> {
    logits
        .chunks(classes)
        .map(|row| {
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let sum: f32 = row.iter().map(|v| (v - max).exp()).sum();
            (row[1] - max).exp() / sum
        })
        .collect()
}

impl Module for HypercolumnNet {
    fn named_tensors(&self, prefix: &str, out: &mut Vec<Named>) {
        self.backbone.named_tensors(&join(prefix, "backbone"), out);
        self.mlp.named_tensors(&join(prefix, "mlp"), out);
    }
}
