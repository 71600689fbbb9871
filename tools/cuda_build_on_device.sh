#!/usr/bin/env bash
# Offline CUDA build of the patched MLX (docs/cuda.md, "Building MLX with
# CUDA offline").
#
#   tools/cuda_build_on_device.sh prepare [DIR]
#       Here, with network or the git mirrors: writes DIR (default
#       .cuda_deps, git-ignored via .git/info/exclude) with
#         mlx_src.tar.xz        MLX v0.32.1 sources (no docs/examples)
#         mlx_cuda_deps.tar.xz  CCCL v3.1.3 headers, CUTLASS v4.4.2 headers,
#                               cudnn-frontend v1.16.0, NVTX 3.1, fmt 12.1.0,
#                               nlohmann/json v3.11.3 (~3 MB compressed)
#         debs/                 OpenBLAS + LAPACKE (Debian bookworm) for a
#                               machine without a system BLAS (~13 MB)
#   tools/cuda_build_on_device.sh prepare-deps [DIR]
#       Only mlx_cuda_deps.tar.xz (what tools/cuda_deps.sh needs).
#   tools/cuda_build_on_device.sh build [DIR] [--jobs N] [--arch A]
#                                       [--targets "t1 t2" | turbo] [--deadline S]
#       On the CUDA machine (no network): unpacks, copies mlx_overlay/,
#       applies patches/NNNN-*.patch, configures with FetchContent pointed at
#       the unpacked sources, and runs ninja (all targets, or --targets, until
#       --deadline seconds if given). Work dir: $TQ_CUDA_WORK (/tmp/tqcuda).
#   tools/cuda_build_on_device.sh cmake-args DIR
#       Prints the -D overrides for an existing unpacked deps dir (used by
#       tools/cuda_deps.sh for ./build.sh --cuda).
set -uo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cmd="${1:-}"
shift || true

MIRRORS="${TQ_MIRRORS:-/work/.mirror}"
CCCL_TAG=v3.1.3
CUTLASS_TAG=v4.4.2
CUDNN_FE_TAG=v1.16.0
FMT_TAG=12.1.0
JSON_TAG=v3.11.3
NVTX_TAG=v3.1.1

die() { echo "error: $*" >&2; exit 1; }

# git archive of REPO at TAG (from the local mirror when present, else a
# shallow clone) into DEST/NAME.
get_src() {
  local repo="$1" tag="$2" name="$3" dest="$4"
  shift 4
  local mirror="$MIRRORS/${repo/\//+}/repo"
  if [[ -d "$mirror" ]] && git -C "$mirror" rev-parse -q --verify "$tag^{commit}" >/dev/null; then
    git -C "$mirror" archive --prefix="$name/" "$tag" -- "$@" | tar x -C "$dest"
  elif [[ -d "$mirror" ]]; then
    echo "  $repo: tag $tag not in mirror, using its HEAD" >&2
    git -C "$mirror" archive --prefix="$name/" HEAD -- "$@" | tar x -C "$dest"
  else
    local tmp
    tmp="$(mktemp -d)"
    git clone -q --depth 1 --branch "$tag" "https://github.com/$repo.git" "$tmp/r" ||
      die "cannot get $repo $tag"
    git -C "$tmp/r" archive --prefix="$name/" HEAD -- "$@" | tar x -C "$dest"
    rm -rf "$tmp"
  fi
}

