"""Correctness of the TurboQuant CUDA kernels against tests/cuda/tq_ref.py.

Run on a CUDA machine after tests/cuda/build.sh:
    python3 tests/cuda/test_tq_cuda.py
Every check draws fresh random inputs and poisons the outputs with NaN first.
Prints one line per check and a summary; exit code 1 on any failure.
"""

import sys
import time

import numpy as np
import torch

import json
import os

import tq_lib
import tq_ref as ref

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import reference as spec  # the project's float64 spec encoder (tests/reference.py)

torch.manual_seed(int(time.time()))
rng = np.random.default_rng(int(time.time() * 1000) % 2**32)
FAIL = []
N_OK = 0


def report(name, ok, detail):
    global N_OK
    if ok:
        N_OK += 1
    else:
        FAIL.append(name)
    print(f"{'ok  ' if ok else 'FAIL'} {name}: {detail}", flush=True)


def to_np_f32(t):
    return t.detach().float().cpu().numpy()


def scale_bits(t):
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).cpu().numpy().view(np.uint16)
    if t.dtype == torch.float16:
        return t.view(torch.int16).cpu().numpy().view(np.uint16)
    return t.view(torch.int32).cpu().numpy().view(np.uint32)


def ref_scale_bits(s32, dtype):
    if dtype == torch.bfloat16:
        return ref.to_bf16_bits(s32)
    if dtype == torch.float16:
        return s32.astype(np.float16).view(np.uint16)
    return s32.view(np.uint32)


# ------------------------------------------------------------------ encode/decode


def check_encode():
    for d in ref.SUPPORTED_D:
        for bits in (3, 4):
            for dtype in (torch.float16, torch.bfloat16, torch.float32):
                n = 3000
                mag = torch.exp(torch.randn(n, 1) * 2)
                x = (torch.randn(n, d) * mag).to(dtype)
                x[0] = 0
                x[1, 3] = float("nan")
                x[2, 5] = float("inf")
                xg = x.cuda()
                packed, scales = tq_lib.encode(xg, bits)
                torch.cuda.synchronize()
                xr = x.float().numpy()
                _, pr, sr = ref.encode_f32(xr, bits)
                pg = packed.cpu().numpy().view(np.uint32)
                sg = scale_bits(scales.reshape(-1))
                srb = ref_scale_bits(sr, dtype)
                bad_p = int((pg[3:] != pr[3:]).any(axis=1).sum())
                bad_s = int((sg[3:] != srb[3:]).sum())
                s_f = to_np_f32(scales.reshape(-1))
                zero_ok = s_f[0] == 0
                nan_ok = np.isnan(s_f[1]) and np.isnan(s_f[2])
                report(
                    f"encode D={d} turbo{bits} {str(dtype)[6:]}",
                    bad_p == 0 and bad_s == 0 and zero_ok and nan_ok,
                    f"vectors with differing codes {bad_p}/{n - 3}, differing scales {bad_s}, "
                    f"zero->0 {zero_ok}, nan/inf->nan {nan_ok}",
                )


