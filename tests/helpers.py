import mlx.core as mx
import numpy as np

DTYPES = {"float32": mx.float32, "float16": mx.float16, "bfloat16": mx.bfloat16}

# Relative tolerance of an output rounded to the dtype (unit roundoff times a
# small factor for the rotation, scale rounding and accumulation order).
OUT_RTOL = {"float32": 2e-5, "float16": 3e-3, "bfloat16": 2e-2}


def to_np(a):
    return np.array(a.astype(mx.float32)) if a.dtype == mx.bfloat16 else np.array(a)


def rel_err(out, ref):
    out = np.asarray(out, np.float64)
    ref = np.asarray(ref, np.float64)
    assert np.all(np.isfinite(out)), "non-finite output"
    return np.linalg.norm(out - ref) / max(np.linalg.norm(ref), 1e-30)


def split_modes(mode):
    return (mode, mode) if isinstance(mode, str) else mode
