// Copyright © 2026 TurboQuant-MLX contributors.
//
// Launch of the TurboQuant attention kernels for one head dimension. Each
// turboquant_attn_d<D>.cu instantiates it once so the kernels of different
// head dimensions compile in parallel.

#pragma once

#include "mlx/backend/cuda/device.h"
#include "mlx/backend/cuda/device/turboquant.cuh"
#include "mlx/backend/cuda/kernel_utils.cuh"
#include "mlx/dtype_utils.h"

namespace mlx::core::turbo_detail {

struct AttnLaunch {
  cu::turbo::AttnParams params;
  int path; // 0 vector, 1 full SIMT float32, 2 full TF32, 3 full fp16/bf16 MMA
  int nq; // rows per vector block
  const void* mask; // nullptr if none
  const float* sinks; // nullptr if none
  // Split-K partials (nullptr without splits). Arrays rather than pointers:
  // the combine kernel's graph node must depend on the node that writes them.
  array* part_o;
  array* part_ml;
  // fused_rotation with splits: the combine kernel rotates each row back and
  // writes it here in the queries' dtype (nullptr: it writes out, float32).
  array* final_out;
  // Decode on tensor cores (turbo_sdpa_vector_tc, nq == 8): set by
  // turbo_sdpa_gpu for float16/bfloat16 queries and scales and the head dims
  // that kernel supports.
  bool tc;
};

// Whether a call may use the kernels with float16/bfloat16 tensor-core
// operands and float32 accumulation: float16/bfloat16 queries (the
// primitive's low_precision flag; their rounding is below the output's) and
// scales. Float32 queries keep the float32 kernels.
inline bool use_tensor_cores(bool low_precision, Dtype scale_dtype) {
  return low_precision && (scale_dtype == float16 || scale_dtype == bfloat16);
}

template <int KB, int VB, int D, typename T>
void launch_attention_typed(
    const array& q,
    const array& k,
    const array& ks,
    const array& v,
    const array& vs,
    array& out,
    const AttnLaunch& L,
    cu::CommandEncoder& enc) {
  namespace tb = cu::turbo;
  // Non-const copies: add_kernel_node takes the address of each argument.
  tb::AttnParams p = L.params;
  const void* mask = L.mask;
  const float* sinks = L.sinks;
  float* part_o = L.part_o ? gpu_ptr<float>(*L.part_o) : nullptr;
  float* part_ml = L.part_ml ? gpu_ptr<float>(*L.part_ml) : nullptr;
  const float* qp = gpu_ptr<float>(q);
  const uint32_t* kp = gpu_ptr<uint32_t>(k);
  const T* ksp = gpu_ptr<T>(ks);
  const uint32_t* vp = gpu_ptr<uint32_t>(v);
  const T* vsp = gpu_ptr<T>(vs);
  float* op = gpu_ptr<float>(out);
  constexpr bool tc_type =
      std::is_same_v<T, __half> || std::is_same_v<T, __nv_bfloat16>;
  // The prefill kernels take the same arguments; grid (query tiles, Hq, B).
  auto add_full = [&](auto kernel, int rows_per_block, int threads, int smem) {
    if (smem > 48 * 1024) {
      CHECK_CUDA_ERROR(cudaFuncSetAttribute(
          reinterpret_cast<const void*>(kernel),
          cudaFuncAttributeMaxDynamicSharedMemorySize,
          smem));
    }
    dim3 grid((p.qL + rows_per_block - 1) / rows_per_block, p.Hq, p.B);
    enc.add_kernel_node_ex(
        kernel,
        grid,
        dim3(threads),
        {},
        smem,
        qp,
        kp,
        ksp,
        vp,
        vsp,
        mask,
        sinks,
        op,
        p);
  };
  if constexpr (tc_type && tb::full_mma_supported(D)) {
    if (L.path == 3) {
      add_full(
          tb::turbo_sdpa_full_mma<KB, VB, D, T>,
          tb::kMmaBQ,
          tb::kMmaThreads,
          tb::full_mma_smem_bytes(KB, VB, D));
      return;
    }
  }
  if constexpr (tb::kUseTcPrefill && D <= tb::kTcMaxDim) {
    if (L.path == 2) {
      add_full(
          tb::turbo_sdpa_full_tc<KB, VB, D, T>,
          tb::kTcBQ,
          tb::kTcThreads,
          tb::tc_smem_bytes(D));
      return;
    }
  }
  if (L.path != 0) {
    add_full(
        tb::turbo_sdpa_full<KB, VB, D, T>,
        tb::kFullBQ,
        tb::kFullThreads,
        tb::full_smem_bytes(D));
    return;
  }
  dim3 grid(p.num_splits, p.Hkv * p.row_groups, p.B);
  // Without an array mask, causality only matters for qL > 1.
  const bool masked = p.mask_kind != tb::kMaskNone || (p.causal && p.qL > 1);
  // Both decode kernels take the same arguments.
  auto add_vector = [&](auto kernel, int threads, int smem) {
    enc.add_kernel_node_ex(
        kernel,
        grid,
        dim3(threads),
        {},
        smem,
        qp,
        kp,
        ksp,
        vp,
        vsp,
        mask,
        sinks,
        op,
        part_o,
        part_ml,
        p);
  };
  auto combine = [&]() {
    if (p.num_splits > 1) {
      const float* const_part_o = part_o;
      const float* const_part_ml = part_ml;
      enc.set_input_array(*L.part_o);
      enc.set_input_array(*L.part_ml);
      auto add_combine = [&](auto kernel, auto* dst) {
        enc.add_kernel_node(
            kernel,
            dim3(p.B * p.Hq * p.qL),
            dim3(128),
            const_part_o,
            const_part_ml,
            dst,
            p);
      };
      if (L.final_out) {
        enc.set_output_array(*L.final_out);
        dispatch_float_types(L.final_out->dtype(), "turbo_sdpa", [&](auto tt) {
          using TO = cuda_type_t<MLX_GET_TYPE(tt)>;
          add_combine(
              tb::turbo_sdpa_combine<D, TO, true>, gpu_ptr<TO>(*L.final_out));
        });
      } else {
        enc.set_output_array(out);
        add_combine(tb::turbo_sdpa_combine<D, float, false>, op);
      }
    }
  };
  if constexpr (tc_type && tb::vector_tc_supported(D)) {
    if (L.tc) {
      auto launch_tc = [&](auto masked_tag) {
        auto kernel =
            tb::turbo_sdpa_vector_tc<KB, VB, D, 8, masked_tag.value, T>;
        constexpr int smem = tb::vec_tc_smem_bytes(KB, VB, D);
        CHECK_CUDA_ERROR(cudaFuncSetAttribute(
            reinterpret_cast<const void*>(kernel),
            cudaFuncAttributeMaxDynamicSharedMemorySize,
            smem));
        add_vector(kernel, tb::kVecTcThreads, smem);
      };
      if (masked) {
        launch_tc(std::true_type{});
      } else {
        launch_tc(std::false_type{});
      }
      combine();
      return;
    }
  }
  auto launch = [&](auto nq, auto masked_tag) {
    auto kernel = tb::turbo_sdpa_vector<
        KB,
        VB,
        D,
        nq.value,
        tb::vec_cpt(D, nq.value),
        masked_tag.value,
        T>;
    add_vector(kernel, tb::kVecThreads, 0);
  };
  auto by_mask = [&](auto nq) {
    if (masked) {
      launch(nq, std::true_type{});
    } else {
      launch(nq, std::false_type{});
    }
  };
  switch (L.nq) {
    case 1:
      by_mask(std::integral_constant<int, 1>{});
      break;
    case 2:
      by_mask(std::integral_constant<int, 2>{});
      break;
    case 4:
      by_mask(std::integral_constant<int, 4>{});
      break;
    default:
      by_mask(std::integral_constant<int, 8>{});
      break;
  }
  combine();
}

template <int D>
void launch_attention(
    const array& q,
    const array& k,
    const array& ks,
    const array& v,
    const array& vs,
    array& out,
    const AttnLaunch& L,
    int key_bits,
    int value_bits,
    cu::CommandEncoder& enc) {
  dispatch_float_types(ks.dtype(), "turbo_sdpa", [&](auto type_tag) {
    using T = cuda_type_t<MLX_GET_TYPE(type_tag)>;
    auto by_bits = [](int bits, auto&& f) {
      if (bits == 3) {
        f(std::integral_constant<int, 3>{});
      } else {
        f(std::integral_constant<int, 4>{});
      }
    };
    by_bits(key_bits, [&](auto kb) {
      by_bits(value_bits, [&](auto vb) {
        launch_attention_typed<kb.value, vb.value, D, T>(
            q, k, ks, v, vs, out, L, enc);
      });
    });
  });
}

#define TURBO_DECLARE_ATTENTION(D)          \
  extern template void launch_attention<D>( \
      const array&,                         \
      const array&,                         \
      const array&,                         \
      const array&,                         \
      const array&,                         \
      array&,                               \
      const AttnLaunch&,                    \
      int,                                  \
      int,                                  \
      cu::CommandEncoder&);

TURBO_DECLARE_ATTENTION(64)
TURBO_DECLARE_ATTENTION(80)
TURBO_DECLARE_ATTENTION(96)
TURBO_DECLARE_ATTENTION(128)
TURBO_DECLARE_ATTENTION(192)
TURBO_DECLARE_ATTENTION(256)

} // namespace mlx::core::turbo_detail
