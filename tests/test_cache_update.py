"""mx.fast.quantized_cache_update: a cache append in one node, against
mx.quantize + slice updates (bit for bit) and the float64 spec encoder."""

import mlx.core as mx
import numpy as np
import pytest

import reference as ref
from helpers import DTYPES, is_cuda, mlx_float32_matmul_rtol, to_np

MODES = ["turbo3", "turbo4"]
SAFE_MARGIN = 1e-4


def make_cache(rng, B, H, N, D, mode, dtype):
    base = mx.array(rng.standard_normal((B, H, N, D)).astype(np.float32)).astype(dtype)
    return mx.quantize(base, mode=mode)


def composed(packed, scales, x, offset, mode, shift=None):
    """What the op replaces: quantize, then two slice updates."""
    if shift is not None:
        x = (x.astype(mx.float32) - shift.astype(mx.float32)).astype(x.dtype)
    q, s = mx.quantize(x, mode=mode)
    packed, scales = mx.array(packed), mx.array(scales)
    L = x.shape[2]
    packed[..., offset : offset + L, :] = q
    scales[..., offset : offset + L, :] = s
    return packed, scales


def new_rows(rng, B, H, L, D, dtype, layout):
    """(B, H, L, D) vectors, contiguous or as the transposed view a model makes."""
    x = rng.standard_normal((B, L, H, D)) * rng.uniform(0.1, 20.0, (B, L, H, 1))
    x = mx.array(x.astype(np.float32)).astype(dtype)
    x = x.transpose(0, 2, 1, 3)
    return mx.contiguous(x) if layout == "contiguous" else x


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("dim", ref.SUPPORTED_DIMS)
def test_matches_quantize_and_slice_update(rng, mode, dtype, dim):
    B, H, N = 2, 3, 40
    packed, scales = make_cache(rng, B, H, N, dim, mode, DTYPES[dtype])
    for L, offset, layout in [(1, 0, "strided"), (1, 17, "contiguous"), (5, N - 5, "strided")]:
        x = new_rows(rng, B, H, L, dim, DTYPES[dtype], layout)
        out = mx.fast.quantized_cache_update(packed, scales, x, offset, mode=mode)
        want = composed(packed, scales, x, offset, mode)
        assert out[0].dtype == mx.uint32 and out[1].dtype == DTYPES[dtype]
        assert mx.array_equal(out[0], want[0]).item(), (L, offset, layout)
        assert mx.array_equal(out[1], want[1]).item(), (L, offset, layout)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize(
    "shift_shape", ["rows", "per_head", "per_channel", "scalar", "strided_rows"]
)
def test_shift(rng, mode, dtype, shift_shape):
    B, H, N, D, L, offset = 2, 4, 24, 128, 3, 9
    packed, scales = make_cache(rng, B, H, N, D, mode, DTYPES[dtype])
    x = new_rows(rng, B, H, L, D, DTYPES[dtype], "strided")
    shapes = {
        "rows": (B, H, L, D),
        "per_head": (B, H, 1, D),
        "per_channel": (D,),
        "scalar": (1, 1, 1, 1),
        "strided_rows": (B, H, 2 * L, D),
    }
    shift = mx.array(rng.standard_normal(shapes[shift_shape]).astype(np.float32))
    if shift_shape == "strided_rows":
        shift = shift[:, :, ::2]  # a view with a row stride, like a table slice
    out = mx.fast.quantized_cache_update(packed, scales, x, offset, mode=mode, shift=shift)
    want = composed(packed, scales, x, offset, mode, shift)
    assert mx.array_equal(out[0], want[0]).item()
    assert mx.array_equal(out[1], want[1]).item()
    # A shift in the keys' dtype is taken as float32 the same way.
    half = shift.astype(DTYPES[dtype])
    out = mx.fast.quantized_cache_update(packed, scales, x, offset, mode=mode, shift=half)
    want = composed(packed, scales, x, offset, mode, half)
    assert mx.array_equal(out[0], want[0]).item()


