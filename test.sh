#!/usr/bin/env bash
# Runs the whole test suite against the patched MLX installed by ./build.sh.
#   ./test.sh                 # everything
#   ./test.sh -k attention    # extra arguments go to pytest
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="${TURBOQUANT_VENV:-$ROOT/.venv}"
CACHE="${TURBOQUANT_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/turboquant-mlx}"
[[ -x "$VENV/bin/python" ]] || { echo "test.sh: no venv at $VENV: run ./build.sh first" >&2; exit 1; }

# The patch series applies in order to the pinned MLX tag (and is reported for
# MLX main when the source has it).
echo "==> patch series (tools/check_series.sh)"
"$ROOT/tools/check_series.sh"

# Metal kernels, checked on Linux: type-check + CPU execution (docs/metal.md).
if [[ -x "$ROOT/tests/metal/run.sh" && -z "${TURBOQUANT_SKIP_METAL:-}" ]]; then
  echo "==> Metal kernel verification (tests/metal/run.sh)"
  "$ROOT/tests/metal/run.sh" "$CACHE/work/mlx"
fi

# The CPU kernels under ASan + UBSan on malformed packed data (~45 s).
if [[ -z "${TURBOQUANT_SKIP_CPU_ASAN:-}" ]]; then
  echo "==> CPU kernels under ASan + UBSan (tools/cpu_sanitizer.sh)"
  "$ROOT/tools/cpu_sanitizer.sh" "$CACHE/work/mlx"
fi

# The CUDA kernels executed on the CPU by an emulator of warps, shared
# memory and tensor-core fragments, against float64, and its planted bugs
# (~10 min; docs/cuda.md, "The kernels on the CPU").
if [[ -z "${TURBOQUANT_SKIP_CUDA_EMU:-}" ]]; then
  echo "==> CUDA kernels on the CPU (tests/cuda/emu/run.sh)"
  PYTHON="$VENV/bin/python" "$ROOT/tests/cuda/emu/run.sh"
fi

echo "==> pytest against $("$VENV/bin/python" -c 'import mlx.core as mx, os; print("mlx", mx.__version__, os.path.dirname(mx.__file__))')"
cd "$ROOT"
# Our suite plus the upstream-style unittest that the patch series adds to MLX.
UPSTREAM_TEST="$CACHE/work/mlx/python/tests/test_fast_turboquant.py"
[[ -f "$UPSTREAM_TEST" ]] || UPSTREAM_TEST=""
exec "$VENV/bin/python" -m pytest tests $UPSTREAM_TEST -q -p no:cacheprovider "$@"
