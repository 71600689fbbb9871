"""Bad input raises a ValueError naming the op, never a crash or garbage."""

import math

import mlx.core as mx
import numpy as np
import pytest

OP = r"\[quantized_scaled_dot_product_attention\]"


@pytest.fixture
def case():
    q = mx.zeros((1, 4, 1, 128))
    k, ks = mx.quantize(mx.ones((1, 2, 16, 128)), mode="turbo3")
    v, vs = mx.quantize(mx.ones((1, 2, 16, 128)), mode="turbo3")
    return q, k, ks, v, vs


def call(q, k, ks, v, vs, **kw):
    kw.setdefault("scale", 1.0)
    return mx.fast.quantized_scaled_dot_product_attention(q, k, ks, v, vs, **kw)


def test_unknown_mode(case):
    with pytest.raises(ValueError, match=OP + ".*Unsupported mode 'affine'"):
        call(*case, mode="affine")
    with pytest.raises(ValueError, match=OP + ".*Unsupported mode 'turbo2'"):
        call(*case, mode=("turbo3", "turbo2"))


def test_wrong_dtypes(case):
    q, k, ks, v, vs = case
    with pytest.raises(ValueError, match=OP + ".*queries must be"):
        call(q.astype(mx.int32), k, ks, v, vs)
    with pytest.raises(ValueError, match=OP + ".*packed uint32"):
        call(q, k.astype(mx.int32), ks, v, vs)
    with pytest.raises(ValueError, match=OP + ".*scales must be"):
        call(q, k, ks.astype(mx.int32), v, vs)


def test_shapes(case):
    q, k, ks, v, vs = case
    with pytest.raises(ValueError, match=OP + ".*rank 4"):
        call(q[0], k, ks, v, vs)
    with pytest.raises(ValueError, match=OP + ".*batch"):
        call(mx.zeros((2, 4, 1, 128)), k, ks, v, vs)
    with pytest.raises(ValueError, match=OP + ".*multiple of n_kv_heads"):
        call(mx.zeros((1, 3, 1, 128)), k, ks, v, vs)
    with pytest.raises(ValueError, match=OP + ".*share"):
        call(q, k, ks, v[:, :, :8], vs[:, :, :8])
    with pytest.raises(ValueError, match=OP + ".*last dimension of 1"):
        call(q, k, mx.concatenate([ks, ks], -1), v, vs)


def test_head_dim_and_packed_width(case):
    q, k, ks, v, vs = case
    with pytest.raises(ValueError, match=OP + ".*head dimensions"):
        call(mx.zeros((1, 4, 1, 100)), k, ks, v, vs)
    with pytest.raises(ValueError, match=OP + ".*packed width 12.*turbo4.*needs 16"):
        call(q, k, ks, v, vs, mode="turbo4")
    with pytest.raises(ValueError, match=OP + ".*values have packed width 5"):
        call(q, k, ks, v[..., :5], vs)


def test_scale_and_mask_and_sinks(case):
    q, k, ks, v, vs = case
    for bad in (math.nan, math.inf):
        with pytest.raises(ValueError, match=OP + ".*scale must be finite"):
            call(q, k, ks, v, vs, scale=bad)
    with pytest.raises(ValueError, match=OP + ".*invalid mask option"):
        call(q, k, ks, v, vs, mask="upper")
    with pytest.raises(ValueError, match=OP + ".*cannot be broadcast"):
        call(q, k, ks, v, vs, mask=mx.ones((3, 16), dtype=mx.bool_))
    with pytest.raises(ValueError, match=OP + ".*Mask type"):
        call(q, k, ks, v, vs, mask=mx.ones((1, 16), dtype=mx.int32))
    with pytest.raises(ValueError, match=OP + ".*sinks"):
        call(q, k, ks, v, vs, sinks=mx.zeros((3,)))


def test_standard_call_site_errors(case):
    q, k, ks, v, vs = case
    with pytest.raises(ValueError, match=r"\[scaled_dot_product_attention\].*need a mode"):
        mx.fast.scaled_dot_product_attention(q, (k, ks), (v, vs), scale=1.0)
    with pytest.raises(ValueError, match=r"\[scaled_dot_product_attention\].*tuples"):
        mx.fast.scaled_dot_product_attention(q, q, q, scale=1.0, mode="turbo3")


def test_empty(case):
    q, k, ks, v, vs = case
    with pytest.raises(ValueError, match=OP + ".*empty"):
        call(q[:, :, :0], k, ks, v, vs)


