"""The position-dependent key shift (key_shift_freqs / key_shift_waves,
docs/format.md section 7) against the float64 reference on the reconstructed
keys: decode(codes) * s + key_shift + shift(n)."""

import mlx.core as mx
import numpy as np
import pytest

import reference as ref
from helpers import rel_err, to_np
from test_attention import attention_rtol, random_mask


def to_turns(theta):
    """Radians per key as uint32 turns of 2^-24."""
    return (
        np.round(np.asarray(theta, np.float64) * (1 << 24) / (2 * np.pi)).astype(np.int64)
        % (1 << 24)
    ).astype(np.uint32)


def rope_like_case(rng, B, Hkv, kL, D, P, per_batch, n0=0):
    """Keys whose mean rotates with the position like a rotary embedding's:
    mu + sum_j cos(f_j n) a_j + sin(f_j n) b_j + noise, with frequencies up to
    1 rad per token and large amplitudes."""
    tB = B if per_batch else 1
    freqs = to_turns(np.exp(rng.uniform(np.log(1e-3), 0.0, (tB, Hkv, P))))
    waves = (rng.standard_normal((tB, Hkv, 2 * P, D)) * 3.0).astype(np.float32)
    mu = (rng.standard_normal((tB, Hkv, 1, D)) * 2.0).astype(np.float32)
    shift = ref.wave_shift(freqs, waves, np.arange(n0, n0 + kL))
    kx = mu + shift + rng.standard_normal((B, Hkv, kL, D))
    return freqs, waves, mu, shift, kx


@pytest.mark.parametrize("qL", [1, 5, 33])
@pytest.mark.parametrize("mask", [None, "causal", "bool", "additive"])
@pytest.mark.parametrize("extra", ["none", "sinks", "first", "balance"])
def test_position_shift_is_exact(rng, qL, mask, extra):
    """Attention over k_hat + key_shift + shift(n) for every route: fused
    (qL <= 8), dequantized (qL = 33), with learned sinks (the absolute scores
    matter), the exact first token (cached key n is position n + 1 of the
    sequence; the shift indexes the cache), channel scales."""
    B, Hq, Hkv, kL, D, P = 2, 6, 2, 90, 64, 5
    freqs, waves, mu, shift, kx = rope_like_case(rng, B, Hkv, kL, D, P, per_batch=qL != 5)
    s = (
        np.exp(rng.uniform(-1.0, 1.0, (1, Hkv, 1, D)))
        if extra == "balance"
        else np.ones((1, Hkv, 1, D))
    )
    k, ks = mx.quantize(mx.array(((kx - mu - shift) / s).astype(np.float32)), mode="turbo3")
    v, vs = mx.quantize(
        mx.array(rng.standard_normal((B, Hkv, kL, D)).astype(np.float32)), mode="turbo4"
    )
    kd = ref.decode(np.array(k), to_np(ks), "turbo3") * s + mu + shift
    vd = ref.decode(np.array(v), to_np(vs), "turbo4")
    q = mx.array(rng.standard_normal((B, Hq, qL, D)).astype(np.float32))
    kw = dict(
        key_shift=mx.array(mu),
        key_shift_freqs=mx.array(freqs),
        key_shift_waves=mx.array(waves),
    )
    m = random_mask(rng, mask, B, qL, kL)
    mref = m if (m is None or isinstance(m, str)) else np.array(m)
    sk = None
    if extra == "sinks":
        sk = mx.array(rng.standard_normal(Hq).astype(np.float32) + 2.0)
    elif extra == "balance":
        kw["key_channel_scales"] = mx.array(s.astype(np.float32))
    elif extra == "first":
        k0 = rng.standard_normal((B, Hkv, 1, D)) * 4.0
        v0 = rng.standard_normal((B, Hkv, 1, D)) * 4.0
        kw.update(
            first_key=mx.array(k0.astype(np.float32)), first_value=mx.array(v0.astype(np.float32))
        )
        kd = np.concatenate([k0, kd], axis=2)
        vd = np.concatenate([v0, vd], axis=2)
        if mask == "bool":
            mref = np.concatenate([np.ones((B, 1, qL, 1), bool), mref], axis=-1)
        elif mask == "additive":
            mref = np.concatenate([np.zeros((qL, 1), np.float32), mref], axis=-1)
    out = mx.fast.quantized_scaled_dot_product_attention(
        q, k, ks, v, vs, scale=D**-0.5, mask=m, sinks=sk, mode=("turbo3", "turbo4"), **kw
    )
    expected = ref.attention(
        np.array(q), kd, vd, D**-0.5, mref, None if sk is None else np.array(sk)
    )
    # The reconstruction adds float32 terms of size |waves| * P to keys of unit
    # noise: a few times the float32 bound, as for key_shift.
    tol = 10 * attention_rtol("float32", qL)
    err = rel_err(np.array(out), expected)
    assert err < tol, f"relative error {err:.2e}"
    std = mx.fast.scaled_dot_product_attention(
        q, (k, ks), (v, vs), scale=D**-0.5, mask=m, sinks=sk, mode=("turbo3", "turbo4"), **kw
    )
    np.testing.assert_array_equal(np.array(std), np.array(out))
    if qL <= 8:
        # The op-composed fallback (the primal of a jvp).
        def f(x):
            return mx.fast.quantized_scaled_dot_product_attention(
                x, k, ks, v, vs, scale=D**-0.5, mask=m, sinks=sk, mode=("turbo3", "turbo4"), **kw
            )

        (prim,), _ = mx.jvp(f, [q], [mx.zeros_like(q)])
        err = rel_err(np.array(prim), expected)
        assert err < tol, f"fallback relative error {err:.2e}"


