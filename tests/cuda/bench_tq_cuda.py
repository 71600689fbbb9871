"""Decode benchmarks of the TurboQuant CUDA kernels vs PyTorch SDPA.

    python3 tests/cuda/bench_tq_cuda.py [--out DIR] [--quick]

Decode: B in (1, 8), Hq=32, Hkv=8, D=128, qL=1, context 1K..128K.
  * sdpa_bf16   torch.nn.functional.scaled_dot_product_attention, bf16 K/V
  * deq+sdpa    our dequantize kernel (codes -> bf16 K and V, original
                domain) followed by the same SDPA call (turbo4 cache)
  * turbo3/4    the fused decode kernel on the packed cache (fp16 scales)
                as MLX runs it for float32 queries (SIMT); the query
                rotation and output inverse rotation (two 128-point Hadamard
                transforms per head) are not included
  * tc3/tc4     the same call as MLX runs it for fp16/bf16 queries (the
                tensor-core decode kernel, turbo_sdpa_vector_tc)
Both are planned and launched through MLX's plan (tq_lib.Attention).
Dequantize (the attention's route for many queries): turbo_decode of a
(1, 4, L) cache slice to bf16, alone and with the exact first row and the
moving key shift (8 planes), L = 32K and 128K.
Bandwidth = bytes the kernel must read/write at least (K/V codes + scales,
q, out) / time, next to a measured device-to-device copy (read + write).
Inputs rotate among several copies so that the L2 cache (50-60 MB) does not
hold the cache between iterations. Each batch of calls is captured in a CUDA
graph (host launch overhead excluded, for every method alike); times are the
median of 7 graph replays timed with events.
"""

import argparse
import json
import math
import os
import time

import torch
import torch.nn.functional as F

import tq_lib

p = argparse.ArgumentParser()
p.add_argument("--out", default=".")
p.add_argument("--quick", action="store_true")
p.add_argument("--dequant-only", action="store_true", help="only the dequantize table")
args, _ = p.parse_known_args()  # also imported by sweep_decode.py

dev = torch.device("cuda")
torch.manual_seed(0)
L2_DEFEAT = 256 << 20


