// Copyright © 2026 TurboQuant-MLX contributors.
//
// Device code for TurboQuant (turbo3 / turbo4) KV-cache attention on CUDA.
// The format is specified in docs/format.md of the patch series. This header
// is self-contained (CUDA runtime + fp16/bf16 headers only) so that it can be
// compiled both inside MLX and by the standalone test harness in tests/cuda.
//
// Kernels:
//   turbo_encode       one warp per vector: norm, rotation, codebook, packing
//   turbo_decode       one warp per vector: unpack, scale, inverse rotation
//   turbo_sdpa_vector  decode attention (small qL); one block reads a chunk of
//                      the keys of one KV head once for all the query rows of
//                      its GQA group; writes either the final output (one
//                      pass) or per-split partials (split-K, two passes)
//   turbo_sdpa_vector_tc  the same on tensor cores (mma.sync, fp16/bf16
//                      operands, fp32 accumulation) for fp16/bf16 scales
//   turbo_sdpa_combine second pass of the split-K decode
//   turbo_sdpa_full    prefill attention: a 32x32 (queries x keys) tile flash
//                      kernel that dequantizes K/V tiles into shared memory
//   turbo_sdpa_full_mma  prefill on tensor cores (mma.sync, fp16/bf16
//                      operands, fp32 accumulation) for fp16/bf16 scales

#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <mma.h>
#include <cfloat>
#include <cstdint>
#include <type_traits>

namespace mlx::core::cu::turbo {

constexpr float kLog2e = 1.4426950408889634f;

// ---------------------------------------------------------------------------
// Format constants
// ---------------------------------------------------------------------------

__host__ __device__ constexpr int pow2_floor(int d) {
  int p = 1;
  while (p * 2 <= d) {
    p *= 2;
  }
  return p;
}

// Packed words per vector.
__host__ __device__ constexpr int packed_words(int bits, int d) {
  return bits == 4 ? d / 8 : d / 16 + (d + 31) / 32;
}

// Sign of coordinate i in stage t (1 or 2), docs/format.md section 1.
__host__ __device__ inline float rot_sign(uint32_t t, uint32_t i) {
  uint32_t h = (i + 1u) * 0x9E3779B1u + t * 0x7F4A7C15u;
  h ^= h >> 16;
  h *= 0x85EBCA6Bu;
  h ^= h >> 13;
  h *= 0xC2B2AE35u;
  h ^= h >> 16;
  return (h & 1u) ? -1.0f : 1.0f;
}

// Lloyd-Max centroids of N(0,1).
__host__ __device__ inline float centroid(int bits, int i) {
  // Written as a switch so it works in host and device code without a
  // __constant__ table.
  if (bits == 3) {
    switch (i) {
      case 0:
        return -2.1520f;
      case 1:
        return -1.3440f;
      case 2:
        return -0.7560f;
      case 3:
        return -0.2451f;
      case 4:
        return 0.2451f;
      case 5:
        return 0.7560f;
      case 6:
        return 1.3440f;
      default:
        return 2.1520f;
    }
  }
  switch (i) {
    case 0:
      return -2.7326f;
    case 1:
      return -2.0690f;
    case 2:
      return -1.6180f;
    case 3:
      return -1.2562f;
    case 4:
      return -0.9424f;
    case 5:
      return -0.6568f;
    case 6:
      return -0.3881f;
    case 7:
      return -0.1284f;
    case 8:
      return 0.1284f;
    case 9:
      return 0.3881f;
    case 10:
      return 0.6568f;
    case 11:
      return 0.9424f;
    case 12:
      return 1.2562f;
    case 13:
      return 1.6180f;
    case 14:
      return 2.0690f;
    default:
      return 2.7326f;
  }
}

template <typename T>
__device__ inline float to_float(T x) {
  return static_cast<float>(x);
}
template <>
__device__ inline float to_float<__half>(__half x) {
  return __half2float(x);
}
template <>
__device__ inline float to_float<__nv_bfloat16>(__nv_bfloat16 x) {
  return __bfloat162float(x);
}

template <typename T>
__device__ inline T from_float(float x) {
  return static_cast<T>(x);
}
template <>
__device__ inline __half from_float<__half>(float x) {
  return __float2half_rn(x);
}
template <>
__device__ inline __nv_bfloat16 from_float<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}

// Code of coordinate c (0..7) of the 8-coordinate slot whose words are
// (w4) for turbo4 or (lo16, hi8) for turbo3.
template <int BITS>
__device__ inline int slot_code(uint32_t a, uint32_t b, int c) {
  if constexpr (BITS == 4) {
    return (a >> (4 * c)) & 15u;
  } else {
    return ((a >> (2 * c)) & 3u) | (((b >> c) & 1u) << 2);
  }
}

// Loads the words holding slot s (coordinates 8s..8s+7) of a packed vector.
template <int BITS, int D>
__device__ inline void
load_slot(const uint32_t* vec, int s, uint32_t& a, uint32_t& b) {
  if constexpr (BITS == 4) {
    a = __ldg(vec + s);
    b = 0;
  } else {
    a = __ldg(vec + (s >> 1)) >> (16 * (s & 1));
    b = __ldg(vec + D / 16 + (s >> 2)) >> (8 * (s & 3));
  }
}