def check_encode_vs_spec():
    """Against tests/reference.py (float64): codes equal wherever the spec's
    margin to a decision boundary exceeds 1e-4, scales within rounding; and the
    golden vectors bit for bit."""
    for d in ref.SUPPORTED_D:
        for bits in (3, 4):
            for dtype in (torch.float16, torch.bfloat16, torch.float32):
                x = (torch.randn(2000, d) * torch.exp(torch.randn(2000, 1))).to(dtype)
                packed, scales = tq_lib.encode(x.cuda(), bits)
                codes_ref, _, scales_ref, margin = spec.encode(x.double().numpy(), f"turbo{bits}")
                codes = ref.unpack(packed.cpu().numpy().view(np.uint32), bits, d)
                safe = margin > 1e-4
                bad = int((codes[safe] != codes_ref[safe]).sum())
                row_safe = safe.all(-1)
                sg = scales.float().cpu().numpy()[:, 0][row_safe]
                sr = scales_ref[:, 0][row_safe]
                rel = float(np.abs(sg / sr - 1).max())
                tol = {torch.float16: 1e-3, torch.bfloat16: 8e-3, torch.float32: 1e-5}[dtype]
                report(
                    f"encode-vs-spec D={d} turbo{bits} {str(dtype)[6:]}",
                    bad == 0 and rel < tol and safe.mean() > 0.99,
                    f"codes differing at safe coords {bad}/{int(safe.sum())}, "
                    f"max scale rel diff {rel:.1e}",
                )
    gpath = os.path.join(
        os.path.dirname(os.path.abspath(__file__)), "..", "golden", "turbo_golden.json"
    )
    with open(gpath) as f:
        golden = json.load(f)
    bad = 0
    for case in golden["cases"]:
        x = torch.tensor(np.array(case["x"], dtype=np.float32).reshape(case["shape"]))
        bits = 3 if case["mode"] == "turbo3" else 4
        p, s = tq_lib.encode(x.cuda(), bits)
        ok_p = np.array_equal(
            p.cpu().numpy().view(np.uint32).ravel(), np.array(case["packed"], np.uint32)
        )
        ok_s = np.allclose(s.cpu().numpy().ravel(), case["scales"], rtol=1e-6)
        bad += (not ok_p) + (not ok_s)
    report(
        f"golden vectors ({len(golden['cases'])} cases) bit-exact",
        bad == 0,
        f"{bad} mismatches",
    )


def check_decode():
    for d in ref.SUPPORTED_D:
        for bits in (3, 4):
            # The op casts the scales to the output dtype first.
            for sdt, odt in (
                (torch.float16, torch.float16),
                (torch.float32, torch.float32),
                (torch.bfloat16, torch.bfloat16),
            ):
                n = 2000
                w = torch.randint(
                    -(2**31), 2**31 - 1, (n, tq_lib.words(bits, d)), dtype=torch.int32
                )
                s = (torch.rand(n, 1) * 3 + 0.1).to(sdt)
                out = torch.full((n, d), float("nan"), dtype=odt, device="cuda")
                tq_lib.decode(w.cuda(), s.cuda(), bits, d, out=out)
                torch.cuda.synchronize()
                r = ref.decode_f64(w.numpy().view(np.uint32), s.float().numpy()[:, 0], bits, d)
                o = out.double().cpu().numpy()
                err = np.linalg.norm(o - r) / np.linalg.norm(r)
                tol = 1e-6 if odt == torch.float32 else 8e-3
                report(
                    f"decode D={d} turbo{bits} {str(sdt)[6:]}->{str(odt)[6:]}",
                    np.isfinite(o).all() and err < tol,
                    f"rel err {err:.2e}",
                )


def check_decode_kv():
    """fast::QuantizedKVDequantize rows: a slice of a larger cache (strides),
    the exact first row, the constant and moving key shifts, against float64."""
    gen = torch.Generator().manual_seed(7)
    for d in ref.SUPPORTED_D:
        for bits in (3, 4):
            for dt in (torch.float32, torch.bfloat16):
                B, H, N, n, P = 2, 3, 100, 77, 5
                W = tq_lib.words(bits, d)
                w = torch.randint(
                    -(2**31), 2**31 - 1, (B, H, N, W), dtype=torch.int32, generator=gen
                )
                s = (torch.rand(B, H, N, 1, generator=gen) * 3 + 0.1).to(dt)
                first = torch.randn(B, H, 1, d, generator=gen).to(dt)
                shift = torch.randn(B, H, 1, d, generator=gen) * 2
                freqs = torch.randint(0, 2**24, (B, H, P), dtype=torch.int32, generator=gen)
                waves = torch.randn(B, H, 2 * P, d, generator=gen) * 3
                for with_first, with_shift, with_waves in (
                    (1, 1, 1),
                    (0, 0, 0),
                    (1, 0, 1),
                    (0, 1, 0),
                ):
                    out = tq_lib.decode(
                        w.cuda()[:, :, :n],
                        s.cuda()[:, :, :n],
                        bits,
                        d,
                        first=first.cuda() if with_first else None,
                        shift=shift.cuda() if with_shift else None,
                        freqs=freqs.cuda() if with_waves else None,
                        waves=waves.cuda() if with_waves else None,
                    )
                    torch.cuda.synchronize()
                    wn = w[:, :, :n].numpy().view(np.uint32).reshape(-1, W)
                    r = ref.decode_f64(wn, s[:, :, :n].float().numpy().reshape(-1), bits, d)
                    r = r.reshape(B, H, n, d)
                    if with_shift:
                        r = r + shift.double().numpy()
                    if with_waves:
                        f = freqs.numpy().view(np.uint32).astype(np.int64)
                        turns = (f[:, :, None, :] * np.arange(n)[:, None]) % (1 << 24)
                        ang = 2 * np.pi * turns / (1 << 24)
                        ph = np.concatenate([np.cos(ang), np.sin(ang)], axis=-1)
                        r = r + ph @ waves.double().numpy()
                    if with_first:
                        r = np.concatenate([first.double().numpy(), r], axis=2)
                    o = out.double().cpu().numpy()
                    err = np.linalg.norm(o - r) / np.linalg.norm(r)
                    tol = 1e-5 if dt == torch.float32 else 8e-3
                    report(
                        f"decode_kv D={d} turbo{bits} {str(dt)[6:]} "
                        f"first={with_first} shift={with_shift} waves={with_waves}",
                        o.shape == r.shape and np.isfinite(o).all() and err < tol,
                        f"rel err {err:.2e}",
                    )


