// Copyright © 2026 TurboQuant-MLX contributors.
//
// The split-K decode's second pass, turbo_sdpa_combine: merges the partial
// rows of both decode kernels (turbo_sdpa_vector, turbo_sdpa_vector_tc) and,
// for the fused call, rotates the result back.

#pragma once

#include "mlx/backend/cuda/device/turboquant_decode.cuh"

namespace mlx::core::cu::turbo {

// Second pass of the split-K decode: one block of kCombineThreads per output
// row (B * Hq * qL blocks). Thread (group g, column c) reads the partials of
// splits g, g + G, ... (kCombineChunk of them at a time, all loads issued
// together) at dims [4 c, 4 c + 4) with their (max, sum), and keeps its own
// running maximum; the G groups are then merged through shared memory. Every
// global load of a row is in flight at once (for S <= kCombineChunk * G),
// since the call's time at B = 1 is this kernel's latency.
constexpr int kCombineThreads = 256;
constexpr int kCombineChunk = 8;
// Most splits of one call (plan_decode).
constexpr int kMaxSplits = 1024;

// ROTATE (fused_rotation): the row is rotated back (R^T) and stored as TO;
// otherwise TO is float and the row stays in the rotated domain.
template <int D, typename TO, bool ROTATE>
__global__ void __launch_bounds__(kCombineThreads) turbo_sdpa_combine(
    const float* __restrict__ part_o,
    const float* __restrict__ part_ml,
    TO* __restrict__ out,
    const AttnParams p) {
  constexpr int NV = D / 4;
  constexpr int G = kCombineThreads / NV;
  static_assert(D % 4 == 0 && G >= 1, "D must be a multiple of 4, <= 1024");
  __shared__ float sacc[G * D];
  __shared__ float sm[G];
  __shared__ float sl[G];
  const int64_t grow = blockIdx.x;
  const int64_t nrow = int64_t(p.B) * p.Hq * p.qL;
  const int qi = grow % p.qL;
  const int h = (grow / p.qL) % p.Hq;
  const int b = grow / (int64_t(p.qL) * p.Hq);
  const int S = p.num_splits;
  const int c = threadIdx.x % NV;
  const int g = threadIdx.x / NV;
  if (g < G) {
    const float2* ml = reinterpret_cast<const float2*>(part_ml);
    const float4* po = reinterpret_cast<const float4*>(part_o);
    float m = -INFINITY; // the group's running maximum and sum
    float l = 0.0f;
    float4 acc = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    for (int s0 = g; s0 < S; s0 += kCombineChunk * G) {
      float2 w[kCombineChunk];
      float4 v[kCombineChunk];
#pragma unroll
      for (int u = 0; u < kCombineChunk; u++) {
        const int s = s0 + u * G;
        w[u] = make_float2(-INFINITY, 0.0f);
        v[u] = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        if (s < S) {
          w[u] = ml[s * nrow + grow];
          v[u] = po[(s * nrow + grow) * NV + c];
        }
      }
      float mn = m;
#pragma unroll
      for (int u = 0; u < kCombineChunk; u++) {
        mn = fmaxf(mn, w[u].x);
      }
      const float ref = safe_max_ref(mn);
      const float alpha = exp2f(m - ref);
      l *= alpha;
      acc.x *= alpha;
      acc.y *= alpha;
      acc.z *= alpha;
      acc.w *= alpha;
#pragma unroll
      for (int u = 0; u < kCombineChunk; u++) {
        const float f = exp2f(w[u].x - ref);
        l += w[u].y * f;
        acc.x += f * v[u].x;
        acc.y += f * v[u].y;
        acc.z += f * v[u].z;
        acc.w += f * v[u].w;
      }
      m = mn;
    }
    float* dst = sacc + g * D + 4 * c;
    dst[0] = acc.x;
    dst[1] = acc.y;
    dst[2] = acc.z;
    dst[3] = acc.w;
    if (c == 0) {
      sm[g] = m;
      sl[g] = l;
    }
  }
  __syncthreads();
  // Every thread weighs the groups the same way.
  float fg[G];
  float L = 0.0f;
  {
    float mb = -INFINITY;
#pragma unroll
    for (int k = 0; k < G; k++) {
      mb = fmaxf(mb, sm[k]);
    }
    const float ref = safe_max_ref(mb);
#pragma unroll
    for (int k = 0; k < G; k++) {
      fg[k] = exp2f(sm[k] - ref);
      L += sl[k] * fg[k];
    }
  }
  auto merged = [&](int d) {
    float o = 0.0f;
#pragma unroll
    for (int k = 0; k < G; k++) {
      o += sacc[k * D + d] * fg[k];
    }
    return o / L;
  };
  TO* orow = out + b * p.o_str[0] + h * p.o_str[1] + qi * p.o_str[2];
  if constexpr (!ROTATE) {
    for (int d = threadIdx.x; d < D; d += kCombineThreads) {
      orow[d] = merged(d);
    }
  } else if constexpr (D % 32 == 0 && pow2_floor(D) == D) {
    // Warp 0 holds the row in registers (lane l: dims E l ..) and rotates
    // it with shuffles.
    constexpr int E = D / 32;
    if (threadIdx.x < 32) {
      const int lane = threadIdx.x;
      float x[E];
#pragma unroll
      for (int e = 0; e < E; e++) {
        x[e] = merged(E * lane + e);
      }
      reg_inverse_rotate<E>(x, lane);
#pragma unroll
      for (int e = 0; e < E; e++) {
        orow[E * lane + e] = from_float<TO>(x[e]);
      }
    }
  } else {
    __shared__ float so[D];
    for (int d = threadIdx.x; d < D; d += kCombineThreads) {
      so[d] = merged(d);
    }
    __syncthreads();
    if (threadIdx.x < 32) {
      warp_inverse_rotate_unsigned<D>(so, threadIdx.x);
      for (int d = threadIdx.x; d < D; d += 32) {
        orow[d] = from_float<TO>(so[d] * rot_sign(1, d));
      }
    }
  }
}

} // namespace mlx::core::cu::turbo