# Malformed packed data that no encoder produces. Shape and dtype problems
# raise at the op; value problems (NaN / inf / huge scales, any bit pattern)
# compute, NaN or inf allowed, without reading outside the cache (the
# sanitizer run of the CPU kernels, tools/cpu_sanitizer.sh, checks the
# reads).

BAD_SCALE_DTYPES = [mx.float64, mx.uint32, mx.int32, mx.bool_, mx.complex64]


@pytest.mark.parametrize("dtype", BAD_SCALE_DTYPES)
def test_scales_of_the_wrong_dtype(case, dtype):
    q, k, ks, v, vs = case
    # Cast on the CPU: a GPU stream refuses float64 before the op sees it.
    bad_ks, bad_vs = (x.astype(dtype, stream=mx.cpu) for x in (ks, vs))
    with pytest.raises(ValueError, match=OP + ".*scales must be float32, float16 or bfloat16"):
        call(q, k, bad_ks, v, vs)
    with pytest.raises(ValueError, match=OP + ".*scales must be float32, float16 or bfloat16"):
        call(q, k, ks, v, bad_vs)
    with pytest.raises(ValueError, match=r"\[dequantize\].*float32, float16 or bfloat16 scales"):
        mx.dequantize(k, bad_ks, mode="turbo3")


@pytest.mark.parametrize("dtype", [mx.int32, mx.uint16, mx.uint64, mx.float32])
def test_packed_words_of_the_wrong_dtype(case, dtype):
    q, k, ks, v, vs = case
    with pytest.raises(ValueError, match=OP + ".*packed uint32"):
        call(q, k.astype(dtype), ks, v, vs)
    with pytest.raises(ValueError, match=OP + ".*packed uint32"):
        call(q, k, ks, v.astype(dtype), vs)
    with pytest.raises(ValueError, match=r"\[dequantize\].*uint32"):
        mx.dequantize(k.astype(dtype), ks, mode="turbo3")


def test_packed_words_without_a_dimension():
    with pytest.raises(ValueError, match=r"\[dequantize\].*uint32 array with at least one dim"):
        mx.dequantize(mx.array(7, mx.uint32), mx.array(1.0), mode="turbo4")


def test_scales_of_the_wrong_shape(case):
    q, k, ks, v, vs = case
    share = OP + ".*must share \\(batch, kv_heads, length\\)"
    with pytest.raises(ValueError, match=OP + ".*key_scales with shape \\(1,2,16\\).*rank 4"):
        call(q, k, ks[..., 0], v, vs)
    with pytest.raises(ValueError, match=share):
        call(q, k, ks[:, :, :8], v, vs)
    with pytest.raises(ValueError, match=share):
        call(q, k, ks[:, :1], v, vs)
    with pytest.raises(ValueError, match=share):
        call(q, k, ks, v, vs[:, :, 1:])
    with pytest.raises(ValueError, match=OP + ".*mismatching batch.*value_scales"):
        call(q, k, ks, v, mx.concatenate([vs, vs]))
    with pytest.raises(ValueError, match=OP + ".*last dimension of 1"):
        call(q, k, ks[..., :0], v, vs)
    with pytest.raises(ValueError, match=OP + ".*last dimension of 1"):
        call(q, k, ks, v, mx.concatenate([vs, vs], -1))
    for bad in (ks[:, :, :3], ks[..., 0], mx.concatenate([ks, ks], -1)):
        with pytest.raises(ValueError, match=r"\[dequantize\].*Expected scales with shape"):
            mx.dequantize(k, bad, mode="turbo3")


def test_packed_width_matches_no_head_dim(case):
    q, k, ks, v, vs = case
    wider = lambda w: mx.concatenate([w, w[..., :1]], -1)  # noqa: E731
    with pytest.raises(ValueError, match=OP + ".*keys have packed width 13.*needs 12"):
        call(q, wider(k), ks, v, vs)
    for bad, width in ((wider(v), 13), (v[..., :0], 0), (v[..., :1], 1)):
        with pytest.raises(ValueError, match=OP + f".*values have packed width {width} which"):
            call(q, k, ks, bad, vs)
        with pytest.raises(ValueError, match=r"\[dequantize\].*packed width"):
            mx.dequantize(bad, vs, mode="turbo3")


