// Standalone instantiation of the TurboQuant CUDA kernels for one head
// dimension (compile with -DTQ_D=<D>). Used by the test harness only; MLX
// instantiates the same templates in mlx/backend/cuda/turboquant.cu.
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

extern "C" int TQ_FN(tq_encode_d)(
    const void* x,
    void* packed,
    void* scales,
    long long n,
    int bits,
    int dtype,
    cudaStream_t st) {
  int blocks = int((n + kEncodeWarps - 1) / kEncodeWarps);
  by_dtype(dtype, [&](auto tt) {
    using T = decltype(tt);
    by_bits(bits, [&](auto bb) {
      turbo_encode<T, D, bb.value><<<blocks, 32 * kEncodeWarps, 0, st>>>(
          (const T*)x, (uint32_t*)packed, (T*)scales, n);
    });
  });
  return (int)cudaGetLastError();
}

extern "C" int TQ_FN(tq_decode_d)(
    const void* packed,
    const void* scales,
    void* out,
    long long n,
    int bits,
    int sdtype,
    int odtype,
    cudaStream_t st) {
  int blocks = int((n + kEncodeWarps - 1) / kEncodeWarps);
  by_dtype(sdtype, [&](auto tt) {
    using T = decltype(tt);
    by_dtype(odtype, [&](auto uu) {
      using U = decltype(uu);
      by_bits(bits, [&](auto bb) {
        turbo_decode<T, U, D, bb.value><<<blocks, 32 * kEncodeWarps, 0, st>>>(
            (const uint32_t*)packed, (const T*)scales, (U*)out, n);
      });
    });
  });
  return (int)cudaGetLastError();
}

