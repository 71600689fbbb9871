"""Where a tensor-core decode block's time goes: per-block phase timestamps.

    python3 tests/cuda/phase_trace.py [--out DIR] [--no-build]   (after tests/cuda/build.sh)

Builds an instrumented copy of the harness library (tests/cuda/build/phase/):
turbo_sdpa_vector_tc's header is copied from mlx_overlay and thread 0 of
every block records %globaltimer and clock64 at the block's phase boundaries
(MARKS: each anchor must occur once in the source, so a changed kernel fails
here rather than tracing the wrong spot; the kernel in the tree carries no
instrumentation). D = 128 is rebuilt; the other head dimensions' objects and
the C entry points come from tests/cuda/build. Then runs one call per shape
after two warm-ups (bf16 scales, random codes) and writes, per phase, the
median and spread over the blocks (clock64 at 1.98 GHz, the H200's clock
under load) to DIR/block_phases.{json,md}. --no-build reuses the
instrumented library built before (e.g. on another machine).
"""

import argparse
import ctypes
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
KERNEL = "mlx/backend/cuda/device/turboquant_decode_tc.cuh"
CLOCK_GHZ = 1.98
NMARK = 9

# (anchor, text inserted before it) in turboquant_decode_tc.cuh.
MARKS = [
    (
        "  const int tid = threadIdx.x;\n  const int lane = tid & 31;\n",
        "  long long tr_t[9] = {}, tr_c[9] = {};\n  TQ_MARK(0);\n",
    ),
    ("  if (tid < 16) {\n    s_cb[0][tid]", "  TQ_MARK(1);\n"),
    ("  // Tables: uint4 f of a half", "  TQ_MARK(2);\n"),
    (
        "#pragma unroll\n  for (int i = 0; i < kQVec; i++) {\n"
        "    const int x = tid + i * kVecTcThreads;\n    reinterpret_cast",
        "  TQ_MARK(3);\n",
    ),
    ("  __syncthreads(); // tables and s_q ready\n", "  TQ_MARK(4);\n"),
    ("  for (int it = 0; it < iters; it++) {\n", "  TQ_MARK(5);\n"),
    ("    uint32_t knib[NT][KNW];\n", "    if (it == 1) {\n      TQ_MARK(6);\n    }\n"),
    ("  // Merge the warps of the block", "  TQ_MARK(7);\n"),
]
PHASES = [
    "block rows; query and first-iteration loads issued",
    "centroids, barrier",
    "tables (64 KB)",
    "query rows to shared memory, shift and sink set-up",
    "barrier, query fragments",
    "first iteration",
    "other iterations",
    "merge of the warps, partial rows",
]
HEADER = """#define TQ_MARK(i)                                                \\
  if (threadIdx.x == 0) {                                         \\
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(tr_t[i]));   \\
    tr_c[i] = clock64();                                          \\
  }
namespace mlx::core::cu::turbo {
__device__ long long tq_phase_trace[8192 * 2 * 9];
}
"""
TAIL = """  TQ_MARK(8);
  if (threadIdx.x == 0) {
    const int bid =
        (blockIdx.z * gridDim.y + blockIdx.y) * gridDim.x + blockIdx.x;
    if (bid < 8192) {
      for (int i = 0; i < 9; i++) {
        tq_phase_trace[bid * 18 + i] = tr_t[i];
        tq_phase_trace[bid * 18 + 9 + i] = tr_c[i];
      }
    }
  }
"""
READER = """
extern "C" int tq_phase_read(void* dst, int nblocks) {
  return (int)cudaMemcpyFromSymbol(
      dst, mlx::core::cu::turbo::tq_phase_trace, size_t(nblocks) * 18 * 8);
}
"""
SHAPES = [  # B, Hq, Hkv, kL, bits
    (1, 28, 4, 131072, 4),
    (1, 28, 4, 131072, 3),
    (1, 32, 8, 131072, 4),
    (8, 28, 4, 131072, 4),
    (1, 28, 4, 32768, 4),
]


def instrument(src):
    """The kernel header with the marks (each anchor must occur once)."""
    for anchor, text in MARKS:
        if src.count(anchor) != 1:
            raise SystemExit(f"phase_trace: anchor not found once: {anchor!r}")
        src = src.replace(anchor, text + anchor)
    end = src.rindex("\n}\n\n} // namespace")  # the kernel is the file's last function
    src = src[: end + 1] + TAIL + src[end + 1 :]
    head = src.index("namespace mlx::core::cu::turbo {")
    return src[:head] + HEADER + src[head:]


