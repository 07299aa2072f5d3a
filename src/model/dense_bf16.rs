//! The factored dense path with bf16 activations ([`crate::settings::bf16_activations`]).
//!
//! The same computation as the fp32 factored path of [`super::HypercolumnNet::predict_dense`],
//! with every activation after the backbone stored in bf16 ([`Bf16Matrix`]): each tap is
//! rounded to bf16 and multiplied by its bf16 block of W1 (fp32 accumulation) into a bf16
//! pixel-major plane; the planes are sampled, summed, biased and clamped in fp32 and rounded
//! once into the bf16 first hidden layer; each further hidden layer is a bf16 GEMM (rounded
//! once) then bias + ReLU (fp32 sum, rounded once); the last layer's GEMM writes fp32 logits,
//! and its bias is added in fp32. Every GEMM reads bf16 buffers (bf16 tensor cores, no
//! conversion pass), and the per-image planes, the largest buffers of dense inference, take half
//! the memory and half the bandwidth of fp32.
//!
//! The weights stay fp32 in the model; [`Bf16Weights`] holds their bf16 copies for one call.

use super::mlp::Mlp;
use crate::backend::SamplePoint;
use crate::bf16::{upsample_sum_bias_relu_bf16, Bf16Matrix};
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// bf16 copies of the MLP's weights: W1's block of columns per tap, and every later layer.
pub(super) struct Bf16Weights {
    /// `W1_i [hidden, c_i]` per tap.
    blocks: Vec<Bf16Matrix>,
    /// `W_l [out, in]` for layers 2..L.
    later: Vec<Bf16Matrix>,
}

impl Bf16Weights {
    /// Rounds `mlp`'s weights to bf16; `tap_channels` splits W1's columns by tap.
    pub(super) fn new(mlp: &Mlp, tap_channels: &[usize]) -> Result<Bf16Weights> {
        let w1 = &mlp.layers[0].weight;
        let hidden = w1.dims()[0];
        let mut offset = 0;
        let mut blocks = Vec::with_capacity(tap_channels.len());
        for &c in tap_channels {
            let block = w1.narrow(1, offset, c)?;
            blocks.push(Bf16Matrix::from_tensor(&block, hidden, c)?);
            offset += c;
        }
        let later = mlp.layers[1..]
            .iter()
            .map(|l| {
                let d = l.weight.dims();
                Bf16Matrix::from_tensor(&l.weight, d[0], d[1])
            })
            .collect::<Result<_>>()?;
        Ok(Bf16Weights { blocks, later })
    }
}

/// `W1_i . t_i` for every tap `t_i` of image `img`, as bf16 pixel-major planes `[h_i w_i,
/// hidden]` with their `(h_i, w_i)`: one bf16 GEMM per tap, `t_i^T [h_i w_i, c_i] . W1_i^T`.
pub(super) fn first_layer_planes(taps: &[Tensor], w: &Bf16Weights, img: usize) -> Result<Vec<(Bf16Matrix, usize, usize)>> {
    taps.iter()
        .zip(&w.blocks)
        .map(|(t, block)| {
            let [_, c, h, wd] = t.shape().dims4("tap")?;
            let tap = Bf16Matrix::from_tensor(&t.narrow(0, img, 1)?, c, h * wd)?;
            Ok((tap.matmul(true, block, true)?, h, wd))
        })
        .collect()
}

/// The logits `[points, classes]` (fp32) of `points` (pixels of an `s x s` frame, image 0 of
/// the planes) from the bf16 planes.
pub(super) fn tile_logits(
    mlp: &Mlp,
    w: &Bf16Weights,
    planes: &[(Bf16Matrix, usize, usize)],
    points: &[SamplePoint],
    s: usize,
) -> Result<Tensor> {
    let refs: Vec<(&Bf16Matrix, usize, usize)> = planes.iter().map(|(z, h, wd)| (z, *h, *wd)).collect();
    let mut x = upsample_sum_bias_relu_bf16(&refs, &mlp.layers[0].bias, points, s, s)?;
    let count = w.later.len();
    for (i, (layer, weight)) in mlp.layers[1..].iter().zip(&w.later).enumerate() {
        if i + 1 == count {
            return x.matmul_f32(false, weight, true)?.add_channels(&layer.bias);
        }
        x = x.matmul(false, weight, true)?;
        x.bias_relu_assign(&layer.bias)?;
    }
    Err(Error::InvalidValue { name: "dense path", msg: "the factored path needs a hidden layer".into() })
}
