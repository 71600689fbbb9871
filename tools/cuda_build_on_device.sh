#!/usr/bin/env bash
# Offline inputs for the CUDA build of the patched MLX (docs/cuda.md,
# "Building MLX with CUDA offline").
#
#   tools/cuda_build_on_device.sh prepare [DIR]
#       Here, with network or the git mirrors under /work/.mirror: writes DIR
#       (default .cuda_deps, git-ignored via .git/info/exclude) with
#         mlx_cuda_deps.tar.xz  CCCL v3.1.3 headers, CUTLASS v4.4.2 headers,
#                               cudnn-frontend v1.16.0, NVTX 3.1, fmt 12.1.0,
#                               nlohmann/json v3.11.3 (~3 MB compressed)
#         mlx.git               MLX v0.32.1, a shallow bare clone (~5 MB)
#         wheels/               nanobind 2.13.0, setuptools, wheel (~1 MB)
#       Then, on a CUDA machine without network (the device: carry .cuda_deps):
#         ./build.sh --cuda --offline --wheels .cuda_deps/wheels \
#                    --mlx-src .cuda_deps/mlx.git --no-mlx-lm
#   tools/cuda_build_on_device.sh prepare-deps [DIR]
#       Only mlx_cuda_deps.tar.xz (what tools/cuda_deps.sh needs).
#   tools/cuda_build_on_device.sh cmake-args DIR
#       Prints the -D overrides for an unpacked deps dir (used by
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
MLX_TAG=v0.32.1

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
  echo "== MLX ${MLX_TAG} (shallow bare clone)"
  local src="${TURBOQUANT_MLX_SRC:-}"
  if [[ -z "$src" ]]; then
    for c in "$MIRRORS/ml-explore+mlx/repo" "${XDG_CACHE_HOME:-$HOME/.cache}/turboquant-mlx/mlx.git"; do
      [[ -e "$c" ]] && { src="$c"; break; }
    done
  fi
  rm -rf "$out/mlx.git"
  git clone -q --bare --depth 1 --branch "$MLX_TAG" "file://${src:-/nonexistent}" "$out/mlx.git" 2>/dev/null ||
    git clone -q --bare --depth 1 --branch "$MLX_TAG" https://github.com/ml-explore/mlx.git "$out/mlx.git" ||
    die "cannot get MLX ${MLX_TAG} (set TURBOQUANT_MLX_SRC to an MLX git repository)"
  echo "== Python build requirements (wheels)"
  python3 -m pip download -q --no-deps -d "$out/wheels" nanobind==2.13.0 "setuptools>=80" wheel ||
    die "cannot download the wheels"
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

case "$cmd" in
  prepare) prepare "$@" ;;
  prepare-deps) TQ_DEPS_ONLY=1 prepare "$@" ;;
  cmake-args) cmake_args "${1:?deps dir}" ;;
  *) sed -n 2,22p "$0"; exit 2 ;;
esac
