"""Where the GPU time of one decode step (and of one prefill chunk) goes, kernel
by kernel, bf16 cache vs TurboQuant caches.

The device image has no Nsight Systems; CUPTI is there (PyTorch's profiler
uses it), and CUPTI records every kernel of the process, MLX's included. So
this script runs the model of ``e2e_generate.py`` (Qwen2.5-7B shape, random
bf16 weights) through mlx-lm, prefills ``context`` tokens, and records with
``torch.profiler`` (CUDA activity only):

  decode   ``--steps`` decode steps evaluated one at a time (each step's graph
           built, evaluated, then the next): kernels per step, GPU busy time
           per step (the union of kernel intervals) and the step's wall time
  prefill  one more prefill chunk of ``--prefill-step`` tokens on the full
           cache (the cost of the last chunk of a long prompt)

Kernels are grouped by what they do (attention, cache append, matmul, ...)
from their names; the table gives us per step for each group and the top
kernels. Needs PyTorch with CUDA next to MLX's CUDA backend.

    python benchmarks/decode_trace.py --contexts 32768 --out /tmp/trace

Writes OUT/decode_trace_<machine>.json and .md.
"""

import argparse
import collections
import json
import os
import sys
import time

import mlx.core as mx

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from decode_profile import add_profile_args, cells, prefill, setup  # noqa: E402
from e2e_generate import log  # noqa: E402
from mlx_lm.models.cache import make_prompt_cache  # noqa: E402

# First match wins: (group, substrings of the kernel's name).
GROUPS = [
    ("turbo attention", ["turbo_sdpa", "turbo_attention_prep", "turbo_rotate"]),
    ("turbo encode", ["turbo_encode"]),
    ("turbo decode (dequantize)", ["turbo_decode"]),
    ("sdpa", ["sdpa", "flash", "fmha", "cudnn", "attention"]),
    ("matmul", ["gemm", "gemv", "matmul", "cutlass", "sm90", "xmma", "qmm", "qmv"]),
    ("copy / slice update", ["copy", "slice", "scatter", "gather", "concatenate"]),
    ("elementwise", ["binary", "unary", "ternary", "compiled", "fused"]),
    ("reduce / norm / rope", ["reduce", "rms", "rope", "softmax", "arg", "layer_norm"]),
]


def group_of(name):
    low = name.lower()
    for g, keys in GROUPS:
        if any(k in low for k in keys):
            return g
    return "other"


def short(name, n=90):
    name = name.replace("mlx::core::", "").replace("cu::", "")
    return name if len(name) <= n else name[: n - 3] + "..."


def busy_us(intervals):
    """Length of the union of [start, end) intervals (us)."""
    total, end = 0.0, -1e30
    for s, e in sorted(intervals):
        if s > end:
            total += e - s
            end = e
        elif e > end:
            total += e - end
            end = e
    return total


def trace(fn, n):
    """Kernels of n calls of fn: ({name: [count, us]}, busy us, wall us).

    Read from the profiler's Chrome trace (events of category "kernel"),
    which holds every kernel CUPTI saw, whoever launched it."""
    import tempfile

    import torch
    from torch.profiler import ProfilerActivity, profile

    fn()  # warm: graphs, allocations
    mx.synchronize()
    # Without CUDA (a CPU smoke run) the profiler records no kernels.
    cuda = torch.cuda.is_available()
    with profile(activities=[ProfilerActivity.CUDA if cuda else ProfilerActivity.CPU]) as prof:
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        mx.synchronize()
        wall = 1e6 * (time.perf_counter() - t0)
    if cuda:
        torch.cuda.synchronize()
    with tempfile.NamedTemporaryFile(suffix=".json") as f:
        prof.export_chrome_trace(f.name)
        events = json.load(open(f.name)).get("traceEvents", [])
    kernels = collections.defaultdict(lambda: [0, 0.0])
    intervals = []
    for e in events:
        if e.get("cat") != "kernel" or "dur" not in e:
            continue
        kernels[e["name"]][0] += 1
        kernels[e["name"]][1] += float(e["dur"])
        intervals.append((float(e["ts"]), float(e["ts"]) + float(e["dur"])))
    return kernels, busy_us(intervals), wall


