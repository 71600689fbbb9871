// Copyright © 2026 TurboQuant-MLX authors.
//
// Single-query ("vector") attention on a TurboQuant-compressed KV cache: the
// TurboQuant counterparts of sdpa_vector / sdpa_vector_2pass_1 /
// sdpa_vector_2pass_2 in sdpa_vector.h. Queries are already rotated (float32),
// keys and values are packed codes plus one scale per vector, and the output
// is float32 in the rotated value space (docs/format.md section 6). When the
// primitive rotates (fused_rotation), turbo_attention_prep makes their
// inputs from the queries as given and turbo_rotate_out rotates the output
// back (end of this file).

#pragma once

#include <metal_simdgroup>

#include "mlx/backend/metal/kernels/turbo_common.h"

using namespace metal;

constant bool turbo_has_mask [[function_constant(TURBO_FC_HAS_MASK)]];
constant bool turbo_do_causal [[function_constant(TURBO_FC_DO_CAUSAL)]];
constant bool turbo_bool_mask [[function_constant(TURBO_FC_BOOL_MASK)]];
constant bool turbo_float_mask [[function_constant(TURBO_FC_FLOAT_MASK)]];
constant bool turbo_has_sinks [[function_constant(TURBO_FC_HAS_SINKS)]];
constant bool turbo_sink_values [[function_constant(TURBO_FC_SINK_VALUES)]];
constant bool turbo_key_waves [[function_constant(TURBO_FC_KEY_WAVES)]];
constant bool turbo_row_sinks [[function_constant(TURBO_FC_ROW_SINKS)]];
constant bool turbo_prep_key_shift [[function_constant(TURBO_FC_KEY_SHIFT)]];
constant bool turbo_prep_first_key [[function_constant(TURBO_FC_FIRST_KEY)]];

// Online-softmax state of one SIMD-group for one query. Lane l owns key
// coordinates [l * EK, (l + 1) * EK) and value coordinates
// [l * EV, (l + 1) * EV); lanes >= lanes own nothing (D = 80).
template <typename S, int D, int V, int KB, int VB>
struct TurboVectorState {
  static constant constexpr const int EK = TurboLanes<D>::E;
  static constant constexpr const int LK = TurboLanes<D>::lanes;
  static constant constexpr const int EV = TurboLanes<V>::E;
  static constant constexpr const int LV = TurboLanes<V>::lanes;

  float q[EK];
  float o[EV];
  float max_score;
  float sum_exp;

  // A sink joins as a key of score `sink` whose value is `value` (V floats,
  // rotated) or 0 (nullptr): before any key, its weight is 1.
  METAL_FUNC void init_sink(float sink, const device float* value, uint lane) {
    max_score = sink;
    sum_exp = 1.0f;
    if (value && lane < uint(LV)) {
      for (int e = 0; e < EV; e++) {
        o[e] = value[int(lane) * EV + e];
      }
    }
  }

  METAL_FUNC void init(const device float* query, float scale, uint lane) {
    for (int e = 0; e < EK; e++) {
      q[e] = lane < uint(LK) ? scale * query[lane * EK + e] : 0.0f;
    }
    for (int e = 0; e < EV; e++) {
      o[e] = 0.0f;
    }
    max_score = Limits<float>::finite_min;
    sum_exp = 0.0f;
  }

  // One key. `masked` and `madd` must be uniform over the SIMD-group. A masked
  // key has score -FLT_MAX (docs/format.md): once a real score (or a sink) has
  // been seen its weight is exactly 0 and it is skipped without reading K/V.
  // `wave`: the lane's share of the moving key shift's bias (turbo_key_waves).
  METAL_FUNC void update(
      const device uint32_t* kw,
      const device S* ks,
      const device uint32_t* vw,
      const device S* vs,
      bool masked,
      float madd,
      float wave,
      uint lane) {
    if (masked && max_score > Limits<float>::finite_min) {
      return;
    }
    float score = Limits<float>::finite_min;
    if (!masked) {
      float dot = 0.0f;
      if (lane < uint(LK)) {
        for (int e = 0; e < EK; e++) {
          int i = int(lane) * EK + e;
          dot += q[e] * turbo_centroid<KB>(turbo_code<KB, D>(kw, i));
        }
      }
      if (turbo_key_waves) {
        // The key scale is uniform: scaling each lane's share lets the
        // bias join the same sum.
        score = simd_sum(dot * static_cast<float>(ks[0]) + wave) + madd;
      } else {
        score = simd_sum(dot) * static_cast<float>(ks[0]) + madd;
      }
    }
    float new_max = max(max_score, score);
    float factor = fast::exp(max_score - new_max);
    float exp_score = fast::exp(score - new_max);
    max_score = new_max;
    sum_exp = sum_exp * factor + exp_score;
    float w = exp_score * static_cast<float>(vs[0]);
    if (lane < uint(LV)) {
      for (int e = 0; e < EV; e++) {
        int i = int(lane) * EV + e;
        o[e] = o[e] * factor + w * turbo_centroid<VB>(turbo_code<VB, V>(vw, i));
      }
    }
  }
};

