// Copyright © 2026 TurboQuant-MLX contributors.
//
// Decode attention on tensor cores: turbo_sdpa_vector_tc (mma.sync with
// fp16/bf16 operands, fp32 accumulation), the kernel MLX uses for
// fp16/bf16 queries and scales.

#pragma once

#include "mlx/backend/cuda/device/turboquant_decode.cuh"

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
// Per warp and KT keys, with mma.sync m16n8k16 (T operands, fp32 accumulate),
// rows (query heads of the group x positions, at most 8 real, 8..15 zero) as M:
//   S = Q K^T   A = Q (registers, once per block), B = 8 keys x 16 dims.
//               Dims are permuted (the dot product does not care): in k-step
//               s, the B operand element (k = 2 t + 8 r + h, n = key g) of
//               lane (g, t) is dim (D/4) t + 4 s + 2 r + h, so lane (g, t)
//               reads the D/4 consecutive codes [(D/4) t, (D/4) t + D/4) of
//               key g: one 16-byte load for turbo4 at D = 128.
//   O += P V    A = P (the C fragments of two S n-tiles, FlashAttention-2
//               style), B = 16 keys x 8 output dims; output column n of
//               n-tile i is dim (D/8) n + i, so lane (g, t) reads the D/8
//               consecutive codes [(D/8) g, (D/8) g + D/8) of keys 2t, 2t+1,
//               2t+8, 2t+9 of the 16.
// Codes become operands through a shared table mapping a byte (two codes) to
// the packed pair (c[first], c[second]) in T, one copy per lane (entry e of
// lane l at word 32 e + l: no bank conflicts). turbo4: the byte is two 4-bit
// codes, low nibble first (256 entries). turbo3 keys: the byte is built
// straight from the bit planes, lo2(a) | lo2(a+1) << 2 | hi(a) << 4 |
// hi(a+1) << 5 (64 entries; the pairing of dims this gives is folded into
// the Q fragments, tc_kdim). turbo3 values: the planes are merged into
// nibble words (as in turbo_sdpa_vector; 128 entries, codes < 8). For P V
// the byte pairs two keys at one dim, built with bit operations from two
// keys' nibble words. The key scale multiplies the fp32 score; the value
// scale is folded into p before the conversion to T.
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
// "-DTQ_VTC_MIN_BLOCKS=3" bash tests/cuda/build.sh). Defaults: no register
// cap (D = 128: 180-238 registers, no spills, 2 blocks per SM; a cap of 168
// for 3 blocks spills 76-324 bytes), and value codes prefetched one
// iteration ahead up to D = 128 (without: 178-218 registers at D = 128).
// (A minimum of 1 block is not the same as none: it changed ptxas's
// register choice, 214 -> 238 at D = 128.)
#ifdef TQ_VTC_MIN_BLOCKS
#define TQ_VTC_LAUNCH_BOUNDS __launch_bounds__(kVecTcThreads, TQ_VTC_MIN_BLOCKS)
#else
#define TQ_VTC_LAUNCH_BOUNDS __launch_bounds__(kVecTcThreads)
#endif
#ifndef TQ_VTC_PREFETCH_V_MAX_D
#define TQ_VTC_PREFETCH_V_MAX_D 128
#endif

