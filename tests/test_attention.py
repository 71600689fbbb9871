"""Fused TurboQuant attention against the float64 reference on the decoded cache."""

import mlx.core as mx
import numpy as np
import pytest

import reference as ref
from helpers import (
    DTYPES,
    OUT_RTOL,
    graph_primitives,
    mlx_float32_matmul_rtol,
    rel_err,
    split_modes,
    to_np,
)


def make_case(rng, B, Hq, Hkv, qL, kL, dk, dv, kmode, vmode, dtype):
    q = mx.array(rng.standard_normal((B, Hq, qL, dk)).astype(np.float32)).astype(DTYPES[dtype])
    # Keys with a per-token scale spread, like real caches.
    kx = rng.standard_normal((B, Hkv, kL, dk)) * rng.uniform(0.5, 3.0, (B, Hkv, kL, 1))
    vx = rng.standard_normal((B, Hkv, kL, dv))
    k, ks = mx.quantize(mx.array(kx.astype(np.float32)).astype(DTYPES[dtype]), mode=kmode)
    v, vs = mx.quantize(mx.array(vx.astype(np.float32)).astype(DTYPES[dtype]), mode=vmode)
    return q, k, ks, v, vs


def random_mask(rng, kind, B, qL, kL, dtype=mx.float32):
    """The test's mask: None / "causal" as given, "bool" (each row keeps its
    first key) or "additive" (normal values in dtype)."""
    if kind == "bool":
        mm = rng.uniform(size=(B, 1, qL, kL)) > 0.3
        mm[..., 0] = True
        return mx.array(mm)
    if kind == "additive":
        return mx.array(rng.standard_normal((qL, kL)).astype(np.float32)).astype(dtype)
    return kind


def attention_rtol(dtype, qL):
    """The output bound; more than 8 queries run MLX's own attention on a
    dequantized copy: TF32 matmuls on CUDA for float32."""
    tol = OUT_RTOL[dtype]
    if qL > 8 and dtype == "float32":
        tol = max(tol, mlx_float32_matmul_rtol())
    return tol


def reference_out(q, k, ks, v, vs, kmode, vmode, scale, mask=None, sinks=None):
    kd = ref.decode(np.array(k), to_np(ks), kmode)
    vd = ref.decode(np.array(v), to_np(vs), vmode)
    m = (
        mask
        if (mask is None or isinstance(mask, str))
        else to_np(mask) if mask.dtype != mx.bool_ else np.array(mask)
    )
    s = None if sinks is None else to_np(sinks)
    return ref.attention(to_np(q), kd, vd, scale, m, s)


def check(
    rng,
    *,
    B=1,
    Hq=4,
    Hkv=2,
    qL=1,
    kL=64,
    dk=128,
    dv=None,
    mode="turbo3",
    dtype="float32",
    mask=None,
    sinks=False,
    std_call=False,
):
    dv = dv or dk
    kmode, vmode = split_modes(mode)
    q, k, ks, v, vs = make_case(rng, B, Hq, Hkv, qL, kL, dk, dv, kmode, vmode, dtype)
    scale = dk**-0.5
    m = random_mask(rng, mask, B, qL, kL, DTYPES[dtype])
    sk = mx.array(rng.standard_normal(Hq).astype(np.float32)) if sinks else None
    if std_call:
        out = mx.fast.scaled_dot_product_attention(
            q, (k, ks), (v, vs), scale=scale, mask=m, sinks=sk, mode=mode
        )
    else:
        out = mx.fast.quantized_scaled_dot_product_attention(
            q, k, ks, v, vs, scale=scale, mask=m, sinks=sk, mode=mode
        )
    assert out.shape == (B, Hq, qL, dv) and out.dtype == DTYPES[dtype]
    expected = reference_out(q, k, ks, v, vs, kmode, vmode, scale, m, sk)
    err = rel_err(to_np(out), expected)
    assert err < attention_rtol(dtype, qL), f"relative error {err:.2e}"
    return out