@pytest.mark.parametrize("mode", MODES)
def test_rows_against_spec_encoder(rng, mode):
    """Independent of mx.quantize: the new rows hold the float64 spec
    encoder's codes and scales; every other row is untouched."""
    B, H, N, D, L, offset = 1, 2, 12, 96, 4, 6
    bits = ref.MODE_BITS[mode]
    packed, scales = make_cache(rng, B, H, N, D, mode, mx.float32)
    x = new_rows(rng, B, H, L, D, mx.float32, "strided")
    shift = mx.array(rng.standard_normal((B, H, 1, D)).astype(np.float32))
    p2, s2 = mx.fast.quantized_cache_update(packed, scales, x, offset, mode=mode, shift=shift)
    y = to_np(x).astype(np.float64) - to_np(shift)
    codes_ref, _, scales_ref, margin = ref.encode(y.astype(np.float32), mode)
    codes = ref.unpack(np.array(p2), bits, D)[:, :, offset : offset + L]
    safe = margin > SAFE_MARGIN
    assert safe.mean() > 0.99
    np.testing.assert_array_equal(codes[safe], codes_ref[safe])
    row_safe = safe.all(-1, keepdims=True)
    got = np.array(s2)[:, :, offset : offset + L]
    np.testing.assert_allclose(got[row_safe], scales_ref[row_safe], rtol=1e-5)
    keep = np.ones(N, bool)
    keep[offset : offset + L] = False
    np.testing.assert_array_equal(np.array(p2)[:, :, keep], np.array(packed)[:, :, keep])
    np.testing.assert_array_equal(np.array(s2)[:, :, keep], np.array(scales)[:, :, keep])


def round_to(y, dtype):
    """float64 y rounded to dtype (to nearest even), back in float64."""
    if dtype == mx.float16:
        return y.astype(np.float16).astype(np.float64)
    y32 = y.astype(np.float32)
    if dtype == mx.float32:
        return y32.astype(np.float64)
    return np.array(mx.array(y32).astype(mx.bfloat16).astype(mx.float32)).astype(np.float64)


def moving_shift_inputs(rng, B, H, L, D, P, per_batch):
    """Frequencies over the whole uint32 range (the products wrap; plane 0
    constant) and waves (B or 1, H, 2P, D) float32."""
    Bw = B if per_batch else 1
    freqs = rng.integers(0, 2**32, (Bw, H, P), dtype=np.uint64).astype(np.uint32)
    freqs[..., 0] = 0
    waves = (rng.standard_normal((Bw, H, 2 * P, D)) * 0.3).astype(np.float32)
    return freqs, waves


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("dim", ref.SUPPORTED_DIMS)
@pytest.mark.parametrize("P", [3, 8, 13])
def test_moving_shift_against_float64(rng, mode, dtype, dim, P):
    """shift_freqs / shift_waves: new vector l is stored minus key_shift and
    the moving shift of cache row offset + l, in float32, rounded to x's
    dtype, against the float64 spec: y = x - mu - shift(offset + l) in
    float64, rounded to the dtype, encoded by the spec encoder.

    The kernels' float32 shift lies within e = 2^-17 (|x| + |mu| + sum_j
    |waves_j|) of the float64 one (2P + 2 roundings of terms bounded by that
    sum and phases within 2^-21 of the exact ones; a factor of 2 spare at P =
    32). So the rounded input can differ from the reference's only where
    y +- e rounds to two values, by at most their difference (delta); a
    perturbation delta of the vector moves every rotated, normalized
    coordinate z by at most 2 sqrt(D) |delta| / |y|. Codes are compared where
    z lies farther than that (plus the spec test's margin) from a boundary;
    scales of the vectors whose codes all match, within the dtype's rounding
    plus 2 |delta| / |y|."""
    B, H, N, L, offset = 2, 3, 40, 7, 29
    t = DTYPES[dtype]
    bits = ref.MODE_BITS[mode]
    packed, scales = make_cache(rng, B, H, N, dim, mode, t)
    x = new_rows(rng, B, H, L, dim, t, "strided")
    mu = (rng.standard_normal((B, H, 1, dim)) * 0.5).astype(np.float32)
    freqs, waves = moving_shift_inputs(rng, B, H, L, dim, P, per_batch=P != 8)
    p2, s2 = mx.fast.quantized_cache_update(
        packed,
        scales,
        x,
        offset,
        mode=mode,
        shift=mx.array(mu),
        shift_freqs=mx.array(freqs),
        shift_waves=mx.array(waves),
    )
    x64 = to_np(x).astype(np.float64)
    y64 = x64 - mu - ref.wave_shift(freqs, waves, np.arange(offset, offset + L))
    mag = np.abs(x64) + np.abs(mu) + np.abs(waves).sum(axis=2, keepdims=True)
    e = 2.0**-17 * mag
    lo, hi = round_to(y64 - e, t), round_to(y64 + e, t)
    delta = np.linalg.norm(hi - lo, axis=-1, keepdims=True)
    y = round_to(y64, t)
    codes_ref, _, scales_ref, margin = ref.encode(y, mode)
    n = np.maximum(np.linalg.norm(y, axis=-1, keepdims=True), 1e-30)
    safe = margin > SAFE_MARGIN + 2 * np.sqrt(dim) * delta / n
    codes = ref.unpack(np.array(p2), bits, dim)[:, :, offset : offset + L]
    assert safe.mean() > 0.8, safe.mean()
    np.testing.assert_array_equal(codes[safe], codes_ref[safe])
    # Scales of the vectors whose codes all match (the same codebook norm).
    same = (codes == codes_ref).all(-1, keepdims=True)
    assert same.mean() > 0.5, same.mean()
    got = to_np(s2)[:, :, offset : offset + L].astype(np.float64)
    ulp = {"float32": 2.0**-23, "float16": 2.0**-10, "bfloat16": 2.0**-7}[dtype]
    rtol = 1e-5 + ulp + 2 * delta / n
    err = np.abs(got - scales_ref) / scales_ref
    assert np.all(err[same] <= rtol[same]), err[same].max()
    keep = np.ones(N, bool)
    keep[offset : offset + L] = False
    np.testing.assert_array_equal(np.array(p2)[:, :, keep], np.array(packed)[:, :, keep])
    np.testing.assert_array_equal(to_np(s2)[:, :, keep], to_np(scales)[:, :, keep])


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", list(DTYPES))
def test_moving_shift_zero_waves_is_the_shift(rng, mode, dtype):
    """Zero waves leave exactly the constant shift (cos * 0 + sin * 0 adds
    nothing in float32), and with neither the moving shift is the whole
    shift: bit for bit the op with shift= alone, and the composed ops."""
    B, H, N, D, L, offset, P = 2, 2, 16, 96, 5, 6, 4
    t = DTYPES[dtype]
    packed, scales = make_cache(rng, B, H, N, D, mode, t)
    x = new_rows(rng, B, H, L, D, t, "strided")
    mu = mx.array(rng.standard_normal((B, H, 1, D)).astype(np.float32))
    freqs, _ = moving_shift_inputs(rng, B, H, L, D, P, per_batch=True)
    update = mx.fast.quantized_cache_update
    out = update(
        packed,
        scales,
        x,
        offset,
        mode=mode,
        shift=mu,
        shift_freqs=mx.array(freqs),
        shift_waves=mx.zeros((B, H, 2 * P, D)),
    )
    want = update(packed, scales, x, offset, mode=mode, shift=mu)
    assert mx.array_equal(out[0], want[0]).item() and mx.array_equal(out[1], want[1]).item()
    want = composed(packed, scales, x, offset, mode, mu)
    assert mx.array_equal(out[0], want[0]).item() and mx.array_equal(out[1], want[1]).item()


