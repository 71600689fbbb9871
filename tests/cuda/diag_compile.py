"""Narrows down a crash of mx.compile around the fused op on the GPU."""
import sys

import mlx.core as mx

step = sys.argv[1] if len(sys.argv) > 1 else "all"
print("default device", mx.default_device(), flush=True)
if step in ("plain", "all"):
    f = mx.compile(lambda x: mx.exp(x) * 2 + 1)
    print("plain compile", f(mx.ones(10)).sum().item(), flush=True)
if step in ("hadamard", "all"):
    x = mx.random.normal((1, 4, 2, 64))
    print("hadamard compile", mx.compile(lambda x: mx.hadamard_transform(x) * 2)(x).sum().item(), flush=True)
if step in ("quant", "all"):
    k = mx.random.normal((1, 2, 50, 64))
    kq = mx.quantize(k, mode="turbo4")
    print("quantize compile", mx.compile(lambda k: mx.quantize(k, mode="turbo4")[1])(k).sum().item(), flush=True)
if step in ("qsdpa", "all"):
    q = mx.random.normal((1, 4, 2, 64))
    k = mx.random.normal((1, 2, 50, 64))
    kq, ks = mx.quantize(k, mode="turbo4")
    vq, vs = mx.quantize(k, mode="turbo3")

    def fn(q, kq, ks, vq, vs):
        return mx.fast.quantized_scaled_dot_product_attention(
            q, kq, ks, vq, vs, scale=0.125, mask="causal", mode=("turbo4", "turbo3")
        )

    a = fn(q, kq, ks, vq, vs)
    mx.eval(a)
    print("eager ok", flush=True)
    b = mx.compile(fn)(q, kq, ks, vq, vs)
    mx.eval(b)
    print("qsdpa compile", (a - b).abs().max().item(), flush=True)
