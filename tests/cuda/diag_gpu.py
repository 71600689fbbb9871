"""Small GPU checks run one per process (to find which one crashes):

python tests/cuda/diag_gpu.py STEP      (STEP: see STEPS below)
"""

import sys

import mlx.core as mx

HQ, HKV, D = 32, 8, 128


def sdpa_bf16_decode():
    q = mx.random.normal((1, HQ, 1, D)).astype(mx.bfloat16)
    k = mx.random.normal((1, HKV, 1024, D)).astype(mx.bfloat16)
    return mx.fast.scaled_dot_product_attention(q, k, k, scale=D**-0.5)


def sdpa_bf16_prefill():
    q = mx.random.normal((1, HQ, 512, D)).astype(mx.bfloat16)
    k = mx.random.normal((1, HKV, 512, D)).astype(mx.bfloat16)
    return mx.fast.scaled_dot_product_attention(q, k, k, scale=D**-0.5, mask="causal")


def quant_bf16():
    k = mx.random.normal((1, HKV, 1024, D)).astype(mx.bfloat16)
    return mx.quantize(k, mode="turbo4")


def deq_bf16():
    kq, ks = quant_bf16()
    return mx.dequantize(kq, ks, mode="turbo4", dtype=mx.bfloat16)


def fused_bf16():
    kq, ks = quant_bf16()
    q = mx.random.normal((1, HQ, 1, D)).astype(mx.bfloat16)
    return mx.fast.quantized_scaled_dot_product_attention(
        q, kq, ks, kq, ks, scale=D**-0.5, mode="turbo4"
    )


def big_then_fused():
    x = mx.zeros((512 << 20,), mx.float32)
    mx.eval([x + 1.0 for _ in range(5)])
    del x
    return fused_bf16()


def compile_qsdpa():
    q = mx.random.normal((1, 4, 2, 64))
    k = mx.random.normal((1, 2, 50, 64))
    kq, ks = mx.quantize(k, mode="turbo4")
    vq, vs = mx.quantize(k, mode="turbo3")

    def fn(q, kq, ks, vq, vs):
        return mx.fast.quantized_scaled_dot_product_attention(
            q, kq, ks, vq, vs, scale=0.125, mask="causal", mode=("turbo4", "turbo3")
        )

    return mx.compile(fn)(q, kq, ks, vq, vs) - fn(q, kq, ks, vq, vs)


STEPS = {
    f.__name__: f
    for f in [
        sdpa_bf16_decode,
        sdpa_bf16_prefill,
        quant_bf16,
        deq_bf16,
        fused_bf16,
        big_then_fused,
        compile_qsdpa,
    ]
}

if __name__ == "__main__":
    for name in sys.argv[1:] or STEPS:
        out = STEPS[name]()
        mx.eval(out)
        print(name, "ok", flush=True)
