// C entry points of the standalone harness (called from Python via ctypes).
#include <cuda_runtime.h>
#include <cmath>
#include "mlx/backend/cuda/device/turboquant.cuh"

using namespace mlx::core::cu::turbo;

#define DECL(D)                                                              \
  extern "C" int tq_encode_d##D(                                             \
      const void*, void*, void*, const EncodeRows*, int, int, cudaStream_t); \
  extern "C" int tq_decode_d##D(                                             \
      const void*,                                                           \
      const void*,                                                           \
      const void*,                                                           \
      void*,                                                                 \
      const DecodeRows*,                                                     \
      int,                                                                   \
      int,                                                                   \
      cudaStream_t);                                                         \
  extern "C" int tq_attn_d##D(                                               \
      const float*,                                                          \
      const uint32_t*,                                                       \
      const void*,                                                           \
      const uint32_t*,                                                       \
      const void*,                                                           \
      const void*,                                                           \
      const float*,                                                          \
      float*,                                                                \
      float*,                                                                \
      float*,                                                                \
      const AttnParams*,                                                     \
      const DecodePlan*,                                                     \
      int,                                                                   \
      int,                                                                   \
      int,                                                                   \
      void*,                                                                 \
      int,                                                                   \
      cudaStream_t)
#define DECL_PREP(D)           \
  extern "C" int tq_prep_d##D( \
      const void*,             \
      float*,                  \
      const void*,             \
      float*,                  \
      long long,               \
      long long,               \
      int,                     \
      int,                     \
      int,                     \
      float,                   \
      const float*,            \
      const void*,             \
      const void*,             \
      long long,               \
      float*,                  \
      const float*,            \
      long long,               \
      int,                     \
      float*,                  \
      int,                     \
      cudaStream_t)
DECL_PREP(64);
DECL_PREP(80);
DECL_PREP(96);
DECL_PREP(128);
DECL_PREP(192);
DECL_PREP(256);
DECL(64);
DECL(80);
DECL(96);
DECL(128);
DECL(192);
DECL(256);

#define SWITCH_D(D, CALL) \
  switch (D) {            \
    case 64:              \
      return CALL(64);    \
    case 80:              \
      return CALL(80);    \
    case 96:              \
      return CALL(96);    \
    case 128:             \
      return CALL(128);   \
    case 192:             \
      return CALL(192);   \
    case 256:             \
      return CALL(256);   \
    default:              \
      return -1;          \
  }

extern "C" int tq_encode(
    const void* x,
    void* packed,
    void* scales,
    long long n,
    int D,
    int bits,
    int dtype,
    void* st) {
  const EncodeRows r = EncodeRows::contiguous(n, D);
#define C(d) \
  tq_encode_d##d(x, packed, scales, &r, bits, dtype, (cudaStream_t)st)
  SWITCH_D(D, C)
#undef C
}

// Dequantize (B, H, L) code rows with strides (words / elements) into out
// (B, H, F + L, D); first (B * H, D), shift (B * H, D) float32, freqs
// (B * H, P) and waves (B * H, 2P, D) float32 may be null.
extern "C" int tq_decode(
    const void* packed,
    const void* scales,
    const void* first,
    const float* shift,
    const uint32_t* freqs,
    const float* waves,
    int P,
    void* out,
    long long B,
    long long H,
    long long L,
    const long long* w_str,
    const long long* s_str,
    int D,
    int bits,
    int dtype,
    void* st) {
  DecodeRows r{
      L,
      B * H,
      H,
      {w_str[0], w_str[1], w_str[2]},
      {s_str[0], s_str[1], s_str[2]},
      shift,
      freqs,
      waves,
      P};
#define C(d) \
  tq_decode_d##d(packed, scales, first, out, &r, bits, dtype, (cudaStream_t)st)
  SWITCH_D(D, C)
#undef C
}

