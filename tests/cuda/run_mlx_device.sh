#!/usr/bin/env bash
# The patched MLX with its CUDA backend, built and tested on a CUDA machine
# without network (the device; docs/cuda.md, "Building MLX with CUDA offline").
# Needs .cuda_deps/ from `tools/cuda_build_on_device.sh prepare` (carried).
#
#   tests/cuda/run_mlx_device.sh start        # ./build.sh --cuda --offline, in the background
#   tests/cuda/run_mlx_device.sh wait [S]     # until the build ends, at most S seconds
#   tests/cuda/run_mlx_device.sh install      # instead of start + wait: the wheel built
#                                             # off the device (tools/cuda_wheel_here.sh,
#                                             # carry dist/cuda), installed
#   tests/cuda/run_mlx_device.sh test         # ./test.sh against the CUDA wheel (GPU default device)
#   tests/cuda/run_mlx_device.sh plain [ARGS] # the same tests without pytest + the upstream unittest
#   tests/cuda/run_mlx_device.sh bench [ARGS] # benchmarks/gpu_attention.py --out $OUT
#   tests/cuda/run_mlx_device.sh e2e [ARGS]   # benchmarks/e2e_generate.py --out $OUT (installs
#                                             # the carried dist/mlx_lm-*.whl with --no-deps)
#   tests/cuda/run_mlx_device.sh profile [ARGS] # benchmarks/decode_profile.py, the same way
#   tests/cuda/run_mlx_device.sh trace [ARGS]   # benchmarks/decode_trace.py (kernels per step), the same way
#   tests/cuda/run_mlx_device.sh memory [ARGS]  # benchmarks/prefill_memory.py (transient memory per chunk)
#   tests/cuda/run_mlx_device.sh batch [ARGS]   # benchmarks/batch_generate.py (batched generation)
#   tests/cuda/run_mlx_device.sh grid [ARGS]    # benchmarks/gpu_attention.py --grid (gpu_decode_*.json)
#   tests/cuda/run_mlx_device.sh pytest [ARGS]  # the op's test modules on the GPU (no mlx-lm tests)
#   tests/cuda/run_mlx_device.sh mlxlm [ARGS]   # the mlx-lm tests (tests/mlx_lm) on the GPU, with the
#                                             # carried dist/mlx_lm-*.whl (TQ_DEADLINE=S: stop
#                                             # after S seconds with the failures so far)
#   tests/cuda/run_mlx_device.sh sanitize     # compute-sanitizer memcheck over the attention tests
#   tests/cuda/run_mlx_device.sh backtrace    # cuda-gdb backtrace of a crashing ./test.sh run
#
# A build stopped by a call's time limit resumes where it stopped when started
# again on the same machine: build.sh keeps the work tree and its build
# directory ($TURBOQUANT_CACHE/work/mlx).
set -uo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$ROOT"
export TURBOQUANT_CACHE="${TURBOQUANT_CACHE:-/tmp/tq-cache}"
# The image's Python environment (PyTorch's venv: numpy, pytest, setuptools);
# the wheel is installed into it.
export TURBOQUANT_VENV="${TURBOQUANT_VENV:-$(python3 -c 'import sys; print(sys.prefix)')}"
export MLX_CUDA_ARCHITECTURES="${MLX_CUDA_ARCHITECTURES:-90a}"
# Outside the repository copy, which the next call may replace while a
# build started by this one is still running.
export TURBOQUANT_DIST="${TURBOQUANT_DIST:-/tmp/tq-dist}"
export PYTHONUNBUFFERED=1
# The image sets CC/CXX/CUDAHOSTCXX to /opt/gcc, whose libstdc++ is linked
# statically: libmlx.so then carries a second libstdc++ and MLX segfaulted in
# iostream code (benchmarks/cuda_runs.md, "The CUDA build on the H100",
# item 5). Use the system compilers.
if [[ -x /usr/bin/g++ && -z "${TQ_KEEP_CXX:-}" ]]; then
  export CC=/usr/bin/gcc CXX=/usr/bin/g++ CUDAHOSTCXX=/usr/bin/g++
fi
OUTDIR="${OUT:-/tmp/tq-out}"
LOG=/tmp/tq-build.log
mkdir -p "$OUTDIR"

# cuDNN and the CUDA libraries from PyPI (next to PyTorch) at run time.
nvlibs="$(python3 - <<'EOF' 2>/dev/null
import glob, os
try:
    import nvidia
    roots = list(nvidia.__path__)
