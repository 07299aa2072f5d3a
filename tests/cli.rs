//! The command line end to end on the bundled sample, and its errors: one sentence naming the
//! file or value at fault, a non-zero exit code, never a panic trace.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_hyperseg-engine"))
}

fn sample(split: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/sample").join(split)
}

fn run(cmd: &mut Command) -> Output {
    cmd.output().expect("the binary runs")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Fails unless the command failed with one `error:` line naming `needle`, without a panic.
fn assert_clean_failure(o: &Output, needle: &str) {
    let err = stderr(o);
    assert!(!o.status.success(), "expected failure, got success; stderr: {err}");
    assert!(!err.contains("panicked") && !err.contains("RUST_BACKTRACE"), "panic trace: {err}");
    let line = err.lines().find(|l| l.starts_with("error:")).unwrap_or_else(|| panic!("no error line in: {err}"));
    assert!(line.contains(needle), "error line {line:?} does not name {needle:?}");
}

#[test]
fn train_eval_predict_score_resume_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let runp = dir.path().join("run");
    // Train one epoch on a few images (fast), with validation.
    let small = dir.path().join("small");
    for split in ["images", "masks"] {
        std::fs::create_dir_all(small.join(split)).unwrap();
    }
    for entry in std::fs::read_dir(sample("train").join("images")).unwrap().take(10) {
        let p = entry.unwrap().path();
        let stem = p.file_stem().unwrap().to_string_lossy().into_owned();
        std::fs::copy(&p, small.join("images").join(p.file_name().unwrap())).unwrap();
        let m = format!("{stem}_segmentation.png");
        std::fs::copy(sample("train").join("masks").join(&m), small.join("masks").join(&m)).unwrap();
    }
    let o = run(bin()
        .args(["train", "--device", "cpu", "--epochs", "1", "--out"])
        .arg(&runp)
        .arg("--data")
        .arg(&small)
        .arg("--val")
        .arg(sample("val")));
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("validation Jaccard"), "{out}");
    for f in ["last.safetensors", "last.json", "last.optim.safetensors", "best.safetensors", "metrics.jsonl", "training.png"] {
        assert!(runp.join(f).is_file(), "{f} missing");
    }
    // Resume to two epochs: the log gains one record. (--cuda-graph is accepted on the CPU,
    // where the steps simply run eagerly.)
    let o = run(bin()
        .args(["train", "--device", "cpu", "--cuda-graph", "--epochs", "2", "--out"])
        .arg(&runp)
        .arg("--data")
        .arg(&small)
        .arg("--resume")
        .arg(runp.join("last.safetensors")));
    assert!(o.status.success(), "{}", stderr(&o));
    let log = std::fs::read_to_string(runp.join("metrics.jsonl")).unwrap();
    assert_eq!(log.lines().count(), 2, "{log}");

    let json = dir.path().join("eval.json");
    let o = run(bin()
        .args(["eval", "--device", "cpu", "--model"])
        .arg(runp.join("last.safetensors"))
        .arg("--data")
        .arg(sample("val"))
        .arg("--json")
        .arg(&json));
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    for k in ["jaccard", "threshold_jaccard", "dice", "accuracy", "sensitivity", "specificity", "n_images"] {
        assert!(v.get(k).is_some(), "{k} missing from {v}");
    }
    assert_eq!(v["n_images"], 30);
    // The same evaluation with bf16 activations in dense inference scores about the same.
    let json16 = dir.path().join("eval_bf16.json");
    let o = run(bin()
        .args(["eval", "--device", "cpu", "--bf16", "--model"])
        .arg(runp.join("last.safetensors"))
        .arg("--data")
        .arg(sample("val"))
        .arg("--json")
        .arg(&json16));
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("note: on the CPU, --bf16"), "{}", stderr(&o));
    let v16: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json16).unwrap()).unwrap();
    let (j32, j16) = (v["jaccard"].as_f64().unwrap(), v16["jaccard"].as_f64().unwrap());
    assert!((j32 - j16).abs() < 0.02, "Jaccard fp32 {j32} vs bf16 activations {j16}");

    let preds = dir.path().join("preds");
    let o = run(bin()
        .args(["predict", "--device", "cpu", "--model"])
        .arg(runp.join("best.safetensors"))
        .arg(sample("val").join("images"))
        .arg("--out")
        .arg(&preds));
    assert!(o.status.success(), "{}", stderr(&o));
    let mask = image::open(preds.join("ISIC_0001852_segmentation.png")).unwrap();
    assert_eq!((mask.width(), mask.height()), (512, 342), "mask at the original size");
    assert!(preds.join("overlays/ISIC_0001852_overlay.png").is_file());

    // Scoring the predictions reproduces eval's Jaccard.
    let sj = dir.path().join("score.json");
    let o = run(bin().arg("score").arg("--pred").arg(&preds).arg("--truth").arg(sample("val")).arg("--json").arg(&sj));
    assert!(o.status.success(), "{}", stderr(&o));
    let s: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&sj).unwrap()).unwrap();
    assert_eq!(s["n_images"], 30);
}

