"""Planted bugs in the CUDA kernels: each mutation is applied to a copy of
mlx_overlay/mlx/backend/cuda/device, built for the emulator (build.sh with
one head dim) and run through test_emu.py on a filter; the run must fail
(a check, a CUDA error or an emulator error). The unmutated tree passes the
same filters first, so a mutation is caught by the tests, not by the setup.

    python3 tests/cuda/emu/planted_bugs.py [substring of a mutation's name]

Exits 1 if a mutation was missed. Each build takes about 20 s.
"""

import os
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", "..", ".."))
DEVICE = os.path.join(ROOT, "mlx_overlay", "mlx", "backend", "cuda", "device")
TC, SIMT, CODEC, FMT, PLAN, COMBINE = (
    "turboquant_decode_tc.cuh",
    "turboquant_decode.cuh",
    "turboquant_codec.cuh",
    "turboquant_format.cuh",
    "turboquant_plan.cuh",
    "turboquant_combine.cuh",
)
TC_RUN = ("128", "attn tc B=2 Hq=8 Hkv=2 qL=1 kL=777 D=128 k4v3 bfloat16")
SIMT_RUN = ("128", "attn decode B=2 Hq=8 Hkv=2 qL=1 kL=777 D=128 k3v4")
TC_FUSED_RUN = ("128", "attn fused tc B=2 Hq=8 Hkv=2 qL=1 kL=500 D=128")
SIMT_FUSED_RUN = ("128", "attn fused simt B=2 Hq=8 Hkv=2 qL=1 kL=500 D=128")
TC_PREP_RUN = ("128", "attn prepared tc B=2 Hq=8 Hkv=2 qL=1 kL=500 D=128")

