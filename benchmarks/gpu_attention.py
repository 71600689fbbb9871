"""TurboQuant attention vs MLX's own attention on the GPU, through MLX itself.

Runs on any MLX GPU build (CUDA on Linux, Metal on macOS) with the patched
wheel from ./build.sh (--cuda on Linux). Everything is called through the
public API, exactly as mlx-lm would:

* ``sdpa``        mx.fast.scaled_dot_product_attention on the fp16/bf16 cache
                  (MLX's sdpa_vector kernels for decode, cuDNN / steel for prefill)
* ``deq+sdpa``    mx.dequantize of the TurboQuant cache, then the same SDPA
* ``turbo3`` / ``turbo4``
                  mx.fast.quantized_scaled_dot_product_attention on the packed
                  cache (query rotation, fused kernel, inverse rotation and
                  cast included)

Timing: each measurement evaluates ``--calls`` independent calls in one
``mx.eval`` (so host-side graph building overlaps the GPU), after warm-up;
the median over ``--reps`` is divided by ``--calls``. In the grid, a shape
whose ``--calls`` take less than ``--min-ms`` (20 ms) queues more calls, up
to 1000, so that short calls are timed over enough GPU work. Caches rotate among
enough copies that they do not sit in L2. GB/s counts the bytes that must
move: packed codes + scales (+ q and output) for turbo, fp16/bf16 K/V for
SDPA. The device's copy bandwidth is measured in the same run (read + write
of a 2 GiB float32 array). Peak memory: ``mx.get_peak_memory`` during one
fused call at the largest context, minus the memory held before it.

    python benchmarks/gpu_attention.py --out DIR [--quick] [--no-prefill]
    python benchmarks/gpu_attention.py --grid --out DIR   # the decode grid only

Writes DIR/gpu_attention.json, DIR/gpu_attention.md and DIR/gpu_attention.png;
with ``--grid``, the decode grid of the shapes users run instead: B 1 and 8,
Hq/Hkv 28/4 (Qwen2.5-7B) and 32/8 (Llama-3-8B), D 64, 128 and 256, contexts
4K, 32K and 128K, bfloat16 (and float16 at D = 128) queries, turbo3 / turbo4
against SDPA on the fp cache, as rows ``{B, context, hq, hkv, d, dtype, mode,
us, sdpa_us, gbps, copy_gbps}`` in DIR/gpu_decode_<machine>.json and .md.
"""

import argparse
import json
import math
import os
import statistics
import time

import mlx.core as mx

HQ, HKV, D = 32, 8, 128


def timed(fn, calls, reps, warmup=2, min_s=0.0, max_calls=1000):
    """Median seconds per call over reps evaluations of calls queued calls.
    With min_s, calls grows (up to max_calls) until one evaluation takes at
    least min_s, found in the warm-up: short calls are then timed over enough
    GPU work that the evaluation's fixed cost and the GPU's clock ramp after
    the synchronization weigh little."""
    for _ in range(warmup):
        mx.eval(fn(0))
    mx.synchronize()
    while min_s > 0:
        t0 = time.perf_counter()
        mx.eval([fn(i) for i in range(calls)])
        mx.synchronize()
        t = time.perf_counter() - t0
        if t >= min_s or calls >= max_calls:
            break
        calls = min(max_calls, max(2 * calls, math.ceil(calls * 1.2 * min_s / t)))
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        mx.eval([fn(i) for i in range(calls)])
        mx.synchronize()
        times.append((time.perf_counter() - t0) / calls)
    return statistics.median(times)


def copy_bandwidth(small=False):
    n = (1 << 20) if small else (512 << 20)  # 2 GiB of float32
    x = mx.zeros((n,), mx.float32)
    mx.eval(x)
    t = timed(lambda i: x + 1.0, calls=5, reps=5)
    del x
    return 2 * n * 4 / t / 1e9


def nbytes(*arrays):
    return sum(a.nbytes for a in arrays)


def make_cache(B, L, dtype, copies):
    """`copies` independent caches: fp K/V and their turbo3 / turbo4 forms."""
    out = []
    for _ in range(copies):
        k = mx.random.normal((B, HKV, L, D)).astype(dtype)
        v = mx.random.normal((B, HKV, L, D)).astype(dtype)
        entry = {"k": k, "v": v}
        for mode in ("turbo3", "turbo4"):
            entry[mode] = (mx.quantize(k, mode=mode), mx.quantize(v, mode=mode))
        mx.eval(entry)
        out.append(entry)
    return out


