#!/usr/bin/env bash
# One device call that measures everything issue 5 asks for, side by side on one GPU:
#   1. every test with the GPU required (.gpu/run.sh tests), the PTX kernel parity table with timings;
#   2. the engine's bench, fp32, tf32 and bf16 (and, when .gpu/before/hyperseg-engine exists, the same bench with that
#      older binary, interleaved, so a change is measured before and after in one run);
#   3. PyTorch eager fp32/tf32/bf16 and PyTorch compiled (bf16, channels_last, fused Adam).
# Usage on the GPU machine, from the checkout root, after `bash ../shared/gpu/bundle.sh` here (and optionally
# `cp <old target/release/hyperseg-engine> .gpu/before/hyperseg-engine`), carrying .gpu:
#   bash bench/gpu-run.sh            # results under $OUT (or /tmp/out): summary.txt, tests.log, bench.log, *.json
# Budget: about 6-8 minutes (tests ~2, engine benches ~2, PyTorch eager ~1.5, compiled ~2).
set -uo pipefail
O=${OUT:-/tmp/out}; mkdir -p "$O"
export PYTHONUNBUFFERED=1
# The engine's CUDA libraries; PyTorch runs without them on the path (it bundles a newer cuDNN).
ELIB=$(ls -d /usr/local/cuda*/targets/x86_64-linux/lib 2>/dev/null | head -n 1):/usr/lib/x86_64-linux-gnu
S=$O/summary.txt
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader > "$S" 2>&1
mkdir -p target/release && cp .gpu/bin/bin-hyperseg-engine target/release/hyperseg-engine
t0=$(date +%s)
LD_LIBRARY_PATH=$ELIB HYPERSEG_KERNEL_TIMINGS=1 timeout 180 bash .gpu/run.sh tests > "$O/tests.log" 2>&1
echo "tests rc=$? ($(( $(date +%s) - t0 )) s)" >> "$S"
grep -E "^=== |^test result|FAILED|FAIL |panicked|^TIME|upsample_sum|bias_relu|driver allocations" "$O/tests.log" | head -120 >> "$S"
bench() { # NAME BINARY PRECISION
  echo "=== $1 $3"
  LD_LIBRARY_PATH=$ELIB timeout 60 "$2" bench --device cuda --preset paper --precision "$3" --warmup 3 --iters 10 \
    --json "$O/$1_$3.json"
  echo "rc=$?"
}
{
  for p in fp32 tf32 bf16; do
    bench engine .gpu/bin/bin-hyperseg-engine $p
    # (binaries older than bf16 GEMMs have no --precision bf16)
    [ -x .gpu/before/hyperseg-engine ] && [ $p != bf16 ] && bench before .gpu/before/hyperseg-engine $p
  done
  echo "=== pytorch eager"
  env -u LD_LIBRARY_PATH timeout 120 python3 bench/pytorch_reference.py --bench --device cuda --preset paper \
    --precision fp32,tf32,bf16 --warmup 3 --iters 10 --json "$O/torch_eager.json"; echo "rc=$?"
  echo "=== pytorch compiled"
  env -u LD_LIBRARY_PATH timeout 240 python3 bench/pytorch_reference.py --bench --device cuda --preset paper \
    --precision bf16 --compile --compile-mode max-autotune-no-cudagraphs --fused-adam --skip-dense --warmup 3 \
    --iters 10 --json "$O/torch_compiled.json"; echo "rc=$?"
} > "$O/bench.log" 2>&1
grep -E "^=== |^rc=|training step|dense, one|peak device|driver alloc|by phase|^\[" "$O/bench.log" >> "$S"
echo "done ($(( $(date +%s) - t0 )) s)" >> "$S"
