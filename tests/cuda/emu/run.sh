#!/usr/bin/env bash
# The CUDA kernels on the CPU (docs/cuda.md, "Verification"): builds the
# emulator library, runs the harness's checks against float64 under two
# schedules of the warps and under AddressSanitizer, then the planted bugs.
#   tests/cuda/emu/run.sh            (about 10 minutes on 2 cores)
# Needs the CUDA headers (CUDA_HOME, default /usr/local/cuda; not a GPU or
# nvcc) and clang++ or g++; without the headers it says so and exits 0.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
py="${PYTHON:-python3}"
cuda="${CUDA_HOME:-/usr/local/cuda}"
if [ ! -f "$cuda/include/cuda_fp16.h" ]; then
  echo "CUDA emulator: skipped, no CUDA headers under $cuda (set CUDA_HOME)"
  exit 0
fi
build="${TQ_EMU_BUILD:-$here/build}"
"$here/build.sh" "$build"
export TQ_EMU_LIB="$build/libtq_emu.so"
echo "--- every check, warps and lanes in order"
CUSHIM_ORDER=forward "$py" "$here/test_emu.py"
echo "--- attention, warps in reverse order and lanes interleaved at random"
CUSHIM_ORDER=reverse "$py" "$here/test_emu.py" "attn " | tail -1
CUSHIM_ORDER=random CUSHIM_SEED=$RANDOM "$py" "$here/test_emu.py" "attn " | tail -1
echo "--- AddressSanitizer: every load and store of the kernels inside the arrays given"
SAN=asan "$here/build.sh" "$build"
LD_PRELOAD="$(cat "$build/asan_preload")" ASAN_OPTIONS=detect_leaks=0 \
  TQ_EMU_LIB="$build/libtq_emu_asan.so" "$py" "$here/test_emu.py" | tail -1
echo "--- planted bugs"
"$py" "$here/planted_bugs.py"
