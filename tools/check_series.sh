#!/usr/bin/env bash
# Checks that the patch series applies, in order, on top of the overlay:
#
#   tools/check_series.sh [--mlx-src GITDIR] [--strict] [REF...]
#
# REFs default to the pinned tag (build.sh's MLX_TAG) and, when the MLX
# source has it, main. For every ref: a scratch checkout, mlx_overlay/ copied
# in, then patches/NNNN-*.patch with `git apply` one by one; a patch that
# does not apply is reported with the files git names. The pinned tag must
# pass (exit 1 otherwise); other refs are reported, and must pass too with
# --strict. The MLX source: --mlx-src, else build.sh's cached clone
# ($TURBOQUANT_CACHE/mlx.git). Takes a few seconds per ref; ./test.sh runs it.
set -uo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
CACHE="${TURBOQUANT_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/turboquant-mlx}"
TAG="$(sed -n 's/^MLX_TAG="\(.*\)"$/\1/p' "$ROOT/build.sh")"
SRC="$CACHE/mlx.git"
STRICT=0
REFS=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --mlx-src) SRC="$2"; shift 2 ;;
    --strict) STRICT=1; shift ;;
    -h|--help) sed -n 2,12p "$0"; exit 0 ;;
    *) REFS+=("$1"); shift ;;
  esac
done
[[ -d "$SRC/.git" ]] && SRC="$SRC/.git"
if ! git --git-dir="$SRC" rev-parse -q --verify "refs/tags/$TAG^{commit}" >/dev/null 2>&1; then
  echo "check_series: no MLX source with tag $TAG at $SRC (run ./build.sh first, or pass --mlx-src)"
  exit 2
fi
if [[ ${#REFS[@]} -eq 0 ]]; then
  REFS=("$TAG")
  git --git-dir="$SRC" rev-parse -q --verify "refs/heads/main^{commit}" >/dev/null 2>&1 && REFS+=(main)
fi

scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
status=0
for ref in "${REFS[@]}"; do
  sha="$(git --git-dir="$SRC" rev-parse -q --verify "$ref^{commit}")" || {
    echo "== $ref: not in $SRC"; [[ "$ref" == "$TAG" || $STRICT -eq 1 ]] && status=1; continue; }
  tree="$scratch/$(printf %s "$ref" | tr -c 'A-Za-z0-9._-' '_')"
  git clone -q --shared --no-checkout "$SRC" "$tree" &&
    git -C "$tree" -c advice.detachedHead=false checkout -q "$sha" || { status=1; continue; }
  cp -R "$ROOT/mlx_overlay/." "$tree/"
  echo "== MLX $ref (${sha:0:9})"
  ok=1
  for p in "$ROOT"/patches/[0-9][0-9][0-9][0-9]-*.patch; do
    name="$(basename "$p")"
    if err="$(git -C "$tree" apply --whitespace=nowarn "$p" 2>&1)"; then
      echo "  ok    $name"
    else
      ok=0
      files="$(echo "$err" | sed -n 's/^error: patch failed: \([^:]*\):.*/\1/p' | sort -u | tr '\n' ' ')"
      echo "  FAIL  $name: does not apply in ${files:-?}"
      echo "$err" | sed 's/^/        /' | head -8
      break
    fi
  done
  if [[ $ok -eq 0 ]] && [[ "$ref" == "$TAG" || $STRICT -eq 1 ]]; then
    status=1
  fi
  [[ $ok -eq 0 && "$ref" != "$TAG" && $STRICT -eq 0 ]] && echo "  (reported only: the series is made for $TAG)"
done
exit $status
