#!/usr/bin/env bash
# Assemble every hand-written kernel (kernels/*.ptx) with ptxas, for the file's own .target and
# for sm_86 and sm_90, and fail when one does not assemble or when ptxas reports spills.
#
#   bash kernels/check.sh            # skip (exit 0) with a notice when no ptxas can be found
#   bash kernels/check.sh --require  # fail when no ptxas can be found
#
# ptxas is looked for in $HYPERSEG_PTXAS, then on PATH, then under the Python site-packages of
# `pip install nvidia-cuda-nvcc` (nvidia/cu13/bin, nvidia/cuda_nvcc/bin), then /usr/local/cuda/bin.
# ptxas 13 accepts sm_75 and newer only; a file whose .target is older is also checked as sm_75.
set -uo pipefail

require=0
[[ "${1:-}" == "--require" ]] && require=1
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

find_ptxas() {
    if [[ -n "${HYPERSEG_PTXAS:-}" && -x "${HYPERSEG_PTXAS}" ]]; then echo "$HYPERSEG_PTXAS"; return 0; fi
    if command -v ptxas >/dev/null 2>&1; then command -v ptxas; return 0; fi
    local py site
    for py in python3 python; do
        command -v "$py" >/dev/null 2>&1 || continue
        while read -r site; do
            [[ -z "$site" ]] && continue
            for cand in "$site"/nvidia/cu13/bin/ptxas "$site"/nvidia/cu12/bin/ptxas "$site"/nvidia/cuda_nvcc/bin/ptxas; do
                if [[ -x "$cand" ]]; then echo "$cand"; return 0; fi
            done
        done < <("$py" - <<'PY' 2>/dev/null
import site, sys
paths = list(getattr(site, "getsitepackages", lambda: [])()) + [site.getusersitepackages()] + sys.path
for p in dict.fromkeys(paths):
    print(p)
PY
)
    done
    if [[ -x /usr/local/cuda/bin/ptxas ]]; then echo /usr/local/cuda/bin/ptxas; return 0; fi
    return 1
}

if ! PTXAS="$(find_ptxas)"; then
    echo "kernels/check.sh: ptxas not found (set HYPERSEG_PTXAS or: pip install nvidia-cuda-nvcc)"
    if (( require )); then echo "kernels/check.sh: FAILED (ptxas required)"; exit 1; fi
    echo "kernels/check.sh: SKIPPED"
    exit 0
fi
echo "kernels/check.sh: using $PTXAS ($("$PTXAS" --version 2>/dev/null | tail -n 1))"

shopt -s nullglob
files=("$here"/*.ptx)
if (( ${#files[@]} == 0 )); then echo "kernels/check.sh: no .ptx files in $here"; exit 1; fi

fail=0
printf '%-18s %-6s %8s %8s %8s %8s  %s\n' "file" "arch" "entries" "max_regs" "spill_st" "spill_ld" "status"
for f in "${files[@]}"; do
    name="$(basename "$f")"
    target="$(grep -m1 -E '^[[:space:]]*\.target[[:space:]]' "$f" | sed -E 's/^[[:space:]]*\.target[[:space:]]+([a-z0-9_]+).*/\1/')"
    if [[ -z "$target" ]]; then
        echo "$name: no .target directive"; fail=1; continue
    fi
    num="${target#sm_}"; num="${num%%[a-z]*}"
    if [[ "$num" =~ ^[0-9]+$ ]] && (( num < 75 )); then target=sm_75; fi
    archs=("$target")
    for a in sm_86 sm_90; do [[ "$a" != "$target" ]] && archs+=("$a"); done
    for arch in "${archs[@]}"; do
        out="$("$PTXAS" --gpu-name "$arch" -v "$f" -o /dev/null 2>&1)"
        rc=$?
        entries="$(grep -c "Compiling entry function" <<<"$out")"
        regs="$(grep -oE 'Used [0-9]+ registers' <<<"$out" | awk '{print $2}' | sort -n | tail -n 1)"
        sst="$(grep -oE '[0-9]+ bytes spill stores' <<<"$out" | awk '{s+=$1} END {print s+0}')"
        sld="$(grep -oE '[0-9]+ bytes spill loads' <<<"$out" | awk '{s+=$1} END {print s+0}')"
        status=ok
        if (( rc != 0 )); then status="FAILED (ptxas exit $rc)"; fail=1
        elif (( sst > 0 || sld > 0 )); then status="FAILED (spills)"; fail=1
        elif grep -qi "warning" <<<"$out"; then status="ok (warnings)"; fi
        printf '%-18s %-6s %8s %8s %8s %8s  %s\n' "$name" "$arch" "$entries" "${regs:--}" "$sst" "$sld" "$status"
        if [[ "$status" != ok ]]; then sed 's/^/    /' <<<"$(grep -iE 'error|warning|fatal' <<<"$out")"; fi
    done
done

if (( fail )); then echo "kernels/check.sh: FAILED"; exit 1; fi
echo "kernels/check.sh: all ${#files[@]} kernel files assemble for their target, sm_86 and sm_90 without spills"
