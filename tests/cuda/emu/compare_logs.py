"""Compare two logs of test_emu.py run with the same TQ_EMU_SEED: one on the
GPU (TQ_EMU_GPU=1, the nvcc build) and one on the CPU (the emulator). The
inputs are then the same arrays, so each check's line differs only in the
errors it reports.

    python3 tests/cuda/emu/compare_logs.py GPU_LOG CPU_LOG

Prints, per kind of check, how many lines are identical, and the range of the
GPU's error over the emulator's where they differ. Exits 1 when the logs do
not hold the same checks in the same order (different seeds or trees) or
either has a failure.
"""

import re
import sys
from collections import defaultdict

NUM = re.compile(r"[-+]?\d+\.\d+e[-+]\d+")


def checks(path):
    with open(path) as f:
        lines = f.read().splitlines()
    seed = next((l for l in lines if l.startswith("seed ")), None)
    return seed, [l for l in lines if l.startswith(("ok ", "FAIL "))]


def main(gpu_path, cpu_path):
    gseed, gpu = checks(gpu_path)
    cseed, cpu = checks(cpu_path)
    if gseed != cseed or len(gpu) != len(cpu):
        print(f"not the same run: {gseed} / {cseed}, {len(gpu)} / {len(cpu)} checks")
        return 1
    failed = [l for l in gpu + cpu if l.startswith("FAIL")]
    kinds = defaultdict(lambda: [0, 0, []])
    for g, c in zip(gpu, cpu):
        if NUM.sub("#", g) != NUM.sub("#", c):
            print(f"different checks:\n  GPU {g}\n  CPU {c}")
            return 1
        k = kinds[g.split()[1]]
        k[0] += 1
        k[1] += g == c
        for x, y in zip(NUM.findall(g), NUM.findall(c)):
            x, y = float(x), float(y)
            if x != y and x > 0 and y > 0:
                k[2].append(x / y)
    print(f"{gseed}: {len(gpu)} checks, {len(failed)} failed")
    print("| check | lines | identical | GPU error / emulator error where they differ |")
    print("|---|---:|---:|---|")
    for name, (n, same, r) in kinds.items():
        spread = f"{min(r):.2f}-{max(r):.2f} (median {sorted(r)[len(r) // 2]:.2f})" if r else "-"
        print(f"| {name} | {n} | {same} | {spread} |")
    return 1 if failed else 0


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    sys.exit(main(sys.argv[1], sys.argv[2]))