# (name, file, old, new, (head dim built, test filter), schedules)
MUT = [
    (
        "tc: tables and queries read before the block's barrier",
        TC,
        "  __syncthreads(); // tables and s_q ready\n",
        "",
        TC_RUN,
        ("reverse",),
    ),
    (
        "tc: a column's score max over 2 of its 8 lanes",
        TC,
        "    for (int off = 4; off < 32; off <<= 1) {\n      mx[0] = fmaxf",
        "    for (int off = 4; off < 8; off <<= 1) {\n      mx[0] = fmaxf",
        TC_RUN,
        ("forward",),
    ),
    (
        "tc: P not transposed (movmatrix) before the V MMA",
        TC,
        "pb[mt][h] = tc_trans(tc_pack2<T>(p0 * pv, p1 * pv));",
        "pb[mt][h] = tc_pack2<T>(p0 * pv, p1 * pv);",
        TC_RUN,
        ("forward",),
    ),
    (
        "tc: Q K^T MMA with the key words of the two k halves swapped",
        TC,
        "            tc_lut(tab, klb, w0, k),\n            tc_lut(tab, klb, w1, k),\n"
        "            tc_lut(tab, klb, w0, k + 1),",
        "            tc_lut(tab, klb, w0, k + 1),\n            tc_lut(tab, klb, w1, k),\n"
        "            tc_lut(tab, klb, w0, k),",
        TC_RUN,
        ("forward",),
    ),
    (
        "tc: the block's row sum from one warp",
        TC,
        "      lsum += s_l[w][r];",
        "      lsum = s_l[w][r];",
        TC_RUN,
        ("forward",),
    ),
    (
        "plan: the tensor-core kernel's shared memory limit not raised",
        PLAN,
        "cudaError_t e = raise_smem_limit<kernel>(smem);",
        "cudaError_t e = cudaSuccess;",
        TC_RUN,
        ("forward",),
    ),
    (
        "simt: a key's dot product summed over half of its lanes",
        SIMT,
        "for (int off = TPK / 2; off > 0; off >>= 1) {\n          d[r] +=",
        "for (int off = TPK / 2; off > 1; off >>= 1) {\n          d[r] +=",
        SIMT_RUN,
        ("forward",),
    ),
    (
        "combine: every split of a group weighted as if its max were the group's",
        COMBINE,
        "const float f = exp2f(w[u].x - ref);",
        "const float f = 1.0f;",
        ("128", "attn fused rot-many B=1 Hq=8 Hkv=2 qL=1 kL=3200 D=128"),
        ("forward",),
    ),
    (
        "combine: a group's running sums not rescaled when a chunk raises its max",
        COMBINE,
        "const float alpha = exp2f(m - ref);",
        "const float alpha = 1.0f;",
        ("128", "attn fused rot-many B=1 Hq=8 Hkv=2 qL=1 kL=3200 D=128"),
        ("forward",),
    ),
    (
        "tc: the moving shift's cos and sin planes swapped in the bias MMA",
        TC,
        "            tc_pack2<__half>(cs[0][0], cs[0][1]),\n"
        "            tc_pack2<__half>(cs[1][0], cs[1][1]),\n"
        "            tc_pack2<__half>(sn[0][0], sn[0][1]),\n"
        "            tc_pack2<__half>(sn[1][0], sn[1][1]),",
        "            tc_pack2<__half>(sn[0][0], sn[0][1]),\n"
        "            tc_pack2<__half>(sn[1][0], sn[1][1]),\n"
        "            tc_pack2<__half>(cs[0][0], cs[0][1]),\n"
        "            tc_pack2<__half>(cs[1][0], cs[1][1]),",
        TC_FUSED_RUN,
        ("forward",),
    ),
    (
        "simt: the moving shift's bias with the key's phase of the wrong plane",
        SIMT,
        "d[r] += cs * s_wc[r][i] + sn * s_wc[r][P + i];",
        "d[r] += cs * s_wc[r][i] + sn * s_wc[r][P + (i + 1) % P];",
        SIMT_FUSED_RUN,
        ("forward",),
    ),
    (
        "sink value added by every split (SIMT kernel)",
        SIMT,
        "if (p.sink_values == nullptr || split != 0) {",
        "if (p.sink_values == nullptr) {",
        SIMT_FUSED_RUN,
        ("forward",),
    ),
    (
        "sink value added by every split (tensor-core kernel)",
        TC,
        "if (split == 0 && p.has_sinks && (p.sink_values || (prep && p.sv_in))) {",
        "if (p.has_sinks && (p.sink_values || (prep && p.sv_in))) {",
        TC_FUSED_RUN,
        ("forward",),
    ),
    (
        "prep: the sink logit's key bias with the wrong sign",
        CODEC,
        "a.row_sinks[v] = (a.sinks ? a.sinks[h] : 0.0f) - a.scale * dot;",
        "a.row_sinks[v] = (a.sinks ? a.sinks[h] : 0.0f) + a.scale * dot;",
        ("128", "prep D=128"),
        ("forward",),
    ),
    (
        "combine: the output rotated back with stage 2's signs (registers)",
        FMT,
        "x[e] = __fmul_rn(x[e], norm * rot_sign(1, E * lane + e));",
        "x[e] = __fmul_rn(x[e], norm * rot_sign(2, E * lane + e));",
        ("128", "attn fused rot B=1 Hq=8 Hkv=2 qL=2 kL=400 D=128 k4v3 float16 P=4 -> bfloat16"),
        ("forward",),
    ),
    (
        "rotate: the inverse rotation's last signs dropped",
        CODEC,
        "o[i] = from_float<TO>(buf[i] * rot_sign(1, i));",
        "o[i] = from_float<TO>(buf[i]);",
        ("128", "attn fused rot B=1 Hq=8 Hkv=2 qL=2 kL=400 D=128 k4v3 float16 P=4 -> float16"),
        ("forward",),
    ),
    (
        "encode: stage-1 signs where stage 2's belong",
        FMT,
        "  warp_fwht<P>(buf, 0, lane);\n  for (int i = lane; i < D; i += 32) {\n"
        "    buf[i] = buf[i] * rot_sign(2, i);",
        "  warp_fwht<P>(buf, 0, lane);\n  for (int i = lane; i < D; i += 32) {\n"
        "    buf[i] = buf[i] * rot_sign(1, i);",
        ("128", "encode D=128 turbo4 float16"),
        ("forward",),
    ),
    (
        "tc prologue: queries read before the rows are rotated",
        TC,
        "      prep_rotate_row<D>(s_sv, svx, lane);\n    }\n    __syncthreads();\n",
        "      prep_rotate_row<D>(s_sv, svx, lane);\n    }\n",
        TC_PREP_RUN,
        ("reverse",),
    ),
    (
        "tc prologue: the moving shift's coefficients of the first kv head",
        TC,
        "p.wave_rows + b * p.wr_b_str + int64_t(hk) * 2 * p.waves * D;",
        "p.wave_rows + b * p.wr_b_str + int64_t(0) * 2 * p.waves * D;",
        TC_PREP_RUN,
        ("forward",),
    ),
    (
        "tc prologue: the key bias's sink logit without the head's sink",
        TC,
        "s_rsink[r] = (sinks ? sinks[br.h] : 0.0f) - p.scale * dot;",
        "s_rsink[r] = -p.scale * dot;",
        TC_PREP_RUN,
        ("forward",),
    ),
    (
        "tc prologue: the sink value used unrotated",
        TC,
        "      prep_rotate_row<D>(s_sv, svx, lane);\n",
        "      for (int j = 0; j < kPrepPerLane<D>; j++) {\n"
        "        s_sv[lane + 32 * j] = svx[j];\n      }\n",
        ("128", "attn prepared sv B=2 Hq=8 Hkv=2 qL=1 kL=400 D=128"),
        ("forward",),
    ),
    (
        "encode: no __syncwarp between the norm and the normalized writes",
        CODEC,
        "  const float n = __fsqrt_rn(seq_sum_squares<D>(buf));\n  __syncwarp();\n",
        "  const float n = __fsqrt_rn(seq_sum_squares<D>(buf));\n",
        ("128", "encode D=128 turbo3 bfloat16"),
        ("forward",),
    ),
    (
        "decode: turbo3 high bit plane read from the wrong word",
        FMT,
        "b = __ldg(vec + D / 16 + (s >> 2)) >> (8 * (s & 3));",
        "b = __ldg(vec + D / 16 + (s >> 1)) >> (8 * (s & 3));",
        ("128", "decode D=128 turbo3"),
        ("forward",),
    ),
]