def round_to(y, dtype):
    """float64 y rounded to dtype (nearest even), back in float64."""
    t = torch.from_numpy(np.ascontiguousarray(y, np.float64))
    if dtype != torch.float32:
        t = t.float()  # (bf16 / f16 from float32: a double rounding only at exact ties)
    return t.to(dtype).double().numpy()


def check_encode_moving_shift():
    """The cache update's encode with the moving key shift
    (quantized_cache_update's shift_freqs / shift_waves): x (a transposed
    view) minus a shift per head and the moving shift of cache row offset +
    l (offset past 2^17: wrapped uint32 products), rounded to the dtype, into
    rows of a larger buffer. Against the float64 spec as tests/
    test_cache_update.py::test_moving_shift_against_float64 does: the kernel's
    float32 shift lies within e = 2^-17 (|x| + |shift| + sum |waves|) of the
    float64 one, so its rounded input differs from the spec's only where y
    +- e rounds to two values (delta); codes are compared where the spec's
    margin exceeds 1e-4 + 2 sqrt(D) |delta| / |y|, scales of the vectors
    whose codes all match within the dtype's rounding + 2 |delta| / |y|. Also:
    zero waves bit for bit as the float32 reference encoder of T(x - shift);
    the codes node and the scales node each write only their buffer, the
    same values; every other row untouched."""
    B, H, L, P, offset = 2, 3, 37, 8, (1 << 17) + 5
    N = offset + L + 3
    for d in ref.SUPPORTED_D:
        for bits in (3, 4):
            for dtype in (torch.float16, torch.bfloat16, torch.float32):
                per_batch = (d + bits) % 2 == 0
                Bw = B if per_batch else 1
                W = tq_lib.words(bits, d)
                x = (torch.randn(B, L, H, d) * torch.exp(torch.randn(B, L, H, 1))).to(dtype)
                xg = x.cuda().transpose(1, 2)  # (B, H, L, D), strided
                mu = torch.randn(B, H, 1, d) * 0.5
                fr = torch.from_numpy(
                    rng.integers(0, 2**32, (Bw, H, P), dtype=np.uint64)
                    .astype(np.uint32)
                    .view(np.int32)
                )
                fr[..., 0] = 0
                wv = torch.randn(Bw, H, 2 * P, d) * 0.3
                sentinel_w, sentinel_s = 0x5A5A5A5A, 7.0

                def run(waves, codes=True, scale=True):
                    packed = torch.full((B, H, N, W), sentinel_w, dtype=torch.int32, device="cuda")
                    scales = torch.full((B, H, N, 1), sentinel_s, dtype=dtype, device="cuda")
                    tq_lib.encode_rows(
                        xg,
                        packed,
                        scales,
                        offset,
                        bits,
                        shift=mu.cuda(),
                        freqs=fr.cuda(),
                        waves=waves.cuda(),
                        codes=codes,
                        scale=scale,
                    )
                    torch.cuda.synchronize()
                    return packed.cpu().numpy().view(np.uint32), scales.cpu()

                pk, sc = run(wv)
                new = slice(offset, offset + L)
                x64 = x.transpose(1, 2).double().numpy()
                fu = fr.numpy().view(np.uint32)
                y64 = (
                    x64
                    - mu.double().numpy()
                    - spec.wave_shift(fu, wv.numpy(), np.arange(offset, offset + L))
                )
                mag = (
                    np.abs(x64)
                    + np.abs(mu.double().numpy())
                    + np.abs(wv.double().numpy()).sum(2, keepdims=True)
                )
                e = 2.0**-17 * mag
                delta = np.linalg.norm(
                    round_to(y64 + e, dtype) - round_to(y64 - e, dtype), axis=-1, keepdims=True
                )
                y = round_to(y64, dtype)
                codes_ref, _, scales_ref, margin = spec.encode(y, f"turbo{bits}")
                n = np.maximum(np.linalg.norm(y, axis=-1, keepdims=True), 1e-30)
                safe = margin > 1e-4 + 2 * np.sqrt(d) * delta / n
                codes = ref.unpack(pk[:, :, new].reshape(-1, W), bits, d).reshape(codes_ref.shape)
                bad = int((codes[safe] != codes_ref[safe]).sum())
                same = (codes == codes_ref).all(-1, keepdims=True)
                ulp = {
                    torch.float16: 2.0**-10,
                    torch.bfloat16: 2.0**-7,
                    torch.float32: 2.0**-23,
                }[dtype]
                sg = sc[:, :, new].double().numpy()
                rel = np.abs(sg - scales_ref) / scales_ref
                scale_ok = bool(np.all(rel[same] <= (1e-5 + ulp + 2 * delta / n)[same]))
                # other rows untouched
                keep = np.ones(N, bool)
                keep[new] = False
                untouched = bool(
                    (pk[:, :, keep] == sentinel_w).all()
                    and (sc[:, :, keep].float() == sentinel_s).all()
                )
                # one node per buffer: the codes alone, the scales alone
                pk_c, sc_c = run(wv, scale=False)
                pk_s, sc_s = run(wv, codes=False)
                nodes_ok = bool(
                    np.array_equal(pk_c, pk)
                    and (sc_c.float() == sentinel_s).all()
                    and (pk_s == sentinel_w).all()
                    and torch.equal(sc_s, sc)
                )
                # zero waves: exactly the constant shift, bit for bit
                pk0, sc0 = run(torch.zeros_like(wv))
                y0 = (x.transpose(1, 2).float() - mu).to(dtype).float().numpy().reshape(-1, d)
                _, pr0, sr0 = ref.encode_f32(y0, bits)
                zero_ok = bool(
                    np.array_equal(pk0[:, :, new].reshape(-1, W), pr0)
                    and np.array_equal(
                        scale_bits(sc0[:, :, new].reshape(-1).contiguous()),
                        ref_scale_bits(sr0, dtype),
                    )
                )
                report(
                    f"encode moving shift D={d} turbo{bits} {str(dtype)[6:]} "
                    f"P={P} {'per batch' if per_batch else 'shared'}",
                    bad == 0
                    and safe.mean() > 0.8
                    and same.mean() > 0.5
                    and scale_ok
                    and untouched
                    and nodes_ok
                    and zero_ok,
                    f"codes differing at safe coords {bad}/{int(safe.sum())} "
                    f"(safe {safe.mean():.2f}), vectors with all codes equal {same.mean():.2f}, "
                    f"scales {scale_ok}, other rows untouched {untouched}, "
                    f"codes / scales nodes {nodes_ok}, zero waves bit-exact {zero_ok}",
                )


