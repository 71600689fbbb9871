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

bool gpu_attention_rotates() {
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

  // q: the kernels read rotated float32 rows with strides (B, H, L) and a
  // dense last axis. With fused_rotation the rotation kernel makes them
  // (row contiguous) from the queries as given.
  array q = last_dense(inputs[0], enc, s);
  auto temporary = [&](const Shape& shape) {
    array t(shape, float32, nullptr, {});
    t.set_data(cu::malloc_async(t.nbytes(), enc));
    enc.add_temporary(t);
    return t;
  };
  if (fused_rotation_) {
    if (!q.flags().row_contiguous) {
      q = contiguous_copy_gpu(q, s);
      enc.add_temporary(q);
    }
    array q_rot = temporary(q.shape());
    turbo_rotate_gpu(q, q_rot, false, enc);
    q = q_rot;
  }
  array k = last_dense(inputs[1], enc, s);
  array ks = inputs[2];
  array v = last_dense(inputs[3], enc, s);
  array vs = inputs[4];
  bool has_mask = inputs.size() > size_t(5 + has_sinks_ + has_sink_values_);
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
    array sk = inputs[5 + has_mask];
    if (sk.strides().back() != 1 && sk.size() > 1) {
      sk = contiguous_copy_gpu(sk, s);
      enc.add_temporary(sk);
    }
    sinks = sk;
  }
  // The sinks' values, (B or 1, Hkv, 1, D): rotated here with
  // fused_rotation, float32 and rotated already otherwise.
  std::optional<array> sink_values;
  if (has_sink_values_) {
    array sv = inputs.back();
    if (!sv.flags().row_contiguous) {
      sv = contiguous_copy_gpu(sv, s);
      enc.add_temporary(sv);
    }
    if (fused_rotation_) {
      array sv_rot = temporary(sv.shape());
      turbo_rotate_gpu(sv, sv_rot, false, enc);
      sv = sv_rot;
    }
    sink_values = sv;
  }

  auto& out = outputs[0];
  out.set_data(cu::malloc_async(out.nbytes(), enc));
  // fused_rotation: the kernels write the rotated float32 output to a
  // temporary, rotated back into out by the split-K combine or one launch.
  std::optional<array> out_rot;
  if (fused_rotation_) {
    out_rot = temporary(out.shape());
  }

  turbo_sdpa_gpu(
      q,
      k,
      ks,
      v,
      vs,
      mask,
      sinks,
      sink_values,
      out_rot ? *out_rot : out,
      scale_,
      do_causal_,
      turbo::bits(key_mode_),
      turbo::bits(value_mode_),
      low_precision_,
      out_rot ? &out : nullptr,
      enc);
}

} // namespace fast

} // namespace mlx::core