// ---------------------------------------------------------------------------
// Rotation helpers (one warp owns one vector in shared memory)
// ---------------------------------------------------------------------------

// In-place Walsh-Hadamard transform of buf[off, off + P): butterflies in
// increasing h, then the 1 / sqrt(P) normalization. The float32 result
// is independent of which lane does which butterfly.
template <int P>
__device__ inline void warp_fwht(float* buf, int off, int lane) {
#pragma unroll
  for (int h = 1; h < P; h <<= 1) {
    for (int k = lane; k < P / 2; k += 32) {
      int i = off + (k / h) * 2 * h + (k % h);
      float a = buf[i];
      float b = buf[i + h];
      buf[i] = __fadd_rn(a, b);
      buf[i + h] = __fsub_rn(a, b);
    }
    __syncwarp();
  }
  // Normalization by fl32(1 / fl32(sqrt(P))), as the CPU backend does.
  const float norm = __fdiv_rn(1.0f, __fsqrt_rn(float(P)));
  for (int i = lane; i < P; i += 32) {
    buf[off + i] = __fmul_rn(buf[off + i], norm);
  }
  __syncwarp();
}

// Forward rotation of buf[0, D) in place, its stage-1 signs already applied
// (the caller multiplies coordinate i by rot_sign(1, i) when it loads it).
template <int D>
__device__ inline void warp_rotate_presigned(float* buf, int lane) {
  constexpr int P = pow2_floor(D);
  warp_fwht<P>(buf, 0, lane);
  for (int i = lane; i < D; i += 32) {
    buf[i] = buf[i] * rot_sign(2, i);
  }
  __syncwarp();
  warp_fwht<P>(buf, D - P, lane);
}

// Inverse rotation of buf[0, D) in place, except the final stage-1 signs
// (the caller applies rot_sign(1, i) when it stores coordinate i).
template <int D>
__device__ inline void warp_inverse_rotate_unsigned(float* buf, int lane) {
  constexpr int P = pow2_floor(D);
  warp_fwht<P>(buf, D - P, lane);
  for (int i = lane; i < D; i += 32) {
    buf[i] = buf[i] * rot_sign(2, i);
  }
  __syncwarp();
  warp_fwht<P>(buf, 0, lane);
}

// Sum of squares of buf[0, D) in a pinned order: sequential in i, one fused
// multiply-add per term (acc = fma(v, v, acc)), the order the CPU backend
// compiles to where the compiler contracts `acc += v * v` (arm64 clang).
// Run by every lane on the same shared data so all lanes hold the result.
template <int D>
__device__ inline float seq_sum_squares(const float* buf) {
  float acc = 0.0f;
#pragma unroll 16
  for (int i = 0; i < D; i++) {
    acc = __fmaf_rn(buf[i], buf[i], acc);
  }
  return acc;
}

// ---------------------------------------------------------------------------
// Encode: x (N, D) in T -> packed (N, W) uint32, scales (N) in T
// ---------------------------------------------------------------------------

constexpr int kEncodeWarps = 4;

template <typename T, int D, int BITS>
__global__ void __launch_bounds__(32 * kEncodeWarps) turbo_encode(
    const T* __restrict__ x,
    uint32_t* __restrict__ packed,
    T* __restrict__ scales,
    int64_t n_vec) {
  constexpr int W = packed_words(BITS, D);
  constexpr int NL = 1 << BITS;
  __shared__ float sbuf[kEncodeWarps][D];
  __shared__ uint8_t sidx[kEncodeWarps][D];

  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int64_t v = int64_t(blockIdx.x) * kEncodeWarps + warp;
  if (v >= n_vec) {
    return;
  }
  float* buf = sbuf[warp];
  uint8_t* idx = sidx[warp];
  const T* xv = x + v * D;

  // 1. norm
  for (int i = lane; i < D; i += 32) {
    buf[i] = to_float(xv[i]);
  }
  __syncwarp();
  const float n = __fsqrt_rn(seq_sum_squares<D>(buf));
  __syncwarp();

  // 2-3. u = x / n, stage 1, stage 2
  for (int i = lane; i < D; i += 32) {
    float u = n > 0.0f ? __fdiv_rn(buf[i], n) : 0.0f;
    buf[i] = u * rot_sign(1, i);
  }
  __syncwarp();
  warp_rotate_presigned<D>(buf, lane);

  // 4. codes, 5. norm correction
  const float sd = __fsqrt_rn(float(D));
  for (int i = lane; i < D; i += 32) {
    float z = __fmul_rn(buf[i], sd);
    int k = 0;
#pragma unroll
    for (int j = 0; j < NL - 1; j++) {
      float b =
          __fmul_rn(__fadd_rn(centroid(BITS, j), centroid(BITS, j + 1)), 0.5f);
      k += (z > b) ? 1 : 0;
    }
    idx[i] = uint8_t(k);
  }
  __syncwarp();
  for (int i = lane; i < D; i += 32) {
    buf[i] = centroid(BITS, idx[i]);
  }
  __syncwarp();
  const float rho = __fsqrt_rn(seq_sum_squares<D>(buf));
  float scale = __fdiv_rn(n, rho);
  if (!isfinite(n)) {
    scale = __int_as_float(0x7fc00000); // NaN or Inf in the input: NaN scale
  }
  if (lane == 0) {
    scales[v] = from_float<T>(scale);
  }

  // 6. pack
  uint32_t* out = packed + v * W;
  if constexpr (BITS == 4) {
    for (int w = lane; w < W; w += 32) {
      uint32_t word = 0;
#pragma unroll
      for (int c = 0; c < 8; c++) {
        word |= uint32_t(idx[8 * w + c]) << (4 * c);
      }
      out[w] = word;
    }
  } else {
    constexpr int WL = D / 16;
    for (int w = lane; w < W; w += 32) {
      uint32_t word = 0;
      if (w < WL) {
#pragma unroll
        for (int c = 0; c < 16; c++) {
          word |= uint32_t(idx[16 * w + c] & 3u) << (2 * c);
        }
      } else {
        int base = 32 * (w - WL);
        for (int c = 0; c < 32 && base + c < D; c++) {
          word |= uint32_t(idx[base + c] >> 2) << c;
        }
      }
      out[w] = word;
    }
  }
}