// Cache update (turbo_quantize_update_gpu): x (B, H, L, D) with strides
// x_str (elements, last axis contiguous) into rows offset .. offset + L - 1
// of packed (B, H, rows, W) and scales (B, H, rows) (either may be null: not
// written), minus shift (s_str strides, 0 for broadcast axes; may be null)
// and the moving shift of the row from freqs (B or 1, H, P) / waves (B or 1,
// H, 2P, D) float32 (wave_b: per batch entry; freqs may be null).
extern "C" int tq_encode_rows(
    const void* x,
    void* packed,
    void* scales,
    const float* shift,
    const long long* s_str,
    const uint32_t* freqs,
    const float* waves,
    int P,
    int wave_b,
    long long B,
    long long H,
    long long L,
    const long long* x_str,
    long long rows,
    long long offset,
    int D,
    int bits,
    int dtype,
    void* st) {
  EncodeRows r{
      B * H * L,
      L > 0 ? L : 1,
      H,
      {x_str[0], x_str[1], x_str[2]},
      shift,
      {0, 0, 0},
      rows,
      offset,
      freqs,
      waves,
      P,
      wave_b};
  if (shift) {
    for (int i = 0; i < 3; i++) {
      r.s_str[i] = s_str[i];
    }
  }
  if (r.n_vec == 0) {
    return 0;
  }
#define C(d) \
  tq_encode_d##d(x, packed, scales, &r, bits, dtype, (cudaStream_t)st)
  SWITCH_D(D, C)
#undef C
}

// turbo_attention_prep (tq_prep_d<D>): see tq_inst.cu.
extern "C" int tq_prep(
    const void* q,
    float* q_rot,
    const void* sv,
    float* sv_rot,
    long long n_q,
    long long n_sv,
    int Hq,
    int Hkv,
    int qL,
    float scale,
    const float* sinks,
    const void* key_shift,
    const void* first_key,
    long long kb_str,
    float* row_sinks,
    const float* waves,
    long long wv_b_str,
    int P,
    float* wave_coef,
    int D,
    int dtype,
    void* st) {
#define C(d)     \
  tq_prep_d##d(  \
      q,         \
      q_rot,     \
      sv,        \
      sv_rot,    \
      n_q,       \
      n_sv,      \
      Hq,        \
      Hkv,       \
      qL,        \
      scale,     \
      sinks,     \
      key_shift, \
      first_key, \
      kb_str,    \
      row_sinks, \
      waves,     \
      wv_b_str,  \
      P,         \
      wave_coef, \
      dtype,     \
      (cudaStream_t)st)
  SWITCH_D(D, C)
#undef C
}

static int num_sms() {
  static int n = 0;
  if (n == 0) {
    int dev;
    cudaGetDevice(&dev);
    cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev);
  }
  return n;
}

// The shape of a call and the strides of the harness's dense tensors:
// (B, H, L, ...) q / out, packed K / V and their scales.
static AttnParams dense_params(
    int B,
    int Hq,
    int Hkv,
    int qL,
    int kL,
    int D,
    int kbits,
    int vbits) {
  AttnParams p{};
  p.B = B;
  p.Hq = Hq;
  p.Hkv = Hkv;
  p.qL = qL;
  p.kL = kL;
  p.gqa = Hq / Hkv;
  p.causal_offset = kL - qL;
  long long Wk = packed_words(kbits, D), Wv = packed_words(vbits, D);
  p.q_str[0] = (long long)Hq * qL * D;
  p.q_str[1] = (long long)qL * D;
  p.q_str[2] = D;
  p.k_str[0] = Hkv * kL * Wk;
  p.k_str[1] = kL * Wk;
  p.k_str[2] = Wk;
  p.v_str[0] = Hkv * kL * Wv;
  p.v_str[1] = kL * Wv;
  p.v_str[2] = Wv;
  p.ks_str[0] = (long long)Hkv * kL;
  p.ks_str[1] = kL;
  p.ks_str[2] = 1;
  for (int i = 0; i < 3; i++) {
    p.o_str[i] = p.q_str[i];
    p.vs_str[i] = p.ks_str[i];
  }
  return p;
}