@pytest.mark.parametrize("dim", ref.SUPPORTED_DIMS)
@pytest.mark.parametrize("mode", ["turbo3", "turbo4", ("turbo4", "turbo3"), ("turbo3", "turbo4")])
def test_head_dims_and_modes(rng, dim, mode):
    check(rng, dk=dim, mode=mode, kL=97)


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("qL", [1, 4, 33, 128])
@pytest.mark.parametrize("mask", [None, "causal", "bool", "additive"])
def test_dtypes_lengths_masks(rng, dtype, qL, mask):
    check(rng, B=2, Hq=6, Hkv=2, qL=qL, kL=max(qL, 150), dtype=dtype, mask=mask, dk=64)


@pytest.mark.parametrize("Hq,Hkv", [(4, 4), (8, 1), (9, 3), (12, 4), (6, 2)])
@pytest.mark.parametrize("sinks", [False, True])
def test_gqa_and_sinks(rng, Hq, Hkv, sinks):
    check(rng, B=2, Hq=Hq, Hkv=Hkv, qL=3, kL=77, sinks=sinks, mask="causal")


@pytest.mark.parametrize("kL", [1024, 4096, 8192])
@pytest.mark.parametrize("mode", ["turbo3", "turbo4"])
def test_long_context_decode(rng, kL, mode):
    check(rng, B=1, Hq=8, Hkv=2, qL=1, kL=kL, mode=mode, dtype="float16", sinks=True)


def test_long_context_prefill(rng):
    check(rng, B=1, Hq=4, Hkv=1, qL=128, kL=2048, mode="turbo4", mask="causal", dtype="bfloat16")


def test_value_dim_differs(rng):
    check(rng, dk=128, dv=64, mode=("turbo4", "turbo3"))


def test_causal_more_queries_than_keys(rng):
    # Rows that see no key average the values, like mx.fast.scaled_dot_product_attention.
    check(rng, qL=8, kL=5, mask="causal")


def test_standard_call_site(rng):
    check(rng, std_call=True, mode="turbo4", mask="causal", qL=4, kL=40)
    check(rng, std_call=True, mode=("turbo4", "turbo3"), kL=40)


def test_matches_dequantize_then_sdpa(rng):
    """A second path inside MLX: mx.dequantize + mx.fast.scaled_dot_product_attention."""
    q, k, ks, v, vs = make_case(rng, 2, 8, 2, 5, 300, 128, 128, "turbo3", "turbo3", "float32")
    out = mx.fast.quantized_scaled_dot_product_attention(q, k, ks, v, vs, scale=0.1, mask="causal")
    kd = mx.dequantize(k, ks, mode="turbo3")
    vd = mx.dequantize(v, vs, mode="turbo3")
    out2 = mx.fast.scaled_dot_product_attention(q, kd, vd, scale=0.1, mask="causal")
    err = rel_err(np.array(out), np.array(out2))
    assert err < mlx_float32_matmul_rtol(), f"relative error {err:.2e}"


def test_non_contiguous_cache_and_queries(rng):
    """A cache that is a prefix view of a preallocated buffer, as in mlx-lm, and transposed queries."""
    B, Hq, Hkv, cap, n, D = 2, 8, 2, 256, 100, 128
    kx = mx.array(rng.standard_normal((B, Hkv, cap, D)).astype(np.float32))
    vx = mx.array(rng.standard_normal((B, Hkv, cap, D)).astype(np.float32))
    k, ks = mx.quantize(kx, mode="turbo4")
    v, vs = mx.quantize(vx, mode="turbo3")
    kv = (k[:, :, :n], ks[:, :, :n], v[:, :, :n], vs[:, :, :n])
    q = mx.swapaxes(mx.array(rng.standard_normal((B, 3, Hq, D)).astype(np.float32)), 1, 2)
    out = mx.fast.quantized_scaled_dot_product_attention(
        q, *kv, scale=D**-0.5, mode=("turbo4", "turbo3"), mask="causal"
    )
    dense = [mx.array(np.ascontiguousarray(np.array(a))) for a in kv]
    out2 = mx.fast.quantized_scaled_dot_product_attention(
        mx.array(np.ascontiguousarray(np.array(q))),
        *dense,
        scale=D**-0.5,
        mode=("turbo4", "turbo3"),
        mask="causal",
    )
    np.testing.assert_array_equal(np.array(out), np.array(out2))
    expected = reference_out(q, *kv, "turbo4", "turbo3", D**-0.5, "causal")
    assert rel_err(np.array(out), expected) < 2e-5


