"""What the exact cache transforms cost a decode call on the GPU.

One decode call (qL = 1) of mx.fast.quantized_scaled_dot_product_attention on a
bfloat16 turbo cache, Qwen2.5-7B's attention shape (Hq/Hkv = 28/4, D = 128),
in three variants that alternate within every repetition so that clocks and
load affect them alike:

* ``plain``     no transforms
* ``constant``  what mlx-lm uses on Metal: key_shift, first_key / first_value
* ``moving``    what mlx-lm uses on CPU and CUDA: the same plus the key shift
                that follows the position (8 planes, key_shift_freqs /
                key_shift_waves; docs/format.md section 7)

and MLX's own SDPA on the bfloat16 cache for scale. Timing as in
gpu_attention.py: ``--calls`` independent calls per mx.eval, the caches
rotating among copies so that they do not sit in L2; the median over
``--reps`` repetitions, with min and max.

    python benchmarks/gpu_transforms_decode.py --out DIR [--machine h200]

Writes DIR/gpu_transforms_decode_<machine>.json (rows {B, context, mode,
variant, us, us_min, us_max}) and .md.
"""

import argparse
import json
import math
import os
import statistics
import time

import mlx.core as mx

HQ, HKV, D, P = 28, 4, 128, 8
VARIANTS = ("plain", "constant", "moving")


def make_case(B, L, copies):
    cases = []
    for _ in range(copies):
        k = mx.random.normal((B, HKV, L, D)).astype(mx.bfloat16)
        v = mx.random.normal((B, HKV, L, D)).astype(mx.bfloat16)
        c = {"k": k, "v": v, "q": mx.random.normal((B, HQ, 1, D)).astype(mx.bfloat16)}
        for mode in ("turbo3", "turbo4"):
            c[mode] = (*mx.quantize(k, mode=mode), *mx.quantize(v, mode=mode))
        c["constant"] = dict(
            key_shift=mx.random.normal((B, HKV, 1, D)).astype(mx.bfloat16),
            first_key=k[:, :, :1],
            first_value=v[:, :, :1],
        )
        c["moving"] = dict(
            c["constant"],
            key_shift_freqs=mx.random.randint(0, 1 << 22, (B, HKV, P)).astype(mx.uint32),
            key_shift_waves=mx.random.normal((B, HKV, 2 * P, D)),
        )
        c["plain"] = {}
        mx.eval(c)
        cases.append(c)
    return cases


def run_case(B, L, args):
    fp_bytes = 2 * B * HKV * L * D * 2
    copies = max(1, min(8, math.ceil(256e6 / fp_bytes)))
    cases = make_case(B, L, copies)
    scale = D**-0.5

    def fn(name, mode, i):
        c = cases[i % len(cases)]
        if name == "sdpa":
            return mx.fast.scaled_dot_product_attention(c["q"], c["k"], c["v"], scale=scale)
        return mx.fast.quantized_scaled_dot_product_attention(
            c["q"], *c[mode], scale=scale, mode=mode, **c[name]
        )

    cells = [("sdpa", "bf16")] + [(v, m) for m in ("turbo3", "turbo4") for v in VARIANTS]
    times = {cell: [] for cell in cells}
    for cell in cells:  # warm-up
        mx.eval(fn(*cell, 0))
    mx.synchronize()
    for _ in range(args.reps):
        for cell in cells:
            t0 = time.perf_counter()
            mx.eval([fn(*cell, i) for i in range(args.calls)])
            mx.synchronize()
            times[cell].append((time.perf_counter() - t0) / args.calls * 1e6)
    rows = []
    for (name, mode), ts in times.items():
        rows.append(
            {
                "B": B,
                "context": L,
                "mode": mode,
                "variant": name,
                "us": statistics.median(ts),
                "us_min": min(ts),
                "us_max": max(ts),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    del cases
    mx.clear_cache()
    return rows


def markdown(rows, device, args):
    lines = [
        f"device: {device}; bfloat16 cache, Hq/Hkv {HQ}/{HKV}, D {D}, one query; "
        f"median of {args.reps} repetitions of {args.calls} calls [min-max]; "
        "the variants alternate within each repetition.",
        "",
        "| B | context | mode | SDPA bf16 us | plain us | constant us | moving us | "
        "constant / plain | moving / plain | moving / constant |",
        "|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    by = {(r["B"], r["context"], r["mode"], r["variant"]): r for r in rows}
    fmt = lambda r: f"{r['us']:.1f} [{r['us_min']:.1f}-{r['us_max']:.1f}]"  # noqa: E731
    for B, L in sorted({(r["B"], r["context"]) for r in rows}):
        sdpa = by[(B, L, "bf16", "sdpa")]
        for mode in ("turbo3", "turbo4"):
            p, c, m = (by[(B, L, mode, v)] for v in VARIANTS)
            lines.append(
                f"| {B} | {L:,} | {mode} | {fmt(sdpa)} | {fmt(p)} | {fmt(c)} | {fmt(m)} | "
                f"{c['us'] / p['us']:.3f}x | {m['us'] / p['us']:.3f}x | {m['us'] / c['us']:.3f}x |"
            )
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--machine", default=None, help="file name tag (default: device)")
    ap.add_argument("--contexts", default="32768,131072")
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--calls", type=int, default=20)
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()
    info = mx.device_info() if hasattr(mx, "device_info") else {}
    device = info.get("device_name", str(mx.default_device()))
    machine = args.machine or device.split()[-1].lower()
    rows = []
    for B in map(int, args.batches.split(",")):
        for L in map(int, args.contexts.split(",")):
            rows += run_case(B, L, args)
    os.makedirs(args.out, exist_ok=True)
    base = os.path.join(args.out, f"gpu_transforms_decode_{machine}")
    with open(base + ".json", "w") as f:
        json.dump(rows, f, indent=1)
    md = markdown(rows, device, args)
    with open(base + ".md", "w") as f:
        f.write(md)
    print(md)


if __name__ == "__main__":
    main()
