// Copyright © 2026 TurboQuant-MLX contributors.
//
// Decode attention on tensor cores: turbo_sdpa_vector_tc (mma.sync with
// fp16/bf16 operands, fp32 accumulation), the kernel MLX uses for
// fp16/bf16 queries and scales.

#pragma once

#include "mlx/backend/cuda/device/turboquant_decode.cuh"
#include "mlx/backend/cuda/device/turboquant_tc_ops.cuh"

namespace mlx::core::cu::turbo {

// ---------------------------------------------------------------------------
// Vector (decode) attention on tensor cores: turbo_sdpa_vector_tc
// ---------------------------------------------------------------------------
//
// Same arguments, grid (splits, Hkv * row_groups, B), partial format and
// semantics as turbo_sdpa_vector, for float16 / bfloat16 scales (T) and
// D = 64, 128, 256. A block is kVecTcWarps warps; each warp owns every
// kVecTcWarps-th run of KT keys of the block's split and keeps its own online
// softmax state; the warps are merged through shared memory at the end.
//
// Per warp and KT keys jb .. jb + KT - 1 (NT = KT / 8), with mma.sync
// m16n8k16 (T operands, fp32 accumulate), keys as M and the block's 8 rows
// (query heads of the group x positions) as N, so no half of an MMA is
// padding:
//   S^T = K Q^T   A = 16 key slots x 16 dims: slots g and g + 8 of m-tile mt
//                 are keys jb + NT g + 2 mt and + 1, so lane (g, t) owns the
//                 NT consecutive keys jb + NT g + j (one row address, one
//                 vector load of their scales). B = Q^T (registers, once per
//                 block). Dims are permuted (the dot product does not care):
//                 in k-step s, the entry (slot, k = 2 t + 8 r + h) of lane
//                 (g, t) is dim (D/4) t + 4 s + 2 r + h, so lane (g, t) reads
//                 the D/4 consecutive codes [(D/4) t, (D/4) t + D/4) of each
//                 of its keys: one 16-byte load for turbo4 at D = 128. C:
//                 lane (g, t) has the scores of its keys for rows 2 t, 2 t + 1
//                 (its "columns").
//   O^T += V^T P^T   A = 16 output dims x 16 key slots, B = P^T: the C
//                 fragments of S^T times the value scales, converted to T and
//                 transposed by movmatrix (FlashAttention-2 style, on the
//                 transposed problem), so key slots 2 t, 2 t + 1 (+ 8) of
//                 m-tile mt are keys jb + NT (2 t + u % 2) + 2 mt + u / 2 (u =
//                 0 .. 3): lane (g, t) reads the 2 NT consecutive keys jb +
//                 2 NT t ... Row r of m-tile i is dim (D/8) (r % 8) + 2 i +
//                 r / 8, so the lane reads the D/8 consecutive codes
//                 [(D/8) g, (D/8) g + D/8) of each.
// Codes become operands through shared tables mapping a byte to the packed
// pair (c[first], c[second]) in T: entry e is the 256-byte row e, 32 copies
// of the key table's entry (word 64 e + l for lane l: no bank conflicts),
// then 32 of the value table's, so one PRMT puts the byte and the lane's
// offset into the address (tc_lut). turbo4: the byte is two 4-bit codes, low
// nibble first. turbo3 keys: the byte is built straight from the bit planes,
// lo2(a) | lo2(a+1) << 2 | hi(a) << 4 | hi(a+1) << 5 (the pairing of dims
// this gives is folded into the Q fragments, tc_kdim). For V^T P^T the byte
// pairs two keys at one dim: turbo4 from the two keys' nibble words with bit
// operations, turbo3 straight from their planes (TcCodes::vpair). turbo3
// bytes leave two bits as they fall, which the tables ignore (tc_kentry,
// tc_ventry). The key scale multiplies the fp32 score; the value scale is
// folded into p before the conversion to T. Rows are packed and scales
// unit-stride (vector_tc_layout), so a full iteration's loads are immediate
// offsets from one row address per operand; the last, partial one clamps
// each row into the split. Every warp runs the block's iteration count (a
// warp past the split's end has its keys masked), so the loop's control
// flow is uniform and its invariants (the table's base) stay in uniform
// registers. The prologue overlaps its latencies: the block's query rows are
// read with coalesced 16-byte loads (staged in shared memory, s_q) and the
// first iteration's codes are requested before the tables are built. With
// p.q_in (fused_rotation, decode_preps_in_kernel) the rows are the queries
// as given, and each warp prepares two of them as turbo_attention_prep
// would, with the same helpers: their moving-shift coefficients (s_coef)
// and, in split 0, their key-bias sink logits (s_rsink), then the row
// rotated in place in s_q; in split 0 warp 0 also rotates the kv head's
// sink value (p.sv_in) into s_sv for the merge.
//
// Range guards (fp16 has 5 exponent bits): each query row is multiplied by a
// power of two 2^e_q so that its largest |q * scale * log2 e| lies in
// [2^13, 2^14) (undone exactly on the fp32 score); and, for T = __half, p *
// value_scale is multiplied by 2^-e_v, where e_v follows the exponent of the
// largest |value scale| of the current KT keys with hysteresis (e_v changes
// when that exponent leaves [e_v - 8, e_v + 4]; the fp32 accumulator is then
// multiplied by the exact power of two), so the fp16 P operand stays below 32
// and its largest entries stay normal. bfloat16 has the float32 range and
// needs no P guard.

constexpr int kVecTcWarps = 4;
constexpr int kVecTcThreads = 32 * kVecTcWarps;

// Tuning knobs for experiments on the device (e.g. NVCC_APPEND_FLAGS=
// "-DTQ_VTC_MIN_BLOCKS=2" bash tests/cuda/build.sh): the resident blocks
// per SM the registers are bounded for, and value codes prefetched one
// iteration ahead up to TQ_VTC_PREFETCH_V_MAX_D.
//
// Resident blocks per SM the kernel is compiled for (__launch_bounds__;
// plan_decode sizes the split-K count with it): 3 up to D = 128 (at most 168
// registers; ptxas, sm_90a: 16 and 52 bytes of spill loads in two masked
// bf16 D = 128 instantiations, none in the others), 2 at D = 256 (223-235
// registers, no spills).
__host__ __device__ constexpr int vec_tc_blocks_per_sm(int d) {
#ifdef TQ_VTC_MIN_BLOCKS
  return TQ_VTC_MIN_BLOCKS;
#else
  return d <= 128 ? 3 : 2;
#endif
}
#define TQ_VTC_LAUNCH_BOUNDS \
  __launch_bounds__(kVecTcThreads, vec_tc_blocks_per_sm(D))
#ifndef TQ_VTC_PREFETCH_V_MAX_D
#define TQ_VTC_PREFETCH_V_MAX_D 128
#endif

// Keys per warp iteration (64 keys at D = 64 spill at 255 registers).
__host__ __device__ constexpr int vec_tc_keys(int d) {
  return d <= 128 ? 32 : 16;
}
// The key and value tables map every byte (kVecTcLutEntries entries; turbo3
// indices leave two bits unused, tc_kentry / tc_ventry); one serves both
// when both modes are turbo4.
constexpr int kVecTcLutEntries = 256;
__host__ __device__ constexpr bool vec_tc_shared_lut(int kb, int vb) {
  return kb == 4 && vb == 4;
}
// Row stride (floats) of the merge buffer: 8 blocks of D/8 + 1 (padding
// against bank conflicts of the fragment-ordered stores).
__host__ __device__ constexpr int vec_tc_ldo(int d) {
  return 8 * (d / 8 + 1);
}
// Dynamic shared memory of turbo_sdpa_vector_tc<KB, VB, D, ...> in bytes
// (the tables, later reused for the merge of the warps): 256 bytes per
// entry, the key table's 32 copies then the value table's.
__host__ __device__ constexpr int vec_tc_smem_bytes(int kb, int vb, int d) {
  int lut = 256 * kVecTcLutEntries;
  int merge = 4 * kVecTcWarps * 8 * vec_tc_ldo(d);
  return lut > merge ? lut : merge;
}
// Head dims the tensor-core decode kernel supports (others keep
// turbo_sdpa_vector); scales must be float16 or bfloat16.
__host__ __device__ constexpr bool vector_tc_supported(int d) {
  return d == 64 || d == 128 || d == 256;
}

template <int KB, int VB, int D, int NQ, bool MASKED, typename T>
__global__ void TQ_VTC_LAUNCH_BOUNDS turbo_sdpa_vector_tc(
    const float* __restrict__ q,
    const uint32_t* __restrict__ kc,
    const T* __restrict__ ks,
    const uint32_t* __restrict__ vc,
    const T* __restrict__ vs,
    const void* __restrict__ mask,
    const float* __restrict__ sinks,
    float* __restrict__ out,
    float* __restrict__ part_o, // (splits, B*Hq*qL, D)
    float* __restrict__ part_ml, // (splits, B*Hq*qL, 2)
    const AttnParams p) {
  static_assert(vector_tc_supported(D), "D must be 64, 128 or 256");
  static_assert(NQ == 8, "8 rows per block (the MMAs' N)");
  static_assert(
      std::is_same_v<T, __half> || std::is_same_v<T, __nv_bfloat16>,
      "float16 or bfloat16 scales");
  constexpr bool kHalf = std::is_same_v<T, __half>;
  constexpr int KT = vec_tc_keys(D); // keys per warp iteration
  constexpr int NT = KT / 8; // keys of a lane: jb + NT g + j, j < NT
  constexpr int MT = KT / 16; // S^T m-tiles = V^T P^T k-tiles (16 keys each)
  constexpr int KS = D / 16; // Q K^T k-steps
  constexpr int DM = D / 16; // O^T m-tiles (16 output dims each)
  constexpr int KCPT = D / 4; // key coordinates per lane
  constexpr int VCPT = D / 8; // value coordinates per lane
  constexpr int KNW = KCPT / 8;
  constexpr int VNW = VCPT / 8;
  constexpr int KW = packed_words(KB, D); // words per key (value) row
  constexpr int VW = packed_words(VB, D);
  constexpr bool kShareLut = vec_tc_shared_lut(KB, VB);
  constexpr int LDO = vec_tc_ldo(D);
  // The value codes of the next iteration load with the key codes (D <= 128);
  // at D = 256 (registers) they load at the start of their own iteration,
  // ahead of the Q K^T MMAs and the softmax.
  constexpr bool kPrefetchV = D <= TQ_VTC_PREFETCH_V_MAX_D;

  extern __shared__ __align__(16) uint32_t tq_vtc_smem[];
  __shared__ float s_cb[2][16];
  __shared__ float s_m[kVecTcWarps][8];
  __shared__ float s_l[kVecTcWarps][8];
  // The moving key shift: the coefficients as float16 B fragments (k-step w
  // = planes 8 w .. 8 w + 7, row g, lane t) and the frequencies.
  __shared__ uint2 s_wa[kMaxKeyWaves / 8][8][4];
  __shared__ uint32_t s_wf[kMaxKeyWaves];
  // Tables: entry e of lane l at word 64 e + l (key) and 64 e + 32 + l
  // (value; the key table when the two are the same).
  const uint32_t tab =
      static_cast<uint32_t>(__cvta_generic_to_shared(tq_vtc_smem));
  float* s_o = reinterpret_cast<float*>(tq_vtc_smem); // after the loop

  const int tid = threadIdx.x;
  const int lane = tid & 31;
  const int warp = tid >> 5;
  const int g = lane >> 2; // MMA groupID
  const int t = lane & 3; // MMA thread in group
  const int split = blockIdx.x;
  const int hk = blockIdx.y / p.row_groups;
  const int rg = blockIdx.y % p.row_groups;
  const int b = blockIdx.z;
  const int nrows = p.gqa * p.qL;

  // Row r of the block (query heads of the group x positions): whether it
  // exists, its query head and position (row 0's where it does not).
  struct BlockRow {
    bool ok;
    int h;
    int q;
  };
  auto block_row = [&](int r) {
    const int row = rg * NQ + r;
    const int rr = row < nrows ? row : 0;
    return BlockRow{row < nrows, hk * p.gqa + rr / p.qL, rr % p.qL};
  };
  // Row g (the B fragments of Q^T and of the moving shift's coefficients)
  // and this lane's S^T columns, rows 2 t and 2 t + 1.
  const BlockRow row_g = block_row(g);
  const BlockRow col[2] = {block_row(2 * t), block_row(2 * t + 1)};

  // The block's query rows load first, coalesced (16-byte loads of whole
  // rows; rows past the group are zeros), and go to shared memory once the
  // tables are built; each lane reads its B fragments from there.
  constexpr int kQVec = NQ * D / 4 / kVecTcThreads; // float4 per thread
  static_assert(NQ * D / 4 % kVecTcThreads == 0, "whole float4 per thread");
  __shared__ __align__(16) float s_q[NQ][D];
  // With the preparation in the kernel (p.q_in), the rows as given (T),
  // rotated in shared memory below.
  __shared__ float s_coef[NQ][2 * kMaxKeyWaves];
  __shared__ float s_rsink[NQ];
  __shared__ float s_sv[D]; // the kv head's sink value, rotated (split 0)
  const bool prep = p.q_in != nullptr; // uniform
  float4 qv[kQVec];
  {
    const void* qb = prep ? p.q_in : static_cast<const void*>(q);
    const int qa = prep ? 8 : 16; // bytes of 4 coordinates
    const bool qal = (reinterpret_cast<uintptr_t>(qb) % qa == 0) &&
        p.q_str[0] % 4 == 0 && p.q_str[1] % 4 == 0 && p.q_str[2] % 4 == 0;
#pragma unroll
    for (int i = 0; i < kQVec; i++) {
      const int x = tid + i * kVecTcThreads;
      const BlockRow br = block_row(x / (D / 4));
      const int64_t off = b * p.q_str[0] + br.h * p.q_str[1] +
          br.q * p.q_str[2] + 4 * (x % (D / 4));
      if (!br.ok) {
        qv[i] = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
      } else if (prep) {
        const T* qr = static_cast<const T*>(p.q_in) + off;
        T e[4];
        if (qal) {
          const uint2 w = __ldg(reinterpret_cast<const uint2*>(qr));
          memcpy(e, &w, sizeof(w));
        } else {
#pragma unroll
          for (int c = 0; c < 4; c++) {
            e[c] = qr[c];
          }
        }
        qv[i] = make_float4(
            to_float(e[0]), to_float(e[1]), to_float(e[2]), to_float(e[3]));
      } else if (qal) {
        qv[i] = __ldg(reinterpret_cast<const float4*>(q + off));
      } else {
        const float* qr = q + off;
        qv[i] = make_float4(qr[0], qr[1], qr[2], qr[3]);
      }
    }
  }

  // The first iteration's codes and scales load while the block builds its
  // tables and query fragments.
  const int k_begin = split * p.keys_per_split;
  const int k_end = min(p.kL, k_begin + p.keys_per_split);
  // Rows are packed and scales unit-stride (vector_tc_layout).
  const uint32_t* kbase = kc + b * p.k_str[0] + hk * p.k_str[1];
  const uint32_t* vbase = vc + b * p.v_str[0] + hk * p.v_str[1];
  const T* ksb = ks + b * p.ks_str[0] + hk * p.ks_str[1];
  const T* vsb = vs + b * p.vs_str[0] + hk * p.vs_str[1];
  // Vector loads need every row 16-byte aligned, and the scales of a lane's
  // NT keys 2 NT-byte aligned (k_begin is a multiple of KT, plan_decode).
  const bool kal =
      ((reinterpret_cast<uintptr_t>(kbase) & 15) == 0) && (KW % 4 == 0);
  const bool val =
      ((reinterpret_cast<uintptr_t>(vbase) & 15) == 0) && (VW % 4 == 0);
  const bool sal = ((reinterpret_cast<uintptr_t>(ksb) % (2 * NT)) == 0) &&
      ((reinterpret_cast<uintptr_t>(vsb) % (2 * NT)) == 0) &&
      (k_begin % NT == 0);
  const uint32_t klb = 4 * lane;
  const uint32_t vlb = kShareLut ? klb : 128 + klb;

  // Codes and scales of one warp iteration (keys jb .. jb + KT - 1): K and
  // both scales of the NT consecutive keys jb + NT g + j (the lane's S^T
  // rows), V of keys jb + NT (2 t + u % 2) + 2 mt + u / 2 (its P V
  // A fragments: keys 2 NT t .. 2 NT t + 2 NT - 1 of the iteration). Rows
  // are packed (vector_tc_layout), so a full iteration's loads are
  // immediate offsets from one row address per operand; the last, partial
  // one clamps each row into the split.
  TcCodes<KB, D, KCPT> kn[NT];
  TcCodes<VB, D, VCPT> vn[MT][4];
  T ksn[NT], vsn[NT];
  auto load_v = [&](int jb, TcCodes<VB, D, VCPT>(&dst)[MT][4]) {
    const int j0 = jb + 2 * NT * t;
    const bool full = jb + KT <= k_end;
    const uint32_t* vr = vbase + j0 * VW;
#pragma unroll
    for (int mt = 0; mt < MT; mt++) {
#pragma unroll
      for (int u = 0; u < 4; u++) {
        const int o = NT * (u & 1) + 2 * mt + (u >> 1);
        if (full) {
          dst[mt][u].load(vr + o * VW, g, val);
        } else {
          const int jv = j0 + o < k_end ? j0 + o : k_begin;
          dst[mt][u].load(vbase + jv * VW, g, val);
        }
      }
    }
  };
  auto load = [&](int jb) {
    const int j0 = jb + NT * g;
    if (jb + KT <= k_end) {
      const uint32_t* kr = kbase + j0 * KW;
#pragma unroll
      for (int j = 0; j < NT; j++) {
        kn[j].load(kr + j * KW, t, kal);
      }
      tc_ld_scales(ksb + j0, ksn, sal);
      tc_ld_scales(vsb + j0, vsn, sal);
    } else {
#pragma unroll
      for (int j = 0; j < NT; j++) {
        const int jk = j0 + j < k_end ? j0 + j : k_begin;
        kn[j].load(kbase + jk * KW, t, kal);
        ksn[j] = ksb[jk];
        vsn[j] = vsb[jk];
      }
    }
    if constexpr (kPrefetchV) {
      load_v(jb, vn);
    }
  };

  constexpr int kStep = kVecTcWarps * KT;
  const int jb0 = k_begin + warp * KT;
  // Every warp runs the block's iteration count (a warp past k_end has all
  // its keys masked), so the loop's control flow is uniform in the block and
  // loop invariants such as the table address stay in uniform registers.
  const int iters = (k_end - k_begin + kStep - 1) / kStep;
  if (iters > 0) {
    load(jb0);
  }

  if (tid < 16) {
    s_cb[0][tid] = centroid(KB, tid & ((1 << KB) - 1));
    s_cb[1][tid] = centroid(VB, tid & ((1 << VB) - 1));
  }
  __syncthreads();
  // Tables: uint4 f of a half holds copies 4 (f % 8).. of entry f / 8.
  uint4* tab4 = reinterpret_cast<uint4*>(tq_vtc_smem);
  for (int f = tid; f < 8 * kVecTcLutEntries; f += kVecTcThreads) {
    const int e = f >> 3;
    const int2 kc = tc_kentry(KB, e);
    const uint32_t kv = tc_pack2<T>(s_cb[0][kc.x], s_cb[0][kc.y]);
    tab4[16 * e + (f & 7)] = make_uint4(kv, kv, kv, kv);
    if constexpr (!kShareLut) {
      const int2 vc = tc_ventry(VB, e);
      const uint32_t vv = tc_pack2<T>(s_cb[1][vc.x], s_cb[1][vc.y]);
      tab4[16 * e + 8 + (f & 7)] = make_uint4(vv, vv, vv, vv);
    }
  }

#pragma unroll
  for (int i = 0; i < kQVec; i++) {
    const int x = tid + i * kVecTcThreads;
    reinterpret_cast<float4*>(&s_q[0][0])[x] = qv[i];
  }
  if (prep) {
    // Warp w prepares rows 2 w and 2 w + 1 as turbo_attention_prep does:
    // the moving shift's coefficients and the sink logit from the row as
    // given, then the row rotated in place (y = R x).
    static_assert(NQ == 2 * kVecTcWarps, "two rows per warp");
    __syncthreads();
#pragma unroll 1
    for (int rr = 0; rr < 2; rr++) {
      const int r = 2 * warp + rr;
      const BlockRow br = block_row(r);
      if (!br.ok) { // rows past the group stay zero
        continue;
      }
      float* row = s_q[r];
      float qp[kPrepPerLane<D>];
#pragma unroll
      for (int j = 0; j < kPrepPerLane<D>; j++) {
        qp[j] = row[lane + 32 * j];
      }
      if (p.waves > 0) {
        const float* w =
            p.wave_rows + b * p.wr_b_str + int64_t(hk) * 2 * p.waves * D;
        prep_wave_coefs<D>(
            qp, w, 2 * p.waves, p.scale_log2, lane, [&](int i, float c) {
              s_coef[r][i] = c;
            });
      }
      if (p.row_bias && split == 0) {
        const int64_t kv_row = int64_t(hk) * D;
        const T* mu = p.key_shift
            ? static_cast<const T*>(p.key_shift) + b * p.ksh_b_str + kv_row
            : nullptr;
        const T* k0 = p.first_key
            ? static_cast<const T*>(p.first_key) + b * p.fk_b_str + kv_row
            : nullptr;
        const float dot = prep_bias_dot<D>(qp, mu, k0, lane);
        if (lane == 0) {
          s_rsink[r] = (sinks ? sinks[br.h] : 0.0f) - p.scale * dot;
        }
      }
      prep_rotate_row<D>(row, qp, lane);
    }
    if (p.sv_in && split == 0 && warp == 0) {
      // The sink value of the kv head (the exact first token's), rotated.
      const T* sv =
          static_cast<const T*>(p.sv_in) + b * p.sv_b_str + int64_t(hk) * D;
      float svx[kPrepPerLane<D>];
#pragma unroll
      for (int j = 0; j < kPrepPerLane<D>; j++) {
        svx[j] = to_float(sv[lane + 32 * j]);
      }
      prep_rotate_row<D>(s_sv, svx, lane);
    }
    __syncthreads();
  }

  // The moving key shift's bias is one more m16n8k16 product per m-tile and
  // 8 planes, in float16 (phases in [-1, 1] as A; the coefficients as B,
  // scaled by a power of two per row as the queries are): k = 2t, 2t+1 are
  // the cos planes 8 w + 2t, 8 w + 2t + 1 and k = 2t+8, 2t+9 their sin
  // planes.
  const int P = p.waves;
  const int nw = (P + 7) / 8;
  float c_unscale[2] = {0.0f, 0.0f};
  if (P > 0) {
    // Entry x of k-step w of lane (g, t)'s B fragment: cos (x < 2) or sin
    // coefficient of plane 8 w + 2 t + x % 2 of row g.
    const float* cr = prep ? s_coef[g] : wave_coef_row(p, b, row_g.h, row_g.q);
    auto coef = [&](int w, int x) {
      const int i = 8 * w + 2 * t + (x & 1);
      return row_g.ok && i < P ? cr[(x >> 1) * P + i] : 0.0f;
    };
    float cmax = 0.0f;
    for (int w = 0; w < nw; w++) {
#pragma unroll
      for (int x = 0; x < 4; x++) {
        cmax = fmaxf(cmax, fabsf(coef(w, x)));
      }
    }
    const int ec = tc_row_exponent(cmax);
    const float cs = tc_pow2(ec);
#pragma unroll
    for (int r = 0; r < 2; r++) {
      c_unscale[r] = tc_pow2(-__shfl_sync(0xffffffffu, ec, 8 * t + 4 * r));
    }
    if (warp == 0) {
      for (int w = 0; w < nw; w++) {
        float c[4];
#pragma unroll
        for (int x = 0; x < 4; x++) {
          c[x] = coef(w, x) * cs;
        }
        s_wa[w][g][t] = make_uint2(
            tc_pack2<__half>(c[0], c[1]), tc_pack2<__half>(c[2], c[3]));
      }
    }
    if (tid < 8 * nw) {
      s_wf[tid] = tid < P ? p.wave_freqs[b * p.wf_b_str + hk * P + tid] : 0u;
    }
  }

  // O^T m-tile i: o[i][2 c + r] is dim (D/8) g + 2 i + c of row 2 t + r.
  float o[DM][4];
#pragma unroll
  for (int i = 0; i < DM; i++) {
#pragma unroll
    for (int x = 0; x < 4; x++) {
      o[i][x] = 0.0f;
    }
  }
  float m_r[2] = {-INFINITY, -INFINITY}; // same in the 8 lanes of a column
  float l_r[2] = {0.0f, 0.0f}; // partial over the lane's keys
  int ev = 0; // T = __half: o is in units of 2^ev (P guard); warp-uniform
  if (p.has_sinks && split == 0 && warp == 0) {
#pragma unroll
    for (int r = 0; r < 2; r++) {
      if (col[r].ok) {
        m_r[r] = kLog2e *
            (prep && p.row_bias ? s_rsink[2 * t + r]
                                : sink_logit(p, sinks, b, col[r].h, col[r].q));
        l_r[r] = g == 0 ? 1.0f : 0.0f;
      }
    }
  }
  __syncthreads(); // tables and s_q ready

  // Query row g (from s_q) as the B fragments of Q^T: lane (g, t) holds
  // dims [(D/4) t, (D/4) t + D/4) of row g; k-step s pairs the dims of key
  // pairs 2 s (b0) and 2 s + 1 (b1), see tc_kdim. Each row is scaled by its
  // power of two; lane (g, t) keeps the factors of its columns.
  uint32_t qb[KS][2];
  float q_unscale[2]; // 2^-e_q of rows 2 t, 2 t + 1
  {
    float qf[KCPT];
    const float4* qr = reinterpret_cast<const float4*>(&s_q[g][KCPT * t]);
    float qmax = 0.0f;
#pragma unroll
    for (int c = 0; c < KCPT / 4; c++) {
      const float4 v = qr[c];
      qf[4 * c] = v.x * p.scale_log2;
      qf[4 * c + 1] = v.y * p.scale_log2;
      qf[4 * c + 2] = v.z * p.scale_log2;
      qf[4 * c + 3] = v.w * p.scale_log2;
    }
#pragma unroll
    for (int c = 0; c < KCPT; c++) {
      qmax = fmaxf(qmax, fabsf(qf[c]));
    }
    const int eq = tc_row_exponent(qmax);
    const float qs = tc_pow2(eq);
#pragma unroll
    for (int s = 0; s < KS; s++) {
      const int d0 = tc_kdim(KB, 2 * s);
      const int d1 = tc_kdim(KB, 2 * s + 1);
      qb[s][0] = tc_pack2<T>(qf[d0] * qs, qf[d0 + 1] * qs);
      qb[s][1] = tc_pack2<T>(qf[d1] * qs, qf[d1 + 1] * qs);
    }
#pragma unroll
    for (int r = 0; r < 2; r++) {
      q_unscale[r] = tc_pow2(-__shfl_sync(0xffffffffu, eq, 8 * t + 4 * r));
    }
  }

  for (int it = 0; it < iters; it++) {
    const int jb = jb0 + it * kStep;
    uint32_t knib[NT][KNW];
    TcCodes<VB, D, VCPT> vcur[MT][4];
    float ksc[NT], vsc[NT];
    if constexpr (kPrefetchV) {
#pragma unroll
      for (int mt = 0; mt < MT; mt++) {
#pragma unroll
        for (int u = 0; u < 4; u++) {
          vcur[mt][u] = vn[mt][u];
        }
      }
    } else {
      load_v(jb, vcur);
    }
#pragma unroll
    for (int j = 0; j < NT; j++) {
      kn[j].kwords(knib[j], t);
      ksc[j] = to_float(ksn[j]);
      vsc[j] = to_float(vsn[j]);
    }
    if (it + 1 < iters) {
      load(jb + kStep);
    }

    // S^T = K Q^T (log2 domain, scaled rows): m-tile mt holds the lane's
    // keys jb + NT g + 2 mt (x = 0, 1) and + 1 (x = 2, 3), rows 2 t + x % 2.
    float s[MT][4];
#pragma unroll
    for (int mt = 0; mt < MT; mt++) {
#pragma unroll
      for (int x = 0; x < 4; x++) {
        s[mt][x] = 0.0f;
      }
    }
#pragma unroll
    for (int st = 0; st < KS; st++) {
#pragma unroll
      for (int mt = 0; mt < MT; mt++) {
        const uint32_t w0 = knib[2 * mt][st >> 1];
        const uint32_t w1 = knib[2 * mt + 1][st >> 1];
        const int k = 2 * (st & 1);
        tc_mma<T>(
            s[mt],
            tc_lut(tab, klb, w0, k),
            tc_lut(tab, klb, w1, k),
            tc_lut(tab, klb, w0, k + 1),
            tc_lut(tab, klb, w1, k + 1),
            qb[st][0],
            qb[st][1]);
      }
    }

    // The moving key shift's bias of the same scores.
    float sb[MT][4];
#pragma unroll
    for (int mt = 0; mt < MT; mt++) {
#pragma unroll
      for (int x = 0; x < 4; x++) {
        sb[mt][x] = 0.0f;
      }
    }
    for (int w = 0; w < nw; w++) {
      const uint2 cf = s_wa[w][g][t];
      const uint32_t f0 = s_wf[8 * w + 2 * t];
      const uint32_t f1 = s_wf[8 * w + 2 * t + 1];
#pragma unroll
      for (int mt = 0; mt < MT; mt++) {
        float sn[2][2], cs[2][2]; // [slot g, g + 8][plane]
#pragma unroll
        for (int h = 0; h < 2; h++) {
          const int j = jb + NT * g + 2 * mt + h;
          key_wave_sincos(f0, j, sn[h][0], cs[h][0]);
          key_wave_sincos(f1, j, sn[h][1], cs[h][1]);
        }
        tc_mma<__half>(
            sb[mt],
            tc_pack2<__half>(cs[0][0], cs[0][1]),
            tc_pack2<__half>(cs[1][0], cs[1][1]),
            tc_pack2<__half>(sn[0][0], sn[0][1]),
            tc_pack2<__half>(sn[1][0], sn[1][1]),
            cf.x,
            cf.y);
      }
    }

    // Scores; online softmax per column (row 2 t + r) over the warp's keys.
    float mx[2] = {m_r[0], m_r[1]};
#pragma unroll
    for (int mt = 0; mt < MT; mt++) {
#pragma unroll
      for (int x = 0; x < 4; x++) {
        const int r = x & 1;
        const int j = 2 * mt + (x >> 1);
        const int jj = jb + NT * g + j;
        float sc = s[mt][x] * q_unscale[r] * ksc[j] + sb[mt][x] * c_unscale[r];
        if (jj < k_end) {
          if constexpr (MASKED) {
            sc = apply_mask(sc, p, mask, b, col[r].h, col[r].q, jj);
          }
        } else {
          sc = -INFINITY;
        }
        s[mt][x] = sc;
        mx[r] = fmaxf(mx[r], sc);
      }
    }
    // The columns' maxima over their 8 lanes and, for T = __half, the
    // largest |value scale| of the warp's keys: the three reductions
    // interleave, then one branch rescales the rows whose maximum moved.
    float vmax = 0.0f;
    if constexpr (kHalf) {
#pragma unroll
      for (int j = 0; j < NT; j++) {
        vmax = fmaxf(vmax, fabsf(vsc[j]));
      }
    }
#pragma unroll
    for (int off = 4; off < 32; off <<= 1) {
      mx[0] = fmaxf(mx[0], __shfl_xor_sync(0xffffffffu, mx[0], off));
      mx[1] = fmaxf(mx[1], __shfl_xor_sync(0xffffffffu, mx[1], off));
      if constexpr (kHalf) {
        vmax = fmaxf(vmax, __shfl_xor_sync(0xffffffffu, vmax, off));
      }
    }
    const float mref[2] = {safe_max_ref(mx[0]), safe_max_ref(mx[1])};
    if (mx[0] != m_r[0] || mx[1] != m_r[1]) { // uniform in a column; rare
      float alpha[2];
#pragma unroll
      for (int r = 0; r < 2; r++) {
        alpha[r] = mx[r] != m_r[r] ? tc_exp2(m_r[r] - mref[r]) : 1.0f;
        l_r[r] *= alpha[r];
        m_r[r] = mx[r];
      }
#pragma unroll
      for (int i = 0; i < DM; i++) {
#pragma unroll
        for (int x = 0; x < 4; x++) {
          o[i][x] *= alpha[x & 1];
        }
      }
    }
    float vf = 1.0f;
    if constexpr (kHalf) {
      if (vmax > 0.0f && vmax <= FLT_MAX) {
        int e = tc_exponent(vmax);
        if (e > ev + 4 || e < ev - 8) { // uniform in the warp
          float f = tc_pow2(ev - e);
#pragma unroll
          for (int i = 0; i < DM; i++) {
#pragma unroll
            for (int x = 0; x < 4; x++) {
              o[i][x] *= f;
            }
          }
          ev = e;
        }
      }
      vf = tc_pow2(-ev);
    }
    // P^T (times value scale) as B fragments: the C fragment of slots g and
    // g + 8 of m-tile mt, transposed (movmatrix), gives slots 2 t, 2 t + 1
    // (b0) and 2 t + 8, 2 t + 9 (b1) of row g (the keys of load_v).
    uint32_t pb[MT][2];
#pragma unroll
    for (int mt = 0; mt < MT; mt++) {
#pragma unroll
      for (int h = 0; h < 2; h++) {
        const float pv = vsc[2 * mt + h] * vf;
        const float p0 = tc_exp2(s[mt][2 * h] - mref[0]);
        const float p1 = tc_exp2(s[mt][2 * h + 1] - mref[1]);
        l_r[0] += p0;
        l_r[1] += p1;
        pb[mt][h] = tc_trans(tc_pack2<T>(p0 * pv, p1 * pv));
      }
    }

    // O^T += V^T P^T: the A fragment of m-tile i pairs keys (2t, 2t+1) in a0,
    // a1 and (2t+8, 2t+9) in a2, a3, at dims (D/8) g + 2 i (a0, a2) and + 1
    // (a1, a3).
#pragma unroll
    for (int mt = 0; mt < MT; mt++) {
      if constexpr (VB == 4) {
        // Byte m of x (y) pairs the codes of dim 8 w + 2 m (+ 1) of the two
        // keys' nibble word w.
#pragma unroll
        for (int w = 0; w < VNW; w++) {
          const uint32_t wa = vcur[mt][0].raw[w], wb = vcur[mt][1].raw[w];
          const uint32_t wc = vcur[mt][2].raw[w], wd = vcur[mt][3].raw[w];
          const uint32_t xa = (wa & 0x0F0F0F0Fu) | ((wb << 4) & 0xF0F0F0F0u);
          const uint32_t ya = ((wa >> 4) & 0x0F0F0F0Fu) | (wb & 0xF0F0F0F0u);
          const uint32_t xb = (wc & 0x0F0F0F0Fu) | ((wd << 4) & 0xF0F0F0F0u);
          const uint32_t yb = ((wc >> 4) & 0x0F0F0F0Fu) | (wd & 0xF0F0F0F0u);
#pragma unroll
          for (int mm = 0; mm < 4; mm++) {
            tc_mma<T>(
                o[4 * w + mm],
                tc_lut(tab, vlb, xa, mm),
                tc_lut(tab, vlb, ya, mm),
                tc_lut(tab, vlb, xb, mm),
                tc_lut(tab, vlb, yb, mm),
                pb[mt][0],
                pb[mt][1]);
          }
        }
      } else {
        // Byte m of words 2 e, 2 e + 1 of block bb: dims 16 bb + 4 m + 2 e
        // (+ 1), m-tile 8 bb + 2 m + e.
        using VC = TcCodes<VB, D, VCPT>;
        uint32_t rab[VC::NB][4], rcd[VC::NB][4];
        vcur[mt][0].vpair(vcur[mt][1], rab, g);
        vcur[mt][2].vpair(vcur[mt][3], rcd, g);
#pragma unroll
        for (int bb = 0; bb < VC::NB; bb++) {
#pragma unroll
          for (int m = 0; m < (VCPT >= 16 ? 4 : 2); m++) {
#pragma unroll
            for (int e = 0; e < 2; e++) {
              tc_mma<T>(
                  o[8 * bb + 2 * m + e],
                  tc_lut(tab, vlb, rab[bb][2 * e], m),
                  tc_lut(tab, vlb, rab[bb][2 * e + 1], m),
                  tc_lut(tab, vlb, rcd[bb][2 * e], m),
                  tc_lut(tab, vlb, rcd[bb][2 * e + 1], m),
                  pb[mt][0],
                  pb[mt][1]);
            }
          }
        }
      }
    }
  }

  // Merge the warps of the block (the tables are dead after the barrier).
#pragma unroll
  for (int r = 0; r < 2; r++) {
#pragma unroll
    for (int off = 4; off < 32; off <<= 1) {
      l_r[r] += __shfl_xor_sync(0xffffffffu, l_r[r], off);
    }
  }
  if (g == 0) {
    s_m[warp][2 * t] = m_r[0];
    s_m[warp][2 * t + 1] = m_r[1];
  }
  __syncthreads();
#pragma unroll
  for (int r = 0; r < 2; r++) {
    float mb = -INFINITY;
#pragma unroll
    for (int w = 0; w < kVecTcWarps; w++) {
      mb = fmaxf(mb, s_m[w][2 * t + r]);
    }
    const float f = exp2f(m_r[r] - safe_max_ref(mb));
    if (g == 0) {
      s_l[warp][2 * t + r] = l_r[r] * f;
    }
    const float fo = kHalf ? f * tc_pow2(ev) : f;
    float* so = s_o + (warp * 8 + 2 * t + r) * LDO + g * (VCPT + 1);
#pragma unroll
    for (int i = 0; i < DM; i++) {
      so[2 * i] = o[i][r] * fo;
      so[2 * i + 1] = o[i][2 + r] * fo;
    }
  }
  __syncthreads();

  // Thread tid writes kDpt consecutive dims of row r: one chunk of s_o.
  constexpr int kDpt = NQ * D / kVecTcThreads;
  static_assert(VCPT % kDpt == 0, "a thread's dims in one chunk of s_o");
  const int r = tid / (D / kDpt);
  const int d0 = tid % (D / kDpt) * kDpt;
  const BlockRow row_r = block_row(r);
  if (row_r.ok) {
    float lsum = 0.0f;
    float mb = -INFINITY;
#pragma unroll
    for (int w = 0; w < kVecTcWarps; w++) {
      lsum += s_l[w][r];
      mb = fmaxf(mb, s_m[w][r]);
    }
    const int h = row_r.h;
    const int qi = row_r.q;
    const float* so = s_o + r * LDO + (d0 / VCPT) * (VCPT + 1) + d0 % VCPT;
    float acc[kDpt];
#pragma unroll
    for (int i = 0; i < kDpt; i++) {
      acc[i] = 0.0f;
#pragma unroll
      for (int w = 0; w < kVecTcWarps; w++) {
        acc[i] += so[w * 8 * LDO + i];
      }
    }
    // The sink's value (split 0): weight exp2(sink logit - mb) times its
    // rotated row, which the prologue made when the kernel prepares.
    if (split == 0 && p.has_sinks && (p.sink_values || (prep && p.sv_in))) {
      const float sl =
          prep && p.row_bias ? s_rsink[r] : sink_logit(p, sinks, b, h, qi);
      const float w = exp2f(kLog2e * sl - mb);
      const float* sv =
          prep ? s_sv : p.sink_values + b * p.sv_b_str + int64_t(hk) * D;
#pragma unroll
      for (int i = 0; i < kDpt; i++) {
        acc[i] += w * sv[d0 + i];
      }
    }
    if (p.num_splits == 1) {
      float* dst = out + b * p.o_str[0] + h * p.o_str[1] + qi * p.o_str[2] + d0;
#pragma unroll
      for (int i = 0; i < kDpt; i++) {
        dst[i] = acc[i] / lsum;
      }
    } else {
      const int64_t grow = (int64_t(b) * p.Hq + h) * p.qL + qi;
      const int64_t prow = int64_t(split) * p.B * p.Hq * p.qL + grow;
      float4* dst = reinterpret_cast<float4*>(part_o + prow * D + d0);
#pragma unroll
      for (int i = 0; i < kDpt / 4; i++) {
        dst[i] = make_float4(
            acc[4 * i], acc[4 * i + 1], acc[4 * i + 2], acc[4 * i + 3]);
      }
      if (d0 == 0) {
        part_ml[2 * prow] = mb;
        part_ml[2 * prow + 1] = lsum;
      }
    }
  }
}

} // namespace mlx::core::cu::turbo