// Keys per warp iteration (64 keys at D = 64 spill at 255 registers).
__host__ __device__ constexpr int vec_tc_keys(int d) {
  return d <= 128 ? 32 : 16;
}
// Entries of the key (value) table: 256 nibble pairs for turbo4; for turbo3
// keys 64 plane pairs (tc_kwords), for turbo3 values 128 nibble pairs of
// merged 3-bit codes. One table serves both when both modes are turbo4.
__host__ __device__ constexpr int vec_tc_lut_entries(int bits, bool key) {
  return bits == 4 ? 256 : (key ? 64 : 128);
}
__host__ __device__ constexpr bool vec_tc_shared_lut(int kb, int vb) {
  return kb == 4 && vb == 4;
}
// Row stride (floats) of the merge buffer: 8 blocks of D/8 + 1 (padding
// against bank conflicts of the fragment-ordered stores).
__host__ __device__ constexpr int vec_tc_ldo(int d) {
  return 8 * (d / 8 + 1);
}
// Dynamic shared memory of turbo_sdpa_vector_tc<KB, VB, D, ...> in bytes
// (the tables, later reused for the merge of the warps).
__host__ __device__ constexpr int vec_tc_smem_bytes(int kb, int vb, int d) {
  int lut = 4 * 32 *
      (vec_tc_lut_entries(kb, true) +
       (vec_tc_shared_lut(kb, vb) ? 0 : vec_tc_lut_entries(vb, false)));
  int merge = 4 * kVecTcWarps * 8 * vec_tc_ldo(d);
  return lut > merge ? lut : merge;
}
// Head dims the tensor-core decode kernel supports (others keep
// turbo_sdpa_vector); scales must be float16 or bfloat16.
__host__ __device__ constexpr bool vector_tc_supported(int d) {
  return d == 64 || d == 128 || d == 256;
}

__device__ inline float tc_pow2(int e) { // e in [-126, 127]
  return __int_as_float((e + 127) << 23);
}

// Unbiased exponent of a positive finite float (subnormals give -127).
__device__ inline int tc_exponent(float x) {
  return int((__float_as_uint(x) >> 23) & 255u) - 127;
}

// The fp16 range guard of a row of A operands: the power of two 2^e that
// brings the row's largest |entry| (amax of the 4 lanes of the group) into
// [2^13, 2^14); 0 for an all-zero or non-finite row.
__device__ inline int tc_row_exponent(float amax) {
  amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, 1));
  amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, 2));
  if (amax > 0.0f && amax <= FLT_MAX) {
    return min(120, max(-120, 13 - tc_exponent(amax)));
  }
  return 0;
}

template <typename T>
__device__ inline uint32_t tc_pack2(float lo, float hi) {
  if constexpr (std::is_same_v<T, __half>) {
    __half2 h = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&h);
  } else {
    __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&h);
  }
}

// d0, d1 += rows 0..7 of A (a0, a2) x B (b0, b1); rows 8..15 of A are zero
// and their accumulators are discarded.
template <typename T>
__device__ inline void tc_mma_top(
    float& d0,
    float& d1,
    uint32_t a0,
    uint32_t a2,
    uint32_t b0,
    uint32_t b1) {
  float j0, j1;
  if constexpr (std::is_same_v<T, __half>) {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 "
        "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %10, %10};\n"
        : "+f"(d0), "+f"(d1), "=f"(j0), "=f"(j1)
        : "r"(a0), "r"(0u), "r"(a2), "r"(0u), "r"(b0), "r"(b1), "f"(0.0f));
  } else {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
        "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %10, %10};\n"
        : "+f"(d0), "+f"(d1), "=f"(j0), "=f"(j1)
        : "r"(a0), "r"(0u), "r"(a2), "r"(0u), "r"(b0), "r"(b1), "f"(0.0f));
  }
}

// Table entry of byte k (0..3) of w; tl: shared-window byte address of the
// lane's copy of entry 0 (entries are 128 bytes apart). PRMT + LEA + LDS.
__device__ inline uint32_t tc_lut(uint32_t tl, uint32_t w, int k) {
  const uint32_t idx = __byte_perm(w, 0u, 0x4440u | uint32_t(k));
  uint32_t v;
  asm volatile("ld.shared.b32 %0, [%1];\n" : "=r"(v) : "r"(tl + (idx << 7)));
  return v;
}