// ---------------------------------------------------------------------------
// Decode (dequantize): packed (N, W), scales (N) in T -> x (N, D) in U,
// original domain (R^T applied).
// ---------------------------------------------------------------------------

template <typename T, typename U, int D, int BITS>
__global__ void __launch_bounds__(32 * kEncodeWarps) turbo_decode(
    const uint32_t* __restrict__ packed,
    const T* __restrict__ scales,
    U* __restrict__ x,
    int64_t n_vec) {
  constexpr int W = packed_words(BITS, D);
  __shared__ float sbuf[kEncodeWarps][D];
  __shared__ float lut[16];
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  if (threadIdx.x < 16) {
    lut[threadIdx.x] = centroid(BITS, threadIdx.x & ((1 << BITS) - 1));
  }
  __syncthreads();
  const int64_t v = int64_t(blockIdx.x) * kEncodeWarps + warp;
  if (v >= n_vec) {
    return;
  }
  float* buf = sbuf[warp];
  const uint32_t* in = packed + v * W;
  const float scale = to_float(scales[v]);
  for (int s = lane; s < D / 8; s += 32) {
    uint32_t a, b;
    load_slot<BITS, D>(in, s, a, b);
#pragma unroll
    for (int c = 0; c < 8; c++) {
      buf[8 * s + c] = scale * lut[slot_code<BITS>(a, b, c)];
    }
  }
  __syncwarp();
  warp_inverse_rotate_unsigned<D>(buf, lane);
  for (int i = lane; i < D; i += 32) {
    x[v * D + i] = from_float<U>(buf[i] * rot_sign(1, i));
  }
}

// ---------------------------------------------------------------------------
// Rotation: rows (N, D), contiguous, TI -> TO; y = R x (forward) or R^T x
// (inverse) in float32, as turbo::rotate. The attention's query and output
// rotations (fused_rotation): one launch each.
// ---------------------------------------------------------------------------

template <typename TI, typename TO, int D, bool INVERSE>
__global__ void __launch_bounds__(32 * kEncodeWarps)
    turbo_rotate(const TI* __restrict__ x, TO* __restrict__ y, int64_t n_vec) {
  __shared__ float sbuf[kEncodeWarps][D];
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int64_t v = int64_t(blockIdx.x) * kEncodeWarps + warp;
  if (v >= n_vec) {
    return;
  }
  float* buf = sbuf[warp];
  const TI* in = x + v * D;
  TO* o = y + v * D;
  if constexpr (INVERSE) {
    for (int i = lane; i < D; i += 32) {
      buf[i] = to_float(in[i]);
    }
    __syncwarp();
    warp_inverse_rotate_unsigned<D>(buf, lane);
    for (int i = lane; i < D; i += 32) {
      o[i] = from_float<TO>(buf[i] * rot_sign(1, i));
    }
  } else {
    for (int i = lane; i < D; i += 32) {
      buf[i] = to_float(in[i]) * rot_sign(1, i);
    }
    __syncwarp();
    warp_rotate_presigned<D>(buf, lane);
    for (int i = lane; i < D; i += 32) {
      o[i] = from_float<TO>(buf[i]);
    }
  }
}

// Decode preparation (fused_rotation), one launch per attention call: one
// warp per row rotates the n_q query rows (B, Hq, qL) and then the n_sv sink
// value rows (B or 1, Hkv) from T into float32 (y = R x), and with a key bias
// writes each query row's sink logit, sinks[h] (0 without sinks) - scale * q
// . (key_shift - first_key) with q as given, to row_sinks (B, Hq, qL).
template <typename T>
struct PrepArgs {
  int64_t n_q;
  int64_t n_sv;
  int Hq;
  int qL;
  int gqa;
  float scale;
  const float* sinks; // (Hq) or nullptr
  const T* key_shift; // rows of D, (B or 1, Hkv), or nullptr
  const T* first_key; // the same
  int64_t ksh_b_str; // 0 when shared by the batch
  int64_t fk_b_str;
  float* row_sinks; // nullptr: no key bias
};

