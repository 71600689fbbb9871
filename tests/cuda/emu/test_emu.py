"""The CUDA kernels executed on the CPU (tests/cuda/emu/build.sh's
libtq_emu.so: the standalone harness's C API over the kernels of
mlx_overlay/mlx/backend/cuda/device, run by the cushim emulator), checked
against the float64 / float32-spec references of tests/cuda/tq_ref.py as the
GPU harness (tests/cuda/test_tq_cuda.py) checks them, with NumPy arrays in
host memory instead of torch CUDA tensors.

What the emulator does not model: timing, occupancy, memory coalescing, and
the tensor cores' accumulation order (it sums an MMA's 16 exact products in
float64 and rounds once). What it does: every thread, warp-wide operation
(shuffles, __syncwarp, mma.sync and movmatrix fragments), __syncthreads,
shared memory (NaN-poisoned per block), the launch plan and grid of
device/turboquant_plan.cuh, and the fp16 / bf16 conversions of CUDA's own
headers. So index, layout, synchronization and numerics bugs show up here;
speed does not.

    tests/cuda/emu/build.sh && python3 tests/cuda/emu/test_emu.py [FILTER]

Exits 1 on any failure. Fresh random inputs each run (the seed is printed).
"""

import ctypes
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
import tq_ref as ref  # noqa: E402

LIB = ctypes.CDLL(os.environ.get("TQ_EMU_LIB") or os.path.join(HERE, "build", "libtq_emu.so"))
# TQ_EMU_GPU=1: LIB is the GPU build (tests/cuda/build/libtq.so), the same
# checks on the device; arrays go through the CUDA runtime.
CUDART = None
if os.environ.get("TQ_EMU_GPU") == "1":
    CUDART = ctypes.CDLL(os.environ.get("TQ_CUDART", "libcudart.so"))
_vp, _i, _ll = ctypes.c_void_p, ctypes.c_int, ctypes.c_longlong
LIB.tq_encode.argtypes = [_vp, _vp, _vp, _ll, _i, _i, _i, _vp]
LIB.tq_decode.argtypes = [_vp] * 6 + [_i, _vp] + [_ll] * 3 + [_vp] * 2 + [_i] * 3 + [_vp]
LIB.tq_plan.argtypes = [_i] * 9 + [ctypes.POINTER(_i)]
LIB.tq_plan.restype = _ll
LIB.tq_attention.argtypes = [_vp] * 10 + [_i] * 9 + [ctypes.c_float] + [_i] * 4 + [_vp]
LIB.tq_attention_ex.argtypes = (
    [_vp] * 8 + [_i, _vp, _i, _vp, _vp, _i, _i, _vp, _vp] + [_i] * 9 + [ctypes.c_float]
    + [_i] * 4 + [_vp, _i, _vp]
)  # fmt: skip
LIB.tq_prep.argtypes = (
    [_vp] * 4 + [_ll] * 2 + [_i] * 3 + [ctypes.c_float] + [_vp] * 3 + [_ll, _vp, _vp, _ll, _i, _vp]
    + [_i] * 2 + [_vp]
)  # fmt: skip
LIB.tq_attention_fused.argtypes = (
    [_vp] * 9 + [_i, _vp, _vp, _i, _vp, _vp, _i, _i, _vp, _vp] + [_i] * 10 + [ctypes.c_float]
    + [_i] * 4 + [_vp, _vp]
)  # fmt: skip
LOG2E = 1.4426950408889634

SEED = int(os.environ.get("TQ_EMU_SEED", time.time_ns() % 2**31))
rng = np.random.default_rng(SEED)
FILTER = sys.argv[1] if len(sys.argv) > 1 else ""
FAIL = []
N_OK = 0

# Storage of the three dtypes: float16 and float32 as NumPy has them,
# bfloat16 as its bits (uint16).
DT = {"float16": 0, "bfloat16": 1, "float32": 2}


def store(x32, dtype):
    x32 = np.ascontiguousarray(x32, np.float32)
    if dtype == "bfloat16":
        return ref.to_bf16_bits(x32)
    return x32.astype(dtype)


def value(a, dtype):
    """float32 values of stored data."""
    return ref.bf16_bits_to_f32(a) if dtype == "bfloat16" else a.astype(np.float32)


class host:
    """An array the harness's host code reads (strides), not a kernel."""

    def __init__(self, a):
        self.a = a


def call(fn, *args):
    """fn(*args) with each NumPy array passed as a pointer to its data: host
    memory for the emulator; with TQ_EMU_GPU=1 (the nvcc-built libtq.so on a
    GPU, tests/cuda/build.sh), device copies, copied back after the call,
    except the host() ones."""
    conv, dev = [], []
    for a in args:
        if isinstance(a, host):
            conv.append(None if a.a is None else ctypes.c_void_p(a.a.ctypes.data))
        elif isinstance(a, np.ndarray):
            if CUDART is None:
                conv.append(ctypes.c_void_p(a.ctypes.data))
            else:
                d = ctypes.c_void_p()
                assert CUDART.cudaMalloc(ctypes.byref(d), ctypes.c_size_t(max(a.nbytes, 1))) == 0
                CUDART.cudaMemcpy(d, ctypes.c_void_p(a.ctypes.data), ctypes.c_size_t(a.nbytes), 1)
                conv.append(d)
                dev.append((d, a))
        else:
            conv.append(a)
    rc = fn(*conv)
    if CUDART is not None:
        rc = rc or CUDART.cudaDeviceSynchronize()
        for d, a in dev:
            CUDART.cudaMemcpy(ctypes.c_void_p(a.ctypes.data), d, ctypes.c_size_t(a.nbytes), 2)
            CUDART.cudaFree(d)
    return rc


