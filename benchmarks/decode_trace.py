"""Where the GPU time of one decode step (and of one prefill chunk) goes, kernel
by kernel, bf16 cache vs TurboQuant caches.

The device image has no Nsight Systems; CUPTI is there (PyTorch's profiler
uses it), and CUPTI records every kernel of the process, MLX's included. So
this script runs the model of ``e2e_generate.py`` (Qwen2.5-7B shape, random
bf16 weights) through mlx-lm, prefills ``context`` tokens, and records with
``torch.profiler`` (CUDA activity only):

  loop     ``--steps`` decode steps of mlx-lm's decode loop as
           ``generate_step`` runs it (the next step built and queued with
           ``mx.async_eval`` before the current token is read): per step the
           host's time building the graph, queuing it (``async_eval``, which
           encodes every kernel) and waiting for the token, the GPU's busy
           and idle time between the first and last kernel, and the host's
           CUDA runtime / driver calls by name (where the queue time goes:
           graph nodes added, graphs instantiated or updated, launches). A
           step whose GPU is idle for long is bound by the host; one with
           copies of cache-sized buffers ("long copies", over 10 us each)
           lost the in-place append
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
import statistics
import sys
import time

import mlx.core as mx

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from decode_profile import add_profile_args, measure_cells, prefill, setup  # noqa: E402
from e2e_generate import step_nodes, table_line  # noqa: E402
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


# A copy kernel longer than this moved a buffer of a cache's size, not a row.
LONG_COPY_US = 10.0


# Chrome-trace categories of the host's CUDA runtime and driver API calls.
API_CATEGORIES = ("cuda_runtime", "cuda_driver")


def trace(fn, n, warm=True):
    """Kernels of n calls of fn: ({name: [count, us]}, busy us, wall us,
    kernel span us, [long copy count, us], {API call: [count, us]}).

    Read from the profiler's Chrome trace (events of category "kernel"),
    which holds every kernel CUPTI saw, whoever launched it, and the host's
    CUDA runtime / driver calls CUPTI recorded (from every thread: MLX's
    graph building, instantiation and update, launches, allocations)."""
    import tempfile

    import torch
    from torch.profiler import ProfilerActivity, profile

    if warm:
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
    long_copies = [0, 0.0]
    api = collections.defaultdict(lambda: [0, 0.0])
    for e in events:
        if e.get("cat") in API_CATEGORIES and "dur" in e:
            api[e["name"]][0] += 1
            api[e["name"]][1] += float(e["dur"])
        if e.get("cat") != "kernel" or "dur" not in e:
            continue
        dur = float(e["dur"])
        kernels[e["name"]][0] += 1
        kernels[e["name"]][1] += dur
        intervals.append((float(e["ts"]), float(e["ts"]) + dur))
        if group_of(e["name"]) == "copy / slice update" and dur > LONG_COPY_US:
            long_copies[0] += 1
            long_copies[1] += dur
    span = max(e for _, e in intervals) - min(s for s, _ in intervals) if intervals else 0.0
    return kernels, busy_us(intervals), wall, span, long_copies, api


def heaviest(calls, n=12):
    """The n entries of {name: [count, us]} with the most us, heaviest first."""
    return sorted(calls.items(), key=lambda kv: -kv[1][1])[:n]


def summarize(kernels, busy, wall, span, long_copies, api, n):
    groups = collections.defaultdict(lambda: [0.0, 0.0])
    for name, (count, us) in kernels.items():
        g = groups[group_of(name)]
        g[0] += count / n
        g[1] += us / n
    return {
        "wall_us": wall / n,
        "busy_us": busy / n,
        "span_us": span / n,
        "long_copies": long_copies[0] / n,
        "long_copy_us": long_copies[1] / n,
        "kernels": sum(c for c, _ in kernels.values()) / n,
        "groups": {g: {"launches": c, "us": us} for g, (c, us) in groups.items()},
        "top": [
            {"name": short(k), "launches": c / n, "us": us / n} for k, (c, us) in heaviest(kernels)
        ],
        # Host time inside CUDA API calls (calls overlap across threads).
        "host_api_us": sum(us for _, us in api.values()) / n,
        "host_api": [{"name": k, "calls": c / n, "us": us / n} for k, (c, us) in heaviest(api)],
    }


def decode_loop(model, cache, y, n):
    """Trace n steps of the decode loop as generate_step runs it, after as
    many untraced ones: (GPU summary, host ms per step by phase)."""
    host = {"build_ms": [], "queue_ms": [], "wait_ms": [], "step_ms": []}

    def step(y):
        return mx.argmax(model(y[None], cache=cache)[:, -1, :], axis=-1)

    def loop(record):
        nonlocal y
        y = step(y)
        mx.async_eval(y)
        last = time.perf_counter()
        for _ in range(n):
            t0 = time.perf_counter()
            nxt = step(y)
            t1 = time.perf_counter()
            mx.async_eval(nxt)
            t2 = time.perf_counter()
            y.item()
            t3 = time.perf_counter()
            if record:
                for k, dt in zip(host, (t1 - t0, t2 - t1, t3 - t2, t3 - last)):
                    host[k].append(1e3 * dt)
            last = t3
            y = nxt
        y.item()

    loop(False)  # warm: every step of the traced loop has run once
    # The GPU ran n + 1 steps (the first queued before the loop).
    gpu = summarize(*trace(lambda: loop(True), 1, warm=False), n + 1)
    return gpu, {k: statistics.median(v) for k, v in host.items()}


def measure(model, prompt, kind, args):
    cache = (
        make_prompt_cache(model) if kind == "bf16" else make_prompt_cache(model, kv_cache_type=kind)
    )
    y = prefill(model, prompt, cache, args.prefill_step)
    mx.synchronize()
    row = {"cache": kind}
    # Two loops of steps + 1 tokens each (the last queued step included).
    row["loop"], row["loop_host"] = decode_loop(model, cache, y, args.steps)
    row["nodes"], row["node_kinds"] = step_nodes(model, cache, y)
    mx.eval([c.state for c in cache])
    for c in cache:
        c.trim(1)
    if args.loop_only:
        return row
    for c in cache:
        c.trim(2 * (args.steps + 1))

    def step():
        nonlocal y
        y = mx.argmax(model(y[None], cache=cache)[:, -1, :], axis=-1)
        mx.eval(y)

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
    lines += [
        "### the decode loop (as generate_step runs it): ms per step",
        "",
        "| context | cache | step | host: build | host: queue | host: wait | GPU span "
        "| GPU busy | GPU idle | kernels | long copies (ms) | graph nodes | queue us per node |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        h, g = r["loop_host"], r["loop"]
        lines.append(
            table_line(
                [f"{r['context']:,}", r["cache"]]
                + [f"{h[k]:.2f}" for k in ("step_ms", "build_ms", "queue_ms", "wait_ms")]
                + [f"{g[k] / 1e3:.2f}" for k in ("span_us", "busy_us")]
                + [
                    f"{(g['span_us'] - g['busy_us']) / 1e3:.2f}",
                    f"{g['kernels']:.0f}",
                    f"{g['long_copies']:.1f} ({g['long_copy_us'] / 1e3:.2f})",
                ]
                + (
                    [f"{r['nodes']}", f"{1e3 * h['queue_ms'] / r['nodes']:.1f}"]
                    if "nodes" in r
                    else ["", ""]
                )
            )
        )
    lines.append("")
    for phase, title in (
        ("loop", "one step of the decode loop"),
        ("decode", "one decode step evaluated alone"),
        ("prefill_chunk", "one prefill chunk"),
    ):
        if any(phase not in r for r in rows):
            continue
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
    if any("host_api" in r["loop"] for r in rows):
        lines += [
            "### The host's CUDA API calls in one step of the decode loop (CUPTI; us, all threads)",
            "",
        ]
        for r in rows:
            api = r["loop"].get("host_api")
            if api is None:
                continue
            lines.append(
                f"{r['context']:,} tokens, {r['cache']}: {r['loop']['host_api_us']:.0f} us in calls"
            )
            lines.append("")
            if not api:
                lines += ["(no runtime or driver calls recorded)", ""]
                continue
            lines += ["| call | calls | us |", "|---|---:|---:|"]
            for a in api:
                lines.append(f"| `{a['name']}` | {a['calls']:.1f} | {a['us']:.1f} |")
            lines.append("")
    lines += ["### Top kernels of one step of the decode loop", ""]
    for r in rows:
        lines.append(f"{r['context']:,} tokens, {r['cache']}:")
        lines.append("")
        lines.append("| kernel | launches | us |")
        lines.append("|---|---:|---:|")
        for k in r["loop"]["top"]:
            lines.append(f"| `{k['name']}` | {k['launches']:.0f} | {k['us']:.1f} |")
        lines.append("")
    return "\n".join(lines) + "\n"


DESCRIBE = "kernels recorded with CUPTI (torch.profiler); "


def describe(steps, alone):
    """The header's account of what was traced."""
    what = f"{steps} steps of the decode loop (host ms: medians)"
    if alone:
        what += f", then {steps} steps evaluated one at a time and one prefill chunk"
    return DESCRIBE + what


