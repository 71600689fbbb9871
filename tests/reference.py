"""Independent float64 NumPy reference of the TurboQuant format and attention.

Written from docs/format.md only (no MLX code): encoding, packing, decoding,
and attention on the decoded cache. Every backend is checked against it.
"""

import numpy as np

CODEBOOK = {
    3: np.array(
        [-2.1520, -1.3440, -0.7560, -0.2451, 0.2451, 0.7560, 1.3440, 2.1520],
        dtype=np.float32,
    ),
    4: np.array(
        [
            -2.7326,
            -2.0690,
            -1.6180,
            -1.2562,
            -0.9424,
            -0.6568,
            -0.3881,
            -0.1284,
            0.1284,
            0.3881,
            0.6568,
            0.9424,
            1.2562,
            1.6180,
            2.0690,
            2.7326,
        ],
        dtype=np.float32,
    ),
}
SUPPORTED_DIMS = (64, 80, 96, 128, 192, 256)
MODE_BITS = {"turbo3": 3, "turbo4": 4}


def boundaries(bits):
    c = CODEBOOK[bits]
    # fl32(c_j + c_{j+1}) * 0.5, in float32 as the spec says.
    return ((c[:-1] + c[1:]) * np.float32(0.5)).astype(np.float32)


def packed_width(dim, bits):
    return dim // 8 if bits == 4 else dim // 16 + (dim + 31) // 32


def stage_size(dim):
    return 1 << (dim.bit_length() - 1)


def signs(t, dim):
    i = np.arange(dim, dtype=np.uint64)
    m = np.uint64(0xFFFFFFFF)
    h = ((i + np.uint64(1)) * np.uint64(0x9E3779B1) + np.uint64(t) * np.uint64(0x7F4A7C15)) & m
    h ^= h >> np.uint64(16)
    h = (h * np.uint64(0x85EBCA6B)) & m
    h ^= h >> np.uint64(13)
    h = (h * np.uint64(0xC2B2AE35)) & m
    h ^= h >> np.uint64(16)
    return np.where(h & np.uint64(1), -1.0, 1.0)


def sylvester(p):
    i = np.arange(p)
    bits = np.bitwise_and.outer(i, i)
    pop = np.vectorize(lambda v: bin(v).count("1"))(bits)
    return np.where(pop % 2 == 0, 1.0, -1.0)


def rotation_matrix(dim):
    """The orthogonal matrix R of the spec (float64), so that y = R @ x."""
    p = stage_size(dim)
    hp = sylvester(p) / np.sqrt(p)

    def stage(t, offset):
        m = np.eye(dim)
        m[offset : offset + p, offset : offset + p] = hp
        return m @ np.diag(signs(t, dim))

    return stage(2, dim - p) @ stage(1, 0)


_ROT = {}


def rot(dim):
    if dim not in _ROT:
        _ROT[dim] = rotation_matrix(dim)
    return _ROT[dim]


def encode(x, mode):
    """Spec encoder. x: float array [..., D]. Returns (codes, packed, scales_f64, margin).

    margin[..., i] is |z_i - nearest boundary|: encodings computed in float32
    with different operation orders can only differ where it is tiny.
    """
    bits = MODE_BITS[mode]
    x = np.asarray(x, dtype=np.float64)
    dim = x.shape[-1]
    n = np.linalg.norm(x, axis=-1, keepdims=True)
    u = np.where(n > 0, x / np.where(n > 0, n, 1), 0.0)
    y = u @ rot(dim).T
    z = y * np.sqrt(dim)
    b = boundaries(bits).astype(np.float64)
    codes = (z[..., None] > b).sum(-1).astype(np.uint32)
    margin = np.abs(z[..., None] - b).min(-1)
    c = CODEBOOK[bits].astype(np.float64)
    rho = np.linalg.norm(c[codes], axis=-1, keepdims=True)
    scales = n / rho
    return codes, pack(codes, bits), scales, margin


