# Copyright © 2026 TurboQuant-MLX contributors.

import unittest

import mlx.core as mx
import mlx_tests
import numpy as np


def quantized_cache(shape, mode, dtype=mx.float32):
    return mx.quantize(mx.random.normal(shape).astype(dtype), mode=mode)


class TestTurboQuant(mlx_tests.MLXTestCase):
    def test_quantize_shapes_and_norm(self):
        for mode, width in (("turbo3", 12), ("turbo4", 16)):
            x = mx.random.normal((3, 5, 128)) * 4
            w, scales = mx.quantize(x, mode=mode)
            self.assertEqual(w.shape, (3, 5, width))
            self.assertEqual(w.dtype, mx.uint32)
            self.assertEqual(scales.shape, (3, 5, 1))
            x_hat = mx.dequantize(w, scales, mode=mode)
            self.assertEqual(x_hat.shape, x.shape)
            # The norm of every vector is kept.
            self.assertTrue(
                mx.allclose(
                    mx.linalg.norm(x_hat, axis=-1),
                    mx.linalg.norm(x, axis=-1),
                    rtol=1e-5,
                )
            )
            mse = ((x_hat - x) ** 2).sum(-1) / (x**2).sum(-1)
            self.assertLess(mse.mean().item(), 0.04 if mode == "turbo3" else 0.011)

    def test_zero_vector(self):
        w, scales = mx.quantize(mx.zeros((2, 64)), mode="turbo3")
        self.assertTrue(
            mx.array_equal(mx.dequantize(w, scales, mode="turbo3"), mx.zeros((2, 64)))
        )

    def test_sdpa_matches_dequantized_sdpa(self):
        B, Hq, Hkv, D = 2, 8, 2, 128
        for qL, kL, mask in ((1, 300, None), (7, 64, "causal"), (33, 33, "causal")):
            for mode in ("turbo3", "turbo4", ("turbo4", "turbo3")):
                kmode, vmode = (mode, mode) if isinstance(mode, str) else mode
                q = mx.random.normal((B, Hq, qL, D))
                k = quantized_cache((B, Hkv, kL, D), kmode)
                v = quantized_cache((B, Hkv, kL, D), vmode)
                out = mx.fast.quantized_scaled_dot_product_attention(
                    q, *k, *v, scale=D**-0.5, mask=mask, mode=mode
                )
                expected = mx.fast.scaled_dot_product_attention(
                    q,
                    mx.dequantize(*k, mode=kmode),
                    mx.dequantize(*v, mode=vmode),
                    scale=D**-0.5,
                    mask=mask,
                )
                self.assertTrue(mx.allclose(out, expected, atol=1e-4, rtol=1e-4))
                # The standard entry point with quantized (packed, scales) tuples.
                out2 = mx.fast.scaled_dot_product_attention(
                    q, k, v, scale=D**-0.5, mask=mask, mode=mode
                )
                self.assertTrue(mx.array_equal(out, out2))

    def test_sdpa_bool_mask_and_sinks(self):
        B, Hq, Hkv, qL, kL, D = 1, 4, 1, 3, 50, 64
        q = mx.random.normal((B, Hq, qL, D))
        k = quantized_cache((B, Hkv, kL, D), "turbo4")
        v = quantized_cache((B, Hkv, kL, D), "turbo4")
        mask = mx.random.uniform(shape=(B, 1, qL, kL)) > 0.5
        sinks = mx.random.normal((Hq,))
        out = mx.fast.quantized_scaled_dot_product_attention(
            q, *k, *v, scale=0.125, mask=mask, sinks=sinks, mode="turbo4"
        )
        expected = mx.fast.scaled_dot_product_attention(
            q,
            mx.dequantize(*k, mode="turbo4"),
            mx.dequantize(*v, mode="turbo4"),
            scale=0.125,
            mask=mask,
            sinks=sinks,
        )
        self.assertTrue(mx.allclose(out, expected, atol=1e-4, rtol=1e-4))

    def test_errors(self):
        q = mx.zeros((1, 4, 1, 128))
        k = quantized_cache((1, 2, 8, 128), "turbo3")
        with self.assertRaises(ValueError):
            mx.fast.quantized_scaled_dot_product_attention(
                q, *k, *k, scale=1.0, mode="turbo4"
            )
        with self.assertRaises(ValueError):
            mx.fast.quantized_scaled_dot_product_attention(
                q, *k, *k, scale=1.0, mode="affine"
            )
        with self.assertRaises(ValueError):
            mx.quantize(mx.zeros((4, 100)), mode="turbo3")
        with self.assertRaises(ValueError):
            mx.quantized_matmul(mx.zeros((1, 128)), *k[0:2], mode="turbo3")

    def test_quantized_cache_update(self):
        for mode in ("turbo3", "turbo4"):
            packed, scales = quantized_cache((2, 4, 32, 128), mode, mx.float16)
            # A transposed view, as a model's keys and values are.
            x = mx.random.normal((2, 3, 4, 128)).astype(mx.float16)
            x = x.transpose(0, 2, 1, 3)
            shift = mx.random.normal((2, 4, 1, 128))
            out = mx.fast.quantized_cache_update(
                packed, scales, x, 7, mode=mode, shift=shift
            )
            y = (x.astype(mx.float32) - shift).astype(mx.float16)
            q, s = mx.quantize(y, mode=mode)
            expected_packed = mx.array(packed)
            expected_scales = mx.array(scales)
            expected_packed[..., 7:10, :] = q
            expected_scales[..., 7:10, :] = s
            self.assertTrue(mx.array_equal(out[0], expected_packed))
            self.assertTrue(mx.array_equal(out[1], expected_scales))
        with self.assertRaises(ValueError):
            mx.fast.quantized_cache_update(packed, scales, x, 30, mode="turbo4")
        with self.assertRaises(ValueError):
            mx.fast.quantized_cache_update(packed, scales, x, 0, mode="turbo3")

    def test_quantized_cache_update_moving_shift(self):
        # The moving key shift of cache row n = offset + l, computed by the
        # op: the same cache as subtracting its rows (float64, then float32)
        # up to codes within rounding of a decision boundary.
        B, H, N, D, L, P, offset = 2, 4, 48, 128, 9, 8, 30
        packed, scales = quantized_cache((B, H, N, D), "turbo4", mx.bfloat16)
        x = mx.random.normal((B, H, L, D)).astype(mx.bfloat16)
        shift = mx.random.normal((B, H, 1, D))
        freqs = mx.random.randint(0, 1 << 24, (B, H, P)).astype(mx.uint32)
        waves = mx.random.normal((B, H, 2 * P, D))
        out = mx.fast.quantized_cache_update(
            packed,
            scales,
            x,
            offset,
            mode="turbo4",
            shift=shift,
            shift_freqs=freqs,
            shift_waves=waves,
        )
        n = np.arange(offset, offset + L, dtype=np.int64)
        turns = (np.array(freqs).astype(np.int64)[:, :, None, :] * n[:, None]) % (
            1 << 24
        )
        angle = 2 * np.pi * turns / (1 << 24)
        phases = np.concatenate([np.cos(angle), np.sin(angle)], axis=-1)
        rows = np.array(shift) + phases @ np.array(waves).astype(np.float64)
        expected = mx.fast.quantized_cache_update(
            packed,
            scales,
            x,
            offset,
            mode="turbo4",
            shift=mx.array(rows.astype(np.float32)),
        )
        new = slice(offset, offset + L)
        self.assertTrue(mx.array_equal(out[0][:, :, :offset], packed[:, :, :offset]))
        differ = (out[0][:, :, new] != expected[0][:, :, new]).astype(mx.float32)
        self.assertLess(differ.mean().item(), 0.02)
        x_hat = mx.dequantize(out[0][:, :, new], out[1][:, :, new], mode="turbo4")
        x_ref = mx.dequantize(
            expected[0][:, :, new], expected[1][:, :, new], mode="turbo4"
        )
        err = mx.linalg.norm((x_hat - x_ref).astype(mx.float32))
        self.assertLess(
            err.item(), 0.02 * mx.linalg.norm(x_ref.astype(mx.float32)).item()
        )
        with self.assertRaises(ValueError):
            mx.fast.quantized_cache_update(
                packed, scales, x, 0, mode="turbo4", shift_freqs=freqs
            )
        with self.assertRaises(ValueError):
            mx.fast.quantized_cache_update(
                packed,
                scales,
                x,
                0,
                mode="turbo4",
                shift_freqs=freqs,
                shift_waves=waves[:, :, :P],
            )


if __name__ == "__main__":
    mlx_tests.MLXTestRunner()