def test_no_dequantized_cache_is_materialized(rng):
    """Peak memory of the fused op stays far below one dequantized float32 copy."""
    B, H, kL, D = 1, 8, 16384, 128
    k, ks = mx.quantize(
        mx.array(rng.standard_normal((B, H, kL, D)).astype(np.float32)), mode="turbo3"
    )
    v, vs = mx.quantize(
        mx.array(rng.standard_normal((B, H, kL, D)).astype(np.float32)), mode="turbo3"
    )
    q = mx.array(rng.standard_normal((B, 4 * H, 1, D)).astype(np.float32))
    mx.eval(k, ks, v, vs, q)
    mx.synchronize()
    mx.reset_peak_memory()
    base = mx.get_active_memory()
    out = mx.fast.quantized_scaled_dot_product_attention(q, k, ks, v, vs, scale=D**-0.5)
    mx.eval(out)
    extra = mx.get_peak_memory() - base
    dequantized_copy = B * H * kL * D * 4  # one float32 K copy: 64 MiB
    assert extra < dequantized_copy / 16, f"extra peak {extra} bytes"


def test_compile_and_export(rng, tmp_path):
    q, k, ks, v, vs = make_case(rng, 1, 4, 2, 2, 50, 64, 64, "turbo4", "turbo3", "float32")

    def fn(q, k, ks, v, vs):
        return mx.fast.quantized_scaled_dot_product_attention(
            q, k, ks, v, vs, scale=0.125, mask="causal", mode=("turbo4", "turbo3")
        )

    out = fn(q, k, ks, v, vs)
    np.testing.assert_allclose(np.array(mx.compile(fn)(q, k, ks, v, vs)), np.array(out), rtol=1e-6)
    path = str(tmp_path / "qsdpa.mlxfn")
    mx.export_function(path, fn, q, k, ks, v, vs)
    imported = mx.import_function(path)
    np.testing.assert_allclose(np.array(imported(q, k, ks, v, vs)[0]), np.array(out), rtol=1e-6)


def test_grad_through_queries(rng):
    """Gradients use the op-composed fallback (the cache is constant)."""
    q, k, ks, v, vs = make_case(rng, 1, 2, 1, 1, 20, 64, 64, "turbo4", "turbo4", "float32")

    def loss(q):
        return mx.fast.quantized_scaled_dot_product_attention(
            q, k, ks, v, vs, scale=0.125, mode="turbo4"
        ).sum()

    g = mx.grad(loss)(q)
    eps = 1e-3
    qn = np.array(q)
    d = np.zeros_like(qn)
    d[0, 0, 0, 3] = eps
    num = (loss(mx.array(qn + d)).item() - loss(mx.array(qn - d)).item()) / (2 * eps)
    assert abs(np.array(g)[0, 0, 0, 3] - num) < 1e-2 * max(1.0, abs(num))


@pytest.mark.parametrize("mask", [None, "bool", "causal"])
def test_split_k_decode(rng, mask):
    """One (batch, kv head) item and a long cache: the CPU kernel splits the keys
    across threads and merges the partial softmax states (with the sink)."""
    check(rng, B=1, Hq=4, Hkv=1, qL=1, kL=3000, mask=mask, sinks=True, mode=("turbo4", "turbo3"))


