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
// Steps 1-5 are turbo_encode, the one body of both encoders (turbo_quantize
// and turbo_quantize_update, which store its words and scale). The update
// kernel's input with a shift is
// x_i = float(T(float(x_i) - m_i)) (the difference in float32, rounded to
// the input dtype T as static_cast does: to nearest even), as
// quantize((x - m).astype(T)) computes it, m_i the shift plus the moving
// shift of the row (turbo_wave_sum), summed in float32.

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

// Steps 1-5 on one vector, shared by turbo_quantize and
// turbo_quantize_update (bit-identical by construction): y holds the vector
// as float32 on entry and is overwritten; the W packed words are written to
// w[0..W) (thread memory; the callers store them) and the float32 scale
// (before rounding to the storage dtype) is returned.
template <int D, int BITS>
METAL_FUNC float turbo_encode(thread float* y, thread uint32_t* w) {
  constexpr int P = TurboPow2<D>::P;
  constexpr int W = TurboLayout<BITS, D>::words;
  float ss = 0.0f;
  for (int i = 0; i < D; i++) {
    float xi = y[i];
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
  return scale;
}

// The moving key shift (docs/format.md section 7) of cache row n, shared by
// the cache update and the cache dequantize: the cosines and sines of its P
// planes (turbo_wave_angle), then per coordinate
//   m + sum_j c_j waves[j, i] + s_j waves[P + j, i]
// added in this order in float32 (waves (2P, D) row contiguous).
METAL_FUNC void turbo_wave_phases(
    const device uint32_t* freqs,
    int P,
    uint n,
    thread float* c,
    thread float* sn) {
  for (int j = 0; j < P; j++) {
    const float a = turbo_wave_angle(freqs[j], n);
    c[j] = precise::cos(a);
    sn[j] = precise::sin(a);
  }
}

template <int D>
METAL_FUNC float turbo_wave_sum(
    const device float* waves,
    int P,
    thread const float* c,
    thread const float* sn,
    int i,
    float m) {
  for (int j = 0; j < P; j++) {
    m = m + c[j] * waves[j * D + i];
    m = m + sn[j] * waves[(P + j) * D + i];
  }
  return m;
}

template <typename T, int D, int BITS>
[[kernel]] void turbo_quantize(
    const device T* in [[buffer(TURBO_Q_BUF_IN)]],
    device uint32_t* packed [[buffer(TURBO_Q_BUF_PACKED)]],
    device T* scales [[buffer(TURBO_Q_BUF_SCALES)]],
    const constant int64_t& nvec [[buffer(TURBO_Q_BUF_NVEC)]],
    uint3 gid [[thread_position_in_grid]]) {
  constexpr int W = TurboLayout<BITS, D>::words;
  const int64_t v = int64_t(gid.x);
  if (v >= nvec) {
    return;
  }
  in += v * D;
  thread float y[D];
  for (int i = 0; i < D; i++) {
    y[i] = static_cast<float>(in[i]);
  }
  thread uint32_t w[W];
  const float scale = turbo_encode<D, BITS>(y, w);
  packed += v * W;
  for (int k = 0; k < W; k++) {
    packed[k] = w[k];
  }
  scales[v] = static_cast<T>(scale);
}

// Cache update (fast::QuantizedCacheUpdate, one node per buffer): vector
// v = (b, h, l) of x (B, H, L, D), read with p.x_strides (last axis
// contiguous), minus m (the float32 shift row, p.shift_strides, last axis
// contiguous, when turbo_update_shift, plus the moving shift of cache row
// offset + l from freqs and waves when turbo_update_waves), the difference
// rounded to T, encoded as turbo_quantize does; its W words go to row (b * H
// + h) * N + offset + l of the row-contiguous codes (B, H, N, W) when
// turbo_update_codes, its scale to that row of the scales (B, H, N, 1) when
// turbo_update_scales. The host sets turbo_update_codes =
// !turbo_update_scales; the buffer not written is not bound (each store is
// guarded by the constant that declares its argument).
constant bool turbo_update_shift [[function_constant(TURBO_FC_UPDATE_SHIFT)]];
constant bool turbo_update_scales [[function_constant(TURBO_FC_UPDATE_SCALES)]];
constant bool turbo_update_codes [[function_constant(TURBO_FC_UPDATE_CODES)]];
constant bool turbo_update_waves [[function_constant(TURBO_FC_UPDATE_WAVES)]];

template <typename T, int D, int BITS>
[[kernel]] void turbo_quantize_update(
    const device T* x [[buffer(TURBO_QU_BUF_X)]],
    device uint32_t* packed
    [[buffer(TURBO_QU_BUF_PACKED), function_constant(turbo_update_codes)]],
    device T* scales
    [[buffer(TURBO_QU_BUF_SCALES), function_constant(turbo_update_scales)]],
    const constant TurboQuantUpdateParams& p [[buffer(TURBO_QU_BUF_PARAMS)]],
    const device float* shift
    [[buffer(TURBO_QU_BUF_SHIFT), function_constant(turbo_update_shift)]],
    const device uint32_t* freqs
    [[buffer(TURBO_QU_BUF_FREQS), function_constant(turbo_update_waves)]],
    const device float* waves
    [[buffer(TURBO_QU_BUF_WAVES), function_constant(turbo_update_waves)]],
    uint3 gid [[thread_position_in_grid]]) {
  constexpr int W = TurboLayout<BITS, D>::words;
  const int64_t v = int64_t(gid.x);
  if (v >= p.nvec) {
    return;
  }
  const int64_t l = v % p.L;
  const int64_t bh = v / p.L;
  const int64_t b = bh / p.H;
  const int64_t h = bh % p.H;
  x += b * p.x_strides[0] + h * p.x_strides[1] + l * p.x_strides[2];
  thread float y[D];
  if (turbo_update_shift || turbo_update_waves) {
    if (turbo_update_shift) {
      shift += b * p.shift_strides[0] + h * p.shift_strides[1] +
          l * p.shift_strides[2];
    }
    thread float c[TURBO_KVDQ_MAX_WAVES];
    thread float sn[TURBO_KVDQ_MAX_WAVES];
    const int P = turbo_update_waves ? p.waves : 0;
    if (turbo_update_waves) {
      const int64_t wh = int64_t(p.wave_b) * b * p.H + h;
      freqs += wh * P;
      waves += wh * 2 * P * D;
      turbo_wave_phases(freqs, P, uint(p.offset + l), c, sn);
    }
    for (int i = 0; i < D; i++) {
      float m = turbo_update_shift ? shift[i] : 0.0f;
      if (turbo_update_waves) {
        m = turbo_wave_sum<D>(waves, P, c, sn, i, m);
      }
      float d = static_cast<float>(x[i]) - m;
      y[i] = static_cast<float>(static_cast<T>(d));
    }
  } else {
    for (int i = 0; i < D; i++) {
      y[i] = static_cast<float>(x[i]);
    }
  }
  thread uint32_t w[W];
  const float scale = turbo_encode<D, BITS>(y, w);
  const int64_t row = bh * p.N + p.offset + l;
  if (turbo_update_codes) {
    packed += row * W;
    for (int k = 0; k < W; k++) {
      packed[k] = w[k];
    }
  }
  if (turbo_update_scales) {
    scales[row] = static_cast<T>(scale);
  }
}

// Decode one vector (docs/format.md section 5): y[i] = s * c[idx_i], then
// the inverse rotation (stage 2, then stage 1, each FWHT times 1.0f /
// fl32(sqrt(P)), signs after the transform). The one body of
// turbo_dequantize and turbo_dequantize_kv; y is float32 thread memory.
template <int D, int BITS>
METAL_FUNC void
turbo_decode(const device uint32_t* packed, float s, thread float* y) {
  constexpr int P = TurboPow2<D>::P;
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
    y[i] = y[i] * turbo_sign(1u, uint(i));
  }
}

