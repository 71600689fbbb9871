#!/usr/bin/env bash
# Checks that the patch series applies, in order, on top of the overlay, and
# (--compile) that each step's C++ files compile in order:
#
#   tools/check_series.sh [--mlx-src GITDIR] [--strict] [--through N] [--compile] [REF...]
#
# REFs default to the pinned tag (build.sh's MLX_TAG) and, when the MLX
# source has it, main. For every ref: a scratch checkout, mlx_overlay/ copied
# in, then patches/NNNN-*.patch with `git apply` one by one; a patch that
# does not apply is reported with the files git names. The pinned tag must
# pass (exit 1 otherwise); other refs are reported, and must pass too with
# --strict. The MLX source: --mlx-src, else build.sh's cached clone
# ($TURBOQUANT_CACHE/mlx.git). Takes a few seconds per ref; ./test.sh runs it.
#
# --through N: patches 0001..N only (as build.sh --through N).
# --compile (REFs default to the pinned tag only; ~20 s for 0001-0002 on 2
# cores): step by step, the checkout gets only the overlay files that step
# needs (the sources its CMake hunks add as ${CMAKE_CURRENT_SOURCE_DIR}/...
# and the overlay headers they, and the files the step changes, include,
# transitively), then the step's patch, then `g++ -std=c++20 -fsyntax-only`
# with MLX's include paths on the C++ files the step adds or changes, for the
# Linux CPU build (Metal and CUDA files are left out; python/src files need
# nanobind from the venv, else they are skipped and said so). So a step that
# needs a later step's file or declaration fails at that step. Env: JOBS
# (parallel compiles, default 2), CXX (default g++), TURBOQUANT_VENV.
set -uo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
CACHE="${TURBOQUANT_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/turboquant-mlx}"
TAG="$(sed -n 's/^MLX_TAG="\(.*\)"$/\1/p' "$ROOT/build.sh")"
SRC="$CACHE/mlx.git"
STRICT=0
THROUGH=""
COMPILE=0
REFS=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --mlx-src) SRC="$2"; shift 2 ;;
    --strict) STRICT=1; shift ;;
    --through) THROUGH="$2"; shift 2 ;;
    --compile) COMPILE=1; shift ;;
    -h|--help) sed -n 2,25p "$0"; exit 0 ;;
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
  [[ $COMPILE -eq 0 ]] && git --git-dir="$SRC" rev-parse -q --verify "refs/heads/main^{commit}" >/dev/null 2>&1 && REFS+=(main)
fi
PATCHES=()
for p in "$ROOT"/patches/[0-9][0-9][0-9][0-9]-*.patch; do
  num="$(basename "$p" | cut -c1-4)"
  [[ -n "$THROUGH" && "$((10#$num))" -gt "$((10#$THROUGH))" ]] && continue
  PATCHES+=("$p")
done

# --compile helpers ----------------------------------------------------------
CXX="${CXX:-g++}"
JOBS="${JOBS:-2}"
VPY="${TURBOQUANT_VENV:-$ROOT/.venv}/bin/python"
PY_FLAGS=""
if [[ $COMPILE -eq 1 ]] && [[ -x "$VPY" ]] &&
   nb="$("$VPY" -c 'import nanobind; print(nanobind.include_dir())' 2>/dev/null)" &&
   py="$("$VPY" -c 'import sysconfig; print(sysconfig.get_paths()["include"])' 2>/dev/null)" &&
   [[ -f "$py/Python.h" ]]; then
  PY_FLAGS="-DNB_DOMAIN=mlx -I$py -I$nb"
