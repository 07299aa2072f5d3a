//! The model's configuration and its presets: `paper` (the published model) and `tiny`
//! (narrow widths and a small input, trains in minutes on two CPU cores).

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Everything that fixes the architecture and the training recipe of a hypercolumn model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    /// The preset this configuration came from (`paper`, `tiny`, or `custom`).
    pub preset: String,
    /// Square input size in pixels (224 in the paper); a multiple of 32.
    pub input_size: usize,
    /// Output channels of the five VGG blocks (64, 128, 256, 512, 512 in VGG16).
    pub block_widths: [usize; 5],
    /// Channels of fc6 and fc7 (4096 in VGG16).
    pub fc_width: usize,
    /// fc6 kernel size: 1 (the paper's 1x1 conv) or 7 (PixelNet's 7x7, pad 3).
    pub fc6_kernel: usize,
    /// Hidden widths of the MLP on the hypercolumns (4096, 2048 in the paper).
    pub mlp_hidden: Vec<usize>,
    /// Output classes (2: background, lesion).
    pub classes: usize,
    /// Dropout probability after each hidden MLP layer during training (0: none).
    pub mlp_dropout: f32,
    /// Images per training batch (5 in the paper).
    pub batch_size: usize,
    /// Pixels sampled per training batch (1600 in the paper).
    pub sample_points: usize,
    /// Adam's learning rate (1e-3 in the paper).
    pub learning_rate: f32,
}

impl ModelConfig {
    /// The paper's model: VGG16-BN at 224x224, batch 5, 1600 sampled pixels, MLP 4096-2048-2.
    pub fn paper() -> ModelConfig {
        ModelConfig {
            preset: "paper".into(),
            input_size: 224,
            block_widths: [64, 128, 256, 512, 512],
            fc_width: 4096,
            fc6_kernel: 1,
            mlp_hidden: vec![4096, 2048],
            classes: 2,
            mlp_dropout: 0.0,
            batch_size: 5,
            sample_points: 1600,
            learning_rate: 1e-3,
        }
    }

    /// The same architecture, narrow and at 64x64: trains end to end on two CPU cores.
    pub fn tiny() -> ModelConfig {
        ModelConfig {
            preset: "tiny".into(),
            input_size: 64,
            block_widths: [8, 16, 32, 32, 32],
            fc_width: 64,
            fc6_kernel: 1,
            mlp_hidden: vec![64, 32],
            classes: 2,
            mlp_dropout: 0.0,
            batch_size: 5,
            sample_points: 1600,
            learning_rate: 1e-3,
        }
    }

    /// A preset by name.
    pub fn preset(name: &str) -> Result<ModelConfig> {
        match name {
            "paper" => Ok(ModelConfig::paper()),
            "tiny" => Ok(ModelConfig::tiny()),
            other => Err(Error::InvalidValue { name: "preset", msg: format!("unknown preset {other:?} (expected paper or tiny)") }),
        }
    }

    /// Channels of the six hypercolumn taps: conv1_2, conv2_2, conv3_3, conv4_3, conv5_3, fc7.
    pub fn tap_channels(&self) -> [usize; 6] {
        let w = self.block_widths;
        [w[0], w[1], w[2], w[3], w[4], self.fc_width]
    }

    /// Width of a hypercolumn (5568 for the paper's model).
    pub fn hypercolumn_width(&self) -> usize {
        self.tap_channels().iter().sum()
    }

    /// Checks that the configuration describes a buildable model.
    pub fn validate(&self) -> Result<()> {
        let bad = |msg: String| Err(Error::InvalidValue { name: "model config", msg });
        if self.input_size == 0 || !self.input_size.is_multiple_of(32) {
            return bad(format!("input size {} is not a positive multiple of 32", self.input_size));
        }
        if self.block_widths.contains(&0) || self.fc_width == 0 || self.mlp_hidden.contains(&0) {
            return bad("layer widths must be positive".into());
        }
        if self.fc6_kernel != 1 && self.fc6_kernel != 7 {
            return bad(format!("fc6 kernel {} is neither 1 nor 7", self.fc6_kernel));
        }
        if self.classes < 2 || self.batch_size == 0 || self.sample_points == 0 {
            return bad("classes must be at least 2, batch size and sample points positive".into());
        }
        if !(0.0..1.0).contains(&self.mlp_dropout) {
            return bad(format!("dropout {} is not in [0, 1)", self.mlp_dropout));
        }
        Ok(())
    }
}