def report(name, ok, detail):
    global N_OK
    if ok:
        N_OK += 1
    else:
        FAIL.append(name)
    print(f"{'ok  ' if ok else 'FAIL'} {name}: {detail}", flush=True)


def wanted(name):
    return FILTER in name


def rand_words(shape):
    return rng.integers(0, 2**32, shape, dtype=np.uint32)


# ------------------------------------------------------------------ encode/decode


def check_encode():
    """turbo_encode against the float32 spec encoder, bit for bit (codes and
    scales), with a zero vector and non-finite inputs."""
    for d in ref.SUPPORTED_D:
        for bits in (3, 4):
            for dtype in ("float16", "bfloat16", "float32"):
                name = f"encode D={d} turbo{bits} {dtype}"
                if not wanted(name):
                    continue
                n = 300
                mag = np.exp(rng.standard_normal((n, 1)) * 2)
                xf = (rng.standard_normal((n, d)) * mag).astype(np.float32)
                xf[0] = 0
                xf[1, 3] = np.nan
                xf[2, 5] = np.inf
                x = store(xf, dtype)
                xv = value(x, dtype)
                packed = np.zeros((n, ref.words(bits, d)), np.uint32)
                scales = np.zeros(n, x.dtype)
                rc = call(LIB.tq_encode, x, packed, scales, n, d, bits, DT[dtype], None)
                _, pr, sr = ref.encode_f32(xv[3:], bits)
                srb = (
                    ref.to_bf16_bits(sr)
                    if dtype == "bfloat16"
                    else sr.astype(dtype).view(np.uint16 if dtype == "float16" else np.uint32)
                )
                sg = scales.view(np.uint16 if dtype != "float32" else np.uint32)
                bad_p = int((packed[3:] != pr).any(axis=1).sum())
                bad_s = int((sg[3:] != srb).sum())
                sv = value(scales, dtype)
                specials = sv[0] == 0 and np.isnan(sv[1]) and np.isnan(sv[2])
                report(
                    name,
                    rc == 0 and bad_p == 0 and bad_s == 0 and specials,
                    f"vectors with differing codes {bad_p}/{n - 3}, differing scales {bad_s}, "
                    f"zero->0 and non-finite->nan {specials}",
                )


def check_decode():
    """turbo_decode (mx.dequantize's rows) against float64."""
    for d in ref.SUPPORTED_D:
        for bits in (3, 4):
            for dtype in ("float16", "bfloat16", "float32"):
                name = f"decode D={d} turbo{bits} {dtype}"
                if not wanted(name):
                    continue
                n = 200
                w = rand_words((n, ref.words(bits, d)))
                s = store(rng.random(n) * 3 + 0.1, dtype)
                out = store(np.full((n, d), np.nan, np.float32), dtype)
                ws = np.array([0, 0, w.shape[1]], np.int64)
                ss = np.array([0, 0, 1], np.int64)
                rc = call(
                        LIB.tq_decode,
                    w, s, None, None, None, None, 0, out, 1, 1, n,
                    host(ws), host(ss), d, bits, DT[dtype], None,
                )  # fmt: skip
                r = ref.decode_f64(w, value(s, dtype).astype(np.float64), bits, d)
                o = value(out, dtype).astype(np.float64)
                err = np.linalg.norm(o - r) / np.linalg.norm(r)
                # one rounding to the output type: 2^-24 / 2^-11 / 2^-8 relative
                tol = {"float32": 1e-6, "float16": 1e-3, "bfloat16": 8e-3}[dtype]
                report(name, rc == 0 and np.isfinite(o).all() and err < tol, f"rel err {err:.2e}")


