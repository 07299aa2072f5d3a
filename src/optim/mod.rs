//! Optimisers over a model's variables.

mod adam;

pub use adam::{Adam, AdamConfig, AdamState};
