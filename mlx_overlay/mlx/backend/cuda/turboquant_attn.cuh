// Copyright © 2026 TurboQuant-MLX contributors.
//
// Launch of the TurboQuant decode attention kernels for one head dimension
// (the kernel comes from the plan, device/turboquant_plan.cuh). Each
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
  cu::turbo::DecodePlan plan;
  const void* mask; // nullptr if none
  const float* sinks; // nullptr if none
  // Split-K partials (nullptr without splits). Arrays rather than pointers:
  // the combine kernel's graph node must depend on the node that writes them.
  array* part_o;
  array* part_ml;
  // fused_rotation with splits: the combine kernel rotates each row back and
  // writes it here in the queries' dtype (nullptr: it writes out, float32).
  array* final_out;
};

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
  // With the preparation in the kernel, q holds the queries as given
  // (p.q_in) and the kernel's float32 q is unused.
  const float* qp = p.q_in ? nullptr : gpu_ptr<float>(q);
  const uint32_t* kp = gpu_ptr<uint32_t>(k);
  const T* ksp = gpu_ptr<T>(ks);
  const uint32_t* vp = gpu_ptr<uint32_t>(v);
  const T* vsp = gpu_ptr<T>(vs);
  float* op = gpu_ptr<float>(out);
  auto add_decode = [&](auto kernel, int threads, int smem) {
    enc.add_kernel_node_ex(
        kernel,
        tb::decode_grid(p),
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
  cudaError_t err = tb::launch_decode<KB, VB, D, T>(L.plan, add_decode);
  CHECK_CUDA_ERROR(err);
  if (p.num_splits <= 1) {
    return;
  }
  // The split-K combine.
  const float* const_part_o = part_o;
  const float* const_part_ml = part_ml;
  enc.set_input_array(*L.part_o);
  enc.set_input_array(*L.part_ml);
  auto add_combine = [&](auto kernel, auto* dst) {
    enc.add_kernel_node(
        kernel,
        dim3(p.B * p.Hq * p.qL),
        dim3(tb::kCombineThreads),
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
