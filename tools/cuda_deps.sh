# Sourced by ./build.sh --cuda (bash). Points CMake's FetchContent at local
# copies of MLX's CUDA dependencies (CCCL v3.1.3, NVTX 3.1, cudnn-frontend
# v1.16.0, CUTLASS v4.4.2) and at fmt 12.1.0 instead of the system fmt, so the
# CUDA build needs no network at configure time. See docs/cuda.md.
#
# Uses (in build.sh's scope): CACHE, ROOT, CMAKE_ARGS_LIST.
# Deps come from $TURBOQUANT_CUDA_DEPS (an unpacked dir), else are unpacked
# from $ROOT/.cuda_deps/mlx_cuda_deps.tar.xz, else prepared with
# tools/cuda_build_on_device.sh prepare-deps (git mirrors or network).
#
# Why not the system fmt: Debian/Ubuntu's fmt 9 fails under nvcc 13 in
# mlx/backend/cuda/lru_cache.h ("call to consteval function ... did not
# produce a valid constant expression"); MLX pins fmt 12.1.0.
# Why overrides for all four: build.sh sets FETCHCONTENT_TRY_FIND_PACKAGE_MODE
# =ALWAYS, and CUDA 13 ships CMake configs for CCCL, so find_package() would
# win and leave cccl_SOURCE_DIR empty; a FETCHCONTENT_SOURCE_DIR_<NAME>
# override takes priority over find_package() (checked with CMake 3.25).

_tq_cuda_deps="${TURBOQUANT_CUDA_DEPS:-$CACHE/deps/cuda}"
if [[ ! -d "$_tq_cuda_deps/cccl/include/cuda" ]]; then
  if [[ ! -f "$ROOT/.cuda_deps/mlx_cuda_deps.tar.xz" ]]; then
    echo "    preparing offline CUDA dependencies (tools/cuda_build_on_device.sh prepare-deps)"
    bash "$ROOT/tools/cuda_build_on_device.sh" prepare-deps "$ROOT/.cuda_deps" >/dev/null ||
      die "could not prepare the CUDA dependencies (see docs/cuda.md)"
  fi
  mkdir -p "$_tq_cuda_deps"
  xz -dc "$ROOT/.cuda_deps/mlx_cuda_deps.tar.xz" | tar x -C "$_tq_cuda_deps" ||
    die "could not unpack $ROOT/.cuda_deps/mlx_cuda_deps.tar.xz"
fi
# shellcheck disable=SC2207
CMAKE_ARGS_LIST+=($(bash "$ROOT/tools/cuda_build_on_device.sh" cmake-args "$_tq_cuda_deps"))
unset _tq_cuda_deps

# cuDNN: MLX's CMake looks in the CUDA toolkit and in $CUDNN_PATH. Where cuDNN
# came from PyPI (nvidia-cudnn-cu13, e.g. next to PyTorch), point it there.
if [[ -z "${CUDNN_PATH:-}" ]] && ! compgen -G "$(dirname "$(dirname "$(command -v nvcc)")")/include/cudnn*.h" >/dev/null; then
  _tq_cudnn="$("$VPY" -c 'import nvidia.cudnn, os; print(list(nvidia.cudnn.__path__)[0])' 2>/dev/null || true)"
  if [[ -n "$_tq_cudnn" ]]; then
    export CUDNN_PATH="$_tq_cudnn"
    echo "    cuDNN from $CUDNN_PATH"
  fi
  unset _tq_cudnn
fi
