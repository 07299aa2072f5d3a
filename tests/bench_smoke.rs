//! The benchmark library on the CPU with the tiny preset: the report's JSON keys, the analytic
//! FLOP counts of the paper's model against the figures in the notes (787 GFLOP per training
//! step, 3.16 TFLOP naive dense, 0.93 TFLOP factored; within 3%), and the parity dump reopened
//! with the safetensors crate.

use hyperseg_engine::bench::{dump_parity, flops, run_bench, write_report_json, BenchOptions, PARITY_FORMAT};
use hyperseg_engine::model::{HypercolumnNet, ModelConfig};
use hyperseg_engine::Device;
use rand::SeedableRng;
use safetensors::tensor::Dtype;
use safetensors::SafeTensors;

fn f32s(data: &[u8]) -> Vec<f32> {
    data.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
}

/// One bench or parity dump at a time: they switch the process-wide numeric settings (the parity
/// dump's bf16 step turns the bf16 modes on for a whole step), which a bench running beside it
/// would read or reset.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

fn within(value: f64, expected: f64, rel: f64) -> bool {
    (value / expected - 1.0).abs() <= rel
}

#[test]
fn paper_flop_counts_match_the_notes() {
    let (train, naive, factored) = flops(&ModelConfig::paper());
    assert!(within(train, 787e9, 0.03), "training step {:.1} GFLOP, expected about 787", train / 1e9);
    assert!(within(naive, 3.16e12, 0.03), "naive dense {:.3} TFLOP, expected about 3.16", naive / 1e12);
    assert!(within(factored, 0.93e12, 0.03), "factored dense {:.3} TFLOP, expected about 0.93", factored / 1e12);
}

#[test]
fn tiny_bench_on_the_cpu_reports_every_key() {
    let _serial = serial();
    let mut opts = BenchOptions::new(ModelConfig::tiny());
    opts.warmup = 0;
    opts.iters = 1;
    let report = run_bench(&opts, &Device::Cpu).unwrap();
    let json = report.to_json();
    for key in [
        "train_step_ms",
        "dense_infer_ms",
        "peak_mem_bytes",
        "device",
        "precision",
        "preset",
        "train_step_tflops",
        "dense_infer_tflops",
        "iters",
        "dense_factored_ms",
        "train_forward_ms",
        "train_backward_ms",
        "train_optimizer_ms",
    ] {
        assert!(json.get(key).is_some(), "key {key} missing from {json}");
    }
    assert_eq!(json["device"], "cpu");
    assert_eq!(json["precision"], "fp32");
    assert_eq!(json["preset"], "tiny");
    assert_eq!(json["iters"], 1);
    assert_eq!(json["dense_path"], "naive");
    assert_eq!(json["peak_mem_bytes"], 0);
    for key in [
        "train_step_ms",
        "dense_infer_ms",
        "dense_factored_ms",
        "train_step_tflops",
        "dense_infer_tflops",
        "train_forward_ms",
        "train_backward_ms",
    ] {
        let v = json[key].as_f64().unwrap_or_else(|| panic!("{key} is not a number: {json}"));
        assert!(v.is_finite() && v > 0.0, "{key} = {v}");
    }
    assert!(report.last_loss.is_finite());
    assert!(report.table().contains("training step"));

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bench.json");
    write_report_json(&path, &report).unwrap();
    let back: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let (a, b) = (back["train_step_ms"].as_f64().unwrap(), json["train_step_ms"].as_f64().unwrap());
    assert!((a - b).abs() <= 1e-9 * b, "{a} vs {b}");
    assert_eq!(back["preset"], "tiny");
}

#[test]
fn skipping_dense_leaves_its_keys_null() {
    let _serial = serial();
    let mut opts = BenchOptions::new(ModelConfig::tiny());
    opts.warmup = 0;
    opts.iters = 1;
    opts.dense_naive = false;
    opts.dense_factored = false;
    let json = run_bench(&opts, &Device::Cpu).unwrap().to_json();
    assert!(json["dense_infer_ms"].is_null());
    assert!(json["train_step_ms"].as_f64().unwrap() > 0.0);
}

