"""Decode calls for ncu (run_device.sh --ncu): Hq=32, Hkv=8, D=128, 128K keys,
float16 scales; the tensor-core kernel at B=1 and B=8 and the SIMT kernel at
B=1, turbo4 then turbo3, each with its split-K combine where it splits."""

import math

import torch
import tq_lib

Hq, Hkv, D, kL = 32, 8, 128, 131072
for B, tc in ((1, True), (8, True), (1, False)):
    for bits in (4, 3):
        w = tq_lib.words(bits, D)
        kc = torch.randint(
            -(2**31), 2**31 - 1, (B, Hkv, kL, w), dtype=torch.int32, device="cuda"
        )
        vc = torch.randint(
            -(2**31), 2**31 - 1, (B, Hkv, kL, w), dtype=torch.int32, device="cuda"
        )
        ks = torch.rand(B, Hkv, kL, 1, device="cuda").half()
        vs = torch.rand(B, Hkv, kL, 1, device="cuda").half()
        q = torch.randn(B, Hq, 1, D, device="cuda")
        att = tq_lib.Attention(
            B, Hq, Hkv, 1, kL, D, bits, bits, 1 / math.sqrt(D), low_precision=tc
        )
        att(q, kc, ks, vc, vs)
        torch.cuda.synchronize()
        print(f"B={B} tc={tc} turbo{bits}", flush=True)