template <typename T, int D>
__global__ void __launch_bounds__(32 * kEncodeWarps) turbo_attention_prep(
    const T* __restrict__ q,
    float* __restrict__ q_rot,
    const T* __restrict__ sv,
    float* __restrict__ sv_rot,
    const PrepArgs<T> a) {
  __shared__ float sbuf[kEncodeWarps][D];
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int64_t v = int64_t(blockIdx.x) * kEncodeWarps + warp;
  if (v >= a.n_q + a.n_sv) {
    return;
  }
  const bool is_q = v < a.n_q;
  const T* in = is_q ? q + v * D : sv + (v - a.n_q) * D;
  float* o = is_q ? q_rot + v * D : sv_rot + (v - a.n_q) * D;
  float* buf = sbuf[warp];
  float dot = 0.0f;
  if (is_q && a.row_sinks) {
    const int h = (v / a.qL) % a.Hq;
    const int64_t b = v / (int64_t(a.Hq) * a.qL);
    const int64_t kv_row = int64_t(h / a.gqa) * D;
    const T* mu =
        a.key_shift ? a.key_shift + b * a.ksh_b_str + kv_row : nullptr;
    const T* k0 = a.first_key ? a.first_key + b * a.fk_b_str + kv_row : nullptr;
    for (int i = lane; i < D; i += 32) {
      float bias =
          (mu ? to_float(mu[i]) : 0.0f) - (k0 ? to_float(k0[i]) : 0.0f);
      dot += to_float(in[i]) * bias;
    }
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) {
      dot += __shfl_xor_sync(0xffffffff, dot, off);
    }
    if (lane == 0) {
      a.row_sinks[v] = (a.sinks ? a.sinks[h] : 0.0f) - a.scale * dot;
    }
  }
  for (int i = lane; i < D; i += 32) {
    buf[i] = to_float(in[i]) * rot_sign(1, i);
  }
  __syncwarp();
  warp_rotate_presigned<D>(buf, lane);
  for (int i = lane; i < D; i += 32) {
    o[i] = buf[i];
  }
}

// ---------------------------------------------------------------------------
// Attention
// ---------------------------------------------------------------------------

enum MaskKind : int { kMaskNone = 0, kMaskBool = 1, kMaskFloat = 2 };

struct AttnParams {
  int B;
  int Hq;
  int Hkv;
  int qL;
  int kL;
  int gqa; // Hq / Hkv
  float scale_log2; // scale * log2(e)
  int causal; // bottom-right aligned causal mask
  int causal_offset; // kL - qL
  int mask_kind;
  int has_sinks;
  int num_splits; // vector kernel: > 1 writes partials
  int keys_per_split;
  int row_groups; // vector kernel: ceil(gqa * qL / NQ)
  // Strides in elements for dims (B, H, L); the last dim is contiguous.
  int64_t q_str[3];
  int64_t k_str[3];
  int64_t ks_str[3];
  int64_t v_str[3];
  int64_t vs_str[3];
  int64_t o_str[3];
  int64_t m_str[4]; // (B, Hq, qL, kL), 0 for broadcast
  // Sink logits (natural log): per head {0, 1, 0}, or per row (B, Hq, qL)
  // {Hq qL, qL, 1} with the key bias of the exact transforms folded in.
  int64_t sk_str[3];
  // Decode: the sinks' values, float32 (B or 1, Hkv, D) in the rotated
  // domain, or nullptr (a sink of value 0). sv_b_str is 0 when shared.
  const float* sink_values;
  int64_t sv_b_str;
};

// The sink logit of query row (b, h, qi).
__device__ inline float
sink_logit(const AttnParams& p, const float* sinks, int b, int h, int qi) {
  return sinks[b * p.sk_str[0] + h * p.sk_str[1] + qi * p.sk_str[2]];
}

// The sink's share of a decode row's output before normalization, in the
// merged frame of maximum mb (log2 domain): its weight times its value, for
// split 0 (which holds the sink), 0 without a sink value.
template <int D>
__device__ inline float sink_value_term(
    const AttnParams& p,
    const float* sinks,
    int split,
    int b,
    int h,
    int qi,
    int d,
    float mb) {
  if (p.sink_values == nullptr || split != 0) {
    return 0.0f;
  }
  const float* sv = p.sink_values + b * p.sv_b_str + int64_t(h / p.gqa) * D;
  return exp2f(kLog2e * sink_logit(p, sinks, b, h, qi) - mb) * sv[d];
}

// Keys a prefill tile of queries [q0, q0 + bq) must visit: with a causal
// mask, up to the last key any row of the tile sees, unless some row sees no
// key at all (then it averages all keys, so all are visited).
__device__ inline int causal_key_stop(const AttnParams& p, int q0, int bq) {
  if (!p.causal || q0 + p.causal_offset < 0) {
    return p.kL;
  }
  int last_lim = min(q0 + bq - 1, p.qL - 1) + p.causal_offset;
  return min(p.kL, last_lim + 1);
}

// Applies mask / causality to a log2-domain score.
__device__ inline float apply_mask(
    float s,
    const AttnParams& p,
    const void* mask,
    int b,
    int h,
    int qi,
    int j) {
  if (p.causal && j > qi + p.causal_offset) {
    return -FLT_MAX;
  }
  if (p.mask_kind == kMaskBool) {
    const bool* m = static_cast<const bool*>(mask);
    if (!m[b * p.m_str[0] + h * p.m_str[1] + qi * p.m_str[2] +
           j * p.m_str[3]]) {
      return -FLT_MAX;
    }
  } else if (p.mask_kind == kMaskFloat) {
    const float* m = static_cast<const float*>(mask);
    s += kLog2e *
        m[b * p.m_str[0] + h * p.m_str[1] + qi * p.m_str[2] + j * p.m_str[3]];
  }
  return s;
}

