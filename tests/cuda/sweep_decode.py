"""Decode attention at the shapes users run, per kernel and per split count.

    python3 tests/cuda/sweep_decode.py [--out DIR] [--quick] [--auto-only]

For B in (1, 8), (Hq, Hkv) in ((28, 4), (32, 8)), D = 128, contexts 8K..128K
and turbo4 / turbo3 (bf16 scales, tensor-core decode): the split count MLX
plans (plan_decode) and forced ones, each timed as a CUDA graph of 20 calls
(median of 7 replays, inputs rotated so the L2 does not hold the cache); the kernels of
one call are also recorded with CUPTI (torch.profiler) so the decode kernel
and the split-K combine are timed apart. Each row also says how far its output
is from the first plan's (rel_err_vs_first: float32 reassociation, and
the rounding of the weights to the MMA's type, which follows each split's
running maximum). Next to them: PyTorch's bf16 SDPA
(fastest backend) on the same shape and a device-to-device copy (GB/s).
Writes DIR/sweep_decode.json.
"""

import argparse
import json
import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def load_gpu_modules():
    """torch, the harness library and its timing helpers, as module globals
    (--render needs none of them)."""
    global torch, F, tq_lib, dev
    global bench, best_sdpa, copy_bw, kernel_times, ncopies
    import torch
    import torch.nn.functional as F
    import tq_lib
    from bench_tq_cuda import bench, best_sdpa, copy_bw, kernel_times, ncopies

    dev = torch.device("cuda")


