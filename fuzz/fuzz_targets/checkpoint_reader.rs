//! Fuzz target `checkpoint_reader`: arbitrary bytes as a checkpoint file must load or be refused with an
//! error, never panic, and never make the loader allocate more than the file justifies (the configuration in the
//! metadata is checked against the limits in `hyperseg_engine::model::checkpoint` and the file size before the
//! model is built).
//!
//! Each input is written twice: as `input.safetensors`, read by `load_checkpoint`, and as the optimiser file of a
//! valid tiny checkpoint (`base.optim.safetensors`), read by `load_optimizer`. See `fuzz/README.md`.

#![no_main]

use std::cell::RefCell;
use std::path::PathBuf;

use hyperseg_engine::model::{load_checkpoint, load_optimizer, save_checkpoint, HypercolumnNet, ModelConfig, TrainingState};
use hyperseg_engine::nn::Module;
use hyperseg_engine::optim::{Adam, AdamConfig};
use hyperseg_engine::Device;
use libfuzzer_sys::fuzz_target;
use rand::SeedableRng;

struct Fixture {
    dir: PathBuf,
    model: HypercolumnNet,
}

/// A tiny model with a training checkpoint at `dir/base.safetensors`, made once per process.
fn fixture() -> Fixture {
    let dir = std::env::temp_dir().join(format!("hyperseg-fuzz-checkpoint-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch folder");
    let config = ModelConfig { input_size: 32, block_widths: [2, 2, 2, 2, 2], fc_width: 4, mlp_hidden: vec![4], ..ModelConfig::tiny() };
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let model = HypercolumnNet::new(config, &mut rng, &Device::Cpu).expect("tiny model");
    let adam = Adam::new(model.parameters(), AdamConfig::default()).expect("optimizer");
    let state = TrainingState { epoch: 0, step: 0, seed: 0, best_jaccard: 0.0 };
    save_checkpoint(&dir.join("base.safetensors"), &model, Some(&adam), Some(&state)).expect("base checkpoint");
    Fixture { dir, model }
}

thread_local! {
    static FIXTURE: RefCell<Option<Fixture>> = const { RefCell::new(None) };
}

fuzz_target!(|data: &[u8]| {
    FIXTURE.with(|f| {
        let mut f = f.borrow_mut();
        let f = f.get_or_insert_with(fixture);
        let input = f.dir.join("input.safetensors");
        std::fs::write(&input, data).expect("write input");
        let _ = load_checkpoint(&input, &Device::Cpu);
        std::fs::write(f.dir.join("base.optim.safetensors"), data).expect("write input");
        let mut adam = Adam::new(f.model.parameters(), AdamConfig::default()).expect("optimizer");
        let _ = load_optimizer(&f.dir.join("base.safetensors"), &f.model, &mut adam);
    });
});