template <typename S, typename O, int D, int BITS>
[[kernel]] void turbo_dequantize(
    const device uint32_t* packed [[buffer(TURBO_DQ_BUF_PACKED)]],
    const device S* scales [[buffer(TURBO_DQ_BUF_SCALES)]],
    device O* out [[buffer(TURBO_DQ_BUF_OUT)]],
    const constant int64_t& nvec [[buffer(TURBO_DQ_BUF_NVEC)]],
    uint3 gid [[thread_position_in_grid]]) {
  constexpr int W = TurboLayout<BITS, D>::words;
  const int64_t v = int64_t(gid.x);
  if (v >= nvec) {
    return;
  }
  thread float y[D];
  turbo_decode<D, BITS>(packed + v * W, static_cast<float>(scales[v]), y);
  out += v * D;
  for (int i = 0; i < D; i++) {
    out[i] = static_cast<O>(y[i]);
  }
}

// Cache dequantize for the attention of many queries
// (fast::QuantizedKVDequantize; mlx/turboquant.h, dequantize_kv_cpu), one
// thread per output row of out (B, H, F + L, D), row contiguous in T (the
// scales' dtype). F = 1 when turbo_kvdq_first: row 0 of block (b, h) is
// first[b, h] as given. Row F + l is code row l of (b, h), read with
// p.packed_strides / p.scales_strides, decoded as turbo_dequantize does
// (float32), plus shift[b, h] when turbo_kvdq_shift, plus the moving shift
//   sum_j cos(a_j) waves[b, h, j] + sin(a_j) waves[b, h, P + j],
//   a_j = turbo_wave_angle(freqs[b, h, j], l)
// when turbo_kvdq_waves (the sum over j per coordinate, then added), all in
// float32 and rounded once to T. first, shift, freqs and waves are row
// contiguous and bound only with their function constant.
constant bool turbo_kvdq_first [[function_constant(TURBO_FC_KVDQ_FIRST)]];
constant bool turbo_kvdq_shift [[function_constant(TURBO_FC_KVDQ_SHIFT)]];
constant bool turbo_kvdq_waves [[function_constant(TURBO_FC_KVDQ_WAVES)]];

