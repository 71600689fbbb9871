"""Property-based tests of the fast op (hypothesis): random shapes, GQA
ratios, dtypes, modes, masks, sinks, the cache transforms, query/key lengths
(causal rows that see no key included) and memory layouts (transposed or
sliced queries; the packed cache and its scales as views of larger buffers,
as mlx-lm passes them), against float64 attention over the decoded cache.
Every call either matches within the documented bound or raises a ValueError
naming the op.

The search is derandomized (the same examples on every run, so CI cannot
flake); a failure prints the drawn parameters, the numpy seed among them.
"""

import mlx.core as mx
import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis", reason="hypothesis is not installed")
from hypothesis import given, note, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import reference as ref  # noqa: E402
from helpers import DTYPES, rel_err, to_np  # noqa: E402
from test_attention import attention_rtol  # noqa: E402

OP = r"\[quantized_scaled_dot_product_attention\]"

# How the queries are laid out in memory: as made, a (B, L, H, D) array
# transposed to (B, H, L, D), rows of a longer buffer, every other element of
# a buffer twice as wide.
Q_LAYOUTS = ["contiguous", "transposed", "rows", "every_other"]
# How the packed cache and its scales are laid out: as made, the first kL
# rows of a capacity buffer (x[..., :kL, :], as mlx-lm passes them), every
# other row, rows reversed (negative stride), (B, L, H, W) transposed. The
# rows around the cache hold random words and NaN scales, so a read outside
# the view shows in the output.
KV_LAYOUTS = ["contiguous", "capacity", "every_other", "reversed", "transposed"]


@st.composite
def cases(draw):
    c = dict(
        seed=draw(st.integers(0, 2**31 - 1)),
        B=draw(st.sampled_from([1, 2])),
        Hkv=draw(st.sampled_from([1, 2, 3])),
        gqa=draw(st.sampled_from([1, 2, 4, 7])),
        D=draw(st.sampled_from([64, 80, 128])),
        kmode=draw(st.sampled_from(["turbo3", "turbo4"])),
        vmode=draw(st.sampled_from(["turbo3", "turbo4"])),
        dtype=draw(st.sampled_from(["float32", "float16", "bfloat16"])),
        mask=draw(st.sampled_from([None, "causal", "bool", "additive"])),
        mask_transposed=draw(st.booleans()),
        sinks=draw(st.booleans()),
        shift=draw(st.booleans()),
        first=draw(st.booleans()),
        qL=draw(st.sampled_from([1, 2, 3, 5, 8, 9, 16])),
        q_layout=draw(st.sampled_from(Q_LAYOUTS)),
        kv_layout=draw(st.sampled_from(KV_LAYOUTS)),
        # Key scales in float32 next to value scales in the cache's dtype.
        f32_key_scales=draw(st.booleans()),
    )
    # Any key length: with a causal mask and qL > kL the first rows see no
    # key and follow MLX's semantics (masked scores are the float32 minimum,
    # so such a row averages the values; a sink takes all of its weight).
    # The empty cache is allowed with the exact first token.
    c["kL"] = draw(st.integers(0 if c["first"] else 1, 80))
    return c


def layout_q(q, layout, rng):
    """q (B, H, L, D) with the same values in another memory layout."""
    B, H, L, D = q.shape
    if layout == "transposed":
        q = mx.contiguous(q.transpose(0, 2, 1, 3)).transpose(0, 2, 1, 3)
    elif layout == "rows":
        pad = mx.array(rng.standard_normal((B, H, 2, D)).astype(np.float32)).astype(q.dtype)
        q = mx.concatenate([pad[:, :, :1], q, pad[:, :, 1:]], axis=2)[:, :, 1 : L + 1]
    elif layout == "every_other":
        q = mx.stack([q, mx.full(q.shape, np.nan, q.dtype)], axis=-1).reshape(B, H, L, 2 * D)
        q = q[..., ::2]
    return q


def layout_cache(w, s, layout, rng):
    """Packed words w (B, H, L, W) and scales s (B, H, L, 1) with the same
    values as views into larger buffers; the other rows hold random words and
    NaN scales."""
    B, H, L, W = w.shape

    def junk(n):
        jw = mx.array(rng.integers(0, 2**32, (B, H, n, W), dtype=np.uint32))
        return jw, mx.full((B, H, n, 1), np.nan, s.dtype)

    if layout == "capacity":
        jw, js = junk(int(rng.integers(1, 6)))
        w = mx.concatenate([w, jw], axis=2)[:, :, :L]
        s = mx.concatenate([s, js], axis=2)[:, :, :L]
    elif layout == "every_other":
        jw, js = junk(L)
        w = mx.stack([w, jw], axis=3).reshape(B, H, 2 * L, W)[:, :, ::2]
        s = mx.stack([s, js], axis=3).reshape(B, H, 2 * L, 1)[:, :, ::2]
    elif layout == "reversed":
        rev = mx.arange(L - 1, -1, -1)
        w = mx.take(w, rev, axis=2)[:, :, ::-1]
        s = mx.take(s, rev, axis=2)[:, :, ::-1]
    elif layout == "transposed":
        w = mx.contiguous(w.transpose(0, 2, 1, 3)).transpose(0, 2, 1, 3)
        s = mx.contiguous(s.transpose(0, 2, 1, 3)).transpose(0, 2, 1, 3)
    return w, s


