#!/usr/bin/env bash
# One device call that measures what issue 5 asks for, side by side on one GPU. Parts, in this order (all by
# default; name some to run only those, e.g. `bash bench/gpu-run.sh tests bench torch`):
#   tests    every test with the GPU required (.gpu/run.sh tests), the PTX kernel parity table with timings (~2 min)
#   bench    the engine's bench, fp32, tf32, bf16-gemm and bf16, each also timing the step replayed as a CUDA graph (and,
#            when .gpu/before/hyperseg-engine exists, the same bench with that older binary, interleaved, so a
#            change is measured before and after in one run; a before-binary older than the bf16 convolutions runs
#            its bf16 as bf16 GEMMs with TF32 convolutions, i.e. as bf16-gemm) (~2-3 min)
#   torch    PyTorch eager fp32/tf32/bf16 (~1.5 min)
#   compile  PyTorch compiled: bf16, channels_last, fused Adam, torch.compile (~2-4 min)
#   compile-graphs  the same with torch.compile's CUDA graphs (mode max-autotune; not run unless named), the peer
#            of the engine's train_step_graph_ms (~2-4 min)
#   parity   the engine's parity dump of the paper model replayed in PyTorch against fp64 (~1.5 min)
# Usage on the GPU machine, from the checkout root, after `bash bench/gpu-pack.sh [--before OLD_BINARY]` here
# (or `bash ../shared/gpu/bundle.sh`, uncompressed), carrying .gpu:
#   bash bench/gpu-run.sh [PART...]   # results under $OUT (or /tmp/out): summary.txt, *.log, *.json
set -uo pipefail
O=${OUT:-/tmp/out}; mkdir -p "$O"
parts=${*:-tests bench torch compile parity}
want() { [[ " $parts " == *" $1 "* ]]; }
export PYTHONUNBUFFERED=1
# The engine's CUDA libraries; PyTorch runs without them on the path (it bundles a newer cuDNN).
ELIB=$(ls -d /usr/local/cuda*/targets/x86_64-linux/lib 2>/dev/null | head -n 1):/usr/lib/x86_64-linux-gnu
# bench/gpu-pack.sh carries the executables compressed.
if [[ -f .gpu/bin.tar.xz && ! -d .gpu/bin ]]; then
  tar -C .gpu -xJf .gpu/bin.tar.xz || { echo "gpu-run: cannot unpack .gpu/bin.tar.xz" >&2; exit 1; }
fi
S=$O/summary.txt
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader > "$S" 2>&1
echo "parts: $parts" >> "$S"
mkdir -p target/release && cp .gpu/bin/bin-hyperseg-engine target/release/hyperseg-engine
t0=$(date +%s)
stamp() { echo "$1 ($(( $(date +%s) - t0 )) s)" >> "$S"; }
if want tests; then
  LD_LIBRARY_PATH=$ELIB HYPERSEG_KERNEL_TIMINGS=1 timeout 180 bash .gpu/run.sh tests > "$O/tests.log" 2>&1
  stamp "tests rc=$?"
  grep -E "^=== |^test result|FAILED|FAIL |panicked|^TIME|upsample_sum|bias_relu|bn\+relu|non_finite|driver allocations|bf16|graph" \
    "$O/tests.log" | head -150 >> "$S"
fi
bench() { # NAME BINARY PRECISION
  echo "=== $1 $3"
  LD_LIBRARY_PATH=$ELIB timeout 60 "$2" bench --device cuda --preset paper --precision "$3" --warmup 3 --iters 10 \
    --json "$O/$1_$3.json"
  echo "rc=$?"
}
if want bench; then
  # bf16-gemm (bf16 GEMMs, TF32 convolutions) beside bf16 measures the bf16 convolutions in one binary.
  for p in fp32 tf32 bf16-gemm bf16; do
    bench engine .gpu/bin/bin-hyperseg-engine $p
    # The before-binary runs the precisions its bench knows (bf16 came with the bf16 GEMMs, bf16-gemm with the bf16
    # convolutions, when bf16 stopped meaning bf16 GEMMs with TF32 convolutions).
    if [ -x .gpu/before/hyperseg-engine ] &&
      LD_LIBRARY_PATH=$ELIB .gpu/before/hyperseg-engine bench --help 2>&1 | grep -q -- "possible values:.*\b$p\b\|- $p:"; then
      bench before .gpu/before/hyperseg-engine $p
    fi
  done > "$O/bench.log" 2>&1
  stamp "engine bench done"
  grep -E "^=== |^rc=|training step|dense, one|peak device|driver alloc|by phase|CUDA graph|back to back|work items" "$O/bench.log" >> "$S"
fi
if want torch; then
  env -u LD_LIBRARY_PATH timeout 120 python3 bench/pytorch_reference.py --bench --device cuda --preset paper \
    --precision fp32,tf32,bf16 --warmup 3 --iters 10 --json "$O/torch_eager.json" > "$O/torch_eager.log" 2>&1
  stamp "pytorch eager rc=$?"
  grep -E "^\[" "$O/torch_eager.log" >> "$S"
fi
if want compile; then
  env -u LD_LIBRARY_PATH timeout 240 python3 bench/pytorch_reference.py --bench --device cuda --preset paper \
    --precision bf16 --compile --compile-mode max-autotune-no-cudagraphs --fused-adam --skip-dense --warmup 3 \
    --iters 10 --json "$O/torch_compiled.json" > "$O/torch_compiled.log" 2>&1
  stamp "pytorch compiled rc=$?"
  grep -E "^\[" "$O/torch_compiled.log" >> "$S"
fi
if want compile-graphs; then
  env -u LD_LIBRARY_PATH timeout 240 python3 bench/pytorch_reference.py --bench --device cuda --preset paper \
    --precision bf16 --compile --compile-mode max-autotune --fused-adam --skip-dense --warmup 5 \
    --iters 10 --json "$O/torch_compiled_graphs.json" > "$O/torch_compiled_graphs.log" 2>&1
  stamp "pytorch compiled with CUDA graphs rc=$?"
  grep -E "^\[" "$O/torch_compiled_graphs.log" >> "$S"
fi
if want parity; then
  rm -rf /tmp/parity
  { LD_LIBRARY_PATH=$ELIB timeout 90 .gpu/bin/bin-hyperseg-engine bench --device cuda --preset paper \
      --parity-dump /tmp/parity --parity-steps 3 &&
    env -u LD_LIBRARY_PATH timeout 180 python3 bench/pytorch_reference.py --parity /tmp/parity --device cuda; } \
    > "$O/parity.log" 2>&1
  stamp "parity rc=$?"
  grep -E "FAIL|^parity:|closest|bf16" "$O/parity.log" >> "$S"
fi
stamp "done"
