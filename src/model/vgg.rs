//! The VGG16-BN backbone with fc6/fc7 as convolutions, returning the six hypercolumn taps.
//!
//! Each conv is 3x3 pad 1 (no bias: batch norm follows), then batch norm, then ReLU. Blocks of
//! 2, 2, 3, 3, 3 convs, each followed by 2x2 max pooling. fc6 (1x1, or 7x7 pad 3) and fc7 (1x1)
//! act on pool5, each with batch norm and ReLU. The taps are the post-ReLU outputs of conv1_2,
//! conv2_2, conv3_3, conv4_3, conv5_3 and fc7, at strides 1, 2, 4, 8, 16 and 32.

use rand::Rng;

use super::config::ModelConfig;
use crate::device::Device;
use crate::error::Result;
use crate::nn::{join, BatchNorm2d, Conv2d, ConvConfig, Module, Named};
use crate::tensor::Tensor;

/// Convs per VGG16 block.
const BLOCK_DEPTHS: [usize; 5] = [2, 2, 3, 3, 3];

/// A convolution followed by batch norm and ReLU.
pub struct ConvBnRelu {
    pub conv: Conv2d,
    pub bn: BatchNorm2d,
}

impl ConvBnRelu {
    fn new(c_in: usize, c_out: usize, k: usize, rng: &mut impl Rng, device: &Device) -> Result<ConvBnRelu> {
        Ok(ConvBnRelu { conv: Conv2d::new(ConvConfig::same(c_in, c_out, k), rng, device)?, bn: BatchNorm2d::new(c_out, device)? })
    }

    /// conv, batch norm (batch statistics when `train`, else the running ones), ReLU, as one
    /// fused op ([`Tensor::conv2d_batch_norm_train`], [`Tensor::conv2d_batch_norm_eval`]: the
    /// convolution's output is held only as the batch norm's input, bf16 in the CUDA bf16
    /// mode); in training its running statistics are updated as [`BatchNorm2d::forward_relu`]
    /// does.
    pub fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let (bn, conv) = (&self.bn, &self.conv);
        if conv.bias.is_some() {
            return bn.forward_relu(&conv.forward(x)?, train);
        }
        if !train {
            return x.conv2d_batch_norm_eval(
                &conv.weight,
                conv.stride,
                conv.pad,
                &bn.gamma,
                &bn.beta,
                &bn.running_mean,
                &bn.running_var,
                bn.eps,
                true,
            );
        }
        let (y, stats) = x.conv2d_batch_norm_train(&conv.weight, conv.stride, conv.pad, &bn.gamma, &bn.beta, bn.eps, true)?;
        bn.update_running(&stats)?;
        Ok(y)
    }
}

impl Module for ConvBnRelu {
    fn named_tensors(&self, prefix: &str, out: &mut Vec<Named>) {
        self.conv.named_tensors(&join(prefix, "conv"), out);
        self.bn.named_tensors(&join(prefix, "bn"), out);
    }
}

/// The backbone: 13 conv layers in 5 blocks, then fc6 and fc7.
pub struct Vgg16Bn {
    /// `blocks[b][i]` is conv{b+1}_{i+1}.
    pub blocks: Vec<Vec<ConvBnRelu>>,
    pub fc6: ConvBnRelu,
    pub fc7: ConvBnRelu,
}

impl Vgg16Bn {
    /// He-initialised layers for `config`.
    pub fn new(config: &ModelConfig, rng: &mut impl Rng, device: &Device) -> Result<Vgg16Bn> {
        let mut c_in = 3;
        let mut blocks = Vec::new();
        for (&depth, &width) in BLOCK_DEPTHS.iter().zip(&config.block_widths) {
            let mut block = Vec::new();
            for _ in 0..depth {
                block.push(ConvBnRelu::new(c_in, width, 3, rng, device)?);
                c_in = width;
            }
            blocks.push(block);
        }
        let fc6 = ConvBnRelu::new(c_in, config.fc_width, config.fc6_kernel, rng, device)?;
        let fc7 = ConvBnRelu::new(config.fc_width, config.fc_width, 1, rng, device)?;
        Ok(Vgg16Bn { blocks, fc6, fc7 })
    }

    /// The six taps of `images [n, 3, s, s]`, finest first.
    pub fn forward(&self, images: &Tensor, train: bool) -> Result<Vec<Tensor>> {
        let mut taps = Vec::with_capacity(6);
        let mut x = images.clone();
        for block in &self.blocks {
            for layer in block {
                x = layer.forward(&x, train)?;
            }
            taps.push(x.clone());
            x = x.max_pool2x2()?;
        }
        let fc7 = self.fc7.forward(&self.fc6.forward(&x, train)?, train)?;
        taps.push(fc7);
        Ok(taps)
    }
}

impl Module for Vgg16Bn {
    fn named_tensors(&self, prefix: &str, out: &mut Vec<Named>) {
        for (b, block) in self.blocks.iter().enumerate() {
            for (i, layer) in block.iter().enumerate() {
                layer.named_tensors(&join(prefix, &format!("conv{}_{}", b + 1, i + 1)), out);
            }
        }
        self.fc6.named_tensors(&join(prefix, "fc6"), out);
        self.fc7.named_tensors(&join(prefix, "fc7"), out);
    }
}