// N consecutive words from p; 16- (or 8-) byte vector loads when al (p is
// then aligned to min(16, 4 N) bytes).
template <int N>
__device__ inline void tc_ldg_words(const uint32_t* p, uint32_t* w, bool al) {
  if constexpr (N % 4 == 0) {
    if (al) {
#pragma unroll
      for (int i = 0; i < N / 4; i++) {
        uint4 v = __ldg(reinterpret_cast<const uint4*>(p) + i);
        w[4 * i] = v.x;
        w[4 * i + 1] = v.y;
        w[4 * i + 2] = v.z;
        w[4 * i + 3] = v.w;
      }
      return;
    }
  } else if constexpr (N % 2 == 0) {
    if (al) {
#pragma unroll
      for (int i = 0; i < N / 2; i++) {
        uint2 v = __ldg(reinterpret_cast<const uint2*>(p) + i);
        w[2 * i] = v.x;
        w[2 * i + 1] = v.y;
      }
      return;
    }
  }
#pragma unroll
  for (int i = 0; i < N; i++) {
    w[i] = __ldg(p + i);
  }
}

// Nibble k (0..3) of a 16-bit x to byte k.
__device__ inline uint32_t tc_spread_n2b(uint32_t x) {
  x = (x | (x << 8)) & 0x00FF00FFu;
  return (x | (x << 4)) & 0x0F0F0F0Fu;
}

// The raw words holding coordinates [CPT c, CPT c + CPT) of one packed
// vector (loaded ahead), and their nibble words (code of coordinate i is
// bits 4 (i % 8).. of word i / 8), as SlotCodes but with the turbo3 plane
// merge separated from the load so the load can be issued early.
template <int BITS, int D, int CPT>
struct TcCodes {
  static constexpr int NW = CPT / 8;
  static constexpr int NLO = CPT >= 16 ? CPT / 16 : 1;
  static constexpr int NHI = CPT >= 32 ? CPT / 32 : 1;
  static constexpr int NR = BITS == 4 ? NW : NLO + NHI;
  uint32_t raw[NR];

  __device__ inline void load(const uint32_t* vec, int c, bool al) {
    if constexpr (BITS == 4) {
      tc_ldg_words<NW>(vec + NW * c, raw, al);
    } else {
      if constexpr (CPT >= 16) {
        tc_ldg_words<NLO>(vec + NLO * c, raw, al);
      } else { // half a word, shifted in nibbles()
        raw[0] = __ldg(vec + (c >> 1));
      }
      if constexpr (CPT >= 32) {
        tc_ldg_words<NHI>(vec + D / 16 + NHI * c, raw + NLO, al);
      } else {
        raw[NLO] = __ldg(vec + D / 16 + c / (32 / CPT));
      }
    }
  }
  __device__ inline void nibbles(uint32_t (&nib)[NW], int c) const {
    if constexpr (BITS == 4) {
#pragma unroll
      for (int k = 0; k < NW; k++) {
        nib[k] = raw[k];
      }
    } else {
#pragma unroll
      for (int k = 0; k < NW; k++) {
        uint32_t l16 = CPT >= 16 ? raw[k >> 1] >> (16 * (k & 1))
                                 : raw[0] >> (16 * (c & 1));
        uint32_t h8 = CPT >= 32
            ? raw[NLO + (k >> 2)] >> (8 * (k & 3))
            : (raw[NLO] >> (CPT * (c % (32 / CPT)))) >> (8 * k);
        nib[k] = spread2to4(l16) | (spread1to4(h8) << 2);
      }
    }
  }
  // Key-side table indices (NW words of 4 bytes): turbo4 the nibble words;
  // turbo3, per low-plane word L (coordinates 16 i ..) with high bits h16,
  // byte k of word 2 i + x pairs coordinates a = 16 i + 4 k + 2 x and a + 1
  // as lo2(a) | lo2(a+1) << 2 | hi(a) << 4 | hi(a+1) << 5 (see tc_kdim).
  __device__ inline void kwords(uint32_t (&kw)[NW], int c) const {
    if constexpr (BITS == 4) {
#pragma unroll
      for (int k = 0; k < NW; k++) {
        kw[k] = raw[k];
      }
    } else {
      static_assert(CPT >= 16, "turbo3 key chunks of at least 16");
#pragma unroll
      for (int i = 0; i < CPT / 16; i++) {
        const uint32_t L = raw[i];
        const uint32_t h16 = CPT >= 32 ? raw[NLO + (i >> 1)] >> (16 * (i & 1))
                                       : raw[NLO] >> (16 * (c & 1));
        kw[2 * i] = (L & 0x0F0F0F0Fu) | (tc_spread_n2b(h16 & 0x3333u) << 4);
        kw[2 * i + 1] = ((L >> 4) & 0x0F0F0F0Fu) |
            (tc_spread_n2b((h16 >> 2) & 0x3333u) << 4);
      }
    }
  }
};

