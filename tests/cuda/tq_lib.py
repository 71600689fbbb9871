"""ctypes binding of tests/cuda/build/libtq.so (the standalone harness build
of mlx_overlay/mlx/backend/cuda/device/turboquant.cuh). Arrays are torch CUDA
tensors."""

import ctypes
import os

import torch

_HERE = os.path.dirname(os.path.abspath(__file__))
# TQ_LIB: another build of the library (phase_trace.py's instrumented one).
_lib = ctypes.CDLL(os.environ.get("TQ_LIB") or os.path.join(_HERE, "build", "libtq.so"))

_vp = ctypes.c_void_p
_i = ctypes.c_int
_ll = ctypes.c_longlong
_lib.tq_encode.argtypes = [_vp, _vp, _vp, _ll, _i, _i, _i, _vp]
_lib.tq_decode.argtypes = [_vp] * 6 + [_i, _vp] + [_ll] * 3 + [_vp] * 2 + [_i] * 3 + [_vp]
_lib.tq_encode_rows.argtypes = (
    [_vp] * 7 + [_i] * 2 + [_ll] * 3 + [_vp] + [_ll] * 2 + [_i] * 3 + [_vp]
)
_lib.tq_plan.argtypes = [_i] * 9 + [ctypes.POINTER(_i)]
_lib.tq_plan.restype = _ll
_lib.tq_attention.argtypes = [_vp] * 10 + [_i] * 9 + [ctypes.c_float] + [_i] * 4 + [_vp]
_lib.tq_attention_fused.argtypes = (
    [_vp] * 9 + [_i, _vp, _vp, _i, _vp, _vp, _i, _i, _vp, _vp] + [_i] * 10 + [ctypes.c_float]
    + [_i] * 4 + [_vp, _vp]
)  # fmt: skip

DT = {torch.float16: 0, torch.bfloat16: 1, torch.float32: 2}


def words(bits, d):
    return d // 8 if bits == 4 else d // 16 + (d + 31) // 32


def _ptr(t):
    return ctypes.c_void_p(t.data_ptr()) if t is not None else None


def _stream():
    return ctypes.c_void_p(torch.cuda.current_stream().cuda_stream)


def _check(rc, what):
    if rc != 0:
        raise RuntimeError(f"{what}: CUDA error {rc}")


def encode(x, bits):
    """x: (..., D) CUDA tensor f16/bf16/f32 -> (packed uint32 as int32, scales)."""
    d = x.shape[-1]
    x = x.contiguous()
    n = x.numel() // d
    packed = torch.empty(x.shape[:-1] + (words(bits, d),), dtype=torch.int32, device=x.device)
    scales = torch.empty(x.shape[:-1] + (1,), dtype=x.dtype, device=x.device)
    _check(
        _lib.tq_encode(_ptr(x), _ptr(packed), _ptr(scales), n, d, bits, DT[x.dtype], _stream()),
        "encode",
    )
    return packed, scales


def encode_rows(
    x, packed, scales, offset, bits, shift=None, freqs=None, waves=None, codes=True, scale=True
):
    """The cache update's encode (turbo_quantize_update_gpu): x (B, H, L, D)
    with any strides but a contiguous last axis into rows offset .. of packed
    (B, H, N, W) int32 and scales (B, H, N, 1) in x's dtype, both contiguous,
    in place (only the codes with scale=False, only the scales with
    codes=False); minus shift (broadcastable (B or 1, H or 1, L or 1, D)
    float32, any strides, last axis contiguous) and the moving shift of the
    cache row, freqs (B or 1, H, P) int32 (uint32 bits) and waves (the same,
    H, 2P, D) float32."""
    B, H, L, d = x.shape
    assert x.stride(-1) == 1 and packed.is_contiguous() and scales.is_contiguous()
    assert scales.dtype == x.dtype
    xs = (ctypes.c_longlong * 3)(*x.stride()[:3])
    ss = None
    if shift is not None:
        assert shift.dim() == 4 and shift.stride(-1) == 1
        ss = (ctypes.c_longlong * 3)(
            *[0 if shift.shape[i] == 1 else shift.stride(i) for i in range(3)]
        )
    P = 0 if freqs is None else freqs.shape[-1]
    wave_b = 0 if freqs is None else int(freqs.shape[0] > 1)
    if freqs is not None:
        freqs, waves = freqs.contiguous(), waves.contiguous()
    _check(
        _lib.tq_encode_rows(
            _ptr(x),
            _ptr(packed) if codes else None,
            _ptr(scales) if scale else None,
            _ptr(shift),
            ss,
            _ptr(freqs),
            _ptr(waves),
            P,
            wave_b,
            B,
            H,
            L,
            xs,
            packed.shape[2],
            offset,
            d,
            bits,
            DT[x.dtype],
            _stream(),
        ),
        "encode_rows",
    )


