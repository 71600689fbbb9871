"""ctypes binding of tests/cuda/build/libtq.so (the standalone harness build
of mlx_overlay/mlx/backend/cuda/device/turboquant.cuh). Arrays are torch CUDA
tensors."""

import ctypes
import os

import torch

_HERE = os.path.dirname(os.path.abspath(__file__))
_lib = ctypes.CDLL(os.path.join(_HERE, "build", "libtq.so"))

_vp = ctypes.c_void_p
_i = ctypes.c_int
_ll = ctypes.c_longlong
_lib.tq_encode.argtypes = [_vp, _vp, _vp, _ll, _i, _i, _i, _vp]
_lib.tq_decode.argtypes = [_vp, _vp, _vp, _ll, _i, _i, _i, _i, _vp]
_lib.tq_plan.argtypes = [_i] * 9 + [ctypes.POINTER(_i)]
_lib.tq_plan.restype = _ll
_lib.tq_attention.argtypes = [_vp] * 10 + [_i] * 9 + [ctypes.c_float] + [_i] * 4 + [_vp]

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
    packed = torch.empty(
        x.shape[:-1] + (words(bits, d),), dtype=torch.int32, device=x.device
    )
    scales = torch.empty(x.shape[:-1] + (1,), dtype=x.dtype, device=x.device)
    _check(
        _lib.tq_encode(
            _ptr(x), _ptr(packed), _ptr(scales), n, d, bits, DT[x.dtype], _stream()
        ),
        "encode",
    )
    return packed, scales


def decode(packed, scales, bits, d, out_dtype=None, out=None):
    out_dtype = out_dtype or scales.dtype
    n = packed.numel() // packed.shape[-1]
    if out is None:
        out = torch.empty(
            packed.shape[:-1] + (d,), dtype=out_dtype, device=packed.device
        )
    _check(
        _lib.tq_decode(
            _ptr(packed),
            _ptr(scales),
            _ptr(out),
            n,
            d,
            bits,
            DT[scales.dtype],
            DT[out.dtype],
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
        nw = _lib.tq_plan(
            B, Hq, Hkv, qL, kL, D, DT[sdtype], int(low_precision), force_splits, plan
        )
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