// Online softmax step helpers; m may be -inf only while nothing (or only
// -inf scores from a float mask) was seen.
__device__ inline float safe_max_ref(float m) {
  return m == -INFINITY ? 0.0f : m;
}

constexpr int kVecThreads = 128;

__host__ __device__ constexpr int pow2_ceil(int n) {
  int p = 1;
  while (p < n) {
    p *= 2;
  }
  return p;
}

// Coordinates per thread in the vector kernel for NQ rows per block: fewer
// threads per key (fewer shuffles, less redundant softmax work) where the
// registers allow (q and the accumulator take 2 * CPT * NQ registers).
__host__ __device__ constexpr int vec_cpt(int d, int nq) {
  return nq >= 8 ? 8 : (nq >= 4 ? 16 : (d % 32 == 0 ? 32 : 16));
}

// Spreads the eight 2-bit fields of x (bits 0..15) to bits 4i..4i+1.
__device__ inline uint32_t spread2to4(uint32_t x) {
  x &= 0xFFFFu;
  x = (x | (x << 8)) & 0x00FF00FFu;
  x = (x | (x << 4)) & 0x0F0F0F0Fu;
  x = (x | (x << 2)) & 0x33333333u;
  return x;
}

// Spreads the eight bits of x (bits 0..7) to bits 4i.
__device__ inline uint32_t spread1to4(uint32_t x) {
  x &= 0xFFu;
  x = (x | (x << 12)) & 0x000F000Fu;
  x = (x | (x << 6)) & 0x03030303u;
  x = (x | (x << 3)) & 0x11111111u;
  return x;
}

// The codes of the CPT consecutive coordinates [CPT t, CPT t + CPT) of one
// packed vector, held by thread t as nibbles: code c is bits 4(c % 8)..+3 of
// nib[c / 8] (turbo3 planes are merged into nibbles once after the load, so
// extracting a code costs the same for both modes).
template <int BITS, int D, int CPT>
struct SlotCodes {
  static constexpr int NW = CPT / 8;
  uint32_t nib[NW];

  __device__ inline void load(const uint32_t* vec, int t) {
    if constexpr (BITS == 4) {
#pragma unroll
      for (int k = 0; k < NW; k++) {
        nib[k] = __ldg(vec + NW * t + k);
      }
    } else {
      constexpr int NLO = CPT >= 16 ? CPT / 16 : 1;
      constexpr int NHI = CPT >= 32 ? CPT / 32 : 1;
      uint32_t lo[NLO];
      uint32_t hi[NHI];
      if constexpr (CPT >= 16) {
#pragma unroll
        for (int k = 0; k < NLO; k++) {
          lo[k] = __ldg(vec + NLO * t + k);
        }
      } else { // CPT == 8: half a word
        lo[0] = __ldg(vec + (t >> 1)) >> (16 * (t & 1));
      }
      if constexpr (CPT >= 32) {
#pragma unroll
        for (int k = 0; k < NHI; k++) {
          hi[k] = __ldg(vec + D / 16 + NHI * t + k);
        }
      } else {
        constexpr int per = 32 / CPT; // threads sharing a high-plane word
        hi[0] = __ldg(vec + D / 16 + t / per) >> (CPT * (t % per));
      }
#pragma unroll
      for (int k = 0; k < NW; k++) {
        uint32_t l16 = lo[k >> 1] >> (16 * (k & 1));
        uint32_t h8 = hi[k >> 2] >> (8 * (k & 3));
        nib[k] = spread2to4(l16) | (spread1to4(h8) << 2);
      }
    }
  }
  __device__ inline void clear() {
#pragma unroll
    for (int k = 0; k < NW; k++) {
      nib[k] = 0;
    }
  }
  // Code of coordinate c (compile-time after unrolling) of the slot.
  __device__ inline int code(int c) const {
    return (nib[c >> 3] >> (4 * (c & 7))) & 15u;
  }
};