// dense_params with a call's scale, causality and mask (strides (B, Hq,
// qL, kL) in elements, or null).
static AttnParams call_params(
    int B,
    int Hq,
    int Hkv,
    int qL,
    int kL,
    int D,
    int kbits,
    int vbits,
    float scale,
    int causal,
    int mask_kind,
    const long long* mstr) {
  AttnParams p = dense_params(B, Hq, Hkv, qL, kL, D, kbits, vbits);
  p.scale_log2 = scale * kLog2e;
  p.causal = causal;
  p.mask_kind = mask_kind;
  for (int i = 0; i < 4; i++) {
    p.m_str[i] = mstr ? mstr[i] : 0;
  }
  return p;
}

// tq_attn_d<D> (tq_inst.cu) for the head dim D.
static int attn_launch(
    int D,
    const float* q,
    const uint32_t* kc,
    const void* ks,
    const uint32_t* vc,
    const void* vs,
    const void* mask,
    const float* sinks,
    float* out,
    float* part_o,
    float* part_ml,
    const AttnParams* p,
    const DecodePlan* plan,
    int kbits,
    int vbits,
    int sdtype,
    void* final_out,
    int final_dtype,
    void* st) {
#define C(d)       \
  tq_attn_d##d(    \
      q,           \
      kc,          \
      ks,          \
      vc,          \
      vs,          \
      mask,        \
      sinks,       \
      out,         \
      part_o,      \
      part_ml,     \
      p,           \
      plan,        \
      kbits,       \
      vbits,       \
      sdtype,      \
      final_out,   \
      final_dtype, \
      (cudaStream_t)st)
  SWITCH_D(D, C)
#undef C
}

// The plan of a call as MLX makes it (plan_decode, as turbo_sdpa_gpu):
// sdtype: scale dtype (0 fp16, 1 bf16, 2 fp32); low_precision: the queries
// were fp16/bf16 (the primitive's flag); force_splits: 0 plans the split
// count. Fills out[0] splits, out[1] 1 for the tensor-core kernel, out[2]
// rows per block; returns the workspace floats tq_attention needs (split-K
// partials), -2 if qL is beyond the decode kernels.
extern "C" long long tq_plan(
    int B,
    int Hq,
    int Hkv,
    int qL,
    int kL,
    int D,
    int sdtype,
    int low_precision,
    int force_splits,
    int* out) {
  if (qL > kVectorMaxQL) {
    return -2;
  }
  AttnParams p = dense_params(B, Hq, Hkv, qL, kL, D, 4, 4);
  DecodePlan plan = plan_decode(
      p, D, 4, 4, low_precision, sdtype != 2, num_sms(), force_splits);
  out[0] = p.num_splits;
  out[1] = plan.tc;
  out[2] = plan.nq;
  return p.num_splits > 1 ? (long long)p.num_splits * B * Hq * qL * (D + 2) : 0;
}

