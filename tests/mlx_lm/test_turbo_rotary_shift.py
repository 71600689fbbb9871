"""TurboQuantKVCache's key shift that follows the position (rotary embedding):
the planes read off the embedding, the fit, exactness through the fused op,
prompt-cache files, trimming, batching."""

import math

import numpy as np
import pytest

from _stack import require_turbo_stack, tiny_llama

mx = require_turbo_stack()

import mlx.nn as nn  # noqa: E402
from helpers import graph_primitives  # noqa: E402
from mlx_lm.models.base import scaled_dot_product_attention  # noqa: E402
from test_attention import attention_rtol  # noqa: E402
from mlx_lm.models.cache import (  # noqa: E402
    BatchTurboQuantKVCache,
    KVCache,
    TurboQuantKVCache,
    load_prompt_cache,
    make_prompt_cache,
    save_prompt_cache,
    turbo_rotary_planes,
)


@pytest.mark.parametrize("traditional", [False, True])
@pytest.mark.parametrize("dims", [64, 32])
def test_planes_match_the_embedding(traditional, dims):
    """The planes and angles of nn.RoPE (any layout, partial rotary dims)."""
    D, base = 64, 10000.0
    rope = nn.RoPE(dims, traditional=traditional, base=base)
    i, j, theta = turbo_rotary_planes(rope, D)
    assert len(i) == dims // 2
    want = base ** (-np.arange(0, dims, 2) / dims)
    order = np.argsort(np.array(i))
    got_i, got_j, got = np.array(i)[order], np.array(j)[order], np.array(theta)[order]
    if traditional:
        assert np.all(got_i == np.arange(0, dims, 2)) and np.all(got_j == got_i + 1)
    else:
        assert np.all(got_i == np.arange(dims // 2)) and np.all(got_j == got_i + dims // 2)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
    # Position t turns (x_i, x_j) by theta * t.
    x = mx.random.normal((1, 1, 1, D))
    t = 37
    y = np.array(rope(x, offset=t))[0, 0, 0]
    xn = np.array(x)[0, 0, 0]
    for a, b, th in zip(got_i, got_j, got):
        c, s = math.cos(th * t), math.sin(th * t)
        np.testing.assert_allclose(
            [y[a], y[b]], [xn[a] * c - xn[b] * s, xn[a] * s + xn[b] * c], atol=1e-4
        )


def test_planes_of_something_else():
    assert turbo_rotary_planes(lambda x, offset=0: x * 2.0, 64) is None
    assert turbo_rotary_planes(lambda x, offset=0: x[..., ::-1], 64) is None


def rotary_keys(n, B=1, H=2, D=64, seed=0, start=0):
    """Keys after a rotary embedding whose inputs have a large mean per head."""
    rng = np.random.default_rng(seed)
    rope = nn.RoPE(D, base=10000.0)
    pre = rng.standard_normal((B, H, 1, D)) * 4.0 + rng.standard_normal((B, H, n, D))
    k = rope(mx.array(pre.astype(np.float32)), offset=start)
    v = mx.array(rng.standard_normal((B, H, n, D)).astype(np.float32))
    return rope, k, v


def test_shift_lowers_the_key_error_and_reconstructs():
    rope, k, v = rotary_keys(300)
    err = {}
    for name, r in (("constant", None), ("rotary", rope)):
        c = TurboQuantKVCache("turbo3", rope=r)
        c.update_and_fetch(k, v)
        assert (c.key_shift_waves is not None) == (r is not None)
        kd = c.to_kv_cache().keys[..., :300, :]
        err[name] = mx.sum((kd - k) ** 2).item() / mx.sum(k**2).item()
    assert err["rotary"] < 0.5 * err["constant"], err
    c = TurboQuantKVCache("turbo3", rope=rope)
    c.update_and_fetch(k, v)
    assert c.key_shift_freqs.shape == (1, 2, 8) and c.key_shift_waves.shape == (1, 2, 16, 64)


@pytest.mark.parametrize("qL", [1, 20])
def test_attention_over_the_cache_is_exact(qL):
    """The fused op over the codes equals float64 attention over the keys the
    cache reconstructs (to_kv_cache: codes + constant shift + moving shift)."""
    rope, k, v = rotary_keys(200, B=2)
    c = TurboQuantKVCache("turbo4", rope=rope)
    (kq, ks), (vq, vs) = c.update_and_fetch(k, v)
    kv = c.to_kv_cache()
    kd, vd = kv.keys[..., :200, :], kv.values[..., :200, :]
    q = mx.random.normal((2, 4, qL, 64))
    out = mx.fast.quantized_scaled_dot_product_attention(
        q, kq, ks, vq, vs, scale=0.125, mask="causal", mode="turbo4", **c.turbo_transforms
    )
    qn, kn, vn = (np.array(x).astype(np.float64) for x in (q, kd, vd))
    kn, vn = np.repeat(kn, 2, axis=1), np.repeat(vn, 2, axis=1)
    s = 0.125 * qn @ np.swapaxes(kn, -1, -2)
    s = np.where(np.arange(200)[None] <= np.arange(200 - qL, 200)[:, None], s, -np.inf)
    p = np.exp(s - s.max(-1, keepdims=True))
    want = (p / p.sum(-1, keepdims=True)) @ vn
    err = np.abs(np.array(out) - want).max() / np.abs(want).max()
    # 1e-4, or the op's own bound where that is looser: more than 8 queries
    # take the prefill route, MLX's float32 attention (TF32 on CUDA).
    assert err < max(1e-4, attention_rtol("float32", qL)), err


def test_state_file_trim_and_legacy_state(tmp_path):
    rope, k, v = rotary_keys(120)
    c = TurboQuantKVCache("turbo3", rope=rope)
    c.update_and_fetch(k, v)
    f = str(tmp_path / "c.safetensors")
    save_prompt_cache(f, [c])
    lc = load_prompt_cache(f)[0]
    assert mx.array_equal(lc.key_shift_freqs, c.key_shift_freqs).item()
    assert mx.array_equal(lc.key_shift_waves, c.key_shift_waves).item()
    _, k2, v2 = rotary_keys(5, seed=1, start=120)
    a, b = c.update_and_fetch(k2, v2), lc.update_and_fetch(k2, v2)
    for x, y in zip(a[0] + a[1], b[0] + b[1]):
        assert mx.array_equal(x, y).item()
    # An 11-entry state (before the moving shift) loads with a constant one.
    old = TurboQuantKVCache()
    old.state = c.state[:11]
    assert old.key_shift_waves is None and old.key_shift is not None
    # Trimming everything recalibrates.
    c.trim(c.offset)
    assert c.key_shift_waves is None and c.key_shift is None


def test_batch_keeps_the_moving_shift_through_merge_filter_extract():
    """A batch keeps each sequence's moving shift in buffer positions: merge
    (left padding), filter (padding dropped) and extract turn the waves
    along, so every sequence reconstructs the same keys as alone."""
    rope, k, v = rotary_keys(90, seed=2)
    c = TurboQuantKVCache("turbo4", rope=rope)
    c.update_and_fetch(k, v)
    _, k2, v2 = rotary_keys(40, seed=3)
    short = TurboQuantKVCache("turbo4", rope=rope)
    short.update_and_fetch(k2, v2)
    plain = TurboQuantKVCache("turbo4")
    plain.update_and_fetch(k2, v2)
    batch = BatchTurboQuantKVCache.merge([c, short, plain])
    assert batch.key_shift_waves.shape[0] == 3

    def close(a, b):
        ka, kb = a.to_kv_cache().keys[..., : a.offset, :], b.to_kv_cache().keys[..., : b.offset, :]
        rel = mx.sum((ka - kb) ** 2).item() / mx.sum(kb**2).item()
        assert ka.shape == kb.shape and rel < 1e-10, rel

    for i, alone in enumerate([c, short, plain]):
        close(batch.extract(i), alone)
    batch.filter([1, 2])  # drops the longest: the padding in front goes
    close(batch.extract(0), short)
    close(batch.extract(1), plain)


def test_make_prompt_cache_attaches_the_model_ropes():
    model, _ = tiny_llama(dtype=mx.float32)
    cache = make_prompt_cache(model, kv_cache_type="turbo3")
    assert all(c.rope is model.layers[i].self_attn.rope for i, c in enumerate(cache))
    plain = make_prompt_cache(model)
    assert all(type(c) is KVCache for c in plain)


def test_a_step_over_converted_caches_reads_no_rope(monkeypatch):
    """generate_step converts the cache at every step (to_turbo_kv_cache):
    once every layer is a turbo cache with its rope, nothing is read off the
    model; a plain layer that reaches the start is still converted with its
    rope."""
    import mlx_lm.models.cache as cache_module

    model, _ = tiny_llama(dtype=mx.float32)
    cache = make_prompt_cache(model, kv_cache_type="turbo3")

    def forbidden(*a, **k):
        raise AssertionError("read the ropes off the model")

    monkeypatch.setattr(cache_module, "_turbo_ropes", forbidden)
    cache_module.to_turbo_kv_cache(cache, "turbo3", model=model)
    monkeypatch.undo()
    plain = make_prompt_cache(model)
    plain[0].update_and_fetch(*(mx.zeros((1, 2, 4, 64)) for _ in range(2)))
    cache_module.to_turbo_kv_cache(plain, "turbo3", min_offset=4, model=model)
    assert type(plain[0]) is TurboQuantKVCache and plain[0].rope is model.layers[0].self_attn.rope
    assert type(plain[1]) is KVCache


def test_decode_steps_store_the_keys_of_one_chunk():
    """One key at a time stores the same keys as one long append: every
    append passes the moving shift's frequencies and waves, and the op
    computes the shift of each row."""
    rope, k, v = rotary_keys(400)
    steps = TurboQuantKVCache("turbo4", rope=rope)
    chunk = TurboQuantKVCache("turbo4", rope=rope)
    for c in (steps, chunk):
        c.update_and_fetch(k[:, :, :100], v[:, :, :100])
    for t in range(100, 400):
        steps.update_and_fetch(k[:, :, t : t + 1], v[:, :, t : t + 1])
    chunk.update_and_fetch(k[:, :, 100:], v[:, :, 100:])
    a = steps.to_kv_cache().keys[..., :400, :]
    b = chunk.to_kv_cache().keys[..., :400, :]
    err = mx.max(mx.abs(a - b)).item() / mx.max(mx.abs(b)).item()
    assert err < 1e-5, err
    whole = mx.sum((b - k) ** 2).item() / mx.sum(k**2).item()
    assert whole < 0.05, whole


@pytest.mark.parametrize("moving", [True, False])
@pytest.mark.parametrize("batch", [False, True])
def test_a_decode_step_adds_only_the_append_and_the_views(batch, moving):
    """A decode step's append over a cache with the key shift (moving, or
    constant: no rotary embedding), keys in bfloat16, is the op's four nodes
    (codes and scales of keys and values) and the four views of the stored
    rows: no node per step for the shift, not even a cast (host time per node
    is what bounds decode on the GPU, docs/cuda.md), and the batch cache does
    not read its calibration flags back once they are known. The attention
    then reads the buffers in place: the step's layer is the append and the
    attention."""
    rope, k, v = rotary_keys(120)
    k, v = k.astype(mx.bfloat16), v.astype(mx.bfloat16)
    c = TurboQuantKVCache("turbo4", rope=rope if moving else None)
    c.update_and_fetch(k[:, :, :100], v[:, :, :100])
    assert (c.key_shift_waves is not None) == moving
    if batch:
        c = BatchTurboQuantKVCache.merge([c])
        mx.eval(c.update_and_fetch(*(mx.contiguous(x[:, :, 100:101]) for x in (k, v))))

        class Unread:
            def __getattr__(self, name):
                raise AssertionError("a decode step read the calibration flags back")

        # Known calibrated after the first step: later steps do not read the
        # flags back (a synchronization per layer and step).
        c._calibrated = Unread()
    mx.eval(c.keys, c.values, *(t for t in c.turbo_transforms.values() if t is not None))
    k1, v1 = mx.contiguous(k[:, :, 110:111]), mx.contiguous(v[:, :, 110:111])
    mx.eval(k1, v1)
    (kq, ks), (vq, vs) = c.update_and_fetch(k1, v1)
    assert graph_primitives(kq, ks, vq, vs) == {"QuantizedCacheUpdate": 4, "Slice": 4}
    # The attention reads the buffers in place: the views are no nodes of
    # the step, whose attention is then the append and one node (bf16's
    # cache: two updates, two views, the attention).
    q = mx.random.normal((1, 4, 1, 64)).astype(mx.bfloat16)
    mx.eval(q)
    out = scaled_dot_product_attention(q, (kq, ks), (vq, vs), c, scale=0.125, mask=None)
    nodes = graph_primitives(out)
    if batch:
        # (the batch cache's mask of the padding and the first tokens' slots)
        assert "Slice" not in nodes and "Arange" in nodes, nodes
        nodes = {k: n for k, n in nodes.items() if k.startswith("Quantized")}
    assert nodes == {"QuantizedCacheUpdate": 4, "QuantizedScaledDotProductAttention": 1}
