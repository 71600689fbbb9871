import collections
import io
import os
import re

import mlx.core as mx
import numpy as np

DTYPES = {"float32": mx.float32, "float16": mx.float16, "bfloat16": mx.bfloat16}

# Relative tolerance of an output rounded to the dtype (unit roundoff times a
# small factor for the rotation, scale rounding and accumulation order).
OUT_RTOL = {"float32": 2e-5, "float16": 3e-3, "bfloat16": 2e-2}


def is_cuda():
    """Whether the default device is MLX's CUDA backend."""
    return mx.default_device() == mx.gpu and not mx.metal.is_available()


def mlx_float32_matmul_rtol():
    """Relative error of MLX's own float32 attention on the default device.

    MLX's CUDA backend runs float32 matmuls in TF32 unless MLX_ENABLE_TF32=0:
    operands keep 10 mantissa bits (unit roundoff 2^-11 ~ 4.9e-4), so an
    attention output built from two such products is good to ~1e-3, not to the
    float32 kernels' 1e-6. The CPU and Metal backends multiply in float32.
    """
    if is_cuda() and os.environ.get("MLX_ENABLE_TF32", "1") != "0":
        return 5e-3
    return OUT_RTOL["float32"]


def graph_primitives(*outputs):
    """{name: count} of the primitives of the (not yet evaluated) graph that
    computes outputs: what a call adds to the host's work per step."""
    f = io.StringIO()
    mx.export_to_dot(f, *outputs)
    return dict(collections.Counter(re.findall(r'label ="([^"]+)", shape=rectangle', f.getvalue())))


def to_np(a):
    return np.array(a.astype(mx.float32)) if a.dtype == mx.bfloat16 else np.array(a)


def rel_err(out, ref):
    out = np.asarray(out, np.float64)
    ref = np.asarray(ref, np.float64)
    assert np.all(np.isfinite(out)), "non-finite output"
    return np.linalg.norm(out - ref) / max(np.linalg.norm(ref), 1e-30)


def split_modes(mode):
    return (mode, mode) if isinstance(mode, str) else mode
