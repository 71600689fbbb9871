"""Packed caches past 2^31 words on the GPU: 64-bit offsets in the kernels.

A turbo4 cache of 8 KV heads x 2^24 + 2048 keys at D = 128 holds 2.15e9 packed
words per side, so the words of the last heads lie past 2^31 (and their bytes
past 2^33). Decode attention with a mask that keeps only the last keys must
equal attention over a copy of those keys alone (small offsets), and the
dequantize / quantize kernels (the prefill route) must give the last rows
exactly as they give the copy. ~20 GB of GPU memory for attention, ~60 GB with
the dequantize check; run with TURBO_LARGE_TESTS=1 on a GPU
(tests/cuda/run_mlx_device.sh pytest).
"""

import os

import mlx.core as mx
import pytest
from helpers import OUT_RTOL, rel_err, to_np

pytestmark = pytest.mark.skipif(
    not (os.environ.get("TURBO_LARGE_TESTS") and mx.is_available(mx.gpu)),
    reason="needs a GPU with ~60 GB free and TURBO_LARGE_TESTS=1",
)

HKV, HQ, D, T = 8, 32, 128, 1024
L = 2**24 + 2048


@pytest.fixture(scope="module")
def cache():
    mx.random.seed(int.from_bytes(os.urandom(4), "little"))
    w = D // 8  # turbo4 words per vector

    # One head at a time (each draw below 2^31 elements), 16 random bits at a
    # time (randint over a wider range loses its low bits).
    def words():
        half = lambda: mx.random.randint(0, 2**16, (1, 1, L, w)).astype(mx.uint32)  # noqa: E731
        return mx.concatenate([(half() << 16) | half() for _ in range(HKV)], axis=1)

    kq, vq = words(), words()
    ks = mx.random.uniform(0.5, 1.5, (1, HKV, L, 1)).astype(mx.bfloat16)
    vs = mx.random.uniform(0.5, 1.5, (1, HKV, L, 1)).astype(mx.bfloat16)
    mx.eval(kq, vq, ks, vs)
    assert kq.size > 2**31
    tail = [mx.contiguous(x[:, :, -T:]) for x in (kq, ks, vq, vs)]
    mx.eval(tail)
    yield (kq, ks, vq, vs), tail
    mx.clear_cache()


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_decode_past_2_31_words(cache, dtype):
    big, tail = cache
    q = mx.random.normal((1, HQ, 1, D)).astype(getattr(mx, dtype))
    keep = mx.arange(L) >= L - T
    kw = dict(scale=D**-0.5, mode="turbo4")
    out = mx.fast.quantized_scaled_dot_product_attention(q, *big, mask=keep, **kw)
    ref = mx.fast.quantized_scaled_dot_product_attention(q, *tail, **kw)
    # The same arithmetic over other split boundaries: float32 reassociation,
    # then one rounding to the output dtype.
    assert rel_err(to_np(out), to_np(ref)) < OUT_RTOL[dtype]


def test_dequantize_quantize_past_2_31_words(cache):
    (kq, ks, _, _), (kq_t, ks_t, _, _) = cache
    x = mx.dequantize(kq, ks, mode="turbo4")
    x_t = mx.dequantize(kq_t, ks_t, mode="turbo4")
    assert mx.array_equal(x[:, :, -T:], x_t).item()
    words, scales = mx.quantize(x, mode="turbo4")
    words_t, scales_t = mx.quantize(x_t, mode="turbo4")
    assert mx.array_equal(words[:, :, -T:], words_t).item()
    assert mx.array_equal(scales[:, :, -T:], scales_t).item()
