"""The route of quantized_scaled_dot_product_attention for many queries (qL >
8): the cache dequantized in one pass per K and V (fast::QuantizedKVDequantize:
the exact first token as row 0, the key shifts added in float32) and MLX's own
attention on it. On a slice of a larger cache buffer, as mlx-lm passes it,
against the float64 reference, in every head dimension and dtype."""

import mlx.core as mx
import numpy as np
import pytest

import reference as ref
from helpers import rel_err, to_np
from test_attention import attention_rtol
from test_position_shift import rope_like_case

DTYPES = {"float16": mx.float16, "bfloat16": mx.bfloat16, "float32": mx.float32}


def cache_case(rng, D, dtype, P=3, B=2, Hkv=2, N=160, n=131):
    """Turbo4 keys stored minus key_shift and the moving shift, turbo3 values,
    in buffers of N rows of which the first n are used; the exact first
    token's key and value. Returns the op's cache arguments (slices of the
    buffers) and the float64 keys and values they stand for (first token
    included)."""
    freqs, waves, mu, shift, kx = rope_like_case(rng, B, Hkv, N, D, P, per_batch=True)
    dt = DTYPES[dtype]
    k, ks = mx.quantize(mx.array((kx - mu - shift).astype(np.float32)).astype(dt), mode="turbo4")
    v, vs = mx.quantize(
        mx.array(rng.standard_normal((B, Hkv, N, D)).astype(np.float32)).astype(dt), mode="turbo3"
    )
    k0 = mx.array((rng.standard_normal((B, Hkv, 1, D)) * 4.0).astype(np.float32)).astype(dt)
    v0 = mx.array((rng.standard_normal((B, Hkv, 1, D)) * 4.0).astype(np.float32)).astype(dt)
    cache = dict(
        keys=k[:, :, :n],
        key_scales=ks[:, :, :n],
        values=v[:, :, :n],
        value_scales=vs[:, :, :n],
        key_shift=mx.array(mu),
        key_shift_freqs=mx.array(freqs),
        key_shift_waves=mx.array(waves),
        first_key=k0,
        first_value=v0,
    )
    kd = ref.decode(np.array(k), to_np(ks), "turbo4")[:, :, :n] + mu + shift[:, :, :n]
    vd = ref.decode(np.array(v), to_np(vs), "turbo3")[:, :, :n]
    kd = np.concatenate([to_np(k0), kd], axis=2)
    vd = np.concatenate([to_np(v0), vd], axis=2)
    return cache, kd, vd


def attend(q, c, **kw):
    return mx.fast.quantized_scaled_dot_product_attention(
        q,
        c["keys"],
        c["key_scales"],
        c["values"],
        c["value_scales"],
        scale=q.shape[-1] ** -0.5,
        mode=("turbo4", "turbo3"),
        key_shift=c["key_shift"],
        key_shift_freqs=c["key_shift_freqs"],
        key_shift_waves=c["key_shift_waves"],
        first_key=c.get("first_key"),
        first_value=c.get("first_value"),
        **kw,
    )


@pytest.mark.parametrize("D", ref.SUPPORTED_DIMS)
@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("sinks", [False, True])
def test_prefill_on_cache_slice(rng, D, dtype, sinks):
    """Causal prefill chunk over a cache slice: float64 reference, and the same
    bits as on contiguous copies of the slices. With learned sinks (no exact
    first token then) the constant key shift is added to every key too."""
    B, Hq, qL = 2, 4, 12
    c, kd, vd = cache_case(rng, D, dtype, B=B)
    if sinks:
        del c["first_key"], c["first_value"]
        kd, vd = kd[:, :, 1:], vd[:, :, 1:]
    q = mx.array(rng.standard_normal((B, Hq, qL, D)).astype(np.float32)).astype(DTYPES[dtype])
    sk = mx.array(rng.standard_normal(Hq).astype(np.float32) + 2.0) if sinks else None
    out = attend(q, c, mask="causal", sinks=sk)
    expected = ref.attention(
        to_np(q), kd, vd, D**-0.5, "causal", None if sk is None else np.array(sk)
    )
    err = rel_err(to_np(out), expected)
    # Keys of unit noise around shifts of size |waves| * P: a few times the
    # output bound, as for key_shift.
    assert err < 10 * attention_rtol(dtype, qL), f"relative error {err:.2e}"
    dense = {k: mx.contiguous(x) for k, x in c.items()}
    np.testing.assert_array_equal(to_np(attend(q, dense, mask="causal", sinks=sk)), to_np(out))


@pytest.mark.parametrize("D", [64, 80])
def test_prefill_fallback_matches(rng, D):
    """The primitive's op-composed fallback (taken under vmap) gives the same
    attention up to float32 rounding."""
    B, Hq, qL = 1, 2, 10
    c, kd, vd = cache_case(rng, D, "float32", B=B, Hkv=1, N=40, n=33)
    q = mx.array(rng.standard_normal((B, Hq, qL, D)).astype(np.float32))
    out = attend(q, c, mask="causal")

    def f(keys):
        return attend(q, {**c, "keys": keys}, mask="causal")

    both = mx.vmap(f)(mx.stack([c["keys"], c["keys"]]))
    for i in range(2):
        err = rel_err(to_np(both[i]), to_np(out))
        assert err < 10 * attention_rtol("float32", qL), f"relative error {err:.2e}"