// First of the two coordinates (within a lane's key chunk) of key pair p
// (byte p % 4 of kwords word p / 4).
__host__ __device__ constexpr int tc_kdim(int bits, int p) {
  return bits == 4 ? 2 * p : 16 * (p >> 3) + 4 * (p & 3) + 2 * ((p >> 2) & 1);
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
  static_assert(NQ >= 1 && NQ <= 8, "at most 8 rows per block");
  static_assert(
      std::is_same_v<T, __half> || std::is_same_v<T, __nv_bfloat16>,
      "float16 or bfloat16 scales");
  constexpr bool kHalf = std::is_same_v<T, __half>;
  constexpr int KT = vec_tc_keys(D); // keys per warp iteration
  constexpr int NT = KT / 8; // S n-tiles
  constexpr int NKT = KT / 16; // P V k-tiles
  constexpr int KS = D / 16; // Q K^T k-steps
  constexpr int DT = D / 8; // P V n-tiles (8 output dims each)
  constexpr int KCPT = D / 4; // key coordinates per lane
  constexpr int VCPT = D / 8; // value coordinates per lane
  constexpr int KNW = KCPT / 8;
  constexpr int VNW = VCPT / 8;
  constexpr int KE = vec_tc_lut_entries(KB, true);
  constexpr int VE = vec_tc_lut_entries(VB, false);
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
  // The moving key shift: the coefficients as float16 A fragments (k-step w
  // = planes 8 w .. 8 w + 7, row g, lane t) and the frequencies.
  __shared__ uint2 s_wa[kMaxKeyWaves / 8][8][4];
  __shared__ uint32_t s_wf[kMaxKeyWaves];
  uint32_t* ktab = tq_vtc_smem;
  uint32_t* vtab = kShareLut ? ktab : ktab + 32 * KE;
  float* s_o = reinterpret_cast<float*>(tq_vtc_smem); // after the loop

  const int tid = threadIdx.x;
  const int lane = tid & 31;
  const int warp = tid >> 5;
  const int g = lane >> 2; // MMA groupID: row, key of a K n-tile, V column
  const int t = lane & 3; // MMA thread in group
  const int split = blockIdx.x;
  const int hk = blockIdx.y / p.row_groups;
  const int rg = blockIdx.y % p.row_groups;
  const int b = blockIdx.z;
  const int nrows = p.gqa * p.qL;

  if (tid < 16) {
    s_cb[0][tid] = centroid(KB, tid & ((1 << KB) - 1));
    s_cb[1][tid] = centroid(VB, tid & ((1 << VB) - 1));
  }
  __syncthreads();
  // Tables: uint4 f holds copies 4 (f % 8).. of entry f / 8.
  for (int f = tid; f < 8 * KE; f += kVecTcThreads) {
    int e = f >> 3;
    uint32_t v = KB == 4 ? tc_pack2<T>(s_cb[0][e & 15], s_cb[0][e >> 4])
                         : tc_pack2<T>(
                               s_cb[0][(e & 3) | ((e >> 2) & 4)],
                               s_cb[0][((e >> 2) & 3) | ((e >> 3) & 4)]);
    reinterpret_cast<uint4*>(ktab)[f] = make_uint4(v, v, v, v);
  }
  if constexpr (!kShareLut) {
    for (int f = tid; f < 8 * VE; f += kVecTcThreads) {
      int e = f >> 3;
      uint32_t v = tc_pack2<T>(s_cb[1][e & 15], s_cb[1][e >> 4]);
      reinterpret_cast<uint4*>(vtab)[f] = make_uint4(v, v, v, v);
    }
  }

  // Query row g of this block: lane (g, t) holds dims [(D/4) t, (D/4) t +
  // D/4) as the A fragments of the KS k-steps; k-step s pairs the dims of
  // key pairs 2 s (a0) and 2 s + 1 (a2), see tc_kdim.
  const int row = rg * NQ + g;
  const bool row_ok = g < NQ && row < nrows;
  const int rr = row_ok ? row : 0;
  const int row_h = hk * p.gqa + rr / p.qL;
  const int row_q = rr % p.qL;
  uint32_t qa[KS][2];
  float q_unscale; // 2^-e_q
  {
    float qf[KCPT];
    const float* qp =
        q + b * p.q_str[0] + row_h * p.q_str[1] + row_q * p.q_str[2] + KCPT * t;
    float qmax = 0.0f;
#pragma unroll
    for (int c = 0; c < KCPT; c++) {
      qf[c] = row_ok ? qp[c] * p.scale_log2 : 0.0f;
      qmax = fmaxf(qmax, fabsf(qf[c]));
    }
    const int eq = tc_row_exponent(qmax);
    const float qs = tc_pow2(eq);
    q_unscale = tc_pow2(-eq);
#pragma unroll
    for (int s = 0; s < KS; s++) {
      const int d0 = tc_kdim(KB, 2 * s);
      const int d1 = tc_kdim(KB, 2 * s + 1);
      qa[s][0] = tc_pack2<T>(qf[d0] * qs, qf[d0 + 1] * qs);
      qa[s][1] = tc_pack2<T>(qf[d1] * qs, qf[d1 + 1] * qs);
    }
  }

  // The moving key shift's bias is one more m16n8k16 product per S n-tile
  // and 8 planes, in float16 (phases in [-1, 1]; the coefficients scaled by
  // a power of two per row as the queries are): k = 2t, 2t+1 are the cos
  // planes 8 w + 2t, 8 w + 2t + 1 and k = 2t+8, 2t+9 their sin planes.
  const int P = p.waves;
  const int nw = (P + 7) / 8;
  float c_unscale = 0.0f;
  if (P > 0) {
    // Entry x of k-step w of the lane's A fragment: cos (x < 2) or sin
    // coefficient of plane 8 w + 2 t + x % 2.
    const float* cr = wave_coef_row(p, b, row_h, row_q);
    auto coef = [&](int w, int x) {
      const int i = 8 * w + 2 * t + (x & 1);
      return row_ok && i < P ? cr[(x >> 1) * P + i] : 0.0f;
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
    c_unscale = tc_pow2(-ec);
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

  // O row g: o[i][h] is dim (D/8) (2t + h) + i.
  float o[DT][2];
#pragma unroll
  for (int i = 0; i < DT; i++) {
    o[i][0] = 0.0f;
    o[i][1] = 0.0f;
  }
  float m_r = -INFINITY; // same in the 4 lanes of a group
  float l_r = 0.0f; // partial over the lane's keys
  int ev = 0; // T = __half: o is in units of 2^ev (P guard)
  if (p.has_sinks && split == 0 && warp == 0 && row_ok) {
    m_r = kLog2e * sink_logit(p, sinks, b, row_h, row_q);
    l_r = t == 0 ? 1.0f : 0.0f;
  }
  __syncthreads(); // tables ready

  const int k_begin = split * p.keys_per_split;
  const int k_end = min(p.kL, k_begin + p.keys_per_split);
  const uint32_t* kbase = kc + b * p.k_str[0] + hk * p.k_str[1];
  const uint32_t* vbase = vc + b * p.v_str[0] + hk * p.v_str[1];
  const T* ksb = ks + b * p.ks_str[0] + hk * p.ks_str[1];
  const T* vsb = vs + b * p.vs_str[0] + hk * p.vs_str[1];
  // Vector loads need every row 16-byte aligned.
  const bool kal =
      ((reinterpret_cast<uintptr_t>(kbase) & 15) == 0) && (p.k_str[2] % 4 == 0);
  const bool val =
      ((reinterpret_cast<uintptr_t>(vbase) & 15) == 0) && (p.v_str[2] % 4 == 0);
  const uint32_t ktl =
      static_cast<uint32_t>(__cvta_generic_to_shared(ktab + lane));
  const uint32_t vtl =
      static_cast<uint32_t>(__cvta_generic_to_shared(vtab + lane));

  // Codes and scales of one warp iteration (keys jb .. jb + KT - 1): K key
  // jb + 8 j + g, V keys jb + 16 kt + 2 t + {0, 1, 8, 9}, scales of keys
  // jb + 8 j + 2 t + {0, 1} (the lane's S columns and P entries).
  TcCodes<KB, D, KCPT> kn[NT];
  TcCodes<VB, D, VCPT> vn[NKT][4];
  T ksn[NT][2], vsn[NT][2];
  auto load_v = [&](int jb, TcCodes<VB, D, VCPT>(&dst)[NKT][4]) {
#pragma unroll
    for (int kt = 0; kt < NKT; kt++) {
#pragma unroll
      for (int u = 0; u < 4; u++) {
        int jv = jb + 16 * kt + 2 * t + (u & 1) + 8 * (u >> 1);
        jv = jv < k_end ? jv : k_begin;
        dst[kt][u].load(vbase + jv * p.v_str[2], g, val);
      }
    }
  };
  auto load = [&](int jb) {
#pragma unroll
    for (int j = 0; j < NT; j++) {
      int jk = jb + 8 * j + g;
      jk = jk < k_end ? jk : k_begin;
      kn[j].load(kbase + jk * p.k_str[2], t, kal);
    }
    if constexpr (kPrefetchV) {
      load_v(jb, vn);
    }
#pragma unroll
    for (int j = 0; j < NT; j++) {
#pragma unroll
      for (int h = 0; h < 2; h++) {
        int js = jb + 8 * j + 2 * t + h;
        js = js < k_end ? js : k_begin;
        ksn[j][h] = ksb[js * p.ks_str[2]];
        vsn[j][h] = vsb[js * p.vs_str[2]];
      }
    }
  };

  constexpr int kStep = kVecTcWarps * KT;
  const int jb0 = k_begin + warp * KT;
  if (jb0 < k_end) {
    load(jb0);
  }
  // The loop bound is warp-uniform (shuffles and MMAs need every lane).
  for (int jb = jb0; jb < k_end; jb += kStep) {
    uint32_t knib[NT][KNW];
    TcCodes<VB, D, VCPT> vcur[NKT][4];
    float ksc[NT][2], vsc[NT][2];
    if constexpr (kPrefetchV) {
#pragma unroll
      for (int kt = 0; kt < NKT; kt++) {
#pragma unroll
        for (int u = 0; u < 4; u++) {
          vcur[kt][u] = vn[kt][u];
        }
      }
    } else {
      load_v(jb, vcur);
    }
#pragma unroll
    for (int j = 0; j < NT; j++) {
      kn[j].kwords(knib[j], t);
#pragma unroll
      for (int h = 0; h < 2; h++) {
        ksc[j][h] = to_float(ksn[j][h]);
        vsc[j][h] = to_float(vsn[j][h]);
      }
    }
    if (jb + kStep < k_end) {
      load(jb + kStep);
    }

    // S = Q K^T (log2 domain, scaled rows), n-tiles interleaved for ILP.
    float s[NT][2];
#pragma unroll
    for (int j = 0; j < NT; j++) {
      s[j][0] = 0.0f;
      s[j][1] = 0.0f;
    }
#pragma unroll
    for (int st = 0; st < KS; st++) {
#pragma unroll
      for (int j = 0; j < NT; j++) {
        uint32_t w = knib[j][st >> 1];
        uint32_t b0 = tc_lut(ktl, w, 2 * (st & 1));
        uint32_t b1 = tc_lut(ktl, w, 2 * (st & 1) + 1);
        tc_mma_top<T>(s[j][0], s[j][1], qa[st][0], qa[st][1], b0, b1);
      }
    }

    // The moving key shift's bias of the same scores.
    float sb[NT][2];
#pragma unroll
    for (int j = 0; j < NT; j++) {
      sb[j][0] = 0.0f;
      sb[j][1] = 0.0f;
    }
    for (int w = 0; w < nw; w++) {
      const uint2 a = s_wa[w][g][t];
      const uint32_t f0 = s_wf[8 * w + 2 * t];
      const uint32_t f1 = s_wf[8 * w + 2 * t + 1];
#pragma unroll
      for (int j = 0; j < NT; j++) {
        float s0, c0, s1, c1;
        key_wave_sincos(f0, jb + 8 * j + g, s0, c0);
        key_wave_sincos(f1, jb + 8 * j + g, s1, c1);
        tc_mma_top<__half>(
            sb[j][0],
            sb[j][1],
            a.x,
            a.y,
            tc_pack2<__half>(c0, c1),
            tc_pack2<__half>(s0, s1));
      }
    }

    // Scores of row g, keys jb + 8 j + 2 t + h; online softmax.
    float mx = m_r;
#pragma unroll
    for (int j = 0; j < NT; j++) {
#pragma unroll
      for (int h = 0; h < 2; h++) {
        int jj = jb + 8 * j + 2 * t + h;
        float sc = s[j][h] * q_unscale * ksc[j][h] + sb[j][h] * c_unscale;
        if (jj < k_end) {
          if constexpr (MASKED) {
            sc = apply_mask(sc, p, mask, b, row_h, row_q, jj);
          }
        } else {
          sc = -INFINITY;
        }
        s[j][h] = sc;
        mx = fmaxf(mx, sc);
      }
    }
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
    const float mref = safe_max_ref(mx);
    if (mx != m_r) { // uniform in the group of 4 lanes; rare once warm
      float alpha = exp2f(m_r - mref);
      l_r *= alpha;
#pragma unroll
      for (int i = 0; i < DT; i++) {
        o[i][0] *= alpha;
        o[i][1] *= alpha;
      }
      m_r = mx;
    }
    float vf = 1.0f;
    if constexpr (kHalf) {
      float vmax = 0.0f;
#pragma unroll
      for (int j = 0; j < NT; j++) {
        vmax = fmaxf(vmax, fmaxf(fabsf(vsc[j][0]), fabsf(vsc[j][1])));
      }
      vmax = fmaxf(vmax, __shfl_xor_sync(0xffffffffu, vmax, 1));
      vmax = fmaxf(vmax, __shfl_xor_sync(0xffffffffu, vmax, 2));
      if (vmax > 0.0f && vmax <= FLT_MAX) {
        int e = tc_exponent(vmax);
        if (e > ev + 4 || e < ev - 8) { // uniform in the group
          float f = tc_pow2(ev - e);
#pragma unroll
          for (int i = 0; i < DT; i++) {
            o[i][0] *= f;
            o[i][1] *= f;
          }
          ev = e;
        }
      }
      vf = tc_pow2(-ev);
    }
    // P (times value scale) as A fragments: k-tile kt = n-tiles 2kt, 2kt+1.
    uint32_t pa[NKT][2];
#pragma unroll
    for (int kt = 0; kt < NKT; kt++) {
#pragma unroll
      for (int hh = 0; hh < 2; hh++) {
        const int j = 2 * kt + hh;
        float p0 = exp2f(s[j][0] - mref);
        float p1 = exp2f(s[j][1] - mref);
        l_r += p0 + p1;
        pa[kt][hh] = tc_pack2<T>(p0 * vsc[j][0] * vf, p1 * vsc[j][1] * vf);
      }
    }

    uint32_t vnib[NKT][4][VNW];
#pragma unroll
    for (int kt = 0; kt < NKT; kt++) {
#pragma unroll
      for (int u = 0; u < 4; u++) {
        vcur[kt][u].nibbles(vnib[kt][u], g);
      }
    }
    // O += P V: B of n-tile i pairs keys (2t, 2t+1) in b0 and (2t+8, 2t+9) in
    // b1 at dim (D/8) g + i: byte m of x (y) pairs the codes of dim 8 w + 2 m
    // (+ 1) of the two keys' nibble word w.
#pragma unroll
    for (int kt = 0; kt < NKT; kt++) {
#pragma unroll
      for (int w = 0; w < VNW; w++) {
        const uint32_t wa = vnib[kt][0][w], wb = vnib[kt][1][w];
        const uint32_t wc = vnib[kt][2][w], wd = vnib[kt][3][w];
        const uint32_t xa = (wa & 0x0F0F0F0Fu) | ((wb << 4) & 0xF0F0F0F0u);
        const uint32_t ya = ((wa >> 4) & 0x0F0F0F0Fu) | (wb & 0xF0F0F0F0u);
        const uint32_t xb = (wc & 0x0F0F0F0Fu) | ((wd << 4) & 0xF0F0F0F0u);
        const uint32_t yb = ((wc >> 4) & 0x0F0F0F0Fu) | (wd & 0xF0F0F0F0u);
#pragma unroll
        for (int mm = 0; mm < 4; mm++) {
          const int i = 8 * w + 2 * mm;
          tc_mma_top<T>(
              o[i][0],
              o[i][1],
              pa[kt][0],
              pa[kt][1],
              tc_lut(vtl, xa, mm),
              tc_lut(vtl, xb, mm));
          tc_mma_top<T>(
              o[i + 1][0],
              o[i + 1][1],
              pa[kt][0],
              pa[kt][1],
              tc_lut(vtl, ya, mm),
              tc_lut(vtl, yb, mm));
        }
      }
    }
  }

  // Merge the warps of the block (the tables are dead after the barrier).
  l_r += __shfl_xor_sync(0xffffffffu, l_r, 1);
  l_r += __shfl_xor_sync(0xffffffffu, l_r, 2);
  if (t == 0 && g < NQ) {
    s_m[warp][g] = m_r;
  }
  __syncthreads();
  if (g < NQ) {
    float mb = -INFINITY;
#pragma unroll
    for (int w = 0; w < kVecTcWarps; w++) {
      mb = fmaxf(mb, s_m[w][g]);
    }
    const float f = exp2f(m_r - safe_max_ref(mb));
    if (t == 0) {
      s_l[warp][g] = l_r * f;
    }
    const float fo = kHalf ? f * tc_pow2(ev) : f;
    float* so = s_o + (warp * 8 + g) * LDO;
#pragma unroll
    for (int i = 0; i < DT; i++) {
      so[(2 * t) * (DT + 1) + i] = o[i][0] * fo;
      so[(2 * t + 1) * (DT + 1) + i] = o[i][1] * fo;
    }
  }
  __syncthreads();

  for (int e = tid; e < NQ * D; e += kVecTcThreads) {
    const int r = e / D;
    const int d = e % D;
    const int orow = rg * NQ + r;
    if (orow >= nrows) {
      continue;
    }
    const int di = (d / DT) * (DT + 1) + d % DT;
    float acc = 0.0f;
    float lsum = 0.0f;
    float mb = -INFINITY;
#pragma unroll
    for (int w = 0; w < kVecTcWarps; w++) {
      acc += s_o[(w * 8 + r) * LDO + di];
      lsum += s_l[w][r];
      mb = fmaxf(mb, s_m[w][r]);
    }
    const int h = hk * p.gqa + orow / p.qL;
    const int qi = orow % p.qL;
    acc += sink_value_term<D>(p, sinks, split, b, h, qi, d, mb);
    if (p.num_splits == 1) {
      out[b * p.o_str[0] + h * p.o_str[1] + qi * p.o_str[2] + d] = acc / lsum;
    } else {
      int64_t grow = (int64_t(b) * p.Hq + h) * p.qL + qi;
      int64_t prow = int64_t(split) * p.B * p.Hq * p.qL + grow;
      part_o[prow * D + d] = acc;
      if (d == 0) {
        part_ml[2 * prow] = mb;
        part_ml[2 * prow + 1] = lsum;
      }
    }
  }
}

} // namespace mlx::core::cu::turbo