template <typename T, int D, int BITS>
[[kernel]] void turbo_dequantize_kv(
    const device uint32_t* packed [[buffer(TURBO_KVDQ_BUF_PACKED)]],
    const device T* scales [[buffer(TURBO_KVDQ_BUF_SCALES)]],
    device T* out [[buffer(TURBO_KVDQ_BUF_OUT)]],
    const constant TurboKVDequantizeParams& p [[buffer(TURBO_KVDQ_BUF_PARAMS)]],
    const device T* first
    [[buffer(TURBO_KVDQ_BUF_FIRST), function_constant(turbo_kvdq_first)]],
    const device float* shift
    [[buffer(TURBO_KVDQ_BUF_SHIFT), function_constant(turbo_kvdq_shift)]],
    const device uint32_t* freqs
    [[buffer(TURBO_KVDQ_BUF_FREQS), function_constant(turbo_kvdq_waves)]],
    const device float* waves
    [[buffer(TURBO_KVDQ_BUF_WAVES), function_constant(turbo_kvdq_waves)]],
    uint3 gid [[thread_position_in_grid]]) {
  const int64_t v = int64_t(gid.x);
  if (v >= p.nrows) {
    return;
  }
  const int F = turbo_kvdq_first ? 1 : 0;
  const int64_t rows = int64_t(F + p.L);
  const int64_t r = v % rows;
  const int64_t bh = v / rows;
  out += v * D;
  if (turbo_kvdq_first) {
    if (r == 0) {
      first += bh * D;
      for (int i = 0; i < D; i++) {
        out[i] = first[i];
      }
      return;
    }
  }
  const int64_t l = r - F;
  const int64_t b = bh / p.H;
  const int64_t h = bh % p.H;
  packed += b * p.packed_strides[0] + h * p.packed_strides[1] +
      l * p.packed_strides[2];
  const float s = static_cast<float>(
      scales
          [b * p.scales_strides[0] + h * p.scales_strides[1] +
           l * p.scales_strides[2]]);
  thread float y[D];
  turbo_decode<D, BITS>(packed, s, y);
  if (turbo_kvdq_shift) {
    shift += bh * D;
    for (int i = 0; i < D; i++) {
      y[i] = y[i] + shift[i];
    }
  }
  if (turbo_kvdq_waves) {
    const int P = p.waves;
    freqs += bh * P;
    waves += bh * 2 * P * D;
    thread float c[TURBO_KVDQ_MAX_WAVES];
    thread float sn[TURBO_KVDQ_MAX_WAVES];
    turbo_wave_phases(freqs, P, uint(l), c, sn);
    for (int i = 0; i < D; i++) {
      y[i] = y[i] + turbo_wave_sum<D>(waves, P, c, sn, i, 0.0f);
    }
  }
  for (int i = 0; i < D; i++) {
    out[i] = static_cast<T>(y[i]);
  }
}