@pytest.mark.parametrize("per_batch", [True, False])
def test_moving_shift_matches_shift_rows(rng, per_batch):
    """The op's moving shift against its rows computed in float64, rounded
    to float32 and passed as shift= (what mlx-lm computed with ops): the same
    codes except where a value lies within float32 rounding of a boundary,
    at cache rows past 2^16 (angles from the wrapped uint32 product)."""
    B, H, D, L, P, mode, offset = 2, 4, 128, 33, 8, "turbo4", 70000
    packed = mx.zeros((B, H, offset + 48, D // 8), mx.uint32)
    scales = mx.zeros((B, H, offset + 48, 1), mx.bfloat16)
    x = new_rows(rng, B, H, L, D, mx.bfloat16, "strided")
    mu = (rng.standard_normal((B, H, 1, D)) * 0.5).astype(np.float32)
    freqs, waves = moving_shift_inputs(rng, B, H, L, D, P, per_batch)
    waves *= 10.0
    rows = mu + ref.wave_shift(freqs, waves, np.arange(offset, offset + L))
    out = mx.fast.quantized_cache_update(
        packed,
        scales,
        x,
        offset,
        mode=mode,
        shift=mx.array(mu),
        shift_freqs=mx.array(freqs),
        shift_waves=mx.array(waves),
    )
    want = mx.fast.quantized_cache_update(
        packed, scales, x, offset, mode=mode, shift=mx.array(rows.astype(np.float32))
    )
    new = slice(offset, offset + L)
    differ = np.array(out[0])[:, :, new] != np.array(want[0])[:, :, new]
    assert differ.mean() < 0.02, differ.mean()
    deq = to_np(mx.dequantize(out[0][:, :, new], out[1][:, :, new], mode=mode))
    deq_want = to_np(mx.dequantize(want[0][:, :, new], want[1][:, :, new], mode=mode))
    err = np.linalg.norm(deq - deq_want) / np.linalg.norm(deq_want)
    assert err < 0.02, err


def test_moving_shift_then_prefill_route(rng):
    """An append with the moving shift, read back by the attention's prefill
    route (the one-pass dequantize adds the same shift of each cache row):
    the keys come back as x within the quantization error."""
    B, Hq, H, N, D, P = 1, 4, 2, 64, 64, 5
    freqs, waves = moving_shift_inputs(rng, B, H, N, D, P, per_batch=True)
    waves *= 10.0
    mu = (rng.standard_normal((B, H, 1, D)) * 3.0).astype(np.float32)
    k = mu + ref.wave_shift(freqs, waves, np.arange(N)) + rng.standard_normal((B, H, N, D))
    k = k.astype(np.float32)
    kc, ks = make_cache(rng, B, H, N, D, "turbo4", mx.float32)
    kw = dict(shift=mx.array(mu), shift_freqs=mx.array(freqs), shift_waves=mx.array(waves))
    for start, stop in ((0, 24), (24, N)):
        kc, ks = mx.fast.quantized_cache_update(
            kc, ks, mx.array(k[:, :, start:stop]), start, mode="turbo4", **kw
        )
    # The stored vectors are small (the shift removed), so the keys' error is
    # that of the residual, not of the large shifted keys.
    kd = ref.decode(np.array(kc), to_np(ks), "turbo4")
    resid = k - mu - ref.wave_shift(freqs, waves, np.arange(N))
    err = np.linalg.norm(kd - resid) / np.linalg.norm(resid)
    assert err < 0.15, err
    q = mx.array(rng.standard_normal((B, Hq, 16, D)).astype(np.float32))
    v = mx.quantize(mx.array(rng.standard_normal((B, H, N, D)).astype(np.float32)), mode="turbo4")
    out = mx.fast.quantized_scaled_dot_product_attention(
        q,
        kc,
        ks,
        *v,
        scale=D**-0.5,
        mode="turbo4",
        key_shift=mx.array(mu),
        key_shift_freqs=mx.array(freqs),
        key_shift_waves=mx.array(waves),
    )
    vd = ref.decode(np.array(v[0]), to_np(v[1]), "turbo4")
    want = ref.attention(np.array(q).astype(np.float64), kd + k - resid, vd, D**-0.5)
    err = np.linalg.norm(np.array(out) - want) / np.linalg.norm(want)
    # The prefill route ends in MLX's own float32 attention (TF32 on CUDA).
    assert err < max(1e-4, mlx_float32_matmul_rtol()), err


def append_growth(steps, pipelined):
    """Peak memory growth over appends `steps(i)` (each returns the arrays to
    evaluate), evaluated one by one or queued as a decode loop queues them."""
    mx.reset_peak_memory()
    before = mx.get_active_memory()
    for i in range(8):
        out = steps(i)
        (mx.async_eval if pipelined else mx.eval)(*out)
        del out
    mx.synchronize()
    return mx.get_peak_memory() - before


def test_updates_in_place(rng):
    """A cache nothing else refers to is updated in its own buffers, as MLX's
    slice assignment updates a bf16 cache: queued appends (a decode loop)
    copy no more than slice assignment does on the same backend, and on the
    CPU appends evaluated one at a time grow the peak memory far less than
    the cache's size."""
    B, H, N, D = 1, 8, 8192, 128
    packed, scales = make_cache(rng, B, H, N, D, "turbo4", mx.bfloat16)
    # Buffers made by single-output ops, as a cache makes them (mx.zeros,
    # concatenate): the two outputs of mx.quantize keep each other alive
    # until their kernel has run on GPU backends.
    cache = [mx.array(np.array(packed)), mx.array(to_np(scales)).astype(mx.bfloat16)]
    x = new_rows(rng, B, H, 1, D, mx.bfloat16, "strided")
    mx.eval(cache, x)
    cache_bytes = cache[0].nbytes + cache[1].nbytes

    def update(i):
        cache[:] = mx.fast.quantized_cache_update(*cache, x, i, mode="turbo4")
        return cache

    # The steady state of a decode loop: the buffers come out of an append
    # (on GPU backends, arrays made from host data may live in other memory
    # than the outputs of kernels).
    mx.eval(update(0))
    # Slice assignment on a bf16 buffer of the same size as the packed cache.
    plain = mx.zeros((B, H, N, cache_bytes // (B * H * N * 2)), mx.bfloat16)
    x_plain = mx.zeros((B, H, 1, plain.shape[-1]), mx.bfloat16)
    mx.eval(plain, x_plain)

    def assign(i):
        plain[..., i : i + 1, :] = x_plain
        return [plain]

    mx.eval(assign(0))
    # How many of the queued steps find their buffer still shared depends on
    # when the worker thread catches up with the queue, for both: on a loaded
    # CPU a run copies anywhere from 1 to 7 times in 8 steps. So the fewest
    # copies of three runs is held against the most of three.
    queued = min(append_growth(update, pipelined=True) for _ in range(3))
    reference = max(append_growth(assign, pipelined=True) for _ in range(3))
    if queued > reference + cache_bytes / 4 and is_cuda():
        # Known on the H200 (docs/cuda.md, status): 21.6 MB
        # against slice assignment's 8.7 MB for a 4.3 MB cache, while mlx-lm's
        # decode loop copies no cache (docs/cuda.md, "The cache append").
        pytest.xfail(f"CUDA: queued appends grew {queued} bytes, slice assignment {reference}")
    assert queued <= reference + cache_bytes / 4, (queued, reference, cache_bytes)
    # One at a time: on the CUDA backend an evaluated step's inputs stay
    # referenced until a completion callback on another thread releases
    # them, so the next append may find its buffer shared and copy it, and
    # slice assignment copies too (docs/cuda.md, "The decode step"). The CPU
    # releases them before eval returns.
    if mx.default_device() == mx.cpu:
        assert append_growth(update, pipelined=False) < cache_bytes / 4


def test_shared_cache_is_copied(rng):
    """A cache still referred to elsewhere keeps its contents."""
    packed, scales = make_cache(rng, 1, 2, 16, 64, "turbo3", mx.float16)
    mx.eval(packed, scales)
    old_p, old_s = np.array(packed), np.array(scales)
    x = new_rows(rng, 1, 2, 2, 64, mx.float16, "contiguous")
    p2, s2 = mx.fast.quantized_cache_update(packed, scales, x, 3, mode="turbo3")
    mx.eval(p2, s2)
    np.testing.assert_array_equal(np.array(packed), old_p)
    np.testing.assert_array_equal(np.array(scales), old_s)
    assert not np.array_equal(np.array(p2)[:, :, 3:5], old_p[:, :, 3:5])


def test_no_new_rows(rng):
    packed, scales = make_cache(rng, 1, 2, 8, 64, "turbo4", mx.float32)
    x = mx.zeros((1, 2, 0, 64))
    p2, s2 = mx.fast.quantized_cache_update(packed, scales, x, 8, mode="turbo4")
    assert mx.array_equal(p2, packed).item() and mx.array_equal(s2, scales).item()


def test_errors(rng):
    packed, scales = make_cache(rng, 1, 2, 8, 64, "turbo4", mx.float32)
    x = mx.zeros((1, 2, 2, 64))
    update = mx.fast.quantized_cache_update
    cases = [
        (lambda: update(packed, scales, x, 7, mode="turbo4"), "does not fit"),
        (lambda: update(packed, scales, x, -1, mode="turbo4"), "does not fit"),
        (lambda: update(packed, scales, x, 0, mode="turbo3"), "packed must have shape"),
        (lambda: update(packed, scales, x, 0, mode="affine"), "Unsupported mode"),
        (lambda: update(packed, scales, x[0], 0, mode="turbo4"), "must be 4D"),
        (lambda: update(packed, scales.astype(mx.float16), x, 0, mode="turbo4"), "dtype of x"),
        (lambda: update(packed.astype(mx.int32), scales, x, 0, mode="turbo4"), "uint32"),
        (lambda: update(packed, scales[:, :1], x, 0, mode="turbo4"), "scales must have shape"),
        (lambda: update(packed, scales[..., :4, :], x, 0, mode="turbo4"), "scales must have shape"),
        (lambda: update(packed, scales, x.astype(mx.int32), 0, mode="turbo4"), "float32"),
        (lambda: update(packed, scales, mx.zeros((1, 2, 2, 48)), 0, mode="turbo4"), "head dim"),
        (
            lambda: update(packed, scales, x, 0, mode="turbo4", shift=mx.zeros((3, 64))),
            "does not broadcast",
        ),
    ]
    for call, message in cases:
        with pytest.raises(ValueError, match=f"quantized_cache_update.*{message}"):
            call()