// tq_attention with the inputs of the fused call (what
// turbo_attention_prep makes, AttnParams): row_sinks: sinks are per query
// row (B, Hq, qL) instead of per head; sink_values (B or 1, Hkv, D) float32
// (sv_shared: 1) or null; the moving key shift's wave_coef (B, Hq, qL, 2P)
// and wave_freqs (B or 1, Hkv, P) (wf_shared: 1), P = 0 without;
// final_out (B, Hq, qL, D) in final_dtype (0 fp16, 1 bf16, 2 fp32), or
// null: the output rotated back as the fused call does (tq_attn_d<D>).
extern "C" int tq_attention_ex(
    const float* q,
    const uint32_t* kc,
    const void* ks,
    const uint32_t* vc,
    const void* vs,
    const void* mask,
    const long long* mstr,
    const float* sinks,
    int row_sinks,
    const float* sink_values,
    int sv_shared,
    const float* wave_coef,
    const uint32_t* wave_freqs,
    int P,
    int wf_shared,
    float* out,
    float* work,
    int B,
    int Hq,
    int Hkv,
    int qL,
    int kL,
    int D,
    int kbits,
    int vbits,
    int sdtype,
    float scale,
    int causal,
    int mask_kind,
    int low_precision,
    int force_splits,
    void* final_out,
    int final_dtype,
    void* st) {
  if (qL > kVectorMaxQL) {
    return -2;
  }
  AttnParams p = call_params(
      B, Hq, Hkv, qL, kL, D, kbits, vbits, scale, causal, mask_kind, mstr);
  p.has_sinks = sinks != nullptr;
  p.sk_str[0] = row_sinks ? (long long)Hq * qL : 0;
  p.sk_str[1] = row_sinks ? qL : 1;
  p.sk_str[2] = row_sinks ? 1 : 0;
  p.sink_values = sink_values;
  p.sv_b_str = sv_shared ? 0 : (long long)Hkv * D;
  p.waves = P;
  p.wave_coef = P > 0 ? wave_coef : nullptr;
  p.wave_freqs = P > 0 ? wave_freqs : nullptr;
  p.wf_b_str = wf_shared ? 0 : (long long)Hkv * P;
  DecodePlan plan = plan_decode(
      p, D, kbits, vbits, low_precision, sdtype != 2, num_sms(), force_splits);
  float* part_o = work;
  float* part_ml = work + (long long)p.num_splits * B * Hq * qL * D;
  return attn_launch(
      D,
      q,
      kc,
      ks,
      vc,
      vs,
      mask,
      sinks,
      out,
      part_o,
      part_ml,
      &p,
      &plan,
      kbits,
      vbits,
      sdtype,
      final_out,
      final_dtype,
      st);
}

// Decode attention as MLX launches it, on dense tensors: q (B, Hq, qL, D)
// f32, codes (B, Hkv, kL, W), scales (B, Hkv, kL), out (B, Hq, qL, D) f32;
// mstr: mask strides (B, Hq, qL, kL) in elements; sinks: per head; work:
// tq_plan's workspace. Returns -2 if qL is beyond the decode kernels.
extern "C" int tq_attention(
    const float* q,
    const uint32_t* kc,
    const void* ks,
    const uint32_t* vc,
    const void* vs,
    const void* mask,
    const long long* mstr,
    const float* sinks,
    float* out,
    float* work,
    int B,
    int Hq,
    int Hkv,
    int qL,
    int kL,
    int D,
    int kbits,
    int vbits,
    int sdtype,
    float scale,
    int causal,
    int mask_kind,
    int low_precision,
    int force_splits,
    void* st) {
  return tq_attention_ex(
      q,
      kc,
      ks,
      vc,
      vs,
      mask,
      mstr,
      sinks,
      0,
      nullptr,
      1,
      nullptr,
      nullptr,
      0,
      1,
      out,
      work,
      B,
      Hq,
      Hkv,
      qL,
      kL,
      D,
      kbits,
      vbits,
      sdtype,
      scale,
      causal,
      mask_kind,
      low_precision,
      force_splits,
      nullptr,
      0,
      st);
}

