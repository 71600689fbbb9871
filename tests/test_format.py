"""mx.quantize / mx.dequantize with the turbo modes against the float64 spec reference."""

import json
import os

import mlx.core as mx
import numpy as np
import pytest

import reference as ref
from helpers import DTYPES, rel_err, to_np

MODES = ["turbo3", "turbo4"]
GOLDEN = os.path.join(os.path.dirname(__file__), "golden", "turbo_golden.json")

# Scale tolerance: the stored scale is rounded to the input dtype.
SCALE_RTOL = {"float32": 1e-5, "float16": 1e-3, "bfloat16": 8e-3}
# float32 encoders may disagree with the float64 reference only on coordinates
# this close to a decision boundary (sqrt(D)-scaled units).
SAFE_MARGIN = 1e-4


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dim", ref.SUPPORTED_DIMS)
@pytest.mark.parametrize("dtype", list(DTYPES))
def test_quantize_matches_reference(rng, mode, dim, dtype):
    bits = ref.MODE_BITS[mode]
    x = rng.standard_normal((2, 3, 17, dim)) * rng.uniform(0.1, 30.0, (2, 3, 17, 1))
    xm = mx.array(x.astype(np.float32)).astype(DTYPES[dtype])
    packed, scales = mx.quantize(xm, mode=mode)
    assert packed.dtype == mx.uint32 and packed.shape == (2, 3, 17, ref.packed_width(dim, bits))
    assert scales.dtype == DTYPES[dtype] and scales.shape == (2, 3, 17, 1)

    codes_ref, _, scales_ref, margin = ref.encode(to_np(xm), mode)
    codes = ref.unpack(np.array(packed), bits, dim)
    safe = margin > SAFE_MARGIN
    assert safe.mean() > 0.99
    np.testing.assert_array_equal(codes[safe], codes_ref[safe])
    # Scales depend on every code; compare where all codes of the vector are safe.
    row_safe = safe.all(-1, keepdims=True)
    np.testing.assert_allclose(
        to_np(scales)[row_safe], scales_ref[row_safe], rtol=SCALE_RTOL[dtype]
    )
    # Unused bits are zero (turbo3, D = 80).
    if bits == 3 and dim % 32:
        assert np.all(np.array(packed)[..., -1] >> 16 == 0)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dim", ref.SUPPORTED_DIMS)
@pytest.mark.parametrize("dtype", list(DTYPES))
def test_dequantize_matches_reference(rng, mode, dim, dtype):
    x = rng.standard_normal((5, 33, dim)).astype(np.float32)
    packed, scales = mx.quantize(mx.array(x).astype(DTYPES[dtype]), mode=mode)
    out = mx.dequantize(packed, scales, mode=mode)
    assert out.dtype == DTYPES[dtype] and out.shape == x.shape
    expected = ref.decode(np.array(packed), to_np(scales), mode)
    assert (
        rel_err(to_np(out), expected) < {"float32": 1e-6, "float16": 1e-3, "bfloat16": 8e-3}[dtype]
    )
    out32 = mx.dequantize(packed, scales, mode=mode, dtype=mx.float32)
    assert out32.dtype == mx.float32


@pytest.mark.parametrize("mode", MODES)
def test_reconstruction_keeps_norm(rng, mode):
    x = rng.standard_normal((64, 128)).astype(np.float32) * 7
    p, s = mx.quantize(mx.array(x), mode=mode)
    xh = np.array(mx.dequantize(p, s, mode=mode))
    np.testing.assert_allclose(np.linalg.norm(xh, axis=-1), np.linalg.norm(x, axis=-1), rtol=1e-5)


def test_zero_and_nonfinite_vectors():
    x = np.zeros((3, 128), np.float32)
    x[1, 5] = np.nan
    x[2] = 1.0
    for mode in MODES:
        p, s = mx.quantize(mx.array(x), mode=mode)
        s = np.array(s)
        assert s[0, 0] == 0.0
        assert np.isnan(s[1, 0])
        xh = np.array(mx.dequantize(p, mx.array(s), mode=mode))
        np.testing.assert_array_equal(xh[0], 0.0)
        assert np.all(np.isfinite(xh[2]))


