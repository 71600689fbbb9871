#!/usr/bin/env bash
# Build a patched MLX wheel with TurboQuant attention and install it in a venv.
#
#   ./build.sh                      # CPU build on Linux, Metal build on macOS
#   ./build.sh --cuda               # CUDA build (Linux + NVIDIA), see docs/cuda.md
#   ./build.sh --mlx-src PATH       # use a local MLX git repository (offline)
#
# Run ./build.sh --help for every option.
set -euo pipefail

MLX_TAG="v0.32.1"
MLX_REF="${TURBOQUANT_MLX_REF:-$MLX_TAG}"
MLX_URL="https://github.com/ml-explore/mlx.git"
NANOBIND_VERSION="2.13.0"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CACHE="${TURBOQUANT_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/turboquant-mlx}"
MLX_SRC="${TURBOQUANT_MLX_SRC:-}"
VENV="${TURBOQUANT_VENV:-$ROOT/.venv}"
PYTHON="${PYTHON:-python3}"
JOBS="${CMAKE_BUILD_PARALLEL_LEVEL:-$(getconf _NPROCESSORS_ONLN 2>/dev/null || echo 2)}"
CUDA=0
INSTALL=1
DEPS=1
OFFLINE="${TURBOQUANT_OFFLINE:-0}"
WHEELS="${TURBOQUANT_WHEELS:-}"
WITH_MLX_LM="${TURBOQUANT_WITH_MLX_LM:-1}"
THROUGH=""

usage() {
  cat <<EOF
Usage: ./build.sh [options]

Builds MLX ${MLX_TAG} with the TurboQuant overlay (mlx_overlay/) and patch series
(patches/NNNN-*.patch) into a wheel in dist/, and installs it into a venv.

Options:
  --mlx-src PATH   MLX git repository (bare or not) holding tag ${MLX_TAG}.
                   Env: TURBOQUANT_MLX_SRC. Without it: the cached clone in
                   \$CACHE/mlx.git, else 'git clone ${MLX_URL}'.
  --mlx-ref REF    Build this tag, branch or commit of that source instead of
                   the pinned ${MLX_TAG} (e.g. main). Env: TURBOQUANT_MLX_REF.
                   The series is made for ${MLX_TAG}; tools/check_series.sh
                   reports whether it applies to another ref.
  --cuda           Build the CUDA backend (Linux + NVIDIA; see docs/cuda.md).
  --venv DIR       Venv to create/use (default: ./.venv). Env: TURBOQUANT_VENV.
  --jobs N         Parallel compile jobs (default: number of cores).
  --through N      Apply patches 0001..N only (to build a prefix of the series).
  --no-install     Build the wheel only.
  --no-mlx-lm      Do not build/install the patched mlx-lm (tools/build_mlx_lm.sh).
  --skip-deps      Do not install system packages (only check them).
  --offline        No network: no apt-get, no downloads. The venv is made with
                   --system-site-packages and the Python build requirements
                   must be there already or in --wheels DIR. A --cuda build
                   takes its CMake dependencies from .cuda_deps/ (docs/cuda.md).
                   Env: TURBOQUANT_OFFLINE=1.
  --wheels DIR     Install the Python build requirements from wheels in DIR
                   (pip --no-index --find-links DIR). Env: TURBOQUANT_WHEELS.
  -h, --help       This help.

The wheel goes to dist/ (env: TURBOQUANT_DIST).
Cache: \$TURBOQUANT_CACHE (default ~/.cache/turboquant-mlx): the MLX clone,
the patched work tree, ccache and offline CMake dependencies.
EOF
}