def methods(q_of, caches, causal):
    scale = D**-0.5
    mask = "causal" if causal else None

    def sdpa(i):
        c = caches[i % len(caches)]
        return mx.fast.scaled_dot_product_attention(q_of(i), c["k"], c["v"], scale=scale, mask=mask)

    def deq(i):
        c = caches[i % len(caches)]
        (kq, ks), (vq, vs) = c["turbo4"]
        dt = c["k"].dtype
        k = mx.dequantize(kq, ks, mode="turbo4", dtype=dt)
        v = mx.dequantize(vq, vs, mode="turbo4", dtype=dt)
        return mx.fast.scaled_dot_product_attention(q_of(i), k, v, scale=scale, mask=mask)

    def fused(mode):
        def f(i):
            c = caches[i % len(caches)]
            (kq, ks), (vq, vs) = c[mode]
            return mx.fast.quantized_scaled_dot_product_attention(
                q_of(i), kq, ks, vq, vs, scale=scale, mask=mask, mode=mode
            )

        return f

    return {"sdpa": sdpa, "deq+sdpa": deq, "turbo3": fused("turbo3"), "turbo4": fused("turbo4")}


def bytes_moved(name, c, q, B, qL):
    io = q.nbytes + B * HQ * qL * D * q.dtype.size
    if name == "sdpa":
        return nbytes(c["k"], c["v"]) + io
    if name in ("turbo3", "turbo4"):
        (kq, ks), (vq, vs) = c[name]
        return nbytes(kq, ks, vq, vs) + io
    return None


def check_close(fns, q_of):
    """The fused outputs must agree with SDPA on the dequantized cache."""
    ref = fns["deq+sdpa"](0).astype(mx.float32)
    out = fns["turbo4"](0).astype(mx.float32)
    err = (mx.linalg.norm(out - ref) / mx.linalg.norm(ref)).item()
    return err


def record(rows, row):
    """Keeps and prints a finished row; frees the cached buffers of its case."""
    rows.append(row)
    print(json.dumps(row), flush=True)
    mx.clear_cache()