/// `--cuda-graph` where graphs cannot run (the CPU) trains eagerly and says so once, with the
/// reason, after the warm-up steps.
#[test]
fn cuda_graph_on_the_cpu_is_a_notice_not_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let o = run(bin().args(["train", "--device", "cpu", "--cuda-graph", "--epochs", "1", "--out"]).arg(dir.path()));
    assert!(o.status.success(), "{}", stderr(&o));
    let err = stderr(&o);
    let notes: Vec<&str> = err.lines().filter(|l| l.starts_with("note:")).collect();
    assert_eq!(notes.len(), 1, "{err}");
    assert!(notes[0].contains("CUDA device") && notes[0].contains("continuing without CUDA graphs"), "{err}");
    assert!(err.contains("epoch   1"), "epoch lines reach stderr without a terminal: {err}");
}

#[test]
fn cuda_without_a_gpu_is_one_clear_sentence() {
    if hyperseg_engine::Device::cuda(0).is_ok() {
        eprintln!("skipped: a GPU is present");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let o = run(bin().args(["train", "--device", "cuda", "--epochs", "1", "--out"]).arg(dir.path()));
    assert_clean_failure(&o, "--device cpu");
    let err = stderr(&o);
    assert_eq!(err.lines().filter(|l| l.starts_with("error:")).count(), 1, "{err}");
}

#[test]
fn bad_inputs_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    // An empty folder.
    let empty = dir.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let o = run(bin().args(["train", "--device", "cpu", "--out"]).arg(dir.path().join("r")).arg("--data").arg(&empty));
    assert_clean_failure(&o, "empty");
    // A missing checkpoint.
    let o = run(bin().args(["eval", "--device", "cpu", "--model", "no/such/model.safetensors", "--data"]).arg(sample("val")));
    assert_clean_failure(&o, "model.safetensors");
    // An unreadable image.
    let bad = dir.path().join("bad");
    std::fs::create_dir_all(bad.join("images")).unwrap();
    std::fs::create_dir_all(bad.join("masks")).unwrap();
    std::fs::write(bad.join("images/ISIC_0000001.jpg"), b"not a jpeg").unwrap();
    std::fs::copy(sample("train").join("masks/ISIC_0000001_segmentation.png"), bad.join("masks/ISIC_0000001_segmentation.png")).unwrap();
    let o = run(bin().args(["train", "--device", "cpu", "--epochs", "1", "--out"]).arg(dir.path().join("r2")).arg("--data").arg(&bad));
    assert_clean_failure(&o, "ISIC_0000001.jpg");
    // An unknown preset.
    let o = run(bin().args(["train", "--preset", "huge", "--out"]).arg(dir.path().join("r3")));
    assert_clean_failure(&o, "huge");
}

#[test]
fn bench_runs_every_precision_on_the_cpu_and_writes_json() {
    let dir = tempfile::tempdir().unwrap();
    for precision in ["fp32", "tf32", "bf16", "bf16-gemm"] {
        let json = dir.path().join(format!("{precision}.json"));
        let o = run(bin()
            .args(["bench", "--device", "cpu", "--preset", "tiny", "--warmup", "0", "--iters", "1", "--precision", precision, "--json"])
            .arg(&json));
        assert!(o.status.success(), "bench --precision {precision}: {}", stderr(&o));
        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
        assert_eq!(v["precision"], precision);
        assert!(v["precision_detail"].as_str().is_some_and(|d| !d.is_empty()));
        assert!(v["train_step_ms"].as_f64().is_some_and(|t| t > 0.0));
        assert!(v["last_loss"].as_f64().is_some_and(f64::is_finite), "{v}");
        assert!(v["train_step_graph_ms"].is_null(), "no CUDA graph on the CPU: {v}");
        assert!(v["train_step_pipelined_ms"].as_f64().is_some_and(|t| t > 0.0), "{v}");
        assert_eq!(v["train_step_graph_note"], "not on the CPU");
    }
}