while [[ $# -gt 0 ]]; do
  case "$1" in
    --mlx-src) MLX_SRC="$2"; shift 2 ;;
    --mlx-src=*) MLX_SRC="${1#*=}"; shift ;;
    --mlx-ref) MLX_REF="$2"; shift 2 ;;
    --mlx-ref=*) MLX_REF="${1#*=}"; shift ;;
    --cuda) CUDA=1; shift ;;
    --venv) VENV="$2"; shift 2 ;;
    --jobs) JOBS="$2"; shift 2 ;;
    --through) THROUGH="$2"; shift 2 ;;
    --no-install) INSTALL=0; shift ;;
    --no-mlx-lm) WITH_MLX_LM=0; shift ;;
    --skip-deps) DEPS=0; shift ;;
    --offline) OFFLINE=1; shift ;;
    --wheels) WHEELS="$2"; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "build.sh: unknown option '$1' (see --help)" >&2; exit 2 ;;
  esac
done

STAGE=0
NSTAGES=6
stage() { STAGE=$((STAGE + 1)); echo "==> [$STAGE/$NSTAGES] $*"; }
die() { echo "build.sh: error: $*" >&2; exit 1; }

OS="$(uname -s)"
mkdir -p "$CACHE"

# ---------------------------------------------------------------------------
stage "Checking prerequisites"
if [[ "$OS" == "Linux" ]]; then
  # What the Linux build needs, checked by the files it uses (so an image that
  # ships them without Debian packages works too), with the Debian package
  # that provides each. fmt and nlohmann/json come from the CUDA dependency
  # bundle in a --cuda build (tools/cuda_deps.sh), so they are not needed then.
  has_header() { compgen -G "/usr/include/$1" >/dev/null || compgen -G "/usr/include/*/$1" >/dev/null; }
  has_lib() { compgen -G "/usr/lib/*/$1" >/dev/null || compgen -G "/usr/lib/$1" >/dev/null; }
  missing=()
  for t in git cmake g++; do command -v "$t" >/dev/null || missing+=("$t"); done
  command -v ninja >/dev/null || missing+=(ninja-build)
  { has_header cblas.h || has_header 'openblas*/cblas.h'; } && has_lib 'libopenblas.so*' || missing+=(libopenblas-dev)
  has_header lapacke.h || has_header 'openblas*/lapacke.h' || missing+=(liblapacke-dev)
  if [[ $CUDA -eq 0 ]]; then
    has_header nlohmann/json.hpp || missing+=(nlohmann-json3-dev)
    has_header fmt/format.h || missing+=(libfmt-dev)
  fi
  "$PYTHON" -c 'import venv, ensurepip' 2>/dev/null || missing+=(python3-venv)
  # ccache only speeds up rebuilds: install it where we can, never require it.
  want_ccache=()
  command -v ccache >/dev/null || want_ccache=(ccache)
  if [[ ${#missing[@]} -gt 0 || ${#want_ccache[@]} -gt 0 ]] && [[ $OFFLINE -eq 0 && $DEPS -eq 1 && $(id -u) -eq 0 ]] &&
     command -v apt-get >/dev/null; then
    echo "    installing: ${missing[*]} ${want_ccache[*]}"
    if apt-get update -qq >/dev/null 2>&1 &&
       DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" "${want_ccache[@]}" >/dev/null; then
      missing=()
    fi
  fi
  [[ ${#missing[@]} -eq 0 ]] ||
    die "missing: ${missing[*]}. Install them with: sudo apt-get install ${missing[*]}"
fi
for tool in git cmake "$PYTHON"; do
  command -v "$tool" >/dev/null || die "'$tool' not found on PATH"
done
if [[ "$OS" == "Darwin" ]]; then
  xcrun -sdk macosx --find metal >/dev/null 2>&1 ||
    die "the Metal compiler is missing: install Xcode (not only the Command Line Tools)"
fi

# ---------------------------------------------------------------------------
stage "Resolving MLX source ${MLX_REF}"
MIRROR="$CACHE/mlx.git"
has_tag() { git --git-dir="$1" rev-parse -q --verify "refs/tags/${MLX_TAG}^{commit}" >/dev/null 2>&1; }
has_ref() { git --git-dir="$1" rev-parse -q --verify "${MLX_REF}^{commit}" >/dev/null 2>&1; }
gitdir_of() {
  if [[ -d "$1/.git" ]]; then echo "$1/.git"; else echo "$1"; fi
}
if [[ -n "$MLX_SRC" ]]; then
  [[ -d "$MLX_SRC" ]] || die "--mlx-src '$MLX_SRC' is not a directory"
  src_git="$(gitdir_of "$MLX_SRC")"
  has_tag "$src_git" || die "'$MLX_SRC' is not a git repository with tag ${MLX_TAG}"
  if ! has_tag "$MIRROR"; then
    echo "    cloning $MLX_SRC -> $MIRROR"
    rm -rf "$MIRROR"
    git clone -q --bare "$src_git" "$MIRROR"
  fi
elif has_tag "$MIRROR"; then
  echo "    using cached clone $MIRROR"
else
  echo "    cloning ${MLX_URL} (${MLX_TAG})"
  rm -rf "$MIRROR"
  git clone -q --bare --branch "$MLX_TAG" "$MLX_URL" "$MIRROR" ||
    die "could not get MLX. Offline? Pass a local MLX git repository with --mlx-src PATH (or TURBOQUANT_MLX_SRC)."
fi
has_tag "$MIRROR" || die "$MIRROR has no tag ${MLX_TAG}"
if ! has_ref "$MIRROR" && [[ -n "$MLX_SRC" ]]; then
  # A ref the cached clone does not have yet (a newer main): fetch it.
  git --git-dir="$MIRROR" fetch -q "$src_git" "+refs/heads/*:refs/heads/*" "+refs/tags/*:refs/tags/*" || true
fi
has_ref "$MIRROR" || die "MLX source has no ref '${MLX_REF}' (a tag, branch or commit)"

# ---------------------------------------------------------------------------
stage "Assembling the patched work tree (MLX tag + overlay + patches)"
WORK="$CACHE/work/mlx"
# Another ref builds in its own tree, so the pinned tag's build stays warm.
if [[ "$MLX_REF" != "$MLX_TAG" ]]; then
  WORK="$CACHE/work/mlx-$(printf %s "$MLX_REF" | tr -c 'A-Za-z0-9._-' '_')"
fi
STAGING="$CACHE/work/staging"
# The patched tree is assembled from scratch in STAGING, then copied into WORK
# file by file, touching only files whose content changed: WORK keeps its
# build directory, so a rebuild (or a build interrupted and run again)
# recompiles only what the change affects, with or without ccache.
rm -rf "$STAGING"
mkdir -p "$(dirname "$WORK")"
git clone -q --no-checkout "$MIRROR" "$STAGING"
git -C "$STAGING" -c advice.detachedHead=false checkout -q "$(git --git-dir="$MIRROR" rev-parse "${MLX_REF}^{commit}")"
cp -R "$ROOT/mlx_overlay/." "$STAGING/"
n_applied=0
for p in "$ROOT"/patches/[0-9][0-9][0-9][0-9]-*.patch; do
  [[ -e "$p" ]] || continue
  num="$(basename "$p" | cut -c1-4)"
  if [[ -n "$THROUGH" && "$((10#$num))" -gt "$((10#$THROUGH))" ]]; then
    continue
  fi
  git -C "$STAGING" apply --whitespace=nowarn "$p" ||
    die "patch $(basename "$p") does not apply to MLX ${MLX_REF} (tools/check_series.sh shows where)"
  n_applied=$((n_applied + 1))
done
# A build of another kind (CPU vs CUDA) in the same tree would reconfigure
# everything anyway: start that one from a clean tree.
kind="cuda=$CUDA"
if [[ -f "$WORK/.turboquant-kind" && "$(cat "$WORK/.turboquant-kind")" != "$kind" ]]; then
  rm -rf "$WORK"
fi
"$PYTHON" "$ROOT/tools/sync_tree.py" "$STAGING" "$WORK" ||
  die "could not update the work tree $WORK"
echo "$kind" >"$WORK/.turboquant-kind"
rm -rf "$STAGING"
echo "    overlay copied, $n_applied patches applied in $WORK"

# ---------------------------------------------------------------------------
stage "Preparing the build environment"
if [[ ! -x "$VENV/bin/python" ]]; then
  if [[ $OFFLINE -eq 1 ]]; then
    # Offline, the interpreter's own packages (numpy, setuptools, ...) are all there is.
    "$PYTHON" -m venv --system-site-packages "$VENV"
  else
    "$PYTHON" -m venv "$VENV"
  fi
fi
VPY="$VENV/bin/python"
BUILD_REQS=("nanobind==${NANOBIND_VERSION}" "setuptools>=80" wheel typing_extensions numpy pytest)
PIP_SRC=()
[[ -n "$WHEELS" ]] && PIP_SRC=(--no-index --find-links "$WHEELS")
if [[ $OFFLINE -eq 1 && -z "$WHEELS" ]]; then
  "$VPY" - "$NANOBIND_VERSION" <<'EOF' ||
import sys, importlib.metadata as md
import setuptools, wheel, numpy, typing_extensions, pytest  # noqa: F401
assert md.version("nanobind") == sys.argv[1], f"nanobind {md.version('nanobind')} != {sys.argv[1]}"
EOF
    die "offline: the Python build requirements (${BUILD_REQS[*]}) are not all in $VENV; pass --wheels DIR"
else
  upgrade=(-U)
  [[ -n "$WHEELS" ]] && upgrade=()
  "$VPY" -m pip install -q "${upgrade[@]}" --disable-pip-version-check "${PIP_SRC[@]}" "${BUILD_REQS[@]}" ||
    die "could not install the Python build requirements into $VENV"
fi
# The property-based tests (tests/test_properties.py) need hypothesis; they
# skip without it (offline, or where PyPI cannot be reached).
if [[ -z "$WHEELS" && $OFFLINE -eq 0 ]]; then
  "$VPY" -m pip install -q --disable-pip-version-check hypothesis ||
    echo "    note: hypothesis not installed: tests/test_properties.py will be skipped"
fi
CMAKE_ARGS_LIST=(-G Ninja "-DCMAKE_PROJECT_mlx_INCLUDE=$ROOT/tools/cmake/ipo_check.cmake")
if command -v ccache >/dev/null; then
  export CCACHE_DIR="${CCACHE_DIR:-$CACHE/ccache}"
  export CCACHE_MAXSIZE="${CCACHE_MAXSIZE:-5G}"
  CMAKE_ARGS_LIST+=(-DCMAKE_C_COMPILER_LAUNCHER=ccache -DCMAKE_CXX_COMPILER_LAUNCHER=ccache)
fi
if [[ "$OS" == "Linux" ]]; then
  # Offline dependencies: system fmt and json, nanobind from the venv, no GGUF.
  JSON_DIR="$CACHE/deps/json"
  mkdir -p "$JSON_DIR/single_include"
  ln -sfn /usr/include/nlohmann "$JSON_DIR/single_include/nlohmann"
  NB_DIR="$("$VPY" -c 'import nanobind; print(nanobind.cmake_dir())')"
  CMAKE_ARGS_LIST+=(
    -DUSE_SYSTEM_FMT=ON
    -DMLX_BUILD_GGUF=OFF
    -DFETCHCONTENT_TRY_FIND_PACKAGE_MODE=ALWAYS
    "-Dnanobind_DIR=$NB_DIR"
    "-DFETCHCONTENT_SOURCE_DIR_JSON=$JSON_DIR"
  )
fi
if [[ $CUDA -eq 1 ]]; then
  [[ "$OS" == "Linux" ]] || die "--cuda needs Linux"
  command -v nvcc >/dev/null || die "--cuda needs nvcc on PATH"
  CMAKE_ARGS_LIST+=(-DMLX_BUILD_CUDA=ON "-DMLX_CUDA_ARCHITECTURES=${MLX_CUDA_ARCHITECTURES:-native}")
  if [[ -f "$ROOT/tools/cuda_deps.sh" ]]; then
    # Adds FETCHCONTENT_SOURCE_DIR_* overrides for CCCL, NVTX, cudnn-frontend, CUTLASS.
    # shellcheck source=/dev/null
    source "$ROOT/tools/cuda_deps.sh"
  fi
fi
export CMAKE_ARGS="${CMAKE_ARGS_LIST[*]}"
export CMAKE_BUILD_PARALLEL_LEVEL="$JOBS"
export PYPI_RELEASE=1

# ---------------------------------------------------------------------------
stage "Building the wheel (this takes minutes cold, seconds with a warm ccache)"
DIST="${TURBOQUANT_DIST:-$ROOT/dist}"
# Another ref's wheel goes next to the pinned one's, not over it.
[[ "$MLX_REF" != "$MLX_TAG" && -z "${TURBOQUANT_DIST:-}" ]] &&
  DIST="$DIST/mlx-$(printf %s "$MLX_REF" | tr -c 'A-Za-z0-9._-' '_')"
mkdir -p "$DIST"
rm -f "$DIST"/mlx-*.whl
t0=$(date +%s)
(cd "$WORK" && "$VPY" -m pip wheel -q --no-build-isolation --no-deps -w "$DIST" .) ||
  die "the MLX build failed (see the compiler output above)"
WHEEL="$(ls "$DIST"/mlx-*.whl | head -n 1)"
echo "    built $WHEEL in $(( $(date +%s) - t0 ))s"

# libmlx.so must load the system's libstdc++.so.6. A compiler whose libstdc++
# is only available as a static archive (the CUDA device image's
# CXX=/opt/gcc/bin/g++, 2026-11-24) links a private copy into libmlx.so and
# exports its template instantiations; with a second libstdc++ in the process
# (Python, numpy, cuDNN load the system one) iostream formatting in MLX then
# segfaults (error messages, mx.compile, printing arrays). docs/cuda.md.
if command -v readelf >/dev/null; then
  LIBCHK="$(mktemp -d)"
  "$VPY" - "$WHEEL" "$LIBCHK/libmlx.so" <<'EOF'
import sys, zipfile
z = zipfile.ZipFile(sys.argv[1])
names = [n for n in z.namelist() if n.endswith("lib/libmlx.so")]
if names:
    open(sys.argv[2], "wb").write(z.read(names[0]))
EOF
  if [[ -s "$LIBCHK/libmlx.so" ]] && ! readelf -d "$LIBCHK/libmlx.so" | grep -q 'libstdc++'; then
    echo "build.sh: warning: libmlx.so does not link libstdc++.so.6 (static libstdc++ from" >&2
    echo "  CXX=${CXX:-c++}); MLX can then crash in iostreams. Build with the system" >&2
    echo "  compiler, e.g. CC=/usr/bin/gcc CXX=/usr/bin/g++ CUDAHOSTCXX=/usr/bin/g++ ./build.sh ..." >&2
  fi
  rm -rf "$LIBCHK"
fi

# ---------------------------------------------------------------------------
stage "Installing into $VENV"
if [[ $INSTALL -eq 1 ]]; then
  "$VPY" -m pip install -q --disable-pip-version-check --force-reinstall --no-deps "$WHEEL"
  "$VPY" "$ROOT/tools/smoke_test.py" || die "the installed MLX failed its smoke test"
  if [[ $WITH_MLX_LM -eq 1 && -x "$ROOT/tools/build_mlx_lm.sh" ]]; then
    "$ROOT/tools/build_mlx_lm.sh" "$VENV" || die "building the patched mlx-lm failed"
  fi
fi

cat <<EOF

Done. Wheel: $WHEEL
Use it:
  source $VENV/bin/activate
  python -c "import mlx.core as mx; print(mx.fast.quantized_scaled_dot_product_attention)"
  python -m pytest tests        # the test suite
EOF
