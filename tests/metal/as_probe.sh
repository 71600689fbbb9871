#!/bin/bash
# What each type-check mode makes of address-space cases (tests/metal/shim
# C++ mode vs tests/metal/shim_cl C++ for OpenCL mode, the flags of
# check_kernels.sh), against what Metal does. Fails if a mode's verdict
# changes (a clang or shim change that loosens a check).
#   as_probe.sh        prints: case, Metal, C++, clcpp
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
CXX=${CLANGXX:-clang++-19}
T=$(mktemp -d); trap 'rm -rf "$T"' EXIT
cat > "$T/p.metal" <<'SRC'
struct S { int a; float b; };
template <typename T> T rd(thread T* p) { return p[0]; }
void take_dev(device float& r);
float take_thr(const thread S& s);
float take_plain(const S& s);
float f(device S* ds, threadgroup float* tp, constant S* cs, device float* dp, constant float* cp) {
#if CASE == 1
  S x = *ds; return x.b;
#elif CASE == 2
  take_dev(*tp);
#elif CASE == 3
  device float* q = (device float*)tp; return q[0];
#elif CASE == 4
  device float* q = (device float*)cp; return q[0];
#elif CASE == 5
  return rd(dp);
#elif CASE == 6
  return take_thr(*ds);
#elif CASE == 8
  return take_plain(*ds);
#elif CASE == 9
  float* q = dp; return q[0];
#elif CASE == 7
  S y = *cs; return y.b;
#endif
  return 0.0f;
}
SRC
# case | Metal | expected C++ | expected clcpp   (ok = compiles, err = error,
# ?: not verified on a Mac)
EXPECT="1|struct copy from device memory|ok|err|ok
2|threadgroup lvalue to a device reference|err|err|err
3|C cast threadgroup pointer -> device pointer|err|ok|err
4|C cast constant pointer -> device pointer|err|ok|err
5|thread T* deduced from a device pointer|err|ok|err
6|device struct to a const thread S& param|?|err|err
7|struct copy from constant memory|ok|err|err
8|device struct to an unqualified const S& param|?|err|ok
9|device pointer to an unqualified pointer|err|err|ok"
CPP=(-x c++ -std=c++17 -I"$HERE/shim/include" -include mshim/mshim.h)
CL=(-x clcpp -cl-std=clc++2021
    -Xclang -cl-ext=-__opencl_c_pipes,-__opencl_c_device_enqueue,-__opencl_c_program_scope_global_variables,-__opencl_c_fp64,-cl_khr_fp64,+cl_khr_fp16
    -I"$HERE/shim_cl/include" -include mshim_cl/mshim_cl.h)
rc=0
printf '  %-46s %-6s %-6s %-6s\n' case Metal C++ clcpp
while IFS='|' read -r n what metal ecpp ecl; do
  $CXX -fsyntax-only "${CPP[@]}" -DCASE=$n "$T/p.metal" 2>/dev/null && c=ok || c=err
  $CXX -fsyntax-only "${CL[@]}" -DCASE=$n "$T/p.metal" 2>/dev/null && l=ok || l=err
  flag=; { [ $c = $ecpp ] && [ $l = $ecl ]; } || { flag="  CHANGED (expected $ecpp/$ecl)"; rc=1; }
  printf '  %-46s %-6s %-6s %-6s%s\n' "$what" $metal $c $l "$flag"
done <<< "$EXPECT"
exit $rc
