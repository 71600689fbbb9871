#!/bin/bash
# Syntax-check mlx/backend/metal/turboquant.cpp, turboquant_attention.cpp (and
# turboquant_cache.cpp where
# the tree has fast::QuantizedCacheUpdate) against the real MLX headers of
# a patched tree (metal-cpp replaced by the declarations in Metal/Metal.hpp).
#   check_host.sh TREE_ROOT
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
TREE=$1
for f in mlx/backend/metal/turboquant.cpp mlx/turboquant.h mlx/fast_primitives.h; do
  [ -f "$TREE/$f" ] || { echo "  skip: $TREE has no $f"; exit 0; }
done
grep -q QuantizedScaledDotProductAttention "$TREE/mlx/fast_primitives.h" || { echo "  skip: unpatched tree"; exit 0; }
check() {
  ${CLANGXX:-clang++-19} -std=c++20 -fsyntax-only -Wall -Wno-unused-private-field \
    -I"$HERE" -I"$TREE" "$TREE/mlx/backend/metal/$1"
  echo "  ok  $1 parses against the MLX headers of $TREE"
}
check turboquant.cpp
check turboquant_attention.cpp
# fast::QuantizedCacheUpdate::eval_gpu (from patch 0003 on)
if [ -f "$TREE/mlx/backend/metal/turboquant_cache.cpp" ] \
   && grep -q QuantizedCacheUpdate "$TREE/mlx/fast_primitives.h"; then
  check turboquant_cache.cpp
else
  echo "  skip: turboquant_cache.cpp (no QuantizedCacheUpdate in $TREE)"
fi