def build(c):
    rng = np.random.default_rng(c["seed"])
    B, Hkv, D, qL, kL = c["B"], c["Hkv"], c["D"], c["qL"], c["kL"]
    Hq = Hkv * c["gqa"]
    dt = DTYPES[c["dtype"]]
    q = mx.array(rng.standard_normal((B, Hq, qL, D)).astype(np.float32)).astype(dt)
    qref = to_np(q)
    q = layout_q(q, c["q_layout"], rng)
    mu = rng.standard_normal((1, Hkv, 1, D)) * 3.0 if c["shift"] else np.zeros((1, Hkv, 1, D))
    kx = rng.standard_normal((B, Hkv, kL, D)) * rng.uniform(0.5, 3.0, (B, Hkv, kL, 1))
    vx = rng.standard_normal((B, Hkv, kL, D))
    k, ks = mx.quantize(mx.array(kx.astype(np.float32)).astype(dt), mode=c["kmode"])
    v, vs = mx.quantize(mx.array(vx.astype(np.float32)).astype(dt), mode=c["vmode"])
    if c["f32_key_scales"]:
        ks = ks.astype(mx.float32)
    kd = ref.decode(np.array(k), to_np(ks), c["kmode"]) + mu
    vd = ref.decode(np.array(v), to_np(vs), c["vmode"])
    k, ks = layout_cache(k, ks, c["kv_layout"], rng)
    v, vs = layout_cache(v, vs, c["kv_layout"], rng)
    kw = {}
    if c["shift"]:
        kw["key_shift"] = mx.array(mu.astype(np.float32))
    mask, mref = c["mask"], c["mask"]
    if mask == "bool":
        mm = rng.uniform(size=(B, 1, qL, kL)) > 0.3
        if kL:
            mm[..., 0] = True
        mask, mref = mx.array(mm), mm
    elif mask == "additive":
        ma = rng.standard_normal((qL, kL)).astype(np.float32)
        mask, mref = mx.array(ma).astype(dt), to_np(mx.array(ma).astype(dt))
    if c["mask_transposed"] and isinstance(mref, np.ndarray):
        mask = mx.contiguous(mask.swapaxes(-1, -2)).swapaxes(-1, -2)
    sk = rng.standard_normal(Hq).astype(np.float32) if c["sinks"] else None
    if sk is not None:
        kw["sinks"] = mx.array(sk)
    if c["first"]:
        k0 = rng.standard_normal((B, Hkv, 1, D)) * 4.0
        v0 = rng.standard_normal((B, Hkv, 1, D)) * 3.0
        kw["first_key"] = mx.array(k0.astype(np.float32)).astype(dt)
        kw["first_value"] = mx.array(v0.astype(np.float32)).astype(dt)
        kd = np.concatenate([to_np(kw["first_key"]), kd], axis=2)
        vd = np.concatenate([to_np(kw["first_value"]), vd], axis=2)
        if isinstance(mref, np.ndarray):
            lead = np.ones if mref.dtype == bool else np.zeros
            mref = np.concatenate([lead(mref.shape[:-1] + (1,), mref.dtype), mref], axis=-1)
    return q, k, ks, v, vs, mask, kw, (qref, kd, vd, mref, sk)


@settings(max_examples=1000, derandomize=True, deadline=None, database=None)
@given(cases())
def test_matches_reference_or_raises(c):
    note(f"case {c}")
    q, k, ks, v, vs, mask, kw, (qref, kd, vd, mref, sk) = build(c)
    D = c["D"]
    call = lambda: mx.fast.quantized_scaled_dot_product_attention(  # noqa: E731
        q, k, ks, v, vs, scale=D**-0.5, mask=mask, mode=(c["kmode"], c["vmode"]), **kw
    )
    if c["first"] and c["sinks"]:
        with pytest.raises(ValueError, match=OP + ".*first_key"):
            call()
        return
    out = call()
    assert out.shape == (c["B"], c["Hkv"] * c["gqa"], c["qL"], D)
    assert out.dtype == DTYPES[c["dtype"]]
    expected = ref.attention(qref, kd, vd, D**-0.5, mref, None if c["first"] else sk)
    # The bound of the output dtype (the transforms scale the float32
    # rounding of the centered codes by their magnitude: 10x, as in
    # test_attention.py).
    tol = 10 * attention_rtol(c["dtype"], c["qL"])
    err = rel_err(to_np(out), expected)
    assert err < tol, f"relative error {err:.2e} > {tol:.1e}"
