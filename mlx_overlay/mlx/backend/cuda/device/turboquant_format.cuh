// Copyright © 2026 TurboQuant-MLX contributors.
//
// TurboQuant format on the device: constants, codebooks, rotation signs,
// code packing, type conversions and the warp Walsh-Hadamard rotation
// helpers (docs/format.md). Self-contained (CUDA runtime + fp16/bf16
// headers) so that MLX and the standalone harness (tests/cuda) compile it.

#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
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

// cos and sin of the angle of plane frequency f at cached key j,
// 2 pi ((f j) mod 2^24) / 2^24: exact integer turns (the uint32 product wraps
// modulo a multiple of 2^24), centered to [-pi, pi) for __sincosf (absolute
// error below 2^-21 there).
__device__ inline void
key_wave_sincos(uint32_t f, int j, float& sn, float& cs) {
  const int turns = int((f * uint32_t(j)) << 8) >> 8;
  __sincosf(float(turns) * (6.283185307179586f / 16777216.0f), &sn, &cs);
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

// Butterflies of a register-resident Walsh-Hadamard transform of D = 32 E
// coordinates (lane l holds E l ..), span ascending, as warp_fwht<D> without
// its normalization (the caller multiplies by it). Across lanes the pair
// (a, b) becomes a + b in the lower lane and b - a = fma(-1, a, b) in the
// upper one: the same roundings as the shared-memory transform.
template <int E>
__device__ inline void reg_fwht(float (&x)[E], int lane) {
  constexpr int D = 32 * E;
#pragma unroll
  for (int h = 1; h < D; h <<= 1) {
    if (h < E) {
#pragma unroll
      for (int e = 0; e < E; e++) {
        if ((e & h) == 0) {
          float a = x[e];
          float b = x[e + h];
          x[e] = __fadd_rn(a, b);
          x[e + h] = __fsub_rn(a, b);
        }
      }
    } else {
      const int m = h / E;
      const float sgn = (lane & m) ? -1.0f : 1.0f;
#pragma unroll
      for (int e = 0; e < E; e++) {
        float y = __shfl_xor_sync(0xffffffff, x[e], m);
        x[e] = __fmaf_rn(sgn, x[e], y);
      }
    }
  }
}

// Inverse rotation of a register-resident vector of D = 32 E coordinates
// (lane l holds E l ..), stage-1 signs included: the float32 operations of
// warp_inverse_rotate_unsigned and the caller's rot_sign(1, i), with each
// normalization and its signs in one exact multiplication (sign = +-1).
template <int E>
__device__ inline void reg_inverse_rotate(float (&x)[E], int lane) {
  const float norm = __fdiv_rn(1.0f, __fsqrt_rn(float(32 * E)));
  reg_fwht<E>(x, lane);
#pragma unroll
  for (int e = 0; e < E; e++) {
    x[e] = __fmul_rn(x[e], norm * rot_sign(2, E * lane + e));
  }
  reg_fwht<E>(x, lane);
#pragma unroll
  for (int e = 0; e < E; e++) {
    x[e] = __fmul_rn(x[e], norm * rot_sign(1, E * lane + e));
  }
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

} // namespace mlx::core::cu::turbo
