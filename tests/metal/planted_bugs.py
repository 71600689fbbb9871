#!/usr/bin/env python3
"""Planted bugs in the TurboQuant kernels: each mutation is applied to a copy
of the kernel tree and must be caught.
  compile: by check_kernels.sh (type check) or check_bindings.py
  clcpp:   by check_kernels.sh --clcpp (C++ for OpenCL address-space rules);
           the C++-mode check is run too and reported (these bugs pass it)
  runtime: by the reduced CPU-execution builds (TURBO_EXEC_SMALL), plain and,
           where marked, under AddressSanitizer
usage: planted_bugs.py KERNEL_ROOT BUILD_DIR [substring filters...]
Prints one line per mutation; exits 1 if any mutation was missed."""
import os, shutil, subprocess, sys, time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT, BUILD = sys.argv[1], sys.argv[2]
ONLY = sys.argv[3:]
K = "mlx/backend/metal/kernels/"
SVT, TQ, TC = K + "sdpa_vector_turbo.h", K + "turbo_quantize.h", K + "turbo_common.h"
SVM = K + "sdpa_vector_turbo.metal"
SVP = K + "sdpa_prefill_turbo.h"
TQM = K + "turbo_quantize.metal"

# (name, kind, file, old, new[, asan])   kind: compile | clcpp | bindings | lint | attn | quant
MUT = [
  ("write through a const device pointer (out)", "compile", SVT,
   "    device float* out [[buffer(TURBO_ATTN_BUF_OUT)]],\n    const constant TurboAttnParams& p [[buffer(TURBO_ATTN_BUF_PARAMS)]],\n    const device bool* bmask\n    [[buffer(TURBO_ATTN_BUF_BMASK), function_constant(turbo_bool_mask)]],\n    const device float* fmask\n    [[buffer(TURBO_ATTN_BUF_FMASK), function_constant(turbo_float_mask)]],\n    const device float* sinks\n    [[buffer(TURBO_ATTN_BUF_SINKS), function_constant(turbo_has_sinks)]],\n    const device float* sink_values\n    [[buffer(TURBO_ATTN_BUF_SINK_VALUES),\n      function_constant(turbo_sink_values)]],\n    const device float* wave_coef\n    [[buffer(TURBO_ATTN_BUF_WAVE_COEF), function_constant(turbo_key_waves)]],\n    const device uint32_t* wave_freqs\n    [[buffer(TURBO_ATTN_BUF_WAVE_FREQS), function_constant(turbo_key_waves)]],\n    uint3 tid",
   "    const device float* out [[buffer(TURBO_ATTN_BUF_OUT)]],\n    const constant TurboAttnParams& p [[buffer(TURBO_ATTN_BUF_PARAMS)]],\n    const device bool* bmask\n    [[buffer(TURBO_ATTN_BUF_BMASK), function_constant(turbo_bool_mask)]],\n    const device float* fmask\n    [[buffer(TURBO_ATTN_BUF_FMASK), function_constant(turbo_float_mask)]],\n    const device float* sinks\n    [[buffer(TURBO_ATTN_BUF_SINKS), function_constant(turbo_has_sinks)]],\n    const device float* sink_values\n    [[buffer(TURBO_ATTN_BUF_SINK_VALUES),\n      function_constant(turbo_sink_values)]],\n    const device float* wave_coef\n    [[buffer(TURBO_ATTN_BUF_WAVE_COEF), function_constant(turbo_key_waves)]],\n    const device uint32_t* wave_freqs\n    [[buffer(TURBO_ATTN_BUF_WAVE_FREQS), function_constant(turbo_key_waves)]],\n    uint3 tid"),
  ("sink value dropped (the first token's value missing from the sink slot)", "attn", SVT,
   "        o[e] = value[int(lane) * EV + e];", "        o[e] = 0.0f * value[int(lane) * EV + e];"),
  ("device pointer passed where a thread pointer is expected (FWHT on device memory)", "compile", TQ,
   "  turbo_fwht<P>(y);\n  for (int i = 0; i < P; i++) {\n    y[i] = y[i] * norm;\n  }\n  for (int i = 0; i < D; i++) {\n    y[i] = y[i] * turbo_sign(1u, uint(i));",
   "  turbo_fwht<P>((device float*)packed);\n  for (int i = 0; i < P; i++) {\n    y[i] = y[i] * norm;\n  }\n  for (int i = 0; i < D; i++) {\n    y[i] = y[i] * turbo_sign(1u, uint(i));"),
  ("threadgroup array bound to a device pointer", "compile", SVT,
   "  threadgroup float sum_exp_scores[BN];\n",
   "  threadgroup float sum_exp_scores[BN];\n  device float* tmp = max_scores;\n  (void)tmp;\n"),
  ("assignment to a function constant", "compile", SVT,
   "  const int causal_limit = p.kL - p.qL + qi;\n\n  for (int i = int(simd_gid); i < p.kL; i += BN) {",
   "  const int causal_limit = p.kL - p.qL + qi;\n  turbo_do_causal = false;\n\n  for (int i = int(simd_gid); i < p.kL; i += BN) {"),
  ("write to the constant params buffer", "compile", SVT,
   "  const int blocks = p.blocks;", "  const int blocks = p.blocks;\n  p.blocks = 0;"),
  ("implicit float -> half/bfloat store in dequantize", "compile", TQ,
   "    out[i] = static_cast<O>(y[i]);",
   "    out[i] = y[i];"),
  ("error only in the D = 80 instantiations", "compile", TC,
   "  static_assert(D % E == 0 && lanes <= 32, \"unsupported head dim\");",
   "  static_assert(D % E == 0 && lanes <= 32, \"unsupported head dim\");\n  static_assert(D != 80 || E == 3, \"planted\");"),
  ("typo in a template only instantiated per value dim (2pass_2)", "compile", SVT,
   "    r = sum_exp == 0.0f ? r : r / sum_exp;", "    r = sum_exp == 0.0f ? r : r / sum_exps;"),
  ("kernel name in the .metal differs from the host's name", "bindings", SVM,
   "\"sdpa_vector_turbo_2pass_1_\" #kmode", "\"sdpa_vector_turbo_2pass1_\" #kmode"),
  ("missing instantiations (head dim 96)", "bindings", SVM,
   "  instantiate_sdpa_vector_turbo_modes(stype, sname, 96, 96)      \\\n", ""),
  ("two buffers on one index (sums on the sinks index)", "bindings", SVT,
   "device float* sums [[buffer(TURBO_ATTN_BUF_SUMS)]]", "device float* sums [[buffer(TURBO_ATTN_BUF_SINKS)]]"),
  ("literal buffer index instead of the shared macro", "bindings", SVT,
   "device float* maxs [[buffer(TURBO_ATTN_BUF_MAXS)]]", "device float* maxs [[buffer(11)]]"),
  ("double literal in the encoder (float on the GPU, double on the CPU model)", "lint", TQ,
   "turbo_centroid<BITS>(uint(j + 1))) * 0.5f;", "turbo_centroid<BITS>(uint(j + 1))) * 0.5;"),
  ("double accumulator", "lint", SVT, "      float dot = 0.0f;", "      double dot = 0.0f;"),
  # ---- C++ for OpenCL check (C++ mode accepts these)
  ("threadgroup key tile loaded into an MMA fragment through a device pointer (C-style address-space cast)", "clcpp", SVP,
   "        simdgroup_load(\n            kf, kt, KP,",
   "        simdgroup_load(\n            kf, (const device float*)kt, KP,"),
  ("codebook table at program scope without `constant`", "clcpp", TC,
   "constexpr constant static float turbo_cb3[8] = {", "constexpr static float turbo_cb3[8] = {"),
  # ---- runtime
  ("missing threadgroup_barrier before reading max_scores", "attn", SVT,
   "  threadgroup_barrier(mem_flags::mem_threadgroup);\n  float m = max_scores[simd_lid];", "  float m = max_scores[simd_lid];"),
  ("missing 2nd barrier in the 1-pass output transpose (WAR race)", "attn", SVT,
   "      out[simd_gid * State::EV + e] = r;\n    }\n    threadgroup_barrier(mem_flags::mem_threadgroup);",
   "      out[simd_gid * State::EV + e] = r;\n    }"),
  ("key loop off by one (i <= kL): reads one key past the cache", "attn", SVT,
   "  for (int i = int(simd_gid); i < p.kL; i += BN) {", "  for (int i = int(simd_gid); i <= p.kL; i += BN) {", True),
  ("wrong GQA head mapping (% instead of /)", "attn", SVT,
   "  const int kvh = h / p.gqa_factor;", "  const int kvh = h % p.gqa_factor;"),
  ("causal mask off by one", "attn", SVT,
   "    masked = i > causal_limit;", "    masked = i >= causal_limit;"),
  ("masked keys always skipped (fully masked row gives 0, not the mean)", "attn", SVT,
   "    if (masked && max_score > Limits<float>::finite_min) {", "    if (masked) {"),
  ("sink logit added in every SIMD-group", "attn", SVT,
   "  if (turbo_has_sinks && simd_gid == 0) {", "  if (turbo_has_sinks) {"),
  ("value scale not applied", "attn", SVT,
   "    float w = exp_score * static_cast<float>(vs[0]);", "    float w = exp_score;"),
  ("key scale read from the value scales", "attn", SVT,
   "      score = simd_sum(dot) * static_cast<float>(ks[0]) + madd;", "      score = simd_sum(dot) * static_cast<float>(vs[0]) + madd;"),
  ("divergent simd_sum (only the lanes that own coordinates)", "attn", SVT,
   "      if (lane < uint(LK)) {\n        for (int e = 0; e < EK; e++) {\n          int i = int(lane) * EK + e;\n          dot += q[e] * turbo_centroid<KB>(turbo_code<KB, D>(kw, i));\n        }\n      }\n      if (turbo_key_waves) {",
   "      if (lane < uint(LK)) {\n        for (int e = 0; e < EK; e++) {\n          int i = int(lane) * EK + e;\n          dot += q[e] * turbo_centroid<KB>(turbo_code<KB, D>(kw, i));\n        }\n        dot = simd_sum(dot);\n      }\n      if (turbo_key_waves) {"),
  ("moving key shift: the phase of the next key", "attn", SVT,
   "    float a = turbo_wave_angle(freq, uint(i));", "    float a = turbo_wave_angle(freq, uint(i + 1));"),
  ("moving key shift: the sin coefficient of the wrong plane", "attn", SVT,
   "      c_sin = coef[P + int(lane)];", "      c_sin = coef[P + int(lane) / 2];"),
  ("2-pass first pass writes partials from idle lanes (D = 80)", "attn", SVT,
   "  if (simd_lid < uint(State::LV)) {\n    out += part * V", "  if (true) {\n    out += part * V", True),
  ("2-pass aggregation uses the lane's block max for the SIMD-group's block", "attn", SVT,
   "    float factor = fast::exp(maxs[simd_gid + BN * b] - max_score);", "    float factor = fast::exp(maxs[simd_lid + BN * b] - max_score);"),
  ("turbo3 high bit plane read from the wrong word", "attn", TC,
   "    uint hi = (w[D / 16 + (i >> 5)] >> uint(i & 31)) & 0x1u;", "    uint hi = (w[D / 16 + (i >> 6)] >> uint(i & 31)) & 0x1u;"),
  ("turbo4 nibble order reversed within a word", "attn", TC,
   "    return (w[i >> 3] >> (uint(i & 7) * 4u)) & 0xFu;", "    return (w[i >> 3] >> (uint(7 - (i & 7)) * 4u)) & 0xFu;"),
  ("codebook entry typo (turbo4 level 9)", "attn", TC, "0.3881f,  0.6568f", "0.3818f,  0.6568f"),
  ("prefill: no barrier before overwriting the K chunk (WAR race)", "attn", SVP,
   "      threadgroup_barrier(mem_flags::mem_threadgroup);\n      for (int i = int(lid); i < w * BK; i += NT) {",
   "      for (int i = int(lid); i < w * BK; i += NT) {"),
  ("prefill: no barrier between dequantizing the K chunk and the MMA (RAW race)", "attn", SVP,
   "      }\n      threadgroup_barrier(mem_flags::mem_threadgroup);\n      for (int k = 0; k < w / 16; k++) {",
   "      }\n      for (int k = 0; k < w / 16; k++) {"),
  ("prefill: no barrier between dequantizing the V chunk and the MMA (RAW race; also P and the factors)", "attn", SVP,
   "      }\n      threadgroup_barrier(mem_flags::mem_threadgroup);\n      if (c == 0) {",
   "      }\n      if (c == 0) {"),
  ("prefill: keys past kL not excluded (tail tile)", "attn", SVP,
   "    const bool in_range = key < p.kL && row_valid;", "    const bool in_range = row_valid;"),
  ("prefill: causal early stop also when some row sees no key", "attn", SVP,
   "  const bool causal_stop = turbo_do_causal && p.kL - p.qL + q0 >= 0;", "  const bool causal_stop = turbo_do_causal;"),
  ("prefill: P key block k multiplied with V key block 3 - k", "attn", SVP,
   "          simdgroup_load(pf, ps, PP, ulong2(8 * k, 0));", "          simdgroup_load(pf, ps, PP, ulong2(8 * (3 - k), 0));"),
  ("prefill: O not rescaled by diag(factor) when the running max grows", "attn", SVP,
   "        simdgroup_multiply_accumulate(of[c], df, of[c], zf);\n", ""),
  ("prefill: K fragment loaded transposed (keys x coordinates swapped)", "attn", SVP,
   "            kf, kt, KP, ulong2(kb * 8, half_ * (w / 2) + 8 * k));",
   "            kf, kt, KP, ulong2(kb * 8, half_ * (w / 2) + 8 * k), true);"),
  ("prefill: query rows past qL written", "attn", SVP,
   "        if (q0 + r < p.qL) {", "        if (true) {", True),
  # ---- fused_rotation: the decode preparation and the output rotation
  ("rotation: no SIMD-group barrier between butterfly spans (race)", "attn", SVT,
   "      y[i + h] = a - b;\n    }\n    simdgroup_barrier(mem_flags::mem_threadgroup);\n  }",
   "      y[i + h] = a - b;\n    }\n  }"),
  ("rotation: stage 2 of R on [0, P) instead of [D - P, D) (D = 80)", "attn", SVT,
   "    turbo_simd_fwht<P>(y + (D - P), lane);\n    for (int i = D - P + int(lane); i < D; i += BD) {",
   "    turbo_simd_fwht<P>(y, lane);\n    for (int i = D - P + int(lane); i < D; i += BD) {"),
  ("rotation: R^T ends with the stage-2 signs", "attn", SVT,
   "      y[i] = (i < P ? y[i] * norm : y[i]) * turbo_sign(1u, uint(i));",
   "      y[i] = (i < P ? y[i] * norm : y[i]) * turbo_sign(2u, uint(i));"),
  ("output rotation: R instead of R^T", "attn", SVT,
   "  turbo_simd_rotate_row<D, true>(x + v * D", "  turbo_simd_rotate_row<D, false>(x + v * D"),
  ("1-pass: per-row sink logits read per head", "attn", SVT,
   "        sinks[turbo_row_sinks ? row : h],", "        sinks[h],"),
  ("preparation: first key added to the key bias instead of subtracted", "attn", SVT,
   "          bias -= static_cast<float>(", "          bias += static_cast<float>("),
  ("preparation: moving shift's coefficients without the scale", "attn", SVT,
   "          wave_coef[v * n_coef + j] = p.scale * c;", "          wave_coef[v * n_coef + j] = c;"),
  ("preparation: sink values read per batch entry when the batch shares them", "attn", SVT,
   "    const device T* x = sv + (int64_t(p.sv_b * b) * p.Hkv + kvh) * V;",
   "    const device T* x = sv + (int64_t(b) * p.Hkv + kvh) * V;", True),
  ("preparation: query rows' kv head by % instead of /", "attn", SVT,
   "    const int kvh = h / p.gqa_factor;\n    if (turbo_row_sinks) {",
   "    const int kvh = h % p.gqa_factor;\n    if (turbo_row_sinks) {"),
  ("preparation kernel name differs from the host's", "bindings", SVM,
   "\"turbo_attention_prep_\" #tname", "\"turbo_attn_prep_\" #tname"),
  ("FWHT butterfly span descending (bit-exactness contract)", "quant", TC,
   "  for (int h = 1; h < P; h <<= 1) {", "  for (int h = P / 2; h >= 1; h >>= 1) {"),
  ("stage signs swapped in the encoder", "quant", TQ,
   "  for (int i = 0; i < D; i++) {\n    y[i] = y[i] * turbo_sign(1u, uint(i));\n  }\n  turbo_fwht<P>(y);",
   "  for (int i = 0; i < D; i++) {\n    y[i] = y[i] * turbo_sign(2u, uint(i));\n  }\n  turbo_fwht<P>(y);"),
  ("Inf input encodes to Inf, not NaN", "quant", TQ,
   "  const float scale = finite_n ? n / rho : NAN;", "  const float scale = n / rho;"),
  ("norm accumulated with a fused multiply-add", "quant", TQ,
   "    float sq = xi * xi;\n    ss = ss + sq;", "    ss = fma(xi, xi, ss);"),
  ("boundary tie goes to the upper level (z >= b)", "quant", TQ,
   "    idx += z > b ? 1u : 0u;", "    idx += z >= b ? 1u : 0u;"),
  ("quantize writes one word past the vector", "quant", TQ,
   "  for (int k = 0; k < W; k++) {\n    packed[k] = w[k];", "  for (int k = 0; k <= W; k++) {\n    packed[k] = k < W ? w[k] : 0u;", True),
  # ---- cache update (turbo_quantize_update)
  ("cache update: output row strided by L instead of the cache length N", "quant", TQ,
   "  const int64_t row = bh * p.N + p.offset + l;", "  const int64_t row = bh * p.L + p.offset + l;"),
  ("cache update: x - shift not rounded to T before encoding", "quant", TQ,
   "      y[i] = static_cast<float>(static_cast<T>(d));", "      y[i] = d;"),
  ("cache update: shift row read with x's strides", "quant", TQ,
   "      shift += b * p.shift_strides[0] + h * p.shift_strides[1] +\n          l * p.shift_strides[2];",
   "      shift += b * p.x_strides[0] + h * p.x_strides[1] +\n          l * p.x_strides[2];", True),
  ("cache update: x read as a contiguous (B, H, L, D) array", "quant", TQ,
   "  x += b * p.x_strides[0] + h * p.x_strides[1] + l * p.x_strides[2];", "  x += v * D;"),
  ("missing cache update instantiations (bfloat16)", "bindings", TQM,
   "  instantiate_turbo_quantize_update(mode, bits, bfloat16_t, bfloat16, d) \\\n", ""),
  # one node per buffer: each writes only the buffer it binds
  ("cache update: codes stored under turbo_update_scales (the scales node writes the codes)", "quant", TQ,
   "  if (turbo_update_codes) {\n    packed += row * W;", "  if (turbo_update_scales) {\n    packed += row * W;"),
  ("cache update: scales stored unconditionally (the codes node writes the scales)", "quant", TQ,
   "  if (turbo_update_scales) {\n    scales[row] = static_cast<T>(scale);", "  {\n    scales[row] = static_cast<T>(scale);"),
  ("cache update: codes argument gated by turbo_update_scales (wrong function constant)", "bindings", TQ,
   "[[buffer(TURBO_QU_BUF_PACKED), function_constant(turbo_update_codes)]]",
   "[[buffer(TURBO_QU_BUF_PACKED), function_constant(turbo_update_scales)]]"),
  ("cache update: TURBO_FC_UPDATE_CODES with the index of TURBO_FC_UPDATE_SCALES", "bindings", K + "turbo_bindings.h",
   "#define TURBO_FC_UPDATE_CODES 52", "#define TURBO_FC_UPDATE_CODES 51"),
  # the moving key shift of the cache update
  ("cache update: moving shift of the vector's index l instead of its cache row offset + l", "quant", TQ,
   "      turbo_wave_phases(freqs, P, uint(p.offset + l), c, sn);",
   "      turbo_wave_phases(freqs, P, uint(l), c, sn);"),
  ("cache update: frequencies and waves per batch entry when the batch shares them (wave_b ignored)", "quant", TQ,
   "      const int64_t wh = int64_t(p.wave_b) * b * p.H + h;", "      const int64_t wh = b * p.H + h;"),
  ("cache update: moving shift skipped without a constant shift", "quant", TQ,
   "  if (turbo_update_shift || turbo_update_waves) {", "  if (turbo_update_shift) {"),
  ("cache update: moving shift added instead of subtracted", "quant", TQ,
   "        m = turbo_wave_sum<D>(waves, P, c, sn, i, m);",
   "        m = 2.0f * m - turbo_wave_sum<D>(waves, P, c, sn, i, m);"),
  ("cache update: TURBO_FC_UPDATE_WAVES with the index of TURBO_FC_KVDQ_WAVES", "bindings", K + "turbo_bindings.h",
   "#define TURBO_FC_UPDATE_WAVES 56", "#define TURBO_FC_UPDATE_WAVES 55"),
  # ---- cache dequantize (turbo_dequantize_kv)
  ("moving shift (turbo_wave_sum, cache dequantize and update): sin term read from the cos row", "quant", TQ,
   "    m = m + sn[j] * waves[(P + j) * D + i];", "    m = m + sn[j] * waves[j * D + i];"),
  ("cache dequantize: constant shift not added", "quant", TQ,
   "      y[i] = y[i] + shift[i];", "      y[i] = y[i];"),
  ("cache dequantize: first row not written", "quant", TQ,
   "      for (int i = 0; i < D; i++) {\n        out[i] = first[i];\n      }\n      return;", "      return;"),
  ("cache dequantize: code row = output row (first row not skipped)", "quant", TQ,
   "  const int64_t l = r - F;", "  const int64_t l = r;"),
  ("cache dequantize: moving shift at the output row instead of the code row", "quant", TQ,
   "    turbo_wave_phases(freqs, P, uint(l), c, sn);", "    turbo_wave_phases(freqs, P, uint(r), c, sn);"),
  ("cache dequantize: packed strides ignored (contiguous (B, H, L, W) assumed)", "quant", TQ,
   "  packed += b * p.packed_strides[0] + h * p.packed_strides[1] +\n      l * p.packed_strides[2];",
   "  packed += (bh * p.L + l) * TurboLayout<BITS, D>::words;"),
  ("cache dequantize: scales read with the packed strides", "quant", TQ,
   "          [b * p.scales_strides[0] + h * p.scales_strides[1] +\n           l * p.scales_strides[2]]);",
   "          [b * p.packed_strides[0] + h * p.packed_strides[1] +\n           l * p.packed_strides[2]]);"),
  ("cache dequantize: one row past the output written (v > nrows)", "quant", TQ,
   "  if (v >= p.nrows) {", "  if (v > p.nrows) {"),
  ("cache dequantize: rounded to T before the shifts are added (two roundings)", "quant", TQ,
   "  thread float y[D];\n  turbo_decode<D, BITS>(packed, s, y);\n",
   "  thread float y[D];\n  turbo_decode<D, BITS>(packed, s, y);\n  for (int i = 0; i < D; i++) {\n    y[i] = static_cast<float>(static_cast<T>(y[i]));\n  }\n"),
  ("cache dequantize: first argument gated by turbo_kvdq_shift (wrong function constant)", "bindings", TQ,
   "[[buffer(TURBO_KVDQ_BUF_FIRST), function_constant(turbo_kvdq_first)]]",
   "[[buffer(TURBO_KVDQ_BUF_FIRST), function_constant(turbo_kvdq_shift)]]"),
  ("cache dequantize: moving shift under turbo_kvdq_shift (freqs / waves read when not bound)", "bindings", TQ,
   "  if (turbo_kvdq_waves) {\n    const int P = p.waves;", "  if (turbo_kvdq_shift) {\n    const int P = p.waves;"),
  ("cache dequantize: TURBO_FC_KVDQ_WAVES with the index of TURBO_FC_KVDQ_SHIFT", "bindings", K + "turbo_bindings.h",
   "#define TURBO_FC_KVDQ_WAVES 55", "#define TURBO_FC_KVDQ_WAVES 54"),
  ("missing cache dequantize instantiations (float16)", "bindings", TQM,
   "  instantiate_turbo_dequantize_kv(mode, bits, float16_t, float16, d)     \\\n", ""),
  ("moving shift angle: integer turns not reduced modulo 2^24 before the float conversion", "quant", TC,
   "  int turns = int((freq * i) << 8) >> 8;", "  int turns = int(freq * i);"),
]