#[test]
fn parity_dump_reopens_with_safetensors() {
    let _serial = serial();
    let config = ModelConfig::tiny();
    let dir = tempfile::tempdir().unwrap();
    dump_parity(dir.path(), &config, &Device::Cpu, 2).unwrap();

    let model = HypercolumnNet::new(config.clone(), &mut rand_chacha::ChaCha8Rng::seed_from_u64(0), &Device::Cpu).unwrap();
    let named = model.named();
    let (n, s, p) = (config.batch_size, config.input_size, config.sample_points);

    let weights = std::fs::read(dir.path().join("weights.safetensors")).unwrap();
    let weights = SafeTensors::deserialize(&weights).unwrap();
    assert_eq!(weights.len(), named.len());
    for nt in &named {
        let t = weights.tensor(&nt.name).unwrap();
        assert_eq!(t.shape(), nt.tensor.dims(), "{}", nt.name);
    }

    let bytes = std::fs::read(dir.path().join("inputs.safetensors")).unwrap();
    let (_, meta) = SafeTensors::read_metadata(&bytes).unwrap();
    let meta = meta.metadata().clone().unwrap();
    assert_eq!(meta["format"], PARITY_FORMAT);
    assert_eq!(meta["steps"], "2");
    let inputs = SafeTensors::deserialize(&bytes).unwrap();
    assert_eq!(inputs.tensor("images").unwrap().shape(), [n, 3, s, s]);
    assert_eq!(inputs.tensor("points").unwrap().shape(), [p, 3]);
    assert_eq!(inputs.tensor("labels").unwrap().shape(), [p]);
    let labels: Vec<f32> = f32s(inputs.tensor("labels").unwrap().data());
    assert!(labels.iter().all(|&l| l == 0.0 || l == 1.0));
    assert!(labels.contains(&0.0) && labels.contains(&1.0), "both classes are sampled");

    let bytes = std::fs::read(dir.path().join("outputs.safetensors")).unwrap();
    let outputs = SafeTensors::deserialize(&bytes).unwrap();
    let logits = outputs.tensor("logits").unwrap();
    assert_eq!(logits.dtype(), Dtype::F32);
    assert_eq!(logits.shape(), [p, config.classes]);
    let loss: Vec<f32> = f32s(outputs.tensor("loss").unwrap().data());
    assert_eq!(loss.len(), 2);
    assert!(loss.iter().all(|l| l.is_finite() && *l > 0.0), "{loss:?}");
    for nt in &named {
        let key = if nt.trainable { format!("grad.{}", nt.name) } else { format!("state1.{}", nt.name) };
        let t = outputs.tensor(&key).unwrap_or_else(|_| panic!("{key} missing"));
        assert_eq!(t.shape(), nt.tensor.dims(), "{key}");
    }
    let g: Vec<f32> = f32s(outputs.tensor("grad.mlp.fc1.weight").unwrap().data());
    assert!(g.iter().any(|&v| v != 0.0), "the first MLP layer has a gradient");
    for key in ["dense_naive", "dense_factored", "dense_factored_bf16"] {
        assert_eq!(outputs.tensor(key).unwrap().shape(), [s, s], "{key}");
    }
    let naive = f32s(outputs.tensor("dense_naive").unwrap().data());
    let factored = f32s(outputs.tensor("dense_factored").unwrap().data());
    let diff = naive.iter().zip(&factored).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    assert!(diff < 1e-3, "the dense paths disagree by {diff}");
    let bf16 = f32s(outputs.tensor("dense_factored_bf16").unwrap().data());
    let diff = bf16.iter().zip(&factored).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    assert!(diff > 0.0 && diff < 5e-2, "bf16 activations move the dense probabilities by {diff}");
    // Step 0 again in bf16 mixed precision: its logits near the fp32 ones, not equal; a gradient
    // for every trainable parameter.
    let fp32_logits = f32s(logits.data());
    let bf16_logits = f32s(outputs.tensor("bf16.logits").unwrap().data());
    let scale = fp32_logits.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let diff = bf16_logits.iter().zip(&fp32_logits).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    assert!(diff > 0.0 && diff < 0.2 * scale, "bf16 mixed precision moves the logits by {diff} (largest {scale})");
    assert_eq!(outputs.tensor("bf16.loss").unwrap().shape(), [1]);
    let trainable: Vec<_> = named.iter().filter(|nt| nt.trainable).collect();
    for nt in &trainable {
        let key = format!("bf16.grad.{}", nt.name);
        assert_eq!(outputs.tensor(&key).unwrap_or_else(|_| panic!("{key} missing")).shape(), nt.tensor.dims(), "{key}");
    }
    assert_eq!(outputs.len(), 5 + named.len() + 2 + trainable.len());
}