@pytest.mark.parametrize("kL", [40, 3000])
def test_additive_mask_with_leading_minus_inf(rng, kL):
    """-inf in an additive mask on the first keys of a row (found by comparing the
    Metal kernels with this backend: the online softmax gave exp(-inf - -inf) = NaN
    while every key so far was masked). kL=3000 also splits the keys."""
    q, k, ks, v, vs = make_case(rng, 2, 4, 2, 3, kL, 64, 64, "turbo4", "turbo3", "float32")
    m = rng.standard_normal((2, 4, 3, kL)).astype(np.float32)
    m[..., : kL // 2] = -np.inf
    m[0, 0, 0, :] = -np.inf  # a row whose only key is the last one
    m[0, 0, 0, -1] = 0.0
    mm = mx.array(m)
    out = mx.fast.quantized_scaled_dot_product_attention(
        q, k, ks, v, vs, scale=0.125, mask=mm, mode=("turbo4", "turbo3")
    )
    expected = reference_out(q, k, ks, v, vs, "turbo4", "turbo3", 0.125, mm)
    assert rel_err(np.array(out), expected) < 2e-5


def transformed_case(rng, B, Hq, Hkv, qL, kL, D, kmode, vmode, shift, balance, per_batch):
    """Keys with a large shared mean and uneven channels, stored as the codes of
    (k - key_shift) / key_channel_scales (docs/format.md, section 7)."""
    q = mx.array(rng.standard_normal((B, Hq, qL, D)).astype(np.float32))
    tB = B if per_batch else 1
    mu = rng.standard_normal((tB, Hkv, 1, D)) * 3.0 if shift else np.zeros((tB, Hkv, 1, D))
    s = np.exp(rng.uniform(-1.5, 1.5, (tB, Hkv, 1, D))) if balance else np.ones((tB, Hkv, 1, D))
    kx = mu + s * rng.standard_normal((B, Hkv, kL, D))
    k, ks = mx.quantize(mx.array(((kx - mu) / s).astype(np.float32)), mode=kmode)
    v, vs = mx.quantize(mx.array(rng.standard_normal((B, Hkv, kL, D)).astype(np.float32)), mode=vmode)
    kd = ref.decode(np.array(k), to_np(ks), kmode) * s + mu
    vd = ref.decode(np.array(v), to_np(vs), vmode)
    kw = {}
    if shift:
        kw["key_shift"] = mx.array(mu.astype(np.float32))
    if balance:
        kw["key_channel_scales"] = mx.array(s.astype(np.float32))
    return q, k, ks, v, vs, kd, vd, kw


@pytest.mark.parametrize("shift,balance", [(True, False), (False, True), (True, True)])
@pytest.mark.parametrize("qL", [1, 5, 33])
@pytest.mark.parametrize("mask", [None, "causal", "bool", "additive"])
@pytest.mark.parametrize("sinks", [False, True])
def test_cache_transforms_are_exact(rng, shift, balance, qL, mask, sinks):
    """Attention over the reconstructed keys k_hat * s + mu, whatever the shift:
    without sinks the shift moves every score of a row equally, with sinks the op
    adds it back. qL=33 takes the dequantized route (more than 8 queries)."""
    B, Hq, Hkv, kL, D = 2, 6, 2, 70, 64
    kmode, vmode = "turbo4", "turbo3"
    q, k, ks, v, vs, kd, vd, kw = transformed_case(
        rng, B, Hq, Hkv, qL, kL, D, kmode, vmode, shift, balance, per_batch=qL != 5
    )
    m = random_mask(rng, mask, B, qL, kL)
    sk = mx.array(rng.standard_normal(Hq).astype(np.float32) + 2.0) if sinks else None
    out = mx.fast.quantized_scaled_dot_product_attention(
        q, k, ks, v, vs, scale=D**-0.5, mask=m, sinks=sk, mode=(kmode, vmode), **kw
    )
    mref = m if (m is None or isinstance(m, str)) else np.array(m)
    expected = ref.attention(
        np.array(q), kd, vd, D**-0.5, mref, None if sk is None else np.array(sk)
    )
    tol = attention_rtol("float32", qL)
    err = rel_err(np.array(out), expected)
    # The reconstruction scales the float32 rounding of the centered codes by s
    # and adds mu: a few times the float32 bound.
    assert err < 10 * tol, f"relative error {err:.2e}"
    std = mx.fast.scaled_dot_product_attention(
        q, (k, ks), (v, vs), scale=D**-0.5, mask=m, sinks=sk, mode=(kmode, vmode), **kw
    )
    np.testing.assert_array_equal(np.array(std), np.array(out))


def test_key_shift_changes_nothing_without_sinks(rng):
    """The shift only matters with sinks: any shift gives the same output."""
    q, k, ks, v, vs = make_case(rng, 1, 4, 2, 1, 90, 128, 128, "turbo3", "turbo3", "float32")
    mu = mx.array(rng.standard_normal((1, 2, 1, 128)).astype(np.float32) * 10)
    a = mx.fast.quantized_scaled_dot_product_attention(q, k, ks, v, vs, scale=0.1)
    b = mx.fast.quantized_scaled_dot_product_attention(q, k, ks, v, vs, scale=0.1, key_shift=mu)
    assert rel_err(np.array(b), np.array(a)) < 1e-6


def test_prefill_route_memory_is_bounded(rng):
    """More than 8 queries dequantize the cache for MLX's own attention: the
    transient copy stays within the fp16 size of this call's K/V (here the
    queries are float32, so within the float32 copy plus the scores)."""
    B, H, kL, D, qL = 1, 2, 4096, 128, 64
    k, ks = mx.quantize(mx.array(rng.standard_normal((B, H, kL, D)).astype(np.float32)), mode="turbo4")
    v, vs = mx.quantize(mx.array(rng.standard_normal((B, H, kL, D)).astype(np.float32)), mode="turbo3")
    q = mx.array(rng.standard_normal((B, 2 * H, qL, D)).astype(np.float16))
    mx.eval(k, ks, v, vs, q)
    mx.synchronize()
    mx.reset_peak_memory()
    base = mx.get_active_memory()
    out = mx.fast.quantized_scaled_dot_product_attention(q, k, ks, v, vs, scale=D**-0.5, mode=("turbo4", "turbo3"), mask="causal")
    mx.eval(out)
    extra = mx.get_peak_memory() - base
    fp16_kv = 2 * B * H * kL * D * 2
    scores = B * 2 * H * qL * kL * 4
    assert extra < fp16_kv + 2 * scores, f"extra peak {extra} bytes"
    expected = reference_out(q, k, ks, v, vs, "turbo4", "turbo3", D**-0.5, "causal")
    assert rel_err(to_np(out), expected) < OUT_RTOL["float16"]


@pytest.mark.parametrize("qL,kL", [(1, 70), (3, 70), (33, 70), (13, 12), (8, 3)])
@pytest.mark.parametrize("mask", [None, "causal", "bool", "additive"])
@pytest.mark.parametrize("shift", [False, True])
@pytest.mark.parametrize("shared", [False, True])
def test_exact_first_token(rng, qL, kL, mask, shift, shared):
    """first_key / first_value: attention over [first token] + cache, the first
    token exact and always visible (the sink's slot, its value included, on
    the fused path), the cache holding k - key_shift and v. (13, 12) is a
    first chunk: the cache holds the tokens after the first one, so the first
    query sees only the first token. (8, 3) with a causal mask: the first four
    rows come before the first token, see no key and, as in MLX's attention,
    average every value, the first token's included (the fused path gave them
    the first token's value alone; found by tests/test_properties.py)."""
    B, Hq, Hkv, D = 2, 6, 2, 64
    q = mx.array(rng.standard_normal((B, Hq, qL, D)).astype(np.float32))
    # shared: one first token for the whole batch (shape (1, Hkv, 1, D)).
    k0 = rng.standard_normal((1 if shared else B, Hkv, 1, D)) * 4.0
    v0 = rng.standard_normal((1 if shared else B, Hkv, 1, D)) * 5.0
    mu = rng.standard_normal((1, Hkv, 1, D)) * 2.0 if shift else np.zeros((1, Hkv, 1, D))
    kx = mu + rng.standard_normal((B, Hkv, kL, D))
    vx = rng.standard_normal((B, Hkv, kL, D))
    k, ks = mx.quantize(mx.array((kx - mu).astype(np.float32)), mode="turbo4")
    v, vs = mx.quantize(mx.array(vx.astype(np.float32)), mode="turbo3")
    kd = np.concatenate([np.broadcast_to(k0, (B, Hkv, 1, D)),
                         ref.decode(np.array(k), to_np(ks), "turbo4") + mu], axis=2)
    vd = np.concatenate([np.broadcast_to(v0, (B, Hkv, 1, D)),
                         ref.decode(np.array(v), to_np(vs), "turbo3")], axis=2)
    m, mref = mask, mask
    if mask == "bool":
        mm = rng.uniform(size=(B, 1, qL, kL)) > 0.3
        m = mx.array(mm)
        mref = np.concatenate([np.ones((B, 1, qL, 1), bool), mm], axis=-1)
    elif mask == "additive":
        ma = rng.standard_normal((qL, kL)).astype(np.float32)
        m = mx.array(ma)
        mref = np.concatenate([np.zeros((qL, 1), np.float32), ma], axis=-1)
    kw = dict(first_key=mx.array(k0.astype(np.float32)), first_value=mx.array(v0.astype(np.float32)))
    if shift:
        kw["key_shift"] = mx.array(mu.astype(np.float32))
    out = mx.fast.quantized_scaled_dot_product_attention(
        q, k, ks, v, vs, scale=D**-0.5, mask=m, mode=("turbo4", "turbo3"), **kw
    )
    expected = ref.attention(np.array(q), kd, vd, D**-0.5, mref)
    tol = attention_rtol("float32", qL)
    if mask == "causal" and qL > kL + 1:
        # Rows before the first token take the dequantized route (MLX's own
        # attention: TF32 matmuls on CUDA).
        tol = max(tol, mlx_float32_matmul_rtol())
    err = rel_err(np.array(out), expected)
    assert err < 10 * tol, f"relative error {err:.2e}"
    if qL <= 8:
        # The op-composed fallback (the primal of a jvp; GPU backends without
        # a kernel for a shape use it too): the sink as a zero key and a mask
        # column.
        def f(x):
            return mx.fast.quantized_scaled_dot_product_attention(
                x, k, ks, v, vs, scale=D**-0.5, mask=m, mode=("turbo4", "turbo3"), **kw
            )

        (prim,), _ = mx.jvp(f, [q], [mx.zeros_like(q)])
        err = rel_err(np.array(prim), expected)
        assert err < 10 * tol, f"fallback relative error {err:.2e}"


def test_balanced_keys_with_a_first_token_in_bfloat16(rng):
    """bfloat16 queries, float32 channel scales and a bfloat16 first token:
    the primitive's queries q * s are float32 and the first token's value
    reaches the kernels in their dtype (the GPU kernels read both in one
    type)."""
    B, Hq, Hkv, kL, D = 2, 4, 2, 60, 64
    dt = mx.bfloat16
    q = mx.array(rng.standard_normal((B, Hq, 1, D)).astype(np.float32)).astype(dt)
    s = np.exp(rng.uniform(-1.0, 1.0, (1, Hkv, 1, D))).astype(np.float32)
    kx = s * rng.standard_normal((B, Hkv, kL, D))
    k, ks = mx.quantize(mx.array((kx / s).astype(np.float32)).astype(dt), mode="turbo4")
    v, vs = mx.quantize(
        mx.array(rng.standard_normal((B, Hkv, kL, D)).astype(np.float32)).astype(dt), mode="turbo3"
    )
    k0 = mx.array(rng.standard_normal((B, Hkv, 1, D)).astype(np.float32)).astype(dt)
    v0 = mx.array(rng.standard_normal((B, Hkv, 1, D)).astype(np.float32)).astype(dt)
    out = mx.fast.quantized_scaled_dot_product_attention(
        q,
        k,
        ks,
        v,
        vs,
        scale=D**-0.5,
        mode=("turbo4", "turbo3"),
        key_channel_scales=mx.array(s),
        first_key=k0,
        first_value=v0,
    )
    assert out.dtype == dt
    kd = np.concatenate([to_np(k0), ref.decode(np.array(k), to_np(ks), "turbo4") * s], axis=2)
    vd = np.concatenate([to_np(v0), ref.decode(np.array(v), to_np(vs), "turbo3")], axis=2)
    expected = ref.attention(to_np(q), kd, vd, D**-0.5, None)
    err = rel_err(to_np(out), expected)
    assert err < attention_rtol("bfloat16", 1), f"relative error {err:.2e}"


def test_exact_first_token_errors(rng):
    q, k, ks, v, vs = make_case(rng, 1, 4, 2, 1, 20, 64, 64, "turbo4", "turbo4", "float32")
    k0 = mx.zeros((1, 2, 1, 64))
    op = mx.fast.quantized_scaled_dot_product_attention
    with pytest.raises(ValueError, match="together"):
        op(q, k, ks, v, vs, scale=0.1, mode="turbo4", first_key=k0)
    with pytest.raises(ValueError, match="sinks"):
        op(q, k, ks, v, vs, scale=0.1, mode="turbo4", first_key=k0, first_value=k0,
           sinks=mx.zeros((4,)))
    with pytest.raises(ValueError, match="first_value"):
        op(q, k, ks, v, vs, scale=0.1, mode="turbo4", first_key=k0, first_value=mx.zeros((1, 2, 1, 32)))


@pytest.mark.parametrize("mask", [None, "bool"])
def test_single_sequence_decode_folds_the_bias_into_the_sink(rng, mask):
    """B = 1, qL = 1: the op moves the sink logit instead of adding a mask; the
    result is the same attention (learned sinks with a key shift, and the exact
    first token)."""
    Hq, Hkv, kL, D = 8, 2, 300, 128
    q = mx.array(rng.standard_normal((1, Hq, 1, D)).astype(np.float32))
    mu = rng.standard_normal((1, Hkv, 1, D)) * 3.0
    k0 = rng.standard_normal((1, Hkv, 1, D)) * 4.0
    v0 = rng.standard_normal((1, Hkv, 1, D))
    kx = mu + rng.standard_normal((1, Hkv, kL, D))
    vx = rng.standard_normal((1, Hkv, kL, D))
    m = mref = None
    if mask == "bool":
        mm = rng.uniform(size=(1, 1, 1, kL)) > 0.3
        m = mx.array(mm)
        mref = mm
    sk = rng.standard_normal(Hq).astype(np.float32)
    # Learned sinks with a key shift.
    k, ks = mx.quantize(mx.array((kx - mu).astype(np.float32)), mode="turbo3")
    v, vs = mx.quantize(mx.array(vx.astype(np.float32)), mode="turbo4")
    kd = ref.decode(np.array(k), to_np(ks), "turbo3") + mu
    vd = ref.decode(np.array(v), to_np(vs), "turbo4")
    out = mx.fast.quantized_scaled_dot_product_attention(
        q, k, ks, v, vs, scale=D**-0.5, mask=m, sinks=mx.array(sk), mode=("turbo3", "turbo4"),
        key_shift=mx.array(mu.astype(np.float32)),
    )
    expected = ref.attention(np.array(q), kd, vd, D**-0.5, mref, sk)
    assert rel_err(np.array(out), expected) < 10 * OUT_RTOL["float32"]
    # The exact first token (far from the cached values: its value must come
    # from the sink's slot).
    v0 = v0 * 10.0
    kd0 = np.concatenate([k0, kd], axis=2)
    vd0 = np.concatenate([v0, vd], axis=2)
    out = mx.fast.quantized_scaled_dot_product_attention(
        q, k, ks, v, vs, scale=D**-0.5, mask=m, mode=("turbo3", "turbo4"),
        key_shift=mx.array(mu.astype(np.float32)),
        first_key=mx.array(k0.astype(np.float32)), first_value=mx.array(v0.astype(np.float32)),
    )
    m0 = None if mref is None else np.concatenate([np.ones((1, 1, 1, 1), bool), mref], axis=-1)
    expected = ref.attention(np.array(q), kd0, vd0, D**-0.5, m0)
    assert rel_err(np.array(out), expected) < 10 * OUT_RTOL["float32"]


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_prefill_route_takes_float32_sinks(rng, dtype):
    """More than 8 queries in half precision with float32 sinks (as the fused
    path takes them): MLX's own attention needs the sinks in the output's
    dtype, which the op casts (found by tests/test_properties.py)."""
    q, k, ks, v, vs = make_case(rng, 1, 4, 2, 9, 40, 64, 64, "turbo3", "turbo4", dtype)
    sk = mx.array(rng.standard_normal(4).astype(np.float32))
    out = mx.fast.quantized_scaled_dot_product_attention(
        q, k, ks, v, vs, scale=0.125, sinks=sk, mode=("turbo3", "turbo4")
    )
    expected = reference_out(q, k, ks, v, vs, "turbo3", "turbo4", 0.125, None, sk)
    assert rel_err(to_np(out), expected) < attention_rtol(dtype, 9)


@pytest.mark.parametrize("B", [1, 3])
@pytest.mark.parametrize("sinks", [False, True])
def test_decode_with_transforms_is_one_primitive(rng, B, sinks):
    """A decode call with the exact transforms (key shift, exact first token,
    or sinks) in the cache's dtype builds one node: the kernels compute the
    key bias from the queries as given, so no per-call ops feed them (each
    op is host and launch time in every decode step of every layer)."""
    Hq, Hkv, D, kL = 8, 2, 64, 40
    dt = mx.bfloat16
    q = mx.array(rng.standard_normal((B, Hq, 1, D)).astype(np.float32)).astype(dt)
    x = mx.array(rng.standard_normal((B, Hkv, kL, D)).astype(np.float32)).astype(dt)
    k, ks = mx.quantize(x, mode="turbo4")
    v, vs = mx.quantize(x, mode="turbo3")
    row = lambda: mx.array(rng.standard_normal((B, Hkv, 1, D)).astype(np.float32)).astype(dt)  # noqa: E731
    kw = {"key_shift": row()}
    if sinks:
        kw["sinks"] = mx.array(rng.standard_normal(Hq).astype(np.float32))
    else:
        kw["first_key"], kw["first_value"] = row(), row()
    mx.eval(q, k, ks, v, vs, *kw.values())
    out = mx.fast.quantized_scaled_dot_product_attention(
        q, k, ks, v, vs, scale=D**-0.5, mode=("turbo4", "turbo3"), **kw
    )
    nodes = graph_primitives(out)
    assert nodes == {"QuantizedScaledDotProductAttention": 1}, nodes


@pytest.mark.parametrize("start", [0, 3])
def test_cache_buffers_are_read_in_place(rng, tmp_path, start):
    """A cache's stored rows, the slice buf[:, :, :n] of its buffers (as
    mlx-lm's caches pass them), are read in place: the slices are no nodes
    of the call's graph, the result equals the call on dense copies (also
    through the op-composed fallback that gradients use). Any other slice
    (here rows start..start + n) stays a node of its own."""
    B, Hq, Hkv, cap, n, D = 2, 4, 2, 96, 41, 64
    dt = mx.bfloat16
    x = mx.array(rng.standard_normal((B, Hkv, cap, D)).astype(np.float32)).astype(dt)
    k, ks = mx.quantize(x, mode="turbo4")
    v, vs = mx.quantize(2 * x, mode="turbo3")
    mx.eval(k, ks, v, vs)
    # Buffers that are not evaluated yet, as a decode step's appends.
    bufs = [a + 0 for a in (k, ks, v, vs)]
    kv = [a[:, :, start : start + n] for a in bufs]
    q = mx.array(rng.standard_normal((B, Hq, 1, D)).astype(np.float32)).astype(dt)

    def row():
        return mx.array(rng.standard_normal((B, Hkv, 1, D)).astype(np.float32)).astype(dt)

    kw = dict(scale=D**-0.5, mode=("turbo4", "turbo3"), key_shift=row())
    kw["first_key"], kw["first_value"] = row(), row()
    mx.eval(q, kw["key_shift"], kw["first_key"], kw["first_value"])

    def attend(q, k, ks, v, vs):
        return mx.fast.quantized_scaled_dot_product_attention(q, k, ks, v, vs, **kw)

    out = attend(q, *kv)
    nodes = graph_primitives(out)
    expected_nodes = {"QuantizedScaledDotProductAttention": 1}
    if start:
        expected_nodes["Slice"] = 4
    # the buffers' own nodes (+ 0)
    assert nodes.pop("Add", 0) == 4 and nodes.pop("Broadcast", 0) == 4, nodes
    assert nodes == expected_nodes, nodes
    dense = [mx.array(np.ascontiguousarray(to_np(a))).astype(a.dtype) for a in kv]
    np.testing.assert_array_equal(to_np(out), to_np(attend(q, *dense)))

    # The fallback (gradients w.r.t. the queries) on the buffers.
    def loss(q, *kv):
        return (attend(q, *kv).astype(mx.float32) ** 2).sum()

    g = mx.grad(loss)(q.astype(mx.float32), *kv)
    g_dense = mx.grad(loss)(q.astype(mx.float32), *dense)
    np.testing.assert_allclose(np.array(g), np.array(g_dense), rtol=1e-5, atol=1e-6)

    # Compiled and exported with the slices inside (the row count is state).
    def sliced(q, *bufs):
        return attend(q, *(a[:, :, start : start + n] for a in bufs))

    mx.eval(bufs)
    path = str(tmp_path / "sliced.mlxfn")
    mx.export_function(path, sliced, q, *bufs)
    for got in (mx.compile(sliced)(q, *bufs), mx.import_function(path)(q, *bufs)[0]):
        np.testing.assert_array_equal(to_np(got), to_np(out))
