//! Inputs for prediction and evaluation: loads a picture at its original size and makes the model input from it,
//! keeping the original width and height so that the output can be brought back to them.

use std::path::Path;

use super::decode::{check_size, normalise_chw, read_rgb, resize_rgb};
use crate::error::Result;

/// A picture ready for the model, with the size it must be scored at.
#[derive(Clone, Debug, PartialEq)]
pub struct InferenceInput {
    /// Original width in pixels.
    pub width: u32,
    /// Original height in pixels.
    pub height: u32,
    /// Model input side in pixels.
    pub size: u32,
    /// The model input: CHW, `3*size*size` values on 0-255 minus the ImageNet means (image squashed bilinearly).
    pub image: Vec<f32>,
}

/// Reads `path` and prepares it for the model at `size x size`; errors name the file.
pub fn load_for_inference(path: impl AsRef<Path>, size: u32) -> Result<InferenceInput> {
    check_size(size)?;
    let rgb = read_rgb(path.as_ref())?;
    let (width, height) = rgb.dimensions();
    let image = normalise_chw(resize_rgb(&rgb, size).as_raw());
    Ok(InferenceInput { width, height, size, image })
}
