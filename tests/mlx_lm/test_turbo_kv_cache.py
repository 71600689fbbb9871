"""TurboQuantKVCache: cache protocol, prompt-cache files, routing, generation."""

import pytest

from _stack import require_turbo_stack, tiny_llama

mx = require_turbo_stack()

from mlx_lm.generate import generate_step  # noqa: E402
from mlx_lm.models import base  # noqa: E402
from mlx_lm.models.cache import (  # noqa: E402
    KVCache,
    QuantizedKVCache,
    RotatingKVCache,
    TurboQuantKVCache,
    load_prompt_cache,
    make_prompt_cache,
    parse_kv_cache_type,
    save_prompt_cache,
    to_turbo_kv_cache,
    trim_prompt_cache,
    turbo_key_shift,
)

WIDTH = {("turbo3", 64): 6, ("turbo4", 64): 8, ("turbo3", 128): 12, ("turbo4", 128): 16}


def kv(n, B=1, H=2, D=64, dtype=mx.float16, seed=0):
    mx.random.seed(seed)
    k = mx.random.normal((B, H, n, D)).astype(dtype)
    v = mx.random.normal((B, H, n, D)).astype(dtype)
    return k, v


def assert_equal(a, b):
    assert a.shape == b.shape and a.dtype == b.dtype
    assert mx.array_equal(a, b).item()


def test_parse_kv_cache_type():
    assert parse_kv_cache_type("turbo3") == ("turbo3", "turbo3")
    assert parse_kv_cache_type("TURBO4") == ("turbo4", "turbo4")
    assert parse_kv_cache_type("turbo4-turbo3") == ("turbo4", "turbo3")
    assert parse_kv_cache_type(("turbo3", "turbo4")) == ("turbo3", "turbo4")
    for bad in ["turbo2", "fp16", "turbo3-", "turbo3-turbo4-turbo3", ""]:
        with pytest.raises(ValueError):
            parse_kv_cache_type(bad)


@pytest.mark.parametrize("modes", [("turbo3", "turbo3"), ("turbo4", "turbo4"),
                                   ("turbo4", "turbo3"), ("turbo3", "turbo4")])
def test_update_and_fetch_matches_quantize(modes):
    km, vm = modes
    c = TurboQuantKVCache(km, vm)
    assert c.empty() and c.nbytes == 0 and c.offset == 0
    assert c.turbo_modes == modes
    assert c.mode == (km if km == vm else modes)
    k, v = kv(300)
    chunks = [(0, 100), *[(i, i + 1) for i in range(100, 160)], (160, 300)]
    for a, b in chunks:
        (kq, ks), (vq, vs) = c.update_and_fetch(k[:, :, a:b], v[:, :, a:b])
        # The first token is kept exact; the codes hold the tokens after it.
        assert c.offset == b and c.size() == b
        assert kq.shape == (1, 2, b - 1, WIDTH[(km, 64)]) and kq.dtype == mx.uint32
        assert vq.shape == (1, 2, b - 1, WIDTH[(vm, 64)]) and vq.dtype == mx.uint32
        assert ks.shape == (1, 2, b - 1, 1) and ks.dtype == mx.float16
        assert vs.shape == (1, 2, b - 1, 1) and vs.dtype == mx.float16
    # Preallocated in blocks of 256 tokens (like KVCache): 159 stored + 256.
    assert c.keys[0].shape[2] == 415
    assert_equal(c.first_key, k[:, :, :1])
    assert_equal(c.first_value, v[:, :, :1])
    # Keys are centered on the mean of the first chunk's other keys (per
    # sequence and head); values are stored as they are (the first value is
    # the sink's value in the fused op).
    shift = turbo_key_shift(k[:, :, 1:100])
    assert c.key_shift.shape == (1, 2, 1, 64) and c.key_shift.dtype == k.dtype
    assert_equal(c.key_shift, shift)
    rk = mx.quantize(k[:, :, 1:] - shift, mode=km)
    rv = mx.quantize(v[:, :, 1:], mode=vm)
    assert_equal(kq, rk[0])
    assert_equal(ks, rk[1])
    assert_equal(vq, rv[0])
    assert_equal(vs, rv[1])
    assert c.size() == 300 and not c.empty()
    exact = [c.key_shift, c.first_key, c.first_value]
    assert c.nbytes == sum(x.nbytes for x in c.keys + c.values + tuple(exact))
    assert c.nbytes < 512 * 2 * 2 * 64 * 2  # well below the fp16 buffers