def build(device_dir, dim, out):
    # -O0: a third of -O1's compile time; the filtered runs take seconds.
    env = dict(os.environ, TQ_EMU_DIMS=dim, TQ_EMU_DEVICE_DIR=device_dir, OPT="-O0")
    r = subprocess.run(
        [os.path.join(HERE, "build.sh"), out], env=env, capture_output=True, text=True
    )
    return r.returncode == 0, r.stdout + r.stderr


def run(lib, filt, order):
    env = dict(os.environ, TQ_EMU_LIB=lib, CUSHIM_ORDER=order)
    r = subprocess.run(
        [sys.executable, os.path.join(HERE, "test_emu.py"), filt],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    out = r.stdout + r.stderr
    ran = "passed" in out or "mshim error" in out or r.returncode != 0
    return r.returncode, out, ran


def last_line(out, *keys):
    lines = [ln for ln in out.splitlines() if any(k in ln for k in keys)]
    return lines[0][:150] if lines else out.strip().splitlines()[-1][:150]


def main():
    only = sys.argv[1] if len(sys.argv) > 1 else ""
    muts = [m for m in MUT if only in m[0]]
    tmp = tempfile.mkdtemp(prefix="tq_planted_")
    missed = []
    try:
        # The unmutated tree passes every run used below.
        ok, log = build(DEVICE, "128", os.path.join(tmp, "base"))
        if not ok:
            print(log)
            sys.exit("the unmutated tree does not build")
        lib = os.path.join(tmp, "base", "libtq_emu.so")
        for run_spec in sorted({(m[4][1], o) for m in muts for o in m[5]}):
            rc, out, _ = run(lib, *run_spec)
            if rc != 0:
                print(out)
                sys.exit(f"the unmutated tree fails {run_spec}")
        for name, f, old, new, (dim, filt), orders in muts:
            src = open(os.path.join(DEVICE, f)).read()
            if src.count(old) != 1:
                print(f"STALE  {name}: the pattern occurs {src.count(old)} times in {f}")
                missed.append(name)
                continue
            mdir = os.path.join(tmp, "device")
            shutil.rmtree(mdir, ignore_errors=True)
            shutil.copytree(DEVICE, mdir)
            with open(os.path.join(mdir, f), "w") as fh:
                fh.write(src.replace(old, new))
            bdir = os.path.join(tmp, "mut")
            ok, log = build(mdir, dim, bdir)
            if not ok:
                print(f"BUILD  {name}: the mutation does not compile (not a runtime bug)")
                missed.append(name)
                continue
            caught = []
            for order in orders:
                rc, out, _ = run(os.path.join(bdir, "libtq_emu.so"), filt, order)
                if rc != 0:
                    caught.append(f"{order}: " + last_line(out, "FAIL", "mshim error"))
            if caught:
                print(f"caught {name} ({caught[0]})", flush=True)
            else:
                print(f"MISSED {name}", flush=True)
                missed.append(name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"{len(muts) - len(missed)}/{len(muts)} planted bugs caught")
    sys.exit(1 if missed else 0)


if __name__ == "__main__":
    main()
