//! The analytic FLOP count of a training step and of dense inference, from the configuration
//! alone (convolutions and GEMMs, 2 FLOPs per multiply-accumulate).

use crate::backend::ConvSpec;
use crate::model::ModelConfig;

/// Convs per VGG16 block (as in `model::vgg`).
const BLOCK_DEPTHS: [usize; 5] = [2, 2, 3, 3, 3];

/// The backbone's convolutions for one image of `config`, in order (13 VGG convs, fc6, fc7).
pub fn backbone_convs(config: &ModelConfig) -> Vec<ConvSpec> {
    let mut specs = Vec::new();
    let (mut c_in, mut s) = (3, config.input_size);
    for (&depth, &width) in BLOCK_DEPTHS.iter().zip(&config.block_widths) {
        for _ in 0..depth {
            specs.push(ConvSpec { n: 1, c_in, h: s, w: s, c_out: width, kh: 3, kw: 3, stride: 1, pad: 1 });
            c_in = width;
        }
        s /= 2;
    }
    let k = config.fc6_kernel;
    specs.push(ConvSpec { n: 1, c_in, h: s, w: s, c_out: config.fc_width, kh: k, kw: k, stride: 1, pad: k / 2 });
    specs.push(ConvSpec { n: 1, c_in: config.fc_width, h: s, w: s, c_out: config.fc_width, kh: 1, kw: 1, stride: 1, pad: 0 });
    specs
}

/// Forward FLOPs of the backbone for one image.
pub fn backbone_flops_per_image(config: &ModelConfig) -> f64 {
    backbone_convs(config).iter().map(ConvSpec::flops).sum()
}

/// `(in, out)` of every MLP layer.
fn mlp_layers(config: &ModelConfig) -> Vec<(usize, usize)> {
    let mut dims = vec![config.hypercolumn_width()];
    dims.extend(&config.mlp_hidden);
    dims.push(config.classes);
    dims.windows(2).map(|w| (w[0], w[1])).collect()
}

/// Forward FLOPs of the MLP for one pixel (biases not counted).
pub fn mlp_flops_per_pixel(config: &ModelConfig) -> f64 {
    mlp_layers(config).iter().map(|&(i, o)| 2.0 * (i * o) as f64).sum()
}

/// `(train_step_flops, dense_naive_flops, dense_factored_flops)` of `config`.
///
/// - Training step: forward = `batch * backbone(image) + points * mlp(pixel)`; backward twice
///   the forward (input and weight gradients); the step is 3x the forward. The paper's model:
///   5 * 32.5 (VGG convs 30.7 + fc6/fc7 1.85) + 1600 * 0.0624 (MLP) = 262.5 GFLOP forward,
///   787 GFLOP per step.
/// - Dense naive, one image: `backbone(image) + s^2 * mlp(pixel)`: 3.16 TFLOP for the paper.
/// - Dense factored, one image: the backbone, the first MLP layer applied to each tap at its
///   own resolution (`sum_i h_i w_i c_i hidden_1`), then the remaining layers at every pixel:
///   0.93 TFLOP for the paper (the upsample-and-sum adds, ~1%, are not counted).
pub fn flops(config: &ModelConfig) -> (f64, f64, f64) {
    let backbone = backbone_flops_per_image(config);
    let mlp = mlp_flops_per_pixel(config);
    let pixels = (config.input_size * config.input_size) as f64;
    let forward = config.batch_size as f64 * backbone + config.sample_points as f64 * mlp;
    let train = 3.0 * forward;
    let naive = backbone + pixels * mlp;
    let layers = mlp_layers(config);
    let hidden1 = layers[0].1 as f64;
    let first_per_tap: f64 = tap_geometry(config).iter().map(|&(c, h, w)| 2.0 * (c * h * w) as f64 * hidden1).sum();
    let rest: f64 = layers[1..].iter().map(|&(i, o)| 2.0 * (i * o) as f64).sum();
    let factored = backbone + first_per_tap + pixels * rest;
    (train, naive, factored)
}

/// `(channels, height, width)` of the six taps of one image.
pub fn tap_geometry(config: &ModelConfig) -> Vec<(usize, usize, usize)> {
    let c = config.tap_channels();
    (0..6)
        .map(|i| {
            let s = config.input_size >> i;
            (c[i], s, s)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paper_flops_match_the_notes() {
        let c = ModelConfig::paper();
        let convs: f64 = backbone_convs(&c)[..13].iter().map(ConvSpec::flops).sum();
        assert!((convs / 1e9 - 30.7).abs() < 0.1, "{convs}");
        let (train, naive, factored) = flops(&c);
        assert!((train / 787e9 - 1.0).abs() < 0.01, "{train}");
        assert!((naive / 3.16e12 - 1.0).abs() < 0.01, "{naive}");
        assert!((factored / 0.93e12 - 1.0).abs() < 0.01, "{factored}");
    }
}
