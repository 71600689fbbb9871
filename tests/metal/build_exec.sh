#!/bin/bash
# Build one CPU execution test of tests/metal against a kernel tree.
#   build_exec.sh TEST KERNEL_ROOT OUTDIR   (env SAN=asan for AddressSanitizer)
# KERNEL_ROOT contains mlx/backend/metal/kernels; the prepass output goes to
# OUTDIR/pp and the binary to OUTDIR/TEST[_asan].
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
TEST=$1 ROOT=$2 OUT=$3
mkdir -p "$OUT"
PP=$OUT/pp
[ -d "$PP" ] || python3 "$HERE/tools/msl_prepass.py" "$ROOT" "$PP" 2>/dev/null
CXX=${CLANGXX:-clang++-19}
FLAGS="-std=c++17 ${OPT:--O1} -g0 -fno-exceptions -ffp-contract=off -Wno-unknown-attributes -Wno-unknown-pragmas -Wno-duplicate-decl-specifier -Wno-gnu-static-float-init -Wno-pass-failed"
BIN=$OUT/$TEST
if [ "${SAN:-}" = asan ]; then FLAGS="$FLAGS -fsanitize=address -fno-omit-frame-pointer"; BIN=${BIN}_asan; fi
RT=$OUT/mshim_runtime${SAN:+_$SAN}.o
[ -f "$RT" ] || $CXX $FLAGS -I"$HERE/shim/include" -c "$HERE/shim/src/mshim_runtime.cpp" -o "$RT"
$CXX $FLAGS ${EXTRA_FLAGS:-} -I"$HERE/shim/include" -I"$PP" -I"$HERE" -c "$HERE/$TEST.cpp" -o "$BIN.o"
$CXX $FLAGS "$BIN.o" "$RT" -o "$BIN" -lpthread
echo "built $BIN"