# ------------------------------------------------------------------ attention


def rand_cache(B, H, L, d, bits, sdt, mul=1.0):
    w = torch.randint(-(2**31), 2**31 - 1, (B, H, L, tq_lib.words(bits, d)), dtype=torch.int32)
    s = ((torch.rand(B, H, L, 1) * 0.5 + 0.05) * mul).to(sdt)
    return w, s


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
    sdt=torch.float16,
    causal=False,
    mask=None,
    sinks=False,
    force_splits=0,
    tol=1e-5,
    tc=False,
    q_mul=1.0,
    ks_mul=1.0,
    vs_mul=1.0,
):
    q = torch.randn(B, Hq, qL, d) * q_mul
    kw, ks = rand_cache(B, Hkv, kL, d, kb, sdt, ks_mul)
    vw, vs = rand_cache(B, Hkv, kL, d, vb, sdt, vs_mul)
    snk = torch.randn(Hq) * 2 if sinks else None
    scale = 1.0 / np.sqrt(d) * 4.0  # sharper than usual: exercises the softmax
    m = None
    if mask == "bool":
        m = torch.rand(1, Hq, qL, kL) > 0.3
        m[..., 0, :] = False  # a fully masked row
    elif mask == "float":
        m = torch.randn(B, 1, qL, kL) * 2
    att = tq_lib.Attention(
        B,
        Hq,
        Hkv,
        qL,
        kL,
        d,
        kb,
        vb,
        scale,
        causal=causal,
        mask=m.cuda() if m is not None else None,
        sinks=snk.cuda() if snk is not None else None,
        force_splits=force_splits,
        low_precision=tc,
        sdtype=sdt,
    )
    out = torch.full((B, Hq, qL, d), float("nan"), device="cuda")
    att(q.cuda(), kw.cuda(), ks.cuda(), vw.cuda(), vs.cuda(), out=out)
    torch.cuda.synchronize()
    r = ref.attention_f64(
        q.numpy(),
        kw.numpy().view(np.uint32),
        ks.float().numpy()[..., 0],
        vw.numpy().view(np.uint32),
        vs.float().numpy()[..., 0],
        kb,
        vb,
        scale,
        causal=causal,
        mask=m.numpy() if m is not None else None,
        sinks=snk.numpy() if snk is not None else None,
    )
    o = out.double().cpu().numpy()
    err = np.linalg.norm(o - r) / np.linalg.norm(r)
    if att.tc:
        # fp16 / bf16 operands (q, centroids, p * value scale) rounded to
        # nearest: unit roundoff 2^-11 / 2^-8 per operand; the score error
        # (~sqrt(D) rounded products) moves p by about ln2 * |ds|, which at
        # this test's sharp softmax gives rel. errors of ~5e-4 (fp16) and
        # ~4e-3 (bf16), well below these bounds.
        tol = max(tol, 3e-3 if sdt == torch.float16 else 2e-2)
    ok = bool(np.isfinite(o).all()) and err < tol
    path = f"vec{'-tc' if att.tc else ''}/{att.splits}split"
    mags = "".join(
        f" {n}*{v:g}" for n, v in (("q", q_mul), ("ks", ks_mul), ("vs", vs_mul)) if v != 1
    )
    report(
        f"attn {name} B={B} Hq={Hq} Hkv={Hkv} qL={qL} kL={kL} D={d} k{kb}v{vb} "
        f"{str(sdt)[6:]}{' causal' if causal else ''}{' mask=' + mask if mask else ''}"
        f"{' sinks' if sinks else ''}{mags} [{path}]",
        ok,
        f"rel err {err:.2e}",
    )


