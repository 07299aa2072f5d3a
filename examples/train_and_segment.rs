//! Embedding the engine: train the tiny preset on the bundled sample, score it with the ISIC
//! rules, and segment one image, without the CLI.
//!
//! cargo run --release --example train_and_segment

use std::path::PathBuf;

use hyperseg_engine::data::{Augment, Dataset};
use hyperseg_engine::infer::{segment_file, InferOptions};
use hyperseg_engine::model::{load_checkpoint, ModelConfig};
use hyperseg_engine::train::{bundled_sample, evaluate, train, Silent, TrainOptions};
use hyperseg_engine::Device;

fn main() -> hyperseg_engine::Result<()> {
    // On the CPU, the engine's parallel regions start on this thread instead of waking a pool thread.
    hyperseg_engine::use_calling_thread();
    let (device, why) = Device::best_available();
    println!("{why}");
    let (train_dir, val_dir) = bundled_sample();
    let out = std::env::temp_dir().join("hyperseg-example");
    let opts = TrainOptions {
        data: train_dir,
        val: Some(val_dir.clone()),
        out: out.clone(),
        config: ModelConfig::tiny(),
        epochs: 3,
        seed: 1,
        resume: None,
        augment: Augment::paper(),
        workers: 2,
        infer: InferOptions::default(),
        cuda_graph: false,
    };
    let summary = train(&opts, &device, &mut Silent)?;
    println!("trained: {:?}", summary.records.last());

    let (model, _) = load_checkpoint(&summary.last_checkpoint, &device)?;
    let report = evaluate(&model, &Dataset::discover(&val_dir)?, InferOptions::default())?;
    println!("validation Jaccard {:.4} over {} images", report.jaccard, report.n_images);

    let image: PathBuf = Dataset::discover(&val_dir)?.samples()[0].image_path.clone();
    let seg = segment_file(&model, &image, InferOptions::default())?;
    let lesion = seg.mask.iter().filter(|&&v| v > 0).count();
    println!("{}: {}x{}, {lesion} lesion pixels", image.display(), seg.width, seg.height);
    Ok(())
}
