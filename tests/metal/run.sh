#!/bin/bash
# Linux CI entry for the TurboQuant Metal kernels (no Mac needed).
#
#   tests/metal/run.sh [MLX_SRC]        (or env MLX_SRC)
#
# MLX_SRC is an MLX source tree containing mlx/backend/metal/kernels (the
# patched tree build.sh creates, ~/.cache/turboquant-mlx/work/mlx). If that
# tree does not contain our kernels yet, a copy of its kernel directory with
# mlx_overlay/ copied over it is tested instead (said so in the log).
#
# Steps: prerequisites, type check of every instantiation (C++ mode and
# C++ for OpenCL mode), bindings/name
# check, CPU execution of every kernel under 4 lane schedules vs references,
# the attention kernels' outputs vs the patched wheel's CPU backend
# (compare_cpu_wheel.py; skipped without a wheel), the same under
# AddressSanitizer, planted bugs. Env: BUILD (default
# tests/metal/build), PLANTED=0 skips the planted-bug step, ASAN=0 skips
# ASan, JOBS (default 2).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
MLX_SRC=${1:-${MLX_SRC:-$HOME/.cache/turboquant-mlx/work/mlx}}
BUILD=${BUILD:-$HERE/build}
JOBS=${JOBS:-2}
t0=$(date +%s)
step() { echo; echo "== [$(( $(date +%s) - t0 ))s] $*"; }

step "prerequisites"
export CLANGXX=${CLANGXX:-clang++-19}
if ! command -v "$CLANGXX" >/dev/null || ! command -v python3 >/dev/null; then
  SUDO=; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq clang-19 libclang-rt-19-dev python3 >/dev/null
fi
$CLANGXX --version | head -1

[ -d "$MLX_SRC/mlx/backend/metal/kernels" ] || { echo "no MLX kernel tree at $MLX_SRC"; exit 2; }
rm -rf "$BUILD"; mkdir -p "$BUILD"
ROOT=$MLX_SRC
if [ ! -f "$MLX_SRC/mlx/backend/metal/kernels/sdpa_vector_turbo.h" ]; then
  echo "$MLX_SRC has no TurboQuant kernels: testing its kernels + $REPO/mlx_overlay"
  ROOT=$BUILD/tree
  mkdir -p "$ROOT/mlx/backend/metal"
  cp -r "$MLX_SRC/mlx/backend/metal/kernels" "$ROOT/mlx/backend/metal/"
  cp -r "$REPO/mlx_overlay/mlx" "$ROOT/"
else
  for f in $(cd "$REPO/mlx_overlay" && find mlx/backend/metal -type f); do
    cmp -s "$REPO/mlx_overlay/$f" "$MLX_SRC/$f" || echo "note: $MLX_SRC/$f differs from mlx_overlay/$f (testing the tree)"
  done
fi
echo "kernel tree: $ROOT"
PP=$BUILD/pp
python3 "$HERE/tools/msl_prepass.py" "$ROOT" "$PP"

step "type check (every instantiation, -Werror=implicit-float-conversion)"
"$HERE/check_kernels.sh" "$ROOT" "$PP"

step "type check as C++ for OpenCL 2021 (clcpp: OpenCL address-space rules, no double)"
"$HERE/check_kernels.sh" --clcpp "$ROOT" "$BUILD/pp_cl"
"$HERE/as_probe.sh"   # what each mode does with address-space cases (must not change)

step "lint: what C++ mode accepts but Metal rejects (double, literals, static, ...)"
python3 "$HERE/lint_kernels.py" "$ROOT/mlx/backend/metal/kernels"

step "bindings: host kernel names == instantiations, TURBO_* indices"
HOST_ROOT=$ROOT; [ -f "$ROOT/mlx/backend/metal/turboquant.cpp" ] || HOST_ROOT=$REPO/mlx_overlay
python3 "$HERE/check_bindings.py" "$ROOT" "$PP" "$HOST_ROOT" "$BUILD"

step "host dispatch: turboquant.cpp against the patched MLX headers (metal-cpp stubbed)"
if grep -q QuantizedScaledDotProductAttention "$MLX_SRC/mlx/fast_primitives.h" 2>/dev/null \
   && [ -f "$MLX_SRC/mlx/backend/metal/turboquant.cpp" ]; then
  HT=$MLX_SRC