except ImportError:
    roots = []
print(":".join(sorted({os.path.dirname(p) for r in roots for p in glob.glob(r + "/*/lib/*.so*")})))
EOF
)"
export LD_LIBRARY_PATH="${nvlibs}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

progress() {
  local log
  log="$(ls -t "$TURBOQUANT_CACHE"/work/mlx/build/temp*/*/.ninja_log 2>/dev/null | head -1)"
  [[ -n "$log" ]] && echo "  ninja: $(($(wc -l <"$log") - 1)) steps done"
  grep -v "^WARNING: Location" "$LOG" 2>/dev/null | tail -4
}

# The patched mlx-lm is pure Python: the wheel built here (./build.sh) is
# carried in dist/ (MLX_LM_WHEEL names another, e.g. an earlier tree's for an
# A-B run); its requirements are in the device image.
install_mlx_lm() {
  "$TURBOQUANT_VENV/bin/python" -m pip install -q --no-deps --force-reinstall \
    ${MLX_LM_WHEEL:-dist/mlx_lm-*.whl}
}

case "${1:-}" in
  start)
    [[ -d .cuda_deps/mlx.git ]] || { echo "no .cuda_deps: run tools/cuda_build_on_device.sh prepare here and carry it" >&2; exit 1; }
    nvidia-smi -L
    echo "CC=${CC:-} CXX=${CXX:-} CUDAHOSTCXX=${CUDAHOSTCXX:-} LDFLAGS=${LDFLAGS:-} CXXFLAGS=${CXXFLAGS:-}"
    "${CXX:-c++}" --version | head -1
    # Build from a copy: the next call may replace this repository copy while
    # the build (its final pip install included) still runs.
    rm -rf /tmp/tq-src && cp -r "$ROOT" /tmp/tq-src && cd /tmp/tq-src || exit 1
    setsid nohup bash -c "./build.sh --cuda --offline --wheels .cuda_deps/wheels \
        --mlx-src .cuda_deps/mlx.git --no-mlx-lm --venv '$TURBOQUANT_VENV' >'$LOG' 2>&1;
        echo \"BUILD EXIT \$?\" >>'$LOG'" </dev/null >/dev/null 2>&1 &
    echo "build started (log $LOG)"
    ;;
  wait)
    deadline=$((SECONDS + ${2:-540}))
    while ! grep -q "^BUILD EXIT" "$LOG" 2>/dev/null && ((SECONDS < deadline)); do
      sleep 15
      echo "[$(date +%T)] $(progress | head -1)"
    done
    progress
    cp "$LOG" "$OUTDIR/build.log" 2>/dev/null
    grep -q "^BUILD EXIT 0" "$LOG"
    ;;
  install)
    wheel="$(ls dist/cuda/mlx-*-cp312-*.whl 2>/dev/null | head -1)"
    [[ -n "$wheel" ]] || { echo "no dist/cuda/mlx-*-cp312-*.whl: run tools/cuda_wheel_here.sh here and carry dist/cuda" >&2; exit 1; }
    nvidia-smi -L
    echo "installing $wheel (commit $(cat dist/cuda/COMMIT 2>/dev/null || echo unknown))"
    "$TURBOQUANT_VENV/bin/python" -m pip install -q --no-deps --force-reinstall "$wheel" || exit 1
    "$TURBOQUANT_VENV/bin/python" tools/smoke_test.py
    ;;
  test)
    shift
    set -o pipefail
    # Printing an MLX array segfaulted inside libmlx.so on the device image
    # (2026-11-24, std::ostream << double); pytest's assertion rewriting prints
    # the operands of a failing assert, which turned every test failure into a
    # crash of the whole run. --assert=plain keeps failures readable.
    for e in "mx.array([1.5])" "mx.array([3])" "mx.array([1.5], mx.bfloat16)"; do
      timeout 60 "$TURBOQUANT_VENV/bin/python" -c "import mlx.core as mx; print($e)" >/dev/null 2>&1
      echo "print($e) in a fresh process: exit $?" | tee -a "$OUTDIR/test_gpu.log"
    done
    TURBOQUANT_SKIP_METAL=1 ./test.sh --assert=plain -rf "$@" 2>&1 | tee -a "$OUTDIR/test_gpu.log"
    ;;
  plain)
    shift
    # The suite without pytest (tests/cuda/run_plain.py) and the upstream
    # unittest with unittest: every pytest process segfaulted on the device
    # image (benchmarks/cuda_runs.md, "The CUDA build on the H100", item 5).
    set -o pipefail
    "$TURBOQUANT_VENV/bin/python" tests/cuda/run_plain.py "$@" 2>&1 | tee "$OUTDIR/plain_gpu.log"
    rc=$?
    (cd "$TURBOQUANT_CACHE/work/mlx/python/tests" &&
      "$TURBOQUANT_VENV/bin/python" -m unittest -v test_fast_turboquant) 2>&1 |
      tee "$OUTDIR/unittest_gpu.log" | tail -15
    exit $((rc | $?))
    ;;
  bench)
    shift
    # MLX's own default (cuDNN SDPA on) unless MLX_CUDA_USE_CUDNN_SDPA is set;
    # =0 times MLX's sdpa_vector / op-composed path (the H100 tables).
    "$TURBOQUANT_VENV/bin/python" benchmarks/gpu_attention.py --out "$OUTDIR" "$@" 2>&1 |
      tee "$OUTDIR/bench_gpu.log"
    ;;
  grid)
    shift
    "$TURBOQUANT_VENV/bin/python" benchmarks/gpu_attention.py --grid --out "$OUTDIR" "$@" 2>&1 |
      tee "$OUTDIR/grid_gpu.log" | grep -v '^{'
    ;;
  pytest)
    shift
    set -o pipefail
    TURBO_LARGE_TESTS=1 "$TURBOQUANT_VENV/bin/python" -m pytest tests/test_large_offsets.py \
      tests/test_attention.py tests/test_position_shift.py tests/test_errors.py tests/test_format.py tests/test_properties.py tests/test_cache_update.py tests/test_prefill_route.py -q -p no:cacheprovider --assert=plain -rfx "$@" 2>&1 |
      tee "$OUTDIR/pytest_gpu.log" | tail -25
    ;;
  mlxlm)
    shift
    set -o pipefail
    install_mlx_lm || exit 1
    # The cache's own tests first, the subprocess-heavy CLI tests (each test
    # starts `python -m mlx_lm`, which loads the CUDA backend) last.
    # --timeout (pytest-timeout, in the device image) bounds a stuck test.
    # TQ_DEADLINE=S interrupts pytest after S seconds (SIGINT), so that it
    # still prints the failures so far: a call's limit kills it silently.
    ${TQ_DEADLINE:+timeout -s INT -k 20 "$TQ_DEADLINE"} \
      "$TURBOQUANT_VENV/bin/python" -m pytest tests/mlx_lm/test_turbo_kv_cache.py \
      tests/mlx_lm/test_turbo_rotary_shift.py tests/mlx_lm/test_batch_turbo.py \
      tests/mlx_lm/test_server_batching.py tests/mlx_lm/test_distributed.py \
      tests/mlx_lm/test_cli.py \
      -q -p no:cacheprovider --assert=plain -rf --tb=short --timeout 240 "$@" 2>&1 |
      tee "$OUTDIR/pytest_mlx_lm_gpu.log" | tail -25
    ;;
  e2e | profile | trace | memory | batch)
    script=benchmarks/e2e_generate.py
    [[ "$1" == profile ]] && script=benchmarks/decode_profile.py
    [[ "$1" == trace ]] && script=benchmarks/decode_trace.py
    [[ "$1" == memory ]] && script=benchmarks/prefill_memory.py
    [[ "$1" == batch ]] && script=benchmarks/batch_generate.py
    shift
    install_mlx_lm || exit 1
    "$TURBOQUANT_VENV/bin/python" "$script" --out "$OUTDIR" "$@" 2>&1 |
      tee "$OUTDIR/$(basename "$script" .py)_gpu.log"
    ;;
  sanitize)
    shift
    TURBOQUANT_SKIP_METAL=1 compute-sanitizer --tool memcheck --leak-check no \
      "$TURBOQUANT_VENV/bin/python" -m pytest tests/test_attention.py -q -x -p no:cacheprovider "$@" 2>&1 |
      tee "$OUTDIR/sanitize.log" | tail -40
    ;;
  backtrace)
    shift
    cuda-gdb -batch -ex run -ex bt -ex "info threads" --args \
      "$TURBOQUANT_VENV/bin/python" -m pytest tests -q -x -p no:cacheprovider "$@" 2>&1 |
      tee "$OUTDIR/backtrace.log" | tail -60
    ;;
  *)
    sed -n 2,18p "$0"
    exit 2
    ;;
esac
