"""A-B of the whole fused decode call in the standalone harness: two
variants of the same call, timed alternately in one process.

    python3 tests/cuda/bench_fused_ab.py --prep --out DIR [--quick]
    python3 tests/cuda/bench_fused_ab.py --base OTHER/tests/cuda --out DIR [--quick]

--prep: the query preparation inside the tensor-core kernel against the
same call with a turbo_attention_prep launch first (no_kernel_prep).
--base: this build's library against another tree's harness (its tq_lib.py
and build/libtq.so, e.g. the tree before a change, built with its own
build.sh). Each case times the whole call as MLX makes it with
fused_rotation (tq_lib.FusedAttention: decode kernel, split-K combine
rotating the output back) as a CUDA graph of 20 calls, caches rotated so
that the L2 does not hold them; the two variants alternate, 3 rounds each,
median per variant; the kernels of one call are also timed apart with CUPTI
(torch.profiler). Shapes: D = 128, bf16 queries and scales, B 1 and 8,
Hq/Hkv 28/4 and 32/8, 32K and 128K keys (128K with --quick), turbo4 and
turbo3; "plain" is benchmarks/gpu_attention.py's call (no sinks or key
bias), "mlx-lm" the cache's (key bias, the first token's value in the sink
slot, 8 planes of the moving key shift). Writes DIR/<name>.json and .md,
name bench_prep or bench_base.
"""

import argparse
import importlib.util
import json
import os
import statistics
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, _HERE)

import torch  # noqa: E402
import tq_lib  # noqa: E402
from bench_tq_cuda import bench, kernel_times, ncopies  # noqa: E402


def load_harness(where):
    """The tq_lib module of another harness directory, bound to its library."""
    spec = importlib.util.spec_from_file_location("tq_lib_base", os.path.join(where, "tq_lib.py"))
    mod = importlib.util.module_from_spec(spec)
    old = os.environ.get("TQ_LIB")
    os.environ["TQ_LIB"] = os.path.join(where, "build", "libtq.so")
    try:
        spec.loader.exec_module(mod)
    finally:
        if old is None:
            del os.environ["TQ_LIB"]
        else:
            os.environ["TQ_LIB"] = old
    return mod


def variants(args, B, Hq, Hkv, kL, D, bits, dt, kind):
    kw = dict(bias=kind == "mlx-lm", P=8 if kind == "mlx-lm" else 0)
    if args.prep:
        a = tq_lib.FusedAttention(B, Hq, Hkv, kL, D, bits, bits, dt, **kw)
        b = tq_lib.FusedAttention(B, Hq, Hkv, kL, D, bits, bits, dt, no_kernel_prep=True, **kw)
        assert a.in_kernel.value == 1 and b.in_kernel.value == 0
        return {"kernel": a, "launch": b}
    base = args.base_lib.FusedAttention(B, Hq, Hkv, kL, D, bits, bits, dt, **kw)
    return {"this": tq_lib.FusedAttention(B, Hq, Hkv, kL, D, bits, bits, dt, **kw), "base": base}


def case(args, B, Hq, Hkv, kL, bits, kind, rounds):
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
    fa = variants(args, B, Hq, Hkv, kL, D, bits, dt, kind)
    (na, a), (nb, b) = fa.items()
    # the two variants' outputs agree (the same math up to float32 reassociation)
    ref = b(q, *caches[0], out.clone())
    got = a(q, *caches[0], out.clone())
    err = ((got.float() - ref.float()).norm() / ref.float().norm()).item()
    times = {k: [] for k in fa}
    for _ in range(rounds):
        for k, f in fa.items():
            times[k].append(bench(lambda i, f=f: f(q, *caches[i % n], out), 20))
    kts = {k: kernel_times(lambda i, f=f: f(q, *caches[i % n], out)) for k, f in fa.items()}
    del caches
    torch.cuda.empty_cache()
    med = {k: statistics.median(v) for k, v in times.items()}
    return {
        "B": B, "hq": Hq, "hkv": Hkv, "context": kL, "mode": f"turbo{bits}", "call": kind,
        "splits": a.splits, "variants": [na, nb], "us": med, "runs": times, "kernels_us": kts,
        "speedup": med[nb] / med[na], "rel_diff": err,
    }  # fmt: skip


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=".")
    ap.add_argument("--quick", action="store_true")
    g = ap.add_mutually_exclusive_group(required=True)
    g.add_argument("--prep", action="store_true", help="preparation in the kernel vs launched")
    g.add_argument("--base", help="another harness directory (tests/cuda of another tree)")
    a = ap.parse_args()
    if a.base:
        a.base_lib = load_harness(a.base)
    os.makedirs(a.out, exist_ok=True)
    rows = []
    ctxs = (131072,) if a.quick else (32768, 131072)
    for B in (1, 8):
        for Hq, Hkv in ((28, 4), (32, 8)):
            for kL in ctxs:
                for bits in (4, 3):
                    for kind in ("plain", "mlx-lm"):
                        r = case(a, B, Hq, Hkv, kL, bits, kind, 3)
                        rows.append(r)
                        print(json.dumps(r), flush=True)
    dev = torch.cuda.get_device_name()
    name = "bench_prep" if a.prep else "bench_base"
    with open(os.path.join(a.out, name + ".json"), "w") as f:
        json.dump({"device": dev, "base": a.base, "rows": rows}, f, indent=1)
    na, nb = rows[0]["variants"]
    what = {
        "kernel": "prep in kernel",
        "launch": "prep launch first",
        "this": "this tree",
        "base": "base tree",
    }
    lines = [
        f"Device: {dev}; D = 128, bf16; us per fused call, median of 3 alternating rounds "
        "(each a CUDA graph of 20 calls, median of 7 replays) [min-max]; kernels: us per "
        "call (CUPTI) of the decode kernel + the split-K combine (+ the prep launch)",
        "",
        f"| B | Hq/Hkv | context | cache | call | splits | {what[na]} | kernels "
        f"| {what[nb]} | kernels | speedup | output rel. diff |",
        "|---:|---|---:|---|---|---:|---:|---|---:|---|---:|---:|",
    ]

    def kern(k):
        return " + ".join(f"{k[x]:.1f}" for x in ("decode", "combine", "prep") if x in k)

    for r in rows:
        cells = []
        for v in (na, nb):
            t = r["runs"][v]
            cells.append(
                f"{r['us'][v]:.1f} [{min(t):.1f}-{max(t):.1f}] | {kern(r['kernels_us'][v])}"
            )
        lines.append(
            f"| {r['B']} | {r['hq']}/{r['hkv']} | {r['context']:,} | {r['mode']} | {r['call']} "
            f"| {r['splits']} | {cells[0]} | {cells[1]} | {r['speedup']:.3f}x | {r['rel_diff']:.1e} |"
        )
    with open(os.path.join(a.out, name + ".md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