@pytest.mark.parametrize("dtype_name", ["float16", "bfloat16"])
def test_position_shift_long_cache_half_precision(rng, dtype_name):
    """A long cache (angles up to ~3e3 rad): whole fractions of a turn keep
    the angle exact however far the key is. The bound is the dtype's: the
    prefill route adds the shift to keys in the queries' dtype."""
    dtype = getattr(mx, dtype_name)
    B, Hq, Hkv, kL, D, P = 1, 8, 2, 3000, 128, 8
    freqs, waves, mu, shift, kx = rope_like_case(rng, B, Hkv, kL, D, P, per_batch=False)
    k, ks = mx.quantize(mx.array((kx - mu - shift).astype(np.float32)).astype(dtype), mode="turbo4")
    v, vs = mx.quantize(
        mx.array(rng.standard_normal((B, Hkv, kL, D)).astype(np.float32)).astype(dtype),
        mode="turbo4",
    )
    kd = ref.decode(np.array(k), to_np(ks), "turbo4") + mu + shift
    vd = ref.decode(np.array(v), to_np(vs), "turbo4")
    for qL in (1, 12):
        q = mx.array(rng.standard_normal((B, Hq, qL, D)).astype(np.float32)).astype(dtype)
        out = mx.fast.quantized_scaled_dot_product_attention(
            q,
            k,
            ks,
            v,
            vs,
            scale=D**-0.5,
            mask="causal",
            mode="turbo4",
            key_shift=mx.array(mu),
            key_shift_freqs=mx.array(freqs),
            key_shift_waves=mx.array(waves).astype(dtype),
        )
        # waves were rounded to dtype for the call: the reference uses them too.
        w = np.array(mx.array(waves).astype(dtype).astype(mx.float32))
        kd_w = kd - shift + ref.wave_shift(freqs, w, np.arange(kL))
        expected = ref.attention(to_np(q), kd_w, vd, D**-0.5, "causal")
        err = rel_err(to_np(out), expected)
        assert err < 10 * attention_rtol(dtype_name, qL), f"qL {qL}: relative error {err:.2e}"