def test_decode_steps_write_in_place():
    """A decode step quantizes its token into the cache's buffers in place (one
    op per buffer pair): the step's peak memory stays far below the size of
    the buffers, and the rows hold what mx.quantize gives."""
    c = TurboQuantKVCache("turbo4", "turbo3")
    k, v = kv(2000, H=8, D=128, dtype=mx.bfloat16)
    c.update_and_fetch(k[:, :, :1990], v[:, :, :1990])
    mx.eval(c.keys, c.values)
    buffer_bytes = sum(x.nbytes for x in c.keys + c.values)
    mx.reset_peak_memory()
    before = mx.get_active_memory()
    for i in range(1990, 2000):
        # Nothing else holds the buffers, as after a model's forward pass.
        c.update_and_fetch(k[:, :, i : i + 1], v[:, :, i : i + 1])
        mx.eval(c.keys, c.values)
    assert mx.get_peak_memory() - before < buffer_bytes / 4
    (kq, ks), (vq, vs) = c.keys_and_values()
    rk = mx.quantize(k[:, :, 1990:] - c.key_shift, mode="turbo4")
    rv = mx.quantize(v[:, :, 1990:], mode="turbo3")
    for got, want in zip((kq, ks, vq, vs), rk + rv):
        assert_equal(got[:, :, 1989:], want)


def test_growth_is_stepwise():
    c = TurboQuantKVCache("turbo3")
    k, v = kv(1)
    caps = []
    for _ in range(600):
        c.update_and_fetch(k, v)
        if c.keys is not None:  # the first token alone is kept exact
            caps.append(c.keys[0].shape[2])
    assert sorted(set(caps)) == [256, 512, 768]
    assert c.offset == 600


def test_trim_then_overwrite():
    k, v = kv(40)
    c = TurboQuantKVCache("turbo4", "turbo3")
    c.update_and_fetch(k[:, :, :30], v[:, :, :30])
    assert c.is_trimmable()
    assert c.trim(10) == 10 and c.offset == 20
    assert trim_prompt_cache([c], 5) == 5 and c.offset == 15
    (kq, ks), (vq, vs) = c.update_and_fetch(k[:, :, 15:40], v[:, :, 15:40])
    ref = TurboQuantKVCache("turbo4", "turbo3")
    ref.key_shift = c.key_shift  # calibrated on the first 30 keys, kept by trim
    (rkq, rks), (rvq, rvs) = ref.update_and_fetch(k, v)
    for a, b in [(kq, rkq), (ks, rks), (vq, rvq), (vs, rvs)]:
        assert_equal(a, b)
    assert c.trim(100) == 40 and c.offset == 0


def test_state_roundtrip_and_prompt_cache_file(tmp_path):
    k, v = kv(70, dtype=mx.bfloat16)
    t = TurboQuantKVCache("turbo4", "turbo3")
    t.update_and_fetch(k, v)
    plain = KVCache()
    plain.update_and_fetch(k, v)
    empty = TurboQuantKVCache("turbo3")
    f = str(tmp_path / "cache.safetensors")
    save_prompt_cache(f, [plain, t, empty], metadata={"model": "x"})
    loaded, meta = load_prompt_cache(f, return_metadata=True)
    assert meta == {"model": "x"}
    assert [type(c).__name__ for c in loaded] == ["KVCache", "TurboQuantKVCache",
                                                   "TurboQuantKVCache"]
    lt = loaded[1]
    assert lt.turbo_modes == ("turbo4", "turbo3") and lt.offset == 70
    for a, b in zip(lt.state[:4], t.state[:4]):
        assert_equal(a, b)
    assert_equal(lt.key_shift, t.key_shift)
    assert loaded[2].empty() and loaded[2].offset == 0
    # The loaded cache keeps growing exactly like the original one.
    k2, v2 = kv(300, dtype=mx.bfloat16, seed=1)
    out_a = t.update_and_fetch(k2, v2)
    out_b = lt.update_and_fetch(k2, v2)
    for a, b in zip(out_a[0] + out_a[1], out_b[0] + out_b[1]):
        assert_equal(a, b)