@pytest.mark.parametrize("mode,expected,tol", [("turbo3", 0.034, 0.003), ("turbo4", 0.009, 0.001)])
@pytest.mark.parametrize("dim", [64, 128, 256])
def test_distortion_close_to_paper(rng, mode, expected, tol, dim):
    """MSE of unit vectors: TurboQuant paper reports ~0.034 (3 bits), ~0.009 (4 bits)."""
    x = rng.standard_normal((4096, dim)).astype(np.float32)
    x /= np.linalg.norm(x, axis=-1, keepdims=True)
    p, s = mx.quantize(mx.array(x), mode=mode)
    xh = np.array(mx.dequantize(p, s, mode=mode), np.float64)
    mse = ((xh - x) ** 2).sum(-1).mean()
    print(f"{mode} D={dim} mse={mse:.4f}")
    assert abs(mse - expected) < tol


def test_non_contiguous_input(rng):
    x = rng.standard_normal((4, 128, 16)).astype(np.float32)
    xt = mx.swapaxes(mx.array(x), 1, 2)  # (4, 16, 128), strided
    p1, s1 = mx.quantize(xt, mode="turbo4")
    p2, s2 = mx.quantize(mx.array(np.ascontiguousarray(np.swapaxes(x, 1, 2))), mode="turbo4")
    np.testing.assert_array_equal(np.array(p1), np.array(p2))
    np.testing.assert_array_equal(np.array(s1), np.array(s2))


def test_golden_vectors_bit_exact():
    """Fixed inputs with their exact packed words: every backend must match."""
    with open(GOLDEN) as f:
        golden = json.load(f)
    for case in golden["cases"]:
        x = np.array(case["x"], dtype=np.float32).reshape(case["shape"])
        # The stored words are the spec's (reference) encoding ...
        _, packed_ref, _, margin = ref.encode(x, case["mode"])
        assert margin.min() > 1e-3
        np.testing.assert_array_equal(packed_ref.ravel(), np.array(case["packed"], np.uint32))
        # ... and MLX must produce them bit for bit.
        p, s = mx.quantize(mx.array(x), mode=case["mode"])
        np.testing.assert_array_equal(np.array(p).ravel(), np.array(case["packed"], np.uint32))
        np.testing.assert_allclose(np.array(s).ravel(), case["scales"], rtol=1e-6)


def test_quantize_errors():
    x = mx.zeros((2, 128))
    with pytest.raises(ValueError, match=r"\[quantize\].*head dimensions"):
        mx.quantize(mx.zeros((2, 100)), mode="turbo3")
    with pytest.raises(ValueError, match=r"\[quantize\].*group_size"):
        mx.quantize(x, group_size=64, mode="turbo3")
    with pytest.raises(ValueError, match=r"\[quantize\].*bits"):
        mx.quantize(x, bits=4, mode="turbo3")
    with pytest.raises(ValueError, match=r"\[quantize\]"):
        mx.quantize(mx.zeros((2, 128), dtype=mx.int32), mode="turbo4")
    with pytest.raises(ValueError, match=r"Invalid quantization mode"):
        mx.quantize(x, mode="turbo5")


def test_dequantize_errors():
    p, s = mx.quantize(mx.zeros((2, 128)), mode="turbo4")
    with pytest.raises(ValueError, match=r"\[dequantize\].*packed width"):
        mx.dequantize(p[:, :5], s[:], mode="turbo4")
    with pytest.raises(ValueError, match=r"\[dequantize\].*scales"):
        mx.dequantize(p, mx.zeros((2, 2)), mode="turbo4")
    with pytest.raises(ValueError, match=r"\[dequantize\].*Biases"):
        mx.dequantize(p, s, s, mode="turbo4")
    with pytest.raises(ValueError, match=r"\[dequantize\].*uint32"):
        mx.dequantize(p.astype(mx.int32), s, mode="turbo4")


def test_matmul_family_rejects_turbo():
    w = mx.zeros((64, 128))
    p, s = mx.quantize(w, mode="turbo4")
    x = mx.zeros((1, 128))
    with pytest.raises(ValueError, match=r"\[quantized_matmul\].*KV-cache format"):
        mx.quantized_matmul(x, p, s, mode="turbo4")
    with pytest.raises(ValueError, match=r"\[(gather_qmm|quantized_matmul)\].*KV-cache format"):
        mx.gather_qmm(x, p, s, mode="turbo4")
