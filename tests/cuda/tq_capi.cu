// C entry points of the standalone harness (called from Python via ctypes).
#include <cuda_runtime.h>
#include <cmath>
#include "mlx/backend/cuda/device/turboquant.cuh"

using namespace mlx::core::cu::turbo;

#define DECL(D)                                                      \
  extern "C" int tq_encode_d##D(                                     \
      const void*, void*, void*, long long, int, int, cudaStream_t); \
  extern "C" int tq_decode_d##D(                                     \
      const void*,                                                   \
      const void*,                                                   \
      void*,                                                         \
      long long,                                                     \
      int,                                                           \
      int,                                                           \
      int,                                                           \
      cudaStream_t);                                                 \
  extern "C" int tq_attn_d##D(                                       \
      const float*,                                                  \
      const uint32_t*,                                               \
      const void*,                                                   \
      const uint32_t*,                                               \
      const void*,                                                   \
      const void*,                                                   \
      const float*,                                                  \
      float*,                                                        \
      float*,                                                        \
      float*,                                                        \
      const AttnParams*,                                             \
      int,                                                           \
      int,                                                           \
      int,                                                           \
      int,                                                           \
      int,                                                           \
      int,                                                           \
      cudaStream_t);                                                 \
  extern "C" int tq_attn_tc_d##D(                                    \
      const float*,                                                  \
      const uint32_t*,                                               \
      const void*,                                                   \
      const uint32_t*,                                               \
      const void*,                                                   \
      const void*,                                                   \
      const float*,                                                  \
      float*,                                                        \
      float*,                                                        \
      float*,                                                        \
      const AttnParams*,                                             \
      int,                                                           \
      int,                                                           \
      int,                                                           \
      cudaStream_t);                                                 \
  extern "C" int tq_attn_mma_d##D(                                   \
      const float*,                                                  \
      const uint32_t*,                                               \
      const void*,                                                   \
      const uint32_t*,                                               \
      const void*,                                                   \
      const void*,                                                   \
      const float*,                                                  \
      float*,                                                        \
      const AttnParams*,                                             \
      int,                                                           \
      int,                                                           \
      int,                                                           \
      cudaStream_t);
DECL(64)
DECL(80) DECL(96) DECL(128) DECL(192) DECL(256)
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
#define C(d) tq_encode_d##d(x, packed, scales, n, bits, dtype, (cudaStream_t)st)
  SWITCH_D(D, C)
#undef C
}

extern "C" int tq_decode(
    const void* packed,
    const void* scales,
    void* out,
    long long n,
    int D,
    int bits,
    int sdtype,
    int odtype,
    void* st) {
#define C(d) \
  tq_decode_d##d(packed, scales, out, n, bits, sdtype, odtype, (cudaStream_t)st)
  SWITCH_D(D, C)
#undef C
}

static int g_num_sms = 0;

// Plans the launch; returns the path (0 vector, 1 full) and fills params.
// force_path: -1 auto, 0 vector, 1 full. force_splits: 0 auto.
static int plan(
    AttnParams& p,
    int& nq,
    int B,
    int Hq,
    int Hkv,
    int qL,
    int kL,
    int D,
    float scale,
    int causal,
    int mask_kind,
    const long long* mstr,
    int has_sinks,
    int force_path,
    int force_splits) {
  if (g_num_sms == 0) {
    int dev;
    cudaGetDevice(&dev);
    cudaDeviceGetAttribute(&g_num_sms, cudaDevAttrMultiProcessorCount, dev);
  }
  p = AttnParams{};
  p.B = B;
  p.Hq = Hq;
  p.Hkv = Hkv;
  p.qL = qL;
  p.kL = kL;
  p.gqa = Hq / Hkv;
  p.scale_log2 = scale * kLog2e;
  p.causal = causal;
  p.causal_offset = kL - qL;
  p.mask_kind = mask_kind;
  p.has_sinks = has_sinks;
  // Sink logits per head (MLX also passes per-row logits, (B, Hq, qL)).
  p.sk_str[0] = 0;
  p.sk_str[1] = 1;
  p.sk_str[2] = 0;
  for (int i = 0; i < 4; i++)
    p.m_str[i] = mstr ? mstr[i] : 0;
  int path = force_path >= 0
      ? force_path
      : (qL <= kVectorMaxQL ? 0 : ((kUseTcPrefill && D <= kTcMaxDim) ? 2 : 1));
  if (path == 2 && D > kTcMaxDim)
    path = 1;
  if (path == 0) {
    int rows = p.gqa * qL;
    nq = vector_rows_per_block(rows);
    p.row_groups = (rows + nq - 1) / nq;
    int splits = force_splits > 0
        ? force_splits
        : vector_num_splits(B * Hkv * p.row_groups, kL, g_num_sms);
    int per = (kL + splits - 1) / splits;
    p.num_splits = (kL + per - 1) / per;
    p.keys_per_split = per;
  } else {
    nq = 0;
    p.num_splits = 1;
    p.keys_per_split = kL;
    p.row_groups = 1;
  }
  return path;
}

// Workspace floats needed (part_o + part_ml) for the planned launch.
extern "C" long long tq_workspace_floats(
    int B,
    int Hq,
    int Hkv,
    int qL,
    int kL,
    int D,
    int force_path,
    int force_splits) {
  AttnParams p;
  int nq;
  int path = plan(
      p,
      nq,
      B,
      Hq,
      Hkv,
      qL,
      kL,
      D,
      1.0f,
      0,
      0,
      nullptr,
      0,
      force_path,
      force_splits);
  if (path != 0 || p.num_splits == 1)
    return 0;
  long long rows = (long long)p.num_splits * B * Hq * qL;
  return rows * D + rows * 2;
}

