#!/usr/bin/env bash
# The TurboQuant CPU kernels under AddressSanitizer + UBSan on malformed
# packed data (random and constant bit patterns, NaN / inf / huge / denormal
# scales, non-finite queries, masks and sinks), every mode pair, head dim and
# scale dtype, decode (split-K) and prefill shapes, strided cache views:
#
#   tools/cpu_sanitizer.sh [--planted] [MLX_TREE]
#
# Builds tests/cpu_asan/tq_cpu_asan.cpp, which compiles the kernel sources of
# mlx_overlay/mlx/backend/cpu/ into the harness (no MLX build or library is
# needed: only the headers of a patched MLX tree, by default build.sh's work
# tree), and runs it; any sanitizer report or wrong benign result fails.
# --planted first checks the harness itself: a copy of the attention kernel
# that reads one key past the cache must be caught (twice the time). Takes
# about 45 s on this 2-core machine (compile ~35 s, run ~10 s); ./test.sh
# runs it (TURBOQUANT_SKIP_CPU_ASAN=1 skips it).
# Env: CXX (default g++), BUILD (default a temporary directory), KEEP_BUILD.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
CACHE="${TURBOQUANT_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/turboquant-mlx}"
PLANTED=0
TREE="$CACHE/work/mlx"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --planted) PLANTED=1; shift ;;
    -h|--help) sed -n 2,18p "$0"; exit 0 ;;
    *) TREE="$1"; shift ;;
  esac
done
if ! grep -q QuantizedScaledDotProductAttention "$TREE/mlx/fast_primitives.h" 2>/dev/null; then
  echo "cpu_sanitizer: $TREE is not a patched MLX tree (run ./build.sh first, or pass one)" >&2
  exit 2
fi
CXX="${CXX:-g++}"
BUILD="${BUILD:-$(mktemp -d)}"
[[ -n "${KEEP_BUILD:-}" ]] || trap 'rm -rf "$BUILD"' EXIT
# -no-pie / --gc-sections / unresolved symbols ignored: the MLX glue of the
# kernel files (eval_cpu, quantize_cpu) is compiled but never called, so what
# it references from libmlx is left out.
FLAGS=(-std=c++20 -O1 -g -fsanitize=address,undefined -fno-sanitize-recover=all
  -fno-omit-frame-pointer -ffunction-sections -fdata-sections -DFMT_HEADER_ONLY=1)
LINK=(-fsanitize=address,undefined -no-pie -Wl,--gc-sections -Wl,--unresolved-symbols=ignore-all -lpthread)
build() { # OUT [extra include dir]
  local inc=()
  [[ -z "${2:-}" ]] || inc=(-I"$2")
  "$CXX" "${FLAGS[@]}" "${inc[@]}" -I"$ROOT/mlx_overlay" -I"$TREE" \
    -c "$ROOT/tests/cpu_asan/tq_cpu_asan.cpp" -o "$1.o"
  "$CXX" "$1.o" -o "$1" "${LINK[@]}"
}
t0=$(date +%s)
if [[ $PLANTED -eq 1 ]]; then
  echo "== planted bug: the attention kernel reads one key past the cache"
  P="$BUILD/planted/mlx/backend/cpu"
  mkdir -p "$P"
  sed 's/for (int j = j0; j < j1; ++j) {/for (int j = j0; j <= j1; ++j) {/' \
    "$ROOT/mlx_overlay/mlx/backend/cpu/turboquant_attention.cpp" > "$P/turboquant_attention.cpp"
  cmp -s "$P/turboquant_attention.cpp" "$ROOT/mlx_overlay/mlx/backend/cpu/turboquant_attention.cpp" &&
    { echo "could not plant the bug (the loop changed)"; exit 1; }
  build "$BUILD/planted_tq" "$BUILD/planted"
  if ASAN_OPTIONS=detect_leaks=0 "$BUILD/planted_tq" > "$BUILD/planted.log" 2>&1; then
    echo "planted bug NOT caught"; tail -5 "$BUILD/planted.log"; exit 1
  fi
  grep -m1 -o 'ERROR: AddressSanitizer: [a-z-]*\|FAIL .*' "$BUILD/planted.log" | sed 's/^/caught: /'
fi
echo "== build ($CXX, ASan + UBSan) against $TREE"
build "$BUILD/tq_cpu_asan"
echo "   built in $(( $(date +%s) - t0 ))s"
echo "== run"
ASAN_OPTIONS=detect_leaks=0 "$BUILD/tq_cpu_asan"
echo "== passed in $(( $(date +%s) - t0 ))s"