@pytest.mark.parametrize("dtype_name", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("D,P", [(64, 3), (96, 8), (128, 8), (128, 13), (256, 32)])
def test_position_shift_decode_kernels(rng, dtype_name, D, P):
    """The decode kernels' own bias for the shapes they specialize: plane
    counts below, at and above one group of 8 (the CUDA tensor-core kernel
    takes the bias as float16 products of 8 planes) up to the op's limit,
    head dims with and without that kernel, GQA 4, per-sequence frequencies,
    one query with learned sinks, four causal ones with the exact first
    token."""
    dtype = getattr(mx, dtype_name)
    B, Hq, Hkv, kL = 2, 8, 2, 700
    freqs, waves, mu, shift, kx = rope_like_case(rng, B, Hkv, kL, D, P, per_batch=True)
    k, ks = mx.quantize(mx.array((kx - mu - shift).astype(np.float32)).astype(dtype), mode="turbo3")
    v, vs = mx.quantize(
        mx.array(rng.standard_normal((B, Hkv, kL, D)).astype(np.float32)).astype(dtype),
        mode="turbo4",
    )
    w = mx.array(waves).astype(dtype)
    kd = (
        ref.decode(np.array(k), to_np(ks), "turbo3")
        + mu
        + ref.wave_shift(freqs, to_np(w), np.arange(kL))
    )
    vd = ref.decode(np.array(v), to_np(vs), "turbo4")
    op = mx.fast.quantized_scaled_dot_product_attention
    kw = dict(
        scale=D**-0.5,
        mode=("turbo3", "turbo4"),
        key_shift=mx.array(mu),
        key_shift_freqs=mx.array(freqs),
        key_shift_waves=w,
    )
    # One query with learned sinks.
    q = mx.array(rng.standard_normal((B, Hq, 1, D)).astype(np.float32)).astype(dtype)
    sk = mx.array(rng.standard_normal(Hq).astype(np.float32) + 1.0)
    out = op(q, k, ks, v, vs, sinks=sk, **kw)
    expected = ref.attention(to_np(q), kd, vd, D**-0.5, None, to_np(sk))
    err = rel_err(to_np(out), expected)
    assert err < 10 * attention_rtol(dtype_name, 1), f"sinks: relative error {err:.2e}"
    # Four causal queries with the exact first token.
    k0 = mx.array(rng.standard_normal((B, Hkv, 1, D)).astype(np.float32) * 4.0).astype(dtype)
    v0 = mx.array(rng.standard_normal((B, Hkv, 1, D)).astype(np.float32)).astype(dtype)
    q = mx.array(rng.standard_normal((B, Hq, 4, D)).astype(np.float32)).astype(dtype)
    out = op(q, k, ks, v, vs, mask="causal", first_key=k0, first_value=v0, **kw)
    expected = ref.attention(
        to_np(q),
        np.concatenate([to_np(k0), kd], axis=2),
        np.concatenate([to_np(v0), vd], axis=2),
        D**-0.5,
        "causal",
    )
    err = rel_err(to_np(out), expected)
    assert err < 10 * attention_rtol(dtype_name, 4), f"first token: relative error {err:.2e}"


def test_position_shift_reduces_reconstruction_error(rng):
    """On keys whose mean rotates with the position, removing the rotating part
    (not only the mean) cuts the quantization error of the keys."""
    B, Hkv, kL, D, P = 1, 2, 512, 128, 8
    freqs, waves, mu, shift, kx = rope_like_case(rng, B, Hkv, kL, D, P, per_batch=False)
    errs = {}
    for name, base in (("mean", kx.mean(axis=2, keepdims=True)), ("rotating", mu + shift)):
        k, ks = mx.quantize(mx.array((kx - base).astype(np.float32)), mode="turbo3")
        kd = ref.decode(np.array(k), to_np(ks), "turbo3") + base
        errs[name] = np.sum((kd - kx) ** 2) / np.sum((kx - kx.mean(axis=2, keepdims=True)) ** 2)
    assert errs["rotating"] < 0.2 * errs["mean"], errs


def test_position_shift_errors(rng):
    B, Hq, Hkv, kL, D = 1, 4, 2, 20, 64
    q = mx.zeros((B, Hq, 1, D))
    k, ks = mx.quantize(mx.zeros((B, Hkv, kL, D)), mode="turbo4")
    op = mx.fast.quantized_scaled_dot_product_attention
    f = mx.zeros((1, Hkv, 3), mx.uint32)
    w = mx.zeros((1, Hkv, 6, D))
    op(q, k, ks, k, ks, scale=0.1, mode="turbo4", key_shift_freqs=f, key_shift_waves=w)
    name = "quantized_scaled_dot_product_attention"
    bad = [
        (dict(key_shift_freqs=f), "together"),
        (dict(key_shift_waves=w), "together"),
        (
            dict(key_shift_freqs=mx.zeros((1, Hkv + 1, 3), mx.uint32), key_shift_waves=w),
            "key_shift_freqs with shape",
        ),
        (
            dict(
                key_shift_freqs=mx.zeros((1, Hkv, 33), mx.uint32),
                key_shift_waves=mx.zeros((1, Hkv, 66, D)),
            ),
            "P <= 32",
        ),
        (dict(key_shift_freqs=f.astype(mx.float32), key_shift_waves=w), "must be uint32"),
        (
            dict(key_shift_freqs=f, key_shift_waves=mx.zeros((1, Hkv, 3, D))),
            "key_shift_waves with shape",
        ),
        (
            dict(key_shift_freqs=f, key_shift_waves=mx.zeros((2, Hkv, 6, D))),
            "key_shift_waves with shape",
        ),
        (
            dict(key_shift_freqs=mx.zeros((2, Hkv, 3), mx.uint32), key_shift_waves=w),
            "key_shift_freqs with shape",
        ),
        (
            dict(key_shift_freqs=mx.zeros((Hkv, 3), mx.uint32), key_shift_waves=w),
            "key_shift_freqs with shape",
        ),
        (
            dict(key_shift_freqs=f, key_shift_waves=mx.zeros((1, Hkv, 6, D), mx.int32)),
            "float32, float16",
        ),
    ]
    for kw, msg in bad:
        with pytest.raises(ValueError, match=f"{name}.*{msg}"):
            op(q, k, ks, k, ks, scale=0.1, mode="turbo4", **kw)
