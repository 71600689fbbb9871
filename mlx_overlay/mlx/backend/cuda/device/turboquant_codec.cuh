// Copyright © 2026 TurboQuant-MLX contributors.
//
// Kernels of mx.quantize / mx.dequantize and the attention call's
// preparation: turbo_encode, turbo_decode, turbo_rotate,
// turbo_attention_prep (one warp per vector each).

#pragma once

#include "mlx/backend/cuda/device/turboquant_decode.cuh"

namespace mlx::core::cu::turbo {

// ---------------------------------------------------------------------------
// Encode: x (N, D) in T -> packed (N, W) uint32, scales (N) in T; or, for
// quantized_cache_update, x (B, H, L, D) with strides (minus the optional
// float32 shift and moving key shift, summed in float32, the difference
// rounded to T) into rows offset .. offset + L - 1 of packed (B, H, rows, W)
// or scales (B, H, rows): a null packed or scales pointer is not written.
// ---------------------------------------------------------------------------

constexpr int kEncodeWarps = 4;

// Vector v = (b * H + h) * L + l reads x[b, h, l, :] (element strides x_str,
// the last axis contiguous) and shift[b, h, l, :] (s_str, 0 for broadcast
// axes; none when shift is null) and writes code row (b * H + h) * rows +
// offset + l. With freqs, the moving key shift of cache row offset + l
// (docs/format.md section 7) is subtracted too: block wh = wave_b * b * H + h
// of freqs (., H, P) and waves (., H, 2P, D) float32, row contiguous.
struct EncodeRows {
  int64_t n_vec;
  int64_t L;
  int64_t H;
  int64_t x_str[3];
  const float* shift;
  int64_t s_str[3];
  int64_t rows;
  int64_t offset;
  const uint32_t* freqs; // null: no moving shift
  const float* waves;
  int P;
  int wave_b; // 1: per batch entry, 0: shared by the batch

