"""Bad input raises a ValueError naming the op, never a crash or garbage."""

import math

import mlx.core as mx
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
