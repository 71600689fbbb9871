// Copyright © 2026 TurboQuant-MLX contributors.
//
// Fused prefill attention kernels (turbo_sdpa_full, _full_tc, _full_mma).
// MLX does not launch them: calls with more than 8 queries dequantize the
// cache for MLX's own attention (docs/format.md, section 8). Only the
// standalone harness builds and tests them; they are due for deletion.

#pragma once

#include "mlx/backend/cuda/device/turboquant_decode_tc.cuh"

namespace mlx::core::cu::turbo {

// ---------------------------------------------------------------------------
// Prefill: tiled flash attention, dequantizing K/V tiles in shared memory.
// Grid: (ceil(qL / BQ), Hq, B). Block: 128 threads. Dynamic shared memory:
// full_smem_bytes(D).
// ---------------------------------------------------------------------------

constexpr int kFullBQ = 32;
constexpr int kFullBK = 32;
constexpr int kFullThreads = 128;

__host__ __device__ constexpr int full_smem_bytes(int d) {
  return 4 *
      (d * kFullBQ + // Qs[D][BQ]
       d * kFullBK + // Ks[D][BK]
       kFullBK * (d + 1) + // Vs[BK][D+1]
       kFullBQ * (kFullBK + 1)); // Ps[BQ][BK+1]
}

template <int KB, int VB, int D, typename T>
__global__ void __launch_bounds__(kFullThreads) turbo_sdpa_full(
    const float* __restrict__ q,
    const uint32_t* __restrict__ kc,
    const T* __restrict__ ks,
    const uint32_t* __restrict__ vc,
    const T* __restrict__ vs,
    const void* __restrict__ mask,
    const float* __restrict__ sinks,
    float* __restrict__ out,
    const AttnParams p) {
  constexpr int BQ = kFullBQ;
  constexpr int BK = kFullBK;
  constexpr int SLOTS = D / 8;
  constexpr int NC = D / 8; // output columns per thread
  extern __shared__ float smem[];
  __shared__ float klut[16];
  __shared__ float vlut[16];
  if (threadIdx.x < 16) {
    klut[threadIdx.x] = centroid(KB, threadIdx.x & ((1 << KB) - 1));
    vlut[threadIdx.x] = centroid(VB, threadIdx.x & ((1 << VB) - 1));
  }
  float* Qs = smem; // [D][BQ]
  float* Ks = Qs + D * BQ; // [D][BK]
  float* Vs = Ks + D * BK; // [BK][D + 1]
  float* Ps = Vs + BK * (D + 1); // [BQ][BK + 1]

  const int tid = threadIdx.x;
  const int ty = tid / 8; // rows 2ty, 2ty + 1
  const int tx = tid % 8; // keys 4tx..4tx+3, output cols tx + 8i
  const int q0 = blockIdx.x * BQ;
  const int h = blockIdx.y;
  const int b = blockIdx.z;
  const int hk = h / p.gqa;

  // Load the query tile, pre-scaled.
  for (int e = tid; e < BQ * D; e += kFullThreads) {
    int r = e / D;
    int d = e % D;
    int qi = q0 + r;
    float v = 0.0f;
    if (qi < p.qL) {
      v = q[b * p.q_str[0] + h * p.q_str[1] + qi * p.q_str[2] + d] *
          p.scale_log2;
    }
    Qs[d * BQ + r] = v;
  }

  float acc[2][NC];
  float m[2];
  float l[2];
#pragma unroll
  for (int a = 0; a < 2; a++) {
    m[a] = -INFINITY;
    l[a] = 0.0f;
    if (p.has_sinks) {
      m[a] = kLog2e * sinks[h];
      l[a] = 1.0f;
    }
#pragma unroll
    for (int i = 0; i < NC; i++) {
      acc[a][i] = 0.0f;
    }
  }

  const int k_stop = causal_key_stop(p, q0, BQ);

  const uint32_t* kbase = kc + b * p.k_str[0] + hk * p.k_str[1];
  const uint32_t* vbase = vc + b * p.v_str[0] + hk * p.v_str[1];
  const T* ksb = ks + b * p.ks_str[0] + hk * p.ks_str[1];
  const T* vsb = vs + b * p.vs_str[0] + hk * p.vs_str[1];

  for (int k0 = 0; k0 < k_stop; k0 += BK) {
    __syncthreads(); // previous tile fully consumed
    // Dequantize the K and V tiles (rotated domain, scale applied).
    for (int e = tid; e < BK * SLOTS; e += kFullThreads) {
      int kk = e % BK;
      int sl = e / BK;
      int j = k0 + kk;
      float kv[8], vv[8];
      if (j < p.kL) {
        uint32_t a, bb;
        load_slot<KB, D>(kbase + j * p.k_str[2], sl, a, bb);
        float sc = to_float(ksb[j * p.ks_str[2]]);
#pragma unroll
        for (int c = 0; c < 8; c++) {
          kv[c] = sc * klut[slot_code<KB>(a, bb, c)];
        }
        load_slot<VB, D>(vbase + j * p.v_str[2], sl, a, bb);
        sc = to_float(vsb[j * p.vs_str[2]]);
#pragma unroll
        for (int c = 0; c < 8; c++) {
          vv[c] = sc * vlut[slot_code<VB>(a, bb, c)];
        }
      } else {
#pragma unroll
        for (int c = 0; c < 8; c++) {
          kv[c] = 0.0f;
          vv[c] = 0.0f;
        }
      }
#pragma unroll
      for (int c = 0; c < 8; c++) {
        Ks[(8 * sl + c) * BK + kk] = kv[c];
        Vs[kk * (D + 1) + 8 * sl + c] = vv[c];
      }
    }
    __syncthreads();

    // S = Q K^T for a 2 x 4 micro tile.
    float s[2][4];
#pragma unroll
    for (int a = 0; a < 2; a++) {
#pragma unroll
      for (int c = 0; c < 4; c++) {
        s[a][c] = 0.0f;
      }
    }
#pragma unroll 8
    for (int d = 0; d < D; d++) {
      float2 qv = *reinterpret_cast<const float2*>(&Qs[d * BQ + 2 * ty]);
      float4 kv = *reinterpret_cast<const float4*>(&Ks[d * BK + 4 * tx]);
      s[0][0] += qv.x * kv.x;
      s[0][1] += qv.x * kv.y;
      s[0][2] += qv.x * kv.z;
      s[0][3] += qv.x * kv.w;
      s[1][0] += qv.y * kv.x;
      s[1][1] += qv.y * kv.y;
      s[1][2] += qv.y * kv.z;
      s[1][3] += qv.y * kv.w;
    }

    // Mask + online softmax (8 lanes tx share a row pair).
#pragma unroll
    for (int a = 0; a < 2; a++) {
      int qi = q0 + 2 * ty + a;
      int qic = min(qi, p.qL - 1);
      float mt = -INFINITY;
#pragma unroll
      for (int c = 0; c < 4; c++) {
        int j = k0 + 4 * tx + c;
        float sc =
            j < p.kL ? apply_mask(s[a][c], p, mask, b, h, qic, j) : -INFINITY;
        s[a][c] = sc;
        mt = fmaxf(mt, sc);
      }
#pragma unroll
      for (int off = 4; off > 0; off >>= 1) {
        mt = fmaxf(mt, __shfl_xor_sync(0xffffffffu, mt, off));
      }
      float mnew = fmaxf(m[a], mt);
      float mref = safe_max_ref(mnew);
      float alpha = exp2f(m[a] - mref);
      float ps = 0.0f;
#pragma unroll
      for (int c = 0; c < 4; c++) {
        float pv = exp2f(s[a][c] - mref);
        ps += pv;
        Ps[(2 * ty + a) * (BK + 1) + 4 * tx + c] = pv;
      }
#pragma unroll
      for (int off = 4; off > 0; off >>= 1) {
        ps += __shfl_xor_sync(0xffffffffu, ps, off);
      }
      l[a] = l[a] * alpha + ps;
      m[a] = mnew;
#pragma unroll
      for (int i = 0; i < NC; i++) {
        acc[a][i] *= alpha;
      }
    }
    __syncthreads();

    // O += P V.
#pragma unroll 4
    for (int kk = 0; kk < BK; kk++) {
      float p0 = Ps[(2 * ty) * (BK + 1) + kk];
      float p1 = Ps[(2 * ty + 1) * (BK + 1) + kk];
      const float* vrow = Vs + kk * (D + 1) + tx;
#pragma unroll
      for (int i = 0; i < NC; i++) {
        float v = vrow[8 * i];
        acc[0][i] += p0 * v;
        acc[1][i] += p1 * v;
      }
    }
  }

#pragma unroll
  for (int a = 0; a < 2; a++) {
    int qi = q0 + 2 * ty + a;
    if (qi < p.qL) {
      float* o = out + b * p.o_str[0] + h * p.o_str[1] + qi * p.o_str[2];
      float inv = 1.0f / l[a];
#pragma unroll
      for (int i = 0; i < NC; i++) {
        o[tx + 8 * i] = acc[a][i] * inv;
      }
    }
  }
}

// ---------------------------------------------------------------------------
// Prefill on tensor cores (TF32 wmma), head dims <= 128. Same tile loop as
// turbo_sdpa_full with 64 x 64 tiles: the K and V tiles are dequantized to
// float in shared memory, S = Q K^T and O += P V run as 16x16x8 TF32 MMAs
// (float32 accumulation; operands rounded to TF32, 10-bit mantissa), the
// softmax in float32. Warp w owns query rows [16 w, 16 w + 16) of the tile
// (its rows of S and O never leave the warp). Grid: (ceil(qL / 64), Hq, B),
// 128 threads, dynamic shared memory tc_smem_bytes(D).
// ---------------------------------------------------------------------------

constexpr int kTcBQ = 64;
constexpr int kTcBK = 64;
constexpr int kTcThreads = 128;

__host__ __device__ constexpr int tc_smem_bytes(int d) {
  return 4 *
      (kTcBQ * (d + 4) + // Qs
       kTcBK * (d + 4) + // Ks
       kTcBK * (d + 4) + // Vs
       kTcBQ * (kTcBK + 4) + // Ss (scores, then probabilities)
       kTcBQ * (d + 4)); // Os
}

template <int KB, int VB, int D, typename T>
__global__ void __launch_bounds__(kTcThreads) turbo_sdpa_full_tc(
    const float* __restrict__ q,
    const uint32_t* __restrict__ kc,
    const T* __restrict__ ks,
    const uint32_t* __restrict__ vc,
    const T* __restrict__ vs,
    const void* __restrict__ mask,
    const float* __restrict__ sinks,
    float* __restrict__ out,
    const AttnParams p) {
  namespace wmma = nvcuda::wmma;
  static_assert(D % 16 == 0 && D <= 128, "tensor-core prefill: D <= 128");
  constexpr int BQ = kTcBQ;
  constexpr int BK = kTcBK;
  constexpr int LD = D + 4; // row stride of Qs, Ks, Vs, Os (floats)
  constexpr int LS = BK + 4; // row stride of Ss
  constexpr int SLOTS = D / 8;
  extern __shared__ __align__(128) float smem[];
  __shared__ float klut[16];
  __shared__ float vlut[16];
  if (threadIdx.x < 16) {
    klut[threadIdx.x] = centroid(KB, threadIdx.x & ((1 << KB) - 1));
    vlut[threadIdx.x] = centroid(VB, threadIdx.x & ((1 << VB) - 1));
  }
  float* Qs = smem;
  float* Ks = Qs + BQ * LD;
  float* Vs = Ks + BK * LD;
  float* Ss = Vs + BK * LD;
  float* Os = Ss + BQ * LS;

  const int tid = threadIdx.x;
  const int warp = tid >> 5;
  const int lane = tid & 31;
  const int q0 = blockIdx.x * BQ;
  const int h = blockIdx.y;
  const int b = blockIdx.z;
  const int hk = h / p.gqa;

  for (int e = tid; e < BQ * D; e += kTcThreads) {
    int r = e / D;
    int d = e % D;
    int qi = q0 + r;
    Qs[r * LD + d] = qi < p.qL
        ? q[b * p.q_str[0] + h * p.q_str[1] + qi * p.q_str[2] + d] *
            p.scale_log2
        : 0.0f;
    Os[r * LD + d] = 0.0f;
  }

  // Lanes 2i and 2i + 1 own row 16 warp + i for the softmax.
  const int my_row = 16 * warp + (lane >> 1);
  const int half = lane & 1;
  const int my_qi = min(q0 + my_row, p.qL - 1);
  float m_run = -INFINITY;
  float l_run = 0.0f;
  if (p.has_sinks) {
    m_run = kLog2e * sinks[h];
    l_run = 1.0f;
  }

  const int k_stop = causal_key_stop(p, q0, BQ);

  const uint32_t* kbase = kc + b * p.k_str[0] + hk * p.k_str[1];
  const uint32_t* vbase = vc + b * p.v_str[0] + hk * p.v_str[1];
  const T* ksb = ks + b * p.ks_str[0] + hk * p.ks_str[1];
  const T* vsb = vs + b * p.vs_str[0] + hk * p.vs_str[1];

  // The query fragments of this warp, reused for every key tile.
  wmma::fragment<
      wmma::matrix_a,
      16,
      16,
      8,
      wmma::precision::tf32,
      wmma::row_major>
      qa[D / 8];
  __syncthreads();
#pragma unroll
  for (int k = 0; k < D / 8; k++) {
    wmma::load_matrix_sync(qa[k], Qs + 16 * warp * LD + 8 * k, LD);
#pragma unroll
    for (int i = 0; i < qa[k].num_elements; i++) {
      qa[k].x[i] = wmma::__float_to_tf32(qa[k].x[i]);
    }
  }

  for (int k0 = 0; k0 < k_stop; k0 += BK) {
    __syncthreads(); // the previous K/V tiles are consumed
    for (int e = tid; e < BK * SLOTS; e += kTcThreads) {
      int sl = e % SLOTS;
      int kk = e / SLOTS;
      int j = k0 + kk;
      float kv[8], vv[8];
      if (j < p.kL) {
        uint32_t a, bb;
        load_slot<KB, D>(kbase + j * p.k_str[2], sl, a, bb);
        float sc = to_float(ksb[j * p.ks_str[2]]);
#pragma unroll
        for (int c = 0; c < 8; c++) {
          kv[c] = sc * klut[slot_code<KB>(a, bb, c)];
        }
        load_slot<VB, D>(vbase + j * p.v_str[2], sl, a, bb);
        sc = to_float(vsb[j * p.vs_str[2]]);
#pragma unroll
        for (int c = 0; c < 8; c++) {
          vv[c] = sc * vlut[slot_code<VB>(a, bb, c)];
        }
      } else {
#pragma unroll
        for (int c = 0; c < 8; c++) {
          kv[c] = 0.0f;
          vv[c] = 0.0f;
        }
      }
#pragma unroll
      for (int c = 0; c < 8; c++) {
        Ks[kk * LD + 8 * sl + c] = kv[c];
        Vs[kk * LD + 8 * sl + c] = vv[c];
      }
    }
    __syncthreads();

    // S = Q K^T for this warp's 16 rows.
#pragma unroll
    for (int t = 0; t < BK / 16; t++) {
      wmma::fragment<wmma::accumulator, 16, 16, 8, float> acc;
      wmma::fill_fragment(acc, 0.0f);
#pragma unroll
      for (int k = 0; k < D / 8; k++) {
        wmma::fragment<
            wmma::matrix_b,
            16,
            16,
            8,
            wmma::precision::tf32,
            wmma::col_major>
            kb;
        wmma::load_matrix_sync(kb, Ks + 16 * t * LD + 8 * k, LD);
#pragma unroll
        for (int i = 0; i < kb.num_elements; i++) {
          kb.x[i] = wmma::__float_to_tf32(kb.x[i]);
        }
        wmma::mma_sync(acc, qa[k], kb, acc);
      }
      wmma::store_matrix_sync(
          Ss + 16 * warp * LS + 16 * t, acc, LS, wmma::mem_row_major);
    }
    __syncwarp();

    // Softmax of row my_row over this tile: each lane of the pair takes 32
    // keys.
    float* srow = Ss + my_row * LS + 32 * half;
    float mt = -INFINITY;
#pragma unroll 8
    for (int c = 0; c < 32; c++) {
      int j = k0 + 32 * half + c;
      float sc =
          j < p.kL ? apply_mask(srow[c], p, mask, b, h, my_qi, j) : -INFINITY;
      srow[c] = sc;
      mt = fmaxf(mt, sc);
    }
    mt = fmaxf(mt, __shfl_xor_sync(0xffffffffu, mt, 1));
    float mnew = fmaxf(m_run, mt);
    float mref = safe_max_ref(mnew);
    float alpha = exp2f(m_run - mref);
    float ps = 0.0f;
#pragma unroll 8
    for (int c = 0; c < 32; c++) {
      float pv = exp2f(srow[c] - mref);
      srow[c] = pv;
      ps += pv;
    }
    ps += __shfl_xor_sync(0xffffffffu, ps, 1);
    l_run = l_run * alpha + ps;
    m_run = mnew;
    if (alpha != 1.0f) {
      float* orow = Os + my_row * LD + (D / 2) * half;
#pragma unroll 8
      for (int c = 0; c < D / 2; c++) {
        orow[c] *= alpha;
      }
    }
    __syncwarp();

    // O += P V for this warp's 16 rows.
    wmma::fragment<
        wmma::matrix_a,
        16,
        16,
        8,
        wmma::precision::tf32,
        wmma::row_major>
        pa[BK / 8];
#pragma unroll
    for (int k = 0; k < BK / 8; k++) {
      wmma::load_matrix_sync(pa[k], Ss + 16 * warp * LS + 8 * k, LS);
#pragma unroll
      for (int i = 0; i < pa[k].num_elements; i++) {
        pa[k].x[i] = wmma::__float_to_tf32(pa[k].x[i]);
      }
    }
#pragma unroll
    for (int t = 0; t < D / 16; t++) {
      wmma::fragment<wmma::accumulator, 16, 16, 8, float> acc;
      wmma::load_matrix_sync(
          acc, Os + 16 * warp * LD + 16 * t, LD, wmma::mem_row_major);
#pragma unroll
      for (int k = 0; k < BK / 8; k++) {
        wmma::fragment<
            wmma::matrix_b,
            16,
            16,
            8,
            wmma::precision::tf32,
            wmma::row_major>
            vb;
        wmma::load_matrix_sync(vb, Vs + 8 * k * LD + 16 * t, LD);
#pragma unroll
        for (int i = 0; i < vb.num_elements; i++) {
          vb.x[i] = wmma::__float_to_tf32(vb.x[i]);
        }
        wmma::mma_sync(acc, pa[k], vb, acc);
      }
      wmma::store_matrix_sync(
          Os + 16 * warp * LD + 16 * t, acc, LD, wmma::mem_row_major);
    }
    __syncwarp();
  }

  const int qi = q0 + my_row;
  if (qi < p.qL) {
    float inv = 1.0f / l_run;
    float* o = out + b * p.o_str[0] + h * p.o_str[1] + qi * p.o_str[2];
    const float* orow = Os + my_row * LD;
    for (int c = half; c < D; c += 2) {
      o[c] = orow[c] * inv;
    }
  }
}

// ---------------------------------------------------------------------------
// Prefill on tensor cores with float16 / bfloat16 operands (mma.sync
// m16n8k16, float32 accumulation), for float16 / bfloat16 scales (T) and
// D = 64, 128, 256. FlashAttention-2 structure: a block of 4 warps owns 64
// query rows of one (batch, query head), warp w rows [16 w, 16 w + 16); the
// loop runs over tiles of 64 keys (32 at D = 256, full_mma_bk). Same semantics
// as turbo_sdpa_full (masks, causal tile skipping with the same exception for
// rows that see no key, sinks, float32 output in the rotated domain).
//
// Per key tile: the packed K and V codes (loaded into registers one tile
// ahead for D <= 128) are expanded into shared memory as T centroids, WITHOUT
// their scales (so every operand lies in [-2.74, 2.74]), through a byte ->
// (c[lo], c[hi]) table with one copy per lane (as turbo_sdpa_vector_tc;
// turbo3 planes are merged into nibbles first); the key and value scales go
// to shared memory as float. S = Q K^T with B fragments from ldmatrix (keys
// are rows of the K tile), the key scale and the query row's power-of-two
// guard applied to the float32 score, then mask / causal / kL bound, online
// softmax in base 2 per row (the 4 lanes of an MMA group share a row), and
// P * value_scale (* 2^-e_v for float16, the decode kernel's guard, warp-
// uniform here because all rows see the same keys) packed to T as the A
// fragments of O += P V, whose B fragments come from ldmatrix.trans of the V
// tile. The query row's A fragments are built once (float32 q * scale *
// log2 e * 2^e_q, e_q putting the row's largest entry in [2^13, 2^14)); they
// stay in registers at D = 64 and live in shared memory (fragment order,
// conflict-free 32-bit loads) from D = 128 on (TQ_MMA_Q_SMEM_MIN_D).
// Grid: (ceil(qL / 64), Hq, B). Block: 128 threads. Dynamic shared memory:
// full_mma_smem_bytes(KB, VB, D) (> 48 KB: needs
// cudaFuncAttributeMaxDynamicSharedMemorySize).
// ---------------------------------------------------------------------------

// Tuning knobs for experiments on the device (as TQ_VTC_*, e.g.
// NVCC_APPEND_FLAGS="-DTQ_MMA_MIN_BLOCKS=3" bash tests/cuda/build.sh).
// Defaults, ptxas for sm_90a: the query fragments stay in registers at D = 64
// (168-183 registers, no spills) and live in shared memory from D = 128 on
// (D = 128: 251-255 registers, no spills, two blocks per SM; with them in
// registers 255 and 12-40 bytes of spills); the next tile's codes are
// prefetched into registers up to D = 128. A minimum of 3 blocks per SM
// (168 registers) spills ~100 bytes at D = 128.
#ifdef TQ_MMA_MIN_BLOCKS
#define TQ_MMA_LAUNCH_BOUNDS __launch_bounds__(kMmaThreads, TQ_MMA_MIN_BLOCKS)
#else
#define TQ_MMA_LAUNCH_BOUNDS __launch_bounds__(kMmaThreads)
#endif
#ifndef TQ_MMA_Q_SMEM_MIN_D
#define TQ_MMA_Q_SMEM_MIN_D 128
#endif
#ifndef TQ_MMA_PREFETCH_MAX_D
#define TQ_MMA_PREFETCH_MAX_D 128
#endif

constexpr int kMmaBQ = 64;
constexpr int kMmaWarps = 4;
constexpr int kMmaThreads = 32 * kMmaWarps;

__host__ __device__ constexpr bool full_mma_supported(int d) {
  return d == 64 || d == 128 || d == 256;
}
// Keys per tile: 32 at D = 256 (registers: S and P of 64 keys spill there,
// and the smaller K / V tiles let two blocks share an SM).
__host__ __device__ constexpr int full_mma_bk(int d) {
  return d > 128 ? 32 : 64;
}
// Table entries for a mode: nibble pairs, codes < 8 for turbo3.
__host__ __device__ constexpr int full_mma_lut_entries(int bits) {
  return bits == 4 ? 256 : 128;
}
// Row stride (elements of T) of the K / V tiles: 16 bytes of padding keeps
// the 8 rows of an ldmatrix on distinct banks.
__host__ __device__ constexpr int full_mma_ld(int d) {
  return d + 8;
}
__host__ __device__ constexpr bool full_mma_q_in_smem(int d) {
  return d >= TQ_MMA_Q_SMEM_MIN_D;
}
__host__ __device__ constexpr int full_mma_smem_bytes(int kb, int vb, int d) {
  int lut = 4 * 32 *
      (full_mma_lut_entries(kb) + (kb == vb ? 0 : full_mma_lut_entries(vb)));
  int kv = 2 * 2 * full_mma_bk(d) * full_mma_ld(d);
  int qf = full_mma_q_in_smem(d) ? 4 * kMmaWarps * (d / 16) * 4 * 32 : 0;
  return lut + kv + qf;
}

// c += A (a0..a3) x B (b0, b1), m16n8k16, T operands, float32 accumulators.
template <typename T>
__device__ inline void
tc_mma16(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  if constexpr (std::is_same_v<T, __half>) {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 "
        "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  } else {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
        "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
}

__device__ inline void tc_ldsm_x4(uint32_t addr, uint32_t (&r)[4]) {
  asm volatile(
      "ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
      : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
      : "r"(addr));
}

__device__ inline void tc_ldsm_x4_trans(uint32_t addr, uint32_t (&r)[4]) {
  asm volatile(
      "ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
      : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
      : "r"(addr));
}

template <int KB, int VB, int D, typename T>
__global__ void TQ_MMA_LAUNCH_BOUNDS turbo_sdpa_full_mma(
    const float* __restrict__ q,
    const uint32_t* __restrict__ kc,
    const T* __restrict__ ks,
    const uint32_t* __restrict__ vc,
    const T* __restrict__ vs,
    const void* __restrict__ mask,
    const float* __restrict__ sinks,
    float* __restrict__ out,
    const AttnParams p) {
  static_assert(full_mma_supported(D), "D must be 64, 128 or 256");
  static_assert(
      std::is_same_v<T, __half> || std::is_same_v<T, __nv_bfloat16>,
      "float16 or bfloat16 scales");
  constexpr bool kHalf = std::is_same_v<T, __half>;
  constexpr int BQ = kMmaBQ;
  constexpr int BK = full_mma_bk(D);
  constexpr int LD = full_mma_ld(D); // elements of T
  constexpr int KS = D / 16; // Q K^T k-steps
  constexpr int NT = BK / 8; // S n-tiles
  constexpr int PK = BK / 16; // P V k-steps
  constexpr int DT = D / 8; // O n-tiles
  constexpr int W8 = D / 8; // nibble words (8 coordinates) per vector
  constexpr int NI = BK * W8 / kMmaThreads; // tile words per thread
  constexpr int KE = full_mma_lut_entries(KB);
  constexpr bool kShareLut = KB == VB;
  constexpr bool kQSmem = full_mma_q_in_smem(D);
  // The codes of the next tile load into registers during this one.
  constexpr bool kPrefetch = D <= TQ_MMA_PREFETCH_MAX_D;
  static_assert(NI * kMmaThreads == BK * W8, "tile words per thread");

  extern __shared__ __align__(16) uint32_t tq_mma_smem[];
  __shared__ float s_cb[2][16];
  __shared__ __align__(16) float s_ks[BK];
  __shared__ __align__(16) float s_vs[BK];
  uint32_t* ktab = tq_mma_smem;
  uint32_t* vtab = kShareLut ? ktab : ktab + 32 * KE;
  T* Ks = reinterpret_cast<T*>(
      tq_mma_smem + 32 * (KE + (kShareLut ? 0 : full_mma_lut_entries(VB))));
  T* Vs = Ks + BK * LD;
  uint32_t* qsm = reinterpret_cast<uint32_t*>(Vs + BK * LD); // kQSmem

  const int tid = threadIdx.x;
  const int lane = tid & 31;
  const int warp = tid >> 5;
  const int g = lane >> 2;
  const int t = lane & 3;
  const int q0 = blockIdx.x * BQ;
  const int h = blockIdx.y;
  const int b = blockIdx.z;
  const int hk = h / p.gqa;

  if (tid < 16) {
    s_cb[0][tid] = centroid(KB, tid & ((1 << KB) - 1));
    s_cb[1][tid] = centroid(VB, tid & ((1 << VB) - 1));
  }
  __syncthreads();
  // Tables: uint4 f holds copies 4 (f % 8).. of entry f / 8.
  for (int f = tid; f < 8 * KE; f += kMmaThreads) {
    int e = f >> 3;
    uint32_t v = tc_pack2<T>(s_cb[0][e & 15], s_cb[0][e >> 4]);
    reinterpret_cast<uint4*>(ktab)[f] = make_uint4(v, v, v, v);
  }
  if constexpr (!kShareLut) {
    constexpr int VE = full_mma_lut_entries(VB);
    for (int f = tid; f < 8 * VE; f += kMmaThreads) {
      int e = f >> 3;
      uint32_t v = tc_pack2<T>(s_cb[1][e & 15], s_cb[1][e >> 4]);
      reinterpret_cast<uint4*>(vtab)[f] = make_uint4(v, v, v, v);
    }
  }

  // Query rows g and g + 8 of the warp: A fragments of k-step s hold dims
  // 16 s + 2 t (+1) (a0: row g, a1: row g + 8) and 16 s + 8 + 2 t (+1) (a2,
  // a3), scaled by 2^e_q per row.
  const int rq0 = q0 + 16 * warp + g; // rows rq0 and rq0 + 8
  uint32_t qa[kQSmem ? 1 : KS][4];
  float q_unscale[2];
  {
    float qmax[2] = {0.0f, 0.0f};
    const float* qp[2];
    bool ok[2];
#pragma unroll
    for (int r = 0; r < 2; r++) {
      int qi = rq0 + 8 * r;
      ok[r] = qi < p.qL;
      qp[r] =
          q + b * p.q_str[0] + h * p.q_str[1] + (ok[r] ? qi : 0) * p.q_str[2];
    }
#pragma unroll
    for (int s = 0; s < KS; s++) {
#pragma unroll
      for (int r = 0; r < 2; r++) {
#pragma unroll
        for (int x = 0; x < 2; x++) {
          int d = 16 * s + 8 * x + 2 * t;
          float a0 = ok[r] ? qp[r][d] * p.scale_log2 : 0.0f;
          float a1 = ok[r] ? qp[r][d + 1] * p.scale_log2 : 0.0f;
          qmax[r] = fmaxf(qmax[r], fmaxf(fabsf(a0), fabsf(a1)));
        }
      }
    }
    float qs[2];
#pragma unroll
    for (int r = 0; r < 2; r++) {
      qmax[r] = fmaxf(qmax[r], __shfl_xor_sync(0xffffffffu, qmax[r], 1));
      qmax[r] = fmaxf(qmax[r], __shfl_xor_sync(0xffffffffu, qmax[r], 2));
      int eq = 0;
      if (qmax[r] > 0.0f && qmax[r] <= FLT_MAX) {
        eq = min(120, max(-120, 13 - tc_exponent(qmax[r])));
      }
      qs[r] = tc_pow2(eq);
      q_unscale[r] = tc_pow2(-eq);
    }
#pragma unroll
    for (int s = 0; s < KS; s++) {
      uint32_t f[4];
#pragma unroll
      for (int x = 0; x < 2; x++) {
#pragma unroll
        for (int r = 0; r < 2; r++) {
          int d = 16 * s + 8 * x + 2 * t;
          float a0 = ok[r] ? qp[r][d] * p.scale_log2 : 0.0f;
          float a1 = ok[r] ? qp[r][d + 1] * p.scale_log2 : 0.0f;
          f[2 * x + r] = tc_pack2<T>(a0 * qs[r], a1 * qs[r]);
        }
      }
      if constexpr (kQSmem) {
#pragma unroll
        for (int i = 0; i < 4; i++) {
          qsm[((warp * KS + s) * 4 + i) * 32 + lane] = f[i];
        }
      } else {
#pragma unroll
        for (int i = 0; i < 4; i++) {
          qa[s][i] = f[i];
        }
      }
    }
  }

  float o[DT][4];
#pragma unroll
  for (int i = 0; i < DT; i++) {
#pragma unroll
    for (int c = 0; c < 4; c++) {
      o[i][c] = 0.0f;
    }
  }
  float m_r[2] = {-INFINITY, -INFINITY};
  float l_r[2] = {0.0f, 0.0f}; // partial over the lane's columns
  int ev = 0; // T = __half: o is in units of 2^ev (P guard)
  if (p.has_sinks) {
    const float sm = kLog2e * sinks[h];
#pragma unroll
    for (int r = 0; r < 2; r++) {
      m_r[r] = sm;
      l_r[r] = t == 0 ? 1.0f : 0.0f;
    }
  }
  const int qic[2] = {min(rq0, p.qL - 1), min(rq0 + 8, p.qL - 1)};

  const int k_stop = causal_key_stop(p, q0, BQ);

  const uint32_t* kbase = kc + b * p.k_str[0] + hk * p.k_str[1];
  const uint32_t* vbase = vc + b * p.v_str[0] + hk * p.v_str[1];
  const T* ksb = ks + b * p.ks_str[0] + hk * p.ks_str[1];
  const T* vsb = vs + b * p.vs_str[0] + hk * p.vs_str[1];

  // Tile words: item e = tid + 128 i is nibble word e % W8 of key e / W8.
  uint32_t ka[NI], kh[NI], va[NI], vh[NI];
  float sc_raw = 0.0f; // scale of key tid % 64 (K for tid < 64, else V)
  auto load_tile = [&](int k0) {
#pragma unroll
    for (int i = 0; i < NI; i++) {
      const int e = tid + kMmaThreads * i;
      const int j = k0 + e / W8;
      const int w = e % W8;
      if (j < p.kL) {
        load_slot<KB, D>(kbase + j * p.k_str[2], w, ka[i], kh[i]);
        load_slot<VB, D>(vbase + j * p.v_str[2], w, va[i], vh[i]);
      } else {
        ka[i] = kh[i] = va[i] = vh[i] = 0u;
      }
    }
    const int j = k0 + (tid & (BK - 1));
    sc_raw = 0.0f;
    if (j < p.kL && tid < 2 * BK) {
      sc_raw = tid < BK ? to_float(ksb[j * p.ks_str[2]])
                        : to_float(vsb[j * p.vs_str[2]]);
    }
  };

  const uint32_t ktl =
      static_cast<uint32_t>(__cvta_generic_to_shared(ktab + lane));
  const uint32_t vtl =
      static_cast<uint32_t>(__cvta_generic_to_shared(vtab + lane));
  const uint32_t ks_sh = static_cast<uint32_t>(__cvta_generic_to_shared(Ks));
  const uint32_t vs_sh = static_cast<uint32_t>(__cvta_generic_to_shared(Vs));
  // ldmatrix row addresses (bytes): K, key 8 n + (lane % 8), dims 32 s2 +
  // 8 (lane / 8); V, key 16 kk + (lane % 8) + 8 ((lane / 8) % 2), dims
  // 16 i2 + 8 (lane / 16).
  const uint32_t k_lane = ks_sh + 2 * ((lane & 7) * LD + 8 * (lane >> 3));
  const uint32_t v_lane =
      vs_sh + 2 * (((lane & 7) + 8 * ((lane >> 3) & 1)) * LD + 8 * (lane >> 4));

  if constexpr (kPrefetch) {
    if (k_stop > 0) {
      load_tile(0);
    }
  }
  for (int k0 = 0; k0 < k_stop; k0 += BK) {
    __syncthreads(); // tables ready / previous tile consumed
    if constexpr (!kPrefetch) {
      load_tile(k0);
    }
    // Expand the codes into centroids (no scales) in shared memory.
#pragma unroll
    for (int i = 0; i < NI; i++) {
      const int e = tid + kMmaThreads * i;
      const int key = e / W8;
      const int w = e % W8;
      uint32_t kn =
          KB == 4 ? ka[i] : spread2to4(ka[i]) | (spread1to4(kh[i]) << 2);
      uint32_t vn =
          VB == 4 ? va[i] : spread2to4(va[i]) | (spread1to4(vh[i]) << 2);
      uint4 kv4 = make_uint4(
          tc_lut(ktl, kn, 0),
          tc_lut(ktl, kn, 1),
          tc_lut(ktl, kn, 2),
          tc_lut(ktl, kn, 3));
      uint4 vv4 = make_uint4(
          tc_lut(vtl, vn, 0),
          tc_lut(vtl, vn, 1),
          tc_lut(vtl, vn, 2),
          tc_lut(vtl, vn, 3));
      *reinterpret_cast<uint4*>(Ks + key * LD + 8 * w) = kv4;
      *reinterpret_cast<uint4*>(Vs + key * LD + 8 * w) = vv4;
    }
    if (tid < BK) {
      s_ks[tid] = sc_raw;
    } else if (tid < 2 * BK) {
      s_vs[tid - BK] = sc_raw;
    }
    __syncthreads();
    if constexpr (kPrefetch) {
      if (k0 + BK < k_stop) {
        load_tile(k0 + BK);
      }
    }

    // S = Q K^T (log2 domain, rows scaled by 2^e_q).
    float s[NT][4];
#pragma unroll
    for (int n = 0; n < NT; n++) {
#pragma unroll
      for (int c = 0; c < 4; c++) {
        s[n][c] = 0.0f;
      }
    }
#pragma unroll
    for (int s2 = 0; s2 < KS / 2; s2++) {
      uint32_t qf0[4], qf1[4];
      if constexpr (kQSmem) {
#pragma unroll
        for (int i = 0; i < 4; i++) {
          qf0[i] = qsm[((warp * KS + 2 * s2) * 4 + i) * 32 + lane];
          qf1[i] = qsm[((warp * KS + 2 * s2 + 1) * 4 + i) * 32 + lane];
        }
      } else {
#pragma unroll
        for (int i = 0; i < 4; i++) {
          qf0[i] = qa[2 * s2][i];
          qf1[i] = qa[2 * s2 + 1][i];
        }
      }
#pragma unroll
      for (int n = 0; n < NT; n++) {
        uint32_t bf[4];
        tc_ldsm_x4(k_lane + 2 * (8 * n * LD + 32 * s2), bf);
        tc_mma16<T>(s[n], qf0, bf[0], bf[1]);
        tc_mma16<T>(s[n], qf1, bf[2], bf[3]);
      }
    }

    // Scores: s[n][c] is row g + 8 (c / 2), key k0 + 8 n + 2 t + (c % 2).
    // Without an array mask, a causal tile whose last key every row of the
    // block sees needs no mask (block-uniform).
    const bool tile_masked = p.mask_kind != kMaskNone ||
        (p.causal && k0 + BK - 1 > q0 + p.causal_offset);
    float mx[2] = {m_r[0], m_r[1]};
#pragma unroll
    for (int n = 0; n < NT; n++) {
      const float2 ksc = *reinterpret_cast<const float2*>(&s_ks[8 * n + 2 * t]);
#pragma unroll
      for (int c = 0; c < 4; c++) {
        const int r = c >> 1;
        const int j = k0 + 8 * n + 2 * t + (c & 1);
        float sc = s[n][c] * q_unscale[r] * ((c & 1) ? ksc.y : ksc.x);
        if (j < p.kL) {
          if (tile_masked) {
            sc = apply_mask(sc, p, mask, b, h, qic[r], j);
          }
        } else {
          sc = -INFINITY;
        }
        s[n][c] = sc;
        mx[r] = fmaxf(mx[r], sc);
      }
    }
    float mref[2], alpha[2];
#pragma unroll
    for (int r = 0; r < 2; r++) {
      mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 1));
      mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 2));
      mref[r] = safe_max_ref(mx[r]);
      alpha[r] = exp2f(m_r[r] - mref[r]);
      l_r[r] *= alpha[r];
      m_r[r] = mx[r];
    }
    // Rescale O only when some row's running max moved (rare once warm).
    if (__any_sync(0xffffffffu, alpha[0] != 1.0f || alpha[1] != 1.0f)) {
#pragma unroll
      for (int i = 0; i < DT; i++) {
#pragma unroll
        for (int c = 0; c < 4; c++) {
          o[i][c] *= alpha[c >> 1];
        }
      }
    }
    float vf = 1.0f;
    if constexpr (kHalf) {
      // Warp-uniform: every lane reduces the same BK value scales.
      float vmax = fabsf(s_vs[lane]);
      if constexpr (BK > 32) {
        vmax = fmaxf(vmax, fabsf(s_vs[lane + 32]));
      }
#pragma unroll
      for (int off = 16; off > 0; off >>= 1) {
        vmax = fmaxf(vmax, __shfl_xor_sync(0xffffffffu, vmax, off));
      }
      if (vmax > 0.0f && vmax <= FLT_MAX) {
        int e = tc_exponent(vmax);
        if (e > ev + 4 || e < ev - 8) {
          const float f = tc_pow2(ev - e);
#pragma unroll
          for (int i = 0; i < DT; i++) {
#pragma unroll
            for (int c = 0; c < 4; c++) {
              o[i][c] *= f;
            }
          }
          ev = e;
        }
      }
      vf = tc_pow2(-ev);
    }
    // P * value scale as A fragments: k-step kk = S n-tiles 2 kk, 2 kk + 1.
    uint32_t pa[PK][4];
