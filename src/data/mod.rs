//! The data pipeline: ISIC folder discovery, decoding at the model size, seeded augmentation, batching, a
//! prefetching loader, a memory-mapped pre-decoded cache, and the image-side helpers of prediction. Problems that do
//! not stop a run are reported once per file through [`warn`].
//!
//! Typical training use:
//! ```no_run
//! use hyperseg_engine::data::{Dataset, Loader, LoaderConfig};
//! # fn main() -> hyperseg_engine::error::Result<()> {
//! let train = Dataset::discover("data/isic2017/train")?;
//! let loader = Loader::from_dataset(train, LoaderConfig::train(5, 224, 42))?;
//! for batch in loader.epoch(0) {
//!     let batch = batch?; // batch.images: 5x3x224x224, batch.masks: 5x224x224
//! }
//! # Ok(()) }
//! ```

pub mod augment;
pub mod batch;
pub mod cache;
pub mod decode;
pub mod discover;
pub mod ids;
pub mod infer;
pub mod loader;
pub mod output;
pub mod overlay;
pub mod warn;

pub use augment::{Augment, AugmentParams};
pub use batch::Batch;
pub use cache::Cache;
pub use decode::{decode_sample, Decoded, IMAGENET_MEAN};
pub use discover::{find_images, Dataset, Sample};
pub use infer::{load_for_inference, InferenceInput};
pub use loader::{Epoch, Loader, LoaderConfig};
pub use output::{probabilities_to_mask, resize_probabilities, write_mask_png};
