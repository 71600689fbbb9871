// Copyright © 2026 TurboQuant-MLX contributors.
//
// Kernels of mx.quantize / mx.dequantize and the attention call's
// preparation: turbo_encode, turbo_decode, turbo_rotate,
// turbo_attention_prep (one warp per vector each).

#pragma once

#include "mlx/backend/cuda/device/turboquant_format.cuh"

namespace mlx::core::cu::turbo {

// ---------------------------------------------------------------------------
// Encode: x (N, D) in T -> packed (N, W) uint32, scales (N) in T; or, for
// quantized_cache_update, x (B, H, L, D) with strides (and an optional
// float32 shift subtracted first, rounded to T) into rows offset .. offset +
// L - 1 of packed (B, H, rows, W) or scales (B, H, rows): a null packed or
// scales pointer is not written.
// ---------------------------------------------------------------------------

constexpr int kEncodeWarps = 4;

// Vector v = (b * H + h) * L + l reads x[b, h, l, :] (element strides x_str,
// the last axis contiguous) and shift[b, h, l, :] (s_str; none when shift is
// null) and writes code row (b * H + h) * rows + offset + l.
struct EncodeRows {
  int64_t n_vec;
  int64_t L;
  int64_t H;
  int64_t x_str[3];
  const float* shift;
  int64_t s_str[3];
  int64_t rows;
  int64_t offset;

  // n row-contiguous vectors of length D into rows 0 .. n - 1.
  static EncodeRows contiguous(int64_t n, int D) {
    return {n, n > 0 ? n : 1, 1, {0, 0, D}, nullptr, {0, 0, 0}, n, 0};
  }
};

template <typename T, int D, int BITS>
__global__ void __launch_bounds__(32 * kEncodeWarps) turbo_encode(
    const T* __restrict__ x,
    uint32_t* __restrict__ packed,
    T* __restrict__ scales,
    const EncodeRows rows) {
  constexpr int W = packed_words(BITS, D);
  constexpr int NL = 1 << BITS;
  __shared__ float sbuf[kEncodeWarps][D];
  __shared__ uint8_t sidx[kEncodeWarps][D];

  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int64_t v = int64_t(blockIdx.x) * kEncodeWarps + warp;
  if (v >= rows.n_vec) {
    return;
  }
  float* buf = sbuf[warp];
  uint8_t* idx = sidx[warp];
  const int64_t vl = v % rows.L;
  const int64_t vbh = v / rows.L;
  const int64_t vh = vbh % rows.H;
  const int64_t vb = vbh / rows.H;
  const T* xv =
      x + vb * rows.x_str[0] + vh * rows.x_str[1] + vl * rows.x_str[2];
  const int64_t row = vbh * rows.rows + rows.offset + vl;

  // 0. load (x - shift, rounded to T, for the cache's key shift)
  if (rows.shift) {
    const float* sv = rows.shift + vb * rows.s_str[0] +
        vh * rows.s_str[1] + vl * rows.s_str[2];
    for (int i = lane; i < D; i += 32) {
      buf[i] = to_float(from_float<T>(__fsub_rn(to_float(xv[i]), sv[i])));
    }
  } else {
    for (int i = lane; i < D; i += 32) {
      buf[i] = to_float(xv[i]);
    }
  }
  __syncwarp();

  // 1. norm
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
  if (scales != nullptr && lane == 0) {
    scales[row] = from_float<T>(scale);
  }
  if (packed == nullptr) {
    return;
  }

  // 6. pack
  uint32_t* out = packed + row * W;
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
// . (key_shift - first_key) with q as given, to row_sinks (B, Hq, qL); with
// the moving key shift, each query row's 2P coefficients scale log2(e) q .
// waves[i] (the decode kernels' AttnParams::wave_coef).
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
  const float* waves; // (B or 1, Hkv, 2P, D) float32, or nullptr
  int64_t wv_b_str; // 0 when shared by the batch
  int P;
  float* wave_coef; // (B, Hq, qL, 2P)
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
  // A query row's head and batch index.
  const int h = (v / a.qL) % a.Hq;
  const int64_t b = v / (int64_t(a.Hq) * a.qL);
  float dot = 0.0f;
  if (is_q && a.row_sinks) {
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
  if (is_q && a.wave_coef) {
    const float* w =
        a.waves + b * a.wv_b_str + int64_t(h / a.gqa) * 2 * a.P * D;
    for (int i = 0; i < 2 * a.P; i++) {
      float c = 0.0f;
      for (int k = lane; k < D; k += 32) {
        c += to_float(in[k]) * w[i * D + k];
      }
#pragma unroll
      for (int off = 16; off > 0; off >>= 1) {
        c += __shfl_xor_sync(0xffffffff, c, off);
      }
      if (lane == 0) {
        a.wave_coef[v * 2 * a.P + i] = a.scale * kLog2e * c;
      }
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

} // namespace mlx::core::cu::turbo