def run_decode(args, dtype, bw):
    rows = []
    ctxs = [1024, 4096, 16384, 32768, 65536, 131072]
    if args.quick:
        ctxs = [4096, 32768]
    if args.cpu_smoke:
        ctxs = [256, 512]
    for B in (1, 8):
        for L in ctxs:
            fp_bytes = 2 * B * HKV * L * D * 2
            copies = max(1, min(8, math.ceil(256e6 / fp_bytes)))
            if B * L > 8 * 65536:
                copies = 1
            caches = make_cache(B, L, dtype, copies)
            qs = [mx.random.normal((B, HQ, 1, D)).astype(dtype) for _ in range(copies)]
            mx.eval(qs)
            q_of = lambda i: qs[i % len(qs)]
            fns = methods(q_of, caches, causal=False)
            row = {"B": B, "context": L, "rel_err_turbo4_vs_deq": check_close(fns, q_of)}
            for name, fn in fns.items():
                # Calls are queued before one sync: dequantize-then-SDPA holds a
                # dequantized K/V per queued call, so cap it to ~16 GB in flight.
                calls = args.calls
                if name == "deq+sdpa":
                    calls = max(1, min(calls, int(16e9 // fp_bytes)))
                t = timed(fn, calls=calls, reps=args.reps)
                row[name + "_us"] = t * 1e6
                nb = bytes_moved(name, caches[0], qs[0], B, 1)
                if nb:
                    row[name + "_GBps"] = nb / t / 1e9
            for m in ("turbo3", "turbo4"):
                row[m + "_speedup"] = row["sdpa_us"] / row[m + "_us"]
                row[m + "_bw_frac"] = row[m + "_GBps"] / bw
            del caches, qs, fns
            record(rows, row)
    return rows


def grid_case(B, L, hq, hkv, d, dtype, args, bw):
    """Rows of one decode shape: turbo3 and turbo4 against SDPA (fp cache)."""
    global HQ, HKV, D
    HQ, HKV, D = hq, hkv, d
    fp_bytes = 2 * B * hkv * L * d * 2
    copies = max(1, min(8, math.ceil(256e6 / fp_bytes)))
    caches = make_cache(B, L, dtype, copies)
    qs = [mx.random.normal((B, hq, 1, d)).astype(dtype) for _ in range(copies)]
    mx.eval(qs)
    fns = methods(lambda i: qs[i % len(qs)], caches, causal=False)
    t = {
        m: timed(fns[m], calls=args.calls, reps=args.reps, min_s=args.min_ms / 1e3)
        for m in ("sdpa", "turbo3", "turbo4")
    }
    rows = []
    for m in ("turbo3", "turbo4"):
        rows.append(
            {
                "B": B,
                "context": L,
                "hq": hq,
                "hkv": hkv,
                "d": d,
                "dtype": str(dtype).split(".")[-1],
                "mode": m,
                "us": t[m] * 1e6,
                "sdpa_us": t["sdpa"] * 1e6,
                "gbps": bytes_moved(m, caches[0], qs[0], B, 1) / t[m] / 1e9,
                "copy_gbps": bw,
            }
        )
    del caches, qs, fns
    mx.clear_cache()
    return rows


def grid_markdown(rows, device, calls=20, min_ms=20.0):
    lines = [
        f"device: {device}; decode (one query per head) through mx.fast, median of "
        f"repetitions of queued calls (at least {calls}, and {min_ms:g} ms of them, up to 1000); "
        f"copy bandwidth {rows[0]['copy_gbps']:.0f} GB/s "
        "(read + write, same run); speedup = SDPA (fp cache) time / turbo time",
        "",
        "| B | Hq/Hkv | D | dtype | context | SDPA us | turbo4 us (x, GB/s, % copy) "
        "| turbo3 us (x, GB/s, % copy) |",
        "|---:|---|---:|---|---:|---:|---|---|",
    ]
    by = {}
    for r in rows:
        by.setdefault((r["B"], r["hq"], r["hkv"], r["d"], r["dtype"], r["context"]), {})[
            r["mode"]
        ] = r
    for (B, hq, hkv, d, dt, L), ms in by.items():

        def cell(m):
            r = ms[m]
            return (
                f"{r['us']:.1f} ({r['sdpa_us'] / r['us']:.2f}x, {r['gbps']:.0f}, "
                f"{100 * r['gbps'] / r['copy_gbps']:.0f}%)"
            )

        lines.append(
            f"| {B} | {hq}/{hkv} | {d} | {dt} | {L:,} | {ms['turbo4']['sdpa_us']:.1f} "
            f"| {cell('turbo4')} | {cell('turbo3')} |"
        )
    return "\n".join(lines) + "\n"


def run_grid(args, machine, device):
    bw = copy_bandwidth(small=args.cpu_smoke)
    print(f"copy bandwidth {bw:.0f} GB/s", flush=True)
    t0 = time.monotonic()
    rows = []
    ctxs = [256, 512] if args.cpu_smoke else [4096, 32768, 131072]
    shapes = [(4, 2)] if args.cpu_smoke else [(28, 4), (32, 8)]
    cases = [
        (dt, d)
        for d in (64, 128, 256)
        for dt in ((mx.bfloat16, mx.float16) if d == 128 else (mx.bfloat16,))
    ]
    base = os.path.join(args.out, f"gpu_decode_{machine}")
    for dt, d in cases:
        for hq, hkv in shapes:
            for B in (1, 8):
                for L in ctxs:
                    if args.time_budget and time.monotonic() - t0 > args.time_budget:
                        print("time budget reached: grid cut here", flush=True)
                        return rows
                    new = grid_case(B, L, hq, hkv, d, dt, args, bw)
                    for r in new:
                        print(json.dumps(r), flush=True)
                    rows += new
                    with open(base + ".json", "w") as f:
                        json.dump(rows, f, indent=1)
                    with open(base + ".md", "w") as f:
                        f.write(grid_markdown(rows, device, args.calls, args.min_ms))
    return rows


def run_prefill(args, dtype):
    rows = []
    # 32K only with cuDNN (MLX's default on CUDA): MLX's CUDA SDPA without it
    # (MLX_CUDA_USE_CUDNN_SDPA=0) materializes the Hq x L x L scores, 64 GiB
    # in bfloat16 at 32K.
    Ls = [4096, 16384] if args.quick else [4096, 8192, 16384]
    if not args.quick and os.environ.get("MLX_CUDA_USE_CUDNN_SDPA", "1") != "0":
        Ls.append(32768)
    for L in [64, 128] if args.cpu_smoke else Ls:
        caches = make_cache(1, L, dtype, 1)
        q = mx.random.normal((1, HQ, L, D)).astype(dtype)
        mx.eval(q)
        fns = methods(lambda i: q, caches, causal=True)
        row = {"B": 1, "L": L, "rel_err_turbo4_vs_deq": check_close(fns, lambda i: q)}
        flops = 4 * HQ * L * L * D / 2
        for name, fn in fns.items():
            t = timed(fn, calls=2, reps=3, warmup=1)
            row[name + "_ms"] = t * 1e3
            row[name + "_TFLOPs"] = flops / t / 1e12
        row["turbo4_vs_sdpa"] = row["turbo4_ms"] / row["sdpa_ms"]
        row["turbo3_vs_sdpa"] = row["turbo3_ms"] / row["sdpa_ms"]
        row.update(prefill_transient(fns, q, caches[0]))
        del caches, q, fns
        record(rows, row)
    return rows


def prefill_transient(fns, q, c):
    """Memory one turbo4 prefill call takes beyond what is held before it and
    its output (the dequantized copy of K and V for MLX's attention, and MLX's
    own attention's temporaries), next to the fp16 size of that K and V and
    to what bf16 SDPA takes beyond its inputs and output."""
    row = {"fp16_kv_bytes": c["k"].size * 2 + c["v"].size * 2}
    for name in ("sdpa", "turbo4"):
        mx.synchronize()
        mx.clear_cache()
        before = mx.get_active_memory()
        mx.reset_peak_memory()
        out = fns[name](0)
        mx.eval(out)
        mx.synchronize()
        row[name + "_transient_bytes"] = mx.get_peak_memory() - before - out.nbytes
        del out
    return row


def peak_memory(dtype, L):
    """Peak memory of one fused decode call over an L-token turbo4 cache."""
    B = 1
    c = make_cache(B, L, dtype, 1)[0]
    q = mx.random.normal((B, HQ, 1, D)).astype(dtype)
    (kq, ks), (vq, vs) = c["turbo4"]
    del c["k"], c["v"], c["turbo3"]
    mx.eval(q)
    mx.synchronize()
    mx.clear_cache()
    before = mx.get_active_memory()
    mx.reset_peak_memory()
    out = mx.fast.quantized_scaled_dot_product_attention(
        q, kq, ks, vq, vs, scale=D**-0.5, mode="turbo4"
    )
    mx.eval(out)
    mx.synchronize()
    peak = mx.get_peak_memory()
    cache = nbytes(kq, ks, vq, vs)
    return {
        "context": L,
        "cache_bytes": cache,
        "fp16_cache_bytes": 2 * B * HKV * L * D * 2,
        "held_before_bytes": before,
        "peak_bytes": peak,
        "extra_over_held_bytes": peak - before,
        "output_bytes": out.nbytes,
    }


def plot(rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, B in zip(axes, (1, 8)):
        rs = [r for r in rows if r["B"] == B]
        xs = [r["context"] for r in rs]
        for name in ("sdpa", "deq+sdpa", "turbo3", "turbo4"):
            ax.plot(xs, [r[name + "_us"] for r in rs], marker="o", label=name)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("context (tokens)")
        ax.set_ylabel("time per call (us)")
        ax.set_title(f"decode, B={B}, Hq={HQ}, Hkv={HKV}, D={D}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def markdown(res):
    lines = [
        f"device: {res['device']}, dtype {res['dtype']}, copy bandwidth {res['copy_GBps']:.0f} GB/s",
        "",
        "| B | context | sdpa (us) | deq+sdpa (us) | turbo3 (us) | turbo3 speedup | turbo3 GB/s | turbo4 (us) | turbo4 speedup | turbo4 GB/s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in res["decode"]:
        lines.append(
            f"| {r['B']} | {r['context']:,} | {r['sdpa_us']:.1f} | {r['deq+sdpa_us']:.1f} | "
            f"{r['turbo3_us']:.1f} | {r['turbo3_speedup']:.2f}x | {r['turbo3_GBps']:.0f} | "
            f"{r['turbo4_us']:.1f} | {r['turbo4_speedup']:.2f}x | {r['turbo4_GBps']:.0f} |"
        )
    if res.get("prefill"):
        lines += [
            "",
            "| L (causal) | sdpa (ms) | deq+sdpa (ms) | turbo3 (ms) | turbo4 (ms) | turbo4 / sdpa "
            "| turbo4 transient MiB (sdpa's) | fp16 K/V MiB |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in res["prefill"]:
            lines.append(
                f"| {r['L']:,} | {r['sdpa_ms']:.2f} | {r['deq+sdpa_ms']:.2f} | {r['turbo3_ms']:.2f} | "
                f"{r['turbo4_ms']:.2f} | {r['turbo4_vs_sdpa']:.2f}x | "
                f"{r['turbo4_transient_bytes'] / 2**20:.1f} ({r['sdpa_transient_bytes'] / 2**20:.1f}) | "
                f"{r['fp16_kv_bytes'] / 2**20:.1f} |"
            )
    if res.get("peak"):
        p = res["peak"]
        lines += [
            "",
            f"peak memory, one turbo4 decode call at {p['context']:,} tokens: "
            f"{p['extra_over_held_bytes'] / 2**20:.2f} MiB over the {p['held_before_bytes'] / 2**20:.1f} MiB "
            f"held (cache {p['cache_bytes'] / 2**20:.1f} MiB; the fp16 cache would be "
            f"{p['fp16_cache_bytes'] / 2**20:.1f} MiB; output {p['output_bytes'] / 2**10:.1f} KiB)",
        ]
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=".")
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16"])
    ap.add_argument("--calls", type=int, default=20)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument(
        "--min-ms",
        type=float,
        default=20.0,
        help="grid: more queued calls where one evaluation of --calls takes less",
    )
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--no-prefill", action="store_true")
    ap.add_argument(
        "--cpu-smoke", action="store_true", help="tiny sizes on the CPU (checks the script)"
    )
    ap.add_argument("--grid", action="store_true", help="the decode grid only (gpu_decode_*.json)")
    ap.add_argument("--time-budget", type=float, default=None, help="seconds (grid)")
    ap.add_argument("--machine", default=None, help="file name tag (grid; default: device)")
    args = ap.parse_args()
    if args.cpu_smoke:
        global HQ, HKV
        HQ, HKV = 4, 2
        mx.set_default_device(mx.cpu)
        args.calls, args.reps, args.min_ms = 2, 1, 0.0
    elif not mx.is_available(mx.gpu):
        raise SystemExit("gpu_attention.py: this MLX build has no GPU backend")
    dtype = getattr(mx, args.dtype)
    os.makedirs(args.out, exist_ok=True)
    info = mx.device_info() if hasattr(mx, "device_info") else {}
    res = {"device": str(info.get("device_name", mx.default_device())), "dtype": args.dtype}
    if args.grid:
        import re

        name = res["device"]
        m = re.search(r"\b([A-Z]\d{2,4})\b", name)
        machine = args.machine or (m.group(1).lower() if m else "cpu")
        rows = run_grid(args, machine, name)
        if rows:
            print(grid_markdown(rows, name, args.calls, args.min_ms))
        return
    res["copy_GBps"] = copy_bandwidth(small=args.cpu_smoke)
    print(f"copy bandwidth {res['copy_GBps']:.0f} GB/s", flush=True)
    res["decode"] = run_decode(args, dtype, res["copy_GBps"])
    res["peak"] = peak_memory(dtype, 2048 if args.cpu_smoke else 131072)
    print(json.dumps(res["peak"]), flush=True)
    if not args.no_prefill:
        res["prefill"] = run_prefill(args, dtype)
    with open(os.path.join(args.out, "gpu_attention.json"), "w") as f:
        json.dump(res, f, indent=1)
    md = markdown(res)
    with open(os.path.join(args.out, "gpu_attention.md"), "w") as f:
        f.write(md)
    print(md)
    try:
        plot(res["decode"], os.path.join(args.out, "gpu_attention.png"))
    except ImportError:
        print("(matplotlib missing: no plot)")


if __name__ == "__main__":
    main()