// Vector (decode) attention. Grid: (num_splits, Hkv * row_groups, B).
// Block: 128 threads = NSG subgroups of TPK threads; thread t of a subgroup
// owns coordinates [CPT t, CPT t + CPT); subgroup g processes the keys
// j = start + g, start + g + NSG, ... of its split for all NQ rows, U keys at
// a time, the codes of the next U keys loaded while the current ones are
// used. Rows r of a KV head enumerate (query head within group, position).
// MASKED = false skips the mask / causal logic (no mask, or qL = 1 causal).
template <int KB, int VB, int D, int NQ, int CPT, bool MASKED, typename T>
__global__ void __launch_bounds__(kVecThreads) turbo_sdpa_vector(
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
  constexpr int NT = D / CPT; // active threads per key
  static_assert(NT * CPT == D, "CPT must divide D");
  constexpr int TPK = pow2_ceil(NT);
  constexpr int NSG = kVecThreads / TPK;
  constexpr int U = NQ >= 8 ? 2 : 4; // keys in flight per subgroup

  __shared__ float klut[16];
  __shared__ float vlut[16];
  __shared__ float s_m[NSG][NQ];
  __shared__ float s_l[NSG][NQ];
  __shared__ float s_o[NSG][NQ][D];

  const int tid = threadIdx.x;
  const int sg = tid / TPK;
  const int t = tid % TPK;
  const bool active = t < NT;
  const int split = blockIdx.x;
  const int hk = blockIdx.y / p.row_groups;
  const int rg = blockIdx.y % p.row_groups;
  const int b = blockIdx.z;
  const int nrows = p.gqa * p.qL;

  if (tid < 16) {
    klut[tid] = centroid(KB, tid & ((1 << KB) - 1));
    vlut[tid] = centroid(VB, tid & ((1 << VB) - 1));
  }

  // Query rows of this block.
  int row_h[NQ];
  int row_q[NQ];
  bool row_ok[NQ];
  float qr[NQ][CPT];
#pragma unroll
  for (int r = 0; r < NQ; r++) {
    int row = rg * NQ + r;
    row_ok[r] = row < nrows;
    int rr = row_ok[r] ? row : 0;
    row_h[r] = hk * p.gqa + rr / p.qL;
    row_q[r] = rr % p.qL;
    const float* qp = q + b * p.q_str[0] + row_h[r] * p.q_str[1] +
        row_q[r] * p.q_str[2] + CPT * (active ? t : 0);
#pragma unroll
    for (int c = 0; c < CPT; c++) {
      qr[r][c] = (active && row_ok[r]) ? qp[c] * p.scale_log2 : 0.0f;
    }
  }

  float acc[NQ][CPT];
  float m[NQ];
  float l[NQ];
#pragma unroll
  for (int r = 0; r < NQ; r++) {
    m[r] = -INFINITY;
    l[r] = 0.0f;
#pragma unroll
    for (int c = 0; c < CPT; c++) {
      acc[r][c] = 0.0f;
    }
    // The sink joins the softmax once per row: in split 0, subgroup 0.
    if (p.has_sinks && split == 0 && sg == 0 && row_ok[r]) {
      m[r] = kLog2e * sink_logit(p, sinks, b, row_h[r], row_q[r]);
      l[r] = 1.0f;
    }
  }
  __syncthreads();

  const int k_begin = split * p.keys_per_split;
  const int k_end = min(p.kL, k_begin + p.keys_per_split);

  const uint32_t* kbase = kc + b * p.k_str[0] + hk * p.k_str[1];
  const uint32_t* vbase = vc + b * p.v_str[0] + hk * p.v_str[1];
  const T* ksb = ks + b * p.ks_str[0] + hk * p.ks_str[1];
  const T* vsb = vs + b * p.vs_str[0] + hk * p.vs_str[1];

  SlotCodes<KB, D, CPT> kn[U];
  SlotCodes<VB, D, CPT> vn[U];
  float ksn[U], vsn[U];
  auto load_batch = [&](int jb) {
#pragma unroll
    for (int u = 0; u < U; u++) {
      int j = jb + sg + u * NSG;
      int jj = j < k_end ? j : k_begin;
      if (active) {
        kn[u].load(kbase + jj * p.k_str[2], t);
        vn[u].load(vbase + jj * p.v_str[2], t);
      } else {
        kn[u].clear();
        vn[u].clear();
      }
      ksn[u] = to_float(ksb[jj * p.ks_str[2]]);
      vsn[u] = to_float(vsb[jj * p.vs_str[2]]);
    }
  };
  if (k_begin < k_end) {
    load_batch(k_begin);
  }

  // The loop bound is warp-uniform (the shuffles below need every lane).
  for (int jb = k_begin; jb < k_end; jb += NSG * U) {
    SlotCodes<KB, D, CPT> kcur[U];
    SlotCodes<VB, D, CPT> vcur[U];
    float ksc[U], vsc[U];
#pragma unroll
    for (int u = 0; u < U; u++) {
      kcur[u] = kn[u];
      vcur[u] = vn[u];
      ksc[u] = ksn[u];
      vsc[u] = vsn[u];
    }
    if (jb + NSG * U < k_end) {
      load_batch(jb + NSG * U);
    }
    // Scores.
    float s[U][NQ];
#pragma unroll
    for (int u = 0; u < U; u++) {
      float d[NQ];
#pragma unroll
      for (int r = 0; r < NQ; r++) {
        d[r] = 0.0f;
      }
#pragma unroll
      for (int c = 0; c < CPT; c++) {
        float kv = klut[kcur[u].code(c)];
#pragma unroll
        for (int r = 0; r < NQ; r++) {
          d[r] += qr[r][c] * kv;
        }
      }
#pragma unroll
      for (int r = 0; r < NQ; r++) {
#pragma unroll
        for (int off = TPK / 2; off > 0; off >>= 1) {
          d[r] += __shfl_xor_sync(0xffffffffu, d[r], off);
        }
        s[u][r] = d[r] * ksc[u];
      }
    }
    // Online softmax; s becomes p * value scale.
#pragma unroll
    for (int r = 0; r < NQ; r++) {
      float mnew = m[r];
#pragma unroll
      for (int u = 0; u < U; u++) {
        int j = jb + sg + u * NSG;
        float sc = s[u][r];
        if constexpr (MASKED) {
          // Only keys of this split: past kL the mask must not be read.
          if (j < k_end) {
            sc = apply_mask(sc, p, mask, b, row_h[r], row_q[r], j);
          }
        }
        sc = j < k_end ? sc : -INFINITY;
        s[u][r] = sc;
        mnew = fmaxf(mnew, sc);
      }
      float mref = safe_max_ref(mnew);
      if (mnew != m[r]) { // uniform in the subgroup; rare once warm
        float alpha = exp2f(m[r] - mref);
        l[r] *= alpha;
#pragma unroll
        for (int c = 0; c < CPT; c++) {
          acc[r][c] *= alpha;
        }
        m[r] = mnew;
      }
#pragma unroll
      for (int u = 0; u < U; u++) {
        float pu = exp2f(s[u][r] - mref);
        l[r] += pu;
        s[u][r] = pu * vsc[u];
      }
    }
    // Values.
#pragma unroll
    for (int u = 0; u < U; u++) {
#pragma unroll
      for (int c = 0; c < CPT; c++) {
        float vv = vlut[vcur[u].code(c)];
#pragma unroll
        for (int r = 0; r < NQ; r++) {
          acc[r][c] += s[u][r] * vv;
        }
      }
    }
  }

  // Merge the subgroups of the block.
  if (t == 0) {
#pragma unroll
    for (int r = 0; r < NQ; r++) {
      s_m[sg][r] = m[r];
    }
  }
  __syncthreads();
#pragma unroll
  for (int r = 0; r < NQ; r++) {
    float mb = -INFINITY;
#pragma unroll
    for (int g = 0; g < NSG; g++) {
      mb = fmaxf(mb, s_m[g][r]);
    }
    float f = exp2f(m[r] - safe_max_ref(mb));
    if (t == 0) {
      s_l[sg][r] = l[r] * f;
    }
    if (active) {
#pragma unroll
      for (int c = 0; c < CPT; c++) {
        s_o[sg][r][CPT * t + c] = acc[r][c] * f;
      }
    }
  }
  __syncthreads();

  for (int e = tid; e < NQ * D; e += kVecThreads) {
    int r = e / D;
    int d = e % D;
    int row = rg * NQ + r;
    if (row >= nrows) {
      continue;
    }
    float o = 0.0f;
    float lsum = 0.0f;
    float mb = -INFINITY;
#pragma unroll
    for (int g = 0; g < NSG; g++) {
      o += s_o[g][r][d];
      lsum += s_l[g][r];
      mb = fmaxf(mb, s_m[g][r]);
    }
    int h = hk * p.gqa + row / p.qL;
    int qi = row % p.qL;
    o += sink_value_term<D>(p, sinks, split, b, h, qi, d, mb);
    if (p.num_splits == 1) {
      out[b * p.o_str[0] + h * p.o_str[1] + qi * p.o_str[2] + d] = o / lsum;
    } else {
      int64_t grow = (int64_t(b) * p.Hq + h) * p.qL + qi;
      int64_t prow = int64_t(split) * p.B * p.Hq * p.qL + grow;
      part_o[prow * D + d] = o;
      if (d == 0) {
        part_ml[2 * prow] = mb;
        part_ml[2 * prow + 1] = lsum;
      }
    }
  }
}

