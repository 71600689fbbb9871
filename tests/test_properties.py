"""Property-based tests of the fast op (hypothesis): random shapes, GQA
ratios, dtypes, modes, masks, sinks, the cache transforms and query/key
lengths, against float64 attention over the decoded cache. Every call either
matches within the documented bound or raises a ValueError naming the op.

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
        sinks=draw(st.booleans()),
        shift=draw(st.booleans()),
        first=draw(st.booleans()),
        qL=draw(st.sampled_from([1, 2, 3, 5, 8, 9, 16])),
    )
    # Causal rows must see a key (rows that see none follow MLX's own,
    # separately tested semantics); with the first token the empty cache and
    # a first chunk (qL = kL + 1) are allowed.
    lo = c["qL"] - 1 if (c["mask"] == "causal" and c["first"]) else c["qL"]
    lo = max(lo, 0 if c["first"] else 1)
    if c["mask"] != "causal":
        lo = 0 if c["first"] else 1
    c["kL"] = draw(st.integers(lo, 80))
    return c


def build(c):
    rng = np.random.default_rng(c["seed"])
    B, Hkv, D, qL, kL = c["B"], c["Hkv"], c["D"], c["qL"], c["kL"]
    Hq = Hkv * c["gqa"]
    dt = DTYPES[c["dtype"]]
    q = mx.array(rng.standard_normal((B, Hq, qL, D)).astype(np.float32)).astype(dt)
    mu = rng.standard_normal((1, Hkv, 1, D)) * 3.0 if c["shift"] else np.zeros((1, Hkv, 1, D))
    kx = rng.standard_normal((B, Hkv, kL, D)) * rng.uniform(0.5, 3.0, (B, Hkv, kL, 1))
    vx = rng.standard_normal((B, Hkv, kL, D))
    k, ks = mx.quantize(mx.array(kx.astype(np.float32)).astype(dt), mode=c["kmode"])
    v, vs = mx.quantize(mx.array(vx.astype(np.float32)).astype(dt), mode=c["vmode"])
    kd = ref.decode(np.array(k), to_np(ks), c["kmode"]) + mu
    vd = ref.decode(np.array(v), to_np(vs), c["vmode"])
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
            mref = np.concatenate(
                [lead(mref.shape[:-1] + (1,), mref.dtype), mref], axis=-1
            )
    return q, k, ks, v, vs, mask, kw, (kd, vd, mref, sk)


@settings(max_examples=1000, derandomize=True, deadline=None, database=None)
@given(cases())
def test_matches_reference_or_raises(c):
    note(f"case {c}")
    q, k, ks, v, vs, mask, kw, (kd, vd, mref, sk) = build(c)
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
    expected = ref.attention(to_np(q), kd, vd, D**-0.5, mref, None if c["first"] else sk)
    # The bound of the output dtype (the transforms scale the float32
    # rounding of the centered codes by their magnitude: 10x, as in
    # test_attention.py).
    tol = 10 * attention_rtol(c["dtype"], c["qL"])
    err = rel_err(to_np(out), expected)
    assert err < tol, f"relative error {err:.2e} > {tol:.1e}"
