// Copyright © 2026 TurboQuant-MLX authors.
//
// Tiled attention for query blocks (prefill) on a TurboQuant-compressed KV
// cache. A threadgroup of TURBO_PREFILL_BQ SIMD-groups serves TURBO_PREFILL_BQ
// consecutive queries of one head (one SIMD-group per query); the K and V
// codes of TURBO_PREFILL_BK keys are unpacked once per tile into threadgroup
// memory (one byte per coordinate, plus the scales) and shared by all queries
// of the block, so the bit unpacking is amortized over the block instead of
// repeated per query as in the vector kernels. Within a SIMD-group lane j
// scores key j of the tile; the online softmax runs per tile; the value
// accumulation uses the vector kernels' lane layout. Same inputs, function
// constants, masking semantics and output as sdpa_vector_turbo.

#pragma once

#include <metal_simdgroup>

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
  constexpr int DP = D + 4; // padded byte rows
  constexpr int VP = V + 4;
  constexpr int WK = TurboLayout<KB, D>::words;
  constexpr int WV = TurboLayout<VB, V>::words;
  constexpr int EV = TurboLanes<V>::E;
  constexpr int LV = TurboLanes<V>::lanes;
  static_assert(BK == TURBO_SIMD_WIDTH, "one key per lane");

  threadgroup float qs[BQ * D];
  threadgroup uchar kc[BK * DP];
  threadgroup uchar vc[BK * VP];
  threadgroup float ksc[BK];
  threadgroup float vsc[BK];

  const int b = int(tid.z);
  const int h = int(tid.y);
  const int kvh = h / p.gqa_factor;
  const int q0 = int(tid.x) * BQ;
  const int qi = q0 + int(simd_gid);
  const bool row_valid = qi < p.qL;
  const int64_t row = (int64_t(b) * p.Hq + h) * p.qL + qi;

  // Scaled queries of the block (rows past qL read as 0 and are not written).
  for (int i = int(lid); i < BQ * D; i += NT) {
    int r = i / D;
    qs[i] = (q0 + r < p.qL)
        ? p.scale * queries[((int64_t(b) * p.Hq + h) * p.qL + q0 + r) * D + i % D]
        : 0.0f;
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

  float o[EV];
  for (int e = 0; e < EV; e++) {
    o[e] = 0.0f;
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
    // Unpack the tile's codes and scales (keys past kL decode to 0).
    threadgroup_barrier(mem_flags::mem_threadgroup);
    for (int i = int(lid); i < BK * D; i += NT) {
      int j = i / D, c = i % D;
      kc[j * DP + c] = (t0 + j < p.kL)
          ? uchar(turbo_code<KB, D>(keys + (t0 + j) * p.k_strides[2], c))
          : uchar(0);
    }
    for (int i = int(lid); i < BK * V; i += NT) {
      int j = i / V, c = i % V;
      vc[j * VP + c] = (t0 + j < p.kL)
          ? uchar(turbo_code<VB, V>(values + (t0 + j) * p.v_strides[2], c))
          : uchar(0);
    }
    if (lid < uint(BK)) {
      int key = t0 + int(lid);
      ksc[lid] = key < p.kL
          ? static_cast<float>(key_scales[key * p.ks_strides[2]])
          : 0.0f;
      vsc[lid] = key < p.kL
          ? static_cast<float>(value_scales[key * p.vs_strides[2]])
          : 0.0f;
    }
    threadgroup_barrier(mem_flags::mem_threadgroup);

    // Lane j scores key t0 + j for this SIMD-group's query.
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
      // 4 partial sums (D is a multiple of 16): shorter dependency chains
      // and a smaller rounding error than one running sum.
      float d0 = 0.0f, d1 = 0.0f, d2 = 0.0f, d3 = 0.0f;
      const threadgroup uchar* kr = kc + simd_lid * DP;
      const threadgroup float* qr = qs + simd_gid * D;
      for (int c = 0; c < D; c += 4) {
        d0 += qr[c] * turbo_centroid<KB>(uint(kr[c]));
        d1 += qr[c + 1] * turbo_centroid<KB>(uint(kr[c + 1]));
        d2 += qr[c + 2] * turbo_centroid<KB>(uint(kr[c + 2]));
        d3 += qr[c + 3] * turbo_centroid<KB>(uint(kr[c + 3]));
      }
      s = ((d0 + d1) + (d2 + d3)) * ksc[simd_lid] + madd;
    }
    float tile_max = simd_max(in_range ? s : -INFINITY);
    float new_max = max(max_score, tile_max);
    float factor = fast::exp(max_score - new_max);
    float pj = in_range ? fast::exp(s - new_max) : 0.0f;
    max_score = new_max;
    sum_exp = sum_exp * factor + simd_sum(pj);
    float wj = pj * vsc[simd_lid];
    for (int e = 0; e < EV; e++) {
      o[e] = o[e] * factor;
    }
    for (int j = 0; j < BK; j++) {
      float w = simd_shuffle(wj, ushort(j));
      if (simd_lid < uint(LV)) {
        const threadgroup uchar* vr = vc + j * VP + simd_lid * EV;
        for (int e = 0; e < EV; e++) {
          o[e] += w * turbo_centroid<VB>(uint(vr[e]));
        }
      }
    }
  }

  if (row_valid && simd_lid < uint(LV)) {
    out += row * V + simd_lid * EV;
    for (int e = 0; e < EV; e++) {
      out[e] = sum_exp == 0.0f ? o[e] : o[e] / sum_exp;
    }
  }
}