def test_state_without_transforms_loads(tmp_path):
    """A prompt-cache file written before the cache transforms (7 state entries,
    uncentered keys) loads and keeps generating without a shift."""
    k, v = kv(40)
    old = TurboQuantKVCache("turbo3", transforms=False)
    old.update_and_fetch(k, v)
    assert old.key_shift is None
    f = str(tmp_path / "old.safetensors")
    save_prompt_cache(f, [old])
    loaded = load_prompt_cache(f)[0]
    assert loaded.key_shift is None and not loaded.transforms
    legacy = TurboQuantKVCache()
    legacy.state = old.state[:7]
    assert legacy.key_shift is None and legacy.offset == 40
    k2, v2 = kv(5, seed=3)
    (kq, _), _ = legacy.update_and_fetch(k2, v2)
    assert_equal(kq[:, :, 40:], mx.quantize(k2, mode="turbo3")[0])


def test_state_with_shifted_values_loads():
    """A 10-entry state (the values stored as v - first_value, before the
    sink took the first value) is re-encoded to plain values on load."""
    k, v = kv(60, seed=5)
    new = TurboQuantKVCache("turbo4")
    new.update_and_fetch(k, v)
    assert new.state[10] == "values" and len(new.state) == 13
    kq, ks, vq, vs = new.state[:4]
    v0 = new.first_value
    shifted = mx.quantize(v[:, :, 1:] - v0, mode="turbo4")
    old = TurboQuantKVCache()
    old.state = (kq, ks, *shifted, *new.state[4:10])
    (_, _), (ovq, ovs) = old.keys_and_values()
    got = mx.dequantize(ovq, ovs, mode="turbo4")
    want = mx.dequantize(shifted[0], shifted[1], mode="turbo4") + v0
    # One more round of turbo4 quantization: within its error of the values.
    err = (mx.linalg.norm(got - want) / mx.linalg.norm(want)).item()
    assert err < 0.15, err
    direct = mx.dequantize(vq, vs, mode="turbo4")
    assert (mx.linalg.norm(got - direct) / mx.linalg.norm(direct)).item() < 0.3


def test_kv_cache_conversions():
    k, v = kv(50)
    plain = KVCache()
    plain.update_and_fetch(k, v)
    t = plain.to_turbo_quantized("turbo4")
    assert isinstance(t, TurboQuantKVCache) and t.offset == 50
    (kq, ks), _ = t.keys_and_values()
    shift = turbo_key_shift(k[:, :, 1:])
    rk = mx.quantize(k[:, :, 1:] - shift, mode="turbo4")
    assert_equal(kq, rk[0])
    back = t.to_kv_cache()
    assert isinstance(back, KVCache) and back.offset == 50
    bk, _ = back.keys_and_values()
    expected = mx.concatenate([k[:, :, :1], mx.dequantize(rk[0], rk[1], mode="turbo4") + shift], 2)
    assert mx.allclose(bk, expected).item()
    assert KVCache().to_turbo_quantized("turbo3").empty()


