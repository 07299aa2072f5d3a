#!/usr/bin/env bash
# Final device run: every test (GPU required), then the engine's bench and PyTorch's, same GPU, same call.
set -uo pipefail
O=${OUT:-/tmp/out}; mkdir -p "$O"
export PYTHONUNBUFFERED=1
ELIB=/usr/local/cuda-13.0/targets/x86_64-linux/lib:/usr/lib/x86_64-linux-gnu
S=$O/summary.txt
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader > "$S" 2>&1
mkdir -p target/release && cp .gpu/bin/bin-hyperseg-engine target/release/hyperseg-engine
t0=$(date +%s)
LD_LIBRARY_PATH=$ELIB timeout 100 bash .gpu/run.sh tests > "$O/tests.log" 2>&1; echo "tests rc=$? ($(( $(date +%s) - t0 )) s)" >> "$S"
grep -E "^=== |^test result|FAILED|panicked" "$O/tests.log" | head -60 >> "$S"
{
  for p in fp32 tf32; do
    echo "=== engine bench $p"; LD_LIBRARY_PATH=$ELIB timeout 45 .gpu/bin/bin-hyperseg-engine bench --device cuda --preset paper --precision $p --warmup 3 --iters 10 --json "$O/engine_$p.json"; echo "rc=$?"
  done
  echo "=== pytorch bench"; env -u LD_LIBRARY_PATH timeout 90 python3 bench/pytorch_reference.py --bench --device cuda --preset paper --precision fp32,tf32,bf16 --warmup 3 --iters 10 --json "$O/torch.json"; echo "rc=$?"
} > "$O/bench.log" 2>&1
echo "done ($(( $(date +%s) - t0 )) s)" >> "$S"