def check_attention():
    combos = ((3, 3), (4, 4), (3, 4), (4, 3))
    for d in ref.SUPPORTED_D:
        for kb, vb in combos:
            check_attn("decode", 2, 8, 2, 1, 777, d, kb, vb)  # split-K
            check_attn("decode1p", 2, 8, 2, 1, 777, d, kb, vb, force_splits=1)
            check_attn("spec", 1, 4, 2, 4, 100, d, kb, vb, causal=True)
    for g in (1, 2, 4, 8):
        check_attn("gqa", 1, 2 * g, 2, 1, 1500, 128, 4, 3)
    for sdt in (torch.bfloat16, torch.float32):
        check_attn("dtype", 2, 8, 2, 1, 600, 128, 3, 3, sdt=sdt)
        check_attn("dtype", 1, 4, 2, 5, 70, 96, 4, 4, sdt=sdt)
    for qL in (2, 3, 5, 8):
        check_attn("spec", 1, 8, 2, qL, 1000, 128, 3, 4, causal=True)
    check_attn("mask", 2, 8, 2, 3, 900, 128, 4, 4, mask="bool")
    check_attn("mask", 2, 8, 2, 3, 900, 128, 4, 4, mask="float")
    check_attn("mask", 2, 8, 2, 3, 900, 128, 4, 4, mask="bool", force_splits=1)
    check_attn("mask", 1, 4, 2, 7, 90, 64, 4, 4, mask="bool")
    check_attn("mask", 2, 4, 2, 7, 90, 80, 3, 3, mask="float")
    check_attn("sinks", 2, 8, 2, 1, 1200, 128, 3, 3, sinks=True)
    check_attn("sinks", 2, 8, 2, 1, 1200, 128, 3, 3, sinks=True, force_splits=1)
    check_attn("sinks", 1, 4, 2, 4, 64, 256, 4, 3, sinks=True, causal=True)
    # qL > kL with causal: the first rows see no key and average all values
    check_attn("causal qL>kL", 1, 2, 1, 6, 3, 128, 4, 4, causal=True)
    check_attn("long", 1, 32, 8, 1, 32768, 128, 3, 3, tol=2e-5)
    check_attn("long", 1, 32, 8, 1, 32768, 128, 4, 4, tol=2e-5, force_splits=1)
    try:  # longer calls are MLX's dequantized route, not a kernel's
        tq_lib.Attention(1, 4, 2, 9, 100, 128, 4, 4, 0.1)
        report("qL = 9 rejected", False, "planned")
    except ValueError as e:
        report("qL = 9 rejected", True, str(e))


