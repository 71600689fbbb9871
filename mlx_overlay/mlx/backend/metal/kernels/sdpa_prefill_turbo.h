// Copyright © 2026 TurboQuant-MLX authors.
//
// Tiled attention for query blocks (prefill) on a TurboQuant-compressed KV
// cache, with simdgroup_matrix 8x8 MMA as MLX's steel attention. A
// threadgroup of TURBO_PREFILL_BQ (8) SIMD-groups serves 8 consecutive
// queries of one head: the 8 queries are the rows of every MMA. Per tile of
// TURBO_PREFILL_BK (32) keys:
//   S = Q K^T    the K tile is dequantized (centroid * scale, rotated domain)
//                into threadgroup memory as float, 64 coordinates at a time,
//                stored transposed ([coordinate][key]); SIMD-group g computes
//                the 8x8 block of keys 8 * (g % 4) over half g / 4 of each
//                chunk's coordinates (Q fragments stay in registers), and the
//                two halves are added when S is read back;
//   softmax      SIMD-group g owns query row g, lane j key j: masks, online
//                max / sum as before; the weights P (8 x 32) and the rescale
//                factors (an 8x8 diagonal) go to threadgroup memory;
//   O += P V     the V tile is dequantized (centroid * scale) 64 columns at a
//                time; SIMD-group g owns output columns 8g..8g+7 of each
//                64-column chunk: O = diag(factor) O, then 4 MMAs over the
//                32 keys.
// Only simdgroup_load / simdgroup_store / simdgroup_multiply_accumulate touch
// the fragments (no thread_elements(), so no assumption about which lane
// holds which element). float32 throughout. Same inputs, function constants,
// masking semantics and output as sdpa_vector_turbo; with causal masking the
// key loop stops at the block's last visible key.

#pragma once

#include <metal_simdgroup>
#include <metal_simdgroup_matrix>

#include "mlx/backend/metal/kernels/sdpa_vector_turbo.h"

using namespace metal;

