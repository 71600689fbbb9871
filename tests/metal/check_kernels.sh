#!/bin/bash
# Type-check the TurboQuant .metal files (every instantiation) with the MSL
# shim: clang++ -fsyntax-only, address spaces enforced, plus
# -Werror=implicit-float-conversion (MSL rejects implicit float -> half/bfloat
# narrowing that C++ would allow).
#   check_kernels.sh KERNEL_ROOT PP_DIR [extra clang args]
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$1 PP=$2; shift 2
[ -d "$PP" ] || python3 "$HERE/tools/msl_prepass.py" "$ROOT" "$PP" 2>/dev/null
CXX=${CLANGXX:-clang++-19}
rc=0
for f in sdpa_vector_turbo.metal sdpa_prefill_turbo.metal turbo_quantize.metal scaled_dot_product_attention.metal; do
  if $CXX -x c++ -std=c++17 -fsyntax-only -fno-exceptions -fno-rtti \
      -I"$HERE/shim/include" -I"$PP" -include mshim/mshim.h \
      -Wno-unknown-attributes -Wno-unknown-pragmas -Wno-duplicate-decl-specifier \
      -Wno-gnu-static-float-init -Werror=implicit-float-conversion -ferror-limit=20 "$@" \
      "$PP/mlx/backend/metal/kernels/$f" 2> "$PP/check_$f.log"; then
    n=$(grep -c 'instantiate_kernel\|instantiate_' "$ROOT/mlx/backend/metal/kernels/$f" || true)
    echo "  ok  $f"
  else
    echo "  FAIL $f"; head -20 "$PP/check_$f.log"; rc=1
  fi
done
exit $rc
