#!/usr/bin/env bash
# Builds the standalone CUDA harness (tests/cuda/tq_inst.cu, tq_capi.cu) for
# the CPU emulator: tests/cuda/emu/prepass.py rewrites the kernels of
# mlx_overlay/mlx/backend/cuda/device and the harness's launches, a host
# compiler builds them against cushim/cushim.h and the CUDA headers (no GPU,
# no nvcc), and the result is OUT/libtq_emu.so with libtq.so's C API.
#   tests/cuda/emu/build.sh [OUT]     (default tests/cuda/emu/build)
# Env: CXX (clang++-19, else clang++ or g++), CUDA_HOME (/usr/local/cuda),
# SAN=asan (AddressSanitizer), OPT (-O1), TQ_EMU_DIMS (the head dims built,
# "64 80 96 128 192 256"; the others' entry points return -1),
# TQ_EMU_DEVICE_DIR (the kernel headers, mlx_overlay/mlx/backend/cuda/device;
# tests/cuda/emu/planted_bugs.py passes mutated copies).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../../.." && pwd)"
out="${1:-$here/build}"
mkdir -p "$out"
cuda="${CUDA_HOME:-/usr/local/cuda}"
[ -f "$cuda/include/cuda_fp16.h" ] || { echo "no CUDA headers under $cuda (set CUDA_HOME)"; exit 1; }
cxx="${CXX:-}"
if [ -z "$cxx" ]; then
  for c in clang++-19 clang++ g++; do command -v "$c" >/dev/null && { cxx=$c; break; }; done
fi
pp="$out/pp"
rm -rf "$pp"
python3 "$here/prepass.py" "$pp" \
  "${TQ_EMU_DEVICE_DIR:-$root/mlx_overlay/mlx/backend/cuda/device}=mlx/backend/cuda/device" \
  "$root/tests/cuda/tq_inst.cu=tq_inst.cu" "$root/tests/cuda/tq_capi.cu=tq_capi.cu"
flags=(-std=c++17 "${OPT:--O1}" -g0 -fPIC -ffp-contract=off -Wno-unknown-attributes
       -Wno-attributes -Wno-unknown-pragmas -Wno-unused-value
       -I"$cuda/include" -I"$here" -I"$root/tests/metal/shim/include" -I"$pp")
lib="$out/libtq_emu.so"
if [ "${SAN:-}" = asan ]; then
  flags+=(-fsanitize=address -fno-omit-frame-pointer)
  lib="$out/libtq_emu_asan.so"
fi
obj="$out/obj${SAN:+_$SAN}"
mkdir -p "$obj"
dims="${TQ_EMU_DIMS:-64 80 96 128 192 256}"
stubs="$obj/stubs.cpp"
: > "$stubs"
for d in 64 80 96 128 192 256; do
  case " $dims " in *" $d "*) ;; *)
    for f in tq_encode tq_decode tq_attn tq_prep; do
      echo "extern \"C\" int ${f}_d$d(...) { return -1; }" >> "$stubs"
    done ;;
  esac
done
pids=()
"$cxx" "${flags[@]}" -c "$stubs" -o "$obj/stubs.o" &
pids+=($!)
rm -f "$obj"/tq_inst_*.o
for d in $dims; do
  "$cxx" "${flags[@]}" -x c++ -include cushim/cushim.h -DTQ_D=$d \
    -c "$pp/tq_inst.cu" -o "$obj/tq_inst_$d.o" &
  pids+=($!)
done
"$cxx" "${flags[@]}" -x c++ -include cushim/cushim.h -c "$pp/tq_capi.cu" -o "$obj/tq_capi.o" &
pids+=($!)
"$cxx" "${flags[@]}" -c "$here/cushim/cushim_runtime.cpp" -o "$obj/cushim_runtime.o" &
pids+=($!)
"$cxx" "${flags[@]}" -c "$root/tests/metal/shim/src/mshim_runtime.cpp" -o "$obj/mshim_runtime.o" &
pids+=($!)
rc=0
for p in "${pids[@]}"; do wait "$p" || rc=1; done
[ $rc -eq 0 ] || { echo "emulator build failed"; exit 1; }
"$cxx" -shared "${flags[@]}" -o "$lib" "$obj"/*.o -lpthread
if [ "${SAN:-}" = asan ]; then
  # The sanitizer's runtime, for LD_PRELOAD into the Python that loads $lib.
  rt=$("$cxx" -print-file-name=libclang_rt.asan-x86_64.so)
  [ -f "$rt" ] || rt=$("$cxx" -print-file-name=libasan.so)
  echo "$rt" > "$out/asan_preload"
fi
echo "built $lib"
