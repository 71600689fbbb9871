#!/usr/bin/env python3
"""Quantization quality of the turbo modes, measured with the patched MLX.

1. MSE distortion of random unit vectors, E||x - x_hat||^2, per mode and head dim
   (TurboQuant paper: about 0.034 at 3 bits and 0.009 at 4 bits).
2. Attention-output error against float32 attention on the unquantized cache:
   relative L2 error and mean cosine similarity, for turbo modes and, for
   comparison, MLX's affine 4/8-bit (group 64) dequantize-then-SDPA.

    .venv/bin/python benchmarks/quality.py
"""

import mlx.core as mx
import numpy as np


def distortion_table(n=8192):
    rng = np.random.default_rng(0)
    print("| mode | " + " | ".join(f"D={d}" for d in (64, 80, 96, 128, 192, 256)) + " |")
    print("|---|" + "---|" * 6)
    for mode in ("turbo3", "turbo4"):
        row = []
        for d in (64, 80, 96, 128, 192, 256):
            x = rng.standard_normal((n, d)).astype(np.float32)
            x /= np.linalg.norm(x, axis=-1, keepdims=True)
            xh = np.array(mx.dequantize(*mx.quantize(mx.array(x), mode=mode), mode=mode))
            row.append(((xh.astype(np.float64) - x) ** 2).sum(-1).mean())
        print(f"| {mode} | " + " | ".join(f"{v:.4f}" for v in row) + " |")


def make_kv(rng, kind, B, H, L, D):
    if kind == "gaussian":
        k = rng.standard_normal((B, H, L, D))
        v = rng.standard_normal((B, H, L, D))
    else:  # LLM-like: a few outlier channels in keys, per-token scale spread
        k = rng.standard_normal((B, H, L, D))
        k[..., rng.choice(D, 4, replace=False)] *= 12.0
        k *= rng.uniform(0.5, 2.0, (B, H, L, 1))
        v = rng.standard_normal((B, H, L, D)) * rng.uniform(0.5, 2.0, (B, H, L, 1))
    return k.astype(np.float32), v.astype(np.float32)


def attention_error_table():
    rng = np.random.default_rng(1)
    B, Hq, Hkv, qL, L, D = 1, 16, 4, 16, 4096, 128
    sdpa = mx.fast.scaled_dot_product_attention
    print("| keys / values | data, attention | rel. L2 error | mean cosine |")
    print("|---|---|---|---|")
    for kind, regime in (
        ("gaussian", "spread"),
        ("gaussian", "peaked"),
        ("outlier-keys", "spread"),
        ("outlier-keys", "peaked"),
    ):
        k, v = make_kv(rng, kind, B, Hkv, L, D)
        q = rng.standard_normal((B, Hq, qL, D)).astype(np.float32)
        if regime == "peaked":
            # Each query points at one key: attention concentrates on few keys.
            kk = np.repeat(k[:, :, :qL], Hq // Hkv, axis=1)
            q = 0.5 * q + 3.0 * kk / np.linalg.norm(kk, axis=-1, keepdims=True) * np.sqrt(D) ** 0.5
        kind = f"{kind}, {regime}"
        q, k, v = mx.array(q), mx.array(k), mx.array(v)
        scale = D**-0.5
        ref = np.array(sdpa(q, k, v, scale=scale), np.float64)

        def report(name, out):
            out = np.array(out, np.float64)
            err = np.linalg.norm(out - ref) / np.linalg.norm(ref)
            cos = (out * ref).sum(-1) / (
                np.linalg.norm(out, axis=-1) * np.linalg.norm(ref, axis=-1)
            )
            print(f"| {name} | {kind} | {err:.4f} | {cos.mean():.5f} |")

        for km, vm in (("turbo4", "turbo4"), ("turbo4", "turbo3"), ("turbo3", "turbo3")):
            out = mx.fast.quantized_scaled_dot_product_attention(
                q, *mx.quantize(k, mode=km), *mx.quantize(v, mode=vm), scale=scale, mode=(km, vm)
            )
            report(f"{km} / {vm}", out)
        for bits in (8, 4):
            kd = mx.dequantize(*mx.quantize(k, group_size=64, bits=bits), group_size=64, bits=bits)
            vd = mx.dequantize(*mx.quantize(v, group_size=64, bits=bits), group_size=64, bits=bits)
            report(f"affine {bits}-bit g64 / same", sdpa(q, kd, vd, scale=scale))


if __name__ == "__main__":
    print("MSE distortion of unit vectors (8192 random vectors per cell)\n")
    distortion_table()
    print("\nAttention output vs float32 attention on the unquantized cache")
    print("(B=1, Hq=16, Hkv=4, qL=16, kL=4096, D=128)\n")
    attention_error_table()
