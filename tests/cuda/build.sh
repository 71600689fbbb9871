#!/usr/bin/env bash
# Builds the standalone harness library tests/cuda/build/libtq.so with nvcc.
# Usage: tests/cuda/build.sh [arch]   (default: compute_90a/sm_90a)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
out="$here/build"
mkdir -p "$out"
arch="${1:-90a}"
flags=(-O3 -std=c++17 -Xcompiler -fPIC -lineinfo
       -gencode=arch=compute_${arch},code=sm_${arch}
       -I"$root/mlx_overlay" --expt-relaxed-constexpr)
pids=()
for d in 64 80 96 128 192 256; do
  nvcc "${flags[@]}" -DTQ_D=$d -c "$here/tq_inst.cu" -o "$out/tq_inst_$d.o" \
    ${TQ_RESOURCE_USAGE:+--resource-usage} > "$out/tq_inst_$d.log" 2>&1 &
  pids+=($!)
done
nvcc "${flags[@]}" -c "$here/tq_capi.cu" -o "$out/tq_capi.o" &
pids+=($!)
rc=0
for p in "${pids[@]}"; do wait "$p" || rc=1; done
for d in 64 80 96 128 192 256; do cat "$out/tq_inst_$d.log"; done
[ $rc -eq 0 ] || { echo "compile failed"; exit 1; }
nvcc -shared -o "$out/libtq.so" "$out"/tq_inst_*.o "$out/tq_capi.o"
echo "built $out/libtq.so"
