// Copyright © 2026 TurboQuant-MLX contributors.
//
// GPU entry points of the TurboQuant ops for the CUDA backend. The kernels
// live in device/turboquant.cuh; launches in turboquant.cu and
// turboquant_attn_d*.cu.

#include <stdexcept>

#include "mlx/backend/cuda/device.h"
#include "mlx/backend/cuda/turboquant.h"
#include "mlx/backend/gpu/copy.h"
#include "mlx/fast_primitives.h"
#include "mlx/turboquant.h"

#include <nvtx3/nvtx3.hpp>

namespace mlx::core {

namespace turbo {

bool gpu_quantize_supported() {
  return true;
}

} // namespace turbo

namespace {

// Copies unless the last axis is unit-stride (or of size 1).
array last_dense(const array& a, cu::CommandEncoder& enc, const Stream& s) {
  if (a.strides().back() == 1 || a.shape(-1) == 1) {
    return a;
  }
  array c = contiguous_copy_gpu(a, s);
  enc.add_temporary(c);
  return c;
}

} // namespace

namespace fast {

bool QuantizedScaledDotProductAttention::use_fallback(
    const array& q,
    int key_dim,
    int value_dim,
    Stream s) {
  if (s.device == Device::cpu) {
    return true;
  }
  // The kernels read keys and values with the same head dimension.
  if (key_dim != value_dim || !turbo_cuda_supported_dim(key_dim)) {
    return true;
  }
  return q.ndim() != 4;
}

void QuantizedScaledDotProductAttention::eval_gpu(
    const std::vector<array>& inputs,
    std::vector<array>& outputs) {
  nvtx3::scoped_range r("QuantizedScaledDotProductAttention::eval_gpu");
  auto& s = stream();
  auto& enc = cu::get_command_encoder(s);

  // q: the kernels read rows with strides (B, H, L) and a dense last axis.
  array q = last_dense(inputs[0], enc, s);
  array k = last_dense(inputs[1], enc, s);
  array ks = inputs[2];
  array v = last_dense(inputs[3], enc, s);
  array vs = inputs[4];
  bool has_mask = inputs.size() > size_t(5 + (has_sinks_ ? 1 : 0));
  std::optional<array> mask;
  if (has_mask) {
    mask = inputs[5];
    if (mask->dtype() != bool_ && mask->dtype() != float32) {
      throw std::invalid_argument(
          "[quantized_scaled_dot_product_attention] The mask must be bool or "
          "float32 on this backend.");
    }
  }
  std::optional<array> sinks;
  if (has_sinks_) {
    array sk = inputs.back();
    if (sk.strides().back() != 1 && sk.size() > 1) {
      sk = contiguous_copy_gpu(sk, s);
      enc.add_temporary(sk);
    }
    sinks = sk;
  }

  auto& out = outputs[0];
  out.set_data(cu::malloc_async(out.nbytes(), enc));

  turbo_sdpa_gpu(
      q,
      k,
      ks,
      v,
      vs,
      mask,
      sinks,
      out,
      scale_,
      do_causal_,
      turbo::bits(key_mode_),
      turbo::bits(value_mode_),
      low_precision_,
      enc);
}

} // namespace fast

} // namespace mlx::core