def check_decode_kv():
    """fast::QuantizedKVDequantize's rows (the prefill route): a slice of a
    larger cache (strides), the exact first row, the constant and moving key
    shifts, against float64."""
    for d in ref.SUPPORTED_D:
        for bits in (3, 4):
            for dtype in ("float32", "bfloat16"):
                B, H, N, n, P = 2, 3, 60, 37, 5
                W = ref.words(bits, d)
                w = rand_words((B, H, N, W))
                s = store(rng.random((B, H, N)) * 3 + 0.1, dtype)
                first = store(rng.standard_normal((B, H, 1, d)), dtype)
                shift = (rng.standard_normal((B, H, 1, d)) * 2).astype(np.float32)
                freqs = rng.integers(0, 2**24, (B, H, P), dtype=np.uint32)
                waves = (rng.standard_normal((B, H, 2 * P, d)) * 3).astype(np.float32)
                for with_first, with_shift, with_waves in ((1, 1, 1), (0, 0, 0), (1, 0, 1)):
                    name = (
                        f"decode_kv D={d} turbo{bits} {dtype} "
                        f"first={with_first} shift={with_shift} waves={with_waves}"
                    )
                    if not wanted(name):
                        continue
                    out = store(np.full((B, H, with_first + n, d), np.nan, np.float32), dtype)
                    ws = np.array([H * N * W, N * W, W], np.int64)
                    ss = np.array([H * N, N, 1], np.int64)
                    rc = call(
                    LIB.tq_decode,
                        w, s, first if with_first else None,
                        shift if with_shift else None,
                        freqs if with_waves else None,
                        waves if with_waves else None,
                        P if with_waves else 0, out, B, H, n, host(ws), host(ss), d, bits,
                        DT[dtype], None,
                    )  # fmt: skip
                    sv = value(s, dtype)[:, :, :n].reshape(-1).astype(np.float64)
                    r = ref.decode_f64(w[:, :, :n].reshape(-1, W), sv, bits, d).reshape(B, H, n, d)
                    if with_shift:
                        r = r + shift
                    if with_waves:
                        turns = (freqs[:, :, None, :].astype(np.int64) * np.arange(n)[:, None]) % (
                            1 << 24
                        )
                        ang = 2 * np.pi * turns / (1 << 24)
                        ph = np.concatenate([np.cos(ang), np.sin(ang)], axis=-1)
                        r = r + ph @ waves.astype(np.float64)
                    if with_first:
                        r = np.concatenate([value(first, dtype).astype(np.float64), r], axis=2)
                    o = value(out, dtype).astype(np.float64)
                    err = np.linalg.norm(o - r) / np.linalg.norm(r)
                    tol = 1e-5 if dtype == "float32" else 8e-3
                    report(
                        name, rc == 0 and np.isfinite(o).all() and err < tol, f"rel err {err:.2e}"
                    )


# ------------------------------------------------------------------ attention


