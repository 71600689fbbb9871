// Standalone instantiation of the TurboQuant CUDA kernels for one head
// dimension (compile with -DTQ_D=<D>). Used by the test harness only; MLX
// instantiates the same templates in mlx/backend/cuda/turboquant*.cu, the
// attention kernels through the same plan (device/turboquant_plan.cuh).
#include <cuda_runtime.h>
#include "mlx/backend/cuda/device/turboquant.cuh"

using namespace mlx::core::cu::turbo;

#define TQ_CAT2(a, b) a##b
#define TQ_CAT(a, b) TQ_CAT2(a, b)
#define TQ_FN(name) TQ_CAT(name, TQ_D)

constexpr int D = TQ_D;

template <typename F>
static void by_dtype(int dtype, F&& f) {
  if (dtype == 0)
    f(__half{});
  else if (dtype == 1)
    f(__nv_bfloat16{});
  else
    f(float{});
}
template <typename F>
static void by_bits(int bits, F&& f) {
  if (bits == 3)
    f(std::integral_constant<int, 3>{});
  else
    f(std::integral_constant<int, 4>{});
}

// Encode vectors where rows says (EncodeRows: mx.quantize's contiguous rows,
// or the cache update's strided rows with its shifts).
extern "C" int TQ_FN(tq_encode_d)(
    const void* x,
    void* packed,
    void* scales,
    const EncodeRows* rows,
    int bits,
    int dtype,
    cudaStream_t st) {
  const EncodeRows r = *rows;
  int blocks = int((r.n_vec + kEncodeWarps - 1) / kEncodeWarps);
  by_dtype(dtype, [&](auto tt) {
    using T = decltype(tt);
    by_bits(bits, [&](auto bb) {
      turbo_encode<T, D, bb.value><<<blocks, 32 * kEncodeWarps, 0, st>>>(
          (const T*)x, (uint32_t*)packed, (T*)scales, r);
    });
  });
  return (int)cudaGetLastError();
}

// Dequantize rows as MLX launches them (turbo_dequantize_gpu /
// turbo_dequantize_kv_gpu): scales, first and out in one dtype.
extern "C" int TQ_FN(tq_decode_d)(
    const void* packed,
    const void* scales,
    const void* first,
    void* out,
    const DecodeRows* rows,
    int bits,
    int dtype,
    cudaStream_t st) {
  const DecodeRows r = *rows;
  int64_t blocks = r.heads * decode_tiles(r.L);
  if (blocks == 0) {
    return 0;
  }
  by_dtype(dtype, [&](auto tt) {
    using T = decltype(tt);
    by_bits(bits, [&](auto bb) {
      turbo_decode<T, D, bb.value>
          <<<unsigned(blocks), 32 * kDecodeWarps, 0, st>>>(
              (const uint32_t*)packed,
              (const T*)scales,
              (const T*)first,
              (T*)out,
              r);
    });
  });
  return (int)cudaGetLastError();
}

// The fused call's preparation as MLX launches it (turbo_attention_prep_gpu):
// n_q query rows q (B, Hq, qL, D) and n_sv sink value rows in dtype; Hkv
// from the key bias / waves; b strides 0 when shared by the batch.
extern "C" int TQ_FN(tq_prep_d)(
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
    int dtype,
    cudaStream_t st) {
  const unsigned blocks =
      unsigned((n_q + n_sv + kEncodeWarps - 1) / kEncodeWarps);
  by_dtype(dtype, [&](auto tt) {
    using T = decltype(tt);
    PrepArgs<T> a{
        n_q,
        n_sv,
        Hq,
        qL,
        Hq / Hkv,
        scale,
        sinks,
        (const T*)key_shift,
        (const T*)first_key,
        kb_str,
        kb_str,
        row_sinks,
        waves,
        wv_b_str,
        P,
        wave_coef};
    turbo_attention_prep<T, D><<<blocks, 32 * kEncodeWarps, 0, st>>>(
        (const T*)q, q_rot, (const T*)sv, sv_rot, a);
  });
  return (int)cudaGetLastError();
}

// Decode attention as MLX launches it: the kernel of the plan (launch_decode,
// device/turboquant_plan.cuh), then the split-K combine. p and plan come from
// plan_decode (tq_capi.cu). With final_out, the output is rotated back (R^T)
// into it in final_dtype as turbo_sdpa_gpu does for fused_rotation; out then
// holds the rotated float32 rows only after a single split.
extern "C" int TQ_FN(tq_attn_d)(
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
    const AttnParams* pp,
    const DecodePlan* plan,
    int kbits,
    int vbits,
    int sdtype,
    void* final_out,
    int final_dtype,
    cudaStream_t st) {
  const AttnParams p = *pp;
  cudaError_t err = cudaSuccess;
  by_dtype(sdtype, [&](auto tt) {
    using T = decltype(tt);
    by_bits(kbits, [&](auto kb) {
      by_bits(vbits, [&](auto vb) {
        err = launch_decode<kb.value, vb.value, D, T>(
            *plan, [&](auto kernel, int threads, int smem) {
              kernel<<<decode_grid(p), threads, smem, st>>>(
                  q,
                  kc,
                  (const T*)ks,
                  vc,
                  (const T*)vs,
                  mask,
                  sinks,
                  out,
                  part_o,
                  part_ml,
                  p);
            });
      });
    });
  });
  if (err != cudaSuccess) {
    return (int)err;
  }
  const unsigned rows = unsigned(p.B * p.Hq * p.qL);
  if (final_out == nullptr) {
    if (p.num_splits > 1) {
      turbo_sdpa_combine<D, float, false>
          <<<rows, kCombineThreads, 0, st>>>(part_o, part_ml, out, p);
    }
    return (int)cudaGetLastError();
  }
  // fused_rotation (turbo_sdpa_gpu): the combine rotates back into final_out
  // (final_dtype), or turbo_rotate does after a single split.
  by_dtype(final_dtype, [&](auto tt) {
    using TO = decltype(tt);
    if (p.num_splits > 1) {
      turbo_sdpa_combine<D, TO, true><<<rows, kCombineThreads, 0, st>>>(
          part_o, part_ml, (TO*)final_out, p);
    } else {
      turbo_rotate<float, TO, D, true>
          <<<(rows + kEncodeWarps - 1) / kEncodeWarps,
             32 * kEncodeWarps,
             0,
             st>>>(out, (TO*)final_out, rows);
    }
  });
  return (int)cudaGetLastError();
}
