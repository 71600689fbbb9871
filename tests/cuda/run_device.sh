#!/usr/bin/env bash
# One device call: build the harness, run the correctness tests, benchmark.
#   bash tests/cuda/run_device.sh [--no-build] [--no-bench] [--no-test] [--ncu] [--quick]
# --no-build: reuse build/libtq.so from an earlier call on the same machine.
# --ncu: Nsight Compute sections and stall reasons of the decode kernels and
# the split-K combine (prof_one.py; benchmarks/results/ncu_decode_*.txt).
# Writes logs, bench_cuda.json and cuda_decode.png to $OUT (or tests/cuda/out).
set -uo pipefail
cd "$(dirname "$0")"
OUT="${OUT:-$PWD/out}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
bench=1
test=1
ncu=0
build=1
bargs=()
for a in "$@"; do
  case "$a" in
    --no-bench) bench=0 ;;
    --no-test) test=0 ;;
    --ncu) ncu=1 ;;
    --no-build) build=0 ;;
    *) bargs+=("$a") ;;
  esac
done
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv,noheader
t0=$(date +%s)
if [ $build -eq 1 ]; then
  TQ_RESOURCE_USAGE=1 ./build.sh 2>&1 | grep -v "Compile time" > "$OUT/build.log"; rc=${PIPESTATUS[0]}
  echo "build rc=$rc in $(( $(date +%s) - t0 ))s"
  [ $rc -eq 0 ] || { tail -40 "$OUT/build.log"; exit 1; }
fi
if [ $test -eq 1 ]; then
  python3 test_tq_cuda.py 2>&1 | tee "$OUT/test.log" | grep -v "^ok" ; trc=${PIPESTATUS[0]}
  echo "tests rc=$trc"
  # The CPU emulator's checks (tests/cuda/emu/test_emu.py) on the device, on
  # the same build: what the emulator passes, the GPU must pass too.
  cudart=$(ls /usr/local/cuda/lib64/libcudart.so* 2>/dev/null | head -1)
  TQ_EMU_GPU=1 TQ_EMU_LIB="$PWD/build/libtq.so" TQ_CUDART="${cudart:-libcudart.so}" \
    python3 emu/test_emu.py 2>&1 | tee "$OUT/test_emu_gpu.log" | grep -v "^ok" ; erc=${PIPESTATUS[0]}
  echo "emulator checks on the GPU rc=$erc"
fi
if [ $bench -eq 1 ]; then
  python3 bench_tq_cuda.py --out "$OUT" "${bargs[@]}" 2>&1 | tee "$OUT/bench.log" | grep -v '^{'
fi
if [ $ncu -eq 1 ]; then
  ncu --clock-control none -k 'regex:turbo_sdpa_(vector|combine)' --section SpeedOfLight \
    --section Occupancy --section WarpStateStats --section LaunchStats \
    --section MemoryWorkloadAnalysis --section ComputeWorkloadAnalysis \
    --section InstructionStats --section SchedulerStats \
    --metrics 'regex:smsp__average_warps_issue_stalled_.*_per_issue_active\.ratio' \
    python3 prof_one.py > "$OUT/ncu.txt" 2>&1
  grep -E "turbo_sdpa_|Duration|Memory Throughput|Compute \(SM\)|Achieved Occupancy|Registers Per|Warp Cycles Per Issued|Issue Slots|Theoretical Occ|Stall|Eligible|Issued Warp|No Eligible|L1/TEX Hit|L2 Hit|Executed Ipc|Mem Busy|Max Bandwidth|Block Limit" "$OUT/ncu.txt" | head -120
fi
echo "total $(( $(date +%s) - t0 ))s"