def sh(cmd, env=None, timeout=900):
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)

def run_one(n, m):
    name, kind, rel, old, new = m[:5]
    asan = len(m) > 5 and m[5]
    orig = open(os.path.join(ROOT, rel)).read()
    text = orig.replace(old, new, 1)
    if text == orig:
        return False, f"[STALE ] {name}: pattern not found\n"
    tree = os.path.join(BUILD, f"mut{n}_tree")
    pp = os.path.join(BUILD, f"mut{n}_pp")
    shutil.rmtree(tree, ignore_errors=True)
    os.makedirs(os.path.join(tree, "mlx/backend/metal"), exist_ok=True)
    shutil.copytree(os.path.join(ROOT, K), os.path.join(tree, K))
    open(os.path.join(tree, rel), "w").write(text)
    shutil.rmtree(pp, ignore_errors=True)
    res = []
    if kind == "clcpp":
        cpp = sh([os.path.join(HERE, "check_kernels.sh"), tree, pp])
        r = sh([os.path.join(HERE, "check_kernels.sh"), "--clcpp", tree, pp + "_cl"])
        shutil.rmtree(pp + "_cl", ignore_errors=True)
        lines = [l for l in (r.stdout + r.stderr).splitlines() if "error:" in l]
        res.append(("c++", cpp.returncode != 0, []))
        res.append(("clcpp", r.returncode != 0, lines[:1]))
    elif kind in ("compile", "bindings", "lint"):
        if kind == "lint":
            r = sh(["python3", os.path.join(HERE, "lint_kernels.py"), os.path.join(tree, K)])
        elif kind == "compile":
            r = sh([os.path.join(HERE, "check_kernels.sh"), tree, pp])
        else:
            subprocess.run(["python3", os.path.join(HERE, "tools/msl_prepass.py"), tree, pp], capture_output=True)
            bdir = os.path.join(BUILD, f"mut{n}_b"); os.makedirs(bdir, exist_ok=True)
            r = sh(["python3", os.path.join(HERE, "check_bindings.py"), tree, pp, ROOT, bdir])
        lines = [l for l in (r.stdout + r.stderr).splitlines() if "error:" in l or "FAIL" in l]
        res.append(("check", r.returncode != 0, lines[:1]))
    else:
        test = "turbo_attn_exec" if kind == "attn" else "turbo_quant_exec"
        for san in (["", "asan"] if asan else [""]):
            out = os.path.join(BUILD, f"mut{n}_bin" + ("_asan" if san else ""))
            shutil.rmtree(out, ignore_errors=True)
            env = dict(os.environ, SAN=san, EXTRA_FLAGS="-DTURBO_EXEC_SMALL", OPT="-O0")
            b = sh([os.path.join(HERE, "build_exec.sh"), test, tree, out], env=env)
            if b.returncode:
                res.append((san or "plain", True, ["build failed: " + (b.stderr.strip().splitlines() or [''])[-1][:150]]))
                continue
            exe = os.path.join(out, test + ("_asan" if san else ""))
            try:
                # ASan runs look for memory errors: one schedule is enough
                r = sh([exe] + (["fwd"] if san else []), env=dict(os.environ, TURBO_EXEC_FAILFAST="1"), timeout=600)
                o = r.stdout + r.stderr
                lines = [l for l in o.splitlines() if l.startswith(("FAIL", "mshim", "     ^")) or "AddressSanitizer" in l]
                res.append((san or "plain", r.returncode != 0, lines[:1]))
            except subprocess.TimeoutExpired:
                res.append((san or "plain", True, ["timeout (hang)"]))
            shutil.rmtree(out, ignore_errors=True)
    shutil.rmtree(tree, ignore_errors=True)
    shutil.rmtree(pp, ignore_errors=True)
    # caught when any run (plain or ASan) fails: out-of-bounds accesses may
    # only be visible to ASan
    caught = any(c for _, c, _ in res)
    detail = "  ".join(f"{w}:{'caught' if c else 'MISSED'}" for w, c, _ in res)
    txt = f"[{'CAUGHT' if caught else 'MISSED'}] ({kind}) {name}   {detail}\n"
    for _, _, ls in res:
        for l in ls:
            txt += "          " + l.replace(pp + "_cl/", "").replace(pp + "/", "")[:200] + "\n"
    return caught, txt

from concurrent.futures import ThreadPoolExecutor
sel = [m for m in MUT if not ONLY or any(o in m[0] or o == m[1] for o in ONLY)]
missed = 0
t0 = time.time()
with ThreadPoolExecutor(max_workers=int(os.environ.get("JOBS", "2"))) as ex:
    for caught, txt in ex.map(lambda a: run_one(*a), enumerate(sel)):
        missed += not caught
        print(txt, end="")
        sys.stdout.flush()
print(f"planted bugs: {missed} missed, {int(time.time() - t0)} s")
sys.exit(1 if missed else 0)