def test_make_prompt_cache_fp16_layers_and_rotating():
    model, _ = tiny_llama()
    names = lambda cs: [type(c).__name__ for c in cs]  # noqa: E731
    assert names(make_prompt_cache(model, kv_cache_type="turbo3")) == ["TurboQuantKVCache"] * 4
    assert names(make_prompt_cache(model, kv_cache_type="turbo3", turbo_fp16_layers=1)) == [
        "KVCache", "TurboQuantKVCache", "TurboQuantKVCache", "KVCache"]
    assert names(make_prompt_cache(model, kv_cache_type="turbo3", turbo_fp16_layers=2)) == [
        "KVCache"] * 4
    # Sliding-window layers keep their RotatingKVCache; fp16 layers count
    # attention (KVCache) layers only.
    swa, _ = tiny_llama(layer_types=["sliding_attention", "full_attention"] * 2,
                        sliding_window=8)
    cache = make_prompt_cache(swa, kv_cache_type="turbo4", turbo_fp16_layers=1)
    assert names(cache) == ["RotatingKVCache", "KVCache", "RotatingKVCache", "KVCache"]
    cache = make_prompt_cache(swa, kv_cache_type="turbo4")
    assert names(cache) == ["RotatingKVCache", "TurboQuantKVCache"] * 2
    toks = [t for t, _ in generate_step(mx.array(list(range(1, 20))), swa,
                                        max_tokens=6, prompt_cache=cache)]
    assert len(toks) == 6 and cache[1].offset == 25
    # Threshold: only layers at or past min_offset are converted.
    cache = [KVCache(), KVCache(), RotatingKVCache(max_size=8), QuantizedKVCache()]
    k, v = kv(10)
    cache[0].update_and_fetch(k, v)
    to_turbo_kv_cache(cache, "turbo4-turbo3", min_offset=5)
    assert names(cache) == ["TurboQuantKVCache", "KVCache", "RotatingKVCache",
                            "QuantizedKVCache"]
    assert cache[0].turbo_modes == ("turbo4", "turbo3") and cache[0].offset == 10


@pytest.mark.parametrize("mask", [None, "causal", "array", "additive"])
def test_routing_calls_fused_op(monkeypatch, mask):
    calls = []
    fused = mx.fast.quantized_scaled_dot_product_attention

    def spy(*args, **kwargs):
        calls.append(kwargs.get("mode"))
        return fused(*args, **kwargs)

    def forbidden(*a, **k):
        raise AssertionError("turbo attention must not dequantize or use fp SDPA")

    k, v = kv(12)
    c = TurboQuantKVCache("turbo4", "turbo3")
    keys, values = c.update_and_fetch(k, v)
    mx.random.seed(3)
    q = mx.random.normal((1, 4, 12, 64)).astype(mx.float16)
    m = mask
    if mask == "array":
        m = mx.tril(mx.ones((12, 12), dtype=mx.bool_))
    elif mask == "additive":
        m = mx.where(mx.tril(mx.ones((12, 12), dtype=mx.bool_)), 0.0, -1e9).astype(mx.float16)
    monkeypatch.setattr(mx.fast, "quantized_scaled_dot_product_attention", spy)
    monkeypatch.setattr(mx, "dequantize", forbidden)
    monkeypatch.setattr(mx.fast, "scaled_dot_product_attention", forbidden)
    out = base.scaled_dot_product_attention(q, keys, values, cache=c, scale=0.125, mask=m)
    mx.eval(out)
    monkeypatch.undo()
    assert calls == [("turbo4", "turbo3")]
    assert out.shape == q.shape and out.dtype == q.dtype
    # Same result as fp SDPA over the dequantized cache (exact first token,
    # shifts added back).
    dk, dv = (x.astype(mx.float32) for x in c.to_kv_cache().keys_and_values())
    ref = mx.fast.scaled_dot_product_attention(
        q.astype(mx.float32), dk, dv, scale=0.125,
        mask=m.astype(mx.float32) if mask == "additive" else m)
    assert mx.allclose(out.astype(mx.float32), ref, atol=1e-2, rtol=1e-2).item()


def test_model_forward_routes_every_turbo_layer(monkeypatch):
    model, _ = tiny_llama()
    calls = []
    fused = mx.fast.quantized_scaled_dot_product_attention

    def spy(*args, **kwargs):
        calls.append(kwargs.get("mode"))
        return fused(*args, **kwargs)

    monkeypatch.setattr(mx.fast, "quantized_scaled_dot_product_attention", spy)
    cache = make_prompt_cache(model, kv_cache_type="turbo3", turbo_fp16_layers=1)
    mx.eval(model(mx.array([[1, 2, 3, 4, 5]]), cache=cache))
    mx.eval(model(mx.array([[6]]), cache=cache))
    assert calls == ["turbo3"] * 4  # 2 quantized layers x 2 forward passes
    assert [c.offset for c in cache] == [6] * 4


