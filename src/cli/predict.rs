//! `hyperseg-engine predict`: per image, a mask PNG (original size, 0/255) in the output folder
//! (ready for `score --pred`) and an overlay PNG in its `overlays/` subfolder.

use std::path::{Path, PathBuf};

use clap::Args;
use hyperseg_engine::data::{find_images, write_mask_png};
use hyperseg_engine::infer::{segment_file, InferOptions};
use hyperseg_engine::model::load_checkpoint;
use hyperseg_engine::{Error, Result};

use super::DeviceArgs;

#[derive(Args, Debug)]
pub struct PredictArgs {
    /// The checkpoint (.safetensors).
    #[arg(long)]
    pub model: PathBuf,
    /// Images, or folders of images.
    #[arg(required = true)]
    pub inputs: Vec<PathBuf>,
    /// Output folder.
    #[arg(long)]
    pub out: PathBuf,
    #[command(flatten)]
    pub device: DeviceArgs,
}

fn collect(inputs: &[PathBuf]) -> Result<Vec<(String, PathBuf)>> {
    let mut all = Vec::new();
    for p in inputs {
        if p.is_dir() {
            all.extend(find_images(p)?);
        } else if p.is_file() {
            let stem = p.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
            all.push((stem, p.clone()));
        } else {
            return Err(Error::io(p, std::io::Error::new(std::io::ErrorKind::NotFound, "no such file or folder")));
        }
    }
    Ok(all)
}

pub fn run(a: PredictArgs) -> Result<()> {
    let images = collect(&a.inputs)?;
    let device = a.device.open()?;
    let (model, _) = load_checkpoint(&a.model, &device)?;
    for (stem, path) in &images {
        let seg = segment_file(&model, path, InferOptions::default())?;
        let mask_path = a.out.join(format!("{stem}_segmentation.png"));
        write_mask_png(&mask_path, seg.width, seg.height, &seg.mask)?;
        write_overlay(&a.out.join("overlays").join(format!("{stem}_overlay.png")), path, &seg.mask, seg.width, seg.height)?;
        println!("{}", mask_path.display());
    }
    Ok(())
}

fn write_overlay(out: &Path, image: &Path, mask: &[u8], w: u32, h: u32) -> Result<()> {
    hyperseg_engine::data::overlay::write_overlay_png(out, image, mask, w, h)
}