def decode(packed, scales, bits, d, out=None, first=None, shift=None, freqs=None, waves=None):
    """Dequantize code rows as MLX does (turbo_decode). packed (..., W) or a
    (B, H, L, W) view with any strides but a contiguous last axis, scales the
    same shape with a last axis of 1, in the output dtype. With first (B, H,
    1, D) the output is (B, H, 1 + L, D), that row first; shift (B, H, 1, D)
    float32 and freqs (B, H, P) int32 (uint32 bits) / waves (B, H, 2P, D)
    float32 are added to every row (fast::QuantizedKVDequantize)."""
    if packed.dim() != 4:
        lead = packed.shape[:-1]
        packed = packed.reshape(1, 1, -1, packed.shape[-1])
        scales = scales.reshape(1, 1, -1, 1)
        if out is None:
            out = torch.empty(lead + (d,), dtype=scales.dtype, device=packed.device)
        flat = out.view(1, 1, -1, d)
    else:
        B, H, L, _ = packed.shape
        F = 1 if first is not None else 0
        if out is None:
            out = torch.empty((B, H, F + L, d), dtype=scales.dtype, device=packed.device)
        flat = out
    B, H, L, _ = packed.shape
    assert packed.stride(-1) == 1 and flat.is_contiguous()
    assert scales.dtype == flat.dtype
    P = 0 if freqs is None else freqs.shape[-1]
    c = lambda t: None if t is None else t.contiguous()
    first, shift, freqs, waves = c(first), c(shift), c(freqs), c(waves)
    ws = (ctypes.c_longlong * 3)(*packed.stride()[:3])
    ss = (ctypes.c_longlong * 3)(*scales.stride()[:3])
    _check(
        _lib.tq_decode(
            _ptr(packed),
            _ptr(scales),
            _ptr(first),
            _ptr(shift),
            _ptr(freqs),
            _ptr(waves),
            P,
            _ptr(flat),
            B,
            H,
            L,
            ws,
            ss,
            d,
            bits,
            DT[flat.dtype],
            _stream(),
        ),
        "decode",
    )
    return out


class Attention:
    """Decode attention (qL <= 8) planned and launched as MLX does it
    (plan_decode and launch_decode of device/turboquant_plan.cuh): plans once
    (workspace allocated up front) and launches many times.

    low_precision: the queries were fp16/bf16 (MLX's flag); with fp16/bf16
    scales MLX then runs the tensor-core kernel (turbo_sdpa_vector_tc) where
    it has the head dim (64, 128, 256), else the SIMT one (self.tc says
    which). force_splits > 0 replaces the planned split count."""

    def __init__(
        self,
        B,
        Hq,
        Hkv,
        qL,
        kL,
        D,
        kbits,
        vbits,
        scale,
        causal=False,
        mask=None,
        sinks=None,
        force_splits=0,
        device="cuda",
        low_precision=False,
        sdtype=torch.float16,
    ):
        self.args = (B, Hq, Hkv, qL, kL, D)
        self.kbits, self.vbits, self.scale, self.causal = kbits, vbits, scale, causal
        self.low_precision, self.force_splits = low_precision, force_splits
        self.sdtype = sdtype
        plan = (_i * 3)()
        nw = _lib.tq_plan(B, Hq, Hkv, qL, kL, D, DT[sdtype], int(low_precision), force_splits, plan)
        if nw < 0:
            raise ValueError(f"qL = {qL}: the decode kernels take at most 8 queries")
        self.splits, self.tc, self.nq = plan[0], bool(plan[1]), plan[2]
        self.work = torch.empty(max(nw, 1), dtype=torch.float32, device=device)
        self.mask = mask
        self.sinks = sinks
        if mask is not None:
            m = mask.expand(B, Hq, qL, kL)
            self.mask_t = mask
            self.mstr = (ctypes.c_longlong * 4)(*m.stride())
            self.mask_kind = 1 if mask.dtype == torch.bool else 2
        else:
            self.mask_t = None
            self.mstr = None
            self.mask_kind = 0

    def __call__(self, q, kc, ks, vc, vs, out=None):
        B, Hq, Hkv, qL, kL, D = self.args
        if ks.dtype != self.sdtype:
            raise ValueError(f"planned for {self.sdtype} scales, got {ks.dtype}")
        if out is None:
            out = torch.empty((B, Hq, qL, D), dtype=torch.float32, device=q.device)
        rc = _lib.tq_attention(
            _ptr(q),
            _ptr(kc),
            _ptr(ks),
            _ptr(vc),
            _ptr(vs),
            _ptr(self.mask_t),
            ctypes.cast(self.mstr, ctypes.c_void_p) if self.mstr is not None else None,
            _ptr(self.sinks),
            _ptr(out),
            _ptr(self.work),
            B,
            Hq,
            Hkv,
            qL,
            kL,
            D,
            self.kbits,
            self.vbits,
            DT[ks.dtype],
            ctypes.c_float(self.scale),
            int(self.causal),
            self.mask_kind,
            int(self.low_precision),
            self.force_splits,
            _stream(),
        )
        _check(rc, "attention")
        return out