  // n row-contiguous vectors of length D into rows 0 .. n - 1.
  static EncodeRows contiguous(int64_t n, int D) {
    return {
        n,
        n > 0 ? n : 1,
        1,
        {0, 0, D},
        nullptr,
        {0, 0, 0},
        n,
        0,
        nullptr,
        nullptr,
        0,
        0};
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

  // 0. load (x - m, rounded to T, for the cache's key shifts: m the shift
  // plus the moving shift of the row, summed in float32 as turbo_decode adds
  // them, plane by plane)
  if (rows.shift || rows.freqs) {
    constexpr int E = (D + 31) / 32;
    float m[E];
    const float* sv = rows.shift;
    if (sv) {
      sv += vb * rows.s_str[0] + vh * rows.s_str[1] + vl * rows.s_str[2];
    }
#pragma unroll
    for (int e = 0; e < E; e++) {
      const int i = lane + 32 * e;
      m[e] = sv && i < D ? sv[i] : 0.0f;
    }
    if (rows.freqs) {
      const int64_t wh = rows.wave_b * vb * rows.H + vh;
      const uint32_t* f = rows.freqs + wh * rows.P;
      const float* wv = rows.waves + wh * 2 * rows.P * D;
      const int n = int(rows.offset + vl);
      for (int j = 0; j < rows.P; j++) {
        float sn, cs;
        key_wave_sincos(f[j], n, sn, cs);
#pragma unroll
        for (int e = 0; e < E; e++) {
          const int i = lane + 32 * e;
          if (i < D) {
            m[e] += cs * __ldg(wv + j * D + i) +
                sn * __ldg(wv + (rows.P + j) * D + i);
          }
        }
      }
    }
#pragma unroll
    for (int e = 0; e < E; e++) {
      const int i = lane + 32 * e;
      if (i < D) {
        buf[i] = to_float(from_float<T>(__fsub_rn(to_float(xv[i]), m[e])));
      }
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
  // The cache update's two nodes each write one part: the scale's second
  // sum of squares only where scales are written.
  if (scales != nullptr) {
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
      scales[row] = from_float<T>(scale);
    }
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
// Decode: rows of packed codes and scales in T -> vectors in T, original
// domain (R^T applied). For mx.dequantize (contiguous rows) and
// fast::QuantizedKVDequantize (the attention's route for many queries: the
// rows of a cache with strides, an optional exact first row per (b, h), the
// key shifts added in float32 and rounded once). One warp per row, rows
// loaded ahead. For D a power of two a row stays in registers: lane l holds
// coordinates E l .. E l + E - 1 (E = D / 32) and the Walsh-Hadamard
// butterflies across lanes are shuffles (the same float32 operations as the
// shared-memory transform). Other D go through shared memory.
// ---------------------------------------------------------------------------

// Block b * (F + L) + F + i of the output is code row i of (b, h) =
// divmod(bh, H); with first, row 0 of each (b, h) is first[bh].
struct DecodeRows {
  int64_t L; // code rows per (b, h)
  int64_t heads; // B * H
  int64_t H;
  int64_t w_str[3]; // packed strides of (b, h, row), in words
  int64_t s_str[3]; // scales strides, elements
  const float* shift; // (B * H, D) float32 or null
  const uint32_t* freqs; // (B * H, P) or null: no moving shift
  const float* waves; // (B * H, 2P, D) float32
  int P;

  // n contiguous rows of W words (mx.dequantize).
  static DecodeRows contiguous(int64_t n, int W) {
    return {n, 1, 1, {0, 0, W}, {0, 0, 1}, nullptr, nullptr, nullptr, 0};
  }
};

constexpr int kDecodeWarps = 4;
constexpr int kDecodeRowsPerWarp = 8;
constexpr int kDecodeRowsPerBlock = kDecodeWarps * kDecodeRowsPerWarp;

// Blocks per (b, h): one at least (it writes the first row).
__host__ __device__ inline int64_t decode_tiles(int64_t L) {
  return L > 0 ? (L + kDecodeRowsPerBlock - 1) / kDecodeRowsPerBlock : 1;
}

template <typename T, int N>
struct alignas(sizeof(T) * N <= 16 ? sizeof(T) * N : 16) DecodeVec {
  T v[N];
};

template <typename T, int D, int BITS>
__global__ void __launch_bounds__(32 * kDecodeWarps) turbo_decode(
    const uint32_t* __restrict__ packed,
    const T* __restrict__ scales,
    const T* __restrict__ first,
    T* __restrict__ out,
    const DecodeRows r) {
  constexpr bool kRegs = D % 32 == 0 && pow2_floor(D) == D;
  constexpr int R = kDecodeRowsPerWarp;
  // Coordinates per lane: consecutive (registers) or strided by 32.
  constexpr int E = (D + 31) / 32;
  __shared__ float lut[16];
  __shared__ float sbuf[kRegs ? 1 : kDecodeWarps][kRegs ? 1 : D];
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  if (threadIdx.x < 16) {
    lut[threadIdx.x] = centroid(BITS, threadIdx.x & ((1 << BITS) - 1));
  }
  __syncthreads();
  const int64_t tiles = decode_tiles(r.L);
  const int64_t bh = blockIdx.x / tiles;
  // This warp's R consecutive rows.
  const int64_t row0 = (blockIdx.x % tiles) * kDecodeRowsPerBlock + warp * R;
  const int64_t b = bh / r.H;
  const int64_t h = bh % r.H;
  const int F = first != nullptr;
  T* o = out + bh * (F + r.L) * D;
  if (F && row0 == 0) {
    for (int i = lane; i < D; i += 32) {
      o[i] = first[bh * D + i];
    }
  }
  o += F * D;
  const uint32_t* pw = packed + b * r.w_str[0] + h * r.w_str[1];
  const T* ps = scales + b * r.s_str[0] + h * r.s_str[1];
  // The coordinates this lane finishes.
  auto coord = [&](int e) { return kRegs ? lane * E + e : lane + 32 * e; };
  // Lane l reads slot l E / 8 (registers) or slot l (shared memory).
  constexpr int kSlot = kRegs ? 8 / E : 1;
  const int slot = kRegs ? lane / kSlot : lane;
  uint32_t wa[R], wb[R];
  float sc[R];
#pragma unroll
  for (int k = 0; k < R; k++) {
    const int64_t i = row0 + k;
    wa[k] = wb[k] = 0;
    sc[k] = 0.0f;
    if (i < r.L && slot < D / 8) {
      load_slot<BITS, D>(pw + i * r.w_str[2], slot, wa[k], wb[k]);
    }
    if (i < r.L) {
      sc[k] = to_float(ps[i * r.s_str[2]]);
    }
  }
  // Decode and rotate every row (rows past L decode zeros, never stored).
  float x[R][E];
  if constexpr (kRegs) {
    const int sub = (lane % kSlot) * E;
#pragma unroll
    for (int k = 0; k < R; k++) {
#pragma unroll
      for (int e = 0; e < E; e++) {
        x[k][e] = sc[k] * lut[slot_code<BITS>(wa[k], wb[k], sub + e)];
      }
      reg_inverse_rotate<E>(x[k], lane);
    }
  } else {
    float* buf = sbuf[kRegs ? 0 : warp];
#pragma unroll
    for (int k = 0; k < R; k++) {
      if (slot < D / 8) {
#pragma unroll
        for (int c = 0; c < 8; c++) {
          buf[8 * slot + c] = sc[k] * lut[slot_code<BITS>(wa[k], wb[k], c)];
        }
      }
      __syncwarp();
      warp_inverse_rotate_unsigned<D>(buf, lane);
#pragma unroll
      for (int e = 0; e < E; e++) {
        x[k][e] = coord(e) < D ? buf[coord(e)] * rot_sign(1, coord(e)) : 0.0f;
      }
      __syncwarp();
    }
  }
  if (r.shift) {
#pragma unroll
    for (int e = 0; e < E; e++) {
      const float m = coord(e) < D ? r.shift[bh * D + coord(e)] : 0.0f;
#pragma unroll
      for (int k = 0; k < R; k++) {
        x[k][e] += m;
      }
    }
  }
  if (r.freqs) {
    // Plane by plane: its two rows of waves for this lane's coordinates,
    // and its angle turned from row to row (one rotation by the angle of
    // a single row: a few float32 roundings over the R rows).
    const float* wv = r.waves + bh * 2 * r.P * D;
    for (int j = 0; j < r.P; j++) {
      const uint32_t f = r.freqs[bh * r.P + j];
      float sn, cs, sd, cd;
      key_wave_sincos(f, int(row0), sn, cs);
      key_wave_sincos(f, 1, sd, cd);
      float wc[E], ws[E];
#pragma unroll
      for (int e = 0; e < E; e++) {
        wc[e] = coord(e) < D ? __ldg(wv + j * D + coord(e)) : 0.0f;
        ws[e] = coord(e) < D ? __ldg(wv + (r.P + j) * D + coord(e)) : 0.0f;
      }
#pragma unroll
      for (int k = 0; k < R; k++) {
#pragma unroll
        for (int e = 0; e < E; e++) {
          x[k][e] += cs * wc[e] + sn * ws[e];
        }
        const float c2 = cs * cd - sn * sd;
        sn = sn * cd + cs * sd;
        cs = c2;
      }
    }
  }
#pragma unroll
  for (int k = 0; k < R; k++) {
    const int64_t i = row0 + k;
    if (i >= r.L) {
      break;
    }
    T* orow = o + i * D;
    if constexpr (kRegs) {
      DecodeVec<T, E> v;
#pragma unroll
      for (int e = 0; e < E; e++) {
        v.v[e] = from_float<T>(x[k][e]);
      }
      *reinterpret_cast<DecodeVec<T, E>*>(orow + lane * E) = v;
    } else {
#pragma unroll
      for (int e = 0; e < E; e++) {
        if (coord(e) < D) {
          orow[coord(e)] = from_float<T>(x[k][e]);
        }
      }
    }
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
  float qv[kPrepPerLane<D>];
#pragma unroll
  for (int j = 0; j < kPrepPerLane<D>; j++) {
    const int k = lane + 32 * j;
    qv[j] = k < D ? to_float(in[k]) : 0.0f;
  }
  if (is_q && a.row_sinks) {
    const int64_t kv_row = int64_t(h / a.gqa) * D;
    const T* mu =
        a.key_shift ? a.key_shift + b * a.ksh_b_str + kv_row : nullptr;
    const T* k0 = a.first_key ? a.first_key + b * a.fk_b_str + kv_row : nullptr;
    const float dot = prep_bias_dot<D>(qv, mu, k0, lane);
    if (lane == 0) {
      a.row_sinks[v] = (a.sinks ? a.sinks[h] : 0.0f) - a.scale * dot;
    }
  }
  if (is_q && a.wave_coef) {
    const float* w =
        a.waves + b * a.wv_b_str + int64_t(h / a.gqa) * 2 * a.P * D;
    const int n_coef = 2 * a.P;
    prep_wave_coefs<D>(
        qv, w, n_coef, a.scale * kLog2e, lane, [&](int i, float c) {
          a.wave_coef[v * n_coef + i] = c;
        });
  }
  prep_rotate_row<D>(buf, qv, lane);
  for (int i = lane; i < D; i += 32) {
    o[i] = buf[i];
  }
}

} // namespace mlx::core::cu::turbo
