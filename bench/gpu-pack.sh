#!/usr/bin/env bash
# Packs what a GPU machine (no Rust toolchain) needs to run bench/gpu-run.sh, small enough to carry: the release
# binaries, test executables and benches built by ../shared/gpu/bundle.sh, compressed with xz into
# .gpu/bin.tar.xz (about 7 MB instead of 61 MB: the executables share most of their code, so the device call's
# 64 MiB carry has room to spare). gpu-run.sh unpacks it on the GPU machine.
#
#   bash bench/gpu-pack.sh [--before BINARY] [extra cargo args for bundle.sh]
#
# --before BINARY also packs an older build of hyperseg-engine as .gpu/before/hyperseg-engine, which gpu-run.sh's
# bench part times interleaved with the current one (a change measured before and after in one run).
# Then, in one device call with carry [".gpu"]: bash bench/gpu-run.sh [PART...]
set -euo pipefail
root=$(git rev-parse --show-toplevel)
cd "$root"
before=""
if [[ "${1:-}" == "--before" ]]; then
  before=$(realpath "$2")
  [[ -x "$before" ]] || { echo "gpu-pack: --before $2 is not an executable" >&2; exit 1; }
  shift 2
fi
bash ../shared/gpu/bundle.sh "$@" > /dev/null
# The PTX simulator's tests (tests/ptx_kernels) use no GPU and take half a minute single-threaded: CI runs them;
# on the device they would only spend its few minutes.
rm -f .gpu/bin/test-ptx_kernels
if [[ -n "$before" ]]; then
  mkdir -p .gpu/before
  cp "$before" .gpu/before/hyperseg-engine
fi
dirs=(bin)
[[ -d .gpu/before ]] && dirs+=(before)
tar -C .gpu -cJf .gpu/bin.tar.xz.tmp "${dirs[@]}"
mv .gpu/bin.tar.xz.tmp .gpu/bin.tar.xz
rm -rf "${dirs[@]/#/.gpu/}"
echo "gpu-pack: $(du -sh .gpu | cut -f1) in .gpu ($(tar -tJf .gpu/bin.tar.xz | grep -c -v '/$') executables in bin.tar.xz)"
