"""NumPy reference for the TurboQuant format (docs/format.md), used by the CUDA
harness. Written from the spec, independent of the kernels.

* `encode_f32` follows the spec's float32 encoder and pins what the spec
  leaves open (the summation order of the two norms, the form of the 1/sqrt(P)
  normalization; see docs/cuda.md) so the CUDA encoder can be checked bit for
  bit. The project's float64 spec encoder is tests/reference.py.
* `decode_f64` and `attention_f64` are float64 references.
"""

import os
import sys

import numpy as np

# Constants, signs and the rotation come from the project's spec reference
# (tests/reference.py) so that one transcription of docs/format.md serves both.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import reference as _spec  # noqa: E402

SUPPORTED_D = _spec.SUPPORTED_DIMS
FLT_MAX = float(np.finfo(np.float32).max)
signs = _spec.signs
boundaries = _spec.boundaries
pow2_floor = _spec.stage_size


def codebook(bits):
    return _spec.CODEBOOK[bits]


def words(bits, d):
    return _spec.packed_width(d, bits)


def rotation_f64(d):
    """R as a float64 matrix (y = R x); a fresh copy the caller may modify."""
    return _spec.rot(d).copy()


# ---------------------------------------------------------------- float32 encoder


def _fwht_f32(y, off, p):
    seg = y[:, off : off + p].copy()
    n = seg.shape[0]
    h = 1
    while h < p:
        s = seg.reshape(n, p // (2 * h), 2, h)
        a = s[:, :, 0, :].copy()
        b = s[:, :, 1, :].copy()
        s[:, :, 0, :] = a + b
        s[:, :, 1, :] = a - b
        seg = s.reshape(n, p)
        h *= 2
    norm = np.float32(1) / np.sqrt(np.float32(p))
    y[:, off : off + p] = seg * norm


def _seq_fma_sum_squares(v):
    """sum_i v_i^2 in float32, sequential in i, one fused multiply-add per term
    (acc = fma(v_i, v_i, acc)); the fma is emulated in extended precision
    (v_i^2 is exact there; a double rounding needs an exact tie, ~2^-40)."""
    acc = np.zeros(v.shape[0], dtype=np.float32)
    for i in range(v.shape[1]):
        t = v[:, i].astype(np.longdouble)
        acc = (t * t + acc.astype(np.longdouble)).astype(np.float32)
    return acc


def to_bf16_bits(x32):
    b = x32.astype(np.float32).view(np.uint32).astype(np.uint64)
    r = ((b + 0x7FFF + ((b >> 16) & 1)) >> 16).astype(np.uint16)
    nan = np.isnan(x32)
    r[nan] = 0x7FC0
    return r


def bf16_bits_to_f32(b):
    return (b.astype(np.uint32) << 16).view(np.float32)


def encode_f32(x, bits):
    """x: (N, D) float32 (already the values of the input dtype).
    Returns idx (N, D) uint8, packed (N, W) uint32, scale float32 (N,)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    n_vec, d = x.shape
    p = pow2_floor(d)
    with np.errstate(all="ignore"):
        n = np.sqrt(_seq_fma_sum_squares(x)).astype(np.float32)
        finite = np.isfinite(n)
        u = np.where(n[:, None] > 0, x / n[:, None], np.float32(0)).astype(np.float32)
        y = (u * signs(1, d).astype(np.float32)).astype(np.float32)
        _fwht_f32(y, 0, p)
        y = (y * signs(2, d).astype(np.float32)).astype(np.float32)
        _fwht_f32(y, d - p, p)
        z = y * np.sqrt(np.float32(d))
        bnd = boundaries(bits)
        idx = (z[:, :, None] > bnd[None, None, :]).sum(-1).astype(np.uint8)
        c = codebook(bits)[idx]
        rho = np.sqrt(_seq_fma_sum_squares(c)).astype(np.float32)
        scale = (n / rho).astype(np.float32)
    scale[~finite] = np.nan
    return idx, pack(idx, bits), scale


def pack(idx, bits):
    n, d = idx.shape
    idx = idx.astype(np.uint32)
    if bits == 4:
        w = np.zeros((n, d // 8), dtype=np.uint32)
        for c in range(8):
            w |= idx[:, c::8] << np.uint32(4 * c)
        return w
    wl = d // 16
    wh = (d + 31) // 32
    w = np.zeros((n, wl + wh), dtype=np.uint32)
    for c in range(16):
        w[:, :wl] |= (idx[:, c::16] & 3) << np.uint32(2 * c)
    hi = np.zeros((n, wh * 32), dtype=np.uint32)
    hi[:, :d] = idx >> 2
    for c in range(32):
        w[:, wl:] |= hi[:, c::32] << np.uint32(c)
    return w


def unpack(w, bits, d):
    w = w.astype(np.uint32)
    lead = w.shape[:-1]
    idx = np.zeros(lead + (d,), dtype=np.int64)
    if bits == 4:
        for c in range(8):
            idx[..., c::8] = (w[..., : d // 8] >> np.uint32(4 * c)) & 15
        return idx
    wl = d // 16
    for c in range(16):
        idx[..., c::16] = (w[..., :wl] >> np.uint32(2 * c)) & 3
    i = np.arange(d)
    hi = (w[..., wl + i // 32] >> (i % 32).astype(np.uint32)) & 1
    idx |= hi.astype(np.int64) << 2
    return idx


def decode_rotated_f64(w, scale, bits, d):
    return (
        scale[..., None].astype(np.float64) * codebook(bits).astype(np.float64)[unpack(w, bits, d)]
    )


def decode_f64(w, scale, bits, d):
    yhat = decode_rotated_f64(w, scale, bits, d)
    return yhat @ rotation_f64(d)  # R^T yhat for row vectors


def attention_f64(q, kw, ks, vw, vs, kbits, vbits, scale, causal=False, mask=None, sinks=None):
    """q: (B,Hq,qL,D) rotated queries; kw/vw: (B,Hkv,kL,W); ks/vs: (B,Hkv,kL)
    float values of the stored scales; mask broadcastable to (B,Hq,qL,kL),
    bool or float. Returns (B,Hq,qL,D) in the rotated value space."""
    b, hq, ql, d = q.shape
    hkv, kl = kw.shape[1], kw.shape[2]
    g = hq // hkv
    kk = decode_rotated_f64(kw, ks, kbits, d)  # (B,Hkv,kL,D)
    vv = decode_rotated_f64(vw, vs, vbits, d)
    kk = np.repeat(kk, g, axis=1)
    vv = np.repeat(vv, g, axis=1)
    s = scale * np.einsum("bhqd,bhkd->bhqk", q.astype(np.float64), kk)
    if causal:
        qi = np.arange(ql)[:, None]
        kj = np.arange(kl)[None, :]
        s = np.where(kj <= kl - ql + qi, s, -FLT_MAX)
    if mask is not None:
        m = np.broadcast_to(mask, s.shape)
        if m.dtype == np.bool_:
            s = np.where(m, s, -FLT_MAX)
        else:
            s = s + m.astype(np.float64)
    if sinks is not None:
        sk = np.broadcast_to(sinks.astype(np.float64)[None, :, None, None], (b, hq, ql, 1))
        s = np.concatenate([s, sk], axis=-1)
    mx = s.max(-1, keepdims=True)
    e = np.exp(s - mx)
    pr = e / e.sum(-1, keepdims=True)
    return np.einsum("bhqk,bhkd->bhqd", pr[..., :kl], vv)
