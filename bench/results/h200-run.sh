#!/usr/bin/env bash
# Second device run: the engine's bench and PyTorch's on the same GPU, one after the other.
# PyTorch must find its own bundled cuDNN, so LD_LIBRARY_PATH is set for the engine only.
set -uo pipefail
O=${OUT:-/tmp/out}; mkdir -p "$O"
export PYTHONUNBUFFERED=1
ELIB=/usr/local/cuda-13.0/targets/x86_64-linux/lib:/usr/lib/x86_64-linux-gnu
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader > "$O/bench2.log" 2>&1
{
  for p in fp32 tf32; do
    echo "=== engine bench $p"; LD_LIBRARY_PATH=$ELIB timeout 50 .gpu/bin/bin-hyperseg-engine bench --device cuda --preset paper --precision $p --warmup 3 --iters 10 --json "$O/engine_$p.json"; echo "rc=$?"
  done
  echo "=== pytorch bench"; env -u LD_LIBRARY_PATH timeout 120 python3 bench/pytorch_reference.py --bench --device cuda --preset paper --precision fp32,tf32,bf16 --warmup 3 --iters 10 --json "$O/torch.json"; echo "rc=$?"
  echo "=== train tiny on cuda"; LD_LIBRARY_PATH=$ELIB timeout 40 .gpu/bin/bin-hyperseg-engine train --device cuda --out /tmp/run --epochs 10; echo "rc=$?"
} >> "$O/bench2.log" 2>&1