def check_attn(
    name,
    B,
    Hq,
    Hkv,
    qL,
    kL,
    d,
    kb,
    vb,
    sdt="float16",
    causal=False,
    mask=None,
    sinks=False,
    force_splits=0,
    tc=False,
    q_mul=1.0,
    ks_mul=1.0,
    vs_mul=1.0,
):
    """One decode call planned and launched as MLX does it (tq_plan /
    tq_attention: plan_decode, launch_decode, the split-K combine) against
    ref.attention_f64 on the same codes and stored scales."""
    label = (
        f"attn {name} B={B} Hq={Hq} Hkv={Hkv} qL={qL} kL={kL} D={d} k{kb}v{vb} {sdt}"
        f"{' causal' if causal else ''}{' mask=' + mask if mask else ''}"
        f"{' sinks' if sinks else ''}"
    )
    if not wanted(label):
        return
    q = (rng.standard_normal((B, Hq, qL, d)) * q_mul).astype(np.float32)
    kw = rand_words((B, Hkv, kL, ref.words(kb, d)))
    vw = rand_words((B, Hkv, kL, ref.words(vb, d)))
    ks = store((rng.random((B, Hkv, kL)) * 0.5 + 0.05) * ks_mul, sdt)
    vs = store((rng.random((B, Hkv, kL)) * 0.5 + 0.05) * vs_mul, sdt)
    snk = (rng.standard_normal(Hq) * 2).astype(np.float32) if sinks else None
    scale = 1.0 / np.sqrt(d) * 4.0  # sharper than usual: exercises the softmax
    m, mstr, mask_kind = None, None, 0
    if mask == "bool":
        m = rng.random((1, Hq, qL, kL)) > 0.3
        m[..., 0, :] = False  # a fully masked row
        mask_kind = 1
    elif mask == "float":
        m = (rng.standard_normal((B, 1, qL, kL)) * 2).astype(np.float32)
        mask_kind = 2
    if m is not None:
        full = np.broadcast_to(m, (B, Hq, qL, kL))
        mstr = np.array([s // m.itemsize for s in full.strides], np.int64)
    plan = (_i * 3)()
    nw = LIB.tq_plan(B, Hq, Hkv, qL, kL, d, DT[sdt], int(tc), force_splits, plan)
    splits, is_tc = plan[0], bool(plan[1])
    work = np.zeros(max(nw, 1), np.float32)
    out = np.full((B, Hq, qL, d), np.nan, np.float32)
    rc = call(
        LIB.tq_attention,
        q, kw, ks, vw, vs, m, host(mstr), snk, out,
        work, B, Hq, Hkv, qL, kL, d, kb, vb, DT[sdt], ctypes.c_float(scale), int(causal),
        mask_kind, int(tc), force_splits, None,
    )  # fmt: skip
    r = ref.attention_f64(
        q,
        kw,
        value(ks, sdt).astype(np.float64),
        vw,
        value(vs, sdt).astype(np.float64),
        kb,
        vb,
        scale,
        causal=causal,
        mask=m,
        sinks=snk,
    )
    o = out.astype(np.float64)
    err = np.linalg.norm(o - r) / np.linalg.norm(r)
    tol = 1e-5
    if is_tc:
        # fp16 / bf16 operands (q, centroids, p * value scale) rounded to
        # nearest: unit roundoff 2^-11 / 2^-8 per operand; through this
        # test's sharp softmax ~5e-4 (fp16) and ~4e-3 (bf16) (as the GPU
        # harness, tests/cuda/test_tq_cuda.py)
        tol = 3e-3 if sdt == "float16" else 2e-2
    ok = rc == 0 and bool(np.isfinite(o).all()) and err < tol
    report(
        f"{label} [vec{'-tc' if is_tc else ''}/{splits}split]",
        ok,
        f"rel err {err:.2e} (tol {tol:.0e})" + ("" if rc == 0 else f", CUDA error {rc}"),
    )


def check_attention():
    combos = ((3, 3), (4, 4), (3, 4), (4, 3))
    for d in ref.SUPPORTED_D:
        for kb, vb in combos:
            check_attn("decode", 2, 8, 2, 1, 777, d, kb, vb)  # split-K
            check_attn("decode1p", 1, 4, 2, 1, 300, d, kb, vb, force_splits=1)
        check_attn("spec", 1, 4, 2, 4, 100, d, 3, 4, causal=True)
    for g in (1, 2, 4, 7):
        check_attn("gqa", 1, 2 * g, 2, 1, 500, 128, 4, 3)
    for sdt in ("bfloat16", "float32"):
        check_attn("dtype", 1, 8, 2, 1, 600, 128, 3, 3, sdt=sdt)
        check_attn("dtype", 1, 4, 2, 5, 70, 96, 4, 4, sdt=sdt)
    check_attn("spec", 1, 8, 2, 8, 400, 128, 3, 4, causal=True)
    for mk in ("bool", "float"):
        check_attn("mask", 2, 8, 2, 3, 300, 128, 4, 4, mask=mk)
    check_attn("mask", 1, 4, 2, 7, 90, 80, 3, 3, mask="float")
    check_attn("sinks", 2, 8, 2, 1, 500, 128, 3, 3, sinks=True)
    check_attn("sinks", 1, 4, 2, 4, 64, 256, 4, 3, sinks=True, causal=True)
    check_attn("causal qL>kL", 1, 2, 1, 6, 3, 128, 4, 4, causal=True)


def check_attention_tc():
    """The tensor-core decode kernel (turbo_sdpa_vector_tc)."""
    combos = ((3, 3), (4, 4), (3, 4), (4, 3))
    for d in (64, 128, 256):
        for kb, vb in combos:
            for sdt in ("float16", "bfloat16"):
                # 777 keys: not a multiple of the warp tile (16 to 64 keys)
                check_attn("tc", 2, 8, 2, 1, 777, d, kb, vb, sdt=sdt, tc=True)
            check_attn("tc1p", 1, 8, 2, 1, 300, d, kb, vb, tc=True, force_splits=1)
    for g in (1, 2, 4, 7):
        check_attn("tc-gqa", 1, 2 * g, 2, 1, 500, 128, 4, 3, tc=True)
    check_attn("tc-gqa16", 1, 32, 2, 1, 300, 128, 3, 4, tc=True)  # 2 row groups
    for qL in (2, 5, 8):
        check_attn("tc-spec", 1, 8, 2, qL, 400, 128, 3, 4, causal=True, tc=True)
    for mk in ("bool", "float"):
        check_attn("tc-mask", 2, 8, 2, 3, 300, 128, 4, 4, mask=mk, tc=True)
    check_attn("tc-mask", 1, 4, 2, 2, 333, 256, 3, 4, mask="bool", sdt="bfloat16", tc=True)
    check_attn("tc-sinks", 2, 8, 2, 1, 500, 128, 3, 3, sinks=True, tc=True)
    check_attn("tc-sinks", 1, 8, 1, 2, 300, 256, 4, 3, sinks=True, causal=True, tc=True)
    check_attn("tc causal qL>kL", 1, 2, 1, 6, 3, 128, 4, 4, causal=True, tc=True)
    for kL in (1, 5, 33, 100):
        check_attn("tc-short", 1, 4, 1, 1, kL, 128, 4, 3, tc=True, force_splits=1)
    check_attn("tc-split-odd", 1, 8, 2, 1, 1003, 128, 3, 4, tc=True, force_splits=3)
    check_attn("tc-split-odd", 1, 8, 2, 1, 1003, 64, 4, 4, tc=True, force_splits=7)
    check_attn("tc-range", 1, 8, 2, 1, 700, 128, 4, 4, tc=True, q_mul=1e5, ks_mul=1e-5)
    check_attn("tc-range", 1, 8, 2, 1, 700, 128, 3, 4, tc=True, vs_mul=1e4)
    check_attn("tc-range", 1, 8, 2, 1, 700, 64, 4, 4, tc=True, vs_mul=1e-3, sdt="bfloat16")


def check_prep():
    """turbo_attention_prep (the fused call's first launch): the query rows and
    the sink values rotated into float32 (R of tests/reference.py), each
    query row's sink logit sinks[h] - scale q . (key_shift - first_key) and
    its moving-shift coefficients scale log2(e) q . waves[i], q as given;
    against float64 on the stored inputs. float32 sums of D products:
    relative errors of a few 2^-24 sqrt(D) of the terms' magnitudes."""
    for d in ref.SUPPORTED_D:
        for dtype in ("float16", "bfloat16", "float32"):
            name = f"prep D={d} {dtype}"
            if not wanted(name):
                continue
            B, Hq, Hkv, qL, P = 2, 6, 2, 3, 5
            shared = d % 3 == 0  # sink values / waves / key bias shared by the batch
            Bs = 1 if shared else B
            q = store(rng.standard_normal((B, Hq, qL, d)), dtype)
            sv = store(rng.standard_normal((Bs, Hkv, d)), dtype)
            sinks = rng.standard_normal(Hq).astype(np.float32)
            mu = store(rng.standard_normal((Bs, Hkv, d)) * 0.5, dtype)
            k0 = store(rng.standard_normal((Bs, Hkv, d)), dtype)
            waves = (rng.standard_normal((Bs, Hkv, 2 * P, d)) * 0.3).astype(np.float32)
            q_rot = np.full((B, Hq, qL, d), np.nan, np.float32)
            sv_rot = np.full((Bs, Hkv, d), np.nan, np.float32)
            row_sinks = np.full((B, Hq, qL), np.nan, np.float32)
            coef = np.full((B, Hq, qL, 2 * P), np.nan, np.float32)
            scale = 1.0 / np.sqrt(d)
            n_q, n_sv = B * Hq * qL, Bs * Hkv
            rc = call(
                LIB.tq_prep,
                q, q_rot, sv, sv_rot, n_q, n_sv, Hq, Hkv, qL,
                ctypes.c_float(scale), sinks, mu, k0, 0 if shared else Hkv * d,
                row_sinks, waves, 0 if shared else Hkv * 2 * P * d, P, coef, d,
                DT[dtype], None,
            )  # fmt: skip
            R = ref.rotation_f64(d)
            q64 = value(q, dtype).astype(np.float64)
            kvh = np.arange(Hq) // (Hq // Hkv)
            bias = value(mu, dtype).astype(np.float64) - value(k0, dtype).astype(np.float64)
            bias = np.broadcast_to(bias, (B, Hkv, d))[:, kvh]  # (B, Hq, d)
            w64 = np.broadcast_to(waves.astype(np.float64), (B, Hkv, 2 * P, d))[:, kvh]
            refs = (
                (q_rot, q64 @ R.T),
                (sv_rot, value(sv, dtype).astype(np.float64) @ R.T),
                (row_sinks, sinks[:, None] - scale * np.einsum("bhqd,bhd->bhq", q64, bias)),
                (coef, scale * LOG2E * np.einsum("bhqd,bhid->bhqi", q64, w64)),
            )
            errs = [np.abs(o - r).max() / max(np.abs(r).max(), 1e-30) for o, r in refs]
            ok = rc == 0 and all(np.isfinite(o).all() for o, _ in refs) and max(errs) < 2e-6
            report(
                name + (" shared" if shared else ""),
                ok,
                "max rel err q_rot {:.1e}, sink values {:.1e}, row sinks {:.1e}, "
                "coefficients {:.1e}".format(*errs),
            )


def attention64(q, k, v, scale, bias=None, sinks=None, sink_values=None, causal=False):
    """float64 decode attention on decoded rows: q (B, Hq, qL, D), k / v (B,
    Hkv, kL, D); bias (B, Hq, qL, kL) added to the scores (natural log);
    sinks (B, Hq, qL) logits of one more key whose value is sink_values
    (B, Hkv, D) (0 if None)."""
    B, Hq, qL, D = q.shape
    Hkv, kL = k.shape[1], k.shape[2]
    kvh = np.arange(Hq) // (Hq // Hkv)
    s = scale * np.einsum("bhqd,bhkd->bhqk", q, k[:, kvh])
    if bias is not None:
        s = s + bias
    if causal:
        s = np.where(np.arange(kL) > np.arange(qL)[:, None] + kL - qL, -np.inf, s)
    vv = v[:, kvh]
    if sinks is not None:
        s = np.concatenate([sinks[..., None], s], axis=-1)
        sv = np.zeros((B, Hq, 1, D)) if sink_values is None else sink_values[:, kvh, None, :]
        vv = np.concatenate([np.broadcast_to(sv, (B, Hq, 1, D)), vv], axis=2)
    m = s.max(-1, keepdims=True)
    p = np.exp(s - m)
    p = p / p.sum(-1, keepdims=True)
    return np.einsum("bhqk,bhkd->bhqd", p, vv)


def wave_phases(freqs, B, Hq, Hkv, kL):
    """The moving key shift's phases in float64 (docs/format.md, section 7):
    for each query head's planes (freqs (B or 1, Hkv, P), turns of 2^-24 per
    key), the cos then the sin of each key's angle, (B, Hq, kL, 2P)."""
    P = freqs.shape[-1]
    kvh = np.arange(Hq) // (Hq // Hkv)
    f = np.broadcast_to(freqs, (B, Hkv, P))[:, kvh].astype(np.int64)  # (B, Hq, P)
    turns = (f[:, :, None, :] * np.arange(kL)[:, None]) % (1 << 32) % (1 << 24)
    ang = 2 * np.pi * turns / (1 << 24)  # (B, Hq, kL, P)
    return np.concatenate([np.cos(ang), np.sin(ang)], axis=-1)


def check_attn_fused(name, B, Hq, Hkv, qL, kL, d, kb, vb, P, sdt="float16", tc=False,
                     force_splits=0, causal=False, shared=False, final=None):  # fmt: skip
    """The decode kernels with the fused call's inputs (tq_attention_ex): sink
    logits per query row, the first token's value in the sink slot, and the
    moving key shift's bias computed per key from wave_coef and wave_freqs
    (docs/format.md, section 7), against attention64."""
    label = (
        f"attn fused {name} B={B} Hq={Hq} Hkv={Hkv} qL={qL} kL={kL} D={d} k{kb}v{vb} {sdt} "
        f"P={P}{' causal' if causal else ''}{' shared' if shared else ''}"
        f"{' -> ' + final if final else ''}"
    )
    if not wanted(label):
        return
    Bs = 1 if shared else B
    q = rng.standard_normal((B, Hq, qL, d)).astype(np.float32)
    kw = rand_words((B, Hkv, kL, ref.words(kb, d)))
    vw = rand_words((B, Hkv, kL, ref.words(vb, d)))
    ks = store(rng.random((B, Hkv, kL)) * 0.5 + 0.05, sdt)
    vs = store(rng.random((B, Hkv, kL)) * 0.5 + 0.05, sdt)
    row_sinks = (rng.standard_normal((B, Hq, qL)) * 2 + 3).astype(np.float32)
    sv = rng.standard_normal((Bs, Hkv, d)).astype(np.float32)
    coef = (rng.standard_normal((B, Hq, qL, 2 * P)) * 1.5).astype(np.float32)
    freqs = rng.integers(0, 2**32, (Bs, Hkv, P), dtype=np.uint32)
    scale = 1.0 / np.sqrt(d) * 4.0
    plan = (_i * 3)()
    nw = LIB.tq_plan(B, Hq, Hkv, qL, kL, d, DT[sdt], int(tc), force_splits, plan)
    splits, is_tc = plan[0], bool(plan[1])
    work = np.zeros(max(nw, 1), np.float32)
    out = np.full((B, Hq, qL, d), np.nan, np.float32)
    fin = store(np.full((B, Hq, qL, d), np.nan, np.float32), final) if final else None
    rc = call(
        LIB.tq_attention_ex,
        q, kw, ks, vw, vs, None, None, row_sinks, 1, sv,
        int(shared), coef if P else None, freqs if P else None, P, int(shared),
        out, work, B, Hq, Hkv, qL, kL, d, kb, vb, DT[sdt], ctypes.c_float(scale),
        int(causal), 0, int(tc), force_splits, fin, DT[final] if final else 0, None,
    )  # fmt: skip
    k64 = ref.decode_rotated_f64(kw, value(ks, sdt).astype(np.float64), kb, d)
    v64 = ref.decode_rotated_f64(vw, value(vs, sdt).astype(np.float64), vb, d)
    bias = None
    if P:
        ph = wave_phases(freqs, B, Hq, Hkv, kL)
        bias = np.einsum("bhqi,bhki->bhqk", coef.astype(np.float64), ph) / LOG2E
    svb = np.broadcast_to(sv, (B, Hkv, d)).astype(np.float64)
    r = attention64(q.astype(np.float64), k64, v64, scale, bias, row_sinks, svb, causal)
    o = out.astype(np.float64)
    # tensor cores: the q / centroid / p operands as check_attn, and the
    # bias's phases and coefficients in float16 (2^-11 relative each)
    tol = (3e-3 if sdt == "float16" else 2e-2) if is_tc else 1e-5
    if final:
        # rotated back (R^T per row) and rounded once to the final dtype
        r = r @ ref.rotation_f64(d)
        o = value(fin, final).astype(np.float64)
        tol += {"float32": 0.0, "float16": 2.0**-11, "bfloat16": 2.0**-8}[final]
    err = np.linalg.norm(o - r) / np.linalg.norm(r)
    report(
        f"{label} [vec{'-tc' if is_tc else ''}/{splits}split]",
        rc == 0 and bool(np.isfinite(o).all()) and err < tol,
        f"rel err {err:.2e} (tol {tol:.0e})" + ("" if rc == 0 else f", CUDA error {rc}"),
    )


def check_attention_fused():
    for d in ref.SUPPORTED_D:
        check_attn_fused("simt", 2, 8, 2, 1, 500, d, 3, 4, P=5, force_splits=3)
    for d in (64, 128, 256):
        check_attn_fused("tc", 2, 8, 2, 1, 500, d, 4, 3, P=5, tc=True, force_splits=3)
    for P in (0, 1, 8, 13, 32):
        check_attn_fused("tc-planes", 1, 8, 2, 1, 300, 128, 4, 4, P=P, tc=True, shared=P % 2 == 1)
        check_attn_fused("simt-planes", 1, 8, 2, 1, 300, 128, 3, 3, P=P, shared=P % 2 == 0)
    check_attn_fused("tc-spec", 1, 8, 2, 4, 300, 128, 3, 4, P=8, tc=True, causal=True)
    check_attn_fused("simt-spec", 1, 8, 2, 4, 300, 96, 3, 4, P=8, causal=True, force_splits=2)
    check_attn_fused("tc-splits", 2, 8, 2, 1, 700, 128, 3, 3, P=6, tc=True, force_splits=4)
    check_attn_fused("tc-bf16", 2, 8, 2, 1, 700, 128, 3, 3, P=6, sdt="bfloat16", tc=True)
    check_attn_fused("tc-gqa7", 1, 28, 4, 1, 1500, 128, 4, 4, P=8, tc=True, shared=True)
    check_attn_fused("simt-splits", 2, 8, 2, 1, 700, 128, 4, 3, P=6, force_splits=5)
    # The output rotated back into the queries' dtype, by the combine or
    # (one split) by turbo_rotate, as the fused call does.
    for final in ("float16", "bfloat16", "float32"):
        for sp in (1, 3):
            check_attn_fused("rot", 1, 8, 2, 2, 400, 128, 4, 3, P=4, tc=final != "float32",
                             force_splits=sp, final=final)  # fmt: skip
            check_attn_fused("rot", 1, 4, 2, 1, 200, 80, 3, 3, P=0, force_splits=sp, final=final)
    # More splits than the combine's groups read in one chunk (kCombineChunk
    # of them per group: 128, 64, 32 at D = 64, 128, 256), each split one
    # full iteration of the kernel's keys, the row rotated back in registers.
    for d, sp in ((64, 150), (128, 100), (256, 50)):
        check_attn_fused("rot-many", 1, 8, 2, 1, sp * (16 if d == 256 else 32), d, 4, 3, P=2,
                         tc=True, force_splits=sp, final="bfloat16")  # fmt: skip


def check_attn_prepared(name, B, Hq, Hkv, qL, kL, d, kb, vb, P, qdt="float16", sdt="float16",
                        force_splits=0, causal=False, shared=False, sinks=True, bias=True,
                        sink_values=False, expect_in_kernel=None):  # fmt: skip
    """The whole fused call as MLX makes it (tq_attention_fused): queries as
    given in qdt, the key bias of the exact transforms (key_shift, first_key),
    per-head sinks, the moving key shift's waves and frequencies, the output
    rotated back into qdt. The tensor-core kernel prepares the queries itself
    where decode_preps_in_kernel allows (queries of the scales' dtype, no
    sink values), else turbo_attention_prep runs first; both against float64
    on the stored inputs: scores scale (R q) . k + scale q . (waves' phases)
    sum, sink logit sinks[h] - scale q . (key_shift - first_key) with value
    R sv (0 without), output R^T o."""
    label = (
        f"attn prepared {name} B={B} Hq={Hq} Hkv={Hkv} qL={qL} kL={kL} D={d} k{kb}v{vb} "
        f"q {qdt} scales {sdt} P={P}{' causal' if causal else ''}{' shared' if shared else ''}"
        f"{' sinks' if sinks else ''}{' bias' if bias else ''}{' sv' if sink_values else ''}"
    )
    if not wanted(label):
        return
    Bs = 1 if shared else B
    q = store(rng.standard_normal((B, Hq, qL, d)), qdt)
    kw = rand_words((B, Hkv, kL, ref.words(kb, d)))
    vw = rand_words((B, Hkv, kL, ref.words(vb, d)))
    ks = store(rng.random((B, Hkv, kL)) * 0.5 + 0.05, sdt)
    vs = store(rng.random((B, Hkv, kL)) * 0.5 + 0.05, sdt)
    hs = (rng.standard_normal(Hq) * 2 + 3).astype(np.float32) if sinks else None
    sv = store(rng.standard_normal((Bs, Hkv, d)), qdt) if sink_values else None
    mu = store(rng.standard_normal((Bs, Hkv, d)) * 0.5, qdt) if bias else None
    k0 = store(rng.standard_normal((Bs, Hkv, d)), qdt) if bias else None
    waves = (rng.standard_normal((Bs, Hkv, 2 * P, d)) * 0.3).astype(np.float32) if P else None
    freqs = rng.integers(0, 2**32, (Bs, Hkv, P), dtype=np.uint32) if P else None
    scale = 1.0 / np.sqrt(d) * 2.0
    plan = (_i * 3)()
    nw = LIB.tq_plan(B, Hq, Hkv, qL, kL, d, DT[sdt], int(qdt != "float32"), force_splits, plan)
    splits, is_tc = plan[0], bool(plan[1])
    rows = B * Hq * qL
    work = np.full(nw + rows * (2 * d + 1 + 2 * P) + B * Hkv * d, np.nan, np.float32)
    fin = store(np.full((B, Hq, qL, d), np.nan, np.float32), qdt)
    in_kernel = np.zeros(1, np.int32)
    rc = call(
        LIB.tq_attention_fused,
        q, kw, ks, vw, vs, None, None, hs, sv, int(shared), mu, k0, int(shared),
        waves, freqs, P, int(shared), fin, work, B, Hq, Hkv, qL, kL, d, kb, vb,
        DT[qdt], DT[sdt], ctypes.c_float(scale), int(causal), 0, force_splits, 0,
        host(in_kernel), None,
    )  # fmt: skip
    R = ref.rotation_f64(d)
    kvh = np.arange(Hq) // (Hq // Hkv)
    q64 = value(q, qdt).astype(np.float64)
    k64 = ref.decode_rotated_f64(kw, value(ks, sdt).astype(np.float64), kb, d)
    v64 = ref.decode_rotated_f64(vw, value(vs, sdt).astype(np.float64), vb, d)
    bias64 = None
    if P:
        ph = wave_phases(freqs, B, Hq, Hkv, kL)
        w64 = np.broadcast_to(waves.astype(np.float64), (B, Hkv, 2 * P, d))[:, kvh]
        bias64 = scale * np.einsum("bhqd,bhid,bhki->bhqk", q64, w64, ph)
    row_sinks = None
    if sinks or bias:
        row_sinks = np.broadcast_to(hs if sinks else np.zeros(Hq), (B, qL, Hq))
        row_sinks = row_sinks.transpose(0, 2, 1).astype(np.float64)
        if bias:
            kb64 = value(mu, qdt).astype(np.float64) - value(k0, qdt).astype(np.float64)
            kb64 = np.broadcast_to(kb64, (B, Hkv, d))[:, kvh]
            row_sinks = row_sinks - scale * np.einsum("bhqd,bhd->bhq", q64, kb64)
    svb = None
    if sink_values:
        svb = np.broadcast_to(value(sv, qdt).astype(np.float64) @ R.T, (B, Hkv, d))
    r = attention64(q64 @ R.T, k64, v64, scale, bias64, row_sinks, svb, causal) @ R
    o = value(fin, qdt).astype(np.float64)
    # tensor cores as check_attn_fused, then the output's rounding to qdt
    tol = (3e-3 if sdt == "float16" else 2e-2) if is_tc else 1e-5
    tol += {"float32": 0.0, "float16": 2.0**-11, "bfloat16": 2.0**-8}[qdt]
    err = np.linalg.norm(o - r) / np.linalg.norm(r)
    where = "in kernel" if in_kernel[0] else "prep launch"
    ok = rc == 0 and bool(np.isfinite(o).all()) and err < tol
    if expect_in_kernel is not None:
        ok = ok and bool(in_kernel[0]) == expect_in_kernel
    report(
        f"{label} [vec{'-tc' if is_tc else ''}/{splits}split, {where}]",
        ok,
        f"rel err {err:.2e} (tol {tol:.0e})" + ("" if rc == 0 else f", CUDA error {rc}"),
    )


def check_attention_prepared():
    # the tensor-core kernel prepares the queries itself
    for d in (64, 128, 256):
        for sp in (1, 3):
            check_attn_prepared("tc", 2, 8, 2, 1, 500, d, 4, 3, P=8, force_splits=sp,
                                expect_in_kernel=True)  # fmt: skip
    check_attn_prepared("tc-gqa7", 1, 28, 4, 1, 1500, 128, 3, 3, P=8, shared=True,
                        expect_in_kernel=True)  # fmt: skip
    check_attn_prepared("tc-bf16", 2, 8, 2, 2, 700, 128, 4, 4, P=13, qdt="bfloat16",
                        sdt="bfloat16", causal=True, expect_in_kernel=True)  # fmt: skip
    check_attn_prepared("tc-spec", 1, 8, 2, 8, 300, 128, 3, 4, P=32, causal=True,
                        shared=True, expect_in_kernel=True)  # fmt: skip
    for sinks, bias, P in ((False, False, 0), (True, False, 1), (False, True, 0)):
        check_attn_prepared("tc-parts", 1, 8, 2, 1, 400, 128, 4, 4, P=P, sinks=sinks, bias=bias,
                            force_splits=2, expect_in_kernel=True)  # fmt: skip
    # with the sink values (mlx-lm's exact first token), rotated by split 0
    for sp in (1, 3):
        check_attn_prepared("sv", 2, 8, 2, 1, 400, 128, 4, 3, P=8, sink_values=True,
                            force_splits=sp, expect_in_kernel=True)  # fmt: skip
    check_attn_prepared("sv", 1, 8, 2, 1, 400, 256, 3, 3, P=0, sink_values=True, shared=True,
                        sdt="bfloat16", qdt="bfloat16", expect_in_kernel=True)  # fmt: skip
    check_attn_prepared("sv", 1, 8, 2, 1, 400, 64, 4, 4, P=0, sink_values=True, bias=False,
                        force_splits=2, expect_in_kernel=True)  # fmt: skip
    # turbo_attention_prep first: queries of another dtype than the scales,
    # float32 queries (the SIMT kernel)
    check_attn_prepared("qdtype", 1, 8, 2, 1, 400, 128, 3, 4, P=8, qdt="bfloat16",
                        sink_values=True, expect_in_kernel=False)  # fmt: skip
    check_attn_prepared("simt", 1, 8, 2, 1, 400, 96, 4, 4, P=8, qdt="float32",
                        sdt="float32", force_splits=2, expect_in_kernel=False)  # fmt: skip


def main():
    print(f"seed {SEED}", flush=True)
    t0 = time.time()
    check_encode()
    check_decode()
    check_decode_kv()
    check_attention()
    check_attention_tc()
    check_prep()
    check_attention_fused()
    check_attention_prepared()
    print(f"{N_OK} passed, {len(FAIL)} failed in {time.time() - t0:.0f} s")
    for f in FAIL:
        print("FAILED:", f)
    sys.exit(1 if FAIL else 0)


if __name__ == "__main__":
    main()