def render(path):
    """Rewrite the .md of an earlier run's JSON; its header keeps the device and
    MLX version of the .md's first line, and says which phases the rows hold."""
    base = path[: -len(".json")]
    with open(path) as f:
        rows = json.load(f)
    with open(base + ".md") as f:
        first = f.readline().rstrip("\n")
    head, _, rest = first.partition(DESCRIBE)
    steps = int(rest.split(" ", 1)[0])
    mlx = rest[rest.rindex("; mlx ") :]
    header = head + describe(steps, all("decode" in r for r in rows)) + mlx
    with open(base + ".md", "w") as f:
        f.write(markdown(rows, header))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_profile_args(ap, "32768", 8, "decode steps traced")
    ap.add_argument(
        "--loop-only", action="store_true", help="only the decode loop (no step alone, no chunk)"
    )
    ap.add_argument(
        "--render",
        metavar="JSON",
        default=None,
        help="only rewrite JSON's .md from its rows (the header's phases from the rows)",
    )
    args = ap.parse_args()
    if args.render:
        render(args.render)
        return
    model, base, header = setup(args, "decode_trace", describe(args.steps, not args.loop_only))
    rows = measure_cells(args, model, measure, base, lambda rs: markdown(rs, header))
    print(markdown(rows, header))


if __name__ == "__main__":
    main()