// path: 0 vector (splits from p->num_splits), 1 full SIMT, 2 full TF32 tensor
// cores; cpt: 0 default coordinates per thread of the vector kernel, 8 to force
// 8 with nq = 4
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
    int kbits,
    int vbits,
    int sdtype,
    int path,
    int nq,
    int cpt,
    cudaStream_t st) {
  const AttnParams p = *pp;
  by_dtype(sdtype, [&](auto tt) {
    using T = decltype(tt);
    by_bits(kbits, [&](auto kb) {
      by_bits(vbits, [&](auto vb) {
        if (path == 2) {
          if constexpr (D <= 128) {
            auto kern = turbo_sdpa_full_tc<kb.value, vb.value, D, T>;
            int smem = tc_smem_bytes(D);
            cudaFuncSetAttribute(
                (const void*)kern,
                cudaFuncAttributeMaxDynamicSharedMemorySize,
                smem);
            dim3 grid((p.qL + kTcBQ - 1) / kTcBQ, p.Hq, p.B);
            kern<<<grid, kTcThreads, smem, st>>>(
                q, kc, (const T*)ks, vc, (const T*)vs, mask, sinks, out, p);
          }
        } else if (path == 1) {
          auto kern = turbo_sdpa_full<kb.value, vb.value, D, T>;
          int smem = full_smem_bytes(D);
          cudaFuncSetAttribute(
              (const void*)kern,
              cudaFuncAttributeMaxDynamicSharedMemorySize,
              smem);
          dim3 grid((p.qL + kFullBQ - 1) / kFullBQ, p.Hq, p.B);
          kern<<<grid, kFullThreads, smem, st>>>(
              q, kc, (const T*)ks, vc, (const T*)vs, mask, sinks, out, p);
        } else {
          dim3 grid(p.num_splits, p.Hkv * p.row_groups, p.B);
          const bool masked = p.mask_kind != 0 || (p.causal && p.qL > 1);
          auto launch = [&](auto nqc, auto cptc, auto mk) {
            turbo_sdpa_vector<
                kb.value,
                vb.value,
                D,
                nqc.value,
                cptc.value,
                mk.value,
                T><<<grid, kVecThreads, 0, st>>>(
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
          };
          auto by_mask = [&](auto nqc, auto cptc) {
            if (masked)
              launch(nqc, cptc, std::true_type{});
            else
              launch(nqc, cptc, std::false_type{});
          };
          using I1 = std::integral_constant<int, 1>;
          using I2 = std::integral_constant<int, 2>;
          using I4 = std::integral_constant<int, 4>;
          using I8 = std::integral_constant<int, 8>;
          using C8 = std::integral_constant<int, 8>;
          using C16 = std::integral_constant<int, 16>;
          using CD = std::integral_constant<int, vec_cpt(D, 1)>;
          if (nq == 1)
            by_mask(I1{}, CD{});
          else if (nq == 2)
            by_mask(I2{}, CD{});
          else if (nq == 4 && cpt == 8)
            by_mask(I4{}, C8{});
          else if (nq == 4)
            by_mask(I4{}, C16{});
          else
            by_mask(I8{}, C8{});
          if (p.num_splits > 1) {
            turbo_sdpa_combine<D, float, false>
                <<<p.B * p.Hq * p.qL, 128, 0, st>>>(part_o, part_ml, out, p);
          }
        }
      });
    });
  });
  return (int)cudaGetLastError();
}

// Decode attention on tensor cores (turbo_sdpa_vector_tc, 8 rows per block:
// the planned row groups are the same as for the SIMT kernel's rows per
// block, which is 8 whenever there is more than one group). Returns -3 for
// head dims or scale dtypes it does not support (float32 scales).
template <int DD>
static int attn_tc_impl(
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
    int kbits,
    int vbits,
    int sdtype,
    cudaStream_t st) {
  if constexpr (!vector_tc_supported(DD)) {
    return -3;
  } else {
    if (sdtype != 0 && sdtype != 1) {
      return -3;
    }
    AttnParams p = *pp;
    constexpr int NQ = 8;
    p.row_groups = (p.gqa * p.qL + NQ - 1) / NQ;
    const bool masked = p.mask_kind != 0 || (p.causal && p.qL > 1);
    dim3 grid(p.num_splits, p.Hkv * p.row_groups, p.B);
    int rc = 0;
    auto run = [&](auto tt) {
      using T = decltype(tt);
      by_bits(kbits, [&](auto kb) {
        by_bits(vbits, [&](auto vb) {
          auto launch = [&](auto mk) {
            auto kern =
                turbo_sdpa_vector_tc<kb.value, vb.value, DD, NQ, mk.value, T>;
            constexpr int smem = vec_tc_smem_bytes(kb.value, vb.value, DD);
            cudaError_t e = cudaFuncSetAttribute(
                (const void*)kern,
                cudaFuncAttributeMaxDynamicSharedMemorySize,
                smem);
            if (e != cudaSuccess) {
              rc = (int)e;
              return;
            }
            kern<<<grid, kVecTcThreads, smem, st>>>(
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
          };
          if (masked)
            launch(std::true_type{});
          else
            launch(std::false_type{});
        });
      });
    };
    if (sdtype == 0)
      run(__half{});
    else
      run(__nv_bfloat16{});
    if (rc != 0) {
      return rc;
    }
    if (p.num_splits > 1) {
      turbo_sdpa_combine<DD, float, false>
          <<<p.B * p.Hq * p.qL, 128, 0, st>>>(part_o, part_ml, out, p);
    }
    return (int)cudaGetLastError();
  }
}

extern "C" int TQ_FN(tq_attn_tc_d)(
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
    int kbits,
    int vbits,
    int sdtype,
    cudaStream_t st) {
  return attn_tc_impl<D>(
      q, kc, ks, vc, vs, mask, sinks, out, part_o, part_ml, pp, kbits, vbits,
      sdtype, st);
}

// Prefill on tensor cores (turbo_sdpa_full_mma): fp16/bf16 scales, D = 64,
// 128, 256. Returns -3 where the kernel does not apply.
template <int DD>
static int attn_mma_impl(
    const float* q,
    const uint32_t* kc,
    const void* ks,
    const uint32_t* vc,
    const void* vs,
    const void* mask,
    const float* sinks,
    float* out,
    const AttnParams* pp,
    int kbits,
    int vbits,
    int sdtype,
    cudaStream_t st) {
  if constexpr (!full_mma_supported(DD)) {
    return -3;
  } else {
    if (sdtype != 0 && sdtype != 1) {
      return -3;
    }
    const AttnParams p = *pp;
    dim3 grid((p.qL + kMmaBQ - 1) / kMmaBQ, p.Hq, p.B);
    int rc = 0;
    auto run = [&](auto tt) {
      using T = decltype(tt);
      by_bits(kbits, [&](auto kb) {
        by_bits(vbits, [&](auto vb) {
          auto kern = turbo_sdpa_full_mma<kb.value, vb.value, DD, T>;
          constexpr int smem = full_mma_smem_bytes(kb.value, vb.value, DD);
          cudaError_t e = cudaFuncSetAttribute(
              (const void*)kern,
              cudaFuncAttributeMaxDynamicSharedMemorySize,
              smem);
          if (e != cudaSuccess) {
            rc = (int)e;
            return;
          }
          kern<<<grid, kMmaThreads, smem, st>>>(
              q, kc, (const T*)ks, vc, (const T*)vs, mask, sinks, out, p);
        });
      });
    };
    if (sdtype == 0)
      run(__half{});
    else
      run(__nv_bfloat16{});
    if (rc != 0) {
      return rc;
    }
    return (int)cudaGetLastError();
  }
}

extern "C" int TQ_FN(tq_attn_mma_d)(
    const float* q,
    const uint32_t* kc,
    const void* ks,
    const uint32_t* vc,
    const void* vs,
    const void* mask,
    const float* sinks,
    float* out,
    const AttnParams* pp,
    int kbits,
    int vbits,
    int sdtype,
    cudaStream_t st) {
  return attn_mma_impl<D>(
      q, kc, ks, vc, vs, mask, sinks, out, pp, kbits, vbits, sdtype, st);
}
