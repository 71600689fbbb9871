"""A first call into an installed patched MLX: a turbo3 round trip and, from
patch 0002 on, one attention call over the quantized cache, on the default
device. Run by build.sh after installing and by
tests/cuda/run_mlx_device.sh install on the device."""

import mlx.core as mx

q = mx.random.normal((1, 4, 1, 128))
kv = mx.random.normal((1, 2, 64, 128))
k = mx.quantize(kv, mode="turbo3")
err = (mx.linalg.norm(mx.dequantize(*k, mode="turbo3") - kv) / mx.linalg.norm(kv)).item()
# The turbo3 codebook's MSE on a unit Gaussian is about 0.035 (relative error
# about 0.19); 0.25 leaves room for a 64-row sample.
assert err < 0.25, f"turbo3 round trip error {err}"
msg = f"turbo3 round trip error {err:.3f}"
if hasattr(mx.fast, "quantized_scaled_dot_product_attention"):  # patch 0002 on
    out = mx.fast.quantized_scaled_dot_product_attention(q, *k, *k, scale=128**-0.5, mode="turbo3")
    mx.eval(out)
    msg += f", turbo3 attention output {out.shape}"
print(f"    smoke test ok: mlx {mx.__version__} on {mx.default_device()}, {msg}")