def case(B, Hq, Hkv, kL, bits, splits_list, D=128):
    scale = 1.0 / math.sqrt(D)
    w = tq_lib.words(bits, D)
    nbytes = 2 * B * Hkv * kL * (4 * w + 2) + B * Hq * D * 4 * 2
    nc = ncopies(nbytes)
    kc = [
        torch.randint(-(2**31), 2**31 - 1, (B, Hkv, kL, w), dtype=torch.int32, device=dev)
        for _ in range(nc)
    ]
    vc = [
        torch.randint(-(2**31), 2**31 - 1, (B, Hkv, kL, w), dtype=torch.int32, device=dev)
        for _ in range(nc)
    ]
    ksc = [(torch.rand(B, Hkv, kL, 1, device=dev) + 0.5).bfloat16() for _ in range(nc)]
    vsc = [(torch.rand(B, Hkv, kL, 1, device=dev) + 0.5).bfloat16() for _ in range(nc)]
    qf = [torch.randn(B, Hq, 1, D, device=dev) for _ in range(nc)]
    out = torch.empty(B, Hq, 1, D, device=dev)
    rows = []
    ref = None
    for fs in splits_list:
        att = tq_lib.Attention(
            B,
            Hq,
            Hkv,
            1,
            kL,
            D,
            bits,
            bits,
            scale,
            force_splits=fs,
            low_precision=True,
            sdtype=torch.bfloat16,
        )

        def fn(i):
            att(qf[i % nc], kc[i % nc], ksc[i % nc], vc[i % nc], vsc[i % nc], out=out)

        fn(0)
        torch.cuda.synchronize()
        if ref is None:
            ref = out.clone()
        same = bool(torch.equal(out, ref))
        err = float((out - ref).abs().max() / ref.abs().max())
        t = bench(fn, 20)
        kt = kernel_times(fn)
        rows.append(
            {
                "B": B,
                "hq": Hq,
                "hkv": Hkv,
                "context": kL,
                "mode": f"turbo{bits}",
                "force_splits": fs,
                "splits": att.splits,
                "us": t,
                "gbps": nbytes / (t * 1e-6) / 1e9,
                "decode_us": kt.get("decode"),
                "combine_us": kt.get("combine"),
                "same_as_first": same,
                "rel_err_vs_first": err,
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    del kc, vc, ksc, vsc
    torch.cuda.empty_cache()
    return rows


def sdpa_case(B, Hq, Hkv, kL, D=128):
    kv_bytes = 2 * B * Hkv * kL * D * 2
    nc = ncopies(kv_bytes)
    qs = [torch.randn(B, Hq, 1, D, dtype=torch.bfloat16, device=dev) for _ in range(nc)]
    ks = [torch.randn(B, Hkv, kL, D, dtype=torch.bfloat16, device=dev) for _ in range(nc)]
    vs = [torch.randn(B, Hkv, kL, D, dtype=torch.bfloat16, device=dev) for _ in range(nc)]
    t, be = best_sdpa(
        lambda i: F.scaled_dot_product_attention(
            qs[i % nc], ks[i % nc], vs[i % nc], scale=D**-0.5, enable_gqa=True
        ),
        20,
    )
    del qs, ks, vs
    torch.cuda.empty_cache()
    return {
        "B": B,
        "hq": Hq,
        "hkv": Hkv,
        "context": kL,
        "mode": "sdpa_bf16",
        "us": t,
        "backend": be,
        "gbps": kv_bytes / (t * 1e-6) / 1e9,
    }


def markdown(rows):
    """Table: per shape, bf16 SDPA and each mode's time by split count."""
    lines = [
        f"Copy bandwidth in this run: {rows[0]['copy_gbps']:.0f} GB/s (read + write). "
        "us: one call (decode kernel + split-K combine), GB/s: bytes read / time.",
        "",
        "| B | Hq/Hkv | context | mode | splits: us (decode + combine) GB/s |",
        "|---:|---|---:|---|---|",
    ]
    sdpa = {}
    for r in rows[1:]:
        key = (r["B"], r["hq"], r["hkv"], r["context"])
        if r["mode"] == "sdpa_bf16":
            sdpa[key] = r
            lines.append(
                f"| {r['B']} | {r['hq']}/{r['hkv']} | {r['context']:,} | bf16 SDPA "
                f"({r['backend']}) | {r['us']:.1f} us, {r['gbps']:.0f} GB/s |"
            )
            continue
        if r.get("prefetch", 0):
            continue
        cell = (
            f"{r['splits']}{' (auto)' if r['force_splits'] == 0 else ''}: "
            f"{r['us']:.1f} ({r['decode_us']:.1f} + {r['combine_us'] or 0:.1f}) "
            f"{r['gbps']:.0f}"
        )
        if lines[-1].startswith(
            f"| {r['B']} | {r['hq']}/{r['hkv']} | {r['context']:,} | {r['mode']} |"
        ):
            lines[-1] = lines[-1][:-2] + "; " + cell + " |"
        else:
            lines.append(
                f"| {r['B']} | {r['hq']}/{r['hkv']} | {r['context']:,} | {r['mode']} | {cell} |"
            )
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=".")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--auto-only", action="store_true", help="only the planned split count")
    ap.add_argument("--render", help="rewrite the table of an earlier run's JSON")
    args = ap.parse_args()
    if args.render:
        with open(args.render.replace(".json", ".md"), "w") as f:
            f.write(markdown(json.load(open(args.render))))
        return
    load_gpu_modules()
    rows = [{"copy_gbps": copy_bw()}]
    print(json.dumps(rows[0]), flush=True)
    contexts = (32768, 131072) if args.quick else (8192, 32768, 131072)
    for B in (1, 8):
        for Hq, Hkv in ((28, 4), (32, 8)):
            for kL in contexts:
                rows.append(sdpa_case(B, Hq, Hkv, kL))
                print(json.dumps(rows[-1]), flush=True)
                for bits in (4, 3):
                    splits = (0, 16, 32, 64, 128) if B == 1 else (0, 4, 8, 16)
                    if args.auto_only:
                        splits = (0,)
                    rows += case(B, Hq, Hkv, kL, bits, splits)
    with open(os.path.join(args.out, "sweep_decode.json"), "w") as f:
        json.dump(rows, f, indent=1)
    with open(os.path.join(args.out, "sweep_decode.md"), "w") as f:
        f.write(markdown(rows))


if __name__ == "__main__":
    main()
