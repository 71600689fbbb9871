#!/bin/bash
# Type-check the TurboQuant .metal files (every instantiation) with the MSL
# shim: clang++ -fsyntax-only, address spaces enforced, plus
# -Werror=implicit-float-conversion (MSL rejects implicit float -> half/bfloat
# narrowing that C++ would allow).
#   check_kernels.sh [--clcpp] KERNEL_ROOT PP_DIR [extra clang args]
# --clcpp: C++ for OpenCL 2021 instead (shim_cl/, prepass with MSHIM_CLCPP=1
# into PP_DIR): Metal address spaces as OpenCL's (device=__global,
# constant=__constant, threadgroup=__local, thread=__private), so casts
# between address spaces, non-constant program-scope / static variables,
# address-space deduction and `this` address spaces follow clang's OpenCL
# rules; double is an error (cl_khr_fp64 off). See docs/metal.md.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
CLCPP=0; [ "${1:-}" = --clcpp ] && { CLCPP=1; shift; }
ROOT=$1 PP=$2; shift 2
CXX=${CLANGXX:-clang++-19}
if [ $CLCPP = 1 ]; then
  [ -d "$PP" ] || MSHIM_CLCPP=1 python3 "$HERE/tools/msl_prepass.py" "$ROOT" "$PP" 2>/dev/null
  MODE=(-x clcpp -cl-std=clc++2021
        -Xclang -cl-ext=-__opencl_c_pipes,-__opencl_c_device_enqueue,-__opencl_c_program_scope_global_variables,-__opencl_c_fp64,-cl_khr_fp64,+cl_khr_fp16
        -I"$HERE/shim_cl/include" -I"$PP" -include mshim_cl/mshim_cl.h)
  TAG=clcpp_
else
  [ -d "$PP" ] || python3 "$HERE/tools/msl_prepass.py" "$ROOT" "$PP" 2>/dev/null
  MODE=(-x c++ -std=c++17 -fno-exceptions -fno-rtti
        -I"$HERE/shim/include" -I"$PP" -include mshim/mshim.h -Wno-gnu-static-float-init)
  TAG=
fi
rc=0
for f in sdpa_vector_turbo.metal sdpa_prefill_turbo.metal turbo_quantize.metal scaled_dot_product_attention.metal; do
  if $CXX -fsyntax-only "${MODE[@]}" \
      -Wno-unknown-attributes -Wno-unknown-pragmas -Wno-duplicate-decl-specifier \
      -Werror=implicit-float-conversion -ferror-limit=20 "$@" \
      "$PP/mlx/backend/metal/kernels/$f" 2> "$PP/check_$TAG$f.log"; then
    echo "  ok  ${TAG:+(clcpp) }$f"
  else
    echo "  FAIL ${TAG:+(clcpp) }$f"; head -20 "$PP/check_$TAG$f.log"; rc=1
  fi
done
exit $rc