// Second pass of the split-K decode. Grid: B * Hq * qL blocks of 128 threads.
constexpr int kMaxSplits = 1024;

__device__ inline float block_reduce_128(float v, float* red, bool is_max) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) {
    float o = __shfl_xor_sync(0xffffffffu, v, off);
    v = is_max ? fmaxf(v, o) : v + o;
  }
  if ((threadIdx.x & 31) == 0) {
    red[threadIdx.x >> 5] = v;
  }
  __syncthreads();
  float r = red[0];
#pragma unroll
  for (int w = 1; w < 4; w++) {
    r = is_max ? fmaxf(r, red[w]) : r + red[w];
  }
  __syncthreads();
  return r;
}

// ROTATE (fused_rotation): the row is rotated back (R^T) and stored as TO;
// otherwise TO is float and the row stays in the rotated domain.
template <int D, typename TO, bool ROTATE>
__global__ void __launch_bounds__(128) turbo_sdpa_combine(
    const float* __restrict__ part_o,
    const float* __restrict__ part_ml,
    TO* __restrict__ out,
    const AttnParams p) {
  __shared__ float sw[kMaxSplits];
  __shared__ float red[4];
  __shared__ float so[ROTATE ? D : 1];
  const int64_t grow = blockIdx.x;
  const int64_t nrow = int64_t(p.B) * p.Hq * p.qL;
  const int qi = grow % p.qL;
  const int h = (grow / p.qL) % p.Hq;
  const int b = grow / (int64_t(p.qL) * p.Hq);
  const int S = p.num_splits;
  float mloc = -INFINITY;
  for (int s = threadIdx.x; s < S; s += 128) {
    mloc = fmaxf(mloc, part_ml[2 * (s * nrow + grow)]);
  }
  const float Mr = safe_max_ref(block_reduce_128(mloc, red, true));
  float lloc = 0.0f;
  for (int s = threadIdx.x; s < S; s += 128) {
    int64_t prow = s * nrow + grow;
    float f = exp2f(part_ml[2 * prow] - Mr);
    sw[s] = f;
    lloc += part_ml[2 * prow + 1] * f;
  }
  const float L = block_reduce_128(lloc, red, false); // also orders sw
  // Thread (group g, column c) sums splits g, g + G, ... of dims [4c, 4c + 4)
  // with 16-byte loads; the G groups are then added through shared memory.
  constexpr int NV = D / 4;
  constexpr int G = 128 / NV;
  static_assert(D % 4 == 0 && G >= 1, "D must be a multiple of 4, <= 512");
  __shared__ float sacc[G * D];
  {
    const int c = threadIdx.x % NV;
    const int g = threadIdx.x / NV;
    if (g < G) {
      float4 acc = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
#pragma unroll 4
      for (int s = g; s < S; s += G) {
        const float w = sw[s];
        const float4 v =
            reinterpret_cast<const float4*>(part_o + (s * nrow + grow) * D)[c];
        acc.x += w * v.x;
        acc.y += w * v.y;
        acc.z += w * v.z;
        acc.w += w * v.w;
      }
      float* dst = sacc + g * D + 4 * c;
      dst[0] = acc.x;
      dst[1] = acc.y;
      dst[2] = acc.z;
      dst[3] = acc.w;
    }
  }
  __syncthreads();
  for (int d = threadIdx.x; d < D; d += 128) {
    float o = 0.0f;
#pragma unroll
    for (int g = 0; g < G; g++) {
      o += sacc[g * D + d];
    }
    if constexpr (ROTATE) {
      so[d] = o / L;
    } else {
      out[b * p.o_str[0] + h * p.o_str[1] + qi * p.o_str[2] + d] = o / L;
    }
  }
  if constexpr (ROTATE) {
    __syncthreads();
    if (threadIdx.x < 32) {
      warp_inverse_rotate_unsigned<D>(so, threadIdx.x);
      TO* orow = out + b * p.o_str[0] + h * p.o_str[1] + qi * p.o_str[2];
      for (int d = threadIdx.x; d < D; d += 32) {
        orow[d] = from_float<TO>(so[d] * rot_sign(1, d));
      }
    }
  }
}

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
    qmax = fmaxf(qmax, __shfl_xor_sync(0xffffffffu, qmax, 1));
    qmax = fmaxf(qmax, __shfl_xor_sync(0xffffffffu, qmax, 2));
    int eq = 0;
    if (qmax > 0.0f && qmax <= FLT_MAX) {
      eq = min(120, max(-120, 13 - tc_exponent(qmax)));
    }
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

    // Scores of row g, keys jb + 8 j + 2 t + h; online softmax.
    float mx = m_r;