@pytest.mark.parametrize("kv_type", ["turbo3", "turbo4", "turbo4-turbo3"])
def test_tiny_llama_generates_with_turbo_cache(kv_type):
    model, _ = tiny_llama()
    prompt = mx.array([1, 5, 9, 13, 17, 21, 25, 29])
    ref = [t for t, _ in generate_step(prompt, model, max_tokens=12)]
    cache = make_prompt_cache(model)
    toks = [t for t, _ in generate_step(prompt, model, max_tokens=12, prompt_cache=cache,
                                        kv_cache_type=kv_type, quantized_kv_start=0)]
    assert len(toks) == 12 and all(0 <= t < 96 for t in toks)
    assert all(isinstance(c, TurboQuantKVCache) for c in cache)
    assert cache[0].offset == len(prompt) + 12
    # Deterministic: the same cache type gives the same tokens again.
    again = [t for t, _ in generate_step(prompt, model, max_tokens=12,
                                         kv_cache_type=kv_type, quantized_kv_start=0)]
    assert again == toks and len(ref) == 12


def test_default_start_calibrates_on_256_tokens():
    """Without quantized_kv_start a turbo cache is made once 256 tokens are in
    the plain cache, so its transforms see at least that many."""
    model, _ = tiny_llama()
    cache = make_prompt_cache(model)
    for _ in generate_step(mx.array([3, 4, 5, 6] * 60), model, max_tokens=20,
                           prompt_cache=cache, kv_cache_type="turbo3"):
        if cache[0].offset < 256:
            assert type(cache[0]) is KVCache
    assert all(isinstance(c, TurboQuantKVCache) for c in cache)


def test_quantized_kv_start_threshold():
    model, _ = tiny_llama()
    cache = make_prompt_cache(model)
    prompt = mx.array([3, 4, 5, 6])
    gen = generate_step(prompt, model, max_tokens=20, prompt_cache=cache,
                        kv_cache_type="turbo4", quantized_kv_start=10,
                        turbo_fp16_layers=1)
    for i, _ in enumerate(gen):
        if cache[1].offset < 10:
            assert type(cache[1]) is KVCache
    assert [type(c).__name__ for c in cache] == [
        "KVCache", "TurboQuantKVCache", "TurboQuantKVCache", "KVCache"]
    with pytest.raises(ValueError):
        next(generate_step(prompt, model, max_tokens=2, kv_bits=4, kv_cache_type="turbo3"))


def test_prompt_cache_file_continues_identically(tmp_path):
    model, _ = tiny_llama(dtype=mx.float16)
    prompt = mx.array([2, 7, 11, 19, 23, 31, 37, 41, 43, 47])
    # Reference: prompt then continuation in one go.
    cache = make_prompt_cache(model, kv_cache_type="turbo4-turbo3", turbo_fp16_layers=1)
    ref = [t for t, _ in generate_step(prompt, model, max_tokens=10, prompt_cache=cache)]
    # Prefill the prompt (all but the last token, as generate does), save, load, continue.
    cache = make_prompt_cache(model, kv_cache_type="turbo4-turbo3", turbo_fp16_layers=1)
    model(prompt[None, :-1], cache=cache)
    mx.eval([c.state for c in cache])
    f = str(tmp_path / "prompt.safetensors")
    save_prompt_cache(f, cache)
    loaded = load_prompt_cache(f)
    assert [type(c).__name__ for c in loaded] == [
        "KVCache", "TurboQuantKVCache", "TurboQuantKVCache", "KVCache"]
    toks = [t for t, _ in generate_step(prompt[-1:], model, max_tokens=10,
                                        prompt_cache=loaded)]
    assert toks == ref