def bench(fn, n_inner, reps=7):
    """Median per-call time in us. The n_inner calls are captured into a CUDA
    graph (so host launch overhead does not hide small kernels); eager if the
    capture fails."""
    fn(0)
    torch.cuda.synchronize()
    try:
        g = torch.cuda.CUDAGraph()
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            for i in range(n_inner):
                fn(i)
        torch.cuda.current_stream().wait_stream(s)
        with torch.cuda.graph(g):
            for i in range(n_inner):
                fn(i)
        g.replay()
        torch.cuda.synchronize()
        times = []
        for _ in range(reps):
            a = torch.cuda.Event(enable_timing=True)
            b = torch.cuda.Event(enable_timing=True)
            a.record()
            g.replay()
            b.record()
            b.synchronize()
            times.append(a.elapsed_time(b) / n_inner)
        times.sort()
        del g
        return times[len(times) // 2] * 1e3
    except Exception as e:  # noqa: BLE001
        print("graph capture failed, timing eagerly:", str(e)[:120], flush=True)
        torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        a = torch.cuda.Event(enable_timing=True)
        b = torch.cuda.Event(enable_timing=True)
        a.record()
        for i in range(n_inner):
            fn(i)
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b) / n_inner)
    times.sort()
    return times[len(times) // 2] * 1e3  # microseconds


def best_sdpa(fn, n_inner, reps=7):
    """Fastest of the SDPA backends that accept the call."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    best = (float("inf"), None)
    for be in (
        SDPBackend.FLASH_ATTENTION,
        SDPBackend.EFFICIENT_ATTENTION,
        SDPBackend.CUDNN_ATTENTION,
    ):
        try:
            with sdpa_kernel([be]):
                t = bench(fn, n_inner, reps)
        except RuntimeError:
            continue
        best = min(best, (t, be.name))
    return best


def copy_bw():
    n = 1 << 28  # 1 GiB of float32
    x = torch.empty(n, dtype=torch.float32, device=dev).uniform_()
    y = torch.empty_like(x)
    t = bench(lambda i: y.copy_(x), 10)
    del x, y
    return 2 * n * 4 / (t * 1e-6) / 1e9  # GB/s, read + write


def kernel_times(fn, n=5):
    """us per call of a decode call's kernels over n calls (CUPTI): the split-K
    combine, the preparation launch, and the decode kernel (any other)."""
    from torch.profiler import ProfilerActivity, profile

    fn(0)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for i in range(n):
            fn(i)
        torch.cuda.synchronize()
    out = {}
    for e in prof.events():
        if e.device_type == torch.autograd.DeviceType.CUDA:
            key = next((k for k in ("combine", "prep") if k in e.name), "decode")
            out[key] = out.get(key, 0.0) + e.device_time / n
    return out


def ncopies(nbytes):
    return max(1, min(8, math.ceil(L2_DEFEAT / max(nbytes, 1))))


def decode_case(B, kL, results, Hq=32, Hkv=8, D=128):
    row = {"B": B, "kL": kL}
    scale = 1.0 / math.sqrt(D)
    # bf16 SDPA
    kv_bytes = 2 * B * Hkv * kL * D * 2
    nc = ncopies(kv_bytes)
    qs = [torch.randn(B, Hq, 1, D, dtype=torch.bfloat16, device=dev) for _ in range(nc)]
    ks = [
        torch.randn(B, Hkv, kL, D, dtype=torch.bfloat16, device=dev) for _ in range(nc)
    ]
    vs = [
        torch.randn(B, Hkv, kL, D, dtype=torch.bfloat16, device=dev) for _ in range(nc)
    ]
    t, row["sdpa_backend"] = best_sdpa(
        lambda i: F.scaled_dot_product_attention(
            qs[i % nc], ks[i % nc], vs[i % nc], scale=scale, enable_gqa=True
        ),
        20,
    )
    row["sdpa_bf16_us"] = t
    row["sdpa_bf16_GBs"] = kv_bytes / (t * 1e-6) / 1e9
    del ks, vs
    torch.cuda.empty_cache()
    # fused turbo kernels
    for bits in (3, 4):
        w = tq_lib.words(bits, D)
        tq_bytes = 2 * B * Hkv * kL * (4 * w + 2) + B * Hq * D * 4 * 2
        nc2 = ncopies(tq_bytes)
        kc = [
            torch.randint(
                -(2**31), 2**31 - 1, (B, Hkv, kL, w), dtype=torch.int32, device=dev
            )
            for _ in range(nc2)
        ]
        vc = [
            torch.randint(
                -(2**31), 2**31 - 1, (B, Hkv, kL, w), dtype=torch.int32, device=dev
            )
            for _ in range(nc2)
        ]
        ksc = [torch.rand(B, Hkv, kL, 1, device=dev).half() for _ in range(nc2)]
        vsc = [torch.rand(B, Hkv, kL, 1, device=dev).half() for _ in range(nc2)]
        qf = [torch.randn(B, Hq, 1, D, device=dev) for _ in range(nc2)]
        out = torch.empty(B, Hq, 1, D, device=dev)
        att = tq_lib.Attention(B, Hq, Hkv, 1, kL, D, bits, bits, scale)
        t = bench(
            lambda i: att(
                qf[i % nc2],
                kc[i % nc2],
                ksc[i % nc2],
                vc[i % nc2],
                vsc[i % nc2],
                out=out,
            ),
            20,
        )
        row[f"turbo{bits}_us"] = t
        row[f"turbo{bits}_GBs"] = tq_bytes / (t * 1e-6) / 1e9
        row[f"turbo{bits}_splits"] = att.splits
        att_tc = tq_lib.Attention(
            B, Hq, Hkv, 1, kL, D, bits, bits, scale, low_precision=True
        )
        t_tc = bench(
            lambda i: att_tc(
                qf[i % nc2],
                kc[i % nc2],
                ksc[i % nc2],
                vc[i % nc2],
                vsc[i % nc2],
                out=out,
            ),
            20,
        )
        row[f"turbo{bits}_tc_us"] = t_tc
        row[f"turbo{bits}_tc_GBs"] = tq_bytes / (t_tc * 1e-6) / 1e9
        if bits == 4:
            # dequantize (to bf16, original domain) then SDPA
            kd = torch.empty(B, Hkv, kL, D, dtype=torch.float16, device=dev)
            vd = torch.empty_like(kd)
            qb = qs[0]

            def deq_sdpa(i):
                j = i % nc2
                tq_lib.decode(kc[j], ksc[j], 4, D, out=kd)
                tq_lib.decode(vc[j], vsc[j], 4, D, out=vd)
                return F.scaled_dot_product_attention(
                    qb, kd, vd, scale=scale, enable_gqa=True
                )

            from torch.nn.attention import SDPBackend, sdpa_kernel

            with sdpa_kernel([getattr(SDPBackend, row["sdpa_backend"])]):
                row["deq_sdpa_us"] = bench(deq_sdpa, 5)
            del kd, vd
        del kc, vc, ksc, vsc, qf
        torch.cuda.empty_cache()
    results.append(row)
    print(json.dumps(row), flush=True)


def dequant_case(L, results, H=4, D=128, P=8):
    """turbo_decode of the (1, H, L) rows of a cache buffer with 256 rows
    more (a slice, as mlx-lm passes it) to bf16."""
    nc = max(2, min(8, L2_DEFEAT // (H * L * D * 2) + 1))
    for bits in (3, 4):
        W = tq_lib.words(bits, D)
        bufs = [
            torch.randint(
                -(2**31), 2**31 - 1, (1, H, L + 256, W), dtype=torch.int32, device=dev
            )
            for _ in range(nc)
        ]
        scs = [torch.rand(1, H, L + 256, 1, device=dev).bfloat16() for _ in range(nc)]
        outs = [
            torch.empty(1, H, L + 1, D, dtype=torch.bfloat16, device=dev)
            for _ in range(nc)
        ]
        first = torch.randn(1, H, 1, D, device=dev).bfloat16()
        freqs = torch.randint(0, 2**24, (1, H, P), dtype=torch.int32, device=dev)
        waves = torch.randn(1, H, 2 * P, D, device=dev)
        nbytes = H * L * (W * 4 + 2 + D * 2)
        for variant in ("plain", "first+waves"):
            kv = variant != "plain"

            def fn(i):
                j = i % nc
                tq_lib.decode(
                    bufs[j][:, :, :L],
                    scs[j][:, :, :L],
                    bits,
                    D,
                    out=(
                        outs[j]
                        if kv
                        else outs[j].view(-1)[: H * L * D].view(1, H, L, D)
                    ),
                    first=first if kv else None,
                    freqs=freqs if kv else None,
                    waves=waves if kv else None,
                )

            t = bench(fn, 20)
            results.append(
                {
                    "bits": bits,
                    "L": L,
                    "H": H,
                    "D": D,
                    "variant": variant,
                    "us": t,
                    "GBs": nbytes / (t * 1e-6) / 1e9,
                }
            )
            print(json.dumps(results[-1]), flush=True)
        del bufs, scs, outs
        torch.cuda.empty_cache()


def main():
    t0 = time.time()
    info = {
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "sms": torch.cuda.get_device_properties(0).multi_processor_count,
    }
    info["copy_GBs"] = copy_bw()
    print(json.dumps(info), flush=True)
    dequant = []
    for L in (32768, 131072):
        dequant_case(L, dequant)
    decode = []
    ctxs = [1024, 4096, 16384, 32768, 65536, 131072]
    if args.quick:
        ctxs = [4096, 131072]
    for B in (1, 8):
        for kL in [] if args.dequant_only else ctxs:
            decode_case(B, kL, decode)
    res = {
        "info": info,
        "dequant": dequant,
        "decode": decode,
        "seconds": time.time() - t0,
    }
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "bench_cuda.json"), "w") as f:
        json.dump(res, f, indent=1)
    # tables
    print(f"\n{info['device']}  copy {info['copy_GBs']:.0f} GB/s (read+write)")
    print("dequantize to bf16 (turbo_decode), B=1 H=4 D=128; us, GB/s on bytes moved")
    for r in dequant:
        print(
            f"turbo{r['bits']} L={r['L']:>7} {r['variant']:>12}: {r['us']:>8.1f} us "
            f"{r['GBs']:>6.0f} GB/s ({r['GBs'] / info['copy_GBs']:.0%} of copy)"
        )
    print("decode, Hq=32 Hkv=8 D=128 qL=1; times in us; GB/s on bytes moved")
    print(
        f"{'B':>2} {'ctx':>7} | {'sdpa bf16':>10} {'GB/s':>6} | {'deq+sdpa':>9} | "
        f"{'turbo3':>8} {'GB/s':>6} {'x':>5} | {'turbo4':>8} {'GB/s':>6} {'x':>5} | "
        f"{'tc3':>7} {'GB/s':>6} | {'tc4':>7} {'GB/s':>6}"
    )
    for r in decode:
        print(
            f"{r['B']:>2} {r['kL']:>7} | {r['sdpa_bf16_us']:>10.1f} {r['sdpa_bf16_GBs']:>6.0f} | "
            f"{r['deq_sdpa_us']:>9.1f} | "
            f"{r['turbo3_us']:>8.1f} {r['turbo3_GBs']:>6.0f} {r['sdpa_bf16_us'] / r['turbo3_us']:>5.2f} | "
            f"{r['turbo4_us']:>8.1f} {r['turbo4_GBs']:>6.0f} {r['sdpa_bf16_us'] / r['turbo4_us']:>5.2f} | "
            f"{r['turbo3_tc_us']:>7.1f} {r['turbo3_tc_GBs']:>6.0f} | "
            f"{r['turbo4_tc_us']:>7.1f} {r['turbo4_tc_GBs']:>6.0f}"
        )
    try:
        if decode:
            plot(res, args.out)
    except Exception as e:  # plotting is optional
        print("plot failed:", e)


def plot(res, out):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, B in zip(axes, (1, 8)):
        rows = [r for r in res["decode"] if r["B"] == B]
        x = [r["kL"] for r in rows]
        for key, lab in (
            ("sdpa_bf16_us", "PyTorch SDPA bf16"),
            ("deq_sdpa_us", "dequant + SDPA"),
            ("turbo4_us", "fused turbo4"),
            ("turbo3_us", "fused turbo3"),
            ("turbo4_tc_us", "fused turbo4, tensor cores"),
            ("turbo3_tc_us", "fused turbo3, tensor cores"),
        ):
            ax.plot(x, [r[key] for r in rows], marker="o", label=lab)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("context length")
        ax.set_ylabel("time per decode step (us)")
        ax.set_title(f"B={B}, Hq=32, Hkv=8, D=128 ({res['info']['device']})")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(out, "cuda_decode.png"), dpi=110)


if __name__ == "__main__":
    main()
