#!/usr/bin/env bash
# Build the TurboQuant-patched mlx-lm wheel and install it into a venv.
#
#   tools/build_mlx_lm.sh [VENV]        (default: <repo>/.venv)
#
# 1. Fetches the mlx-lm sdist (pinned version and sha256) with pip into
#    $TURBOQUANT_CACHE/sdist (default ~/.cache/turboquant-mlx/sdist), once.
# 2. Unpacks it in a temporary folder and applies patches/mlx-lm/*.patch in
#    order (git apply, or patch -p1 where git is missing).
# 3. Builds a wheel into <repo>/dist (version 0.32.2+turboquant).
# 4. Installs mlx-lm's runtime requirements from PyPI *except mlx*, then the
#    wheel with --no-deps, so the patched mlx already in VENV is never
#    replaced by PyPI's mlx. Set MLX_LM_SKIP_DEPS=1 to skip the requirements.
#
# MLX_LM_PATCHES_REV=REV builds the wheel of another commit's patches (git
# show REV:patches/mlx-lm/...) into <repo>/dist/mlx-lm-REV/ and installs
# nothing: the other side of an A-B run (tests/cuda/run_mlx_device.sh's
# MLX_LM_WHEEL).
set -euo pipefail

MLX_LM_VERSION=0.32.2
MLX_LM_SHA256=1af8a92f6a141c3e2bf5b0369ac4464203a8e2189c47b9e40d3e921e5b3a1fe9
LOCAL_VERSION="${MLX_LM_VERSION}+turboquant"

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${1:-$REPO/.venv}"
PY="$VENV/bin/python"
CACHE="${TURBOQUANT_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/turboquant-mlx}"
SDIST_DIR="$CACHE/sdist"
SDIST="$SDIST_DIR/mlx_lm-$MLX_LM_VERSION.tar.gz"
DIST="$REPO/dist"

if [ ! -x "$PY" ]; then
    echo "build_mlx_lm: no python at $PY (create the venv first)" >&2
    exit 1
fi

mkdir -p "$SDIST_DIR" "$DIST"
if [ ! -f "$SDIST" ]; then
    echo "build_mlx_lm: downloading mlx-lm==$MLX_LM_VERSION sdist" >&2
    "$PY" -m pip download --quiet "mlx-lm==$MLX_LM_VERSION" --no-deps \
        --no-binary :all: -d "$SDIST_DIR"
fi
echo "$MLX_LM_SHA256  $SDIST" | sha256sum -c --quiet - || {
    echo "build_mlx_lm: sha256 mismatch for $SDIST" >&2
    exit 1
}

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
tar -xzf "$SDIST" -C "$WORK"
SRC="$WORK/mlx_lm-$MLX_LM_VERSION"

shopt -s nullglob
REV="${MLX_LM_PATCHES_REV:-}"
if [ -n "$REV" ]; then
    sha="$(git -C "$REPO" rev-parse --short "$REV^{commit}")"
    mkdir -p "$WORK/patches"
    for f in $(git -C "$REPO" ls-tree --name-only "$sha" patches/mlx-lm/); do
        git -C "$REPO" show "$sha:$f" >"$WORK/patches/$(basename "$f")"
    done
    patches=("$WORK"/patches/[0-9][0-9][0-9][0-9]-*.patch)
    DIST="$REPO/dist/mlx-lm-$sha"
    LOCAL_VERSION="${MLX_LM_VERSION}+turboquant.$sha"
    mkdir -p "$DIST"
else
    patches=("$REPO"/patches/mlx-lm/[0-9][0-9][0-9][0-9]-*.patch)
fi
if [ ${#patches[@]} -eq 0 ]; then
    echo "build_mlx_lm: no patches in $REPO/patches/mlx-lm" >&2
    exit 1
fi
for p in "${patches[@]}"; do
    echo "build_mlx_lm: applying $(basename "$p")" >&2
    if command -v git >/dev/null 2>&1; then
        (cd "$SRC" && git apply --whitespace=nowarn "$p")
    else
        patch -d "$SRC" -p1 --forward --batch --quiet < "$p"
    fi
done

# Wheel (setuptools-scm takes the version from the environment).
rm -f "$DIST"/mlx_lm-*.whl
SETUPTOOLS_SCM_PRETEND_VERSION="$LOCAL_VERSION" \
    "$PY" -m pip wheel --quiet --no-deps -w "$DIST" "$SRC"
WHEEL="$(ls "$DIST"/mlx_lm-*.whl | head -n 1)"
echo "build_mlx_lm: built $WHEEL" >&2
[ -n "$REV" ] && exit 0

mlx_before="$("$PY" -m pip show mlx 2>/dev/null | sed -n 's/^Version: //p' || true)"
if [ "${MLX_LM_SKIP_DEPS:-0}" != "1" ]; then
    # mlx-lm 0.32.2's requirements, mlx left out on purpose.
    "$PY" -m pip install --quiet "numpy" "transformers>=5.7.0" "sentencepiece" \
        "protobuf" "pyyaml" "jinja2"
fi
"$PY" -m pip install --quiet --no-deps --force-reinstall "$WHEEL"
mlx_after="$("$PY" -m pip show mlx 2>/dev/null | sed -n 's/^Version: //p' || true)"
if [ "$mlx_before" != "$mlx_after" ]; then
    echo "build_mlx_lm: error: mlx changed from '$mlx_before' to '$mlx_after'" >&2
    exit 1
fi

"$PY" - <<'PYEOF'
import importlib.metadata as md
print(f"build_mlx_lm: installed mlx-lm {md.version('mlx-lm')}")
try:
    import mlx.core as mx
except ImportError:
    print("build_mlx_lm: warning: mlx is not importable in this venv yet")
else:
    from mlx_lm.models.cache import TurboQuantKVCache  # noqa: F401
    if not hasattr(mx.fast, "quantized_scaled_dot_product_attention"):
        print("build_mlx_lm: warning: the installed mlx has no "
              "mx.fast.quantized_scaled_dot_product_attention (not the patched wheel)")
PYEOF