#pragma unroll
    for (int j = 0; j < NT; j++) {
#pragma unroll
      for (int h = 0; h < 2; h++) {
        int jj = jb + 8 * j + 2 * t + h;
        float sc = s[j][h] * q_unscale * ksc[j][h];
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

// ---------------------------------------------------------------------------
// Host-side planning shared by MLX and the harness.
// ---------------------------------------------------------------------------

// Rows (query heads x positions) per vector block.
inline int vector_rows_per_block(int rows) {
  return rows <= 1 ? 1 : rows <= 2 ? 2 : rows <= 4 ? 4 : 8;
}

// Blocks of a decode kernel resident per SM (both decode kernels are limited
// to 2 by their registers at D = 128, Nsight Compute on the H200).
constexpr int kVecBlocksPerSm = 2;

// Number of key splits for the vector kernel: as many as fill one wave of
// resident blocks without starting a second (splits * base_blocks <=
// kVecBlocksPerSm * num_sms), at least 256 keys each. A partial second wave
// costs a whole wave's time: in tests/cuda/sweep_decode.py (H200, D = 128,
// turbo3/4) the one-wave count was the fastest of the counts tried at B = 1
// and 8, Hq/Hkv = 28/4 and 32/8, 32K and 128K keys (e.g. B = 1, 28/4, 128K
// keys: 64 splits 51.7 us against 66.5 us at 132), the split-K combine
// included.
inline int vector_num_splits(int base_blocks, int kL, int num_sms) {
  int resident = kVecBlocksPerSm * num_sms;
  if (base_blocks >= resident || kL < 512) {
    return 1;
  }
  int splits = resident / base_blocks;
  int max_splits = kL / 256; // at least 256 keys per split
  splits = splits < max_splits ? splits : max_splits;
  splits = splits < kMaxSplits ? splits : kMaxSplits;
  return splits < 1 ? 1 : splits;
}

// Queries longer than this use the tiled prefill kernel.
constexpr int kVectorMaxQL = 8;

// The TF32 tensor-core prefill (turbo_sdpa_full_tc, head dims <= 128) is
// not yet faster than the SIMT float32 one (H100: 6.7 vs 6.7-6.9 ms at 4K,
// see docs/cuda.md) and rounds operands to TF32, so MLX uses the SIMT kernel;
// the harness tests and times the tensor-core one on request.
constexpr int kTcMaxDim = 128;
constexpr bool kUseTcPrefill = false;

} // namespace mlx::core::cu::turbo