fi
declare -A COPIED=()
# Copies an overlay file into the tree with the overlay headers it includes.
need_overlay() { # TREE PATH
  local tree="$1" f="$2" inc
  [[ -n "${COPIED[$f]:-}" ]] && return
  COPIED[$f]=1
  mkdir -p "$tree/$(dirname "$f")"
  cp "$ROOT/mlx_overlay/$f" "$tree/$f"
  overlay_includes "$tree" "$ROOT/mlx_overlay/$f"
}
overlay_includes() { # TREE FILE: the overlay headers FILE includes
  local inc
  for inc in $(sed -n 's/^#include "\([^"]*\)".*/\1/p' "$2"); do
    [[ -f "$ROOT/mlx_overlay/$inc" ]] && need_overlay "$1" "$inc"
  done
}
# Sources a patch adds to a CMake target: "+ ${CMAKE_CURRENT_SOURCE_DIR}/x.cpp"
# under "+++ b/DIR/CMakeLists.txt".
added_sources() {
  awk '/^\+\+\+ b\/.*CMakeLists\.txt$/ { d = substr($2, 3); sub(/\/?CMakeLists\.txt$/, "", d); next }
       /^\+\+\+ / { d = ""; next }
       d != "" && /^\+[ \t]*\$\{CMAKE_CURRENT_SOURCE_DIR\}\// {
         f = $0; sub(/^\+[ \t]*\$\{CMAKE_CURRENT_SOURCE_DIR\}\//, "", f); sub(/[ \t)].*$/, "", f)
         print (d == "" ? f : d "/" f) }' "$1"
}
changed_files() { sed -n 's/^diff --git a\/\([^ ]*\) b\/.*/\1/p' "$1"; }
linux_cpu_cxx() { grep -E '\.(cpp|cc)$' | grep -vE '^mlx/backend/(metal|cuda)/'; }
syntax_check() { # TREE FILE -> "ok FILE" / "FAIL FILE" + errors / "skip FILE"
  local tree="$1" f="$2" flags=(-std=c++20 -fsyntax-only -fvisibility=hidden -DFMT_HEADER_ONLY=1)
  if [[ "$f" == python/* ]]; then
    [[ -n "$PY_FLAGS" ]] || { echo "  skip    $f (no nanobind / Python headers in $VPY)"; return 0; }
    read -ra py <<< "$PY_FLAGS"
    flags+=("${py[@]}")
  fi
  local err
  if err="$(cd "$tree" && "$CXX" "${flags[@]}" -I"$tree" "$f" 2>&1)"; then
    echo "  ok      $f"
  else
    echo "  FAIL    $f"
    echo "$err" | grep -m6 -E 'error|required from' | sed 's/^/          /'
    return 1
  fi
}
export -f syntax_check
export CXX VPY PY_FLAGS
# -----------------------------------------------------------------------------

scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
status=0
for ref in "${REFS[@]}"; do
  sha="$(git --git-dir="$SRC" rev-parse -q --verify "$ref^{commit}")" || {
    echo "== $ref: not in $SRC"; [[ "$ref" == "$TAG" || $STRICT -eq 1 ]] && status=1; continue; }
  tree="$scratch/$(printf %s "$ref" | tr -c 'A-Za-z0-9._-' '_')"
  git clone -q --shared --no-checkout "$SRC" "$tree" &&
    git -C "$tree" -c advice.detachedHead=false checkout -q "$sha" || { status=1; continue; }
  [[ $COMPILE -eq 1 ]] || cp -R "$ROOT/mlx_overlay/." "$tree/"
  COPIED=()
  echo "== MLX $ref (${sha:0:9})${THROUGH:+, through $THROUGH}"
  ok=1
  for p in "${PATCHES[@]}"; do
    name="$(basename "$p")"
    if [[ $COMPILE -eq 1 ]]; then
      before=" ${!COPIED[*]} "
      for f in $(added_sources "$p"); do
        [[ -f "$ROOT/mlx_overlay/$f" ]] && need_overlay "$tree" "$f"
      done
    fi
    if err="$(git -C "$tree" apply --whitespace=nowarn "$p" 2>&1)"; then
      echo "  ok    $name"
    else
      ok=0
      files="$(echo "$err" | sed -n 's/^error: patch failed: \([^:]*\):.*/\1/p' | sort -u | tr '\n' ' ')"
      echo "  FAIL  $name: does not apply in ${files:-?}"
      echo "$err" | sed 's/^/        /' | head -8
      break
    fi
    if [[ $COMPILE -eq 1 ]]; then
      for f in $(changed_files "$p"); do
        [[ -f "$tree/$f" ]] && overlay_includes "$tree" "$tree/$f"
      done
      new=""
      for f in "${!COPIED[@]}"; do [[ "$before" == *" $f "* ]] || new+=" $f"; done
      new="$(printf '%s\n' $new | sort | paste -sd' ')"
      echo "        overlay files this step brings: ${new:-none}"
      files="$( { added_sources "$p"; changed_files "$p"; } | linux_cpu_cxx | sort -u)"
      if [[ -z "$files" ]]; then
        echo "        (no Linux CPU C++ files in this step)"
        continue
      fi
      t0=$(date +%s)
      out="$(printf '%s\n' $files | xargs -P "$JOBS" -I{} bash -c 'syntax_check "$0" "$1"' "$tree" {})"
      rc=$?
      echo "$out"
      echo "        g++ -fsyntax-only: $(echo "$files" | wc -l) files in $(( $(date +%s) - t0 ))s"
      [[ $rc -eq 0 ]] || { ok=0; break; }
    fi
  done
  if [[ $ok -eq 0 ]] && [[ "$ref" == "$TAG" || $STRICT -eq 1 ]]; then
    status=1
  fi
  [[ $ok -eq 0 && "$ref" != "$TAG" && $STRICT -eq 0 ]] && echo "  (reported only: the series is made for $TAG)"
done
exit $status