def pack(codes, bits):
    codes = np.asarray(codes, dtype=np.uint64)
    dim = codes.shape[-1]
    out = np.zeros(codes.shape[:-1] + (packed_width(dim, bits),), dtype=np.uint64)
    for i in range(dim):
        if bits == 4:
            out[..., i // 8] |= codes[..., i] << np.uint64(4 * (i % 8))
        else:
            out[..., i // 16] |= (codes[..., i] & np.uint64(3)) << np.uint64(2 * (i % 16))
            out[..., dim // 16 + i // 32] |= (codes[..., i] >> np.uint64(2)) << np.uint64(i % 32)
    return out.astype(np.uint32)


def unpack(packed, bits, dim):
    w = np.asarray(packed, dtype=np.uint64)
    codes = np.zeros(w.shape[:-1] + (dim,), dtype=np.uint64)
    for i in range(dim):
        if bits == 4:
            codes[..., i] = (w[..., i // 8] >> np.uint64(4 * (i % 8))) & np.uint64(15)
        else:
            lo = (w[..., i // 16] >> np.uint64(2 * (i % 16))) & np.uint64(3)
            hi = (w[..., dim // 16 + i // 32] >> np.uint64(i % 32)) & np.uint64(1)
            codes[..., i] = lo | (hi << np.uint64(2))
    return codes.astype(np.int64)


def dim_from_width(width, bits):
    for d in SUPPORTED_DIMS:
        if packed_width(d, bits) == width:
            return d
    raise ValueError(width)


def decode_rotated(packed, scales, mode):
    bits = MODE_BITS[mode]
    dim = dim_from_width(packed.shape[-1], bits)
    codes = unpack(packed, bits, dim)
    return CODEBOOK[bits].astype(np.float64)[codes] * np.asarray(scales, np.float64)


def decode(packed, scales, mode):
    y = decode_rotated(packed, scales, mode)
    return y @ rot(y.shape[-1])  # R^T y, row-vector form


def wave_shift(freqs, waves, n):
    """The moving key shift (docs/format.md section 7) of cache rows n in
    float64: angles 2 pi ((k n) mod 2^24) / 2^24 of the uint32 frequencies k
    (whole fractions of a turn), freqs (B or 1, Hkv, P), waves (B or 1, Hkv,
    2P, D); returns (B or 1, Hkv, len(n), D)."""
    turns = (freqs[:, :, None, :].astype(np.int64) * np.asarray(n, np.int64)[:, None]) % (1 << 24)
    ang = 2 * np.pi * turns / (1 << 24)
    phases = np.concatenate([np.cos(ang), np.sin(ang)], axis=-1)  # (Bf, Hkv, len(n), 2P)
    return phases @ np.asarray(waves, np.float64)


def attention(q, k, v, scale, mask=None, sinks=None):
    """float64 attention with MLX SDPA semantics. q [B,Hq,qL,D], k/v [B,Hkv,kL,D]."""
    q = np.asarray(q, np.float64)
    k = np.asarray(k, np.float64)
    v = np.asarray(v, np.float64)
    B, Hq, qL, _ = q.shape
    Hkv, kL = k.shape[1], k.shape[2]
    rep = Hq // Hkv
    k = np.repeat(k, rep, axis=1)
    v = np.repeat(v, rep, axis=1)
    s = scale * q @ np.swapaxes(k, -1, -2)
    fmin = np.finfo(np.float32).min
    if isinstance(mask, str) and mask == "causal":
        qi = np.arange(qL)[:, None] + (kL - qL)
        kj = np.arange(kL)[None, :]
        s = np.where(kj <= qi, s, fmin)
    elif mask is not None:
        mask = np.asarray(mask)
        if mask.dtype == bool:
            s = np.where(mask, s, fmin)
        else:
            s = s + mask.astype(np.float64)
    if sinks is not None:
        sk = np.broadcast_to(np.asarray(sinks, np.float64)[None, :, None, None], (B, Hq, qL, 1))
        s = np.concatenate([sk, s], axis=-1)
    s = s - s.max(-1, keepdims=True)
    p = np.exp(s)
    p = p / p.sum(-1, keepdims=True)
    if sinks is not None:
        p = p[..., 1:]
    return p @ v
