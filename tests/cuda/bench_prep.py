"""The fused decode call with its query preparation inside the tensor-core
kernel against the same call with a turbo_attention_prep launch first (the
tree before that change), in the standalone harness.

    python3 tests/cuda/bench_prep.py --out DIR [--quick]

Each case times the whole call as MLX makes it with fused_rotation
(tq_lib.FusedAttention: preparation, decode kernel, split-K combine rotating
the output back) as a CUDA graph of 20 calls, caches rotated so that the L2
does not hold them; the two variants alternate, 3 rounds each, median per
variant. Shapes: D = 128, bf16 queries and scales, B 1 and 8, Hq/Hkv 28/4
and 32/8, 32K and 128K keys, turbo4 and turbo3; "plain" is
benchmarks/gpu_attention.py's call (no sinks or key bias), "mlx-lm" the
cache's (key bias, the first token's value in the sink slot, 8 planes of
the moving key shift). Writes
DIR/bench_prep.json and DIR/bench_prep.md.
"""

import argparse
import json
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402
import tq_lib  # noqa: E402
from bench_tq_cuda import bench, ncopies  # noqa: E402


def case(B, Hq, Hkv, kL, bits, kind, rounds):
    D, dt = 128, torch.bfloat16
    w = tq_lib.words(bits, D)
    nbytes = 2 * B * Hkv * kL * (4 * w + 2)
    n = ncopies(nbytes)
    caches = []
    for _ in range(n):
        kc = torch.randint(-(2**31), 2**31 - 1, (B, Hkv, kL, w), dtype=torch.int32, device="cuda")
        vc = torch.randint(-(2**31), 2**31 - 1, (B, Hkv, kL, w), dtype=torch.int32, device="cuda")
        ks = (torch.rand(B, Hkv, kL, device="cuda") * 0.5 + 0.05).to(dt)
        vs = (torch.rand(B, Hkv, kL, device="cuda") * 0.5 + 0.05).to(dt)
        caches.append((kc, ks, vc, vs))
    q = torch.randn(B, Hq, 1, D, device="cuda").to(dt)
    out = torch.empty(B, Hq, 1, D, device="cuda", dtype=dt)
    kw = dict(bias=kind == "mlx-lm", P=8 if kind == "mlx-lm" else 0)
    fa = {
        "kernel": tq_lib.FusedAttention(B, Hq, Hkv, kL, D, bits, bits, dt, **kw),
        "launch": tq_lib.FusedAttention(
            B, Hq, Hkv, kL, D, bits, bits, dt, no_kernel_prep=True, **kw
        ),
    }
    # the two variants' outputs agree (same math, float32 sums in the same order)
    ref = fa["launch"](q, *caches[0], out.clone())
    got = fa["kernel"](q, *caches[0], out.clone())
    err = ((got.float() - ref.float()).norm() / ref.float().norm()).item()
    assert fa["kernel"].in_kernel.value == 1 and fa["launch"].in_kernel.value == 0
    times = {k: [] for k in fa}
    for _ in range(rounds):
        for k, f in fa.items():
            times[k].append(bench(lambda i, f=f: f(q, *caches[i % n], out), 20))
    del caches
    torch.cuda.empty_cache()
    med = {k: statistics.median(v) for k, v in times.items()}
    return {
        "B": B, "hq": Hq, "hkv": Hkv, "context": kL, "mode": f"turbo{bits}", "call": kind,
        "splits": fa["kernel"].splits, "us_kernel_prep": med["kernel"],
        "us_prep_launch": med["launch"], "runs_kernel_prep": times["kernel"],
        "runs_prep_launch": times["launch"], "speedup": med["launch"] / med["kernel"],
        "rel_diff": err,
    }  # fmt: skip


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=".")
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    rows = []
    ctxs = (131072,) if a.quick else (32768, 131072)
    for B in (1, 8):
        for Hq, Hkv in ((28, 4), (32, 8)):
            for kL in ctxs:
                for bits in (4, 3):
                    for kind in ("plain", "mlx-lm"):
                        r = case(B, Hq, Hkv, kL, bits, kind, 3)
                        rows.append(r)
                        print(json.dumps(r), flush=True)
    dev = torch.cuda.get_device_name()
    with open(os.path.join(a.out, "bench_prep.json"), "w") as f:
        json.dump({"device": dev, "rows": rows}, f, indent=1)
    lines = [
        f"Device: {dev}; D = 128, bf16; us per fused call, median of 3 alternating rounds "
        "(each a CUDA graph of 20 calls, median of 7 replays) [min-max]",
        "",
        "| B | Hq/Hkv | context | cache | call | splits | prep in kernel | prep launch first "
        "| speedup | output rel. diff |",
        "|---:|---|---:|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        k, l_ = r["runs_kernel_prep"], r["runs_prep_launch"]
        lines.append(
            f"| {r['B']} | {r['hq']}/{r['hkv']} | {r['context']:,} | {r['mode']} | {r['call']} "
            f"| {r['splits']} | {r['us_kernel_prep']:.1f} [{min(k):.1f}-{max(k):.1f}] "
            f"| {r['us_prep_launch']:.1f} [{min(l_):.1f}-{max(l_):.1f}] | {r['speedup']:.3f}x "
            f"| {r['rel_diff']:.1e} |"
        )
    with open(os.path.join(a.out, "bench_prep.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
