// Copyright © 2026 TurboQuant-MLX authors.
//
// TurboQuant encode / decode (docs/format.md sections 3-5), one thread per
// vector. The float32 operation order is part of the contract with the CPU
// encoder (bit-identical codes and scales):
//   1. n = sqrt(sum_i x_i * x_i), summed in index order, products and sums as
//      separate roundings (no fused multiply-add),
//   2. u_i = x_i / n (u = 0 when n is not > 0; n = Inf gives 0 / NaN as on
//      the CPU),
//   3. stage t in {1, 2}: multiply by the signs, FWHT of the block with the
//      butterfly span ascending (turbo_fwht), then multiply by
//      norm = 1.0f / fl32(sqrt(P)) (as turbo::rotate in mlx/turboquant.h),
//   4. z_i = fl32(sqrt(D)) * y_i, idx_i = #{j : z_i > b_j},
//   5. rho = sqrt(sum_i c[idx_i]^2) (index order, no FMA), scale = n / rho,
//      NaN when n is not finite.

#pragma once

#include "mlx/backend/metal/kernels/turbo_common.h"

template <int BITS>
METAL_FUNC uint turbo_boundary_count(float z) {
  constexpr int L = 1 << BITS;
  uint idx = 0;
  for (int j = 0; j < L - 1; j++) {
    float b = (turbo_centroid<BITS>(uint(j)) + turbo_centroid<BITS>(uint(j + 1))) * 0.5f;
    idx += z > b ? 1u : 0u;
  }
  return idx;
}

template <typename T, int D, int BITS>
[[kernel]] void turbo_quantize(
    const device T* in [[buffer(TURBO_Q_BUF_IN)]],
    device uint32_t* packed [[buffer(TURBO_Q_BUF_PACKED)]],
    device T* scales [[buffer(TURBO_Q_BUF_SCALES)]],
    const constant int64_t& nvec [[buffer(TURBO_Q_BUF_NVEC)]],
    uint3 gid [[thread_position_in_grid]]) {
  constexpr int P = TurboPow2<D>::P;
  constexpr int W = TurboLayout<BITS, D>::words;
  const int64_t v = int64_t(gid.x);
  if (v >= nvec) {
    return;
  }
  in += v * D;
  packed += v * W;

  thread float y[D];
  float ss = 0.0f;
  for (int i = 0; i < D; i++) {
    float xi = static_cast<float>(in[i]);
    y[i] = xi;
    float sq = xi * xi;
    ss = ss + sq;
  }
  const float n = precise::sqrt(ss);
  const bool finite_n = isfinite(n);
  for (int i = 0; i < D; i++) {
    y[i] = n > 0.0f ? y[i] / n : 0.0f;
  }

  const float norm = TurboConsts<D>::inv_sqrt_p;
  for (int i = 0; i < D; i++) {
    y[i] = y[i] * turbo_sign(1u, uint(i));
  }
  turbo_fwht<P>(y);
  for (int i = 0; i < P; i++) {
    y[i] = y[i] * norm;
  }
  for (int i = 0; i < D; i++) {
    y[i] = y[i] * turbo_sign(2u, uint(i));
  }
  turbo_fwht<P>(y + (D - P));
  for (int i = D - P; i < D; i++) {
    y[i] = y[i] * norm;
  }

  const float sqrt_d = TurboConsts<D>::sqrt_d;
  thread uint32_t w[W];
  for (int k = 0; k < W; k++) {
    w[k] = 0u;
  }
  float rr = 0.0f;
  for (int i = 0; i < D; i++) {
    float z = y[i] * sqrt_d;
    uint idx = turbo_boundary_count<BITS>(z);
    float c = turbo_centroid<BITS>(idx);
    float c2 = c * c;
    rr = rr + c2;
    if (BITS == 4) {
      w[i >> 3] |= idx << (uint(i & 7) * 4u);
    } else {
      w[i >> 4] |= (idx & 0x3u) << (uint(i & 15) * 2u);
      w[D / 16 + (i >> 5)] |= (idx >> 2) << uint(i & 31);
    }
  }
  const float rho = precise::sqrt(rr);
  const float scale = finite_n ? n / rho : NAN;
  for (int k = 0; k < W; k++) {
    packed[k] = w[k];
  }
  scales[v] = static_cast<T>(scale);
}

template <typename S, typename O, int D, int BITS>
[[kernel]] void turbo_dequantize(
    const device uint32_t* packed [[buffer(TURBO_DQ_BUF_PACKED)]],
    const device S* scales [[buffer(TURBO_DQ_BUF_SCALES)]],
    device O* out [[buffer(TURBO_DQ_BUF_OUT)]],
    const constant int64_t& nvec [[buffer(TURBO_DQ_BUF_NVEC)]],
    uint3 gid [[thread_position_in_grid]]) {
  constexpr int P = TurboPow2<D>::P;
  constexpr int W = TurboLayout<BITS, D>::words;
  const int64_t v = int64_t(gid.x);
  if (v >= nvec) {
    return;
  }
  packed += v * W;
  out += v * D;
  const float s = static_cast<float>(scales[v]);

  thread float y[D];
  for (int i = 0; i < D; i++) {
    y[i] = s * turbo_centroid<BITS>(turbo_code<BITS, D>(packed, i));
  }
  const float norm = TurboConsts<D>::inv_sqrt_p;
  turbo_fwht<P>(y + (D - P));
  for (int i = D - P; i < D; i++) {
    y[i] = y[i] * norm;
  }
  for (int i = 0; i < D; i++) {
    y[i] = y[i] * turbo_sign(2u, uint(i));
  }
  turbo_fwht<P>(y);
  for (int i = 0; i < P; i++) {
    y[i] = y[i] * norm;
  }
  for (int i = 0; i < D; i++) {
    out[i] = static_cast<O>(y[i] * turbo_sign(1u, uint(i)));
  }
}