class FusedAttention:
    """The whole fused decode call as MLX makes it with fused_rotation
    (tq_attention_fused): queries as given in the scales' dtype, the output
    rotated back into it; with bias, the exact transforms' key bias
    (key_shift, first_key) and the first token's value in the sink slot (sink
    values); P > 0, the moving key shift's waves. The
    tensor-core kernel prepares the queries itself unless no_kernel_prep (then
    a turbo_attention_prep launch first, as before that change)."""

    def __init__(self, B, Hq, Hkv, kL, D, kbits, vbits, dtype, bias=False, P=0,
                 no_kernel_prep=False, device="cuda"):  # fmt: skip
        self.args = (B, Hq, Hkv, 1, kL, D, kbits, vbits)
        self.dtype, self.P, self.no_kernel_prep = dtype, P, int(no_kernel_prep)
        plan = (_i * 3)()
        nw = _lib.tq_plan(B, Hq, Hkv, 1, kL, D, DT[dtype], 1, 0, plan)
        self.splits, self.tc = plan[0], bool(plan[1])
        rows = B * Hq
        self.work = torch.empty(nw + rows * (2 * D + 1 + 2 * P) + B * Hkv * D + 1,
                                dtype=torch.float32, device=device)  # fmt: skip
        g = torch.Generator(device="cpu").manual_seed(0)
        mk = lambda *s: torch.randn(*s, generator=g).to(device)  # noqa: E731
        self.mu = mk(B, Hkv, D).to(dtype) if bias else None
        self.k0 = mk(B, Hkv, D).to(dtype) if bias else None
        self.sv = mk(B, Hkv, D).to(dtype) if bias else None
        self.waves = (mk(B, Hkv, 2 * P, D) * 0.3) if P else None
        self.freqs = (
            torch.randint(0, 2**31, (B, Hkv, P), dtype=torch.int32, generator=g).to(device)
            if P else None
        )  # fmt: skip
        self.in_kernel = ctypes.c_int(0)

    def __call__(self, q, kc, ks, vc, vs, out):
        B, Hq, Hkv, qL, kL, D, kb, vb = self.args
        rc = _lib.tq_attention_fused(
            _ptr(q), _ptr(kc), _ptr(ks), _ptr(vc), _ptr(vs), None, None, None, _ptr(self.sv), 0,
            _ptr(self.mu), _ptr(self.k0), 0, _ptr(self.waves), _ptr(self.freqs), self.P, 0,
            _ptr(out), _ptr(self.work), B, Hq, Hkv, qL, kL, D, kb, vb, DT[self.dtype],
            DT[self.dtype], ctypes.c_float(D**-0.5), 0, 0, 0, self.no_kernel_prep,
            ctypes.byref(self.in_kernel), _stream(),
        )  # fmt: skip
        _check(rc, "fused attention")
        return out
