#!/usr/bin/env bash
# The engine and PyTorch side by side on this machine's CPU, in one run: the tiny preset (64x64, batch 5,
# 1600 pixels), fp32, median of 10 after 3 warm-up, both with this machine's cores. Writes
# bench/results/cpu-engine-tiny.json and bench/results/cpu-pytorch-tiny.json and prints the ratios.
# Needs `pip install torch` (CPU is enough) and a release build (`cargo build --release`).
set -euo pipefail
cd "$(dirname "$0")/.."
R=bench/results
target/release/hyperseg-engine bench --device cpu --preset tiny --precision fp32 --warmup 3 --iters 10 \
  --json $R/cpu-engine-tiny.json
python3 bench/pytorch_reference.py --bench --device cpu --preset tiny --precision fp32 --warmup 3 --iters 10 \
  --json $R/cpu-pytorch-tiny.json
python3 - "$R/cpu-engine-tiny.json" "$R/cpu-pytorch-tiny.json" <<'PY'
import json, sys
e = json.load(open(sys.argv[1])); t = json.load(open(sys.argv[2]))
t = t[0] if isinstance(t, list) else t
for k in ("train_step_ms", "dense_naive_ms", "dense_factored_ms"):
    print(f"{k}: engine {e[k]:.2f} ms, PyTorch {t[k]:.2f} ms, engine/PyTorch {e[k] / t[k]:.2f}")
PY