#pragma unroll
    for (int n = 0; n < NT; n++) {
      const float2 vsc = *reinterpret_cast<const float2*>(&s_vs[8 * n + 2 * t]);
      const float v0 = vsc.x * vf, v1 = vsc.y * vf;
#pragma unroll
      for (int r = 0; r < 2; r++) {
        const float p0 = exp2f(s[n][2 * r] - mref[r]);
        const float p1 = exp2f(s[n][2 * r + 1] - mref[r]);
        l_r[r] += p0 + p1;
        pa[n >> 1][2 * (n & 1) + r] = tc_pack2<T>(p0 * v0, p1 * v1);
      }
    }
    // O += P V.
#pragma unroll
    for (int kk = 0; kk < PK; kk++) {
#pragma unroll
      for (int i2 = 0; i2 < DT / 2; i2++) {
        uint32_t bf[4];
        tc_ldsm_x4_trans(v_lane + 2 * (16 * kk * LD + 16 * i2), bf);
        tc_mma16<T>(o[2 * i2], pa[kk], bf[0], bf[1]);
        tc_mma16<T>(o[2 * i2 + 1], pa[kk], bf[2], bf[3]);
      }
    }
  }

  const float fo = kHalf ? tc_pow2(ev) : 1.0f;
#pragma unroll
  for (int r = 0; r < 2; r++) {
    float l = l_r[r];
    l += __shfl_xor_sync(0xffffffffu, l, 1);
    l += __shfl_xor_sync(0xffffffffu, l, 2);
    const int qi = rq0 + 8 * r;
    if (qi < p.qL) {
      const float inv = fo / l;
      float* orow = out + b * p.o_str[0] + h * p.o_str[1] + qi * p.o_str[2];
#pragma unroll
      for (int i = 0; i < DT; i++) {
        orow[8 * i + 2 * t] = o[i][2 * r] * inv;
        orow[8 * i + 2 * t + 1] = o[i][2 * r + 1] * inv;
      }
    }
  }
}

} // namespace mlx::core::cu::turbo