def check_attention_tc():
    """The tensor-core decode kernel (turbo_sdpa_vector_tc) against float64."""
    combos = ((3, 3), (4, 4), (3, 4), (4, 3))
    f16, bf16 = torch.float16, torch.bfloat16
    for d in (64, 128, 256):
        for kb, vb in combos:
            for sdt in (f16, bf16):
                # 777 keys: not a multiple of the warp tile (16 to 64 keys)
                check_attn("tc", 2, 8, 2, 1, 777, d, kb, vb, sdt=sdt, tc=True)
                check_attn("tc1p", 2, 8, 2, 1, 777, d, kb, vb, sdt=sdt, tc=True, force_splits=1)
    for g in (1, 2, 4, 8):
        check_attn("tc-gqa", 1, 2 * g, 2, 1, 1500, 128, 4, 3, tc=True)
    check_attn("tc-gqa16", 1, 32, 2, 1, 600, 128, 3, 4, tc=True)  # 2 row groups
    for qL in (2, 3, 5, 8):
        check_attn("tc-spec", 1, 8, 2, qL, 1000, 128, 3, 4, causal=True, tc=True)
    check_attn("tc-spec", 1, 4, 2, 3, 500, 64, 4, 4, causal=True, sdt=bf16, tc=True)
    for sp in (0, 1):
        for mk in ("bool", "float"):
            check_attn("tc-mask", 2, 8, 2, 3, 900, 128, 4, 4, mask=mk, force_splits=sp, tc=True)
        check_attn(
            "tc-sinks",
            2,
            8,
            2,
            1,
            1200,
            128,
            3,
            3,
            sinks=True,
            force_splits=sp,
            tc=True,
        )
        check_attn(
            "tc-sinks",
            1,
            8,
            1,
            2,
            300,
            256,
            4,
            3,
            sinks=True,
            causal=True,
            sdt=bf16,
            force_splits=sp,
            tc=True,
        )
    check_attn("tc-mask", 1, 4, 2, 2, 333, 256, 3, 4, mask="bool", sdt=bf16, tc=True)
    check_attn("tc-mask", 1, 8, 2, 1, 100, 64, 3, 3, mask="float", tc=True)
    check_attn("tc causal qL>kL", 1, 2, 1, 6, 3, 128, 4, 4, causal=True, tc=True)
    # few keys, odd keys per split (split starts not aligned to the tile)
    for kL in (1, 5, 33, 100):
        check_attn("tc-short", 1, 4, 1, 1, kL, 128, 4, 3, tc=True, force_splits=1)
    check_attn("tc-split-odd", 1, 8, 2, 1, 1003, 128, 3, 4, tc=True, force_splits=3)
    check_attn("tc-split-odd", 1, 8, 2, 1, 1003, 64, 4, 4, tc=True, force_splits=7)
    check_attn("tc-split-odd", 1, 8, 2, 1, 1003, 256, 3, 3, tc=True, force_splits=5)
    # more splits than the combine reads per group in one chunk
    for d, sp in ((64, 150), (128, 100), (256, 50)):
        kL = sp * (16 if d == 256 else 32)  # one iteration of the kernel's keys per split
        check_attn("tc-splits-many", 1, 8, 2, 1, kL, d, 3, 4, tc=True, force_splits=sp)
    check_attn("tc-long", 1, 32, 8, 1, 32768, 128, 3, 3, tc=True)
    check_attn("tc-long", 1, 32, 8, 1, 32768, 128, 4, 4, tc=True, force_splits=1)
    # fp16 range guards: q * scale beyond fp16 (and tiny), value scales near
    # the fp16 limits (tiny ones are fp16 subnormals, in the reference too)
    check_attn("tc-range", 1, 8, 2, 1, 700, 128, 4, 4, tc=True, q_mul=1e5, ks_mul=1e-5)
    check_attn("tc-range", 1, 8, 2, 1, 700, 128, 4, 3, tc=True, q_mul=1e-4, ks_mul=1e4)
    check_attn("tc-range", 1, 8, 2, 1, 700, 128, 3, 4, tc=True, vs_mul=1e4)
    check_attn("tc-range", 1, 8, 2, 1, 700, 128, 4, 4, tc=True, vs_mul=1e-5)
    check_attn("tc-range", 1, 8, 2, 1, 700, 64, 4, 4, tc=True, vs_mul=1e-3, sdt=bf16)