def build(outdir):
    """libtq.so with the instrumented D = 128 kernels in outdir."""
    build_dir = os.path.join(HERE, "build")
    others = [os.path.join(build_dir, f"tq_inst_{d}.o") for d in (64, 80, 96, 192, 256)]
    others.append(os.path.join(build_dir, "tq_capi.o"))
    for f in others:
        if not os.path.exists(f):
            raise SystemExit(f"phase_trace: {f} missing: run tests/cuda/build.sh first")
    tmp = tempfile.mkdtemp(prefix="tq_phase_")
    shutil.copytree(os.path.join(ROOT, "mlx_overlay"), os.path.join(tmp, "overlay"))
    path = os.path.join(tmp, "overlay", KERNEL)
    with open(path) as f:
        src = instrument(f.read())
    with open(path, "w") as f:
        f.write(src)
    with open(os.path.join(HERE, "tq_inst.cu")) as f:
        inst = f.read() + READER
    cu = os.path.join(tmp, "tq_inst_phase.cu")
    with open(cu, "w") as f:
        f.write(inst)
    obj = os.path.join(tmp, "tq_inst_128.o")
    flags = ["-O3", "-std=c++17", "-Xcompiler", "-fPIC", "-lineinfo"]
    flags += ["-gencode=arch=compute_90a,code=sm_90a", "--expt-relaxed-constexpr"]
    subprocess.check_call(
        ["nvcc", *flags, "-I" + os.path.join(tmp, "overlay"), "-DTQ_D=128", "-c", cu, "-o", obj]
    )
    os.makedirs(outdir, exist_ok=True)
    lib = os.path.join(outdir, "libtq.so")
    subprocess.check_call(["nvcc", "-shared", "-o", lib, obj, *others])
    shutil.rmtree(tmp)
    return lib


def percentiles(x):
    p = np.percentile(x, [0, 50, 90, 100])
    return {"min": p[0], "median": p[1], "p90": p[2], "max": p[3]}


def run(shape, tq_lib, torch):
    B, Hq, Hkv, kL, bits = shape
    D = 128
    w = tq_lib.words(bits, D)

    def codes():
        return torch.randint(-(2**31), 2**31 - 1, (B, Hkv, kL, w), dtype=torch.int32, device="cuda")

    def scales():
        return (torch.rand(B, Hkv, kL, 1, device="cuda") + 0.5).bfloat16()

    kc, vc, ks, vs = codes(), codes(), scales(), scales()
    q = torch.randn(B, Hq, 1, D, device="cuda")
    att = tq_lib.Attention(
        B,
        Hq,
        Hkv,
        1,
        kL,
        D,
        bits,
        bits,
        1 / math.sqrt(D),
        low_precision=True,
        sdtype=torch.bfloat16,
    )
    for _ in range(3):  # the last call's marks are read
        att(q, kc, ks, vc, vs)
        torch.cuda.synchronize()
    nb = att.splits * Hkv * B
    buf = np.zeros(nb * 18, dtype=np.int64)
    rc = tq_lib._lib.tq_phase_read(buf.ctypes.data, nb)
    if rc != 0:
        raise SystemExit(f"phase_trace: reading the marks failed ({rc})")
    t = buf.reshape(nb, 18)
    gt = t[:, :NMARK] / 1e3  # globaltimer, us
    ck = t[:, NMARK:] / (CLOCK_GHZ * 1e3)  # clock64, us
    row = {
        "B": B,
        "hq": Hq,
        "hkv": Hkv,
        "context": kL,
        "mode": f"turbo{bits}",
        "splits": att.splits,
        "blocks": nb,
        "end_us": percentiles(gt[:, NMARK - 1] - gt[:, 0].min()),
        "block_us": percentiles(ck[:, NMARK - 1] - ck[:, 0]),
        "phases_us": {PHASES[i]: percentiles(ck[:, i + 1] - ck[:, i]) for i in range(NMARK - 1)},
    }
    del kc, vc, ks, vs
    torch.cuda.empty_cache()
    return row


def markdown(rows, device):
    head = ["phase"] + [
        f"B={r['B']} {r['hq']}/{r['hkv']} {r['context'] // 1024}K {r['mode']} ({r['blocks']} blocks)"
        for r in rows
    ]
    out = [
        f"device: {device}; clock64 at {CLOCK_GHZ} GHz; median [min-max] over the blocks, us",
        "",
        "| " + " | ".join(head) + " |",
        "|---|" + "---:|" * len(rows),
    ]
    cell = lambda p: f"{p['median']:.2f} [{p['min']:.2f}-{p['max']:.2f}]"
    for name in PHASES:
        out.append("| " + " | ".join([name] + [cell(r["phases_us"][name]) for r in rows]) + " |")
    out.append("| block | " + " | ".join(cell(r["block_us"]) for r in rows) + " |")
    out.append("| kernel end (globaltimer) | " + " | ".join(cell(r["end_us"]) for r in rows) + " |")
    return "\n".join(out) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=".")
    ap.add_argument("--no-build", action="store_true")
    args = ap.parse_args()
    phase_dir = os.path.join(HERE, "build", "phase")
    if args.no_build:
        os.environ["TQ_LIB"] = os.path.join(phase_dir, "libtq.so")
    else:
        os.environ["TQ_LIB"] = build(phase_dir)
    sys.path.insert(0, HERE)
    import torch
    import tq_lib

    tq_lib._lib.tq_phase_read.argtypes = [ctypes.c_void_p, ctypes.c_int]
    rows = [run(s, tq_lib, torch) for s in SHAPES]
    md = markdown(rows, torch.cuda.get_device_name())
    print(md)
    with open(os.path.join(args.out, "block_phases.json"), "w") as f:
        json.dump(rows, f, indent=1)
    with open(os.path.join(args.out, "block_phases.md"), "w") as f:
        f.write(md)


if __name__ == "__main__":
    main()
