"""One decode call per mode (B=1, Hq=32, Hkv=8, D=128, 128K keys) for ncu."""

import math
import torch
import tq_lib

B, Hq, Hkv, D, kL = 1, 32, 8, 128, 131072
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
    att = tq_lib.Attention(B, Hq, Hkv, 1, kL, D, bits, bits, 1 / math.sqrt(D))
    att(q, kc, ks, vc, vs)
    torch.cuda.synchronize()