else
  # unpatched tree: apply our overlay and patches to a copy of its mlx/ sources
  HT=$BUILD/hosttree; mkdir -p "$HT"
  cp -r "$MLX_SRC/mlx" "$HT/" && cp -r "$REPO/mlx_overlay/mlx" "$HT/"
  # (GIT_CEILING_DIRECTORIES: $HT may lie inside this repository's work tree)
  ( cd "$HT" && for p in "$REPO"/patches/*.patch; do
      GIT_CEILING_DIRECTORIES=$(dirname "$HT") git apply --include='mlx/*' "$p" || exit 1; done ) \
    || { echo "  could not apply patches/ to a copy of $MLX_SRC"; HT=; }
fi
[ -z "$HT" ] || "$HERE/host_check/check_host.sh" "$HT"

step "build CPU execution tests (plain$( [ "${ASAN:-1}" = 0 ] || echo ' + ASan'))"
build() { # TEST OUTDIR [SAN] [extra]
  mkdir -p "$2"; ln -sfn "$PP" "$2/pp"
  SAN=${3:-} EXTRA_FLAGS=${4:-} "$HERE/build_exec.sh" "$1" "$ROOT" "$2" > "$2/$1${3:+_$3}.build.log" 2>&1 \
    || { echo "build of $1 ${3:-} failed:"; tail -30 "$2/$1${3:+_$3}.build.log"; return 1; }
}
pids=()
build turbo_attn_exec "$BUILD/exec" & pids+=($!)
build turbo_quant_exec "$BUILD/exec_q" & pids+=($!)
for p in "${pids[@]}"; do wait "$p"; done
if [ "${ASAN:-1}" != 0 ]; then
  pids=()
  build turbo_attn_exec "$BUILD/asan" asan -DTURBO_EXEC_SMALL & pids+=($!)
  build turbo_quant_exec "$BUILD/asan_q" asan & pids+=($!)
  for p in "${pids[@]}"; do wait "$p"; done
fi

step "execute: attention kernels (4 schedules, float64 reference)"
rm -rf "$BUILD/dump"; mkdir -p "$BUILD/dump"
TURBO_EXEC_DUMP="$BUILD/dump" "$BUILD/exec/turbo_attn_exec" all | tee "$BUILD/attn.log" | grep -v '^OK' || true
[ "${PIPESTATUS[0]}" = 0 ] || { echo "attention execution FAILED"; exit 1; }

step "attention kernels vs the patched wheel's CPU backend (same packed data)"
VPY=${TURBOQUANT_VENV:-$REPO/.venv}/bin/python
if [ -x "$VPY" ] && "$VPY" -c "import mlx.core as mx; mx.fast.quantized_scaled_dot_product_attention" 2>/dev/null; then
  "$VPY" "$HERE/compare_cpu_wheel.py" "$BUILD/dump" || { echo "CPU-wheel comparison FAILED"; exit 1; }
else
  echo "skipped: no patched wheel at $VPY (run ./build.sh first)"
fi
step "execute: quantize / dequantize kernels (4 schedules, bit-exact encoder)"
"$BUILD/exec_q/turbo_quant_exec" all | tee "$BUILD/quant.log" | grep -v '^OK' || true
[ "${PIPESTATUS[0]}" = 0 ] || { echo "quantize execution FAILED"; exit 1; }

if [ "${ASAN:-1}" != 0 ]; then
  step "execute under AddressSanitizer (one schedule; attention: reduced build, all its cases; quantize: all)"
  "$BUILD/asan/turbo_attn_exec_asan" fwd | tee "$BUILD/attn_asan.log" | grep -v '^OK' || true
  [ "${PIPESTATUS[0]}" = 0 ] || { echo "attention under ASan FAILED"; exit 1; }
  "$BUILD/asan_q/turbo_quant_exec_asan" fwd | tee "$BUILD/quant_asan.log" | grep -v '^OK' || true
  [ "${PIPESTATUS[0]}" = 0 ] || { echo "quantize under ASan FAILED"; exit 1; }
fi

if [ "${PLANTED:-1}" != 0 ]; then
  step "planted bugs (each must be caught)"
  python3 "$HERE/planted_bugs.py" "$ROOT" "$BUILD/planted"
fi

step "all green"
