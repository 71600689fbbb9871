#!/usr/bin/env bash
# The patched MLX's CUDA wheel built on a machine without a GPU (docs/cuda.md,
# "Building MLX with CUDA offline"), so that a device session installs it
# instead of spending its first ~9 minutes on the build.
#
#   tools/cuda_wheel_here.sh [OUTDIR]      (default dist/cuda; git-ignored)
#
# Needs here: nvcc (CUDA 13), Python 3.12 (the device's; PYTHON312 names it,
# default: pyenv's), PyPI, .cuda_deps/ (tools/cuda_build_on_device.sh
# prepare). The CUDA libraries that are not in a compiler-only toolkit
# (cuBLAS, cuFFT, NVRTC, cuDNN) come from the PyPI wheels of the versions the
# device's PyTorch pins (cuda-toolkit 13.0.2, nvidia-cudnn-cu13 9.19.0.56),
# assembled with nvcc's toolkit into one CUDA root; libcuda.so, the driver,
# is linked against an empty stub (the device's driver resolves it).
# sm_90a only (MLX_CUDA_ARCHITECTURES). About an hour on 2 cores.
# Then on the device: tests/cuda/run_mlx_device.sh install (carry dist/cuda).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
OUTDIR="$(realpath -m "${1:-$ROOT/dist/cuda}")"
WORK="${TQ_CUDA_WHEEL_WORK:-$HOME/.cache/turboquant-mlx/cuda-wheel}"
PY312="${PYTHON312:-$(ls -d "$HOME"/.pyenv/versions/3.12.*/bin/python 2>/dev/null | tail -1)}"
NVCC="$(command -v nvcc || true)"
die() { echo "cuda_wheel_here.sh: $*" >&2; exit 1; }
[[ -x "$PY312" ]] || die "no Python 3.12 (set PYTHON312)"
[[ -n "$NVCC" ]] || die "no nvcc on PATH"
[[ -d "$ROOT/.cuda_deps/mlx.git" ]] || die "no .cuda_deps: run tools/cuda_build_on_device.sh prepare"
mkdir -p "$WORK" "$OUTDIR"

# The build environment: Python 3.12 with the build requirements and the
# CUDA libraries' wheels.
venv="$WORK/venv"
[[ -x "$venv/bin/python" ]] || "$PY312" -m venv "$venv"
"$venv/bin/python" -m pip install -q --disable-pip-version-check \
  "cuda-toolkit[cublas,cudart,cufft,nvrtc,nvtx]==13.0.2" nvidia-cudnn-cu13==9.19.0.56 \
  numpy "setuptools>=80" wheel typing_extensions pytest "cmake>=3.30" ninja \
  "$ROOT"/.cuda_deps/wheels/nanobind-*.whl

# One CUDA root: nvcc's toolkit plus the wheels' headers and libraries.
tk="$WORK/toolkit"
rm -rf "$tk"
cp -a "$(realpath "$(dirname "$NVCC")/..")" "$tk"
tgt="$tk/targets/x86_64-linux"
nv="$("$venv/bin/python" -c 'import nvidia, os; print(list(nvidia.__path__)[0])')"
for d in "$nv/cu13" "$nv/cudnn"; do
  cp -an "$d/include/." "$tgt/include/"
  cp -an "$d"/lib/*.so.* "$tgt/lib/"
done
(
  cd "$tgt/lib"
  for f in libcublas.so.* libcublasLt.so.* libcufft.so.* libnvrtc.so.* libcudnn*.so.9; do
    ln -sf "$f" "${f%%.so.*}.so"
  done
  mkdir -p stubs
  echo "" | "${CC:-gcc}" -shared -Wl,-soname,libcuda.so.1 -o stubs/libcuda.so -x c -
)

# The build itself, from a copy of the committed tree.
src="$WORK/src"
rm -rf "$src" && mkdir -p "$src"
git -C "$ROOT" archive HEAD | tar x -C "$src"
cp -r "$ROOT/.cuda_deps" "$src/"
(
  cd "$src"
  export PATH="$venv/bin:$tk/bin:$PATH" CUDAToolkit_ROOT="$tk" CUDA_HOME="$tk" CUDNN_PATH="$tk"
  export TURBOQUANT_CACHE="$WORK/cache" TURBOQUANT_DIST="$OUTDIR"
  export MLX_CUDA_ARCHITECTURES="${MLX_CUDA_ARCHITECTURES:-90a}"
  ./build.sh --cuda --offline --wheels .cuda_deps/wheels --mlx-src .cuda_deps/mlx.git \
    --no-mlx-lm --no-install --skip-deps --venv "$venv"
)
git -C "$ROOT" rev-parse HEAD >"$OUTDIR/COMMIT"
ls -la "$OUTDIR"