// The moving key shift (docs/format.md section 7): lane l < P holds plane l's
// frequency and the row's coefficients of cos and sin; its share of the bias
// of key i, whose angle is 2 pi ((f i) mod 2^24) / 2^24 (turbo_wave_angle).
struct TurboKeyWave {
  uint freq;
  float c_cos;
  float c_sin;

  METAL_FUNC void init(
      const device float* coef,
      const device uint32_t* freqs,
      int P,
      uint lane) {
    freq = 0;
    c_cos = 0.0f;
    c_sin = 0.0f;
    if (lane < uint(P)) {
      freq = freqs[lane];
      c_cos = coef[lane];
      c_sin = coef[P + int(lane)];
    }
  }

  METAL_FUNC float at(int i) const {
    float a = turbo_wave_angle(freq, uint(i));
    return precise::cos(a) * c_cos + precise::sin(a) * c_sin;
  }
};

// Mask of key i for query row (mask points at the row's first key).
METAL_FUNC void turbo_key_mask(
    int i,
    int causal_limit,
    const device bool* bmask,
    const device float* fmask,
    int64_t mk_stride,
    thread bool& masked,
    thread float& madd) {
  masked = false;
  madd = 0.0f;
  if (turbo_do_causal) {
    masked = i > causal_limit;
  }
  if (turbo_bool_mask) {
    masked = masked || !bmask[i * mk_stride];
  }
  if (turbo_float_mask) {
    madd = fmask[i * mk_stride];
  }
}