prepare() {
  local out="${1:-$ROOT/.cuda_deps}"
  mkdir -p "$out"
  mkdir -p "$ROOT/.git/info"
  grep -qxF "/.cuda_deps/" "$ROOT/.git/info/exclude" 2>/dev/null ||
    echo "/.cuda_deps/" >>"$ROOT/.git/info/exclude"
  local tmp
  tmp="$(mktemp -d)"
  echo "== sources into $tmp"
  get_src NVIDIA/cccl "$CCCL_TAG" cccl-src "$tmp" libcudacxx/include cub/cub thrust/thrust
  # Same layout as the CCCL release zip MLX downloads: include/{cuda,nv,cub,thrust}.
  mkdir -p "$tmp/cccl/include"
  mv "$tmp/cccl-src/libcudacxx/include/cuda" "$tmp/cccl-src/libcudacxx/include/nv" "$tmp/cccl/include/"
  mv "$tmp/cccl-src/cub/cub" "$tmp/cccl/include/cub"
  mv "$tmp/cccl-src/thrust/thrust" "$tmp/cccl/include/thrust"
  rm -rf "$tmp/cccl-src"
  get_src NVIDIA/cutlass "$CUTLASS_TAG" cutlass "$tmp" include
  get_src NVIDIA/cudnn-frontend "$CUDNN_FE_TAG" cudnn-frontend "$tmp" CMakeLists.txt cmake include cudnn_frontend-config.cmake.in
  get_src NVIDIA/NVTX "$NVTX_TAG" nvtx "$tmp" c LICENSE.txt
  get_src fmtlib/fmt "$FMT_TAG" fmt "$tmp" .
  get_src nlohmann/json "$JSON_TAG" json "$tmp" CMakeLists.txt cmake single_include LICENSE.MIT nlohmann_json.natvis meson.build
  (cd "$tmp" && tar cf - cccl cutlass cudnn-frontend fmt json nvtx) | xz -T2 -6 >"$out/mlx_cuda_deps.tar.xz"
  rm -rf "$tmp"
  [[ "${TQ_DEPS_ONLY:-0}" == 1 ]] && { du -sh "$out"/*; return 0; }
  echo "== MLX sources"
  local src="${TURBOQUANT_MLX_SRC:-}"
  if [[ -z "$src" ]]; then
    for c in /tmp/mlx-ref "${XDG_CACHE_HOME:-$HOME/.cache}/turboquant-mlx/mlx.git"; do
      [[ -e "$c" ]] && { src="$c"; break; }
    done
  fi
  [[ -n "$src" ]] || die "set TURBOQUANT_MLX_SRC to an MLX v0.32.1 git checkout"
  git -C "$src" archive --prefix=mlx/ v0.32.1 -- . ':!docs' ':!examples' ':!benchmarks' ':!.github' 2>/dev/null |
    xz -T2 -6 >"$out/mlx_src.tar.xz" ||
    git -C "$src" archive --prefix=mlx/ HEAD -- . ':!docs' ':!examples' ':!benchmarks' ':!.github' |
    xz -T2 -6 >"$out/mlx_src.tar.xz"
  echo "== BLAS / LAPACK packages (for machines without them)"
  mkdir -p "$out/debs"
  (cd "$out/debs" && apt-get download libopenblas0-pthread libopenblas-pthread-dev \
    libopenblas-dev liblapacke-dev libgfortran5 libquadmath0 2>&1 | tail -1) ||
    echo "  (apt-get download failed: the build then needs a system BLAS/LAPACK)"
  du -sh "$out"/*
}

cmake_args() {
  local d="$1"
  echo "-DFETCHCONTENT_FULLY_DISCONNECTED=ON" \
    "-DFETCHCONTENT_SOURCE_DIR_CCCL=$d/cccl" \
    "-DFETCHCONTENT_SOURCE_DIR_NVTX3=$d/nvtx" \
    "-DFETCHCONTENT_SOURCE_DIR_CUDNN=$d/cudnn-frontend" \
    "-DFETCHCONTENT_SOURCE_DIR_CUTLASS=$d/cutlass" \
    "-DFETCHCONTENT_SOURCE_DIR_FMT=$d/fmt" \
    "-DFETCHCONTENT_SOURCE_DIR_JSON=$d/json" \
    "-DUSE_SYSTEM_FMT=OFF"
}

build() {
  local dir="$ROOT/.cuda_deps" jobs="" arch="90a" targets="" deadline=""
  if [[ $# -gt 0 && "$1" != --* ]]; then dir="$1"; shift; fi
  while [[ $# -gt 0 ]]; do
    case "$1" in
      --jobs) jobs="$2"; shift 2 ;;
      --arch) arch="$2"; shift 2 ;;
      --targets) targets="$2"; shift 2 ;;
      --deadline) deadline="$2"; shift 2 ;;
      *) die "unknown option $1" ;;
    esac
  done
  jobs="${jobs:-$(nproc)}"
  local work="${TQ_CUDA_WORK:-/tmp/tqcuda}"
  local t0=$SECONDS
  mkdir -p "$work"
  command -v nvcc >/dev/null || die "nvcc not on PATH"
  echo "== unpack into $work"
  if [[ ! -d "$work/deps/cccl" ]]; then
    mkdir -p "$work/deps" && xz -dc "$dir/mlx_cuda_deps.tar.xz" | tar x -C "$work/deps"
  fi
  if [[ ! -f "$work/mlx/.tq_patched" ]]; then
    rm -rf "$work/mlx"
    xz -dc "$dir/mlx_src.tar.xz" | tar x -C "$work"
    cp -r "$ROOT/mlx_overlay/." "$work/mlx/"
    for p in "$ROOT"/patches/[0-9][0-9][0-9][0-9]-*.patch; do
      [[ -f "$p" ]] || continue
      (cd "$work/mlx" && git apply --whitespace=nowarn "$p") || die "patch $(basename "$p") failed"
      echo "  applied $(basename "$p")"
    done
    touch "$work/mlx/.tq_patched"
  fi
  # BLAS / LAPACK: system ones, else the carried Debian packages.
  local extra=()
  if ! ls /usr/lib/x86_64-linux-gnu/libopenblas.so* /usr/lib/x86_64-linux-gnu/liblapack.so* >/dev/null 2>&1 ||
     [[ ! -f /usr/include/lapacke.h && ! -f /usr/include/x86_64-linux-gnu/lapacke.h ]]; then
    if [[ -d "$dir/debs" ]]; then
      echo "== no system BLAS/LAPACK: using $dir/debs"
      mkdir -p "$work/blas"
      for f in "$dir"/debs/*.deb; do dpkg -x "$f" "$work/blas"; done
      local lib="$work/blas/usr/lib/x86_64-linux-gnu"
      export LD_LIBRARY_PATH="$lib/openblas-pthread:$lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
      extra+=("-DBLA_VENDOR=OpenBLAS"
              "-DCMAKE_LIBRARY_PATH=$lib/openblas-pthread;$lib"
              "-DCMAKE_INCLUDE_PATH=$work/blas/usr/include;$work/blas/usr/include/x86_64-linux-gnu/openblas-pthread")
    fi
  fi
  # cuDNN from the Python wheel (nvidia-cudnn-cu13) when not in the toolkit.
  if [[ -z "${CUDNN_PATH:-}" ]]; then
    local cd
    cd="$(python3 -c 'import nvidia.cudnn, os; print(os.path.dirname(nvidia.cudnn.__file__))' 2>/dev/null ||
         python3 -c 'import nvidia.cudnn, os; print(list(nvidia.cudnn.__path__)[0])' 2>/dev/null || true)"
    [[ -n "$cd" ]] && export CUDNN_PATH="$cd" && echo "== CUDNN_PATH=$cd"
  fi
  echo "== configure ($((SECONDS - t0))s)"
  # shellcheck disable=SC2046
  cmake -G Ninja -S "$work/mlx" -B "$work/build" \
    -DCMAKE_BUILD_TYPE=Release \
    -DMLX_BUILD_CUDA=ON -DMLX_BUILD_METAL=OFF \
    "-DMLX_CUDA_ARCHITECTURES=$arch" \
    -DMLX_BUILD_TESTS=OFF -DMLX_BUILD_EXAMPLES=OFF -DMLX_BUILD_BENCHMARKS=OFF \
    -DMLX_BUILD_GGUF=OFF -DMLX_BUILD_PYTHON_BINDINGS=OFF \
    $(cmake_args "$work/deps") "${extra[@]}" >"$work/configure.log" 2>&1 ||
    { tail -40 "$work/configure.log"; die "configure failed"; }
  grep -E "Lapack lib|Blas lib|cudnn.*found|CUDA Toolkit|Found CUDAToolkit" "$work/configure.log" | head
  echo "== build -j$jobs ${targets:-all} ($((SECONDS - t0))s)"
  local run=(ninja -C "$work/build" -j"$jobs" -k 0)
  if [[ "$targets" == "turbo" ]]; then
    # Only the objects of the TurboQuant CUDA sources and the patched files.
    targets="$(ninja -C "$work/build" -t targets all | cut -d: -f1 |
      grep -E 'backend/cuda/(turboquant[^/]*|quantized/quantized\.cpp)\.o$' | tr '\n' ' ')"
    echo "  targets: $targets"
  fi
  # shellcheck disable=SC2206
  [[ -n "$targets" ]] && run+=($targets)
  if [[ -n "$deadline" ]]; then
    timeout --signal=INT "$deadline" "${run[@]}" >"$work/ninja.log" 2>&1
  else
    "${run[@]}" >"$work/ninja.log" 2>&1
  fi
  local rc=$?
  grep -E "error|FAILED" "$work/ninja.log" | head -20
  tail -3 "$work/ninja.log"
  echo "== ninja rc=$rc after $((SECONDS - t0))s (124 = stopped at the deadline)"
  return $rc
}

case "$cmd" in
  prepare) prepare "$@" ;;
  prepare-deps) TQ_DEPS_ONLY=1 prepare "$@" ;;
  build) build "$@" ;;
  cmake-args) cmake_args "${1:?deps dir}" ;;
  *) sed -n 2,34p "$0"; exit 2 ;;
esac
