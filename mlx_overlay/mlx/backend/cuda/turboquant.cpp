// Copyright © 2026 TurboQuant-MLX contributors.
//
// GPU entry points of the TurboQuant ops for the CUDA backend. The kernels
// live in device/turboquant_*.cuh (one file per kernel family); launches in
// turboquant.cu and turboquant_attn_d*.cu.

#include <stdexcept>
#include <string>

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

array turbo_row_dense(
    const array& a,
    cu::CommandEncoder& enc,
    const Stream& s) {
  if (a.flags().row_contiguous) {
    return a;
  }
  array c = contiguous_copy_gpu(a, s);
  enc.add_temporary(c);
  return c;
}

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
  // Decode kernels only: longer calls dequantize in the op.
  return q.ndim() != 4 || q.shape(2) > turbo::kFusedMaxQueries;
}

void QuantizedScaledDotProductAttention::eval_gpu(
    const std::vector<array>& inputs,
    std::vector<array>& outputs) {
  nvtx3::scoped_range r("QuantizedScaledDotProductAttention::eval_gpu");
  auto& s = stream();
  auto& enc = cu::get_command_encoder(s);

  // Decode kernels only: the op sends longer calls (prefill) through the
  // dequantized route (use_fallback).
  const array& q_in = inputs[0];
  if (q_in.ndim() != 4 || q_in.shape(2) > turbo::kFusedMaxQueries) {
    throw std::invalid_argument(
        "[quantized_scaled_dot_product_attention] The CUDA kernels take 4-D "
        "queries with at most " +
        std::to_string(turbo::kFusedMaxQueries) +
        " queries per call; longer calls dequantize the cache in the op.");
  }
  // The moving key shift's inputs come with fused_rotation (the kernels
  // compute its bias from the queries as given).
  if (has_key_waves_ && !fused_rotation_) {
    throw std::invalid_argument(
        "[quantized_scaled_dot_product_attention] the moving key shift needs "
        "fused_rotation on CUDA.");
  }
  auto [mask, sinks, sink_values, key_shift, first_key, waves, freqs] =
      turbo::attention_extras(
          inputs,
          has_sinks_,
          has_sink_values_,
          has_key_shift_,
          has_first_key_,
          has_key_waves_);
  if (mask && mask->dtype() != bool_ && mask->dtype() != float32) {
    throw std::invalid_argument(
        "[quantized_scaled_dot_product_attention] The mask must be bool or "
        "float32 on this backend.");
  }
  auto row_contiguous = [&](std::optional<array>& x) {
    if (x) {
      x = turbo_row_dense(*x, enc, s);
    }
  };
  row_contiguous(sinks);
  row_contiguous(sink_values);
  row_contiguous(key_shift);
  row_contiguous(first_key);
  row_contiguous(waves);
  row_contiguous(freqs);
  auto temporary = [&](const Shape& shape) {
    array t(shape, float32, nullptr, {});
    t.set_data(cu::malloc_async(t.nbytes(), enc));
    enc.add_temporary(t);
    return t;
  };

  // (a cache's buffers: the first key_length_ rows, in place)
  array k = last_dense(turbo::leading_rows(inputs[1], key_length_), enc, s);
  array ks = turbo::leading_rows(inputs[2], key_length_);
  array v = last_dense(turbo::leading_rows(inputs[3], key_length_), enc, s);
  array vs = turbo::leading_rows(inputs[4], key_length_);

  // q: the kernels read rotated float32 rows with strides (B, H, L) and a
  // dense last axis. With fused_rotation the tensor-core kernel makes them
  // itself from the queries as given where it can (turbo_sdpa_preps_in_kernel:
  // queries of the scales' dtype), together with the rotated sink values, the
  // per-row sink logits of the exact transforms' key bias and the moving key
  // shift's coefficients. Otherwise one preparation launch makes them (row
  // contiguous), rotates the sink values (B or 1, Hkv, 1, D) the same way
  // and, with the key bias, writes per-row sink logits; without
  // fused_rotation the sink values come float32 and rotated.
  array q = last_dense(inputs[0], enc, s);
  std::optional<array> wave_coef;
  std::optional<TurboKernelPrep> kprep;
  if (fused_rotation_ &&
      turbo_sdpa_preps_in_kernel(
          q,
          k,
          ks,
          v,
          vs,
          turbo::bits(key_mode_),
          turbo::bits(value_mode_),
          low_precision_)) {
    kprep = TurboKernelPrep{key_shift, first_key, waves};
  } else if (fused_rotation_) {
    if (!q.flags().row_contiguous) {
      q = contiguous_copy_gpu(q, s);
      enc.add_temporary(q);
    }
    array q_rot = temporary(q.shape());
    std::optional<array> sv_rot;
    if (sink_values) {
      sv_rot = temporary(sink_values->shape());
    }
    std::optional<array> row_sinks;
    if (key_shift || first_key) {
      row_sinks = temporary({q.shape(0), q.shape(1), q.shape(2)});
    }
    if (waves) {
      wave_coef =
          temporary({q.shape(0), q.shape(1), q.shape(2), waves->shape(2)});
    }
    turbo_attention_prep_gpu(
        q,
        q_rot,
        sink_values,
        sv_rot ? &*sv_rot : nullptr,
        sinks,
        key_shift,
        first_key,
        row_sinks ? &*row_sinks : nullptr,
        waves,
        wave_coef ? &*wave_coef : nullptr,
        scale_,
        enc);
    q = q_rot;
    if (sv_rot) {
      sink_values = sv_rot;
    }
    if (row_sinks) {
      sinks = row_sinks;
    }
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
      wave_coef,
      freqs,
      out_rot ? *out_rot : out,
      scale_,
      do_causal_,
      turbo::bits(key_mode_),
      turbo::bits(value_mode_),
      low_precision_,
      out_rot ? &out : nullptr,
      kprep ? &*kprep : nullptr,
      enc);
}

void QuantizedKVDequantize::eval_gpu(
    const std::vector<array>& inputs,
    std::vector<array>& outputs) {
  nvtx3::scoped_range r("QuantizedKVDequantize::eval_gpu");
  auto& s = stream();
  auto& enc = cu::get_command_encoder(s);
  turbo_dequantize_kv_gpu(
      inputs,
      outputs[0],
      turbo::bits(mode_),
      {has_first_, has_shift_, has_waves_},
      enc,
      s);
}

} // namespace fast

} // namespace mlx::core