def summarize(kernels, busy, wall, n):
    groups = collections.defaultdict(lambda: [0.0, 0.0])
    for name, (count, us) in kernels.items():
        g = groups[group_of(name)]
        g[0] += count / n
        g[1] += us / n
    top = sorted(kernels.items(), key=lambda kv: -kv[1][1])[:12]
    return {
        "wall_us": wall / n,
        "busy_us": busy / n,
        "kernels": sum(c for c, _ in kernels.values()) / n,
        "groups": {g: {"launches": c, "us": us} for g, (c, us) in groups.items()},
        "top": [{"name": short(k), "launches": c / n, "us": us / n} for k, (c, us) in top],
    }


def measure(model, prompt, kind, args):
    cache = (
        make_prompt_cache(model) if kind == "bf16" else make_prompt_cache(model, kv_cache_type=kind)
    )
    y = prefill(model, prompt, cache, args.prefill_step)
    mx.synchronize()

    def step():
        nonlocal y
        y = mx.argmax(model(y[None], cache=cache)[:, -1, :], axis=-1)
        mx.eval(y)

    row = {"cache": kind}
    row["decode"] = summarize(*trace(step, args.steps), args.steps)
    for c in cache:
        c.trim(args.steps + 1)
    chunk = mx.random.randint(0, model.args.vocab_size, (1, args.prefill_step))

    def chunk_step():
        mx.eval(model(chunk, cache=cache))
        for c in cache:
            c.trim(args.prefill_step)

    row["prefill_chunk"] = summarize(*trace(chunk_step, 1), 1)
    return row


def markdown(rows, header):
    lines = [header, ""]
    for phase, title in (("decode", "one decode step"), ("prefill_chunk", "one prefill chunk")):
        lines += [
            f"### {title}: GPU us per group (launches)",
            "",
        ]
        groups = sorted({g for r in rows for g in r[phase]["groups"]})
        lines.append(
            "| context | cache | wall us | GPU busy us | kernels | " + " | ".join(groups) + " |"
        )
        lines.append("|---:|---|---:|---:|---:|" + "---:|" * len(groups))
        for r in rows:
            p = r[phase]
            cells = [
                f"{r['context']:,}",
                r["cache"],
                f"{p['wall_us']:.0f}",
                f"{p['busy_us']:.0f}",
                f"{p['kernels']:.0f}",
            ]
            for g in groups:
                x = p["groups"].get(g)
                cells.append(f"{x['us']:.0f} ({x['launches']:.0f})" if x else "")
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    lines += ["### Top kernels of one decode step", ""]
    for r in rows:
        lines.append(f"{r['context']:,} tokens, {r['cache']}:")
        lines.append("")
        lines.append("| kernel | launches | us |")
        lines.append("|---|---:|---:|")
        for k in r["decode"]["top"]:
            lines.append(f"| `{k['name']}` | {k['launches']:.0f} | {k['us']:.1f} |")
        lines.append("")
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_profile_args(ap, "32768", 8, "decode steps traced")
    args = ap.parse_args()
    model, base, header = setup(
        args,
        "decode_trace",
        f"kernels recorded with CUPTI (torch.profiler), {args.steps} decode steps "
        "evaluated one at a time",
    )
    rows = []
    for L, kind, prompt in cells(args, model):
        try:
            rows.append({"context": L, **measure(model, prompt, kind, args)})
        except Exception as e:  # keep the other cells
            log(f"  error: {e!r}")
            continue
        mx.clear_cache()
        with open(base + ".json", "w") as f:
            json.dump(rows, f, indent=1)
        with open(base + ".md", "w") as f:
            f.write(markdown(rows, header))
    print(markdown(rows, header))


if __name__ == "__main__":
    main()