def check_roundtrip_attention():
    """encode -> fused attention == SDPA over dequantized K/V (float64)."""
    for d in (64, 128, 256):
        B, Hq, Hkv, qL, kL = 1, 8, 2, 1, 300
        k = torch.randn(B, Hkv, kL, d, dtype=torch.float16, device="cuda")
        v = torch.randn(B, Hkv, kL, d, dtype=torch.float16, device="cuda")
        q = torch.randn(B, Hq, qL, d, device="cuda")
        kc, ks = tq_lib.encode(k, 3)
        vc, vs = tq_lib.encode(v, 4)
        kd = tq_lib.decode(kc, ks.float(), 3, d).double().cpu().numpy()
        vd = tq_lib.decode(vc, vs.float(), 4, d).double().cpu().numpy()
        R = ref.rotation_f64(d)
        qr = q.double().cpu().numpy() @ R.T
        scale = 1 / np.sqrt(d)
        att = tq_lib.Attention(B, Hq, Hkv, qL, kL, d, 3, 4, scale)
        o = att(torch.from_numpy(qr).float().cuda().contiguous(), kc, ks, vc, vs)
        o = o.double().cpu().numpy() @ R  # R^T o'
        kd = np.repeat(kd, Hq // Hkv, 1)
        vd = np.repeat(vd, Hq // Hkv, 1)
        s = scale * np.einsum("bhqd,bhkd->bhqk", q.double().cpu().numpy(), kd)
        p = np.exp(s - s.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        r = np.einsum("bhqk,bhkd->bhqd", p, vd)
        err = np.linalg.norm(o - r) / np.linalg.norm(r)
        report(f"roundtrip encode->attention->R^T D={d}", err < 1e-5, f"rel err {err:.2e}")


if __name__ == "__main__":
    t0 = time.time()
    print(torch.cuda.get_device_name(), flush=True)
    check_encode()
    check_encode_vs_spec()
    check_decode()
    check_decode_kv()
    check_encode_moving_shift()
    check_attention()
    check_attention_tc()
    check_roundtrip_attention()
    print(f"\n{N_OK} passed, {len(FAIL)} failed in {time.time() - t0:.0f}s")
    for f in FAIL:
        print("FAILED:", f)
    sys.exit(1 if FAIL else 0)
