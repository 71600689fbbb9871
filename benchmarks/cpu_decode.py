#!/usr/bin/env python3
"""CPU decode attention: fused turbo3/turbo4 vs fp32 / fp16 SDPA and dequantize-then-SDPA.

    .venv/bin/python benchmarks/cpu_decode.py [--contexts 4096 16384 65536]

Prints median milliseconds per call and ratios against fp16 SDPA, all measured
in this one run. One decode step: B=1, Hq=32, Hkv=8, D=128, qL=1. "t3 exact"
is turbo3 with the cache transforms mlx-lm uses by default (key_shift,
first_key, first_value, and the key shift that follows the position with 8
frequencies; docs/format.md section 7); its ratio to plain turbo3 is the
transforms' cost. Plain and transformed calls alternate, so load on the
machine affects both alike.
"""

import argparse
import statistics
import time

import mlx.core as mx


def bench(fn, warmup=2, iters=10):
    for _ in range(warmup):
        mx.eval(fn())
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        mx.eval(fn())
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--contexts", type=int, nargs="+", default=[4096, 16384, 65536])
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("-B", type=int, default=1)
    a = p.parse_args()
    B, Hq, Hkv, D = a.B, 32, 8, 128
    scale = D**-0.5
    mx.random.seed(0)
    print(f"device={mx.default_device()} B={B} Hq={Hq} Hkv={Hkv} D={D} qL=1")
    header = f"{'context':>8} | {'fp32 sdpa':>10} {'fp16 sdpa':>10} {'deq+sdpa t3':>12} {'turbo4':>8} {'turbo3':>8} {'t3 exact':>8} | {'t3 vs fp16':>10} {'t3 vs fp32':>10} {'t4 vs fp16':>10} {'exact/t3':>8}"
    print(header)
    print("-" * len(header))
    rows = []
    for n in a.contexts:
        q32 = mx.random.normal((B, Hq, 1, D))
        k32 = mx.random.normal((B, Hkv, n, D))
        v32 = mx.random.normal((B, Hkv, n, D))
        q16, k16, v16 = (x.astype(mx.float16) for x in (q32, k32, v32))
        t3k = mx.quantize(k16, mode="turbo3")
        t3v = mx.quantize(v16, mode="turbo3")
        t4k = mx.quantize(k16, mode="turbo4")
        t4v = mx.quantize(v16, mode="turbo4")
        tf = dict(
            key_shift=mx.random.normal((B, Hkv, 1, D)).astype(mx.float16),
            first_key=k16[:, :, :1],
            first_value=v16[:, :, :1],
            key_shift_freqs=mx.random.randint(0, 1 << 22, (1, Hkv, 8)).astype(mx.uint32),
            key_shift_waves=mx.random.normal((B, Hkv, 16, D)),
        )
        mx.eval(q32, k32, v32, q16, k16, v16, *t3k, *t3v, *t4k, *t4v, *tf.values())
        sdpa = mx.fast.scaled_dot_product_attention
        qsdpa = mx.fast.quantized_scaled_dot_product_attention
        r = {
            "fp32": bench(lambda: sdpa(q32, k32, v32, scale=scale), iters=a.iters),
            "fp16": bench(lambda: sdpa(q16, k16, v16, scale=scale), iters=a.iters),
            "deq": bench(
                lambda: sdpa(
                    q16,
                    mx.dequantize(*t3k, mode="turbo3"),
                    mx.dequantize(*t3v, mode="turbo3"),
                    scale=scale,
                ),
                iters=a.iters,
            ),
            "t4": bench(lambda: qsdpa(q16, *t4k, *t4v, scale=scale, mode="turbo4"), iters=a.iters),
        }
        plain, exact = [], []
        for _ in range(3):
            plain.append(bench(lambda: qsdpa(q16, *t3k, *t3v, scale=scale, mode="turbo3"), iters=a.iters))
            exact.append(
                bench(lambda: qsdpa(q16, *t3k, *t3v, scale=scale, mode="turbo3", **tf), iters=a.iters)
            )
        r["t3"], r["t3x"] = statistics.median(plain), statistics.median(exact)
        rows.append((n, r))
        print(
            f"{n:>8} | {r['fp32']:>10.2f} {r['fp16']:>10.2f} {r['deq']:>12.2f} {r['t4']:>8.2f} {r['t3']:>8.2f} {r['t3x']:>8.2f} | "
            f"{r['fp16'] / r['t3']:>9.2f}x {r['fp32'] / r['t3']:>9.2f}x {r['fp16'] / r['t4']:>9.2f}x {r['t3x'] / r['t3']:>7.3f}x"
        )
    print("(milliseconds per decode call, median; ratio > 1 means turbo is faster)")


if __name__ == "__main__":
    main()
