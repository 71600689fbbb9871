"""Emulated Metal attention kernels vs the patched wheel's CPU backend.

    python compare_cpu_wheel.py DUMP_DIR

DUMP_DIR holds the cases `turbo_attn_exec` wrote with TURBO_EXEC_DUMP set:
packed K/V and scales exactly as the kernels read them (including
non-contiguous layouts), the rotated queries, masks, sinks, and the emulated
kernel's output in the rotated value space. Each case is run through
mx.fast.quantized_scaled_dot_product_attention on the CPU stream with the
same data (queries mapped back by R^T, which the op undoes) and the two
outputs are compared after mapping the kernel's output back by R^T.

Both sides evaluate the same float32 math in different orders; the float64
rotations add ~1e-7. The bound is the harness's own: max |diff| <=
2e-5 * max(1, max |out|).
"""

import glob
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import reference as ref  # noqa: E402

import mlx.core as mx  # noqa: E402

M_NONE, M_CAUSAL, M_BOOL, M_FLOAT, M_CAUSAL_BOOL = range(5)
SCALE_DT = {0: (np.float32, mx.float32), 1: (np.float16, mx.float16), 2: (np.uint16, mx.bfloat16)}


def load(path):
    raw = open(path, "rb").read()
    h = np.frombuffer(raw[:64], np.int32)
    assert h[0] == 0x54514D31, f"{path}: bad magic"
    kb, vb, st, Dk, Dv, B, Hq, Hkv, qL, kL, cap, mask, sinks, seq_major, bcast = map(int, h[1:])
    off = 64

    def take(dtype, n):
        nonlocal off
        a = np.frombuffer(raw, dtype, count=n, offset=off)
        off += a.nbytes
        return a

    Wk, Wv = ref.packed_width(Dk, kb), ref.packed_width(Dv, vb)
    nkv = B * Hkv * cap
    sdt_np, sdt_mx = SCALE_DT[st]
    c = dict(kb=kb, vb=vb, Dk=Dk, Dv=Dv, B=B, Hq=Hq, Hkv=Hkv, qL=qL, kL=kL, mask=mask)
    c["q"] = take(np.float32, B * Hq * qL * Dk).reshape(B, Hq, qL, Dk)
    k = take(np.uint32, nkv * Wk)
    ks = take(sdt_np, nkv)
    v = take(np.uint32, nkv * Wv)
    vs = take(sdt_np, nkv)
    nm = qL * kL if bcast else B * Hq * qL * kL
    mshape = (qL, kL) if bcast else (B, Hq, qL, kL)
    c["m"] = None
    if mask in (M_BOOL, M_CAUSAL_BOOL):
        c["m"] = take(np.uint8, nm).reshape(mshape).astype(bool)
    elif mask == M_FLOAT:
        c["m"] = take(np.float32, nm).reshape(mshape)
    sk = take(np.float32, Hq)  # written for every case
    c["sinks"] = sk if sinks else None
    c["out"] = take(np.float32, B * Hq * qL * Dv).reshape(B, Hq, qL, Dv)
    assert off == len(raw), f"{path}: {len(raw) - off} bytes left"

    def cache_view(a, W):
        # The kernels read (B, H, L) strides; seq-major caches are (B, L, H, W).
        if seq_major:
            a = a.reshape(B, cap, Hkv, W).transpose(0, 2, 1, 3)
        else:
            a = a.reshape(B, Hkv, cap, W)
        return a[:, :, :kL, :]

    def scales(s):
        a = mx.array(s)
        return cache_view(a.view(mx.bfloat16) if st == 2 else a, 1)

    c["k_mx"], c["v_mx"] = cache_view(mx.array(k), Wk), cache_view(mx.array(v), Wv)
    c["ks_mx"], c["vs_mx"] = scales(ks), scales(vs)
    assert c["ks_mx"].dtype == sdt_mx
    return c


def run(c):
    Rk, Rv = ref.rot(c["Dk"]), ref.rot(c["Dv"])
    q = (c["q"].astype(np.float64) @ Rk).astype(np.float32)  # R^T q per row
    mask_mode, m = None, None
    if c["mask"] == M_CAUSAL:
        mask_mode = "causal"
    elif c["mask"] in (M_BOOL, M_CAUSAL_BOOL):
        m = c["m"]
        if c["mask"] == M_CAUSAL_BOOL:
            qi = np.arange(c["qL"])[:, None]
            kj = np.arange(c["kL"])[None, :]
            m = m & (kj <= c["kL"] - c["qL"] + qi)
        m = mx.array(m)
    elif c["mask"] == M_FLOAT:
        m = mx.array(c["m"])
    sinks = None if c["sinks"] is None else mx.array(c["sinks"])
    out = mx.fast.quantized_scaled_dot_product_attention(
        mx.array(q),
        c["k_mx"],
        c["ks_mx"],
        c["v_mx"],
        c["vs_mx"],
        scale=1.0,
        mask=mask_mode if mask_mode else m,
        sinks=sinks,
        mode=(f"turbo{c['kb']}", f"turbo{c['vb']}"),
        stream=mx.cpu,
    )
    cpu = np.array(out, np.float64)
    kernel = c["out"].astype(np.float64) @ Rv  # R^T out per row
    err = np.max(np.abs(cpu - kernel))
    tol = 2e-5 * max(1.0, np.max(np.abs(kernel)))
    return err, tol


def main():
    files = sorted(glob.glob(os.path.join(sys.argv[1], "case_*.bin")))
    if not files:
        sys.exit(f"no cases in {sys.argv[1]}")
    fails = 0
    for path in files:
        c = load(path)
        err, tol = run(c)
        ok = np.isfinite(err) and err <= tol
        fails += not ok
        if not ok:
            print(f"FAIL {os.path.basename(path)} err={err:.2g} tol={tol:.1g}")
    print(
        f"{len(files) - fails}/{len(files)} Metal-emulated outputs match the CPU backend of the wheel"
    )
    sys.exit(1 if fails else 0)


if __name__ == "__main__":
    main()