template <typename S, int D, int V, int KB, int VB>
[[kernel]] void sdpa_vector_turbo(
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
    const device float* sink_values
    [[buffer(TURBO_ATTN_BUF_SINK_VALUES),
      function_constant(turbo_sink_values)]],
    const device float* wave_coef
    [[buffer(TURBO_ATTN_BUF_WAVE_COEF), function_constant(turbo_key_waves)]],
    const device uint32_t* wave_freqs
    [[buffer(TURBO_ATTN_BUF_WAVE_FREQS), function_constant(turbo_key_waves)]],
    uint3 tid [[threadgroup_position_in_grid]],
    uint simd_gid [[simdgroup_index_in_threadgroup]],
    uint simd_lid [[thread_index_in_simdgroup]]) {
  constexpr int BN = TURBO_ATTN_SIMDS;
  constexpr int BD = TURBO_SIMD_WIDTH;
  typedef TurboVectorState<S, D, V, KB, VB> State;

  threadgroup float outputs[BN * BD];
  threadgroup float max_scores[BN];
  threadgroup float sum_exp_scores[BN];

  const int bh = int(tid.x);
  const int b = bh / p.Hq;
  const int h = bh % p.Hq;
  const int kvh = h / p.gqa_factor;
  const int qi = int(tid.y);
  const int64_t row = int64_t(bh) * p.qL + qi;

  State st;
  st.init(queries + row * D, p.scale, simd_lid);
  if (turbo_has_sinks && simd_gid == 0) {
    st.init_sink(
        sinks[turbo_row_sinks ? row : h],
        turbo_sink_values ? sink_values + (b * p.Hkv + kvh) * V : nullptr,
        simd_lid);
  }
  TurboKeyWave wave;
  if (turbo_key_waves) {
    wave.init(
        wave_coef + row * 2 * p.waves,
        wave_freqs + b * p.wf_b_stride + kvh * p.waves,
        p.waves,
        simd_lid);
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

  for (int i = int(simd_gid); i < p.kL; i += BN) {
    bool masked;
    float madd;
    turbo_key_mask(i, causal_limit, bmask, fmask, p.m_strides[3], masked, madd);
    st.update(
        keys + i * p.k_strides[2],
        key_scales + i * p.ks_strides[2],
        values + i * p.v_strides[2],
        value_scales + i * p.vs_strides[2],
        masked,
        madd,
        turbo_key_waves ? wave.at(i) : 0.0f,
        simd_lid);
  }

  // Combine the 32 SIMD-groups: max and normalizer first.
  if (simd_lid == 0) {
    max_scores[simd_gid] = st.max_score;
    sum_exp_scores[simd_gid] = st.sum_exp;
  }
  threadgroup_barrier(mem_flags::mem_threadgroup);
  float m = max_scores[simd_lid];
  float new_max = simd_max(m);
  float factor = fast::exp(m - new_max);
  float total = simd_sum(sum_exp_scores[simd_lid] * factor);

  // Then transpose the partial outputs through threadgroup memory: SIMD-group
  // g sums value coordinate g * EV + e over the 32 SIMD-groups.
  out += row * V;
  for (int e = 0; e < State::EV; e++) {
    outputs[simd_lid * BD + simd_gid] = st.o[e];
    threadgroup_barrier(mem_flags::mem_threadgroup);
    float r = simd_sum(outputs[simd_gid * BD + simd_lid] * factor);
    r = total == 0.0f ? r : r / total;
    if (simd_lid == 0 && simd_gid < uint(State::LV)) {
      out[simd_gid * State::EV + e] = r;
    }
    threadgroup_barrier(mem_flags::mem_threadgroup);
  }
}

template <typename S, int D, int V, int KB, int VB>
[[kernel]] void sdpa_vector_turbo_2pass_1(
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
    const device float* sink_values
    [[buffer(TURBO_ATTN_BUF_SINK_VALUES),
      function_constant(turbo_sink_values)]],
    const device float* wave_coef
    [[buffer(TURBO_ATTN_BUF_WAVE_COEF), function_constant(turbo_key_waves)]],
    const device uint32_t* wave_freqs
    [[buffer(TURBO_ATTN_BUF_WAVE_FREQS), function_constant(turbo_key_waves)]],
    device float* sums [[buffer(TURBO_ATTN_BUF_SUMS)]],
    device float* maxs [[buffer(TURBO_ATTN_BUF_MAXS)]],
    uint3 tidtg [[thread_position_in_threadgroup]],
    uint3 tid [[threadgroup_position_in_grid]],
    uint simd_lid [[thread_index_in_simdgroup]]) {
  typedef TurboVectorState<S, D, V, KB, VB> State;

  const int kvh = int(tid.x);
  const int b = int(tid.y);
  const int block = int(tid.z);
  const int blocks = p.blocks;
  const int h = kvh * p.gqa_factor + int(tidtg.y);
  const int qi = int(tidtg.z);
  const int bh = b * p.Hq + h;
  const int64_t row = int64_t(bh) * p.qL + qi;

  State st;
  st.init(queries + row * D, p.scale, simd_lid);
  if (turbo_has_sinks && block == 0) {
    st.init_sink(
        sinks[turbo_row_sinks ? row : h],
        turbo_sink_values ? sink_values + (b * p.Hkv + kvh) * V : nullptr,
        simd_lid);
  }
  TurboKeyWave wave;
  if (turbo_key_waves) {
    wave.init(
        wave_coef + row * 2 * p.waves,
        wave_freqs + b * p.wf_b_stride + kvh * p.waves,
        p.waves,
        simd_lid);
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

  for (int i = block; i < p.kL; i += blocks) {
    bool masked;
    float madd;
    turbo_key_mask(i, causal_limit, bmask, fmask, p.m_strides[3], masked, madd);
    st.update(
        keys + i * p.k_strides[2],
        key_scales + i * p.ks_strides[2],
        values + i * p.v_strides[2],
        value_scales + i * p.vs_strides[2],
        masked,
        madd,
        turbo_key_waves ? wave.at(i) : 0.0f,
        simd_lid);
  }

  const int64_t part = row * blocks + block;
  if (simd_lid == 0) {
    sums[part] = st.sum_exp;
    maxs[part] = st.max_score;
  }
  if (simd_lid < uint(State::LV)) {
    out += part * V + simd_lid * State::EV;
    for (int e = 0; e < State::EV; e++) {
      out[e] = st.o[e];
    }
  }
}

template <int V>
[[kernel]] void sdpa_vector_turbo_2pass_2(
    const device float* partials [[buffer(TURBO_AGG_BUF_PARTIALS)]],
    const device float* sums [[buffer(TURBO_AGG_BUF_SUMS)]],
    const device float* maxs [[buffer(TURBO_AGG_BUF_MAXS)]],
    device float* out [[buffer(TURBO_AGG_BUF_OUT)]],
    const constant int& blocks [[buffer(TURBO_AGG_BUF_BLOCKS)]],
    uint3 tid [[threadgroup_position_in_grid]],
    uint3 tpg [[threadgroups_per_grid]],
    uint simd_gid [[simdgroup_index_in_threadgroup]],
    uint simd_lid [[thread_index_in_simdgroup]]) {
  constexpr int BN = TURBO_ATTN_SIMDS;
  constexpr int BD = TURBO_SIMD_WIDTH;
  constexpr int EV = TurboLanes<V>::E;
  constexpr int LV = TurboLanes<V>::lanes;

  thread float o[EV];
  threadgroup float outputs[BN * BD];
  for (int e = 0; e < EV; e++) {
    o[e] = 0.0f;
  }

  const int64_t row = int64_t(tid.x) * tpg.y + tid.y;
  partials += row * blocks * V + simd_gid * V + simd_lid * EV;
  sums += row * blocks;
  maxs += row * blocks;
  out += row * V;

  float max_score = Limits<float>::finite_min;
  for (int b = 0; b < blocks / BN; ++b) {
    max_score = max(max_score, maxs[simd_lid + BN * b]);
  }
  max_score = simd_max(max_score);

  float sum_exp = 0.0f;
  for (int b = 0; b < blocks / BN; ++b) {
    float factor = fast::exp(maxs[simd_lid + BN * b] - max_score);
    sum_exp += factor * sums[simd_lid + BN * b];
  }
  sum_exp = simd_sum(sum_exp);

  // SIMD-group g accumulates blocks g, g + 32, ...
  for (int b = 0; b < blocks / BN; ++b) {
    float factor = fast::exp(maxs[simd_gid + BN * b] - max_score);
    if (simd_lid < uint(LV)) {
      for (int e = 0; e < EV; e++) {
        o[e] += factor * partials[e];
      }
    }
    partials += BN * V;
  }

  for (int e = 0; e < EV; e++) {
    outputs[simd_lid * BD + simd_gid] = o[e];
    threadgroup_barrier(mem_flags::mem_threadgroup);
    float r = simd_sum(outputs[simd_gid * BD + simd_lid]);
    r = sum_exp == 0.0f ? r : r / sum_exp;
    if (simd_lid == 0 && simd_gid < uint(LV)) {
      out[simd_gid * EV + e] = r;
    }
    threadgroup_barrier(mem_flags::mem_threadgroup);
  }
}

// ---------------------------------------------------------------------------
// fused_rotation: the decode preparation and the output rotation, one
// SIMD-group per row, the row rotated in threadgroup memory.

// Unnormalized Walsh-Hadamard transform of y[0:P] by one SIMD-group: for
// each butterfly span, lane l takes pairs l, l + 32, ...; the SIMD-group
// synchronizes after each span.
template <int P>
METAL_FUNC void turbo_simd_fwht(threadgroup float* y, uint lane) {
  for (int h = 1; h < P; h <<= 1) {
    for (int t = int(lane); t < P / 2; t += TURBO_SIMD_WIDTH) {
      const int i = ((t & ~(h - 1)) << 1) | (t & (h - 1));
      const float a = y[i];
      const float b = y[i + h];
      y[i] = a + b;
      y[i + h] = a - b;
    }
    simdgroup_barrier(mem_flags::mem_threadgroup);
  }
}

// y <- R y (as turbo::rotate) or R^T y (INVERSE) for one row of D floats in
// threadgroup memory that the SIMD-group has just written: stage 1 is signs
// s1 and the normalized transform of [0, P), stage 2 signs s2 and the
// transform of [D - P, D) (P the largest power of two <= D).
template <int D, bool INVERSE>
METAL_FUNC void turbo_simd_rotate(threadgroup float* y, uint lane) {
  constexpr int P = TurboPow2<D>::P;
  constexpr int BD = TURBO_SIMD_WIDTH;
  const float norm = TurboConsts<D>::inv_sqrt_p;
  simdgroup_barrier(mem_flags::mem_threadgroup);
  if (!INVERSE) {
    for (int i = int(lane); i < D; i += BD) {
      y[i] = y[i] * turbo_sign(1u, uint(i));
    }
    simdgroup_barrier(mem_flags::mem_threadgroup);
    turbo_simd_fwht<P>(y, lane);
    for (int i = int(lane); i < D; i += BD) {
      y[i] = (i < P ? y[i] * norm : y[i]) * turbo_sign(2u, uint(i));
    }
    simdgroup_barrier(mem_flags::mem_threadgroup);
    turbo_simd_fwht<P>(y + (D - P), lane);
    for (int i = D - P + int(lane); i < D; i += BD) {
      y[i] = y[i] * norm;
    }
  } else {
    turbo_simd_fwht<P>(y + (D - P), lane);
    for (int i = int(lane); i < D; i += BD) {
      y[i] = (i >= D - P ? y[i] * norm : y[i]) * turbo_sign(2u, uint(i));
    }
    simdgroup_barrier(mem_flags::mem_threadgroup);
    turbo_simd_fwht<P>(y, lane);
    for (int i = int(lane); i < D; i += BD) {
      y[i] = (i < P ? y[i] * norm : y[i]) * turbo_sign(1u, uint(i));
    }
  }
  simdgroup_barrier(mem_flags::mem_threadgroup);
}

// out[0:D] <- R x (or R^T x, INVERSE) for one row, through the SIMD-group's
// threadgroup row y: read as float32, rotated, rounded once to TO.
template <int D, bool INVERSE, typename TI, typename TO>
METAL_FUNC void turbo_simd_rotate_row(
    const device TI* x,
    device TO* out,
    threadgroup float* y,
    uint lane) {
  for (int i = int(lane); i < D; i += TURBO_SIMD_WIDTH) {
    y[i] = static_cast<float>(x[i]);
  }
  turbo_simd_rotate<D, INVERSE>(y, lane);
  for (int i = int(lane); i < D; i += TURBO_SIMD_WIDTH) {
    out[i] = static_cast<TO>(y[i]);
  }
}

// Decode preparation (TurboPrepParams; buffers TURBO_PREP_BUF_*): query row v
// (b, h, i) -> q_rot[v] = R q[v] in float32; with ROW_SINKS, row_sinks[v] =
// sinks[h] (0 without sinks) - scale * q[v] . (key_shift - first_key) of its
// kv head, either term optional; with KEY_WAVES, wave_coef[v, j] = scale *
// q[v] . waves[j] for the 2P rows j of its kv head (the decode kernels'
// coefficients); sink value row (b, kvh) -> sv_rot = R sv in float32. The
// dot products use the queries as given (T, converted to float32).
template <typename T, int D, int V>
[[kernel]] void turbo_attention_prep(
    const device T* q [[buffer(TURBO_PREP_BUF_Q)]],
    device float* q_rot [[buffer(TURBO_PREP_BUF_Q_ROT)]],
    const constant TurboPrepParams& p [[buffer(TURBO_PREP_BUF_PARAMS)]],
    const device T* sv
    [[buffer(TURBO_PREP_BUF_SV), function_constant(turbo_sink_values)]],
    device float* sv_rot
    [[buffer(TURBO_PREP_BUF_SV_ROT), function_constant(turbo_sink_values)]],
    const device float* sinks
    [[buffer(TURBO_PREP_BUF_SINKS), function_constant(turbo_has_sinks)]],
    const device T* key_shift
    [[buffer(TURBO_PREP_BUF_KEY_SHIFT),
      function_constant(turbo_prep_key_shift)]],
    const device T* first_key
    [[buffer(TURBO_PREP_BUF_FIRST_KEY),
      function_constant(turbo_prep_first_key)]],
    device float* row_sinks
    [[buffer(TURBO_PREP_BUF_ROW_SINKS), function_constant(turbo_row_sinks)]],
    const device float* waves
    [[buffer(TURBO_PREP_BUF_WAVES), function_constant(turbo_key_waves)]],
    device float* wave_coef
    [[buffer(TURBO_PREP_BUF_WAVE_COEF), function_constant(turbo_key_waves)]],
    uint tid [[threadgroup_position_in_grid]],
    uint simd_gid [[simdgroup_index_in_threadgroup]],
    uint simd_lid [[thread_index_in_simdgroup]]) {
  constexpr int BD = TURBO_SIMD_WIDTH;
  constexpr int N = D > V ? D : V;
  threadgroup float rows[TURBO_ROW_SIMDS * N];
  threadgroup float* y = rows + simd_gid * N;
  const int64_t v = int64_t(tid) * TURBO_ROW_SIMDS + simd_gid;
  const int lane = int(simd_lid);
  if (v < p.n_q) {
    const device T* x = q + v * D;
    const int h = int((v / p.qL) % p.Hq);
    const int b = int(v / (int64_t(p.Hq) * p.qL));
    const int kvh = h / p.gqa_factor;
    if (turbo_row_sinks) {
      float dot = 0.0f;
      for (int i = lane; i < D; i += BD) {
        float bias = 0.0f;
        if (turbo_prep_key_shift) {
          bias = static_cast<float>(
              key_shift[(int64_t(p.key_shift_b * b) * p.Hkv + kvh) * D + i]);
        }
        if (turbo_prep_first_key) {
          bias -= static_cast<float>(
              first_key[(int64_t(p.first_key_b * b) * p.Hkv + kvh) * D + i]);
        }
        dot += static_cast<float>(x[i]) * bias;
      }
      dot = simd_sum(dot);
      if (lane == 0) {
        row_sinks[v] = (turbo_has_sinks ? sinks[h] : 0.0f) - p.scale * dot;
      }
    }
    if (turbo_key_waves) {
      const int n_coef = 2 * p.waves;
      const device float* w =
          waves + (int64_t(p.waves_b * b) * p.Hkv + kvh) * n_coef * D;
      for (int j = 0; j < n_coef; j++) {
        float c = 0.0f;
        for (int i = lane; i < D; i += BD) {
          c += static_cast<float>(x[i]) * w[j * D + i];
        }
        c = simd_sum(c);
        if (lane == 0) {
          wave_coef[v * n_coef + j] = p.scale * c;
        }
      }
    }
    turbo_simd_rotate_row<D, false>(x, q_rot + v * D, y, simd_lid);
  } else if (turbo_sink_values && v < p.n_q + p.n_sv) {
    const int64_t r = v - p.n_q;
    const int b = int(r / p.Hkv);
    const int kvh = int(r % p.Hkv);
    const device T* x = sv + (int64_t(p.sv_b * b) * p.Hkv + kvh) * V;
    turbo_simd_rotate_row<V, false>(x, sv_rot + r * V, y, simd_lid);
  }
}

// Output rotation: rows v < nrows of D float32 (the decode kernels' rotated
// output) -> out[v] = R^T x[v], rounded once to T.
template <typename T, int D>
[[kernel]] void turbo_rotate_out(
    const device float* x [[buffer(TURBO_ROT_BUF_IN)]],
    device T* out [[buffer(TURBO_ROT_BUF_OUT)]],
    const constant int64_t& nrows [[buffer(TURBO_ROT_BUF_NROWS)]],
    uint tid [[threadgroup_position_in_grid]],
    uint simd_gid [[simdgroup_index_in_threadgroup]],
    uint simd_lid [[thread_index_in_simdgroup]]) {
  threadgroup float rows[TURBO_ROW_SIMDS * D];
  threadgroup float* y = rows + simd_gid * D;
  const int64_t v = int64_t(tid) * TURBO_ROW_SIMDS + simd_gid;
  if (v >= nrows) {
    return;
  }
  turbo_simd_rotate_row<D, true>(x + v * D, out + v * D, y, simd_lid);
}