// The fused call as MLX's QuantizedScaledDotProductAttention::eval_gpu makes
// it with fused_rotation: q (B, Hq, qL, D) as given in qdtype (0 fp16, 1
// bf16, 2 fp32); sinks per head (float32) or null; the sink values sv (B or
// 1, Hkv, D), key_shift / first_key (the same) in qdtype, waves (B or 1, Hkv,
// 2P, D) float32 and wave_freqs (B or 1, Hkv, P), each null or shared by the
// batch as its flag says; the output rotated back into final_out (B, Hq, qL,
// D) in qdtype. Where the plan allows (decode_preps_in_kernel) the
// tensor-core kernel prepares the queries itself, else turbo_attention_prep
// runs first (*in_kernel says which); no_kernel_prep: always the latter (the
// harness's A-B timing). work: tq_plan's floats plus
// B Hq qL (2 D + 1 + 2 P) + Hkv D (B or 1 for sv).
extern "C" int tq_attention_fused(
    const void* q,
    const uint32_t* kc,
    const void* ks,
    const uint32_t* vc,
    const void* vs,
    const void* mask,
    const long long* mstr,
    const float* sinks,
    const void* sv,
    int sv_shared,
    const void* key_shift,
    const void* first_key,
    int kb_shared,
    const float* waves,
    const uint32_t* wave_freqs,
    int P,
    int w_shared,
    void* final_out,
    float* work,
    int B,
    int Hq,
    int Hkv,
    int qL,
    int kL,
    int D,
    int kbits,
    int vbits,
    int qdtype,
    int sdtype,
    float scale,
    int causal,
    int mask_kind,
    int force_splits,
    int no_kernel_prep,
    int* in_kernel,
    void* st) {
  if (qL > kVectorMaxQL) {
    return -2;
  }
  AttnParams p = call_params(
      B, Hq, Hkv, qL, kL, D, kbits, vbits, scale, causal, mask_kind, mstr);
  p.waves = P;
  p.wave_freqs = P > 0 ? wave_freqs : nullptr;
  p.wf_b_str = w_shared ? 0 : (long long)Hkv * P;
  const bool low_precision = qdtype != 2;
  DecodePlan plan = plan_decode(
      p, D, kbits, vbits, low_precision, sdtype != 2, num_sms(), force_splits);
  const long long rows = (long long)B * Hq * qL;
  const long long parts = p.num_splits > 1 ? p.num_splits * rows : 0;
  float* part_o = work;
  float* part_ml = part_o + parts * D;
  float* out_rot = part_ml + parts * 2;
  float* q_rot = out_rot + rows * D;
  float* row_sinks = q_rot + rows * D;
  float* coef = row_sinks + rows;
  float* sv_rot = coef + rows * 2 * P;
  const bool bias = key_shift || first_key;
  const long long kb_str = kb_shared ? 0 : (long long)Hkv * D;
  *in_kernel =
      !no_kernel_prep && decode_preps_in_kernel(plan, qdtype == sdtype);
  if (*in_kernel) {
    p.q_in = q;
    p.scale = scale;
    p.row_bias = bias;
    p.key_shift = key_shift;
    p.first_key = first_key;
    p.ksh_b_str = kb_str;
    p.fk_b_str = kb_str;
    p.wave_rows = P > 0 ? waves : nullptr;
    p.wr_b_str = w_shared ? 0 : (long long)Hkv * 2 * P * D;
    p.has_sinks = sinks != nullptr || bias;
    p.sk_str[1] = 1; // per head
    p.sv_in = sv;
    p.sv_b_str = sv_shared ? 0 : (long long)Hkv * D;
  } else {
    int rc = tq_prep(
        q,
        q_rot,
        sv,
        sv_rot,
        rows,
        sv ? (sv_shared ? 1 : B) * (long long)Hkv : 0,
        Hq,
        Hkv,
        qL,
        scale,
        sinks,
        key_shift,
        first_key,
        kb_str,
        bias ? row_sinks : nullptr,
        P > 0 ? waves : nullptr,
        w_shared ? 0 : (long long)Hkv * 2 * P * D,
        P,
        P > 0 ? coef : nullptr,
        D,
        qdtype,
        st);
    if (rc != 0) {
      return rc;
    }
    p.has_sinks = sinks != nullptr || bias;
    p.sk_str[0] = bias ? (long long)Hq * qL : 0;
    p.sk_str[1] = bias ? qL : 1;
    p.sk_str[2] = bias ? 1 : 0;
    p.sink_values = sv ? sv_rot : nullptr;
    p.sv_b_str = sv_shared ? 0 : (long long)Hkv * D;
    p.wave_coef = P > 0 ? coef : nullptr;
    if (bias) {
      sinks = row_sinks;
    }
  }
  const float* qk = *in_kernel ? nullptr : q_rot;
  return attn_launch(
      D,
      qk,
      kc,
      ks,
      vc,
      vs,
      mask,
      sinks,
      out_rot,
      part_o,
      part_ml,
      &p,
      &plan,
      kbits,
      vbits,
      sdtype,
      final_out,
      qdtype,
      st);
}
