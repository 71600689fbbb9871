"""Which step breaks mx.compile on the CUDA build (device diagnosis).

On the H100 image (2026-11-24) `tests/test_attention.py::test_compile_and_export`
segfaults inside `mlx::core::Compiled::Compiled` (an ostringstream insertion),
also when it runs alone, while compiling a plain function works. This runs the
test's steps one by one in one process and, after each, a canary: compiling a
fresh elementwise function (which builds a Compiled primitive) and printing an
array. The last "ok" line names the last step that left the process sane.

    python tests/cuda/diag_compile_crash.py [STEP ...]   (default: all, in order)
"""

import random
import sys

import mlx.core as mx
import numpy as np

B, HQ, HKV, QL, KL, D = 1, 4, 2, 2, 50, 64
state = {}


def canary(tag):
    c = random.uniform(1.0, 2.0)
    y = mx.compile(lambda x: mx.exp(x) * c + 1.0)(mx.ones(3))
    s = str(y)
    print(f"ok after {tag}: {len(s)} chars", flush=True)


def quantize():
    rng = np.random.default_rng(0)
    k = mx.array(rng.standard_normal((B, HKV, KL, D)).astype(np.float32))
    v = mx.array(rng.standard_normal((B, HKV, KL, D)).astype(np.float32))
    state["kv"] = (*mx.quantize(k, mode="turbo4"), *mx.quantize(v, mode="turbo3"))
    mx.eval(*state["kv"])


def queries():
    rng = np.random.default_rng(1)
    state["q"] = mx.array(rng.standard_normal((B, HQ, QL, D)).astype(np.float32))
    mx.eval(state["q"])


def hadamard():
    mx.eval(mx.hadamard_transform(state["q"], scale=D**-0.5))


def fn(q, k, ks, v, vs, mask="causal"):
    return mx.fast.quantized_scaled_dot_product_attention(
        q, k, ks, v, vs, scale=0.125, mask=mask, mode=("turbo4", "turbo3")
    )


def fused_nomask():
    mx.eval(fn(state["q"], *state["kv"], mask=None))


def fused_causal():
    state["out"] = fn(state["q"], *state["kv"])
    mx.eval(state["out"])


def to_numpy():
    state["np"] = np.array(state["out"])


def compiled():
    out = mx.compile(fn)(state["q"], *state["kv"])
    err = float(np.max(np.abs(np.array(out) - state["np"])))
    print(f"  compiled vs eager max abs diff {err:.3g}", flush=True)


def export_import():
    path = "/tmp/diag_qsdpa.mlxfn"
    mx.export_function(path, fn, state["q"], *state["kv"])
    out = mx.import_function(path)(state["q"], *state["kv"])[0]
    err = float(np.max(np.abs(np.array(out) - state["np"])))
    print(f"  imported vs eager max abs diff {err:.3g}", flush=True)


STEPS = [
    quantize,
    queries,
    hadamard,
    fused_nomask,
    fused_causal,
    to_numpy,
    compiled,
    export_import,
]

if __name__ == "__main__":
    names = sys.argv[1:] or [f.__name__ for f in STEPS]
    byname = {f.__name__: f for f in STEPS}
    canary("start")
    for n in names:
        print(f"step {n}", flush=True)
        byname[n]()
        canary(n)