@pytest.mark.parametrize("mode", ["turbo3", "turbo4"])
@pytest.mark.parametrize("qL", [1, 4, 16])
@pytest.mark.parametrize("scales", ["nan", "inf", "huge", "finite"])
@pytest.mark.parametrize("words", ["random", "zeros", "ones"])
def test_any_values_compute(mode, qL, scales, words):
    """Any words and scales of the right shape and dtype compute: decode
    (fused kernels), few queries and prefill (dequantized route). Finite
    scales give a finite output whatever the bits (every bit pattern is a
    valid code); NaN / inf / huge scales may give NaN or inf."""
    rng = np.random.default_rng(16)
    B, Hq, Hkv, kL, D = 2, 4, 2, 33, 64
    W = D // 16 + D // 32 if mode == "turbo3" else D // 8
    if words == "random":
        w = rng.integers(0, 2**32, (2, B, Hkv, kL, W), dtype=np.uint32)
    else:
        w = np.full((2, B, Hkv, kL, W), 0 if words == "zeros" else 2**32 - 1, np.uint32)
    s = rng.uniform(0.5, 2.0, (2, B, Hkv, kL, 1)).astype(np.float32)
    if scales != "finite":
        bad = {"nan": np.nan, "inf": np.inf, "huge": np.finfo(np.float32).max}[scales]
        s[:, :, :, ::3] = bad
    k, v = mx.array(w[0]), mx.array(w[1])
    ks, vs = mx.array(s[0]).astype(mx.float16), mx.array(s[1])
    q = mx.array(rng.standard_normal((B, Hq, qL, D)).astype(np.float32))
    out = call(q, k, ks, v, vs, scale=D**-0.5, mask="causal", mode=mode)
    deq = mx.dequantize(k, ks, mode=mode)
    mx.eval(out, deq)
    assert out.shape == (B, Hq, qL, D) and deq.shape == (B, Hkv, kL, D)
    if scales == "finite":
        assert np.all(np.isfinite(np.array(out))) and np.all(np.isfinite(np.array(deq)))


def test_cache_update_moving_shift():
    """quantized_cache_update's shift_freqs / shift_waves: given together,
    (B or 1, N_kv, P) uint32 with 1 <= P <= 32 and (the same, N_kv, 2P, D)
    floating point."""
    op = r"\[quantized_cache_update\]"
    B, H, D, P = 2, 3, 64, 4
    packed, scales = mx.quantize(mx.zeros((B, H, 8, D)), mode="turbo4")
    x = mx.ones((B, H, 2, D))
    f = mx.zeros((B, H, P), mx.uint32)
    w = mx.zeros((B, H, 2 * P, D))

    def update(**kw):
        return mx.fast.quantized_cache_update(packed, scales, x, 1, mode="turbo4", **kw)

    update(shift_freqs=f, shift_waves=w)
    update(shift_freqs=f[:1], shift_waves=w[:1])  # shared by the batch
    cases = [
        (dict(shift_freqs=f), "shift_freqs and shift_waves must be given together"),
        (dict(shift_waves=w), "shift_freqs and shift_waves must be given together"),
        (dict(shift_freqs=f[..., :0], shift_waves=w[:, :, :0]), "shift_freqs with shape"),
        (
            dict(
                shift_freqs=mx.zeros((B, H, 33), mx.uint32),
                shift_waves=mx.zeros((B, H, 66, D)),
            ),
            r"shift_freqs with shape.*1 <= P <= 32",
        ),
        (dict(shift_freqs=f[:, :2], shift_waves=w[:, :2]), "shift_freqs with shape"),
        (dict(shift_freqs=mx.zeros((3, H, P), mx.uint32), shift_waves=w), "shift_freqs with shape"),
        (dict(shift_freqs=f[0], shift_waves=w), "shift_freqs with shape"),
        (dict(shift_freqs=f.astype(mx.int32), shift_waves=w), "shift_freqs must be uint32"),
        (dict(shift_freqs=f.astype(mx.float32), shift_waves=w), "shift_freqs must be uint32"),
        (dict(shift_freqs=f, shift_waves=w[:, :, :P]), "shift_waves with shape"),
        (dict(shift_freqs=f, shift_waves=mx.zeros((B, H, 2 * P, 128))), "shift_waves with shape"),
        (dict(shift_freqs=f, shift_waves=w[:1]), "shift_waves with shape"),
        (dict(shift_freqs=f[:1], shift_waves=w), "shift_waves with shape"),
        (dict(shift_freqs=f, shift_waves=w[0]), "shift_waves with shape"),
        (dict(shift_freqs=f, shift_waves=w.astype(mx.int32)), "shift_waves must be floating"),
    ]
    for kw, message in cases:
        with pytest.raises(ValueError, match=op + ".*" + message):
            update(**kw)