extern "C" int tq_num_splits(
    int B,
    int Hq,
    int Hkv,
    int qL,
    int kL,
    int D,
    int force_path,
    int force_splits) {
  AttnParams p;
  int nq;
  int path = plan(
      p,
      nq,
      B,
      Hq,
      Hkv,
      qL,
      kL,
      D,
      1.0f,
      0,
      0,
      nullptr,
      0,
      force_path,
      force_splits);
  return path == 0 ? p.num_splits : -1;
}

// All arrays contiguous: q (B,Hq,qL,D) f32, codes (B,Hkv,kL,W), scales
// (B,Hkv,kL), out (B,Hq,qL,D). mstr: mask strides (B,Hq,qL,kL) in elements.
// Strides (in elements) of dense (B, H, L, ...) q / out, packed K / V and
// their scales, as the harness allocates them.
static void dense_strides(
    AttnParams& p,
    int Hq,
    int Hkv,
    int qL,
    int kL,
    int D,
    int kbits,
    int vbits) {
  long long Wk = packed_words(kbits, D), Wv = packed_words(vbits, D);
  p.q_str[0] = (long long)Hq * qL * D;
  p.q_str[1] = (long long)qL * D;
  p.q_str[2] = D;
  p.o_str[0] = p.q_str[0];
  p.o_str[1] = p.q_str[1];
  p.o_str[2] = p.q_str[2];
  p.k_str[0] = Hkv * kL * Wk;
  p.k_str[1] = kL * Wk;
  p.k_str[2] = Wk;
  p.v_str[0] = Hkv * kL * Wv;
  p.v_str[1] = kL * Wv;
  p.v_str[2] = Wv;
  p.ks_str[0] = (long long)Hkv * kL;
  p.ks_str[1] = kL;
  p.ks_str[2] = 1;
  p.vs_str[0] = p.ks_str[0];
  p.vs_str[1] = kL;
  p.vs_str[2] = 1;
}

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
    int force_path,
    int force_splits,
    int cpt,
    void* st) {
  AttnParams p;
  int nq;
  int path = plan(
      p,
      nq,
      B,
      Hq,
      Hkv,
      qL,
      kL,
      D,
      scale,
      causal,
      mask_kind,
      mstr,
      sinks != nullptr,
      force_path,
      force_splits);
  dense_strides(p, Hq, Hkv, qL, kL, D, kbits, vbits);
  float* part_o = work;
  float* part_ml = nullptr;
  if (path == 0 && p.num_splits > 1) {
    part_ml = work + (long long)p.num_splits * B * Hq * qL * D;
  }
#define C(d)    \
  tq_attn_d##d( \
      q,        \
      kc,       \
      ks,       \
      vc,       \
      vs,       \
      mask,     \
      sinks,    \
      out,      \
      part_o,   \
      part_ml,  \
      &p,       \
      kbits,    \
      vbits,    \
      sdtype,   \
      path,     \
      nq,       \
      cpt,      \
      (cudaStream_t)st)
  SWITCH_D(D, C)
#undef C
}

// Decode attention on tensor cores (turbo_sdpa_vector_tc): the vector path's
// plan (splits, row groups, partials in work), fp16/bf16 scales, D = 64, 128,
// 256. Same arguments as tq_attention without force_path and cpt. Returns -3
// where the kernel does not apply.
extern "C" int tq_attention_tc(
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
    int force_splits,
    void* st) {
  AttnParams p;
  int nq;
  plan(
      p,
      nq,
      B,
      Hq,
      Hkv,
      qL,
      kL,
      D,
      scale,
      causal,
      mask_kind,
      mstr,
      sinks != nullptr,
      0,
      force_splits);
  dense_strides(p, Hq, Hkv, qL, kL, D, kbits, vbits);
  float* part_o = work;
  float* part_ml = nullptr;
  if (p.num_splits > 1) {
    part_ml = work + (long long)p.num_splits * B * Hq * qL * D;
  }
#define C(d)       \
  tq_attn_tc_d##d( \
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
      &p,          \
      kbits,       \
      vbits,       \
      sdtype,      \
      (cudaStream_t)st)
  SWITCH_D(D, C)
#undef C
}

// Prefill on tensor cores (turbo_sdpa_full_mma): the full path's plan,
// fp16/bf16 scales, D = 64, 128, 256, any qL. Same arguments as
// tq_attention without work, force_path, force_splits and cpt. Returns -3
// where the kernel does not apply.
extern "C" int tq_attention_prefill_mma(
    const float* q,
    const uint32_t* kc,
    const void* ks,
    const uint32_t* vc,
    const void* vs,
    const void* mask,
    const long long* mstr,
    const float* sinks,
    float* out,
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
    void* st) {
  AttnParams p;
  int nq;
  plan(
      p,
      nq,
      B,
      Hq,
      Hkv,
      qL,
      kL,
      D,
      scale,
      causal,
      mask_kind,
      mstr,
      sinks != nullptr,
      1,
      0);
  dense_strides(p, Hq, Hkv, qL, kL, D, kbits, vbits);
#define C(d)        \
  tq_attn_mma_d##d( \
      q,            \
      kc,           \
      ks,           \
      vc,           \
      vs,           \
      mask,         \
      sinks,        \
      out,          \
      &p,           \
      kbits,        \
      vbits,        \
      sdtype,       \
      (cudaStream_t)st)
  SWITCH_D(D, C)
#undef C
}