template <typename S, int D, int V, int KB, int VB>
[[kernel]] void sdpa_prefill_turbo(
    const device float* queries [[buffer(TURBO_ATTN_BUF_Q)]],
    const device uint32_t* keys [[buffer(TURBO_ATTN_BUF_K)]],
    const device S* key_scales [[buffer(TURBO_ATTN_BUF_KS)]],
    const device uint32_t* values [[buffer(TURBO_ATTN_BUF_V)]],
    const device S* value_scales [[buffer(TURBO_ATTN_BUF_VS)]],
    device float* out [[buffer(TURBO_ATTN_BUF_OUT)]],
    const constant TurboAttnParams& p [[buffer(TURBO_ATTN_BUF_PARAMS)]],
    const device bool* bmask
    [[buffer(TURBO_ATTN_BUF_BMASK), function_constant(turbo_bool_mask)]],
    const device float* fmask
    [[buffer(TURBO_ATTN_BUF_FMASK), function_constant(turbo_float_mask)]],
    const device float* sinks
    [[buffer(TURBO_ATTN_BUF_SINKS), function_constant(turbo_has_sinks)]],
    uint3 tid [[threadgroup_position_in_grid]],
    uint lid [[thread_index_in_threadgroup]],
    uint simd_gid [[simdgroup_index_in_threadgroup]],
    uint simd_lid [[thread_index_in_simdgroup]]) {
  constexpr int BQ = TURBO_PREFILL_BQ;
  constexpr int BK = TURBO_PREFILL_BK;
  constexpr int NT = BQ * TURBO_SIMD_WIDTH;
  constexpr int CW = 64; // coordinates / columns per dequantized chunk
  constexpr int NKC = (D + CW - 1) / CW; // K chunks
  constexpr int NVC = (V + CW - 1) / CW; // V chunks
  constexpr int KP = BK + 4; // padded row of the transposed K chunk
  constexpr int VP = CW + 4; // padded row of the V chunk
  constexpr int PP = BK + 4; // padded row of P / S
  constexpr int QN = BQ * D > CW * KP ? BQ * D : CW * KP;
  static_assert(BQ == 8 && BK == 32, "8 query rows, 4 key blocks of 8");
  static_assert(D % 16 == 0 && V % 8 == 0, "head dims");

  // kt: the scaled queries first (8 x D, row-major), then the K chunks
  // ([coordinate][key]).
  threadgroup float kt[QN];
  threadgroup float vt[BK * VP]; // V chunk [key][column]
  threadgroup float ss[2 * BQ * PP]; // S halves [half][row][key]
  threadgroup float ps[BQ * PP]; // P [row][key]
  threadgroup float fd[BQ * BQ]; // diag(rescale factor)
  threadgroup float os[BQ * BQ * BQ]; // per SIMD-group 8x8 output staging
  threadgroup float sums[BQ];

  const int b = int(tid.z);
  const int h = int(tid.y);
  const int kvh = h / p.gqa_factor;
  const int q0 = int(tid.x) * BQ;
  const int qi = q0 + int(simd_gid);
  const bool row_valid = qi < p.qL;
  const int sg = int(simd_gid);
  const int kb = sg % 4; // S: key block
  const int half_ = sg / 4; // S: half of each coordinate chunk

  // Scaled queries of the block (rows past qL read as 0 and are not written).
  for (int i = int(lid); i < BQ * D; i += NT) {
    int r = i / D;
    kt[i] = (q0 + r < p.qL)
        ? p.scale * queries[((int64_t(b) * p.Hq + h) * p.qL + q0 + r) * D + i % D]
        : 0.0f;
  }
  if (lid < uint(BQ * BQ)) {
    fd[lid] = 0.0f;
  }

  keys += b * p.k_strides[0] + kvh * p.k_strides[1];
  key_scales += b * p.ks_strides[0] + kvh * p.ks_strides[1];
  values += b * p.v_strides[0] + kvh * p.v_strides[1];
  value_scales += b * p.vs_strides[0] + kvh * p.vs_strides[1];
  const int64_t moff =
      b * p.m_strides[0] + h * p.m_strides[1] + qi * p.m_strides[2];
  if (turbo_bool_mask) {
    bmask += moff;
  }
  if (turbo_float_mask) {
    fmask += moff;
  }
  const int causal_limit = p.kL - p.qL + qi;
  // With causal masking and every row of the block seeing key 0, keys past
  // the last row's limit have weight exactly 0 for every row.
  const int last_row = min(q0 + BQ, p.qL) - 1;
  const bool causal_stop = turbo_do_causal && p.kL - p.qL + q0 >= 0;
  const int causal_end = p.kL - p.qL + last_row + 1;

  // This SIMD-group's Q fragments: chunk c, step k covers coordinates
  // c * CW + half_ * (w / 2) + 8k (w: the chunk's width).
  threadgroup_barrier(mem_flags::mem_threadgroup);
  simdgroup_matrix<float, 8, 8> qf[NKC * 4];
  for (int c = 0; c < NKC; c++) {
    const int w = min(CW, D - c * CW);
    for (int k = 0; k < w / 16; k++) {
      simdgroup_load(
          qf[c * 4 + k], kt, D, ulong2(c * CW + half_ * (w / 2) + 8 * k, 0));
    }
  }
  simdgroup_matrix<float, 8, 8> of[NVC];
  for (int c = 0; c < NVC; c++) {
    of[c] = make_filled_simdgroup_matrix<float, 8, 8>(0.0f);
  }

  float max_score = Limits<float>::finite_min;
  float sum_exp = 0.0f;
  if (turbo_has_sinks) {
    max_score = sinks[h];
    sum_exp = 1.0f;
  }

  for (int t0 = 0; t0 < p.kL; t0 += BK) {
    if (causal_stop && t0 >= causal_end) {
      break;
    }
    // S = Q K^T, one chunk of coordinates at a time (keys past kL are 0).
    simdgroup_matrix<float, 8, 8> sf =
        make_filled_simdgroup_matrix<float, 8, 8>(0.0f);
    for (int c = 0; c < NKC; c++) {
      const int w = min(CW, D - c * CW);
      threadgroup_barrier(mem_flags::mem_threadgroup);
      for (int i = int(lid); i < w * BK; i += NT) {
        int d = i / BK, j = i % BK;
        int key = t0 + j;
        kt[d * KP + j] = key < p.kL
            ? turbo_centroid<KB>(turbo_code<KB, D>(
                  keys + key * p.k_strides[2], c * CW + d)) *
                static_cast<float>(key_scales[key * p.ks_strides[2]])
            : 0.0f;
      }
      threadgroup_barrier(mem_flags::mem_threadgroup);
      for (int k = 0; k < w / 16; k++) {
        simdgroup_matrix<float, 8, 8> kf;
        simdgroup_load(
            kf, kt, KP, ulong2(kb * 8, half_ * (w / 2) + 8 * k));
        simdgroup_multiply_accumulate(sf, qf[c * 4 + k], kf, sf);
      }
    }
    simdgroup_store(sf, ss + half_ * BQ * PP, PP, ulong2(kb * 8, 0));
    threadgroup_barrier(mem_flags::mem_threadgroup);

    // Online softmax: SIMD-group sg owns query row sg, lane j key t0 + j.
    const int key = t0 + int(simd_lid);
    const bool in_range = key < p.kL && row_valid;
    bool masked = false;
    float madd = 0.0f;
    if (in_range) {
      turbo_key_mask(
          key, causal_limit, bmask, fmask, p.m_strides[3], masked, madd);
    }
    float s = Limits<float>::finite_min;
    if (in_range && !masked) {
      s = ss[sg * PP + simd_lid] + ss[BQ * PP + sg * PP + simd_lid] + madd;
    }
    float tile_max = simd_max(in_range ? s : -INFINITY);
    float new_max = max(max_score, tile_max);
    float factor = fast::exp(max_score - new_max);
    float pj = in_range ? fast::exp(s - new_max) : 0.0f;
    max_score = new_max;
    sum_exp = sum_exp * factor + simd_sum(pj);
    ps[sg * PP + simd_lid] = pj;
    if (simd_lid == 0) {
      fd[sg * BQ + sg] = factor;
    }

    // O = diag(factor) O + P V, one chunk of value columns at a time.
    simdgroup_matrix<float, 8, 8> df;
    for (int c = 0; c < NVC; c++) {
      const int w = min(CW, V - c * CW);
      threadgroup_barrier(mem_flags::mem_threadgroup);
      for (int i = int(lid); i < BK * w; i += NT) {
        int j = i / w, d = i % w;
        int vkey = t0 + j;
        vt[j * VP + d] = vkey < p.kL
            ? turbo_centroid<VB>(turbo_code<VB, V>(
                  values + vkey * p.v_strides[2], c * CW + d)) *
                static_cast<float>(value_scales[vkey * p.vs_strides[2]])
            : 0.0f;
      }
      threadgroup_barrier(mem_flags::mem_threadgroup);
      if (c == 0) {
        simdgroup_load(df, fd, BQ, ulong2(0, 0));
      }
      if (sg < w / 8) {
        simdgroup_matrix<float, 8, 8> zf =
            make_filled_simdgroup_matrix<float, 8, 8>(0.0f);
        simdgroup_multiply_accumulate(of[c], df, of[c], zf);
        for (int k = 0; k < BK / 8; k++) {
          simdgroup_matrix<float, 8, 8> pf;
          simdgroup_matrix<float, 8, 8> vf;
          simdgroup_load(pf, ps, PP, ulong2(8 * k, 0));
          simdgroup_load(vf, vt, VP, ulong2(8 * sg, 8 * k));
          simdgroup_multiply_accumulate(of[c], pf, vf, of[c]);
        }
      }
    }
  }

  // Output: row r of the block divided by its sum.
  if (simd_lid == 0) {
    sums[sg] = sum_exp;
  }
  threadgroup_barrier(mem_flags::mem_threadgroup);
  threadgroup float* o8 = os + sg * BQ * BQ;
  for (int c = 0; c < NVC; c++) {
    const int w = min(CW, V - c * CW);
    if (sg < w / 8) {
      simdgroup_store(of[c], o8, BQ, ulong2(0, 0));
      simdgroup_barrier(mem_flags::mem_threadgroup);
      for (int e = 0; e < 2; e++) {
        int idx = int(simd_lid) * 2 + e;
        int r = idx / BQ, col = c * CW + 8 * sg + idx % BQ;
        if (q0 + r < p.qL) {
          float se = sums[r];
          float v = o8[idx];
          out[((int64_t(b) * p.Hq + h) * p.qL + q0 + r) * V + col] =
              se == 0.0f ? v : v / se;
        }
      }
      simdgroup_barrier(mem_flags::mem_threadgroup);
    }
  }
}
