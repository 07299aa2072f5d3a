//! [`HypercolumnNet`]: the backbone, the hypercolumn gather and the MLP, with the sparse
//! training forward and the two exact dense inference paths.
//!
//! - Sparse (training): the taps are looked up only at the sampled pixels.
//! - Dense, naive: every pixel's full hypercolumn, gathered tile by tile, through the MLP.
//! - Dense, factored (default): the first MLP layer is linear and so is bilinear upsampling, so
//!   `W1 . concat(up(t_i)) = sum_i up(W1_i . t_i)`: each block of W1 is applied to its tap at
//!   the tap's own resolution (one GEMM per tap and image, stored pixel-major), and only the
//!   4096-wide results are sampled, summed, biased and clamped, tile by tile, in one fused pass
//!   ([`upsample_sum_bias_relu`]). Same result, 3.4x fewer FLOPs on the paper's model.

use rand::Rng;

use super::config::ModelConfig;
use super::dense_bf16;
use super::mlp::Mlp;
use super::vgg::Vgg16Bn;
use crate::autograd::no_grad;
use crate::backend::{GemmSpec, SamplePoint};
use crate::device::Device;
use crate::error::{Error, Result};
use crate::nn::{join, Module, Named};
use crate::ops::{gather_hypercolumns, upsample_sum_bias_relu};
use crate::settings;
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
        // The factored path needs the ReLU after the first layer, so a hidden layer.
        let path = if self.mlp.layers.len() < 2 { DensePath::Naive } else { path };
        no_grad(|| {
            let taps = self.backbone.forward(images, false)?;
            if path == DensePath::Factored && settings::bf16_activations() {
                return self.predict_dense_bf16(&taps, n, s, tile_pixels);
            }
            let blocks = match path {
                DensePath::Naive => Vec::new(),
                DensePath::Factored => self.first_layer_blocks(&taps)?,
            };
            let mut out = Vec::with_capacity(n);
            for img in 0..n {
                let planes = match path {
                    DensePath::Naive => Vec::new(),
                    DensePath::Factored => first_layer_planes(&taps, &blocks, img)?,
                };
                // The tiles' logits stay on the device until the image is done: one copy to the
                // host (and one wait for the device) per image, not per tile.
                let mut tiles = Vec::with_capacity((s * s).div_ceil(tile_pixels));
                for start in (0..s * s).step_by(tile_pixels) {
                    let end = (start + tile_pixels).min(s * s);
                    let logits = match path {
                        DensePath::Naive => {
                            let points = tile_points(img as u32, s, start, end);
                            let refs: Vec<&Tensor> = taps.iter().collect();
                            self.mlp.forward(&gather_hypercolumns(&refs, &points, s, s)?, None)?
                        }
                        DensePath::Factored => {
                            // The planes hold this image only: image index 0.
                            let points = tile_points(0, s, start, end);
                            let refs: Vec<&Tensor> = planes.iter().collect();
                            let h1 = upsample_sum_bias_relu(&refs, &self.mlp.layers[0].bias, &points, s, s)?;
                            self.mlp.forward_after_first(&h1, None)?
                        }
                    };
                    tiles.push(logits);
                }
                out.push(self.probabilities(&tiles)?);
            }
            Ok(out)
        })
    }

    /// The factored dense path in bf16 mode ([`dense_bf16`]), from the backbone's taps.
    fn predict_dense_bf16(&self, taps: &[Tensor], n: usize, s: usize, tile_pixels: usize) -> Result<Vec<Vec<f32>>> {
        let channels: Vec<usize> = taps.iter().map(|t| t.dims()[1]).collect();
        let weights = dense_bf16::Bf16Weights::new(&self.mlp, &channels)?;
        let mut out = Vec::with_capacity(n);
        for img in 0..n {
            let planes = dense_bf16::first_layer_planes(taps, &weights, img)?;
            let mut tiles = Vec::with_capacity((s * s).div_ceil(tile_pixels));
            for start in (0..s * s).step_by(tile_pixels) {
                let points = tile_points(0, s, start, (start + tile_pixels).min(s * s));
                tiles.push(dense_bf16::tile_logits(&self.mlp, &weights, &planes, &points, s)?);
            }
            out.push(self.probabilities(&tiles)?);
        }
        Ok(out)
    }

    /// One image's lesion probabilities from its tiles' logits (one copy to the host).
    fn probabilities(&self, tiles: &[Tensor]) -> Result<Vec<f32>> {
        let logits = crate::ops::concat(&tiles.iter().collect::<Vec<_>>(), 0)?;
        Ok(lesion_probability(&logits.to_vec()?, self.config.classes))
    }

    /// The first MLP layer's block of columns `W1_i [hidden, c_i]` for each tap, contiguous.
    fn first_layer_blocks(&self, taps: &[Tensor]) -> Result<Vec<Tensor>> {
        let w1 = &self.mlp.layers[0].weight;
        let mut offset = 0;
        taps.iter()
            .map(|t| {
                let c = t.dims()[1];
                offset += c;
                w1.narrow(1, offset - c, c)
            })
            .collect()
    }
}

/// `W1_i . t_i` for every tap `t_i` of image `img`, pixel-major `[1, h_i, w_i, hidden]`: the
/// first MLP layer's block of columns for that tap applied at the tap's own resolution, as one
/// GEMM `t_i^T [h_i w_i, c_i] . W1_i^T [c_i, hidden]` (no bias).
fn first_layer_planes(taps: &[Tensor], blocks: &[Tensor], img: usize) -> Result<Vec<Tensor>> {
    taps.iter()
        .zip(blocks)
        .map(|(t, block)| {
            let [_, c, h, w] = t.shape().dims4("tap")?;
            let hidden = block.dims()[0];
            let tap = t.narrow(0, img, 1)?;
            let g = GemmSpec { m: h * w, n: hidden, k: c, trans_a: true, trans_b: true };
            let plane = tap.storage().gemm(&block.storage(), g)?;
            Tensor::from_storage(plane, [1, h, w, hidden])
        })
        .collect()
}

/// The pixels `start..end` (row-major) of image `image` of an `s x s` frame.
fn tile_points(image: u32, s: usize, start: usize, end: usize) -> Vec<SamplePoint> {
    (start..end).map(|p| SamplePoint { image, y: (p / s) as u32, x: (p % s) as u32 }).collect()
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
